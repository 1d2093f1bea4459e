//! `echo serve` as a user runs it, with flag combinations and values at the edges: a value
//! out of range is one clear usage error (exit 2) at start, never a panic later nor a
//! server that runs and serves nothing; and every mode (TCP, UDP, Unix, TLS,
//! `--processes`) stops with status 0 on SIGINT and SIGTERM, within a bounded time.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use common::{round_trip, Server, IO_TIMEOUT};
use duo_testkit::{run_within, ChildServer, TestCerts};

/// How long a usage error may take to be reported.
const STARTUP: Duration = Duration::from_secs(8);
/// How long a graceful stop may take (no connections are open).
const STOP: Duration = Duration::from_secs(8);

/// Runs `echo serve --listen 127.0.0.1:0 ARGS..`, expecting it to refuse the command line
/// at once: exit status 2 and a message naming `flag`, without a panic.
fn assert_usage_error(args: &[&str], flag: &str) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_echo"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--io-threads", "1"])
        .args(args)
        .env("RUST_LOG", "info");
    let done = run_within(&mut cmd, STARTUP)
        .unwrap_or_else(|e| panic!("echo serve {args:?} was not refused at start: {e}"));
    assert!(
        !done.stderr.contains("panicked"),
        "echo serve {args:?} panicked:\n{}",
        done.stderr
    );
    assert_eq!(
        done.status.code(),
        Some(2),
        "echo serve {args:?}: {}\nstderr:\n{}",
        done.status,
        done.stderr
    );
    assert!(
        done.stderr.contains(flag),
        "the message names {flag}: {}",
        done.stderr
    );
    assert!(
        done.stdout.is_empty(),
        "nothing served, nothing announced: {}",
        done.stdout
    );
}

/// A drain timeout too large for the clock: refused at start, not a panic at the stop
/// (one process) or at start (the supervisor adds its margin to it).
#[test]
fn a_drain_timeout_beyond_the_clock_is_a_usage_error() {
    let huge = u64::MAX.to_string();
    assert_usage_error(&["--drain-timeout", &huge], "--drain-timeout");
    assert_usage_error(
        &["--drain-timeout", &huge, "--processes", "1"],
        "--drain-timeout",
    );
}

/// A stats interval too large for the clock: refused, not a panic when the timer is set.
#[test]
fn a_stats_interval_beyond_the_clock_is_a_usage_error() {
    let huge = u64::MAX.to_string();
    assert_usage_error(&["--stats-interval", &huge], "--stats-interval");
    assert_usage_error(
        &["--stats-interval", &huge, "--processes", "1"],
        "--stats-interval",
    );
}

/// `--max-conns 0` would serve nothing: one process accepts and closes every connection,
/// and a supervisor's workers never accept at all (connections wait in the queue for
/// ever). A usage error, like `--processes 0`.
#[test]
fn max_conns_0_is_a_usage_error() {
    assert_usage_error(&["--max-conns", "0"], "--max-conns");
    assert_usage_error(&["--max-conns", "0", "--processes", "1"], "--max-conns");
}

/// `--udp` next to TLS served the datagrams in plaintext beside a TLS listener, which an
/// operator who asked for TLS does not expect: there is no DTLS, so the two are refused
/// together.
#[test]
fn udp_beside_tls_is_a_usage_error() {
    let certs = TestCerts::new("udp-tls");
    let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
    assert_usage_error(&["--udp", "--tls-cert", &cert, "--tls-key", &key], "--udp");
}

/// Stops `server` with `signal`; it must exit with status 0 within [`STOP`].
fn stops_cleanly(server: &mut ChildServer, signal: &str, what: &str) {
    let (status, took) = server
        .try_terminate(signal, STOP)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        status.success(),
        "{what}: SIG{signal} gave {status}; stderr:\n{}",
        server.stderr()
    );
    assert!(took < STOP, "{what}: took {took:?}");
    assert!(
        !server.stderr().contains("panicked"),
        "{what}: {}",
        server.stderr()
    );
}

/// Every mode, served and then stopped by SIGINT and by SIGTERM: status 0, promptly; a
/// Unix-domain socket file the server created is gone afterwards.
#[test]
fn every_mode_stops_with_status_0_on_sigint_and_sigterm() {
    let certs = TestCerts::new("cli-combos");
    let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
    for signal in ["INT", "TERM"] {
        let modes: [&[&str]; 5] = [
            &["--io-threads", "1"],
            &["--io-threads", "1", "--udp"],
            &["--io-threads", "1", "--tls-cert", &cert, "--tls-key", &key],
            &["--io-threads", "1", "--processes", "2"],
            &["--io-threads", "0", "--accept", "main", "--framed"],
        ];
        for args in modes {
            let mut server = Server::start(args);
            if !args.contains(&"--tls-cert") && !args.contains(&"--framed") {
                round_trip(&mut server.connect(), b"ping");
            }
            stops_cleanly(&mut server, signal, &format!("{args:?}"));
        }
        let path = std::env::temp_dir().join(format!(
            "duo-echo-combos-{}-{signal}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_echo"));
        cmd.args(["serve", "--io-threads", "1", "--listen"])
            .arg(format!("unix:{}", path.display()))
            .env("RUST_LOG", "info");
        let mut server = ChildServer::start(cmd);
        let mut s = UnixStream::connect(&path).expect("connect to the socket file");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
        drop(s);
        stops_cleanly(&mut server, signal, "unix");
        assert!(!path.exists(), "the socket file is removed at exit");
    }
}
