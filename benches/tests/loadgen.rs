//! Smoke tests of the `loadgen` binary: each mode against a tiny in-process echo server
//! (one std thread per connection), about a second each, checking the `--json` output.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;

use common::{field, loadgen, number};

/// Starts an echo server on a free loopback port; it lives as long as the test process.
/// With `corrupt`, it flips one bit of the 1000th byte of each connection.
fn echo_server(corrupt: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            thread::spawn(move || echo(stream, corrupt));
        }
    });
    addr
}

fn echo(mut stream: TcpStream, corrupt: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if corrupt && total <= 1000 && 1000 < total + n {
            buf[1000 - total] ^= 1;
        }
        total += n;
        if stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Runs a mode with `--json` and checks the common expectations: one JSON line, exit 0,
/// work done, no errors.
fn run_ok(mode: &str, extra: &[&str]) -> String {
    let addr = echo_server(false).to_string();
    let mut args = vec![mode, "--addr", &addr, "--json", "--timeout", "5"];
    args.extend_from_slice(extra);
    let (code, out) = loadgen(&args);
    let json = out.trim();
    assert_eq!(code, 0, "loadgen {args:?} exited {code}: {json}");
    assert_eq!(json.lines().count(), 1, "one JSON line expected: {json}");
    assert!(json.starts_with('{') && json.ends_with('}'), "{json}");
    assert_eq!(field(json, "mode"), Some(&*format!("\"{mode}\"")));
    assert!(number(json, "msgs") > 0.0, "no work done: {json}");
    assert_eq!(field(json, "errors"), Some("{}"), "errors: {json}");
    assert_eq!(number(json, "error_total"), 0.0);
    assert_eq!(field(json, "verification_failed"), Some("false"));
    json.to_owned()
}

#[test]
fn pingpong() {
    let json = run_ok(
        "pingpong",
        &[
            "--conns",
            "4",
            "--size",
            "4096",
            "--secs",
            "1",
            "--threads",
            "2",
        ],
    );
    assert!(number(&json, "msgs_per_sec") > 0.0);
    assert!(number(&json, "mib_per_sec") > 0.0);
    assert_eq!(number(&json, "bytes"), number(&json, "msgs") * 4096.0);
}

#[test]
fn rr() {
    let json = run_ok("rr", &["--conns", "4", "--size", "64", "--secs", "1"]);
    let (p50, p99, max) = (
        number(&json, "p50_us"),
        number(&json, "p99_us"),
        number(&json, "max_us"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{json}");
}

#[test]
fn churn() {
    let json = run_ok("churn", &["--conns", "4", "--secs", "1", "--threads", "2"]);
    assert!(number(&json, "msgs_per_sec") > 0.0);
}

#[test]
fn idle() {
    let pid = std::process::id().to_string();
    let json = run_ok(
        "idle",
        &[
            "--conns",
            "50",
            "--hold",
            "1",
            "--pid",
            &pid,
            "--threads",
            "2",
        ],
    );
    assert_eq!(number(&json, "established"), 50.0);
    assert_eq!(number(&json, "verified_end"), 50.0, "{json}");
    assert!(number(&json, "rss_before_kib") > 0.0);
    assert!(number(&json, "rss_hold_kib") > 0.0);
    assert!(field(&json, "rss_per_conn_bytes").is_some());
}

#[test]
fn wrong_bytes_fail_verification() {
    let addr = echo_server(true).to_string();
    let (code, out) = loadgen(&[
        "pingpong", "--addr", &addr, "--conns", "2", "--size", "512", "--secs", "1", "--json",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(number(&out, "error_total") > 0.0);
    assert!(field(&out, "errors").is_some_and(|e| e.contains("\"mismatch\"")));
    assert_eq!(field(&out, "verification_failed"), Some("true"));
}

#[test]
fn refuses_non_loopback_addresses() {
    let (code, out) = loadgen(&["rr", "--addr", "192.0.2.1:7000", "--secs", "1"]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
}

/// Starts an echo server on a free loopback port that ends connections in an orderly way
/// (a FIN, then it reads and drops the rest): every connection after echoing `limit` bytes,
/// or, with `every_other`, every second connection at once (the others echo forever).
fn closing_server(limit: usize, every_other: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let limit = match (every_other, i % 2) {
                (true, 0) => 0,
                (true, _) => usize::MAX,
                (false, _) => limit,
            };
            thread::spawn(move || echo_then_close(stream, limit));
        }
    });
    addr
}

fn echo_then_close(mut stream: TcpStream, limit: usize) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut echoed = 0usize;
    while echoed < limit {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n.min(limit - echoed),
        };
        if stream.write_all(&buf[..n]).is_err() {
            return;
        }
        echoed += n;
    }
    // An orderly close: FIN after the output; whatever the client still sends is read
    // (and dropped) so that closing does not turn into a reset.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}

#[test]
fn rr_reconnect_counts_orderly_closes_apart() {
    let addr = closing_server(5 * 64, false).to_string();
    let (code, out) = loadgen(&[
        "rr",
        "--addr",
        &addr,
        "--conns",
        "4",
        "--size",
        "64",
        "--secs",
        "1",
        "--json",
        "--reconnect",
        "--strict",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(number(&out, "error_total"), 0.0, "{out}");
    let closed = number(&out, "server_closed");
    let unanswered = number(&out, "unanswered_on_close");
    assert!(
        closed >= 4.0,
        "every connection is closed after 5 requests: {out}"
    );
    assert!(
        unanswered <= closed,
        "at most one request outstanding each: {out}"
    );
    // Work went on over the new connections.
    assert!(number(&out, "msgs") > 5.0 * 4.0, "{out}");
}

#[test]
fn churn_reconnect_counts_orderly_closes_apart() {
    let addr = closing_server(0, true).to_string();
    let (code, out) = loadgen(&[
        "churn",
        "--addr",
        &addr,
        "--conns",
        "4",
        "--secs",
        "1",
        "--json",
        "--reconnect",
        "--strict",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(number(&out, "error_total"), 0.0, "{out}");
    let closed = number(&out, "server_closed");
    assert!(closed > 0.0, "{out}");
    // Each of those had its round trip outstanding (churn sends it on connecting), unless
    // the FIN came before the connection was even seen open.
    assert!(number(&out, "unanswered_on_close") <= closed, "{out}");
    assert!(number(&out, "msgs") > 0.0, "{out}");
}

#[test]
fn without_reconnect_an_orderly_close_is_an_error() {
    let addr = closing_server(5 * 64, false).to_string();
    let (code, out) = loadgen(&[
        "rr", "--addr", &addr, "--conns", "2", "--size", "64", "--secs", "1", "--json",
    ]);
    assert_eq!(
        code, 0,
        "errors alone do not fail a run without --strict: {out}"
    );
    assert!(
        field(&out, "errors").is_some_and(|e| e.contains("\"closed\"")),
        "{out}"
    );
    assert!(field(&out, "server_closed").is_none(), "{out}");
}

#[test]
fn idle_procs_refuses_a_share_over_the_open_file_limit() {
    // 1 000 000 connections in 2 processes is far more per process than any default
    // limit allows: a usage error before anything starts.
    let (code, out) = loadgen(&[
        "idle",
        "--addr",
        "127.0.0.1:9",
        "--conns",
        "1000000",
        "--procs",
        "2",
        "--json",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.is_empty(), "{out}");
}
