//! The four forms of request target (RFC 9112 section 3.2) against the real server over
//! loopback: origin form for every method but `CONNECT`, absolute form (whose authority
//! is the host), authority form for `CONNECT` and only `CONNECT`, asterisk form for
//! `OPTIONS` and only `OPTIONS`, which asks about the server as a whole. (Written by a
//! review helper: each test failed before its fix.)

mod util;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use duo_http::{HttpServerThread, Method, Response, StatusCode};
use util::{start, test_builder, Client};

/// The test routes plus `CONNECT tunnel.test:443` and `CONNECT /tunnel` (each counts its
/// calls and answers 200), `GET /host` (the request's `Host`) and `PUT /put`.
fn server() -> (HttpServerThread, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let (a, b) = (hits.clone(), hits.clone());
    let server = start(
        test_builder()
            .route(Method::Connect, "tunnel.test:443", move |req| {
                a.fetch_add(1, Ordering::SeqCst);
                Response::text(StatusCode::OK, req.path())
            })
            .route(Method::Connect, "/tunnel", move |_| {
                b.fetch_add(1, Ordering::SeqCst);
                Response::text(StatusCode::OK, "tunnel")
            })
            .route(Method::Get, "/host", |req| {
                Response::text(StatusCode::OK, req.headers().get("host").unwrap_or("-"))
            })
            .route(Method::Put, "/put", |_| {
                Response::new(StatusCode::NO_CONTENT)
            }),
    );
    (server, hits)
}

/// Sends `wire` on a new connection; the reply (head only when `head_only`).
fn ask(server: &HttpServerThread, wire: &str, head_only: bool) -> (Client, util::Reply) {
    let mut c = Client::connect(server.local_addr());
    c.send(wire.as_bytes());
    let r = c.read_reply(head_only);
    (c, r)
}

/// RFC 9110 section 9.3.7: `OPTIONS *` asks about the server, not a resource. It used to
/// be routed as a path `*` and answered 404; it gets 200, no content (`Content-Length:
/// 0`) and `Allow` with every method the routes serve, and the connection stays open.
#[test]
fn options_asterisk_answers_for_the_server_with_allow() {
    let (server, _) = server();
    let (mut c, r) = ask(&server, "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", false);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("allow"),
        Some("GET, HEAD, POST, PUT, CONNECT, OPTIONS"),
        "{r:?}"
    );
    assert_eq!(r.header("content-length"), Some("0"));
    assert!(r.body.is_empty());
    assert_eq!(c.get("/hello").text(), "hello", "the connection stays");
    // HTTP/1.0 too, and a server with no route still lists OPTIONS.
    let (_, r) = ask(&server, "OPTIONS * HTTP/1.0\r\n\r\n", false);
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    let bare = start(duo_http::HttpServer::builder(
        "bare",
        "127.0.0.1:0".parse().unwrap(),
    ));
    let (_, r) = ask(&bare, "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", false);
    assert_eq!((r.status, r.header("allow")), (200, Some("OPTIONS")));
    // The asterisk is OPTIONS' alone.
    for method in ["GET", "HEAD", "POST", "CONNECT"] {
        let wire = format!("{method} * HTTP/1.1\r\nHost: t\r\n\r\n");
        let (mut c, r) = ask(&server, &wire, method == "HEAD");
        assert_eq!(r.status, 400, "{method} *: {r:?}");
        c.expect_eof();
    }
    bare.stop().unwrap();
    server.stop().unwrap();
}

/// RFC 9110 section 9.3.6 and RFC 9112 section 3.2.3: a `CONNECT` target is `host:port`.
/// One in origin form (`CONNECT /tunnel`) used to run the route of that path; it is a
/// 400 now, the connection closes and nothing pipelined after it runs. In authority form
/// it is routed by its `host:port`: a route's 2xx answer ends the connection (no
/// tunnel is made), and one nobody routed is a 404 that ends it too (see
/// `review_round6.rs`: tunnel bytes may follow a refused `CONNECT`).
#[test]
fn connect_takes_authority_form_only() {
    let (server, hits) = server();
    for target in [
        "/tunnel",
        "http://tunnel.test:443/",
        "tunnel.test",
        "*",
        "u@t:443",
    ] {
        let wire = format!(
            "CONNECT {target} HTTP/1.1\r\nHost: tunnel.test:443\r\n\r\nGET /hello HTTP/1.1\r\n\
             Host: t\r\n\r\n"
        );
        let (mut c, r) = ask(&server, &wire, false);
        assert_eq!(r.status, 400, "CONNECT {target}: {r:?}");
        assert!(r.text().contains("authority-form"), "{}", r.text());
        c.expect_eof();
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a CONNECT route ran");

    let wire = "CONNECT tunnel.test:443 HTTP/1.1\r\nHost: tunnel.test:443\r\n\r\n";
    let (mut c, r) = ask(&server, wire, true);
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    c.expect_eof();
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    for target in ["elsewhere.test:443", "[::1]:8443", "127.0.0.1:1"] {
        let wire = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        let (mut c, r) = ask(&server, &wire, false);
        assert_eq!(r.status, 404, "CONNECT {target}: {r:?}");
        assert_eq!(
            r.header("connection"),
            Some("close"),
            "CONNECT {target}: {r:?}"
        );
        c.expect_eof();
    }
    server.stop().unwrap();
}

/// Authority form is CONNECT's alone (400 for any other method); absolute form is served,
/// with the target's authority as the host (RFC 9112 section 3.2.2), for every method
/// but CONNECT.
#[test]
fn authority_form_is_refused_and_absolute_form_served_for_other_methods() {
    let (server, _) = server();
    for method in ["GET", "POST", "PUT", "OPTIONS"] {
        let wire = format!("{method} t:80 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
        let (mut c, r) = ask(&server, &wire, false);
        assert_eq!(r.status, 400, "{method} t:80: {r:?}");
        c.expect_eof();
    }
    let (mut c, r) = ask(
        &server,
        "GET http://other.test:8080/host HTTP/1.1\r\nHost: t\r\n\r\n",
        false,
    );
    assert_eq!((r.status, r.text()), (200, "other.test:8080"));
    assert_eq!(c.get("/hello").text(), "hello");
    let (_, r) = ask(
        &server,
        "PUT HTTP://t/put HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        false,
    );
    assert_eq!(r.status, 204, "{r:?}");
    let (_, r) = ask(
        &server,
        "GET http://t?q=1 HTTP/1.1\r\nHost: t\r\n\r\n",
        false,
    );
    assert_eq!(r.status, 404, "the path of `http://t?q=1` is `/`: {r:?}");
    server.stop().unwrap();
}
