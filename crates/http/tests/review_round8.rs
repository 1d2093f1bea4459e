//! Review round 8 of duo-http: connection handling. A client that resets its connection
//! while the server waits on it (blocked on output it does not read, or waiting for a
//! deferred answer), and a graceful stop of a server thread with no time limit. (Written
//! by a review helper: each test failed before its fix.)

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use duo_http::{Response, StatusCode};
use duo_testkit::wait_until_within;
use util::deferred::{deferred_builder, Held};
use util::{
    blocking_builder, reset, start, test_builder, wait_for_queued_output, Client, LONG, SOON,
};

/// A client that pipelines large responses without reading blocks its connection
/// (`Blocked`: reading stops until the client takes the queued output). When it resets
/// the connection, the queued output is dropped and no write-complete ever comes, so the
/// connection used to stay open, holding its descriptor and its unanswered requests,
/// until the keep-alive timeout (60 s here). It closes at once.
#[test]
fn a_blocked_client_that_resets_is_closed_at_once() {
    let server = start(blocking_builder());
    let c = Client::connect(server.local_addr());
    let requests = "GET /big HTTP/1.1\r\nHost: t\r\n\r\n".repeat(400);
    let mut writer = c.stream.try_clone().expect("clone the client socket");
    // The writer fails once the connection is reset: only what it sent matters.
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(requests.as_bytes());
    });
    wait_for_queued_output(|| server.stats());
    assert_eq!(server.stats().active, 1);
    let gone = Instant::now();
    reset(c.stream);
    wait_until_within(
        SOON,
        "the server to close the gone client's connection",
        || server.stats().active == 0,
    );
    assert!(gone.elapsed() < SOON);
    sender.join().expect("the writer thread");
    // The server goes on.
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.get("/hello").text(), "hello");
    server.stop().unwrap();
}

/// The same for a client waiting for a deferred answer: its connection (and the requests
/// it pipelined behind) used to stay until the answer came or the response timeout (60 s
/// here) passed, though nothing could be sent to it. It closes at once, the responder
/// sees it, and its late answer goes nowhere.
#[test]
fn a_client_that_resets_while_its_deferred_answer_is_outstanding_is_closed_at_once() {
    let (builder, held, _) = deferred_builder();
    let server = start(builder.response_timeout(LONG).keep_alive_timeout(LONG));
    let mut c = Client::connect(server.local_addr());
    c.send(b"GET /held?1 HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until_within(SOON, "the held request", || held.lock().unwrap().len() == 1);
    reset(c.stream);
    wait_until_within(
        SOON,
        "the server to close the gone client's connection",
        || server.stats().active == 0,
    );
    answer_late(&held);
    // The server goes on.
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.get("/hello").text(), "hello");
    server.stop().unwrap();
}

/// Answers the held requests, whose clients are gone.
fn answer_late(held: &Held) {
    for (text, r) in held.lock().unwrap().drain(..) {
        assert!(!r.is_connected(), "the responder sees its client gone");
        r.respond(Response::text(StatusCode::OK, text));
    }
}

/// `HttpServerThread::shutdown(Duration::MAX)`, a graceful stop that waits as long as it
/// takes (the builder's timeouts take `Duration::MAX` the same way), used to panic in the
/// caller (`overflow when adding durations`: the grace plus a margin). It stops the
/// server.
#[test]
fn a_graceful_stop_without_time_limit_does_not_panic() {
    // (A short linger: the idle connection's close does not wait for the client's.)
    let server = start(test_builder().linger(Duration::from_millis(100)));
    let addr = server.local_addr();
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/hello").text(), "hello");
    server.shutdown(Duration::MAX).expect("a graceful stop");
    // Closed, and nothing listens any more.
    c.expect_eof();
    assert!(TcpStream::connect(addr).is_err(), "still listening");
}
