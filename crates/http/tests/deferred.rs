//! Deferred answers ([`Router::route_deferred`], [`Responder`]) over real loopback
//! sockets: answered from another thread, in order within a pipeline, the loop serving
//! other connections meanwhile, a responder dropped or a handler that panics (500 and
//! close), the response timeout (503 and close, the late answer dropped), a client that
//! resets or closes first, and a graceful shutdown with an answer outstanding.
//!
//! Every read has a deadline (`duo_testkit::LIMIT`), every wait is on a condition, and
//! every server is stopped (its thread joined).

mod util;

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use duo_http::{Response, StatusCode};
use duo_testkit::{join_within, wait_until, LIMIT};
use util::deferred::{answer_held, deferred_builder};
use util::{get, start, Client, LoopServer};

/// An answer from another thread, on a kept-alive connection, twice; `HEAD` gets the
/// head only; a responder answered synchronously within its handler works too.
#[test]
fn answers_from_another_thread_keep_the_connection_alive() {
    let (builder, _held, _) = deferred_builder();
    let server = start(builder);
    let mut c = Client::connect(server.local_addr());
    for text in ["one", "two"] {
        let r = c.get(&format!("/later?{text}"));
        assert_eq!((r.status, r.text()), (200, text));
        assert_eq!(r.header("connection"), None);
    }
    c.send(b"HEAD /later?abc HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = c.read_reply(true);
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("3"))
    );
    assert_eq!(c.get("/now?at-once").text(), "at-once");
    assert_eq!(c.get("/hello").text(), "hello");
    server.stop().unwrap();
}

/// A pipeline of deferred and immediate requests, written at once: the replies come in
/// request order, and nothing after a deferred request runs before its answer (the
/// counter stays 0); other connections are served meanwhile (the loop is not held).
#[test]
fn a_pipeline_waits_for_each_deferred_answer_in_order() {
    let (builder, held, hits) = deferred_builder();
    let server = start(builder);
    let mut c = Client::connect(server.local_addr());
    let pipeline = [
        get("/held?first"),
        get("/count"),
        get("/later?third"),
        get("/held?fourth"),
    ]
    .concat();
    c.send(pipeline.as_bytes());
    wait_until("the first request held", || held.lock().unwrap().len() == 1);
    // The loop serves another connection while the first waits.
    let mut other = Client::connect(server.local_addr());
    assert_eq!(other.get("/hello").text(), "hello");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a request ran before the one it follows was answered"
    );
    answer_held(&held, 1);
    for want in ["first", "1", "third"] {
        assert_eq!(c.read_reply(false).text(), want);
    }
    answer_held(&held, 1);
    assert_eq!(c.read_reply(false).text(), "fourth");
    assert_eq!(c.get("/hello").text(), "hello");
    server.stop().unwrap();
}

/// A responder dropped unanswered, and a deferred handler that panics: 500 with
/// `Connection: close`, EOF, and what the client pipelined after it is not run.
#[test]
fn a_dropped_responder_or_a_panic_answers_500_and_closes() {
    let (builder, _held, hits) = deferred_builder();
    let server = start(builder);
    for path in ["/drop", "/defer-panic"] {
        let mut c = Client::connect(server.local_addr());
        c.send([get(path), get("/count")].concat().as_bytes());
        let r = c.read_reply(false);
        assert_eq!(
            (r.status, r.header("connection")),
            (500, Some("close")),
            "{path}"
        );
        c.expect_eof();
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "{path}: the request after it ran"
        );
    }
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.get("/hello").text(), "hello");
    server.stop().unwrap();
}

/// No answer within the response timeout: 503 with `Connection: close`, EOF; the answer
/// that comes after is dropped (nothing more on the wire, the server unharmed).
#[test]
fn the_response_timeout_answers_503_and_drops_the_late_answer() {
    let (builder, held, hits) = deferred_builder();
    let server = start(builder.response_timeout(Duration::from_millis(200)));
    let mut c = Client::connect(server.local_addr());
    let started = Instant::now();
    c.send([get("/held?late"), get("/count")].concat().as_bytes());
    let r = c.read_reply(false);
    assert_eq!((r.status, r.header("connection")), (503, Some("close")));
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "503 before the timeout"
    );
    c.expect_eof();
    // The connection has closed: the responder can tell that nobody waits.
    wait_until("the responder to see its connection closed", || {
        !held.lock().unwrap()[0].1.is_connected()
    });
    answer_held(&held, 1);
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the request after it ran");
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.get("/hello").text(), "hello");
    server.stop().unwrap();
}

/// A client that resets its connection, or closes it, while its answer is outstanding:
/// the responder sees a reset at once ([`Responder::is_connected`]); the answer is
/// written (or dropped, the peer gone), the connection closes, and the server serves on.
#[test]
fn a_client_that_leaves_first_does_not_harm_the_server() {
    let (builder, held, _) = deferred_builder();
    let server = start(builder);
    for reset in [true, false] {
        let mut c = Client::connect(server.local_addr());
        c.send(get("/held?gone").as_bytes());
        wait_until("the request held", || held.lock().unwrap().len() == 1);
        if reset {
            socket2::SockRef::from(&c.stream)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        drop(c);
        if reset {
            // A reset is seen at once: the responder knows nobody waits.
            wait_until("the responder to see its client gone", || {
                !held.lock().unwrap()[0].1.is_connected()
            });
        }
        answer_held(&held, 1);
        wait_until("the connection to close", || server.stats().active == 0);
        let mut c = Client::connect(server.local_addr());
        assert_eq!(c.get("/hello").text(), "hello");
    }
    server.stop().unwrap();
}

/// A graceful shutdown with an answer outstanding: it waits for the answer (within its
/// grace), which goes out with `Connection: close`, then EOF; an idle connection closes
/// at once; the shutdown then completes.
#[test]
fn a_graceful_shutdown_sends_the_outstanding_answer_then_closes() {
    let (builder, held, hits) = deferred_builder();
    let server = LoopServer::start(builder);
    let mut idle = Client::connect(server.addr);
    assert_eq!(idle.get("/hello").text(), "hello");
    let mut c = Client::connect(server.addr);
    c.send([get("/held?last"), get("/count")].concat().as_bytes());
    wait_until("the request held", || held.lock().unwrap().len() == 1);
    let done = server.shutdown(LIMIT);
    idle.expect_eof();
    assert!(
        done.try_recv().is_err(),
        "the shutdown ended with an answer outstanding"
    );
    answer_held(&held, 1);
    let r = c.read_reply(false);
    assert_eq!((r.text(), r.header("connection")), ("last", Some("close")));
    c.expect_eof();
    done.recv_timeout(LIMIT).expect("the shutdown to complete");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a request after the last was run"
    );
    server.join();
}

/// Many connections waiting at once, answered by a pool of threads in any order: each
/// gets its own answer.
#[test]
fn concurrent_deferred_answers_reach_their_own_connections() {
    let (builder, held, _) = deferred_builder();
    let server = start(builder);
    let addr = server.local_addr();
    let clients: Vec<_> = (0..16)
        .map(|i| {
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                for round in 0..3 {
                    let want = format!("c{i}r{round}");
                    let r = c.get(&format!("/held?{want}"));
                    assert_eq!((r.status, r.text()), (200, want.as_str()));
                }
            })
        })
        .collect();
    // Answers whatever is held, newest first, until every client is done.
    let (stop_tx, stop) = mpsc::channel::<()>();
    let answering = {
        let held = held.clone();
        thread::spawn(move || {
            while stop.try_recv().is_err() {
                let batch: Vec<_> = held.lock().unwrap().drain(..).rev().collect();
                for (text, r) in batch {
                    r.respond(Response::text(StatusCode::OK, text));
                }
                thread::sleep(Duration::from_millis(1));
            }
        })
    };
    for c in clients {
        join_within("a client", c);
    }
    stop_tx.send(()).unwrap();
    join_within("the answering thread", answering);
    server.stop().unwrap();
}

/// [`HttpServerThread::shutdown`](duo_http::HttpServerThread::shutdown): it returns once
/// the answer outstanding has gone out with `Connection: close`, and an idle connection
/// is closed at once.
#[test]
fn a_server_thread_shuts_down_gracefully() {
    let (builder, held, _) = deferred_builder();
    let server = start(builder);
    let mut idle = Client::connect(server.local_addr());
    assert_eq!(idle.get("/hello").text(), "hello");
    let mut c = Client::connect(server.local_addr());
    c.send(get("/held?bye").as_bytes());
    wait_until("the request held", || held.lock().unwrap().len() == 1);
    let shutting = thread::spawn(move || server.shutdown(LIMIT));
    idle.expect_eof();
    assert!(
        !shutting.is_finished(),
        "the shutdown ended with an answer outstanding"
    );
    answer_held(&held, 1);
    let r = c.read_reply(false);
    assert_eq!((r.text(), r.header("connection")), ("bye", Some("close")));
    c.expect_eof();
    join_within("the shutdown", shutting).expect("a clean shutdown");
}
