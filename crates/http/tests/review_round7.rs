//! Review round 7 of duo-http, against RFC 9110/9112 over loopback: the absolute form of
//! `OPTIONS *`, fragments in a request target, and `205 Reset Content`. (Written by a
//! review helper: each test failed before its fix.)

mod util;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use duo_http::{HttpServerThread, Method, Response, StatusCode};
use util::{start, test_builder, Client};

/// The test routes plus `GET /reset` (a `205 Reset Content` whose handler gives it a
/// body anyway) and `GET /count` (counts its calls).
fn server() -> (HttpServerThread, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let count = hits.clone();
    let server = start(
        test_builder()
            .route(Method::Get, "/reset", |_| {
                let reset = StatusCode::new(205).expect("205 is a status");
                Response::text(reset, "form cleared\n")
            })
            .route(Method::Get, "/count", move |req| {
                count.fetch_add(1, Ordering::SeqCst);
                Response::text(StatusCode::OK, req.query().unwrap_or("-"))
            }),
    );
    (server, hits)
}

/// RFC 9112 section 3.2.4 and RFC 9110 section 7.1: `OPTIONS http://host:port` (an
/// absolute-form target with an empty path and no query, as a client sends it to a
/// proxy, and as the last proxy must turn into `OPTIONS *`) asks about the server as a
/// whole, as `OPTIONS *` does. It used to be taken for `OPTIONS /` and answered 404; it
/// gets the server's `Allow`. With a path or a query it stays a request for a resource.
#[test]
fn options_in_absolute_form_with_an_empty_path_is_options_asterisk() {
    let (server, _) = server();
    let mut c = Client::connect(server.local_addr());
    c.send(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n");
    let asterisk = c.read_reply(false);
    assert_eq!(asterisk.status, 200, "{asterisk:?}");
    for target in ["http://t", "http://t:80", "HTTPS://t:443"] {
        c.send(format!("OPTIONS {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let r = c.read_reply(false);
        assert_eq!(r.status, 200, "OPTIONS {target}: {r:?}");
        assert_eq!(r.header("allow"), asterisk.header("allow"), "{target}");
        assert_eq!(r.header("content-length"), Some("0"), "{target}");
    }
    // A path, even `/`, or a query names a resource: no route for OPTIONS there.
    for target in ["http://t/", "http://t?x", "http://t/hello"] {
        c.send(format!("OPTIONS {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let r = c.read_reply(false);
        assert!(matches!(r.status, 404 | 405), "OPTIONS {target}: {r:?}");
    }
    assert_eq!(c.get("/hello").text(), "hello", "the connection stays");
    server.stop().unwrap();
}

/// RFC 9112 section 3.2 (origin form is `absolute-path ["?" query]`, absolute form an
/// absolute URI: neither has a fragment) and section 3: an invalid request line should
/// get 400, and a recipient "SHOULD NOT attempt to autocorrect and then process the
/// request". A `#` in the target (never sent by curl or a browser, which keep the
/// fragment to themselves) used to reach the handler: `GET /count?a#b` ran it with the
/// query `a#b`. It is refused with 400 and the connection closed; nothing runs.
#[test]
fn a_fragment_in_the_request_target_is_refused() {
    let (server, hits) = server();
    for target in [
        "/count?a#b",
        "/count#frag",
        "/count?#",
        "http://t/count?a#b",
        "http://t/count#",
    ] {
        let mut c = Client::connect(server.local_addr());
        c.send(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let r = c.read_reply(false);
        assert_eq!(r.status, 400, "GET {target}: {r:?}");
        assert_eq!(r.header("connection"), Some("close"), "{target}");
        c.expect_eof();
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "no handler ran");
    // Still served: a query with what a fragment is not (`?`, `/`, percent-encoded `#`).
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.get("/count?a?b/c%23d").text(), "a?b/c%23d");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    server.stop().unwrap();
}

/// RFC 9110 section 15.3.6: "a server MUST NOT generate content in a 205 response", and
/// says it has none with `Content-Length: 0` (or chunked framing, or closing). The
/// server already keeps 204 and 304 bodiless whatever the handler gives; a 205 used to go
/// out with the handler's body and length. It goes with `Content-Length: 0` and no body,
/// to `GET` and `HEAD` alike, and the connection stays in step for the next request.
#[test]
fn a_205_reset_content_goes_without_content() {
    let (server, _) = server();
    let mut c = Client::connect(server.local_addr());
    for method in ["GET", "HEAD"] {
        c.send(format!("{method} /reset HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let r = c.read_reply(method == "HEAD");
        assert_eq!(r.status, 205, "{method}: {r:?}");
        assert_eq!(r.header("content-length"), Some("0"), "{method}: {r:?}");
        assert!(r.body.is_empty(), "{method}: {r:?}");
    }
    // Had the body gone out, this would read it as the next response's start.
    assert_eq!(c.get("/hello").text(), "hello");
    server.stop().unwrap();
}
