//! Review round 6 of `loadgen`: a run that never reached the server, and the requests an
//! open-loop run could not send because their connection was not open. (Written by a
//! review helper: each test failed before its fix.)
//!
//! A run in which every connect failed measured nothing, yet it used to exit 0 unless
//! `--strict` (which also fails on the smallest error of a run that did measure): a
//! script took its zeros for a result. It now fails (exit 1) with a clear `failure`, in
//! every mode.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::thread;

use common::loadgen;
use duo_testkit::loadgen_json::LoadgenJson;
use socket2::{Domain, Socket, Type};

/// A loopback TCP port that refuses every connect (bound, never listening: the port is
/// ours for as long as the socket lives, so no other process can take it meanwhile).
fn refusing_port() -> (Socket, SocketAddr) {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, addr)
}

/// Runs loadgen `args` (plus `--json` and a short `--timeout`) against `addr`; its exit
/// code and report.
fn run(args: &[&str], addr: SocketAddr) -> (i32, LoadgenJson, String) {
    let addr = addr.to_string();
    let mut all = args.to_vec();
    all.extend(["--addr", &addr, "--json", "--timeout", "2"]);
    let (code, out) = loadgen(&all);
    let json = LoadgenJson::find_in(&out).unwrap_or_else(|| panic!("no report: {out}"));
    (code, json, out)
}

/// `args` against a port that refuses every connect: exit 1, with a failure that says
/// no connection was ever established.
fn fails_unreached(args: &[&str]) {
    let (_socket, addr) = refusing_port();
    let (code, json, out) = run(args, addr);
    assert_eq!(code, 1, "{args:?} exited {code}: {out}");
    let failure = json.failure.unwrap_or_default();
    assert!(
        failure.contains("no connection") && failure.contains("ever established"),
        "{args:?}: {out}"
    );
    assert!(json.errors.get("refused").is_some_and(|&n| n > 0), "{out}");
}

#[test]
fn pingpong_that_never_connects_fails() {
    fails_unreached(&["pingpong", "--conns", "2", "--secs", "0.3"]);
}

#[test]
fn rr_that_never_connects_fails() {
    fails_unreached(&["rr", "--conns", "2", "--secs", "0.3"]);
}

#[test]
fn rr_with_reconnect_that_never_connects_fails() {
    fails_unreached(&["rr", "--conns", "2", "--secs", "0.3", "--reconnect"]);
}

#[test]
fn open_loop_rr_that_never_connects_fails() {
    fails_unreached(&["rr", "--conns", "2", "--secs", "0.3", "--rate", "100"]);
}

#[test]
fn churn_that_never_connects_fails() {
    fails_unreached(&["churn", "--conns", "2", "--secs", "0.3"]);
}

#[test]
fn idle_that_never_connects_fails() {
    fails_unreached(&["idle", "--conns", "2", "--hold", "0"]);
}

#[test]
fn idle_procs_that_never_connect_fail() {
    fails_unreached(&["idle", "--conns", "2", "--procs", "2", "--hold", "0"]);
}

/// UDP has no connection: a run to which no datagram ever came back (here a socket that
/// reads nothing) measured nothing either, and fails the same way.
#[test]
fn udp_rr_that_is_never_answered_fails() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let (code, json, out) = run(&["rr", "--udp", "--conns", "2", "--secs", "0.5"], addr);
    assert_eq!(code, 1, "{out}");
    let failure = json.failure.unwrap_or_default();
    assert!(failure.contains("no datagram"), "{out}");
}

/// Open loop, the requests due on a connection that is not open (here one the server
/// closed before the measured phase) are never sent: they used to be counted nowhere
/// (`unsent` counted only those behind a request in flight on an open connection), so a
/// run offering half its target rate reported nothing amiss but its achieved rate. Every
/// request due in the phase is now either sent or `unsent`.
#[test]
fn open_loop_counts_the_requests_of_a_closed_connection_unsent() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // The first connection is echoed, the second closed at once. (The thread ends when
    // loadgen closes, or with the test process; the reads have a deadline.)
    thread::spawn(move || {
        let Ok((mut echoed, _)) = listener.accept() else {
            return;
        };
        let Ok((closed, _)) = listener.accept() else {
            return;
        };
        drop(closed);
        let _ = echoed.set_read_timeout(Some(common::RUN_LIMIT));
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = echoed.read(&mut buf) {
            if echoed.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    // 200 requests/s over two connections: one each 10 ms, 100 each in the second.
    let (code, json, out) = run(
        &["rr", "--conns", "2", "--secs", "1", "--rate", "200"],
        addr,
    );
    assert_eq!(code, 0, "{out}");
    let (sent, unsent) = (json.sent.unwrap(), json.unsent.unwrap());
    assert!((90..=102).contains(&sent), "{out}");
    assert!(
        (190..=202).contains(&(sent + unsent)),
        "{sent} sent + {unsent} unsent of the 200 due: {out}"
    );
}
