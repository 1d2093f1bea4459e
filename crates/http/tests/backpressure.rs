//! A client that pipelines many requests and does not read the responses: the server
//! holds a bounded amount of output for it (stops answering, and reading, until the
//! client takes what is queued), keeps its timeouts apart from that wait, and answers
//! every request in order once the client reads. Also: timeouts as long as
//! `Duration::MAX` are accepted (clamped) without overflowing.
//!
//! Every read has a deadline (`duo_testkit::LIMIT`), and every server is stopped (its
//! thread joined) when its `HttpServerThread` drops.

mod util;

use std::time::{Duration, Instant};

use duo_http::{defaults, Method, Response, StatusCode};
use duo_testkit::{wait_until, LIMIT};
use util::{start, test_builder, Client};

/// Body size of `GET /big`.
const BIG: usize = 30 << 10;

fn queued(server: &duo_http::HttpServerThread) -> u64 {
    server.stats().output_queued()
}

#[test]
fn pipelined_requests_to_a_reader_that_waits_hold_bounded_output() {
    const REQUESTS: usize = 4000;
    // Short request timeouts: they must not fire while the server only waits for the
    // client to read.
    let short = Duration::from_millis(200);
    let server = start(big_builder().header_timeout(short).body_timeout(short));
    let c = Client::connect(server.local_addr());
    let requests = big_requests(0..REQUESTS);
    let mut writer = c.stream.try_clone().expect("clone the client socket");
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        writer.write_all(&requests).expect("write the requests");
    });

    // The server fills the socket, then queues up to its bound (plus one response).
    let bound = defaults::MAX_PENDING_OUTPUT as u64;
    let most = 2 * bound + BIG as u64 + 1024;
    wait_until("the server to queue output", || queued(&server) > 0);
    // Not reading for a while (longer than the request timeouts): the queue stays
    // bounded and the connection open.
    let until = Instant::now() + 4 * short;
    let mut peak = 0;
    while Instant::now() < until {
        peak = peak.max(queued(&server));
        assert!(peak <= most, "{peak} bytes queued, bound {most}");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        server.stats().active,
        1,
        "the waiting connection was closed"
    );

    // Now the client reads: every response, in order.
    let mut c = c;
    let started = Instant::now();
    for i in 0..REQUESTS {
        let r = c.read_reply(false);
        assert_eq!(r.status, 200, "response {i}");
        assert_eq!(r.body.len(), BIG, "response {i}");
        let tag = format!("{i}\n");
        assert!(
            r.body.starts_with(tag.as_bytes()),
            "response {i} out of order: {:?}",
            String::from_utf8_lossy(&r.body[..16])
        );
        assert!(started.elapsed() < 6 * LIMIT, "reading took too long");
        peak = peak.max(queued(&server));
    }
    assert!(peak <= most, "{peak} bytes queued, bound {most}");
    println!("peak queued output: {peak} bytes (bound {most})");
    sender.join().expect("the writer thread");
    // Still kept alive and working.
    assert_eq!(c.get("/hello").text(), "hello");
}

/// The test server with `GET /big?tag`: `tag`, a line end, and padding to `BIG` bytes.
fn big_builder() -> duo_http::HttpServerBuilder {
    test_builder().route(Method::Get, "/big", |req| {
        let mut body = format!("{}\n", req.query().unwrap_or("-")).into_bytes();
        body.resize(BIG, b'x');
        Response::with_body(StatusCode::OK, "application/octet-stream", body)
    })
}

fn big_requests(tags: std::ops::Range<usize>) -> Vec<u8> {
    let mut out = Vec::new();
    for i in tags {
        out.extend_from_slice(format!("GET /big?{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    out
}

#[test]
fn a_request_cut_short_behind_the_held_ones_is_finished_later() {
    const REQUESTS: usize = 300; // 9 MB of responses: more than the socket buffers hold
    let server = start(big_builder());
    let mut c = Client::connect(server.local_addr());
    let mut burst = big_requests(0..REQUESTS);
    burst.extend_from_slice(b"GET /big?last HTTP/1.1\r\nHo");
    c.send(&burst);
    wait_until("the server to queue output", || queued(&server) > 0);
    for i in 0..REQUESTS {
        let r = c.read_reply(false);
        assert!(
            r.body.starts_with(format!("{i}\n").as_bytes()),
            "response {i}"
        );
    }
    c.send(b"st: t\r\n\r\n");
    let r = c.read_reply(false);
    assert!(r.body.starts_with(b"last\n"), "the last response");
    assert_eq!(c.get("/hello").text(), "hello");
}

#[test]
fn a_client_that_reads_nothing_is_closed_after_the_keep_alive_timeout() {
    let keep_alive = Duration::from_millis(300);
    let server = start(big_builder().keep_alive_timeout(keep_alive));
    // Before the connection exists: the server's keep-alive clock, started when it
    // blocks on the unread output, cannot have started earlier.
    let started = Instant::now();
    let c = Client::connect(server.local_addr());
    let requests = big_requests(0..1000);
    let mut writer = c.stream.try_clone().expect("clone the client socket");
    // The writer fails once the server closes: only what it sent matters.
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        let _ = writer.write_all(&requests);
    });
    wait_until("the server to queue output", || queued(&server) > 0);
    wait_until("the server to close the connection", || {
        server.stats().active == 0
    });
    // Timers never fire early, and the client took none of its output.
    assert!(
        started.elapsed() >= keep_alive,
        "closed {:?} after connecting, before the keep-alive timeout",
        started.elapsed()
    );
    assert_eq!(server.stats().closes().user, 1);
    drop(c);
    sender.join().expect("the writer thread");
}

#[test]
fn timeouts_as_long_as_duration_max_are_clamped() {
    let server = start(
        test_builder()
            .header_timeout(Duration::MAX)
            .body_timeout(Duration::MAX)
            .keep_alive_timeout(Duration::MAX)
            .linger(Duration::MAX),
    );
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.get("/hello").text(), "hello");
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nab");
    c.send(b"c");
    assert_eq!(c.read_reply(false).text(), "abc");
    c.send(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(c.read_reply(false).text(), "hello");
    c.expect_eof();
    // The server lingers (for the clamped day) until its peer closes too.
    drop(c);
    wait_until("the server to count the connection closed", || {
        server.stats().active == 0
    });
    assert_eq!(server.stats().closes().panic, 0);
}
