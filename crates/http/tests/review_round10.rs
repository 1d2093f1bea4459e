//! Review round 10 of duo-http serving: states earlier rounds did not combine. A
//! deferred answer owed with requests pipelined behind it, combined with the client's
//! half-close, the server's graceful shutdown, `Connection: close` or a panicking handler
//! in the middle of the pipeline, `HEAD`, 204 and 304 answers, a responder dropped
//! unanswered (what the client gets, and whether the connection is freed), and the
//! header and keep-alive timeouts while an answer is owed; a long mixed pipeline with a
//! half-close; blocked output, an owed answer and a half-close together; the response
//! timeout of a half-closed client; a server thread's shutdown that ends at the response
//! timeout; and a head completed with `Expect: 100-continue` during a graceful shutdown.
//!
//! Every wait is on an event (a held request, bytes read, a FIN seen by the server, a
//! closed connection), but one: proving the header and keep-alive timers leave a
//! connection owed an answer takes letting them pass.

mod util;

use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::time::Duration;

use duo_http::{Method, Request, Responder, Response, StatusCode};
use duo_testkit::{tcp_state, wait_until, wait_until_within, TcpState, LIMIT};
use util::deferred::{answer_held, deferred_builder};
use util::{get, start, Client, LoopServer, SOON};

/// Waits until the client's FIN has reached the server (its socket in `CLOSE_WAIT`).
fn wait_for_fin(c: &Client, server_port: u16) {
    let client_port = c.stream.local_addr().unwrap().port();
    wait_until("the client's FIN to reach the server", || {
        tcp_state(server_port, client_port) == Some(TcpState::CloseWait)
    });
}

/// A client that half-closed after a deferred request and a request behind it, then the
/// server's graceful shutdown: the owed answer goes out with `Connection: close`, the
/// request behind it never runs, EOF, and the shutdown completes.
#[test]
fn a_half_closed_client_owed_an_answer_at_a_graceful_shutdown() {
    let (b, held, hits) = deferred_builder();
    let server = LoopServer::start(b);
    let mut idle = Client::connect(server.addr);
    assert_eq!(idle.get("/hello").text(), "hello");
    let mut c = Client::connect(server.addr);
    c.send([get("/held?a"), get("/count")].concat().as_bytes());
    wait_until("held", || held.lock().unwrap().len() == 1);
    c.stream.shutdown(Shutdown::Write).unwrap();
    wait_for_fin(&c, server.addr.port());
    let done = server.shutdown(LIMIT);
    idle.expect_eof();
    answer_held(&held, 1);
    let r = c.read_reply(false);
    assert_eq!((r.text(), r.header("connection")), ("a", Some("close")));
    c.expect_eof();
    done.recv_timeout(LIMIT).expect("the shutdown to complete");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a request after the last ran"
    );
    server.join();
}

/// `Connection: close` in the middle of a pipeline behind an owed answer: the owed
/// answer keeps the connection, the closing request is answered with `close`, what
/// follows never runs.
#[test]
fn connection_close_in_the_middle_of_a_pipeline_behind_an_owed_answer() {
    let (b, held, hits) = deferred_builder();
    let server = start(b);
    let mut c = Client::connect(server.local_addr());
    let closing = "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    c.send(
        [get("/held?a"), closing.to_owned(), get("/count")]
            .concat()
            .as_bytes(),
    );
    answer_held(&held, 1);
    let r = c.read_reply(false);
    assert_eq!((r.text(), r.header("connection")), ("a", None));
    let r = c.read_reply(false);
    assert_eq!((r.text(), r.header("connection")), ("hello", Some("close")));
    c.expect_eof();
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    server.stop().unwrap();
}

/// A handler that panics for one request of a pipeline behind an owed answer: the owed
/// answer, then 500 with `close`, EOF; nothing after it runs.
#[test]
fn a_panic_in_a_pipeline_behind_an_owed_answer() {
    let (b, held, hits) = deferred_builder();
    let server = start(b);
    let mut c = Client::connect(server.local_addr());
    c.send(
        [get("/held?a"), get("/panic"), get("/count")]
            .concat()
            .as_bytes(),
    );
    answer_held(&held, 1);
    assert_eq!(c.read_reply(false).text(), "a");
    let r = c.read_reply(false);
    assert_eq!((r.status, r.header("connection")), (500, Some("close")));
    c.expect_eof();
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    server.stop().unwrap();
}

/// `HEAD`, 204 and 304 answers in one pipeline, some owed: each in order, with no body
/// where it has none, so the client reads the next answer where it begins; a `HEAD` to
/// a `GET` route with an empty body has no length (as the server's docs say).
#[test]
fn head_204_and_304_in_a_pipeline_of_owed_answers() {
    let (b, held, _) = deferred_builder();
    let server = start(
        b.route(Method::Get, "/blank", |_| Response::new(StatusCode::OK))
            .route(Method::Get, "/same", |_| {
                Response::text(StatusCode::new(304).unwrap(), "not sent")
            })
            .route_deferred(Method::Get, "/d204", |_: &Request, r: Responder| {
                std::thread::spawn(move || {
                    r.respond(Response::text(StatusCode::NO_CONTENT, "not sent"))
                });
            }),
    );
    let mut c = Client::connect(server.local_addr());
    let head = |p: &str| format!("HEAD {p} HTTP/1.1\r\nHost: t\r\n\r\n");
    c.send(
        [
            head("/held?hh"),
            get("/d204"),
            get("/same"),
            head("/later?xyz"),
            head("/d204"),
            get("/empty"),
            head("/hello"),
            head("/blank"),
            get("/blank"),
            get("/hello"),
        ]
        .concat()
        .as_bytes(),
    );
    answer_held(&held, 1);
    let r = c.read_reply(true);
    assert_eq!((r.status, r.header("content-length")), (200, Some("2")));
    let r = c.read_reply(false);
    assert_eq!((r.status, r.header("content-length")), (204, None));
    let r = c.read_reply(false);
    assert_eq!((r.status, r.header("content-length")), (304, None));
    let r = c.read_reply(true);
    assert_eq!((r.status, r.header("content-length")), (200, Some("3")));
    let r = c.read_reply(true);
    assert_eq!((r.status, r.header("content-length")), (204, None));
    let r = c.read_reply(false);
    assert_eq!((r.status, r.header("content-length")), (204, None));
    let r = c.read_reply(true);
    assert_eq!((r.status, r.header("content-length")), (200, Some("5")));
    // An empty `GET` body says nothing of what `HEAD` leaves out: no length.
    let r = c.read_reply(true);
    assert_eq!((r.status, r.header("content-length")), (200, None));
    let r = c.read_reply(false);
    assert_eq!((r.status, r.header("content-length")), (200, Some("0")));
    assert_eq!(c.read_reply(false).text(), "hello");
    server.stop().unwrap();
}

/// A responder dropped unanswered on another thread with requests pipelined behind:
/// the client gets a 500 with `close` and EOF (the requests behind never run), and the
/// connection is freed though the client keeps its socket open.
#[test]
fn a_dropped_responder_answers_500_and_frees_the_connection() {
    let (b, held, hits) = deferred_builder();
    let server = start(b.linger(Duration::from_millis(200)));
    let mut c = Client::connect(server.local_addr());
    c.send([get("/held?a"), get("/count")].concat().as_bytes());
    wait_until("held", || held.lock().unwrap().len() == 1);
    let dropped = held.lock().unwrap().pop().unwrap();
    std::thread::spawn(move || drop(dropped)).join().unwrap();
    let r = c.read_reply(false);
    assert_eq!((r.status, r.header("connection")), (500, Some("close")));
    c.expect_eof();
    wait_until_within(SOON, "the connection to be freed", || {
        server.stats().active == 0
    });
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    server.stop().unwrap();
}

/// The header and keep-alive timeouts pass while an answer is owed with a part of the
/// next request behind it: the connection stays, the answer goes out, and the next
/// request is then given a header timeout of its own from the answer (here: it is
/// finished in time and answered).
#[test]
fn timeouts_pass_while_an_answer_is_owed_with_a_partial_request_behind() {
    let (b, held, _) = deferred_builder();
    let server = start(
        b.header_timeout(Duration::from_millis(100))
            .keep_alive_timeout(Duration::from_millis(100))
            .response_timeout(Duration::from_secs(20)),
    );
    let mut c = Client::connect(server.local_addr());
    c.send(format!("{}GET /hello HT", get("/held?a")).as_bytes());
    wait_until("held", || held.lock().unwrap().len() == 1);
    // Not an event: proving the timers leave it takes letting several of them pass.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(server.stats().active, 1);
    answer_held(&held, 1);
    assert_eq!(c.read_reply(false).text(), "a");
    c.send(b"TP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_reply(false).text(), "hello");
    server.stop().unwrap();
}

/// HTTP/1.0 without keep-alive, deferred, with a request pipelined behind it: the answer
/// closes, the request behind never runs.
#[test]
fn an_http10_owed_answer_closes_and_drops_what_follows() {
    let (b, _held, hits) = deferred_builder();
    let server = start(b);
    let mut c = Client::connect(server.local_addr());
    c.send(
        ["GET /later?old HTTP/1.0\r\n\r\n".to_owned(), get("/count")]
            .concat()
            .as_bytes(),
    );
    let r = c.read_reply(false);
    assert_eq!((r.text(), r.header("connection")), ("old", Some("close")));
    c.expect_eof();
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    server.stop().unwrap();
}

/// Blocked on output, with a deferred request and one after it in the backlog, the
/// client half-closed and reading only once its FIN reached the server: every answer in
/// order (the owed one too), then EOF.
#[test]
fn blocked_then_owed_then_half_closed_gets_every_answer_in_order() {
    let (b, held, hits) = deferred_builder();
    let server = start(b.max_pending_output(1024));
    let mut c = Client::connect(server.local_addr());
    let mut p = String::new();
    for _ in 0..16 {
        p.push_str(&get("/big?z"));
    }
    p.push_str(&get("/held?a"));
    p.push_str(&get("/count"));
    c.send(p.as_bytes());
    util::wait_for_queued_output(|| server.stats());
    c.stream.shutdown(Shutdown::Write).unwrap();
    wait_for_fin(&c, server.local_addr().port());
    let answering = {
        let held = held.clone();
        std::thread::spawn(move || answer_held(&held, 1))
    };
    for _ in 0..16 {
        assert_eq!(c.read_reply(false).body.len(), util::deferred::BIG);
    }
    assert_eq!(c.read_reply(false).text(), "a");
    assert_eq!(c.read_reply(false).text(), "1");
    c.expect_eof();
    duo_testkit::join_within("answering", answering);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    server.stop().unwrap();
}

/// The response timeout of a half-closed client with a request behind its owed answer:
/// 503 with `close`, EOF, the request behind never runs, and the connection is freed.
#[test]
fn the_response_timeout_of_a_half_closed_client_answers_503_and_frees_it() {
    let (b, held, hits) = deferred_builder();
    let server = start(b.response_timeout(Duration::from_millis(200)));
    let mut c = Client::connect(server.local_addr());
    c.send([get("/held?a"), get("/count")].concat().as_bytes());
    wait_until("held", || held.lock().unwrap().len() == 1);
    c.stream.shutdown(Shutdown::Write).unwrap();
    let r = c.read_reply(false);
    assert_eq!((r.status, r.header("connection")), (503, Some("close")));
    c.expect_eof();
    wait_until_within(SOON, "freed", || server.stats().active == 0);
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    server.stop().unwrap();
}

/// A graceful shutdown while an answer is owed, then its responder dropped unanswered:
/// 500 with `close`, EOF, nothing after it runs, and the shutdown completes.
#[test]
fn a_responder_dropped_during_a_graceful_shutdown_answers_500() {
    let (b, held, hits) = deferred_builder();
    let server = LoopServer::start(b);
    let mut idle = Client::connect(server.addr);
    assert_eq!(idle.get("/hello").text(), "hello");
    let mut c = Client::connect(server.addr);
    c.send([get("/held?a"), get("/count")].concat().as_bytes());
    wait_until("held", || held.lock().unwrap().len() == 1);
    let done = server.shutdown(LIMIT);
    idle.expect_eof();
    held.lock().unwrap().clear();
    let r = c.read_reply(false);
    assert_eq!((r.status, r.header("connection")), (500, Some("close")));
    c.expect_eof();
    done.recv_timeout(LIMIT).expect("the shutdown to complete");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    server.join();
}

/// A long pipeline mixing answers from other threads, synchronous deferred answers, big
/// deferred answers past the output bound, held answers and plain routes, sent with a
/// half-close: every answer in request order, then EOF.
#[test]
fn a_long_mixed_pipeline_then_a_half_close_gets_every_answer_in_order() {
    let (b, held, _hits) = deferred_builder();
    let server = start(b.max_pending_output(4096));
    let mut c = Client::connect(server.local_addr());
    let mut p = String::new();
    let mut want = Vec::new();
    for i in 0..40 {
        match i % 5 {
            0 => {
                p.push_str(&get(&format!("/later?l{i}")));
                want.push(format!("l{i}"));
            }
            1 => {
                p.push_str(&get(&format!("/now?n{i}")));
                want.push(format!("n{i}"));
            }
            2 => {
                p.push_str(&get("/dbig?q"));
                want.push("BIG".into());
            }
            3 => {
                p.push_str(&get(&format!("/held?h{i}")));
                want.push(format!("h{i}"));
            }
            _ => {
                p.push_str(&get("/hello"));
                want.push("hello".into());
            }
        }
    }
    c.send(p.as_bytes());
    c.stream.shutdown(Shutdown::Write).unwrap();
    let answering = {
        let held = held.clone();
        std::thread::spawn(move || {
            for _ in 0..8 {
                answer_held(&held, 1);
            }
        })
    };
    for w in want {
        let r = c.read_reply(false);
        if w == "BIG" {
            assert_eq!(r.body.len(), util::deferred::BIG);
        } else {
            assert_eq!(r.text(), w);
        }
    }
    c.expect_eof();
    duo_testkit::join_within("answering", answering);
    server.stop().unwrap();
}

/// A server thread's graceful shutdown while an answer is owed that never comes: the
/// response timeout (well within the grace) answers 503 with `close`, and the shutdown
/// ends then rather than at its grace.
#[test]
fn a_thread_shutdown_with_an_answer_never_given_ends_at_the_response_timeout() {
    let (b, held, _hits) = deferred_builder();
    let server = start(b.response_timeout(Duration::from_millis(300)));
    let mut c = Client::connect(server.local_addr());
    c.send([get("/held?a"), get("/count")].concat().as_bytes());
    wait_until("held", || held.lock().unwrap().len() == 1);
    let reader = std::thread::spawn(move || {
        let r = c.read_reply(false);
        assert_eq!((r.status, r.header("connection")), (503, Some("close")));
        c.expect_eof();
    });
    let t = std::time::Instant::now();
    server.shutdown(Duration::from_secs(20)).unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    duo_testkit::join_within("reader", reader);
}

/// A request whose head was under way when the graceful shutdown began and completes
/// with `Expect: 100-continue`: `100 Continue`, then its answer with `close`, EOF.
#[test]
fn a_head_under_way_at_a_graceful_shutdown_with_expect_continue() {
    let (b, _held, _hits) = deferred_builder();
    let server = LoopServer::start(b);
    let mut idle = Client::connect(server.addr);
    assert_eq!(idle.get("/hello").text(), "hello");
    let mut c = Client::connect(server.addr);
    let part = b"POST /decho HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n";
    let before = server.handle.stats().bytes_in();
    c.send(part);
    wait_until("the server to read the part", || {
        server.handle.stats().bytes_in() == before + part.len() as u64
    });
    let done = server.shutdown(LIMIT);
    idle.expect_eof();
    c.send(b"Expect: 100-continue\r\n\r\n");
    let r = c.read_reply(false);
    assert_eq!(r.status, 100);
    c.send(b"hello");
    let r = c.read_reply(false);
    assert_eq!((r.text(), r.header("connection")), ("hello", Some("close")));
    c.expect_eof();
    done.recv_timeout(LIMIT).expect("done");
    server.join();
}
