//! Chunked request bodies on a real server: decoded as they arrive (one byte per write
//! included), answered in order among pipelined requests, also when the answer waits for
//! a client that does not read; refused with the right status (and the connection
//! closed) when malformed, too large or too slow; sent by curl.

mod util;

use std::process::Command;
use std::time::Duration;

use duo_http::{Method, Response, StatusCode};
use duo_testkit::{run_within, LIMIT};
use util::{start, test_builder, wait_for_queued_output, Client};

const HEAD: &[u8] = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";

#[test]
fn a_chunked_body_reaches_the_handler_however_it_arrives() {
    let server = start(test_builder());
    let mut c = Client::connect(server.local_addr());
    c.stream.set_nodelay(true).unwrap();
    let body = b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: x\r\n\r\n";
    c.send(HEAD);
    for b in body {
        c.send(&[*b]);
    }
    let r = c.read_reply(false);
    assert_eq!((r.status, r.text()), (200, "hello world"));
    // Pipelined after it in one write: answered after it, in order, on the same
    // connection.
    let mut both = HEAD.to_vec();
    both.extend_from_slice(b"3\r\nabc\r\n0\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    c.send(&both);
    assert_eq!(c.read_reply(false).text(), "abc");
    assert_eq!(c.read_reply(false).text(), "hello");
    assert_eq!(server.stats().accepted, 1);
}

#[test]
fn expect_100_continue_with_a_chunked_body() {
    let server = start(test_builder());
    let mut c = Client::connect(server.local_addr());
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\
          Transfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(c.read_reply(true).status, 100);
    c.send(b"2\r\nok\r\n0\r\n\r\n");
    let r = c.read_reply(false);
    assert_eq!((r.status, r.text()), (200, "ok"));
}

#[test]
fn refusals_close_the_connection() {
    let server = start(test_builder().max_body_bytes(100));
    let refused = |wire: &[u8], status: u16| {
        let mut c = Client::connect(server.local_addr());
        c.send(wire);
        let r = c.read_reply(false);
        assert_eq!(
            (r.status, r.header("connection")),
            (status, Some("close")),
            "{}",
            String::from_utf8_lossy(wire)
        );
        c.expect_eof();
    };
    let with = |body: &[u8]| [HEAD, body].concat();
    // Over the limit: refused at the chunk's size, before its data.
    refused(&with(b"65\r\n"), 413);
    refused(
        &with(b"40\r\n0123456789012345678901234567890123456789012345678901234567890123\r\n25\r\n"),
        413,
    );
    refused(&with(b"5\r\nhelloX"), 400);
    refused(&with(b"\r\n"), 400);
    refused(&with(b"5;a\nb\r\nhello\r\n0\r\n\r\n"), 400);
    // The body's end with a bare LF: a reader that wants CRLF would take the request
    // after it for trailer lines (a smuggled request): refused, and it is not run.
    refused(
        &with(b"3\r\nabc\r\n0\r\n\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n"),
        400,
    );
    // A request a proxy could frame otherwise (smuggling) is refused, never guessed at.
    refused(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    );
    refused(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        400,
    );
}

#[test]
fn a_stalled_chunked_body_gets_408() {
    let server = start(test_builder().body_timeout(Duration::from_millis(200)));
    let mut c = Client::connect(server.local_addr());
    c.send(&[HEAD, b"5\r\nhel"].concat());
    let r = c.read_reply(false);
    assert_eq!((r.status, r.header("connection")), (408, Some("close")));
    c.expect_eof();
}

/// A chunked request completed while the output is over the bound waits, whole, until the
/// client has read: its answer then comes after the ones before it.
#[test]
fn a_complete_chunked_request_waits_for_a_client_that_does_not_read() {
    let big = vec![b'b'; 8 << 20];
    let body = big.clone();
    let server = start(test_builder().max_pending_output(1 << 10).route(
        Method::Get,
        "/big",
        move |_| Response::with_body(StatusCode::OK, "application/octet-stream", &body[..]),
    ));
    let mut c = Client::connect(server.local_addr());
    let mut wire = b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n".repeat(2);
    wire.extend_from_slice(HEAD);
    wire.extend_from_slice(b"4\r\nlast\r\n0\r\n\r\n");
    c.send(&wire);
    wait_for_queued_output(|| server.stats());
    assert_eq!(c.read_reply(false).body, big);
    assert_eq!(c.read_reply(false).body, big);
    let r = c.read_reply(false);
    assert_eq!((r.status, r.text()), (200, "last"));
}

#[test]
fn curl_uploads_chunked() {
    if Command::new("curl").arg("--version").output().is_err() {
        println!("curl is not installed: skipping the curl test");
        return;
    }
    let server = start(test_builder());
    let out = run_within(
        Command::new("curl")
            .args(["-sS", "--max-time", "5", "-H", "Transfer-Encoding: chunked"])
            .args(["--data-binary", "sent by curl, chunked"])
            .arg(format!("http://{}/echo", server.local_addr())),
        LIMIT,
    )
    .expect("curl");
    assert!(out.status.success(), "curl failed: {}", out.stderr);
    assert_eq!(out.stdout, "sent by curl, chunked");
}
