//! End-to-end tests of the `echo` binary, run as a user would: start it with
//! `--listen 127.0.0.1:0`, read the `listening on` line, talk TCP to it, send it signals.
//!
//! Every child is killed (by PID) and reaped by a drop guard, every wait and every socket
//! read has a deadline, so a broken server fails a test instead of hanging it.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use common::{packet, read_packet, Server, IO_TIMEOUT};
use duo_testkit::{http_get, run_within, ChildServer, Rng, LIMIT};

/// Writes `data` in random-sized pieces.
fn write_chunked(stream: &mut TcpStream, data: &[u8], rng: &mut Rng, max_chunk: usize) {
    let mut rest = data;
    while !rest.is_empty() {
        let n = rng.range(1, max_chunk).min(rest.len());
        stream.write_all(&rest[..n]).expect("write");
        rest = &rest[n..];
    }
}

/// Sends `data` in random chunks while a second thread reads the echo; asserts every byte
/// comes back in order.
fn raw_round_trip(server: &Server, seed: u64, len: usize) {
    let mut rng = Rng::new(seed);
    let data = rng.bytes(len);
    let mut writer = server.connect();
    let mut reader = writer.try_clone().unwrap();
    let expected = data.clone();
    let read = thread::spawn(move || {
        let mut got = vec![0u8; expected.len()];
        reader.read_exact(&mut got).expect("read the echo");
        assert!(got == expected, "echoed bytes differ");
    });
    write_chunked(&mut writer, &data, &mut rng, 8192);
    read.join().expect("reader");
    writer.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let n = writer.read_to_end(&mut rest).expect("read EOF");
    assert_eq!(n, 0, "nothing beyond the echo");
}

/// Reads until the server closes; true for an orderly EOF.
fn read_eof(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                panic!("server did not close the connection within {IO_TIMEOUT:?}")
            }
            Err(_) => return false,
        }
    }
}

fn framed_round_trip(stream: &mut TcpStream, payload: &[u8]) {
    stream.write_all(&packet(1, payload)).unwrap();
    let (kind, echoed) = read_packet(stream);
    assert_eq!(kind, 2, "DATA_SEND is answered with DATA_ECHO");
    assert!(echoed == payload, "same payload");
}

#[test]
fn raw_echo_keeps_every_byte_for_several_clients() {
    let server = Server::start(&["--io-threads", "2"]);
    thread::scope(|scope| {
        for i in 0..4u64 {
            let server = &server;
            scope.spawn(move || raw_round_trip(server, i + 1, 300_000 + 70_001 * i as usize));
        }
    });
}

#[test]
fn framed_echo_answers_every_packet_in_order() {
    let server = Server::start(&["--framed", "--io-threads", "2"]);
    thread::scope(|scope| {
        for seed in 1..=3u64 {
            let server = &server;
            scope.spawn(move || {
                let mut rng = Rng::new(seed * 7919);
                let mut payloads: Vec<Vec<u8>> = (0..300)
                    .map(|_| {
                        let len = if rng.below(10) == 0 {
                            rng.below(200_000) as usize
                        } else {
                            rng.below(2_000) as usize
                        };
                        rng.bytes(len)
                    })
                    .collect();
                payloads.push(Vec::new());
                payloads.push(rng.bytes(1 << 20)); // exactly the maximum
                let wire: Vec<u8> = payloads.iter().flat_map(|p| packet(1, p)).collect();
                let mut writer = server.connect();
                let mut reader = writer.try_clone().unwrap();
                let read = thread::spawn(move || {
                    for (i, want) in payloads.iter().enumerate() {
                        let (kind, got) = read_packet(&mut reader);
                        assert_eq!(kind, 2, "packet {i}: type");
                        assert!(got == *want, "packet {i}: payload differs");
                    }
                });
                write_chunked(&mut writer, &wire, &mut rng, 5_000);
                read.join().expect("reader");
            });
        }
    });
}

#[test]
fn framed_partial_header_and_payload_wait_for_the_rest() {
    let server = Server::start(&["--framed", "--io-threads", "1"]);
    let mut s = server.connect();
    s.set_nodelay(true).unwrap();
    let wire = packet(1, b"split across writes");
    for byte in &wire {
        s.write_all(&[*byte]).unwrap();
        thread::sleep(Duration::from_millis(2));
    }
    let (kind, payload) = read_packet(&mut s);
    assert_eq!((kind, &payload[..]), (2, &b"split across writes"[..]));
}

#[test]
fn framed_unknown_type_closes_only_that_connection() {
    let server = Server::start(&["--framed", "--io-threads", "2"]);
    let mut good = server.connect();
    framed_round_trip(&mut good, b"before");
    let mut bad = server.connect();
    framed_round_trip(&mut bad, b"valid first");
    bad.write_all(&packet(7, b"")).unwrap();
    assert!(read_eof(&mut bad), "the server closes the connection (EOF)");
    server.wait_for_stderr("unknown packet type 7", Duration::from_secs(5));
    framed_round_trip(&mut good, b"still served");
    // A new connection is still accepted and served.
    framed_round_trip(&mut server.connect(), b"new one");
}

#[test]
fn framed_oversize_length_closes_the_connection() {
    let server = Server::start(&["--framed"]);
    let mut s = server.connect();
    let mut header = Vec::new();
    header.extend_from_slice(&1u32.to_be_bytes());
    header.extend_from_slice(&((1u32 << 20) + 1).to_be_bytes());
    s.write_all(&header).unwrap();
    assert!(read_eof(&mut s), "the server closes the connection (EOF)");
    server.wait_for_stderr("exceeds the maximum", Duration::from_secs(5));
    framed_round_trip(&mut server.connect(), b"others are fine");
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let mut server = Server::start(&["--io-threads", "2"]);
    let mut s = server.connect();
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    let sent = Instant::now();
    server.signal("TERM");
    // Graceful: the server half-closes our connection; we close ours, it exits.
    assert!(read_eof(&mut s), "half-closed by the server");
    drop(s);
    let status = server.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", server.stderr());
    assert!(sent.elapsed() < Duration::from_secs(5));
}

#[test]
fn sigterm_with_a_client_that_never_closes_exits_after_the_drain_timeout() {
    let mut server = Server::start(&["--io-threads", "1", "--drain-timeout", "1"]);
    // A round trip: the server has accepted the connection (one still in the listen
    // queue at the signal would not be drained at all).
    let mut stubborn = server.connect();
    stubborn.write_all(b"hold").unwrap();
    let mut buf = [0u8; 4];
    stubborn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hold");
    let sent = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit(LIMIT);
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", server.stderr());
    // Never before the 1 s drain timeout (the client never closes: only the timeout ends
    // the drain), and not long after it (generous: a loaded host).
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(1 + 4),
        "exited {took:?} after SIGTERM with a 1 s drain timeout"
    );
    drop(stubborn);
}

#[test]
fn sigint_without_clients_exits_zero() {
    let mut server = Server::start(&["--io-threads", "0", "--framed"]);
    server.signal("INT");
    let status = server.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", server.stderr());
}

/// Runs the binary to completion with a deadline; returns (status, stdout, stderr).
fn run_to_exit(args: &[&str]) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_echo"));
    cmd.args(args);
    let done = run_within(&mut cmd, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("echo {args:?} did not exit: {e}"));
    (done.status, done.stdout, done.stderr)
}

#[test]
fn bad_flags_are_usage_errors() {
    for args in [
        &["--bogus"][..],
        &["serve", "--trigger", "sideways"],
        &["--io-threads", "many"],
        &["--loops", "-1"],
        &["--loop-sharing", "any"],
        &["--loops", "4", "--loop-sharing", "sometimes"],
        &["--listen", "not an address"],
        &["--stats-interval", "0"],
        &["--defer-accept", "3601"],
        &["--defer-accept", "-1"],
    ] {
        let (status, out, err) = run_to_exit(args);
        assert_eq!(status.code(), Some(2), "echo {args:?}; stderr:\n{err}");
        assert!(out.is_empty(), "echo {args:?} printed {out:?}");
        assert!(err.contains("error:"), "echo {args:?}; stderr:\n{err}");
        assert!(
            err.contains("Usage:") || err.contains("--help"),
            "echo {args:?}; stderr:\n{err}"
        );
    }
}

#[test]
fn address_in_use_is_a_runtime_error() {
    let first = Server::start(&[]);
    let addr = first.addr().to_string();
    let (status, out, err) = run_to_exit(&["serve", "--listen", &addr]);
    assert_eq!(status.code(), Some(1), "stderr:\n{err}");
    assert!(!out.contains("listening on"), "stdout: {out:?}");
    assert!(
        err.contains("echo:") && err.contains(&addr),
        "a clear message naming the address; stderr:\n{err}"
    );
}

#[test]
fn single_reactor_works() {
    let server = Server::start(&["--io-threads", "0"]);
    thread::scope(|scope| {
        for i in 0..2u64 {
            let server = &server;
            scope.spawn(move || raw_round_trip(server, 100 + i, 200_000));
        }
    });
}

#[test]
fn level_triggered_works() {
    let server = Server::start(&["serve", "--trigger", "level", "--io-threads", "1"]);
    thread::scope(|scope| {
        for i in 0..2u64 {
            let server = &server;
            scope.spawn(move || raw_round_trip(server, 200 + i, 500_000));
        }
    });
    let framed = Server::start(&["--trigger", "level", "--framed"]);
    let mut s = framed.connect();
    for i in 0..50 {
        framed_round_trip(&mut s, format!("packet {i}").as_bytes());
    }
}

#[test]
fn more_loops_than_io_threads_serve_as_usual() {
    let server = Server::start(&["--io-threads", "2", "--loops", "8"]);
    thread::scope(|scope| {
        for i in 0..8u64 {
            let server = &server;
            scope.spawn(move || raw_round_trip(server, 400 + i, 200_000));
        }
    });
    // The same with any thread running any loop (one-shot set) instead of owners.
    let any = Server::start(&["--io-threads", "2", "--loops", "8", "--loop-sharing", "any"]);
    thread::scope(|scope| {
        for i in 0..8u64 {
            let any = &any;
            scope.spawn(move || raw_round_trip(any, 500 + i, 200_000));
        }
    });
    let framed = Server::start(&["--io-threads", "1", "--loops", "4", "--framed"]);
    let mut s = framed.connect();
    for i in 0..50 {
        framed_round_trip(&mut s, format!("packet {i}").as_bytes());
    }
}

#[test]
fn every_accept_mode_serves_as_usual() {
    for args in [
        &["--accept", "main"][..],
        &["--accept", "shared", "--no-accept-balance"],
        &["--accept", "reuseport"],
    ] {
        let server = Server::start(&[&["--io-threads", "2"][..], args].concat());
        thread::scope(|scope| {
            for i in 0..4u64 {
                let server = &server;
                scope.spawn(move || raw_round_trip(server, 600 + i, 50_000));
            }
        });
    }
}

#[test]
fn loops_without_io_threads_is_a_usage_error() {
    let (status, out, err) = run_to_exit(&["--io-threads", "0", "--loops", "4"]);
    assert_eq!(status.code(), Some(2), "stderr:\n{err}");
    assert!(out.is_empty(), "stdout: {out:?}");
    assert!(err.contains("--loops needs I/O threads"), "stderr:\n{err}");
}

#[test]
fn deferred_accepting_serves_as_usual() {
    for threads in ["0", "2"] {
        let server = Server::start(&["--defer-accept", "5", "--io-threads", threads]);
        thread::scope(|scope| {
            for i in 0..4u64 {
                let server = &server;
                scope.spawn(move || raw_round_trip(server, 300 + i, 100_000));
            }
        });
    }
}

#[test]
fn idle_timeout_closes_a_silent_connection() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let server = Server::start(&["--idle-timeout", "2", "--io-threads", "1"]);
    let mut busy = server.connect();
    // Taken before the connect: the server's idle clock starts at the accept, after it.
    let opened = Instant::now();
    let mut silent = server.connect();
    // The busy one talks about every 100 ms (far inside the 2 s timeout, so a descheduled
    // thread has slack) for longer than the timeout; the silent one says nothing.
    let talker = thread::spawn(move || {
        let started = Instant::now();
        while started.elapsed() < TIMEOUT * 3 / 2 {
            busy.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            busy.read_exact(&mut b).unwrap();
            thread::sleep(Duration::from_millis(100));
        }
        busy
    });
    assert!(read_eof(&mut silent), "closed by the server");
    let waited = opened.elapsed();
    // Never early (the wheel closes between the timeout and one tick after it); late by
    // up to about LIMIT on a loaded host.
    assert!(
        waited >= TIMEOUT * 9 / 10 && waited < LIMIT,
        "closed after {waited:?} with a {TIMEOUT:?} idle timeout"
    );
    let mut busy = talker.join().expect("busy connection served throughout");
    busy.write_all(b"y").unwrap();
    let mut b = [0u8; 1];
    busy.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"y");
}

#[test]
fn max_conns_turns_away_the_extra_connection() {
    let server = Server::start(&["--max-conns", "1", "--io-threads", "1"]);
    let mut first = server.connect();
    first.write_all(b"a").unwrap();
    let mut b = [0u8; 1];
    first.read_exact(&mut b).unwrap();
    // The second is accepted and closed at once: EOF (or a reset), never an echo.
    let mut second = server.connect();
    let mut buf = [0u8; 16];
    match second.read(&mut buf) {
        Ok(n) => assert_eq!(n, 0, "the extra connection is not served"),
        Err(e) => assert!(
            !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "the extra connection was not closed"
        ),
    }
    first.write_all(b"c").unwrap();
    first.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"c");
}

#[test]
fn stats_interval_logs_a_line_per_interval() {
    let server = Server::start(&["--stats-interval", "1", "--io-threads", "1"]);
    let mut s = server.connect();
    for _ in 0..20 {
        s.write_all(&[7u8; 1000]).unwrap();
        let mut b = [0u8; 1000];
        s.read_exact(&mut b).unwrap();
    }
    server.wait_for_stderr("stats: 1 connections", Duration::from_secs(5));
    let log = server.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("stats: 1 connections"))
        .unwrap();
    assert!(
        line.contains("msg/s") && line.contains("MiB/s"),
        "line: {line}"
    );
}

#[test]
fn metrics_are_served_next_to_the_echo() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_echo"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--io-threads",
        "1",
        "--metrics",
        "127.0.0.1:0",
        // The stall detector stays on (its series is asserted below), with a threshold no
        // callback of this test reaches even descheduled on a loaded host: a stall is
        // measured on the wall clock.
        "--stall-ms",
        "60000",
    ]);
    let mut server = ChildServer::start(cmd);
    let metrics = server.metrics_addr(Duration::from_secs(10));
    let mut client = TcpStream::connect(server.addr()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(&[9u8; 500]).unwrap();
    let mut back = [0u8; 500];
    client.read_exact(&mut back).unwrap();
    let (status, text) = http_get(metrics, "/metrics");
    assert_eq!(status, 200);
    let bytes_in = text
        .lines()
        .find(|l| l.starts_with("duo_server_bytes_in_total{server=\"echo\""))
        .unwrap_or_else(|| panic!("no bytes_in series:\n{text}"));
    assert!(bytes_in.ends_with(" 500"), "{bytes_in}");
    assert!(
        text.contains("duo_loop_stalls_total{loop=\"echo-0\"} 0"),
        "{text}"
    );
    assert_eq!(http_get(metrics, "/healthz"), (200, "ok\n".to_owned()));
    drop(client);
    let (status, _) = server.terminate("TERM", Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}
