//! The response side against the real server over loopback, in the combinations the other
//! tests leave out: the `Connection` options of an HTTP/1.0 request that lists both
//! `keep-alive` and `close`, the refusals of a `HEAD` request (which must come without a
//! body, whatever the status), and a successful answer to `CONNECT` (after which a client
//! takes every byte for the tunnel). (Written by a review helper: each test failed before
//! its fix.)

mod util;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use duo_http::{HttpServerBuilder, HttpServerThread, Method, Response, StatusCode};
use util::{get, start, test_builder, Client};

/// The test routes plus `GET /count` (counts its calls in the returned counter) and
/// `CONNECT tunnel.test:443` (a handler that answers 200 with a body).
fn server_with(builder: HttpServerBuilder) -> (HttpServerThread, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let count = hits.clone();
    let server = start(
        builder
            .route(Method::Get, "/count", move |_| {
                count.fetch_add(1, Ordering::SeqCst);
                Response::text(StatusCode::OK, "counted")
            })
            .route(Method::Connect, "tunnel.test:443", |_| {
                Response::text(StatusCode::OK, "tunnel")
            }),
    );
    (server, hits)
}

/// RFC 9112 section 9.3: `close` ends the connection after the response whatever else the
/// `Connection` field lists, in HTTP/1.0 as in HTTP/1.1; so a request pipelined behind it
/// is neither answered nor run.
#[test]
fn close_wins_over_keep_alive_in_http10() {
    let (server, hits) = server_with(test_builder());
    for fields in [
        "Connection: keep-alive, close\r\n",
        "Connection: close, Keep-Alive\r\n",
        "Connection: keep-alive\r\nConnection: CLOSE\r\n",
    ] {
        let mut c = Client::connect(server.local_addr());
        let wire = format!("GET /hello HTTP/1.0\r\n{fields}\r\n{}", get("/count"));
        c.send(wire.as_bytes());
        let r = c.read_reply(false);
        assert_eq!(
            (r.status, r.text(), r.header("connection")),
            (200, "hello", Some("close")),
            "{fields:?}"
        );
        c.expect_eof();
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a request after close ran");
    // HTTP/1.0 with keep-alive alone stays open; HTTP/1.1 `close` with other options
    // closes.
    let mut c = Client::connect(server.local_addr());
    c.send(b"GET /hello HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    assert_eq!(c.read_reply(false).header("connection"), Some("keep-alive"));
    c.send(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: upgrade, Close\r\n\r\n");
    assert_eq!(c.read_reply(false).header("connection"), Some("close"));
    c.expect_eof();
    server.stop().unwrap();
}

/// RFC 9110 section 9.3.2: a response to `HEAD` never has content. The server's own
/// refusals of a `HEAD` request (a bad head, a body over the limit or malformed, a body
/// too slow) keep their `Content-Length` and send no body: the client, which reads no body
/// after the head, would otherwise find it where the next response (or the end) belongs.
#[test]
fn refusals_of_a_head_request_carry_no_body() {
    let (server, _) = server_with(
        test_builder()
            .max_body_bytes(100)
            .body_timeout(Duration::from_millis(200)),
    );
    let cases: [(&str, u16); 5] = [
        // No Host.
        ("HEAD /hello HTTP/1.1\r\n\r\n", 400),
        // A body over the limit, refused as soon as the head is in.
        (
            "HEAD /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 101\r\n\r\n",
            413,
        ),
        // A malformed chunked body.
        (
            "HEAD /hello HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
        ),
        // A body that does not come in time.
        (
            "HEAD /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nab",
            408,
        ),
        (
            "HEAD /hello HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            408,
        ),
    ];
    for (wire, status) in cases {
        let mut c = Client::connect(server.local_addr());
        c.send(wire.as_bytes());
        let r = c.read_reply(true);
        assert_eq!(
            (r.status, r.header("connection")),
            (status, Some("close")),
            "{wire:?}"
        );
        assert!(r.header("content-length").is_some(), "{wire:?}");
        // Nothing after the head: `expect_eof` fails on bytes read with it or after it.
        c.expect_eof();
    }
    // The same requests as GET still get the reason as their body.
    let mut c = Client::connect(server.local_addr());
    c.send(b"GET /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 101\r\n\r\n");
    let r = c.read_reply(false);
    assert_eq!((r.status, r.text()), (413, "request body too large\n"));
    c.expect_eof();
    server.stop().unwrap();
}

/// RFC 9112 section 6.3 and RFC 9110 section 9.3.6: a client takes every byte after the
/// head of a 2xx answer to `CONNECT` for the tunnel, and ignores `Content-Length`. The
/// server makes no tunnel, so such an answer goes without length or body and closes the
/// connection: the bytes a client (or a proxy in front) sends into its "tunnel" are never
/// read as requests.
#[test]
fn a_successful_connect_answer_ends_the_connection() {
    let (server, hits) = server_with(test_builder());
    let mut c = Client::connect(server.local_addr());
    let wire = format!(
        "CONNECT tunnel.test:443 HTTP/1.1\r\nHost: tunnel.test:443\r\n\r\n{}",
        get("/count")
    );
    c.send(wire.as_bytes());
    let r = c.read_reply(true);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), None);
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.header("connection"), Some("close"));
    c.expect_eof();
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a tunnelled request ran");
    // A refusal of `CONNECT` is framed, and ends the connection too: the client may have
    // sent tunnel bytes behind it (see `review_round6.rs`).
    let mut c = Client::connect(server.local_addr());
    c.send(b"CONNECT elsewhere.test:443 HTTP/1.1\r\nHost: elsewhere.test:443\r\n\r\n");
    let r = c.read_reply(false);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("connection"), Some("close"));
    c.expect_eof();
    server.stop().unwrap();
}
