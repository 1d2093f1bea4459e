//! The `Content-Length` of an answer to `HEAD` (RFC 9110 section 8.6): a server may leave
//! it out, but must not send one other than the length a `GET` would have sent. A `HEAD`
//! route that answers without generating its body used to go out with
//! `Content-Length: 0`, telling caches and download managers the resource is empty.

mod util;

use duo_http::{HttpServerThread, Method, Response, StatusCode};
use util::{start, test_builder, Client};

const PAGE: &str = "a page of 28 bytes, not zero";

/// `/page`: a `GET` with a body and a `HEAD` that answers without it; `/sized`: a `HEAD`
/// that says the length a `GET` would have; `/both`: a `HEAD` that gives the body too;
/// `/fallback`: `GET` only (answered for `HEAD` too).
fn server() -> HttpServerThread {
    start(
        test_builder()
            .route(Method::Get, "/page", |_| {
                Response::text(StatusCode::OK, PAGE)
            })
            .route(Method::Head, "/page", |_| {
                Response::new(StatusCode::OK).content_type("text/plain")
            })
            .route(Method::Head, "/sized", |_| {
                Response::new(StatusCode::OK).head_content_length(PAGE.len() as u64)
            })
            .route(Method::Head, "/both", |_| {
                Response::text(StatusCode::OK, PAGE)
            })
            .route(Method::Get, "/fallback", |_| {
                Response::text(StatusCode::OK, PAGE)
            }),
    )
}

#[test]
fn a_head_route_without_its_body_sends_no_length() {
    let server = server();
    let mut c = Client::connect(server.local_addr());
    c.send(b"HEAD /page HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_reply(true);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-length"), None, "{r:?}");
    // The connection stays, in step: the next answer is the GET's, whole.
    assert_eq!(c.get("/page").text(), PAGE);
    server.stop().unwrap();
}

#[test]
fn a_head_route_may_say_the_length_of_its_get() {
    let server = server();
    let mut c = Client::connect(server.local_addr());
    for path in ["/sized", "/both", "/fallback"] {
        c.send(format!("HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let r = c.read_reply(true);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let len = PAGE.len().to_string();
        assert_eq!(r.header("content-length"), Some(len.as_str()), "{path}");
        assert!(r.body.is_empty(), "{path}: no body to HEAD");
    }
    assert_eq!(
        c.get("/fallback").text(),
        PAGE,
        "the connection stays in step"
    );
    server.stop().unwrap();
}

/// The length given for `HEAD` is for `HEAD` only: a `GET` (or any other method) sends
/// the body it has, with that body's length.
#[test]
fn the_head_length_does_not_change_other_answers() {
    let r = Response::new(StatusCode::OK).head_content_length(1234);
    assert!(r.body().is_empty());
    let server = start(test_builder().route(Method::Get, "/odd", |_| {
        Response::text(StatusCode::OK, "four").head_content_length(1234)
    }));
    let mut c = Client::connect(server.local_addr());
    let got = c.get("/odd");
    assert_eq!(got.header("content-length"), Some("4"));
    assert_eq!(got.text(), "four");
    c.send(b"HEAD /odd HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = c.read_reply(true);
    assert_eq!(head.header("content-length"), Some("1234"), "{head:?}");
    server.stop().unwrap();
}
