//! `loadgen rr --rate` (open loop): the schedule is kept (about rate x seconds requests,
//! reported with the target and achieved rates), a server stall weighs in the percentiles
//! for every request it delayed where closed loop records one slow sample per connection,
//! and a bad `--rate` is a usage error. Without `--rate` the report has none of the
//! open-loop fields.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use common::{loadgen, loadgen_stderr};
use duo_testkit::loadgen_json::LoadgenJson;
use duo_testkit::ChildServer;

/// How long the stalling server stops answering, once.
const STALL: Duration = Duration::from_millis(300);
/// When its stall starts, after the first byte it received.
const STALL_AT: Duration = Duration::from_millis(600);
/// Bounds the server's start.
const DEADLINE: Duration = Duration::from_secs(20);

/// `raw_epoll_echo` on a free loopback port, killed by PID when dropped.
fn echo_server() -> ChildServer {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raw_epoll_echo"));
    cmd.args(["--listen", "127.0.0.1:0"]);
    ChildServer::builder(cmd).startup(DEADLINE).start()
}

/// An echo server on a free loopback port (one std thread per connection) that stops
/// answering on every connection for [`STALL`], once: from [`STALL_AT`] after the first
/// byte it received. A request that arrives during the stall is answered when it ends.
/// The server lives as long as the test process.
fn stalling_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let first_byte = Arc::new(OnceLock::new());
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let first_byte = Arc::clone(&first_byte);
            thread::spawn(move || echo_with_a_stall(stream, &first_byte));
        }
    });
    addr
}

fn echo_with_a_stall(mut stream: TcpStream, first_byte: &OnceLock<Instant>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let start = *first_byte.get_or_init(Instant::now) + STALL_AT;
        let now = Instant::now();
        if (start..start + STALL).contains(&now) {
            // The behaviour under test (a server that stalls), not a wait for an event.
            thread::sleep(start + STALL - now);
        }
        if stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Runs `rr --json` against `addr` with `extra`; expects exit 0 and no error. Returns the
/// report and stderr.
fn rr(addr: &str, extra: &[&str]) -> (LoadgenJson, String) {
    let mut args = vec![
        "rr",
        "--addr",
        addr,
        "--json",
        "--timeout",
        "5",
        "--size",
        "64",
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = loadgen_stderr(&args);
    assert_eq!(code, 0, "loadgen {args:?} exited {code}: {out} {err}");
    let json = LoadgenJson::find_in(&out).unwrap_or_else(|| panic!("no report: {out}"));
    assert_eq!(json.error_total, 0, "{json:?}");
    assert!(json.msgs.unwrap_or(0) > 0, "no work done: {json:?}");
    (json, err)
}

#[test]
fn open_loop_keeps_its_schedule_and_reports_it() {
    let server = echo_server();
    let addr = server.addr().to_string();

    // Closed loop: the report is as it always was, without the open-loop fields.
    let (closed, _) = rr(&addr, &["--conns", "4", "--secs", "1"]);
    assert_eq!(closed.target_rate, None, "{closed:?}");
    assert_eq!(closed.achieved_rate, None, "{closed:?}");
    assert_eq!(
        (closed.sent, closed.late, closed.unsent),
        (None, None, None)
    );

    // Open loop, 5 connections over 2 threads (3 and 2): 500 requests/s for 2 s.
    let (rate, secs, conns) = (500.0, 2.0, 5.0);
    let (open, _) = rr(
        &addr,
        &[
            "--conns",
            "5",
            "--threads",
            "2",
            "--secs",
            "2",
            "--rate",
            "500",
        ],
    );
    assert_eq!(open.target_rate, Some(rate), "{open:?}");
    let (Some(sent), Some(late), Some(unsent), Some(achieved), Some(elapsed)) = (
        open.sent,
        open.late,
        open.unsent,
        open.achieved_rate,
        open.elapsed_secs,
    ) else {
        panic!("open-loop fields missing: {open:?}");
    };
    let msgs = open.msgs.unwrap();
    let sent_f = sent as f64;
    // Never more than the schedule holds (each connection at most one more, its phase),
    // and, on a shared machine, at least half of it.
    assert!(sent_f <= rate * elapsed + conns, "{open:?}");
    assert!(sent_f >= 0.5 * rate * secs, "{open:?}");
    // One request in flight per connection at most: sent and answered differ by that.
    assert!(msgs <= sent && sent <= msgs + conns as u64, "{open:?}");
    assert!(late <= sent, "{open:?}");
    assert!(unsent <= sent, "{open:?}");
    // The achieved rate is what was sent over the phase.
    assert!(
        (achieved - sent_f / elapsed).abs() <= 0.01 * achieved + 0.01,
        "{open:?}"
    );
    assert!(open.latency_samples.unwrap() >= msgs, "{open:?}");
    let (p50, p99, max) = (
        open.p50_us.unwrap(),
        open.p99_us.unwrap(),
        open.max_us.unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{open:?}");
}

/// The same server stall, measured closed loop and open loop: closed loop, the generator
/// waits with the server, each connection records one slow sample and the 99th percentile
/// does not see the stall (only the maximum does); open loop, every request due during the
/// stall waits for it, counted from its intended send time, and the 99th percentile shows
/// it. Open loop also reports the requests the stall made late, and says so on stderr.
#[test]
fn a_stall_weighs_for_every_request_it_delays_open_loop_only() {
    let third = STALL.as_secs_f64() * 1e6 / 3.0;

    let addr = stalling_server().to_string();
    let (closed, _) = rr(&addr, &["--conns", "4", "--secs", "2"]);
    let samples = closed.latency_samples.unwrap();
    // Four slow samples (one per connection) stay under 1 % from 400 samples on.
    assert!(
        samples >= 400,
        "too few closed-loop samples for the comparison: {closed:?}"
    );
    assert!(
        closed.max_us.unwrap() >= third,
        "the stall is seen: {closed:?}"
    );
    assert!(
        closed.p99_us.unwrap() < third,
        "closed loop: a few slow samples, not 1 %: {closed:?}"
    );

    let addr = stalling_server().to_string();
    // 1 000 requests/s over 4 connections: one every 4 ms each, ~75 each due during the
    // stall, about half of them waiting more than a third of it: ~8 % of 2 000.
    let (open, err) = rr(&addr, &["--conns", "4", "--secs", "2", "--rate", "1000"]);
    assert!(
        open.p99_us.unwrap() >= third,
        "open loop: the stall delays many requests: {open:?}"
    );
    let (sent, late) = (open.sent.unwrap(), open.late.unwrap());
    assert!(late * 100 > sent, "the stall made requests late: {open:?}");
    let warning = "more than one interval after their intended time";
    assert!(err.contains(warning), "warned on stderr: {err}");
    assert!(
        open.notes.iter().any(|n| n.contains(warning)),
        "and in the report: {open:?}"
    );
}

/// An echo server on a free loopback port that ends every connection in an orderly way
/// (FIN) after echoing `limit` bytes, then reads and drops the rest. It lives as long as
/// the test process.
fn closing_server(limit: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let mut echoed = 0;
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
                let _ = stream.shutdown(std::net::Shutdown::Write);
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// Open loop with `--reconnect`: a connection the server closes is reopened and goes on
/// with its schedule (the request lost with it is counted apart, not an error).
#[test]
fn open_loop_goes_on_over_reopened_connections() {
    let addr = closing_server(5 * 64).to_string();
    let (json, _) = rr(
        &addr,
        &[
            "--conns",
            "4",
            "--secs",
            "1",
            "--rate",
            "400",
            "--reconnect",
            "--strict",
        ],
    );
    let closed = json.server_closed.unwrap();
    assert!(
        closed >= 4,
        "every connection closes after 5 requests: {json:?}"
    );
    let (msgs, sent) = (json.msgs.unwrap(), json.sent.unwrap());
    assert!(msgs > 5 * 4, "work went on over new connections: {json:?}");
    assert!(sent >= msgs, "{json:?}");
    assert!(
        sent as f64 <= 400.0 * json.elapsed_secs.unwrap() + 4.0,
        "{json:?}"
    );
}

#[test]
fn a_bad_rate_is_a_usage_error() {
    let addr = "127.0.0.1:9";
    for (args, says) in [
        (vec!["rr", "--rate", "0"], "--rate"),
        (vec!["rr", "--rate=-5"], "--rate"),
        (vec!["rr", "--rate", "inf"], "--rate"),
        (vec!["rr", "--rate", "NaN"], "--rate"),
        (vec!["rr", "--rate", "fast"], "--rate"),
        (vec!["rr", "--rate", ""], "--rate"),
        (
            vec!["pingpong", "--rate", "100"],
            "--rate goes with rr alone",
        ),
        (vec!["rr", "--udp", "--rate", "100"], "drop --udp"),
    ] {
        let mut args = args.clone();
        args.extend(["--addr", addr, "--secs", "1", "--json"]);
        let (code, out, err) = loadgen_stderr(&args);
        assert_eq!(code, 2, "{args:?}: {out} {err}");
        assert!(out.is_empty(), "{args:?}: nothing on stdout: {out}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // A good one is accepted (the run then fails to connect: not a usage error).
    let (code, _) = loadgen(&[
        "rr",
        "--rate",
        "0.5",
        "--addr",
        addr,
        "--secs",
        "0.2",
        "--timeout",
        "1",
        "--json",
    ]);
    assert_ne!(code, 2);
}
