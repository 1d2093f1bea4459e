//! The echo server run as users run it, in states no other test combines: framed packets
//! split across reads while backpressure pauses the connection, a bad packet after good
//! ones in one segment, a half-close right after a packet, `--max-conns` with closes
//! meanwhile, `--idle-timeout` against a slow sender of one big packet, SIGTERM with a
//! partial packet, `--stats-interval` figures, the same over TLS, and `--udp` at the
//! datagram size limit.
//!
//! Every child is killed by PID on drop; every wait and socket read has a deadline.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::{packet, read_packet, Server, IO_TIMEOUT};
use duo_net::tls::{self, rustls};
use duo_testkit::{http_get, join_within, wait_until, ChildServer, Rng, TestCerts, LIMIT};

const MIB: usize = 1 << 20;

fn header(kind: u32, len: u32) -> Vec<u8> {
    let mut out = kind.to_be_bytes().to_vec();
    out.extend_from_slice(&len.to_be_bytes());
    out
}

/// Reads until the server's end of stream; panics on a reset or a timeout (an orderly
/// close is what the server promises after its last answer).
fn expect_eof(stream: &mut impl Read) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => panic!("{n} unexpected bytes before the end of stream"),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("no orderly end of stream: {e}"),
        }
    }
}

/// Writes `data` in random pieces of 1 to `max` bytes.
fn write_chunked(s: &mut impl Write, data: &[u8], rng: &mut Rng, max: usize) {
    let mut rest = data;
    while !rest.is_empty() {
        let n = rng.range(1, max).min(rest.len());
        s.write_all(&rest[..n]).expect("write");
        s.flush().expect("flush");
        rest = &rest[n..];
    }
}

/// Reads `payloads.len()` answers and checks each is the DATA_ECHO of its payload.
fn expect_answers(s: &mut impl Read, payloads: &[Vec<u8>]) {
    for (i, want) in payloads.iter().enumerate() {
        let (kind, got) = read_packet(s);
        assert_eq!(kind, 2, "answer {i}: type");
        assert!(
            got == *want,
            "answer {i}: payload differs ({} bytes)",
            got.len()
        );
    }
}

/// One metric's value (summed over its series) from `/metrics`.
fn metric(addr: SocketAddr, name: &str) -> u64 {
    let (status, text) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A server started with `--metrics 127.0.0.1:0`, and that address.
fn with_metrics(args: &[&str]) -> (ChildServer, SocketAddr) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_echo"));
    cmd.args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info");
    let mut server = ChildServer::start(cmd);
    let metrics = server.metrics_addr(LIMIT);
    (server, metrics)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

// ---------------------------------------------------------------------------------------
// Framed mode, plain TCP.

/// Good packets (one of 1 MiB, whose answer is still queued when the bad header is
/// decoded), then an unknown type or an over-long length, then more bytes, all in one
/// write: every good packet is answered, then the connection ends in order (no reset that
/// would cut the answers short).
#[test]
fn good_packets_before_a_bad_one_in_one_write_are_all_answered() {
    let server = Server::start(&["--framed", "--io-threads", "1"]);
    let mut rng = Rng::new(11);
    for bad in [header(7, 3), header(1, (MIB + 1) as u32)] {
        let payloads = vec![rng.bytes(100), rng.bytes(MIB), rng.bytes(5)];
        let mut wire: Vec<u8> = payloads.iter().flat_map(|p| packet(1, p)).collect();
        wire.extend_from_slice(&bad);
        wire.extend_from_slice(&rng.bytes(3000)); // after the bad header: never read as packets
        let mut s = server.connect();
        let mut w = s.try_clone().unwrap();
        let writer = thread::spawn(move || {
            // The server may close before it took the tail: a reset here is fine.
            let _ = w.write_all(&wire);
        });
        expect_answers(&mut s, &payloads);
        expect_eof(&mut s);
        join_within("writer", writer);
    }
    server.wait_for_stderr("unknown packet type 7", LIMIT);
    server.wait_for_stderr("exceeds the maximum", LIMIT);
}

/// A packet (small, or 1 MiB whose answer is queued) and the client's half-close right
/// after it, in one go: the answer is still delivered whole, then the server's EOF.
#[test]
fn a_half_close_right_after_a_packet_still_gets_the_answer() {
    let server = Server::start(&["--framed", "--io-threads", "1"]);
    let mut rng = Rng::new(12);
    for len in [0, 17, MIB] {
        let payloads = vec![rng.bytes(len), rng.bytes(len / 2)];
        let wire: Vec<u8> = payloads.iter().flat_map(|p| packet(1, p)).collect();
        let mut s = server.connect();
        let mut w = s.try_clone().unwrap();
        let writer = thread::spawn(move || {
            w.write_all(&wire).expect("write");
            w.shutdown(Shutdown::Write).expect("half-close");
        });
        expect_answers(&mut s, &payloads);
        expect_eof(&mut s);
        join_within("writer", writer);
    }
}

/// 1 MiB packets written in small random pieces to a connection whose reader starts only
/// once the server paused it (backpressure): every packet, split over many reads and
/// pauses, comes back whole and in order; then the client half-closes and gets EOF.
#[test]
fn packets_split_across_reads_survive_backpressure_pauses() {
    let (server, metrics) = with_metrics(&["--framed", "--io-threads", "1"]);
    let mut rng = Rng::new(13);
    let payloads: Vec<Vec<u8>> = (0..14).map(|i| rng.bytes(MIB - i * 7)).collect();
    let wire: Vec<u8> = payloads.iter().flat_map(|p| packet(1, p)).collect();
    let mut s = connect(server.addr());
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let mut rng = Rng::new(14);
        write_chunked(&mut w, &wire, &mut rng, 64 << 10);
        w.shutdown(Shutdown::Write).expect("half-close");
    });
    wait_until("the server pauses the connection (backpressure)", || {
        metric(metrics, "duo_server_backpressured_connections") == 1
    });
    expect_answers(&mut s, &payloads);
    expect_eof(&mut s);
    join_within("writer", writer);
}

/// A client that sends one 1 MiB packet slowly, a piece every 50 ms for longer than the
/// 1 s idle timeout, is not idle: it gets its answer; a silent one beside it is closed.
#[test]
fn a_slow_sender_of_one_big_packet_is_not_idle() {
    let server = Server::start(&["--framed", "--idle-timeout", "1", "--io-threads", "1"]);
    let payload = Rng::new(15).bytes(MIB);
    let wire = packet(1, &payload);
    let mut silent = server.connect();
    let mut s = server.connect();
    let started = Instant::now();
    let piece = wire.len() / 50 + 1;
    for chunk in wire.chunks(piece) {
        s.write_all(chunk).expect("the slow sender is still served");
        thread::sleep(Duration::from_millis(50));
    }
    assert!(started.elapsed() > Duration::from_millis(2000));
    expect_answers(&mut s, &[payload]);
    expect_eof(&mut silent);
}

/// SIGTERM while a connection holds part of a packet: the server half-closes it, the
/// client sees EOF, and once it closes the server exits 0 well before the drain timeout.
#[test]
fn sigterm_with_a_partial_packet_drains_and_exits_zero() {
    let mut server = Server::start(&["--framed", "--io-threads", "1", "--drain-timeout", "8"]);
    let mut s = server.connect();
    let payload = Rng::new(16).bytes(1000);
    s.write_all(&packet(1, b"whole")).unwrap();
    expect_answers(&mut s, &[b"whole".to_vec()]);
    let wire = packet(1, &payload);
    s.write_all(&wire[..300]).unwrap();
    server.signal("TERM");
    expect_eof(&mut s);
    let sent = Instant::now();
    drop(s);
    let status = server.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", server.stderr());
    assert!(
        sent.elapsed() < Duration::from_secs(6),
        "waited for the drain timeout"
    );
}

/// `--max-conns 2`: the third connection is turned away; once one closes (a bad packet
/// closing it counts), a new one is served; the stats line counts open connections only.
#[test]
fn max_conns_frees_a_place_when_a_connection_closes() {
    let server = Server::start(&[
        "--framed",
        "--max-conns",
        "2",
        "--io-threads",
        "1",
        "--stats-interval",
        "1",
    ]);
    let mut a = server.connect();
    a.write_all(&packet(1, b"a")).unwrap();
    expect_answers(&mut a, &[b"a".to_vec()]);
    let mut b = server.connect();
    b.write_all(&packet(1, b"b")).unwrap();
    expect_answers(&mut b, &[b"b".to_vec()]);
    let mut third = server.connect();
    let _ = third.write_all(&packet(1, b"c"));
    let mut buf = [0u8; 16];
    assert!(
        matches!(third.read(&mut buf), Ok(0) | Err(_)),
        "the third is not served"
    );
    // `b` is closed by the server for a bad packet: its place is free again.
    b.write_all(&header(9, 0)).unwrap();
    expect_eof(&mut b);
    wait_until("a new connection is served", || {
        let mut c = server.connect();
        if c.write_all(&packet(1, b"new")).is_err() {
            return false;
        }
        let mut h = [0u8; 11];
        c.read_exact(&mut h).is_ok() && h[8..] == *b"new"
    });
    drop(a);
    server.wait_for_stderr("stats: 0 connections", LIMIT);
}

// ---------------------------------------------------------------------------------------
// TLS.

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_args(certs: &TestCerts) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        certs.path("cert.pem"),
        "--tls-key".into(),
        certs.path("key.pem"),
    ]
}

fn tls_connect(addr: SocketAddr, ca: &Path) -> TlsStream {
    let config = tls::client_config_from_pem(ca).unwrap();
    let sock = connect(addr);
    let conn =
        rustls::ClientConnection::new(config, tls::server_name("localhost").unwrap()).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// Reads the end of a TLS stream: the server's `close_notify` (an orderly end).
fn expect_tls_eof(s: &mut TlsStream) {
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{n} unexpected bytes before close_notify"),
        Err(e) => panic!("no close_notify: {e}"),
    }
}

#[test]
fn tls_good_packets_before_a_bad_one_are_answered_then_close_notify() {
    let certs = TestCerts::new("combos-bad");
    let args = tls_args(&certs);
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend(["--framed", "--io-threads", "1"]);
    let server = Server::start(&all);
    let mut rng = Rng::new(21);
    let payloads = vec![rng.bytes(100), rng.bytes(300_000), rng.bytes(5)];
    let mut wire: Vec<u8> = payloads.iter().flat_map(|p| packet(1, p)).collect();
    wire.extend_from_slice(&header(7, 0));
    let mut s = tls_connect(server.addr(), Path::new(&certs.path("ca.pem")));
    s.write_all(&wire).unwrap();
    expect_answers(&mut s, &payloads);
    expect_tls_eof(&mut s);
}

#[test]
fn tls_close_notify_right_after_a_packet_still_gets_the_answer() {
    let certs = TestCerts::new("combos-half");
    let args = tls_args(&certs);
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend(["--framed", "--io-threads", "1"]);
    let server = Server::start(&all);
    let payload = Rng::new(22).bytes(200_000);
    let mut s = tls_connect(server.addr(), Path::new(&certs.path("ca.pem")));
    s.write_all(&packet(1, &payload)).unwrap();
    s.conn.send_close_notify();
    s.flush().unwrap();
    expect_answers(&mut s, &[payload]);
    expect_tls_eof(&mut s);
}

#[test]
fn tls_slow_sender_of_one_big_packet_is_not_idle() {
    let certs = TestCerts::new("combos-idle");
    let args = tls_args(&certs);
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend(["--framed", "--io-threads", "1", "--idle-timeout", "1"]);
    let server = Server::start(&all);
    let payload = Rng::new(23).bytes(MIB);
    let wire = packet(1, &payload);
    let mut s = tls_connect(server.addr(), Path::new(&certs.path("ca.pem")));
    let piece = wire.len() / 40 + 1;
    for chunk in wire.chunks(piece) {
        s.write_all(chunk).expect("still served");
        s.flush().unwrap();
        thread::sleep(Duration::from_millis(50));
    }
    expect_answers(&mut s, &[payload]);
}

// ---------------------------------------------------------------------------------------
// UDP.

/// `--udp` at the size limit: 2048 bytes (and an empty datagram) are echoed, 2049 bytes
/// are not; with `recvmmsg` batches and with one `recvfrom` per datagram.
#[test]
fn udp_datagrams_at_the_size_limit() {
    for batch in ["32", "1"] {
        let mut server = Server::start(&["--udp", "--udp-batch", batch, "--io-threads", "1"]);
        let line = server.line_starting("udp on ", LIMIT);
        let udp: SocketAddr = line["udp on ".len()..].trim().parse().unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut buf = vec![0u8; 70_000];
        for (len, echoed) in [(2048, true), (2049, false), (0, true), (1, true)] {
            let msg = Rng::new(len as u64 + 1).bytes(len);
            c.send_to(&msg, udp).unwrap();
            if echoed {
                let n = c.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &msg[..], "batch {batch}: {len} bytes echoed");
            }
        }
        // (Had the 2049-byte one come back, it would have been read in place of the empty
        // datagram's answer, in order on loopback.)
    }
}

// ---------------------------------------------------------------------------------------
// --stats-interval figures.

/// The msg/s figure of every `stats:` line of `log`.
fn msg_rates(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("stats: ") && l.contains(" msg/s"))
        .filter_map(|l| {
            let i = l.find(" msg/s")?;
            l[..i].rsplit(' ').next()?.parse().ok()
        })
        .collect()
}

/// Good packets answered in the same read as the bad packet that closes the connection
/// are counted in the stats line's msg/s like any others.
#[test]
fn stats_count_the_packets_answered_before_a_bad_one() {
    let server = Server::start(&["--framed", "--io-threads", "1", "--stats-interval", "1"]);
    let payloads: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 10]).collect();
    let mut wire: Vec<u8> = payloads.iter().flat_map(|p| packet(1, p)).collect();
    wire.extend_from_slice(&header(7, 0));
    let mut s = server.connect();
    // One small write: the good packets and the bad one arrive in one read.
    s.write_all(&wire).unwrap();
    expect_answers(&mut s, &payloads);
    expect_eof(&mut s);
    drop(s);
    // Two lines after the close: the interval that saw the packets has been logged.
    let seen = msg_rates(&server.stderr()).len();
    wait_until("two more stats lines", || {
        msg_rates(&server.stderr()).len() >= seen + 2
    });
    let rates = msg_rates(&server.stderr());
    assert!(
        rates.iter().any(|r| *r >= 1.0),
        "the 50 answered packets were never counted: msg/s {rates:?}"
    );
}

/// Good packets past the high-water mark, then a bad header, all sent before the client
/// reads anything: the server pauses with the bad header still in the kernel, and once
/// the client reads, every good packet is answered before the orderly close.
#[test]
fn a_bad_packet_behind_a_backpressure_pause_closes_after_every_answer() {
    let (server, metrics) = with_metrics(&["--framed", "--io-threads", "1"]);
    let mut rng = Rng::new(31);
    let payloads: Vec<Vec<u8>> = (0..12).map(|_| rng.bytes(MIB)).collect();
    let mut wire: Vec<u8> = payloads.iter().flat_map(|p| packet(1, p)).collect();
    wire.extend_from_slice(&header(1, u32::MAX));
    wire.extend_from_slice(&rng.bytes(10_000));
    let mut s = connect(server.addr());
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let _ = w.write_all(&wire);
    });
    wait_until("the server pauses the connection (backpressure)", || {
        metric(metrics, "duo_server_backpressured_connections") == 1
    });
    expect_answers(&mut s, &payloads);
    expect_eof(&mut s);
    join_within("writer", writer);
    wait_until("the connection is closed", || {
        metric(metrics, "duo_server_connections") == 0
    });
}

/// `--processes 1 --max-conns 1`: the worker stops accepting at its maximum; a
/// connection that waited in the listen queue is served once the first closes, even
/// when another waiting one gave up meanwhile.
#[test]
fn a_full_worker_serves_the_waiting_connection_once_one_closes() {
    let sup = common::supervised::Sup::start(
        Path::new(common::supervised::ECHO),
        1,
        &["--framed", "--max-conns", "1"],
    );
    let mut a = sup.connect();
    a.write_all(&packet(1, b"a")).unwrap();
    expect_answers(&mut a, &[b"a".to_vec()]);
    let mut b = sup.connect();
    b.write_all(&packet(1, b"b")).unwrap();
    let mut gave_up = sup.connect();
    gave_up.write_all(&packet(1, b"c")).unwrap();
    drop(gave_up);
    drop(a);
    expect_answers(&mut b, &[b"b".to_vec()]);
    let mut d = sup.connect();
    drop(b);
    d.write_all(&packet(1, b"d")).unwrap();
    expect_answers(&mut d, &[b"d".to_vec()]);
}

/// Drives a TLS client over a non-blocking socket from one thread: sends `wire` (then,
/// with `close`, `close_notify` and a TCP half-close), reading only during the
/// handshake or once `may_read` said yes (asked at most every 10 ms), until the server's
/// `close_notify`. Returns the plaintext received.
fn tls_exchange(
    s: &mut TlsStream,
    wire: &[u8],
    close: bool,
    mut may_read: impl FnMut() -> bool,
) -> Vec<u8> {
    s.sock.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + LIMIT;
    let (mut sent, mut notified, mut shut, mut reading) = (0, false, false, false);
    let mut last_ask = Instant::now() - Duration::from_secs(1);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        assert!(
            Instant::now() < deadline,
            "TLS exchange unfinished: sent {sent} of {}, got {} bytes",
            wire.len(),
            got.len()
        );
        let mut progress = false;
        if sent < wire.len() && !s.conn.wants_write() {
            let n = s.conn.writer().write(&wire[sent..]).unwrap();
            sent += n;
            progress |= n > 0;
        }
        if close && sent == wire.len() && !notified {
            s.conn.send_close_notify();
            notified = true;
        }
        while s.conn.wants_write() {
            match s.conn.write_tls(&mut s.sock) {
                Ok(n) => progress |= n > 0,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("write: {e} (sent {sent} of {})", wire.len()),
            }
        }
        if notified && !shut && !s.conn.wants_write() {
            s.sock.shutdown(Shutdown::Write).unwrap();
            shut = true;
        }
        if !reading && last_ask.elapsed() >= Duration::from_millis(10) {
            last_ask = Instant::now();
            reading = may_read();
        }
        if reading || s.conn.is_handshaking() {
            match s.conn.read_tls(&mut s.sock) {
                Ok(0) => panic!("TCP end of stream without close_notify"),
                Ok(_) => {
                    progress = true;
                    s.conn.process_new_packets().expect("TLS records");
                    loop {
                        match s.conn.reader().read(&mut buf) {
                            Ok(0) => return got,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) => panic!("plaintext: {e}"),
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        if !progress {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Over TLS: packets past the high-water mark, then either `close_notify` (the client
/// is done) or a bad header, sent before the client reads: every packet is answered,
/// then the server's `close_notify`.
#[test]
fn tls_packets_behind_a_backpressure_pause_are_all_answered_before_the_end() {
    let certs = TestCerts::new("combos-pause");
    let args = tls_args(&certs);
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend(["--framed", "--io-threads", "1"]);
    let (server, metrics) = with_metrics(&all);
    let mut rng = Rng::new(41);
    for bad in [false, true] {
        let payloads: Vec<Vec<u8>> = (0..10).map(|i| rng.bytes(MIB - 3 * i)).collect();
        let mut wire: Vec<u8> = payloads.iter().flat_map(|p| packet(1, p)).collect();
        if bad {
            wire.extend_from_slice(&header(5, 1));
        }
        let mut s = tls_connect(server.addr(), Path::new(&certs.path("ca.pem")));
        let got = tls_exchange(&mut s, &wire, !bad, || {
            metric(metrics, "duo_server_backpressured_connections") == 1
        });
        let expected: Vec<u8> = payloads.iter().flat_map(|p| packet(2, p)).collect();
        assert_eq!(got.len(), expected.len(), "bad header: {bad}");
        assert!(got == expected, "answers differ (bad header: {bad})");
    }
}

/// The same limits on a wildcard address (replies leave from the address each datagram
/// came to, `IP_PKTINFO`), batched and not.
#[test]
fn udp_size_limits_on_a_wildcard_address() {
    for batch in ["32", "1"] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_echo"));
        cmd.args([
            "--listen",
            "0.0.0.0:0",
            "--udp",
            "--udp-batch",
            batch,
            "--io-threads",
            "1",
        ]);
        let mut server = ChildServer::builder(cmd).allow_preamble().start();
        let line = server.line_starting("udp on ", LIMIT);
        let port: SocketAddr = line["udp on ".len()..].trim().parse().unwrap();
        let udp = SocketAddr::from(([127, 0, 0, 1], port.port()));
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut buf = vec![0u8; 70_000];
        for (len, echoed) in [
            (2048, true),
            (2049, false),
            (0, true),
            (65_000, false),
            (7, true),
        ] {
            let msg = Rng::new(len as u64 + 3).bytes(len);
            c.send_to(&msg, udp).unwrap();
            if echoed {
                let (n, from) = c.recv_from(&mut buf).unwrap();
                assert_eq!(&buf[..n], &msg[..], "batch {batch}: {len} bytes echoed");
                assert_eq!(from, udp, "the reply leaves from the address sent to");
            }
        }
    }
}

/// SIGTERM over TLS with a partial packet on one connection and a handshake not even
/// begun on another: the first gets `close_notify`, the second is closed, and the
/// server exits 0 once the first client closes, well before the drain timeout.
#[test]
fn tls_sigterm_with_a_partial_packet_and_a_pending_handshake() {
    let certs = TestCerts::new("combos-term");
    let args = tls_args(&certs);
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend(["--framed", "--io-threads", "1", "--drain-timeout", "8"]);
    let (mut server, metrics) = with_metrics(&all);
    let mut s = tls_connect(server.addr(), Path::new(&certs.path("ca.pem")));
    s.write_all(&packet(1, b"whole")).unwrap();
    expect_answers(&mut s, &[b"whole".to_vec()]);
    let wire = packet(1, &[3u8; 500]);
    s.write_all(&wire[..100]).unwrap();
    s.flush().unwrap();
    let mut silent = connect(server.addr());
    wait_until("the server holds both connections", || {
        metric(metrics, "duo_server_connections") == 2
    });
    server.signal("TERM");
    expect_tls_eof(&mut s);
    let mut buf = [0u8; 16];
    assert!(matches!(silent.read(&mut buf), Ok(0) | Err(_)));
    let sent = Instant::now();
    drop(s);
    let status = server.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", server.stderr());
    assert!(
        sent.elapsed() < Duration::from_secs(6),
        "waited for the drain timeout"
    );
}

/// Plain mode: a client that writes past the high-water mark in random pieces, then
/// half-closes, and reads only once the server paused it, gets every byte back, then EOF.
#[test]
fn plain_echo_through_a_pause_and_a_half_close_keeps_every_byte() {
    let (server, metrics) = with_metrics(&["--io-threads", "1"]);
    let data = Rng::new(51).bytes(12 * MIB);
    let mut s = connect(server.addr());
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = thread::spawn(move || {
        write_chunked(&mut w, &sent, &mut Rng::new(52), 100_000);
        w.shutdown(Shutdown::Write).expect("half-close");
    });
    wait_until("the server pauses the connection (backpressure)", || {
        metric(metrics, "duo_server_backpressured_connections") == 1
    });
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).expect("the whole echo");
    assert!(back == data, "echoed bytes differ");
    expect_eof(&mut s);
    join_within("writer", writer);
}
