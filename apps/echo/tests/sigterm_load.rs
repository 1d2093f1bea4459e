//! SIGTERM in the middle of a load: the echo server stops gracefully while clients stream.
//!
//! - **Streamers** write a continuous, checkable byte stream and read the echo at the same
//!   time, and keep doing so across the signal. Each gets back exactly a prefix of what it
//!   sent (no byte lost from the middle, none corrupted or reordered), then an orderly
//!   end of stream. Which prefix depends on the race with the signal: bytes the server
//!   reads after it started shutting down are not echoed any more.
//! - **Backloggers** write more than the kernel's socket buffers hold without reading, so
//!   the server has part of the echo queued in its own output buffer (below the 4 MiB
//!   high-water mark, so it keeps reading: it has read every byte before the signal, which
//!   the test checks in `/proc/net/tcp`); after the signal they read. The graceful stop
//!   must deliver every queued byte before the end of stream: they get everything back.
//!
//! And the server exits 0 within 5 s of the signal.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::Server;
use duo_testkit::tcp_queues;

const STREAMERS: u64 = 3;
const BACKLOGGERS: u64 = 3;
/// What each backlogger writes beyond what the kernel's buffers can hold: the part of the
/// echo that waits in the server's output buffer (under its 4 MiB high-water mark).
const BACKLOG_EXTRA: usize = 3 << 19;

/// The most a TCP send buffer grows to (`net.ipv4.tcp_wmem`, third field).
fn wmem_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

/// The byte stream of client `seed`: fills `out` with the bytes at `offset..`.
fn pattern(seed: u64, offset: u64, out: &mut [u8]) {
    let word_at = |w: u64| {
        let mut z = (seed << 40) ^ w.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).to_le_bytes()
    };
    let mut i = 0;
    while i < out.len() {
        let pos = offset + i as u64;
        let word = word_at(pos / 8);
        let from = (pos % 8) as usize;
        let n = (8 - from).min(out.len() - i);
        out[i..i + n].copy_from_slice(&word[from..from + n]);
        i += n;
    }
}

/// Reads until the end of stream, checking every byte against `pattern(seed)`; returns
/// how many arrived. Panics on a wrong byte, a reset or a timeout.
fn read_checked(stream: &mut TcpStream, seed: u64, who: &str) -> u64 {
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    let mut want = vec![0u8; 64 << 10];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("{who}: read after {got} bytes: {e}"),
        };
        pattern(seed, got, &mut want[..n]);
        if buf[..n] != want[..n] {
            let at = (0..n).find(|&i| buf[i] != want[i]).unwrap();
            panic!("{who}: byte {} of the echo is wrong", got + at as u64);
        }
        got += n as u64;
    }
}

#[test]
fn sigterm_under_load_delivers_a_clean_prefix_and_every_queued_byte() {
    let mut server = Server::start(&["--io-threads", "2"]);

    // Streamers: a writer and a reader thread each.
    let streamers: Vec<_> = (0..STREAMERS)
        .map(|seed| {
            let mut w = server.connect();
            let mut r = w.try_clone().unwrap();
            let sent = Arc::new(AtomicU64::new(0));
            let echoed = Arc::new(AtomicU64::new(0));
            let done = Arc::new(AtomicBool::new(false));
            let writer = {
                let (sent, done) = (sent.clone(), done.clone());
                thread::spawn(move || {
                    let mut chunk = vec![0u8; 16 << 10];
                    let mut n = 0u64;
                    // Until the reader has seen the end of stream, at ~16 MB/s.
                    while !done.load(Ordering::SeqCst) {
                        let len = 1 + (n * 7919 % chunk.len() as u64) as usize;
                        let off = sent.load(Ordering::SeqCst);
                        pattern(seed, off, &mut chunk[..len]);
                        match w.write_all(&chunk[..len]) {
                            Ok(()) => sent.fetch_add(len as u64, Ordering::SeqCst),
                            // The server is gone (it closed after the grace period): fine
                            // for the writer; the reader decides.
                            Err(_) => break,
                        };
                        n += 1;
                        thread::sleep(Duration::from_millis(1));
                    }
                    // Closing only after the reader is done: an unread echo would turn
                    // our close into a reset.
                    drop(w);
                })
            };
            let reader = {
                let (echoed, done) = (echoed.clone(), done.clone());
                thread::spawn(move || {
                    let mut got = 0u64;
                    let mut buf = vec![0u8; 64 << 10];
                    let mut want = vec![0u8; 64 << 10];
                    let result = loop {
                        match r.read(&mut buf) {
                            Ok(0) => break Ok(got),
                            Ok(n) => {
                                pattern(seed, got, &mut want[..n]);
                                if buf[..n] != want[..n] {
                                    let at = (0..n).find(|&i| buf[i] != want[i]).unwrap();
                                    break Err(format!("byte {} is wrong", got + at as u64));
                                }
                                got += n as u64;
                                echoed.store(got, Ordering::SeqCst);
                            }
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(e) => break Err(format!("read after {got} bytes: {e}")),
                        }
                    };
                    done.store(true, Ordering::SeqCst);
                    result
                })
            };
            (sent, echoed, writer, reader)
        })
        .collect();

    // Backloggers: write everything, read nothing yet.
    let backlog = wmem_max().min(4 << 20) + BACKLOG_EXTRA;
    let mut backloggers: Vec<TcpStream> = (0..BACKLOGGERS).map(|_| server.connect()).collect();
    for (i, s) in backloggers.iter_mut().enumerate() {
        let mut data = vec![0u8; backlog];
        pattern(100 + i as u64, 0, &mut data);
        s.write_all(&data).expect("backlogger writes");
    }

    // Every streamer is flowing; the server has had time to read every backlog byte.
    let deadline = Instant::now() + Duration::from_secs(10);
    while streamers
        .iter()
        .any(|(_, echoed, ..)| echoed.load(Ordering::SeqCst) < 256 << 10)
    {
        assert!(Instant::now() < deadline, "streamers do not get their echo");
        thread::sleep(Duration::from_millis(10));
    }
    // The server has read every backlog byte (its receive queue is empty), and what the
    // kernel does not hold of the echo (the server's send queue, the client's receive
    // queue) is in the server's output buffer.
    let port = server.addr().port();
    let mut in_user_space = Vec::new();
    for (i, s) in backloggers.iter().enumerate() {
        let me = s.local_addr().unwrap().port();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let server_side = tcp_queues(port, me);
            let client_side = tcp_queues(me, port);
            let (Some((tx, rx)), Some((_, client_rx))) = (server_side, client_side) else {
                panic!("backlogger {i}: no sockets in /proc/net/tcp");
            };
            if rx == 0 {
                in_user_space.push(backlog as i64 - tx as i64 - client_rx as i64);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "backlogger {i}: the server does not read its last {rx} bytes (backpressure?)"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
    assert!(
        in_user_space.iter().all(|&n| n > 0),
        "the kernel holds every echo byte, the test does not reach the output buffer: \
         {in_user_space:?}"
    );
    thread::sleep(Duration::from_millis(100));
    let before: Vec<u64> = streamers
        .iter()
        .map(|(_, echoed, ..)| echoed.load(Ordering::SeqCst))
        .collect();

    let signalled = Instant::now();
    server.signal("TERM");

    // Backloggers stop sending (they had) and read: everything comes back, then EOF.
    let backlogs: Vec<_> = backloggers
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            thread::spawn(move || {
                let who = format!("backlogger {i}");
                let got = read_checked(&mut s, 100 + i as u64, &who);
                (got, signalled.elapsed())
            })
        })
        .collect();
    for (i, b) in backlogs.into_iter().enumerate() {
        let (got, at) = b.join().expect("backlogger");
        assert_eq!(
            got, backlog as u64,
            "backlogger {i}: {got} of {backlog} bytes echoed before the end of stream"
        );
        assert!(
            at < Duration::from_secs(5),
            "backlogger {i}: EOF after {at:?}"
        );
    }

    // Streamers: a clean prefix, then EOF.
    let mut report = Vec::new();
    for (i, (sent, _, writer, reader)) in streamers.into_iter().enumerate() {
        let got = reader
            .join()
            .expect("streamer reader")
            .unwrap_or_else(|e| panic!("streamer {i}: {e}; stderr:\n{}", server.stderr()));
        writer.join().expect("streamer writer");
        let sent = sent.load(Ordering::SeqCst);
        assert!(got <= sent, "streamer {i}: {got} bytes echoed, {sent} sent");
        assert!(
            got >= before[i],
            "streamer {i}: {got} bytes at the end, {} before the signal",
            before[i]
        );
        report.push((sent, got));
    }

    // The server exits 0 within 5 s of the signal.
    let left = Duration::from_secs(5).saturating_sub(signalled.elapsed());
    let status = server.wait_exit_within(left).unwrap_or_else(|| {
        panic!(
            "echo still running 5 s after SIGTERM; stderr:\n{}",
            server.stderr()
        )
    });
    let exited = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", server.stderr());
    let log = server.stderr_to_end(Duration::from_secs(5));
    assert!(!log.contains("panicked"), "stderr:\n{log}");
    eprintln!(
        "sigterm_load: exited 0 after {exited:?}; streamers (sent, echoed): {report:?}; \
         {BACKLOGGERS} backlogs of {backlog} bytes delivered, of which {in_user_space:?} \
         were in the server's output buffer at the signal"
    );
}
