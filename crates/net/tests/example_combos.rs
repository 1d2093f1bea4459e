//! The examples (`crates/net/examples/*.rs`), run as child processes, against
//! combinations of states their own tests do not combine: a client that half-closes while
//! answers or relayed messages are still on their way to it; a client that resets while
//! its work is under way; a graceful stop with work under way; bad input after good; a
//! relay whose backend resets while the client is still sending. Plus the command line:
//! bad arguments are a usage error (exit code 2), as for every program of the project.
//!
//! Every wait has a deadline; each server process is killed by its guard if a test fails.

mod util;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use duo_testkit::{example_binary, run_within, tcp_queues, wait_until, ChildServer, LIMIT};
use util::{connect, read_until_closed, End};

/// Starts example `name` with `args` (the listening address first) and the log filter
/// `log`, and waits for its `listening on` line.
fn start(name: &str, args: &[&str], log: &str) -> ChildServer {
    let mut cmd = Command::new(example_binary("duo-net", name));
    cmd.args(args).env("RUST_LOG", log);
    ChildServer::builder(cmd).startup(LIMIT).start()
}

/// Sends RST instead of FIN: `SO_LINGER` with a zero timeout, then close.
fn reset(s: TcpStream) {
    let sock = socket2::Socket::from(s);
    sock.set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
    drop(sock);
}

// ---------------------------------------------------------------------------------------
// factor

/// `factor 127.0.0.1:0 2`.
fn factor() -> ChildServer {
    start("factor", &["127.0.0.1:0", "2"], "info")
}

/// The largest prime below 2^64: factoring it takes the trial division seconds (tens of
/// seconds in a debug build), far longer than any test here waits.
const HUGE_PRIME: u64 = 18_446_744_073_709_551_557;

/// Parses answer lines `ID:TEXT` by id; lines without an id (`error: ...`) under `""`.
fn by_id(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(|line| match line.split_once(':') {
            Some((id, rest)) if !line.starts_with("error: ") => (id.to_owned(), rest.to_owned()),
            _ => (String::new(), line.to_owned()),
        })
        .collect()
}

/// Sends a bad request and waits for its answer, which the I/O thread gives at once: every
/// request sent before it has then been read and queued on the pool.
fn sync_factor(s: &mut TcpStream, reader: &mut impl Read) {
    s.write_all(b"sync\n").unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"sync:error: expected ID:N\n") {
        let n = reader
            .read(&mut byte)
            .expect("the answer to the sync request");
        assert_eq!(n, 1, "end of stream before the sync answer; got {got:?}");
        got.push(byte[0]);
    }
}

/// A client that sends its requests and half-closes gets every answer, then the end of the
/// stream (`printf '1:600851475143\n' | nc -N HOST PORT`), though the answers may still
/// be under way on the pool when the server reads that end.
#[test]
fn factor_half_closed_client_gets_every_answer_then_the_end() {
    let server = factor();
    for round in 0..3 {
        let mut s = connect(server.addr());
        s.write_all(b"1:600851475143\n2:97\n3:12\n4:abc\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let (got, end) = read_until_closed(&mut s);
        let text = String::from_utf8_lossy(&got);
        assert_eq!(end, End::Eof, "round {round}: {text:?}");
        let got = by_id(&text);
        assert_eq!(
            got.len(),
            4,
            "round {round}: answers {text:?}; log:\n{}",
            server.stderr()
        );
        assert_eq!(got["1"], "71*839*1471*6857", "round {round}");
        assert_eq!(got["2"], "97", "round {round}");
        assert_eq!(got["3"], "2*2*3", "round {round}");
        assert!(
            got["4"].starts_with("error: N must be"),
            "round {round}: {text:?}"
        );
    }
}

/// A line too long after good requests: the good ones are still answered, then the error,
/// then the end; another client is not disturbed. Binary garbage in a line is a bad
/// request answered like any other.
#[test]
fn factor_bad_line_after_good_requests_answers_them_then_closes() {
    let server = factor();
    let mut other = connect(server.addr());
    let mut s = connect(server.addr());
    let mut bad = b"1:97\n2:600851475143\n\x00\xff\xfe garbage\n".to_vec();
    bad.extend_from_slice(&[b'7'; 100]);
    s.write_all(&bad).unwrap();
    let (got, end) = read_until_closed(&mut s);
    let text = String::from_utf8_lossy(&got);
    assert_eq!(end, End::Eof, "{text:?}");
    let answers = by_id(&text);
    assert_eq!(answers.get("1").map(String::as_str), Some("97"), "{text:?}");
    assert_eq!(
        answers.get("2").map(String::as_str),
        Some("71*839*1471*6857"),
        "{text:?}"
    );
    assert!(
        answers.get("").is_some_and(|e| e.starts_with("error: ")),
        "{text:?}"
    );
    assert!(text.contains("garbage:error: expected ID:N"), "{text:?}");

    // Byte by byte: the request arrives whole.
    other.set_nodelay(true).unwrap();
    for b in b"9:600851475143\n" {
        other.write_all(&[*b]).unwrap();
    }
    other.shutdown(Shutdown::Write).unwrap();
    let (got, end) = read_until_closed(&mut other);
    assert_eq!(
        (String::from_utf8_lossy(&got).as_ref(), end),
        ("9:71*839*1471*6857\n", End::Eof)
    );
}

/// The work of a client that reset its connection is abandoned: the pool serves the next
/// client at once instead of factoring numbers for nobody.
#[test]
fn factor_work_of_a_reset_client_is_abandoned() {
    let server = factor();
    let mut s = connect(server.addr());
    let mut reader = s.try_clone().unwrap();
    // Both workers busy for a long time, and more queued.
    for i in 0..4 {
        s.write_all(format!("{i}:{HUGE_PRIME}\n").as_bytes())
            .unwrap();
    }
    sync_factor(&mut s, &mut reader);
    drop(reader);
    reset(s);

    let mut t = connect(server.addr());
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    t.write_all(b"1:12\n").unwrap();
    let mut line = [0u8; 8];
    let read = t.read_exact(&mut line);
    assert!(
        read.is_ok() && &line == b"1:2*2*3\n",
        "the next client is not answered within 5 s ({read:?}, {:?}): the pool still \
         factors for the client that left; log:\n{}",
        String::from_utf8_lossy(&line),
        server.stderr()
    );
}

/// SIGTERM while answers are under way: the answer that is nearly done still goes out,
/// then the end of the stream; the one that would take far longer than the grace period
/// is abandoned, and the process exits with status 0 soon after the grace period (3 s).
#[test]
fn factor_sigterm_sends_answers_under_way_and_exits_in_bounded_time() {
    // 9999991^2: about 1e7 steps of trial division, well under the 3 s grace even in a
    // debug build on a loaded machine (5e7 steps took longer than that under load).
    const SQUARE: u64 = 9_999_991 * 9_999_991;
    let mut server = factor();
    let mut slow = connect(server.addr());
    let mut slow_reader = slow.try_clone().unwrap();
    slow.write_all(format!("big:{HUGE_PRIME}\n").as_bytes())
        .unwrap();
    sync_factor(&mut slow, &mut slow_reader);
    let mut quick = connect(server.addr());
    let mut quick_reader = quick.try_clone().unwrap();
    quick
        .write_all(format!("sq:{SQUARE}\n").as_bytes())
        .unwrap();
    sync_factor(&mut quick, &mut quick_reader);

    let signalled = Instant::now();
    server.signal("TERM");
    let (got, end) = read_until_closed(&mut quick);
    assert_eq!(
        (String::from_utf8_lossy(&got).as_ref(), end),
        ("sq:9999991*9999991\n", End::Eof),
        "the answer under way at SIGTERM; log:\n{}",
        server.stderr()
    );
    // No answer for the huge prime: the grace period ends first.
    let (got, _) = read_until_closed(&mut slow);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "",
        "answers after the grace period"
    );
    let status = server.wait_exit_within(Duration::from_secs(8));
    let took = signalled.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "factor still running {took:?} after SIGTERM (grace 3 s); log:\n{}",
            server.stderr()
        )
    });
    assert!(status.success(), "exit {status}; log:\n{}", server.stderr());
}

// ---------------------------------------------------------------------------------------
// chat

/// One chat frame: `u32` big-endian length, then the payload.
fn chat_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(payload);
    frame
}

/// Splits `stream` into chat payloads; fails on a torn frame.
fn chat_payloads(mut stream: &[u8]) -> Vec<Vec<u8>> {
    let mut payloads = Vec::new();
    while !stream.is_empty() {
        assert!(stream.len() >= 4, "a torn header: {stream:?}");
        let len = u32::from_be_bytes(stream[..4].try_into().unwrap()) as usize;
        assert!(stream.len() >= 4 + len, "a torn frame of {len} bytes");
        payloads.push(stream[4..4 + len].to_vec());
        stream = &stream[4 + len..];
    }
    payloads
}

/// A client that sends messages and half-closes at once (its data and FIN in one segment)
/// still receives its own messages back, as every client does, then the end of the
/// stream. (It may also get a message of the previous round's client, relayed on the other
/// I/O thread after it joined: order across senders is not promised.)
#[test]
fn chat_half_closing_sender_gets_its_messages_then_the_end() {
    let server = start("chat", &["127.0.0.1:0"], "info");
    for round in 0..10 {
        let s = connect(server.addr());
        // Corked: the messages and the FIN leave together.
        socket2::SockRef::from(&s).set_cork(true).unwrap();
        let mine = [
            format!("hello {round}").into_bytes(),
            format!("{round}:").into_bytes().repeat(500),
        ];
        for payload in &mine {
            (&s).write_all(&chat_frame(payload)).unwrap();
        }
        s.shutdown(Shutdown::Write).unwrap();
        let mut s = s;
        let (got, end) = read_until_closed(&mut s);
        assert_eq!(end, End::Eof, "round {round}");
        let got: Vec<Vec<u8>> = chat_payloads(&got)
            .into_iter()
            .filter(|p| mine.contains(p))
            .collect();
        assert!(
            got == mine,
            "round {round}: {} of its 2 messages back",
            got.len()
        );
    }
}

// ---------------------------------------------------------------------------------------
// tunnel

/// The backend resets its connection while the client is still sending: the client gets
/// every byte the backend sent before its reset (which reached the tunnel), then the end,
/// as a direct connection would have given it those bytes.
///
/// The backend writes until the tunnel stops reading it (the client does not read, so the
/// tunnel's output towards the client passes its high-water mark and it pauses the
/// backend's side); then it resets. What reached the tunnel's kernel is what the tunnel's
/// side acknowledged: everything written but the backend's unacknowledged send queue.
#[test]
fn tunnel_backend_reset_during_upload_loses_nothing_it_sent() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let pattern = |i: usize| (i % 251) as u8;
    let (tx, acked) = mpsc::channel::<usize>();
    let backend = thread::spawn(move || {
        let (mut s, peer) = listener.accept().expect("accept the tunnel");
        // A second without progress: the tunnel has stopped reading (it must, the client
        // never reads), so the reset finds bytes it has not read.
        s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
        let chunk: Vec<u8> = (0..64 << 10).map(pattern).collect();
        let mut written = 0;
        let deadline = Instant::now() + LIMIT;
        loop {
            assert!(
                Instant::now() < deadline,
                "the tunnel never stopped reading"
            );
            let from = written % 251;
            match s.write(&chunk[from..]) {
                Ok(n) => written += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) => panic!("backend write: {e}"),
            }
        }
        let (unacked, _) =
            tcp_queues(backend_addr.port(), peer.port()).expect("the backend's socket");
        reset(s);
        tx.send(written - unacked as usize).unwrap();
    });
    let tunnel = start(
        "tunnel",
        &["127.0.0.1:0", &backend_addr.to_string()],
        "info,duo_net::conn=debug",
    );
    let mut s = connect(tunnel.addr());
    let acked = acked.recv_timeout(LIMIT).expect("the backend resets");
    backend.join().unwrap();
    tunnel.wait_for_stderr("peer gone while reading is paused", LIMIT);

    // The client sends a little more, and the tunnel reads it.
    s.write_all(&[b'u'; 1000]).unwrap();
    let (local, tunnel_port) = (s.local_addr().unwrap().port(), tunnel.addr().port());
    wait_until("the tunnel to read the upload", || {
        tcp_queues(local, tunnel_port).is_some_and(|(tx, _)| tx == 0)
            && tcp_queues(tunnel_port, local).is_some_and(|(_, rx)| rx == 0)
    });

    let (got, end) = read_until_closed(&mut s);
    assert!(
        got.len() >= acked,
        "the client got {} bytes and {end:?}; the backend's first {acked} had reached the \
         tunnel before its reset; log:\n{}",
        got.len(),
        tunnel.stderr()
    );
    let wrong = got.iter().enumerate().position(|(i, &b)| b != pattern(i));
    assert_eq!(wrong, None, "byte differs");
}

// ---------------------------------------------------------------------------------------
// Command lines.

/// Bad arguments: a usage message and exit code 2, for every example, before anything
/// listens.
#[test]
fn bad_arguments_give_the_usage_and_exit_code_2() {
    let cases: [(&str, &[&str]); 7] = [
        ("chat", &["nonsense"]),
        ("chat", &["127.0.0.1:0", "extra"]),
        ("echo", &["nonsense"]),
        ("echo", &["127.0.0.1:0", "many"]),
        ("factor", &["nonsense"]),
        ("factor", &["127.0.0.1:0", "two"]),
        ("factor", &["127.0.0.1:0", "0"]),
    ];
    for (name, args) in cases {
        // A program that took the arguments would serve until killed: 3 s tell.
        let out = run_within(
            Command::new(example_binary("duo-net", name)).args(args),
            Duration::from_secs(3),
        )
        .unwrap_or_else(|e| panic!("{name} {args:?}: {e}"));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name} {args:?}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(&format!("usage: {name}")),
            "{name} {args:?}: {}",
            out.stderr
        );
        assert!(!out.stdout.contains("listening"), "{name} {args:?}");
    }
}
