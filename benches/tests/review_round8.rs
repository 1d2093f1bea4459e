//! Review round 8 of `loadgen`: measurement errors. (Written by a review helper: each
//! test failed before its fix.)

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use common::{loadgen, loadgen_stderr, number};

/// A server that echoes on the first `answered` connections it accepts and, from then
/// on, accepts and reads but never answers: a server that hangs part-way through a run.
/// (Its threads end when loadgen closes its connections, or with the test process.)
fn hanging_after(answered: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let echo = accepted.fetch_add(1, Ordering::AcqRel) < answered;
            thread::spawn(move || serve(stream, echo));
        }
    });
    addr
}

fn serve(mut stream: TcpStream, echo: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if echo && stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// `churn` against a server that stops answering after a few cycles: the cycles then in
/// flight wait until the end of the phase, and the latency must show that wait (as `rr`
/// and `bank` do), not only the fast cycles from before the hang. It used to report the
/// fast cycles alone: a server hung for nearly all of the run looked healthy, with no
/// error either (the run was shorter than `--timeout`).
#[test]
fn a_churn_stall_at_the_end_of_the_phase_shows_in_the_latency() {
    let addr = hanging_after(20).to_string();
    let (code, out) = loadgen(&[
        "churn",
        "--addr",
        &addr,
        "--conns",
        "2",
        "--secs",
        "1.5",
        "--sources",
        "1",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let cycles = number(&out, "msgs");
    assert!((1.0..=20.0).contains(&cycles), "{out}");
    // The hang began after at most 20 quick cycles: the cycles in flight at the end
    // have waited for much of the 1.5 s phase (before the fix the maximum was that of a
    // quick cycle, a few milliseconds). Bounds with room for a loaded machine.
    let max = number(&out, "max_us");
    assert!(max >= 500_000.0, "the stall is hidden: {out}");
    assert!(max <= 3_000_000.0, "{out}");
}

/// A PID no process can have: above Linux's largest `pid_max` (2^22).
const NO_SUCH_PID: &str = "99999999";

/// `--server-pid` naming no process asks for a figure the run cannot give: it used to run
/// its whole phase, exit 0 and leave `server_cpu_secs` out with a mere note (a benchmark
/// script with a stale PID got no CPU figure and no failure). It is a usage error now
/// (exit 2, before any load), like `--server-pid` with `idle`.
#[test]
fn a_server_pid_of_no_process_is_a_usage_error() {
    let addr = hanging_after(usize::MAX).to_string();
    for mode in ["rr", "pingpong", "churn"] {
        let (code, out, err) = loadgen_stderr(&[
            mode,
            "--addr",
            &addr,
            "--conns",
            "1",
            "--secs",
            "0.3",
            "--server-pid",
            NO_SUCH_PID,
            "--json",
        ]);
        assert_eq!(code, 2, "{mode}: {out}{err}");
        assert!(err.contains("--server-pid"), "{mode}: {err}");
        assert!(out.is_empty(), "{mode}: no run, no report: {out}");
    }
}

/// `idle --pid` naming no process, the same: no RSS figure can be read, so the run is
/// refused (exit 2) instead of holding its connections for nothing.
#[test]
fn an_idle_pid_of_no_process_is_a_usage_error() {
    let addr = hanging_after(usize::MAX).to_string();
    for procs in ["1", "2"] {
        let (code, out, err) = loadgen_stderr(&[
            "idle",
            "--addr",
            &addr,
            "--conns",
            "2",
            "--hold",
            "0",
            "--procs",
            procs,
            "--pid",
            NO_SUCH_PID,
            "--json",
        ]);
        assert_eq!(code, 2, "--procs {procs}: {out}{err}");
        assert!(err.contains("--pid"), "--procs {procs}: {err}");
    }
}

/// A server whose first accepted connection gets its first echo only after `delay` (the
/// rest echo at once).
fn slow_first_echo(delay: std::time::Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            thread::spawn(move || {
                if i == 0 {
                    // The scenario itself: a connection the server is slow to answer.
                    thread::sleep(delay);
                }
                serve(stream, true);
            });
        }
    });
    addr
}

/// `idle`: a connection confirmed only after the connect phase ended was not counted as
/// established, yet it was held (its memory in the server's figure) and verified at the
/// end: `verified_end` above `established`. Such a connection missed the set-up: it is a
/// timeout, closed, and neither established nor verified.
#[test]
fn idle_counts_no_connection_confirmed_after_the_connect_phase() {
    let addr = slow_first_echo(std::time::Duration::from_millis(700)).to_string();
    let (_code, out, err) = loadgen_stderr(&[
        "idle",
        "--addr",
        &addr,
        "--conns",
        "3",
        "--setup-secs",
        "0.3",
        "--hold",
        "1",
        "--json",
    ]);
    let established = number(&out, "established");
    let verified = number(&out, "verified_end");
    assert_eq!(established, 2.0, "{out}\n{err}");
    assert_eq!(verified, established, "{out}\n{err}");
    assert!(
        err.contains("holding 2 connections"),
        "the hold line counts what is held: {err}"
    );
}
