//! Review round 9 of duo-http: a client that finishes sending (half-close) while its
//! connection is held, and then resets it. The FIN alone changes nothing (the client may
//! still read its answers); the reset that follows means it is gone, and its connection
//! closes at once instead of at its timeout. Also a request written a byte at a time,
//! and a malformed line written in pieces (the server parses again only at line ends).

mod util;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use duo_http::{HttpServerThread, Response, StatusCode};
use duo_testkit::wait_until_within;
use util::deferred::deferred_builder;
use util::{
    blocking_builder, reset, start, test_builder, wait_for_queued_output, Client, LONG, SOON,
};

/// The client half-closes its held connection, which stays (the client may still read
/// its answers after its FIN), then resets it: the server closes it at once.
fn half_close_then_reset(server: &HttpServerThread, client: TcpStream) {
    client.shutdown(Shutdown::Write).expect("half-close");
    // (Nothing to wait for: the connection must merely still be there a moment later.)
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        server.stats().active,
        1,
        "a FIN alone closed the connection"
    );
    reset(client);
    wait_until_within(
        SOON,
        "the server to close the gone client's connection",
        || server.stats().active == 0,
    );
}

/// Waiting for a deferred answer: the half-close leaves the connection waiting (the
/// client may read the answer), the reset closes it, and the responder sees it gone.
#[test]
fn a_half_closed_client_that_resets_while_its_answer_is_deferred_is_closed_at_once() {
    let (builder, held, _) = deferred_builder();
    let server = start(builder.response_timeout(LONG).keep_alive_timeout(LONG));
    let mut c = Client::connect(server.local_addr());
    c.send(b"GET /held?1 HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until_within(SOON, "the held request", || held.lock().unwrap().len() == 1);
    half_close_then_reset(&server, c.stream);
    for (text, r) in held.lock().unwrap().drain(..) {
        assert!(!r.is_connected(), "the responder sees its client gone");
        r.respond(Response::text(StatusCode::OK, text));
    }
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.get("/hello").text(), "hello");
    server.stop().unwrap();
}

/// Blocked on output the client does not read: the same.
#[test]
fn a_half_closed_blocked_client_that_resets_is_closed_at_once() {
    let server = start(blocking_builder());
    let mut c = Client::connect(server.local_addr());
    // Enough to block the connection, small enough to leave the client's send buffer.
    c.stream
        .write_all("GET /big HTTP/1.1\r\nHost: t\r\n\r\n".repeat(64).as_bytes())
        .expect("the requests");
    wait_for_queued_output(|| server.stats());
    half_close_then_reset(&server, c.stream);
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.get("/hello").text(), "hello");
    server.stop().unwrap();
}

/// A request whose head and body are written a byte at a time (`TCP_NODELAY`: mostly a
/// segment each; the server reads what has come, one byte or a few) is answered as if
/// it came whole, over the many partial parses `Rescan` skips or makes. (Every cut of a
/// request into two pieces: `review_round9_parse.rs`.)
#[test]
fn a_request_sent_a_byte_at_a_time_is_answered() {
    let server = start(test_builder());
    let mut c = Client::connect(server.local_addr());
    c.stream.set_nodelay(true).expect("TCP_NODELAY");
    let request = b"POST /echo HTTP/1.1\r\nHost: t\r\nX-Long: aaaaaaaaaaaaaaaaaaaa\r\nContent-Length: 5\r\n\r\nhello";
    for b in request {
        c.stream.write_all(&[*b]).expect("a byte");
    }
    let reply = c.read_reply(false);
    assert_eq!(reply.text(), "hello");
    // And the next request on the connection, sent whole.
    assert_eq!(c.get("/hello").text(), "hello");
    server.stop().unwrap();
}

/// A malformed head line sent in pieces is refused once the line ends, as it is when it
/// comes whole.
#[test]
fn a_bad_header_sent_in_pieces_is_refused_when_its_line_ends() {
    let server = start(test_builder().keep_alive_timeout(LONG));
    let mut c = Client::connect(server.local_addr());
    c.stream.set_nodelay(true).expect("TCP_NODELAY");
    for piece in [
        &b"GET /hello HTTP/1.1\r\nHo"[..],
        b"st: t\r\nBad",
        b"\x01Name: x",
        b"\r\n",
    ] {
        c.stream.write_all(piece).expect("a piece");
        std::thread::sleep(Duration::from_millis(20));
    }
    let reply = c.read_reply(false);
    assert_eq!(reply.status, 400, "{}", reply.text());
    c.expect_eof();
    server.stop().unwrap();
}
