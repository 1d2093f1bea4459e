//! Combinations of states over real loopback sockets that the other HTTP tests take one at
//! a time: keep-alive × pipelining (one write, byte by byte, odd splits), a bad request
//! (every refusal) in the middle of a pipeline, with and without the output bound reached,
//! the head vs the body limit, `Connection: close` vs HTTP/1.0, a peer that half-closes
//! after its requests, slow peers, a handler that panics mid-pipeline, `HEAD`, transfer
//! codings, and the server stopping (gracefully or not) with requests in flight.
//!
//! What is asserted is what a user relies on: replies in order and whole, a clear 4xx/5xx
//! with `Connection: close` then EOF (never a reset), nothing answered after it, no hang,
//! and other connections unaffected. Every read has a deadline (`duo_testkit::LIMIT`),
//! every wait is on a condition, and every server is stopped (its thread joined).

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use duo_http::{HttpServerBuilder, Method, Response, StatusCode};
use duo_testkit::{join_within, wait_until, LIMIT};
use util::{get, read_to_eof, start, test_builder, wait_for_queued_output, Client, LoopServer};

/// Body size of `GET /big`.
const BIG: usize = 128 << 10;

/// The test routes plus `GET /count` (counts its calls in `hits`, answers the count) and
/// `GET /big` ([`BIG`] bytes).
fn counting_builder(hits: &Arc<AtomicUsize>) -> HttpServerBuilder {
    let hits = hits.clone();
    test_builder()
        .route(Method::Get, "/count", move |_| {
            let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
            Response::text(StatusCode::OK, n.to_string())
        })
        .route(Method::Get, "/big", |req| {
            let fill = req.query().and_then(|q| q.bytes().next()).unwrap_or(b'b');
            Response::with_body(StatusCode::OK, "application/octet-stream", vec![fill; BIG])
        })
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Writes `bytes` in pieces whose sizes cycle through `sizes` (a write each).
fn send_split(c: &mut Client, bytes: &[u8], sizes: &[usize]) {
    let mut rest = bytes;
    for &n in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(n.clamp(1, rest.len()));
        c.send(piece);
        rest = tail;
    }
}

/// The ways a pipeline is written: one write, byte by byte, odd pieces.
const SPLITS: [&[usize]; 3] = [&[usize::MAX], &[1], &[3, 1, 7, 2, 13, 5]];

/// Asserts a reply that ends its connection: `status`, `Connection: close`, a body that
/// says why, then EOF.
fn assert_final(c: &mut Client, status: u16, what: &str) {
    let r = c.read_reply(false);
    assert_eq!(
        r.status,
        status,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("connection"), Some("close"), "{what}");
    assert!(!r.body.is_empty(), "{what}: a refusal says why");
    c.expect_eof();
}

/// Keep-alive and pipelining with every kind of reply (bodies, HEAD, 404 without body, 204,
/// HTTP/1.0 keep-alive), written at once, byte by byte and in odd pieces: in order, whole.
#[test]
fn pipelines_of_mixed_requests_survive_every_split() {
    let server = start(test_builder());
    let mut c = Client::connect(server.local_addr());
    let pipeline = [
        get("/query?1"),
        "HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n".to_owned(),
        post("/echo", "abcde"),
        "HEAD /missing HTTP/1.1\r\nHost: t\r\n\r\n".to_owned(),
        get("/empty"),
        "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".to_owned(),
        "HEAD /empty HTTP/1.1\r\nHost: t\r\n\r\n".to_owned(),
        post("/echo", ""),
        "DELETE /hello HTTP/1.1\r\nHost: t\r\n\r\n".to_owned(),
        "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nxyz"
            .to_owned(),
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
         2;x=y\r\nch\r\n3\r\nunk\r\n0\r\nT: v\r\n\r\n"
            .to_owned(),
        get("/query?last"),
    ]
    .concat();
    for (round, sizes) in SPLITS.iter().enumerate() {
        send_split(&mut c, pipeline.as_bytes(), sizes);
        let what = format!("round {round}");
        let r = c.read_reply(false);
        assert_eq!((r.status, r.text()), (200, "1"), "{what}");
        let r = c.read_reply(true);
        assert_eq!(
            (r.status, r.header("content-length")),
            (200, Some("5")),
            "{what}"
        );
        let r = c.read_reply(false);
        assert_eq!((r.status, r.text()), (200, "abcde"), "{what}");
        let r = c.read_reply(true);
        assert_eq!(r.status, 404, "{what}");
        let r = c.read_reply(false);
        assert_eq!(
            (r.status, r.header("content-length")),
            (204, None),
            "{what}"
        );
        let r = c.read_reply(false);
        assert_eq!(
            (r.status, r.text(), r.header("connection")),
            (200, "hello", Some("keep-alive")),
            "{what}"
        );
        let r = c.read_reply(true);
        assert_eq!(r.status, 204, "{what}");
        let r = c.read_reply(false);
        assert_eq!((r.status, r.text()), (200, ""), "{what}");
        let r = c.read_reply(false);
        assert_eq!(
            (r.status, r.header("allow")),
            (405, Some("GET, HEAD")),
            "{what}"
        );
        // The whole body came in the same write as its head (or before the server looked):
        // a `100 Continue` may or may not precede the answer, never follow it.
        let mut r = c.read_reply(false);
        if r.status == 100 {
            r = c.read_reply(false);
        }
        assert_eq!((r.status, r.text()), (200, "xyz"), "{what}");
        let r = c.read_reply(false);
        assert_eq!((r.status, r.text()), (200, "chunk"), "{what}");
        let r = c.read_reply(false);
        assert_eq!(
            (r.status, r.text(), r.header("connection")),
            (200, "last", None)
        );
    }
    // Nothing stray after the last reply: the next exchange is exact.
    assert_eq!(c.get("/query?end").text(), "end");
    assert_eq!(server.stats().accepted, 1);
    server.stop().unwrap();
}

/// Every refusal in the middle of a pipeline, however it is split: the replies before it
/// whole, then its status with `Connection: close`, then EOF; nothing after it is run, and a
/// good connection beside it goes on.
#[test]
fn a_bad_request_mid_pipeline_gets_its_status_after_the_earlier_replies() {
    let hits = Arc::new(AtomicUsize::new(0));
    let server = start(
        counting_builder(&hits)
            .max_head_bytes(1024)
            .max_headers(8)
            .max_body_bytes(100)
            // Room for a byte-by-byte writer to finish its pipeline before the close.
            .linger(Duration::from_secs(5)),
    );
    let addr = server.local_addr();
    let mut good = Client::connect(addr);
    let pad = "p".repeat(1100);
    let many: String = (0..8).map(|i| format!("X-{i}: v\r\n")).collect();
    let cases: Vec<(u16, String)> = vec![
        (400, "\x00\x01garbage\r\n\r\n".into()),
        (400, "GET /hello HTTP/1.1\r\n\r\n".into()),
        (400, "GET /hello HTTP/1.1\r\nHost: t\r\nBad Field: x\r\n\r\n".into()),
        (400, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1, 2\r\n\r\nx".into()),
        (501, "BREW /hello HTTP/1.1\r\nHost: t\r\n\r\n".into()),
        (505, "GET /hello HTTP/2.0\r\nHost: t\r\n\r\n".into()),
        (
            400,
            "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n"
                .into(),
        ),
        (
            413,
            "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n".into(),
        ),
        (
            501,
            "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
                .into(),
        ),
        (400, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n".into()),
        (400, "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into()),
        (
            400,
            "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc"
                .into(),
        ),
        (417, "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: magic\r\nContent-Length: 1\r\n\r\nx".into()),
        (431, format!("GET /hello HTTP/1.1\r\nHost: t\r\nX-Pad: {pad}\r\n\r\n")),
        (431, format!("GET /hello HTTP/1.1\r\nHost: t\r\n{many}\r\n")),
        (413, format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 101\r\n\r\n{}", "b".repeat(101))),
    ];
    for (status, bad) in &cases {
        for sizes in SPLITS {
            let what = format!("{status} for {:?} split {sizes:?}", bad.escape_debug());
            let mut c = Client::connect(addr);
            let pipeline = [
                get("/query?first"),
                post("/echo", "second"),
                bad.clone(),
                get("/count"),
            ];
            send_split(&mut c, pipeline.concat().as_bytes(), sizes);
            assert_eq!(c.read_reply(false).text(), "first", "{what}");
            assert_eq!(c.read_reply(false).text(), "second", "{what}");
            assert_final(&mut c, *status, &what);
        }
        assert_eq!(good.get("/hello").text(), "hello");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a request after a refusal was run"
    );
    // Every refused connection ends, the good one stays.
    wait_until("the refused connections to close", || {
        server.stats().active == 1
    });
    assert_eq!(good.get("/query?still").text(), "still");
    server.stop().unwrap();
}

/// A bad request behind a pipeline whose replies overflow the output bound (the server
/// stops reading, the bad request waits in its backlog): every earlier reply whole, then
/// 400 and EOF, while the client keeps writing.
#[test]
fn a_bad_request_behind_the_output_bound_is_refused_after_every_earlier_reply() {
    const REQUESTS: usize = 256;
    let hits = Arc::new(AtomicUsize::new(0));
    let server = start(
        counting_builder(&hits)
            .max_pending_output(16 << 10)
            .linger(Duration::from_secs(5)),
    );
    let mut c = Client::connect(server.local_addr());
    let mut pipeline = String::new();
    for i in 0..REQUESTS {
        pipeline.push_str(&get(&format!("/big?{}", (b'a' + (i % 26) as u8) as char)));
    }
    pipeline.push_str("GET /hello HTTP/1.1\r\nHost: t\r\nBad Field: x\r\n\r\n");
    pipeline.push_str(&get("/count"));
    // More behind it, from another thread, while the server is blocked: dropped.
    let mut writer = c.stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        writer.write_all(pipeline.as_bytes())?;
        writer.write_all(get("/count").repeat(2000).as_bytes())
    });
    wait_for_queued_output(|| server.stats());
    for i in 0..REQUESTS {
        let r = c.read_reply(false);
        let fill = b'a' + (i % 26) as u8;
        assert_eq!(r.status, 200, "reply {i}");
        assert!(
            r.body.len() == BIG && r.body.iter().all(|&b| b == fill),
            "reply {i} not whole"
        );
    }
    assert_final(&mut c, 400, "the bad request after the bound");
    // The writer got all its bytes out: the server read and dropped them (no reset).
    join_within("the writer", sender).expect("the pipeline was written without a reset");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    drop(c);
    wait_until("the connection to close", || server.stats().active == 0);
    server.stop().unwrap();
}

/// The head limit and the body limit in a pipeline: exactly at each limit is served, one
/// past is refused (431 for the head, 413 for the body before it is read, also under
/// `Expect: 100-continue`, which gets no `100`), and a body the client goes on sending is
/// dropped without a reset.
#[test]
fn head_and_body_limits_at_and_past_the_bound() {
    const MAX_HEAD: usize = 1024;
    const MAX_BODY: usize = 100;
    let server = start(
        test_builder()
            .max_head_bytes(MAX_HEAD)
            .max_headers(8)
            .max_body_bytes(MAX_BODY)
            .linger(Duration::from_secs(5)),
    );
    let addr = server.local_addr();
    // A head of `len` bytes in all.
    let head_of = |len: usize| {
        let start = "GET /hello HTTP/1.1\r\nHost: t\r\nX-Pad: ";
        let pad = "p".repeat(len - start.len() - 4);
        format!("{start}{pad}\r\n\r\n")
    };
    assert_eq!(head_of(MAX_HEAD).len(), MAX_HEAD);
    let fields = |n: usize| -> String {
        let more: String = (1..n).map(|i| format!("X-{i}: v\r\n")).collect();
        format!("GET /hello HTTP/1.1\r\nHost: t\r\n{more}\r\n")
    };
    let body = "y".repeat(MAX_BODY);

    for sizes in SPLITS {
        // At the limits: served, and the connection goes on.
        let mut c = Client::connect(addr);
        let at = [
            head_of(MAX_HEAD),
            fields(8),
            post("/echo", &body),
            get("/query?next"),
        ];
        send_split(&mut c, at.concat().as_bytes(), sizes);
        assert_eq!(c.read_reply(false).text(), "hello");
        assert_eq!(c.read_reply(false).text(), "hello");
        assert_eq!(c.read_reply(false).text(), body);
        assert_eq!(c.read_reply(false).text(), "next");

        // One past each: refused, after the replies before.
        for (status, past) in [
            (431, head_of(MAX_HEAD + 1)),
            (431, fields(9)),
            (413, post("/echo", &"z".repeat(MAX_BODY + 1))),
        ] {
            let mut c = Client::connect(addr);
            send_split(&mut c, [get("/query?a"), past].concat().as_bytes(), sizes);
            assert_eq!(c.read_reply(false).text(), "a");
            assert_final(&mut c, status, &format!("{status} split {sizes:?}"));
        }
    }

    // The body limit hits on the head: 413 before the body, which the client goes on
    // sending (a writer thread) while it reads the refusal; then EOF, and no reset for the
    // writer.
    for expect in ["", "Expect: 100-continue\r\n"] {
        let mut c = Client::connect(addr);
        let mut writer = c.stream.try_clone().unwrap();
        let sender = thread::spawn(move || -> std::io::Result<()> {
            writer.write_all(get("/query?a").as_bytes())?;
            writer.write_all(
                format!(
                    "POST /echo HTTP/1.1\r\nHost: t\r\n{expect}Content-Length: 1000000\r\n\r\n"
                )
                .as_bytes(),
            )?;
            for _ in 0..100 {
                writer.write_all(&[b'x'; 10_000])?;
            }
            writer.shutdown(Shutdown::Write)
        });
        assert_eq!(c.read_reply(false).text(), "a");
        // No `100 Continue` for a body that is refused anyway.
        assert_final(&mut c, 413, "a body over the limit");
        join_within("the body writer", sender).expect("the body was dropped without a reset");
    }
    wait_until("every connection to close", || server.stats().active == 0);
    server.stop().unwrap();
}

/// `Connection: close` (any token case, among others) and HTTP/1.0 without keep-alive end a
/// pipeline: that reply says `close`, then EOF, and the requests after it are not run.
#[test]
fn connection_close_and_http10_end_the_pipeline() {
    let hits = Arc::new(AtomicUsize::new(0));
    let server = start(counting_builder(&hits));
    let addr = server.local_addr();
    let count_after = get("/count");
    // (the requests that end the pipeline, what kind of case it is)
    let cases = [
        (
            "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            "",
        ),
        (
            "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: Keep-Alive, CLOSE\r\n\r\n",
            "",
        ),
        ("GET /hello HTTP/1.0\r\n\r\n", ""),
        (
            "GET /hello HTTP/1.0\r\nHost: t\r\nConnection: close\r\n\r\n",
            "",
        ),
        // Kept alive first (the reply says so), then closed.
        (
            "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /hello HTTP/1.0\r\n\r\n",
            "keep-alive",
        ),
        (
            "HEAD /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            "head",
        ),
    ];
    for (last, kind) in cases {
        for sizes in SPLITS {
            let what = format!("{:?} split {sizes:?}", last.escape_debug());
            let mut c = Client::connect(addr);
            let pipeline = [get("/query?before"), last.to_owned(), count_after.clone()];
            send_split(&mut c, pipeline.concat().as_bytes(), sizes);
            assert_eq!(c.read_reply(false).text(), "before", "{what}");
            if kind == "keep-alive" {
                let r = c.read_reply(false);
                assert_eq!(
                    (r.text(), r.header("connection")),
                    ("hello", Some("keep-alive")),
                    "{what}"
                );
            }
            let r = c.read_reply(kind == "head");
            assert_eq!(r.status, 200, "{what}");
            assert_eq!(r.header("connection"), Some("close"), "{what}");
            if kind == "head" {
                assert_eq!(r.header("content-length"), Some("5"), "{what}");
            } else {
                assert_eq!(r.text(), "hello", "{what}");
            }
            c.expect_eof();
        }
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a request after the close was run"
    );
    server.stop().unwrap();
}

/// A peer that half-closes right after its requests gets every reply, in order, then EOF:
/// a short pipeline, one whose replies overflow the output bound (reading stops before the
/// EOF is seen), one with a panicking handler; a half-close inside a head ends quietly.
#[test]
fn a_peer_that_half_closes_after_its_requests_gets_every_reply() {
    const REQUESTS: usize = 256;
    let hits = Arc::new(AtomicUsize::new(0));
    let server = start(counting_builder(&hits).max_pending_output(16 << 10));
    let addr = server.local_addr();

    let mut c = Client::connect(addr);
    c.send(
        [
            get("/query?1"),
            post("/echo", "two"),
            "HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n".into(),
        ]
        .concat()
        .as_bytes(),
    );
    c.stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(c.read_reply(false).text(), "1");
    assert_eq!(c.read_reply(false).text(), "two");
    assert_eq!(c.read_reply(true).header("content-length"), Some("5"));
    c.expect_eof();

    // Past the output bound: the server stops reading with requests in its backlog and the
    // FIN unread behind them.
    let mut c = Client::connect(addr);
    let mut pipeline = String::new();
    for i in 0..REQUESTS {
        pipeline.push_str(&get(&format!("/big?{}", (b'a' + (i % 26) as u8) as char)));
    }
    pipeline.push_str(&get("/count"));
    c.send(pipeline.as_bytes());
    c.stream.shutdown(Shutdown::Write).unwrap();
    wait_for_queued_output(|| server.stats());
    for i in 0..REQUESTS {
        let r = c.read_reply(false);
        let fill = b'a' + (i % 26) as u8;
        assert_eq!(r.status, 200, "reply {i}");
        assert!(
            r.body.len() == BIG && r.body.iter().all(|&b| b == fill),
            "reply {i} not whole"
        );
    }
    assert_eq!(c.read_reply(false).text(), "1");
    c.expect_eof();

    // A handler that panics: its 500 and EOF, nothing after it.
    let mut c = Client::connect(addr);
    c.send(
        [get("/query?a"), get("/panic"), get("/count")]
            .concat()
            .as_bytes(),
    );
    c.stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(c.read_reply(false).text(), "a");
    assert_final(&mut c, 500, "panic then half-close");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Half-closed inside a head: nothing to answer; the connection ends (a 400 would do).
    let mut c = Client::connect(addr);
    c.send(b"GET /query?x HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHo");
    c.stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(c.read_reply(false).text(), "x");
    let rest = read_to_eof(&mut c.stream);
    assert!(
        rest.is_empty() || rest.starts_with(b"HTTP/1.1 400 "),
        "after a half-close inside a head: {:?}",
        String::from_utf8_lossy(&rest)
    );
    wait_until("every connection to close", || server.stats().active == 0);
    server.stop().unwrap();
}

/// Slow peers on a kept-alive connection: a head or a body trickled byte by byte, each byte
/// well within the timeout but the whole past it, gets 408 and EOF; a good connection beside
/// them is answered at once meanwhile.
#[test]
fn slow_peers_get_408_while_others_are_served() {
    let timeout = Duration::from_secs(1);
    let server = start(
        test_builder()
            .header_timeout(timeout)
            .body_timeout(timeout)
            .linger(Duration::from_secs(5)),
    );
    let addr = server.local_addr();
    // (a first request, then the start of the slow one, then what is trickled)
    let slow = [
        ("GET /hello HTTP/1.1\r\nHost: t\r\nX-Slow: ", b'h'),
        (
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n",
            b'b',
        ),
    ];
    let mut trickles = Vec::new();
    for (start_of, byte) in slow {
        let mut c = Client::connect(addr);
        assert_eq!(c.get("/hello").text(), "hello");
        let mut writer = c.stream.try_clone().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let began = Instant::now();
        let trickle = thread::spawn(move || {
            let _ = writer.write_all(start_of.as_bytes());
            while !stopped.load(Ordering::SeqCst) && began.elapsed() < LIMIT {
                if writer.write_all(&[byte]).is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        });
        trickles.push((c, began, trickle, stop));
    }
    let mut good = Client::connect(addr);
    for i in 0..20 {
        assert_eq!(good.get(&format!("/query?{i}")).text(), i.to_string());
    }
    for (mut c, began, trickle, stop) in trickles {
        let r = c.read_reply(false);
        let waited = began.elapsed();
        assert_eq!((r.status, r.header("connection")), (408, Some("close")));
        assert!(
            waited >= timeout,
            "408 after {waited:?}, before the timeout"
        );
        c.expect_eof();
        stop.store(true, Ordering::SeqCst);
        join_within("the trickling writer", trickle);
    }
    assert_eq!(good.get("/hello").text(), "hello");
    server.stop().unwrap();
}

/// A handler that panics in the middle of a pipeline (GET or HEAD, however split): the
/// replies before it, then 500 (no body for HEAD) with `Connection: close`, then EOF; the
/// requests after it are not run; another connection goes on.
#[test]
fn a_panicking_handler_mid_pipeline_ends_only_its_connection() {
    let hits = Arc::new(AtomicUsize::new(0));
    let server = start(counting_builder(&hits));
    let addr = server.local_addr();
    let mut good = Client::connect(addr);
    for method in ["GET", "HEAD"] {
        for sizes in SPLITS {
            let mut c = Client::connect(addr);
            let pipeline = [
                get("/query?1"),
                post("/echo", "2"),
                format!("{method} /panic HTTP/1.1\r\nHost: t\r\n\r\n"),
                get("/count"),
            ];
            send_split(&mut c, pipeline.concat().as_bytes(), sizes);
            assert_eq!(c.read_reply(false).text(), "1");
            assert_eq!(c.read_reply(false).text(), "2");
            let head = method == "HEAD";
            let r = c.read_reply(head);
            assert_eq!(
                (r.status, r.header("connection")),
                (500, Some("close")),
                "{method}"
            );
            assert!(r.header("content-length").is_some_and(|l| l != "0"));
            c.expect_eof();
            assert_eq!(good.get("/hello").text(), "hello");
        }
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a request after the panic was run"
    );
    server.stop().unwrap();
}

/// A route `GET /slow` that tells `entered` it runs, then waits (at most `LIMIT`) for a
/// message on the returned sender before it answers "slow".
fn slow_route(
    builder: HttpServerBuilder,
) -> (HttpServerBuilder, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let entered_tx = Mutex::new(entered_tx);
    let release_rx = Mutex::new(release_rx);
    let builder = builder.route(Method::Get, "/slow", move |_| {
        let _ = entered_tx.lock().unwrap().send(());
        let _ = release_rx.lock().unwrap().recv_timeout(LIMIT);
        Response::text(StatusCode::OK, "slow")
    });
    (builder, entered, release)
}

/// A graceful shutdown while a handler runs mid-pipeline: that reply and the pipelined ones
/// after it arrive whole, then EOF; an idle keep-alive connection gets EOF; the shutdown
/// completes.
#[test]
fn graceful_shutdown_finishes_the_replies_under_way() {
    let hits = Arc::new(AtomicUsize::new(0));
    let (builder, entered, release) = slow_route(counting_builder(&hits));
    let server = LoopServer::start(builder);
    let mut idle = Client::connect(server.addr);
    assert_eq!(idle.get("/hello").text(), "hello");
    let mut busy = Client::connect(server.addr);
    busy.send(
        [
            get("/query?1"),
            get("/slow"),
            get("/count"),
            post("/echo", "4"),
        ]
        .concat()
        .as_bytes(),
    );
    entered
        .recv_timeout(LIMIT)
        .expect("the slow handler to run");
    let done = server.shutdown(LIMIT);
    release.send(()).unwrap();
    assert_eq!(busy.read_reply(false).text(), "1");
    assert_eq!(busy.read_reply(false).text(), "slow");
    assert_eq!(busy.read_reply(false).text(), "1");
    assert_eq!(busy.read_reply(false).text(), "4");
    busy.expect_eof();
    idle.expect_eof();
    drop((busy, idle));
    done.recv_timeout(LIMIT).expect("the shutdown to complete");
    server.join();
}

/// A graceful shutdown that finds a request half received: the rest arrives within the
/// grace time, so the request must be answered (ideally with `Connection: close`), or at
/// least not be run with its reply thrown away.
#[test]
fn graceful_shutdown_answers_a_request_half_received() {
    let hits = Arc::new(AtomicUsize::new(0));
    let server = LoopServer::start(counting_builder(&hits));
    let mut c = Client::connect(server.addr);
    assert_eq!(c.get("/hello").text(), "hello");
    let mut other = Client::connect(server.addr);
    assert_eq!(other.get("/hello").text(), "hello");
    let before = server.handle.stats().bytes_in();
    let part = b"GET /count HTTP/1.1\r\nHost: t\r\n";
    c.send(part);
    wait_until("the server to read the partial head", || {
        server.handle.stats().bytes_in() >= before + part.len() as u64
    });
    let done = server.shutdown(LIMIT);
    c.send(b"\r\n");
    let rest = read_to_eof(&mut c.stream);
    let text = String::from_utf8_lossy(&rest);
    other.expect_eof();
    drop((c, other));
    // Every connection closed: whatever the server ran, it ran before.
    done.recv_timeout(LIMIT).expect("the shutdown to complete");
    let ran = hits.load(Ordering::SeqCst);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") || ran == 0,
        "the handler ran ({ran}) and its reply was dropped: {text:?}"
    );
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("\r\n\r\n1"),
        "no reply to a request under way at the shutdown: {text:?}"
    );
    server.join();
}

/// A graceful shutdown with a pipelining client that has not read its replies (the server
/// blocked on its output bound, requests waiting): either a request is answered or it is
/// not run; the replies that come are whole and in order.
#[test]
fn graceful_shutdown_of_a_blocked_pipeline_runs_nothing_it_does_not_answer() {
    const REQUESTS: usize = 256;
    let hits = Arc::new(AtomicUsize::new(0));
    let server = LoopServer::start(counting_builder(&hits).max_pending_output(16 << 10));
    let mut c = Client::connect(server.addr);
    let mut pipeline = String::new();
    for _ in 0..REQUESTS {
        pipeline.push_str(&get("/big"));
        pipeline.push_str(&get("/count"));
    }
    c.send(pipeline.as_bytes());
    // Blocked: the server has answered some and holds the rest; the count stops growing.
    wait_until("the server to block on its output", || {
        server.handle.stats().output_queued() > 0
    });
    let done = server.shutdown(LIMIT);
    let mut answered = 0;
    let all = read_to_eof(&mut c.stream);
    let mut rest = &all[..];
    while !rest.is_empty() {
        let mut fields = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut fields);
        let httparse::Status::Complete(head) = resp.parse(rest).expect("a well-formed reply")
        else {
            panic!("a reply cut short after {answered}");
        };
        let len: usize = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
            .unwrap();
        assert!(
            rest.len() >= head + len,
            "a reply cut short after {answered}"
        );
        if len != BIG {
            answered += 1;
            assert_eq!(&rest[head..head + len], answered.to_string().as_bytes());
        }
        rest = &rest[head + len..];
    }
    drop(c);
    done.recv_timeout(LIMIT).expect("the shutdown to complete");
    let ran = hits.load(Ordering::SeqCst);
    assert_eq!(
        ran, answered,
        "{ran} requests run, {answered} of them answered"
    );
    server.join();
}

/// Stopping a server (not gracefully) with requests in flight: a handler mid-pipeline, a
/// half-received head, an idle keep-alive connection, a client not reading: `stop` returns,
/// every client sees its connection end (EOF or reset, never a hang).
#[test]
fn stop_with_requests_in_flight_ends_every_connection() {
    let hits = Arc::new(AtomicUsize::new(0));
    let (builder, entered, release) = slow_route(counting_builder(&hits));
    let server = start(builder.max_pending_output(16 << 10));
    let addr = server.local_addr();
    let mut idle = Client::connect(addr);
    assert_eq!(idle.get("/hello").text(), "hello");
    let mut partial = Client::connect(addr);
    partial.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    let mut unread = Client::connect(addr);
    unread.send(get("/big").repeat(256).as_bytes());
    wait_for_queued_output(|| server.stats());
    let mut busy = Client::connect(addr);
    busy.send([get("/slow"), get("/count")].concat().as_bytes());
    entered
        .recv_timeout(LIMIT)
        .expect("the slow handler to run");
    let stopper = thread::spawn(move || server.stop());
    // `stop` waits for the handler running on the loop.
    release.send(()).unwrap();
    join_within("stop", stopper).expect("the server to stop");
    for (name, c) in [
        ("idle", idle),
        ("partial", partial),
        ("unread", unread),
        ("busy", busy),
    ] {
        let mut s = c.stream;
        let mut chunk = [0u8; 64 << 10];
        let ended = Instant::now();
        loop {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("{name}: still open {:?} after the stop", ended.elapsed())
                }
                Err(_) => break, // a reset: ended too
            }
        }
    }
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after stop"
    );
}
