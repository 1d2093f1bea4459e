//! Review round 11 of duo-http: a lone CR (the start of an empty line, or of nothing) at a
//! graceful shutdown and at the timeouts, and the parsing rules the earlier rounds left
//! uncombined.
//!
//! The round's proptest of the request scanner (that skipping a parse never changes an
//! answer) needs its private type: it is in `src/conn/scan.rs`.
//!
//! Every wait is on an event (a response read, EOF, a completed shutdown), bounded by
//! `LIMIT`; the timeouts a test must not reach are far longer than it waits.

mod util;

use std::time::Duration;

use duo_testkit::{wait_until, LIMIT};
use util::{get, test_builder, Client, LoopServer, LONG};

/// A kept-alive client whose last bytes are a lone CR (a stray empty line cut after its
/// CR) has sent nothing of a request: at a graceful shutdown it is closed at once, as an
/// idle one is, not held until the header timeout or the grace period.
#[test]
fn a_lone_cr_after_a_response_does_not_hold_a_graceful_shutdown() {
    let server = LoopServer::start(test_builder().header_timeout(LONG).keep_alive_timeout(LONG));
    let mut c = Client::connect(server.addr);
    // One write: once its response is read, the server has read the CR too.
    c.send(format!("{}\r", get("/hello")).as_bytes());
    assert_eq!(c.read_reply(false).text(), "hello");
    let done = server.shutdown(LONG);
    // Before, no EOF within LIMIT: the connection counted as in a request.
    c.expect_eof();
    done.recv_timeout(LIMIT).expect("the shutdown to complete");
    server.join();
}

/// A lone CR as a connection's first and only byte: closed at once by a graceful
/// shutdown too, not held for the header timeout.
#[test]
fn a_lone_cr_as_the_first_byte_does_not_hold_a_graceful_shutdown() {
    let server = LoopServer::start(test_builder().header_timeout(LONG));
    let mut c = Client::connect(server.addr);
    c.send(b"\r");
    // Read by the server's loop (its callbacks run before the shutdown's, queued after).
    wait_until("the server to read the CR", || {
        server.handle.stats().bytes_in() == 1
    });
    let done = server.shutdown(LONG);
    c.expect_eof();
    done.recv_timeout(LIMIT).expect("the shutdown to complete");
    server.join();
}

/// A lone CR after a response leaves the connection idle: closed without a 408 at the
/// keep-alive timeout, as after a whole stray CRLF (not a `408` at the header timeout).
#[test]
fn a_lone_cr_after_a_response_is_idle_not_a_request_begun() {
    let server = LoopServer::start(
        test_builder()
            .header_timeout(Duration::from_millis(200))
            .keep_alive_timeout(Duration::from_millis(400)),
    );
    let mut c = Client::connect(server.addr);
    c.send(format!("{}\r", get("/hello")).as_bytes());
    assert_eq!(c.read_reply(false).text(), "hello");
    // Before: a 408 (bytes instead of EOF).
    c.expect_eof();
}

/// What follows a lone CR read on its own is judged with it: an LF makes an empty line
/// (the request after it is served), anything else a bare CR before a request line (400
/// and close), as when the bytes come in one read.
#[test]
fn a_lone_cr_read_alone_is_judged_with_what_follows() {
    let server = LoopServer::start(test_builder().header_timeout(LONG));
    let mut c = Client::connect(server.addr);
    c.send(b"\r");
    wait_until("the server to read the CR", || {
        server.handle.stats().bytes_in() == 1
    });
    c.send(format!("\n{}", get("/hello")).as_bytes());
    assert_eq!(c.read_reply(false).text(), "hello");

    let mut c = Client::connect(server.addr);
    c.send(format!("{}\r", get("/hello")).as_bytes());
    assert_eq!(c.read_reply(false).text(), "hello");
    c.send(get("/hello").as_bytes());
    let r = c.read_reply(false);
    assert_eq!((r.status, r.header("connection")), (400, Some("close")));
    c.expect_eof();
}
