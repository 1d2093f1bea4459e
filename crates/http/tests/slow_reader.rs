//! A client that reads large responses steadily but slowly, for longer than the
//! keep-alive timeout in all: the keep-alive wait begins once its responses are delivered,
//! so it gets every byte, whether the connection waits for its next request (`Idle`) or
//! holds pipelined requests behind its output (`Blocked`). Progress counts what the
//! kernel still holds unacknowledged as well as the connection's own queue, so a short
//! timeout does not mistake the kernel's buffer for a client that stopped reading. A
//! client that reads nothing is still closed after the timeout.
//!
//! Every read has a deadline (`LIMIT`); the pace of the reads (a pause between them) is
//! the client's reading speed, not a wait for an event.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use duo_http::{HttpServerThread, Method, Response, StatusCode};
use duo_testkit::{wait_until, LIMIT};
use util::{start, test_builder};

/// Body size of `GET /huge`: far more than the loopback socket buffers hold once the
/// client's receive buffer is small.
const HUGE: usize = 16 << 20;

/// A server with `GET /huge`, the keep-alive timeout `keep_alive` and a short linger.
fn huge_server(keep_alive: Duration, max_pending_output: usize) -> HttpServerThread {
    start(
        test_builder()
            .route(Method::Get, "/huge", |_| {
                Response::with_body(StatusCode::OK, "application/octet-stream", vec![b'h'; HUGE])
            })
            .keep_alive_timeout(keep_alive)
            // Short: a closing connection's timer fires often.
            .linger(Duration::from_millis(100))
            .max_pending_output(max_pending_output),
    )
}

/// A client with a small receive buffer, so that most of a response waits on the server.
fn small_window_client(server: &HttpServerThread) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(32 << 10).unwrap();
    sock.connect(&server.local_addr().into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s
}

/// Reads `responses` responses of [`HUGE`] bytes, 32 KiB at most every 4 ms (about two
/// seconds each); returns the body bytes of each, as far as they came.
fn read_slowly(s: &mut TcpStream, responses: usize) -> Vec<usize> {
    let started = Instant::now();
    let (mut got, mut bodies) = (Vec::new(), Vec::new());
    let mut chunk = [0u8; 32 << 10];
    while bodies.len() < responses {
        let head = got.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        if let Some(head) = head.filter(|&h| got.len() >= h + HUGE) {
            assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
            bodies.push(HUGE);
            got.drain(..head + HUGE);
            continue;
        }
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => {
                // The server closed (or reset) with the response unfinished.
                bodies.push(head.map_or(0, |h| got.len() - h));
                break;
            }
            Ok(n) => n,
        };
        got.extend_from_slice(&chunk[..n]);
        assert!(started.elapsed() < 3 * LIMIT, "reading took too long");
        thread::sleep(Duration::from_millis(4));
    }
    bodies
}

/// The keep-alive timeout of the slow-reader tests: a reading takes several.
const KEEP_ALIVE: Duration = Duration::from_millis(300);

/// A server (output bound `max_pending_output`) and a client that sends `requests` and
/// reads `responses` huge responses slowly: each comes whole, over several timeouts.
fn served_slowly(
    requests: &[u8],
    responses: usize,
    max_pending_output: usize,
) -> (HttpServerThread, TcpStream) {
    let server = huge_server(KEEP_ALIVE, max_pending_output);
    let mut s = small_window_client(&server);
    s.write_all(requests).unwrap();
    let started = Instant::now();
    let bodies = read_slowly(&mut s, responses);
    assert_eq!(
        bodies,
        vec![HUGE; responses],
        "after {:?}",
        started.elapsed()
    );
    // The scenario spanned several timeouts (else it proves nothing).
    assert!(
        started.elapsed() > 2 * KEEP_ALIVE,
        "{:?}",
        started.elapsed()
    );
    (server, s)
}

#[test]
fn a_slow_reader_of_a_large_keep_alive_response_gets_all_of_it() {
    let (server, mut s) = served_slowly(b"GET /huge HTTP/1.1\r\nHost: t\r\n\r\n", 1, 1 << 20);
    // Then the keep-alive wait: the connection is still open for a next request.
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut reply = [0u8; 17];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"HTTP/1.1 200 OK\r\n");
    server.stop().unwrap();
}

#[test]
fn a_slow_reader_of_pipelined_large_responses_gets_all_of_them() {
    let requests = b"GET /huge HTTP/1.1\r\nHost: t\r\n\r\n".repeat(2);
    let (server, _s) = served_slowly(&requests, 2, 64 << 10);
    server.stop().unwrap();
}

/// The same for the last response (`Connection: close`): every byte comes, then the end of
/// stream (before, a review helper found, the closing connection was cut off at the
/// keep-alive timeout whatever the client received).
#[test]
fn a_slow_reader_of_a_large_last_response_gets_all_of_it() {
    let request = b"GET /huge HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let (server, mut s) = served_slowly(request, 1, 1 << 20);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{} bytes after the response", rest.len());
    server.stop().unwrap();
}

#[test]
fn a_client_that_reads_nothing_is_closed_after_the_timeout() {
    let keep_alive = Duration::from_millis(200);
    let server = huge_server(keep_alive, 1 << 20);
    let mut s = small_window_client(&server);
    s.write_all(b"GET /huge HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    wait_until("the connection to be accepted, then closed", || {
        let stats = server.stats();
        stats.accepted == 1 && stats.active == 0
    });
    // What the kernel had taken before the close, then the end.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.len() < HUGE, "{} bytes", rest.len());
    server.stop().unwrap();
}
