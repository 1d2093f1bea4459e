//! Deferred answers combined with the other states of a connection over real loopback
//! sockets: the output bound (a deferred request behind responses the client has not
//! read, failures in that backlog), pipelines split around a deferred request, `HEAD`,
//! HTTP/1.0 keep-alive, `Expect: 100-continue`, the one timer serving both the response
//! and the keep-alive timeout, graceful shutdown, half-closing clients, and the linger
//! after an answer or a 503 that closes.
//!
//! Every wait is on an event (a held request, bytes read, output queued, an idle
//! connection closed by the shutdown), but one: proving the keep-alive timer does not end
//! a waiting connection takes letting that timer pass.

mod util;

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;

use std::thread;
use std::time::{Duration, Instant};

use duo_http::{HttpServerThread, Method, Request, Responder, Response, StatusCode};
use duo_testkit::{join_within, tcp_state, wait_until, TcpState, LIMIT};
use util::deferred::{answer_held, deferred_builder, BIG};
use util::{get, read_to_eof, start, wait_for_queued_output, Client, LoopServer};

/// Deferred requests among big responses past the output bound, the client not reading
/// at first: replies in order and whole.
#[test]
fn deferred_requests_behind_the_output_bound_keep_order() {
    let (b, held, hits) = deferred_builder();
    let server = start(b.max_pending_output(1024));
    let mut c = Client::connect(server.local_addr());
    let mut p = String::new();
    for i in 0..8 {
        p.push_str(&get(&format!("/big?{}", (b'a' + i) as char)));
        p.push_str(&get(&format!("/held?h{i}")));
        p.push_str(&get(&format!("/dbig?{}", (b'k' + i) as char)));
        p.push_str(&get("/now?n"));
        p.push_str(&get("/count"));
    }
    c.send(p.as_bytes());
    let answering = {
        let held = held.clone();
        thread::spawn(move || {
            for _ in 0..8 {
                answer_held(&held, 1);
            }
        })
    };
    for i in 0..8u8 {
        let r = c.read_reply(false);
        assert!(
            r.body.len() == BIG && r.body.iter().all(|&x| x == b'a' + i),
            "big {i}"
        );
        assert_eq!(c.read_reply(false).text(), format!("h{i}"));
        let r = c.read_reply(false);
        assert!(
            r.body.len() == BIG && r.body.iter().all(|&x| x == b'k' + i),
            "dbig {i}"
        );
        assert_eq!(c.read_reply(false).text(), "n");
        assert_eq!(c.read_reply(false).text(), (i as usize + 1).to_string());
    }
    join_within("answering", answering);
    assert_eq!(hits.load(Ordering::SeqCst), 8);
    server.stop().unwrap();
}

/// The request after a deferred one split across reads: part before the answer, the
/// rest while waiting, or after the answer.
#[test]
fn a_pipeline_split_after_a_deferred_request() {
    let (b, held, _) = deferred_builder();
    let server = start(b);
    for rest_while_waiting in [true, false] {
        let mut c = Client::connect(server.local_addr());
        c.send(format!("{}GET /query?x HT", get("/held?a")).as_bytes());
        wait_until("held", || held.lock().unwrap().len() == 1);
        let rest = b"TP/1.1\r\nHost: t\r\n\r\nGET /held?b HTTP/1.1\r\n";
        let before = bytes_in(&server);
        if rest_while_waiting {
            // Stays in the kernel: a waiting connection reads nothing.
            c.send(rest);
            answer_held(&held, 1);
        } else {
            answer_held(&held, 1);
            assert_eq!(c.read_reply(false).text(), "a");
            c.send(rest);
        }
        // The last piece in a read of its own: once the server has read the rest.
        wait_until("the server to read the rest", || {
            bytes_in(&server) >= before + rest.len() as u64
        });
        c.send(b"Host: t\r\n\r\n");
        if rest_while_waiting {
            assert_eq!(c.read_reply(false).text(), "a");
        }
        assert_eq!(c.read_reply(false).text(), "x");
        answer_held(&held, 1);
        assert_eq!(c.read_reply(false).text(), "b");
        assert_eq!(c.get("/hello").text(), "hello");
    }
    server.stop().unwrap();
}

/// HEAD to a deferred route: the answer and the 503 of the response timeout go without a
/// body.
#[test]
fn head_gets_no_body_from_a_deferred_answer_or_its_timeout() {
    let (b, _held, _) = deferred_builder();
    let server = start(b.response_timeout(Duration::from_millis(150)));
    let mut c = Client::connect(server.local_addr());
    c.send(b"HEAD /later?abc HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_reply(true);
    assert_eq!((r.status, r.header("content-length")), (200, Some("3")));
    c.send(b"HEAD /held?x HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_reply(true);
    assert_eq!((r.status, r.header("connection")), (503, Some("close")));
    c.expect_eof();
    server.stop().unwrap();
}

/// HTTP/1.0 with keep-alive: the deferred answer says `Connection: keep-alive` and the
/// connection stays; without it, close.
#[test]
fn http10_keep_alive_with_a_deferred_answer() {
    let (b, _held, _) = deferred_builder();
    let server = start(b);
    let mut c = Client::connect(server.local_addr());
    c.send(b"GET /later?k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read_reply(false);
    assert_eq!(
        (r.text(), r.header("connection")),
        ("k", Some("keep-alive"))
    );
    c.send(b"GET /later?c HTTP/1.0\r\n\r\nGET /hello HTTP/1.0\r\n\r\n");
    let r = c.read_reply(false);
    assert_eq!((r.text(), r.header("connection")), ("c", Some("close")));
    c.expect_eof();
    server.stop().unwrap();
}

/// Expect: 100-continue on a deferred POST, also behind a deferred request.
#[test]
fn expect_continue_to_a_deferred_post() {
    let (b, held, _) = deferred_builder();
    let server = start(b);
    let mut c = Client::connect(server.local_addr());
    let head =
        b"POST /decho HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n";
    c.send(head);
    assert_eq!(c.read_reply(true).status, 100);
    c.send(b"body");
    assert_eq!(c.read_reply(false).text(), "body");
    // Behind a held request: the 100 comes after the held answer.
    c.send(get("/held?first").as_bytes());
    wait_until("held", || held.lock().unwrap().len() == 1);
    c.send(head);
    answer_held(&held, 1);
    assert_eq!(c.read_reply(false).text(), "first");
    assert_eq!(c.read_reply(true).status, 100);
    c.send(b"data");
    assert_eq!(c.read_reply(false).text(), "data");
    server.stop().unwrap();
}

/// The one timer: a keep-alive timeout shorter than the response timeout does not end a
/// Waiting connection; a response timeout shorter than the pending timer is honoured.
#[test]
fn the_one_timer_serves_the_response_timeout_both_ways() {
    let (b, held, _) = deferred_builder();
    let server = start(
        b.keep_alive_timeout(Duration::from_millis(100))
            .response_timeout(Duration::from_secs(5)),
    );
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.get("/hello").text(), "hello");
    c.send(get("/held?slow").as_bytes());
    wait_until("held", || held.lock().unwrap().len() == 1);
    // Not an event: four keep-alive timeouts pass (see the header) without closing it.
    thread::sleep(Duration::from_millis(400));
    answer_held(&held, 1);
    let r = c.read_reply(false);
    assert_eq!((r.status, r.text()), (200, "slow"));
    assert_eq!(c.get("/hello").text(), "hello");
    server.stop().unwrap();

    let (b, _held, _) = deferred_builder();
    let server = start(
        b.keep_alive_timeout(Duration::from_secs(20))
            .header_timeout(Duration::from_secs(20))
            .response_timeout(Duration::from_millis(200)),
    );
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.get("/hello").text(), "hello");
    let started = Instant::now();
    c.send(get("/held?never").as_bytes());
    let r = c.read_reply(false);
    assert_eq!(r.status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    c.expect_eof();
    server.stop().unwrap();
}

/// An answer that ends the connection, with the client still writing: the server reads
/// and drops it (linger), so the client gets the answer and EOF, not a reset.
#[test]
fn an_answer_that_closes_lingers_and_reads() {
    let (b, held, _) = deferred_builder();
    let server = start(b.linger(Duration::from_secs(1)));
    let mut c = Client::connect(server.local_addr());
    c.send(b"GET /held?bye HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    wait_until("held", || held.lock().unwrap().len() == 1);
    // Junk that stays unread while waiting.
    c.send(&vec![b'x'; 64 << 10]);
    answer_held(&held, 1);
    let r = c.read_reply(false);
    assert_eq!((r.text(), r.header("connection")), ("bye", Some("close")));
    // More junk after the answer: read and dropped.
    let _ = c.stream.write_all_ok(&[b'y'; 4096]);
    let rest = read_to_eof(&mut c.stream);
    assert!(rest.is_empty());
    server.stop().unwrap();
}

trait WriteOk {
    fn write_all_ok(&mut self, b: &[u8]) -> std::io::Result<()>;
}
impl WriteOk for TcpStream {
    fn write_all_ok(&mut self, b: &[u8]) -> std::io::Result<()> {
        std::io::Write::write_all(self, b)
    }
}

/// The same after the response timeout's 503.
#[test]
fn a_timeout_503_lingers_and_reads() {
    let (b, _held, _) = deferred_builder();
    let server = start(
        b.linger(Duration::from_secs(1))
            .response_timeout(Duration::from_millis(100)),
    );
    let mut c = Client::connect(server.local_addr());
    c.send(get("/held?late").as_bytes());
    c.send(&vec![b'x'; 64 << 10]);
    let r = c.read_reply(false);
    assert_eq!(r.status, 503);
    let rest = read_to_eof(&mut c.stream);
    assert!(rest.is_empty());
    server.stop().unwrap();
}

/// Bytes the server has read, from all its connections.
fn bytes_in(server: &HttpServerThread) -> u64 {
    server.stats().per_loop.iter().map(|l| l.bytes_in).sum()
}

/// A graceful shutdown while waiting, with a part of the next request read.
#[test]
fn graceful_shutdown_while_waiting_with_a_partial_request_behind() {
    let (b, held, hits) = deferred_builder();
    let server = LoopServer::start(b);
    let mut idle = Client::connect(server.addr);
    assert_eq!(idle.get("/hello").text(), "hello");
    let mut c = Client::connect(server.addr);
    c.send(format!("{}GET /count HT", get("/held?last")).as_bytes());
    wait_until("held", || held.lock().unwrap().len() == 1);
    let done = server.shutdown(LIMIT);
    // The shutdown has reached the connections (one loop) once the idle one is closed.
    idle.expect_eof();
    answer_held(&held, 1);
    let r = c.read_reply(false);
    assert_eq!((r.text(), r.header("connection")), ("last", Some("close")));
    c.expect_eof();
    done.recv_timeout(LIMIT).expect("the shutdown to complete");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    server.join();
}

/// Answered synchronously, then the handler panics: one 500 (not the answer) and EOF;
/// synchronous answers in a pipeline keep order.
#[test]
fn synchronous_answers_and_a_panic_after_answering() {
    let (b, _held, hits) = deferred_builder();
    let server = start(b);
    let mut c = Client::connect(server.local_addr());
    c.send(
        [get("/now?1"), get("/now?2"), get("/count"), get("/now?3")]
            .concat()
            .as_bytes(),
    );
    for want in ["1", "2", "1", "3"] {
        assert_eq!(c.read_reply(false).text(), want);
    }
    let mut c = Client::connect(server.local_addr());
    c.send([get("/now-then-panic"), get("/count")].concat().as_bytes());
    let r = c.read_reply(false);
    assert_eq!((r.status, r.header("connection")), (500, Some("close")));
    c.expect_eof();
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    server.stop().unwrap();
}

/// A client that half-closes after a deferred request (and one after it): both answers,
/// then EOF.
#[test]
fn a_half_close_after_a_deferred_request_gets_its_answers() {
    let (b, held, _) = deferred_builder();
    let server = start(b);
    let mut c = Client::connect(server.local_addr());
    c.send([get("/held?a"), get("/hello")].concat().as_bytes());
    c.stream.shutdown(Shutdown::Write).unwrap();
    wait_until("held", || held.lock().unwrap().len() == 1);
    answer_held(&held, 1);
    assert_eq!(c.read_reply(false).text(), "a");
    assert_eq!(c.read_reply(false).text(), "hello");
    c.expect_eof();
    let mut c = Client::connect(server.local_addr());
    c.send(get("/held?b").as_bytes());
    wait_until("held", || held.lock().unwrap().len() == 1);
    c.stream.shutdown(Shutdown::Write).unwrap();
    // The FIN reaches the server while the answer is outstanding (it waits unread in the
    // kernel: the connection does not read while waiting).
    let (client, srv) = (
        c.stream.local_addr().unwrap().port(),
        server.local_addr().port(),
    );
    wait_until("the client's FIN to reach the server", || {
        tcp_state(srv, client) == Some(TcpState::CloseWait)
    });
    answer_held(&held, 1);
    assert_eq!(c.read_reply(false).text(), "b");
    c.expect_eof();
    server.stop().unwrap();
}

/// With `abort_on_client_close`, a client that closes while its deferred answer is
/// outstanding is let go at once: the connection closes (the responder sees it), the
/// requests it pipelined after are not run, and the late answer goes nowhere. A request
/// and FIN sent together are aborted too, and the server serves on.
#[test]
fn abort_on_client_close_lets_a_departed_client_go() {
    let (b, held, hits) = deferred_builder();
    let server = start(b.abort_on_client_close(true));
    for fin_with_request in [false, true] {
        let mut c = Client::connect(server.local_addr());
        c.send([get("/held?gone"), get("/count")].concat().as_bytes());
        if fin_with_request {
            c.stream.shutdown(Shutdown::Write).unwrap();
        }
        wait_until("held", || held.lock().unwrap().len() == 1);
        if !fin_with_request {
            c.stream.shutdown(Shutdown::Write).unwrap();
        }
        wait_until("the connection to close", || server.stats().active == 0);
        let (_, r) = held.lock().unwrap().pop().unwrap();
        assert!(!r.is_connected(), "the responder sees its client gone");
        r.respond(Response::text(StatusCode::OK, "late"));
        assert!(
            read_to_eof(&mut c.stream).is_empty(),
            "nothing was answered"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 0, "the pipelined request ran");
    }
    // A client that closes while reading is on (no answer outstanding) is unaffected, and
    // so are other connections.
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.get("/hello").text(), "hello");
    c.send(get("/later?x").as_bytes());
    assert_eq!(c.read_reply(false).text(), "x");
    server.stop().unwrap();
}

/// Without it (the default), a client that half-closes while its answer is outstanding
/// still gets it: see `a_half_close_after_a_deferred_request_gets_its_answers`. With it,
/// a client blocked behind the output bound that half-closes is still served what it can
/// read (the server is not waiting for a deferred answer), but a deferred request later
/// in its pipeline is not run.
#[test]
fn abort_on_client_close_spares_a_blocked_client_that_still_reads() {
    let (b, held, _) = deferred_builder();
    let server = start(b.max_pending_output(1024).abort_on_client_close(true));
    let mut c = Client::connect(server.local_addr());
    // More than the socket buffers hold, so that the server blocks on its output.
    let fills: Vec<u8> = (b'a'..=b'z').chain(b'A'..=b'Z').collect();
    let mut p: String = fills
        .iter()
        .map(|&f| get(&format!("/big?{}", f as char)))
        .collect();
    p.push_str(&get("/held?never"));
    c.send(p.as_bytes());
    c.stream.shutdown(Shutdown::Write).unwrap();
    wait_for_queued_output(|| server.stats());
    for &fill in &fills {
        let r = c.read_reply(false);
        assert_eq!(r.body, vec![fill; BIG]);
    }
    c.expect_eof();
    assert!(held.lock().unwrap().is_empty(), "the deferred handler ran");
    server.stop().unwrap();
}

/// Answers after the server stopped go nowhere (no panic).
#[test]
fn an_answer_after_the_server_stopped() {
    let (b, held, _) = deferred_builder();
    let server = start(b);
    let mut c = Client::connect(server.local_addr());
    c.send(get("/held?x").as_bytes());
    wait_until("held", || held.lock().unwrap().len() == 1);
    server.stop().unwrap();
    let (_, r) = held.lock().unwrap().pop().unwrap();
    assert!(!r.is_connected());
    r.respond(Response::text(StatusCode::OK, "x"));
}

/// A deferred request in the backlog of a blocked connection that panics, drops its
/// responder, or is answered: in order; after the 500, EOF (no reset).
#[test]
fn deferred_failures_behind_the_output_bound() {
    let (b, _held, hits) = deferred_builder();
    let server = start(
        b.max_pending_output(1024)
            .route_deferred(Method::Get, "/dpanic", |_: &Request, _r: Responder| {
                panic!("deferred panic")
            })
            .route_deferred(Method::Get, "/ddrop", |_: &Request, r: Responder| drop(r)),
    );
    for path in ["/dpanic", "/ddrop"] {
        let mut c = Client::connect(server.local_addr());
        let mut p = String::new();
        for _ in 0..16 {
            p.push_str(&get("/big?z"));
        }
        p.push_str(&get("/later?ok"));
        p.push_str(&get(path));
        p.push_str(&get("/count"));
        c.send(p.as_bytes());
        wait_for_queued_output(|| server.stats());
        for _ in 0..16 {
            assert_eq!(c.read_reply(false).body.len(), BIG);
        }
        assert_eq!(c.read_reply(false).text(), "ok");
        let r = c.read_reply(false);
        assert_eq!(
            (r.status, r.header("connection")),
            (500, Some("close")),
            "{path}"
        );
        // Junk after it is read and dropped.
        let _ = c.stream.write_all_ok(&[b'j'; 4096]);
        c.expect_eof();
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    server.stop().unwrap();
}

/// A graceful shutdown while blocked, with a deferred request first in the backlog: it
/// is answered with `Connection: close`, nothing after it runs.
#[test]
fn graceful_shutdown_while_blocked_before_a_deferred_request() {
    let (b, held, hits) = deferred_builder();
    let server = LoopServer::start(b.max_pending_output(1024));
    let mut idle = Client::connect(server.addr);
    assert_eq!(idle.get("/hello").text(), "hello");
    let mut c = Client::connect(server.addr);
    let mut p = String::new();
    for _ in 0..16 {
        p.push_str(&get("/big?z"));
    }
    p.push_str(&get("/held?d"));
    p.push_str(&get("/count"));
    c.send(p.as_bytes());
    wait_for_queued_output(|| server.handle.stats());
    let done = server.shutdown(LIMIT);
    // The shutdown has reached the connections (one loop) once the idle one is closed.
    idle.expect_eof();
    let answering = {
        let held = held.clone();
        thread::spawn(move || answer_held(&held, 1))
    };
    let mut closes = 0;
    for _ in 0..16 {
        let r = c.read_reply(false);
        assert_eq!(r.body.len(), BIG);
        closes += usize::from(r.header("connection") == Some("close"));
    }
    if closes == 0 {
        let r = c.read_reply(false);
        assert_eq!((r.text(), r.header("connection")), ("d", Some("close")));
    }
    c.expect_eof();
    done.recv_timeout(LIMIT).expect("the shutdown to complete");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    // The answering thread may wait for a request that never ran.
    if closes == 0 {
        join_within("answering", answering);
    }
    server.join();
}

/// The response timeout while the client does not read a big answer before it: 503
/// queued behind, all delivered once the client reads, then EOF.
#[test]
fn a_timeout_while_the_client_does_not_read() {
    let (b, held, _) = deferred_builder();
    let server = start(
        b.response_timeout(Duration::from_millis(100))
            .keep_alive_timeout(Duration::from_secs(5)),
    );
    let mut c = Client::connect(server.local_addr());
    let mut p = String::new();
    for _ in 0..8 {
        p.push_str(&get("/big?z"));
    }
    p.push_str(&get("/held?never"));
    c.send(p.as_bytes());
    // The 503 has been queued once the connection is closing: its responder sees it.
    wait_until("the response timeout's 503", || {
        held.lock()
            .unwrap()
            .first()
            .is_some_and(|(_, r)| !r.is_connected())
    });
    for _ in 0..8 {
        assert_eq!(c.read_reply(false).body.len(), BIG);
    }
    assert_eq!(c.read_reply(false).status, 503);
    c.expect_eof();
    server.stop().unwrap();
}
