//! Hostile and broken clients: idle and half-open connections, overlong lines, password
//! guessing, garbage and binary input. None of them may crash the server or disturb
//! other clients, on either storage backend (`NAME::sqlite`, `NAME::postgres`).

#[macro_use]
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Backend, Client, TestDb, PW};
use duo_testkit::{wait_until, Rng};

on_both_backends! {
    silent_connections_are_evicted_and_heartbeats_keep_them,
    an_overlong_line_is_answered_then_the_connection_closes,
    five_failed_logins_close_the_connection,
    garbage_gets_bad_request_and_disturbs_nobody,
    a_client_that_never_reads_its_replies_cannot_grow_the_server,
}

fn silent_connections_are_evicted_and_heartbeats_keep_them(backend: Backend) {
    let Some(db) = TestDb::new(backend, "idle") else {
        return;
    };
    let server = db.start(&["--idle-timeout", "1"]);
    let mut silent = Client::connect(server.addr);
    let mut half_line = Client::connect(server.addr);
    half_line.send(b"BALAN"); // never finished
    let mut logged_in = Client::logged_in(server.addr, "ivy");
    let mut pinger = Client::connect(server.addr);
    let start = Instant::now();

    // The pinger sends a heartbeat every 300 ms for 2.5 s and stays connected.
    while start.elapsed() < Duration::from_millis(2500) {
        assert_eq!(pinger.cmd("PING"), "PONG");
        std::thread::sleep(Duration::from_millis(300));
    }
    for (name, c) in [
        ("silent", &mut silent),
        ("half line", &mut half_line),
        ("logged in", &mut logged_in),
    ] {
        let rest = c.expect_closed(Duration::from_secs(3));
        assert!(
            rest.is_empty(),
            "{name}: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    let evicted_after = start.elapsed();
    assert!(evicted_after >= Duration::from_millis(900));
    assert_eq!(pinger.cmd("PING"), "PONG");
    // A new connection works, and the evicted session's account is intact.
    let mut again = Client::connect(server.addr);
    assert_eq!(again.cmd(&format!("LOGIN ivy {PW}")), "OK welcome ivy");
}

fn an_overlong_line_is_answered_then_the_connection_closes(backend: Backend) {
    let Some(db) = TestDb::new(backend, "long") else {
        return;
    };
    let server = db.start(&[]);

    // Exactly 1024 bytes is still a line (an unknown command); the connection stays.
    let mut c = Client::connect(server.addr);
    let max = "X".repeat(1024);
    assert!(c.cmd(&max).starts_with("ERR UNKNOWN_COMMAND"));
    let max_crlf = format!("{}\r\n", "Y".repeat(1024));
    c.send(max_crlf.as_bytes());
    assert!(c.line().starts_with("ERR UNKNOWN_COMMAND"));
    assert_eq!(c.cmd("PING"), "PONG");

    // 1025 bytes with its line end, after a pipelined PING: PONG, then the error, then EOF;
    // nothing after the long line is executed.
    let mut c = Client::connect(server.addr);
    let mut wire = b"PING\n".to_vec();
    wire.extend(std::iter::repeat_n(b'Z', 1025));
    wire.extend(b"\nPING\n");
    c.send(&wire);
    assert_eq!(c.line(), "PONG");
    assert!(c.line().starts_with("ERR LINE_TOO_LONG"));
    let rest = c.expect_closed(Duration::from_secs(5));
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));

    // A line end that never comes: closed as soon as 1025 bytes prove it too long, while
    // the client is still sending.
    let mut c = Client::connect(server.addr);
    let ok = (0..64).all(|_| c.try_send(&[b'A'; 1000]));
    let _ = ok; // the server may close before we finish writing
    assert!(c.line().starts_with("ERR LINE_TOO_LONG"));
    c.expect_closed(Duration::from_secs(5));

    let mut other = Client::connect(server.addr);
    assert_eq!(other.cmd("PING"), "PONG");
}

fn five_failed_logins_close_the_connection(backend: Backend) {
    let Some(db) = TestDb::new(backend, "logins") else {
        return;
    };
    let server = db.start(&[]);
    Client::logged_in(server.addr, "mallory_target");

    let mut c = Client::connect(server.addr);
    for i in 0..4 {
        let pw = format!("guess{i:04}");
        assert!(c
            .cmd(&format!("LOGIN mallory_target {pw}"))
            .starts_with("ERR AUTH_FAILED"));
    }
    assert_eq!(c.cmd("PING"), "PONG", "four failures are tolerated");
    // The fifth (here a malformed one, which counts too) closes; the pipelined rest is dropped.
    c.send(b"LOGIN mallory_target x\nPING\nPING\n");
    assert!(c.line().starts_with("ERR AUTH_FAILED"));
    let rest = c.expect_closed(Duration::from_secs(5));
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));

    // Failures on one connection do not count against another, nor lock the account.
    let mut c = Client::connect(server.addr);
    for _ in 0..4 {
        assert!(c
            .cmd("LOGIN nobody_here secret123")
            .starts_with("ERR AUTH_FAILED"));
    }
    assert_eq!(
        c.cmd(&format!("LOGIN mallory_target {PW}")),
        "OK welcome mallory_target"
    );
}

fn garbage_gets_bad_request_and_disturbs_nobody(backend: Backend) {
    let Some(db) = TestDb::new(backend, "garbage") else {
        return;
    };
    let server = db.start(&[]);
    let addr = server.addr;

    // A well-behaved client keeps working throughout: the garbage starts once it has
    // made its first deposit (its set-up may take longer than the garbage does).
    let stop = Arc::new(AtomicBool::new(false));
    let deposited = Arc::new(AtomicUsize::new(0));
    let witness = {
        let (stop, deposited) = (stop.clone(), deposited.clone());
        std::thread::spawn(move || {
            let mut c = Client::logged_in(addr, "wendy");
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                assert_eq!(c.cmd("DEPOSIT 1"), format!("OK {n}"));
                deposited.fetch_add(1, Ordering::Relaxed);
                assert_eq!(c.cmd("PING"), "PONG");
            }
            assert_eq!(c.balance(), n);
            n
        })
    };
    wait_until("the well-behaved client's first deposit", || {
        deposited.load(Ordering::Relaxed) > 0 || witness.is_finished()
    });

    // Invalid UTF-8 lines: ERR BAD_REQUEST each, and the connection is still usable.
    let mut c = Client::connect(addr);
    c.send(b"\xff\xfe\xfd\nPING \xc3\x28\nBALANCE\x80\n\x00\x01\x02\n");
    assert_eq!(c.line(), "ERR BAD_REQUEST line is not valid UTF-8");
    assert_eq!(c.line(), "ERR BAD_REQUEST line is not valid UTF-8");
    assert_eq!(c.line(), "ERR BAD_REQUEST line is not valid UTF-8");
    assert!(c
        .line()
        .starts_with("ERR UNKNOWN_COMMAND unknown command ???"));
    assert_eq!(c.cmd("PING"), "PONG");

    // Random binary: every line gets exactly one ERR reply (or none if blank).
    let mut rng = Rng::new(7);
    for round in 0..20 {
        let mut c = Client::connect(addr);
        let mut wire = Vec::new();
        let mut lines = 0;
        for _ in 0..50 {
            let len = 1 + rng.below(200) as usize;
            let mut line: Vec<u8> = (0..len)
                .map(|_| rng.below(256) as u8)
                .filter(|&b| b != b'\n')
                .collect();
            // Keep the line from being blank (blank lines get no reply).
            line.insert(0, 0xff);
            wire.extend(&line);
            wire.push(b'\n');
            lines += 1;
        }
        c.send(&wire);
        for _ in 0..lines {
            let r = c.line();
            assert!(
                r.starts_with("ERR BAD_REQUEST") || r.starts_with("ERR UNKNOWN_COMMAND"),
                "round {round}: {r:?}"
            );
        }
        assert_eq!(c.cmd("PING"), "PONG");
        if round % 2 == 0 {
            // Some leave abruptly with commands in flight.
            c.send(b"BALANCE\nREGISTER x_y_z secret123\nPING\n");
        }
    }

    // Connections that vanish mid-pipeline, with worker jobs in flight.
    for i in 0..20 {
        let mut c = Client::logged_in(addr, &format!("gone{}", i % 3));
        c.send("DEPOSIT 5\nBALANCE\nHISTORY 3\n".repeat(30).as_bytes());
        drop(c);
    }

    stop.store(true, Ordering::Relaxed);
    let deposits = witness
        .join()
        .expect("the well-behaved client was disturbed");
    assert!(deposits > 0);
    let mut c = Client::connect(addr);
    assert_eq!(c.cmd("PING"), "PONG");
    assert_eq!(c.cmd(&format!("LOGIN wendy {PW}")), "OK welcome wendy");
    assert_eq!(c.balance(), deposits);
}

/// Resident memory of process `pid`, from `/proc/PID/status`.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

fn a_client_that_never_reads_its_replies_cannot_grow_the_server(backend: Backend) {
    const ENTRIES: usize = 1000;
    const REQUESTS: usize = 3000;
    let Some(db) = TestDb::new(backend, "nonreader") else {
        return;
    };
    let server = db.start(&[]);

    // 1 000 history entries make each `HISTORY 1000` reply ~35 KB: 3 000 of them would be
    // ~100 MB of output if the server kept answering a peer that never reads.
    let mut hog = Client::logged_in(server.addr, "hog");
    hog.send("DEPOSIT 1\n".repeat(ENTRIES).as_bytes());
    for i in 1..=ENTRIES {
        assert_eq!(hog.line(), format!("OK {i}"));
    }
    let before = rss_bytes(server.pid());
    // 39 KB of commands: the kernel takes them whole, and the server reads them all (the
    // queue pauses reading only at 4 096).
    hog.send(format!("HISTORY {ENTRIES}\n").repeat(REQUESTS).as_bytes());

    // While the hog's replies pile up, another client is served as usual, and the
    // server's memory levels off well below what answering everything would take. There
    // is no event for "stopped growing": sample until RSS has been flat for a second.
    let mut other = Client::logged_in(server.addr, "other");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut peak, mut last_rise) = (before, Instant::now());
    while last_rise.elapsed() < Duration::from_secs(1) {
        assert!(
            Instant::now() < deadline,
            "server RSS still growing after 60 s"
        );
        assert_eq!(other.cmd("PING"), "PONG");
        assert_eq!(other.cmd("BALANCE"), "OK 0");
        let rss = rss_bytes(server.pid());
        if rss > peak + (256 << 10) {
            (peak, last_rise) = (rss, Instant::now());
        }
        let growth = peak.saturating_sub(before);
        assert!(
            growth < 32 << 20,
            "server RSS grew by {} MiB for a client that does not read",
            growth >> 20
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "server RSS growth: {} KiB",
        peak.saturating_sub(before) >> 10
    );

    // Nothing was dropped: once the hog reads, every reply arrives, complete and in order.
    for n in 0..REQUESTS {
        assert_eq!(hog.line(), format!("OK {ENTRIES}"), "reply {n}");
        for _ in 0..ENTRIES {
            hog.line();
        }
    }
    assert_eq!(hog.cmd("PING"), "PONG");
    assert_eq!(hog.balance(), ENTRIES as i64);
}
