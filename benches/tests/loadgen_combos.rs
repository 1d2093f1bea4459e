//! `loadgen` against servers that misbehave, and with options that do not go together:
//! a UDP echo of wrong bytes fails verification (exit 1) whatever part of the datagram
//! is wrong; `--udp` with an option it cannot honour is a usage error (exit 2); and
//! `--json` is one valid JSON line in every mode, even when nothing succeeds.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::thread;

use common::loadgen;
use serde_json::Value;

/// What the UDP test server sends back for a datagram.
#[derive(Clone, Copy)]
enum Udp {
    /// Every byte flipped (its header too).
    Flipped,
    /// Its first 4 bytes only.
    Short,
}

/// A UDP server on a free loopback port that answers every datagram wrongly; it lives as
/// long as the test process.
fn udp_server(answer: Udp) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("local addr");
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let reply = match answer {
                Udp::Flipped => buf[..n].iter().map(|b| b ^ 0xFF).collect::<Vec<u8>>(),
                Udp::Short => buf[..n.min(4)].to_vec(),
            };
            let _ = socket.send_to(&reply, from);
        }
    });
    addr
}

/// The one JSON line of `out`, parsed; fails the test if `out` is anything else.
fn one_json_line(out: &str, what: &str) -> Value {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: one line expected, got {out:?}");
    let v: Value = serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("{what}: not valid JSON ({e}): {}", lines[0]));
    assert!(v.is_object(), "{what}: {v}");
    v
}

/// A datagram echoed with other bytes is a mismatch, whichever bytes differ: the run fails
/// its verification (exit 1), and the requests are not taken for lost ones.
#[test]
fn udp_echoes_of_wrong_bytes_fail_verification() {
    for answer in [Udp::Flipped, Udp::Short] {
        let addr = udp_server(answer).to_string();
        let args = [
            "rr", "--udp", "--addr", &addr, "--json", "--secs", "0.5", "--conns", "2",
        ];
        let (code, out) = loadgen(&args);
        let v = one_json_line(&out, "rr --udp");
        assert_eq!(code, 1, "wrong bytes echoed must fail the run: {v}");
        assert_eq!(v["verification_failed"], Value::Bool(true), "{v}");
        assert!(
            v["errors"]["mismatch"].as_u64().unwrap_or(0) > 0,
            "counted as mismatches: {v}"
        );
        assert_eq!(v["msgs"].as_u64(), Some(0), "{v}");
    }
}

/// `rr --udp` needs an IP address: a Unix-domain `--addr` is a usage error, reported at
/// once (exit 2), like every other option `--udp` refuses.
#[test]
fn udp_with_a_unix_address_is_a_usage_error() {
    let (code, out) = loadgen(&[
        "rr",
        "--udp",
        "--addr",
        "unix:/tmp/duo-loadgen-combos.sock",
        "--secs",
        "0.2",
    ]);
    assert_eq!(code, 2, "{out}");
}

/// `--tls-ca` asks for TLS, which UDP datagrams cannot carry here: refused (exit 2)
/// rather than measuring plaintext datagrams under a TLS label.
#[test]
fn udp_with_tls_is_a_usage_error() {
    let ca = std::env::temp_dir().join(format!("duo-loadgen-combos-{}.pem", std::process::id()));
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let addr = udp_server(Udp::Short).to_string();
    let (code, out) = loadgen(&[
        "rr",
        "--udp",
        "--addr",
        &addr,
        "--tls-ca",
        ca.to_str().unwrap(),
        "--secs",
        "0.2",
        "--json",
    ]);
    let _ = std::fs::remove_file(&ca);
    assert_eq!(code, 2, "{out}");
}

/// A TCP server that closes every connection as soon as it accepts it.
fn closing_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    addr
}

/// A TCP server that sends back every byte with its lowest bit flipped.
fn flipping_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    buf[..n].iter_mut().for_each(|b| *b ^= 1);
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The arguments of each mode for a short run against `addr`.
fn modes(addr: &str) -> Vec<Vec<String>> {
    let short = ["--json", "--timeout", "1"];
    let runs: [&[&str]; 6] = [
        &["pingpong", "--secs", "0.2", "--conns", "2"],
        &["rr", "--secs", "0.2", "--conns", "2", "--threads", "2"],
        &["churn", "--secs", "0.2", "--conns", "2", "--sources", "2"],
        &["idle", "--hold", "0", "--conns", "4"],
        &["idle", "--hold", "0", "--conns", "4", "--procs", "2"],
        &["bank", "--secs", "0.2", "--clients", "2", "--accounts", "2"],
    ];
    runs.iter()
        .map(|r| {
            let mut v: Vec<String> = r.iter().map(|s| s.to_string()).collect();
            v.extend(["--addr".to_owned(), addr.to_owned()]);
            v.extend(short.iter().map(|s| s.to_string()));
            v
        })
        .collect()
}

/// Nothing succeeds (every connection closed at once): each mode still prints one valid
/// JSON line, with zero work, finite rates and the errors counted; `--strict` then fails
/// the run.
#[test]
fn json_is_one_valid_line_in_every_mode_when_nothing_succeeds() {
    let addr = closing_server().to_string();
    for mut args in modes(&addr) {
        args.push("--strict".into());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out) = loadgen(&argv);
        let v = one_json_line(&out, &args.join(" "));
        assert_eq!(code, 1, "{argv:?}: errors with --strict fail the run: {v}");
        assert_eq!(
            v["verification_failed"],
            Value::Bool(false),
            "{argv:?}: {v}"
        );
        assert!(v["error_total"].as_u64().unwrap_or(0) > 0, "{argv:?}: {v}");
        let work = v.get("transfers").or(v.get("msgs")).and_then(Value::as_u64);
        assert!(matches!(work, None | Some(0)), "{argv:?}: {v}");
        for (k, val) in v.as_object().unwrap() {
            assert!(!val.is_null(), "{argv:?}: `{k}` is null (NaN?): {v}");
        }
    }
}

/// A server that echoes wrong bytes fails every echo mode's verification (exit 1), with
/// one valid JSON line.
#[test]
fn wrong_bytes_fail_every_echo_mode() {
    let addr = flipping_server().to_string();
    for args in modes(&addr) {
        if args[0] == "bank" {
            continue;
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out) = loadgen(&argv);
        let v = one_json_line(&out, &args.join(" "));
        assert_eq!(code, 1, "{argv:?}: {v}");
        assert_eq!(v["verification_failed"], Value::Bool(true), "{argv:?}: {v}");
    }
}

/// `idle` has no measured phase to charge the server's CPU time to: `--server-pid` is
/// refused (exit 2), not silently left out of the report.
#[test]
fn idle_with_server_pid_is_a_usage_error() {
    let addr = closing_server().to_string();
    let pid = std::process::id().to_string();
    let (code, out) = loadgen(&[
        "idle",
        "--addr",
        &addr,
        "--conns",
        "2",
        "--hold",
        "0",
        "--server-pid",
        &pid,
        "--json",
    ]);
    assert_eq!(code, 2, "{out}");
}
