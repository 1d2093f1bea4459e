//! `echo serve --processes N` under job control, and what a supervisor program does
//! before its command line is parsed; each test a bug found by review (see its doc
//! comment).
//!
//! A terminal's Ctrl-Z and `fg` are played by `kill -s TSTP PID` and `kill -s CONT PID`
//! to the supervisor, started as the leader of a process group of its own (the group
//! of a shell's job; not orphaned, since its parent, this test, is in another group of
//! the same session, so the kernel does not discard a stop signal to it). A worker's
//! state is read from `/proc/PID/stat` (`T`: stopped). Every wait is bounded, every
//! process killed by PID.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::round_trip;
use common::supervised::{proc_state, Gate, Sup, ECHO};
use duo_testkit::{
    example_binary, run_within, send_signal, wait_until, wait_until_within, ChildServer, Finished,
    LIMIT,
};

/// How long a stop (or a continue) may take to show in `/proc` once signalled.
const SHOWS: Duration = Duration::from_secs(5);

/// Whether every one of `pids` is in state `T` (`stopped`) or not (`!stopped`).
fn all_stopped_is(pids: &[u32], stopped: bool) -> bool {
    pids.iter()
        .all(|pid| (proc_state(*pid) == Some('T')) == stopped)
}

/// The supervisor and its workers.
fn job(sup: &Sup) -> Vec<u32> {
    let mut pids = vec![sup.pid()];
    pids.extend(sup.workers());
    pids
}

/// Plays Ctrl-Z (`sig`: `TSTP`, or `TTIN`/`TTOU`) to the supervisor, and checks that the
/// supervisor and every worker stop.
fn stop_job(sup: &Sup, sig: &str) -> Vec<u32> {
    let pids = job(sup);
    send_signal(sup.pid(), sig).unwrap();
    wait_until_within(SHOWS, "the supervisor and its workers stopped", || {
        all_stopped_is(&pids, true)
    });
    pids
}

/// Plays `fg` (SIGCONT to the supervisor) and checks that the whole job runs again.
fn continue_job(sup: &Sup, pids: &[u32]) {
    send_signal(sup.pid(), "CONT").unwrap();
    wait_until_within(
        SHOWS,
        "the supervisor and its workers running again",
        || all_stopped_is(pids, false),
    );
}

/// Bug 1. Ctrl-Z on `echo serve --processes N` in a terminal (SIGTSTP to the
/// supervisor: its workers are in process groups of their own, so the terminal's signal
/// reaches the supervisor alone) stopped only the supervisor: the workers kept serving,
/// and `fg` (SIGCONT to the supervisor's group) did not reach them either. A shell's job
/// stops as a whole; so must this one (the workers stop, then the supervisor), and go on
/// as a whole, with the same workers (a stopped one is not taken for a dead one), and a
/// connection made while stopped served once continued.
#[test]
fn ctrl_z_stops_the_workers_with_the_supervisor_and_fg_continues_them() {
    let mut sup = Sup::start_with(Path::new(ECHO), 2, &[], |cmd| {
        cmd.process_group(0);
    });
    let workers = sup.workers();
    round_trip(&mut sup.connect(), b"before");
    let pids = stop_job(&sup, "TSTP");
    // The kernel queues it on the listening socket; nobody answers while stopped.
    let mut during = sup.connect();
    during.write_all(b"during").unwrap();
    continue_job(&sup, &pids);
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut during, &mut buf).unwrap();
    assert_eq!(&buf, b"during");
    round_trip(&mut sup.connect(), b"after");
    assert_eq!(sup.workers(), workers, "the same workers serve on");
    let log = sup.stderr();
    assert!(
        !log.contains(" died "),
        "a stopped worker taken for dead:\n{log}"
    );
    sup.signal("TERM");
    sup.exited_0();
}

/// Bug 1, the other job-control stop signals: SIGTTIN and SIGTTOU (a background job that
/// reads from or writes to its terminal) stop the whole job as SIGTSTP does.
#[test]
fn sigttin_and_sigttou_stop_the_whole_job_too() {
    let mut sup = Sup::start_with(Path::new(ECHO), 1, &[], |cmd| {
        cmd.process_group(0);
    });
    for sig in ["TTIN", "TTOU"] {
        let pids = stop_job(&sup, sig);
        continue_job(&sup, &pids);
        round_trip(&mut sup.connect(), sig.as_bytes());
    }
    sup.signal("TERM");
    sup.exited_0();
}

/// The `demo` supervisor of duo-supervisor's tests (its ready timeout can be set).
fn demo() -> PathBuf {
    example_binary("duo-supervisor", "demo")
}

/// Bug 1, the deadlines. A reload whose new worker is still starting when the job is
/// stopped for longer than the ready timeout: the supervisor's timer counted the time
/// stopped (the worker, stopped, could not get ready meanwhile), fired as soon as the job
/// was continued, and failed the reload. Time stopped must not count: once continued,
/// the worker has what was left of its ready timeout, and gets ready.
#[test]
fn a_reload_still_starting_survives_a_stop_longer_than_its_ready_timeout() {
    let gate = Gate::of_program(&demo(), "job-ready-timeout", |d| {
        format!("while [ ! -e '{d}/open' ]; do sleep 0.02; done\n")
    });
    let mut cmd = Command::new(gate.exe());
    cmd.arg("1")
        .env("RUST_LOG", "info")
        .env("DEMO_READY_TIMEOUT_MS", "1500")
        .process_group(0);
    let mut sup = Sup(ChildServer::start(cmd));
    wait_until("the first worker", || sup.workers().len() == 1);
    gate.close();
    sup.signal("HUP");
    sup.log_has("starting generation 2");
    wait_until("the new worker", || sup.workers().len() == 2);
    let pids = stop_job(&sup, "TSTP");
    // Stopped for longer than the ready timeout: that is the point, not a guess.
    thread::sleep(Duration::from_millis(2000));
    // Were it running, the new worker would get ready now.
    gate.open();
    continue_job(&sup, &pids);
    sup.log_has("generation 2 is serving");
    let log = sup.stderr();
    assert!(!log.contains("was not ready within"), "{log}");
    sup.signal("TERM");
    sup.exited_0();
}

/// Bug 1, the stop deadline. A stop (SIGTERM) under way, workers that do not exit, and
/// the job stopped for longer than the stop timeout: once continued, the supervisor
/// SIGKILLed the workers at once, though they had run for a moment of their stop
/// timeout. Once continued, they have what was left of it.
#[test]
fn workers_draining_keep_what_was_left_of_the_stop_timeout_across_a_stop() {
    let mut cmd = Command::new(demo());
    cmd.args(["1", "stubborn"])
        .env("RUST_LOG", "info")
        .env("DEMO_STOP_TIMEOUT_MS", "2000")
        .process_group(0);
    let mut sup = Sup(ChildServer::start(cmd));
    wait_until("the worker", || sup.workers().len() == 1);
    sup.signal("TERM");
    sup.log_has("stopping; SIGTERM");
    let pids = stop_job(&sup, "TSTP");
    thread::sleep(Duration::from_millis(2500));
    let continued = Instant::now();
    continue_job(&sup, &pids);
    let status = sup.wait_exit(LIMIT);
    let took = continued.elapsed();
    let log = sup.stderr_to_end(LIMIT);
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        took >= Duration::from_millis(1000),
        "SIGKILL {took:?} after the continue, the stop timeout 2 s:\n{log}"
    );
}

/// Runs `program ARGS` under socket activation of two listening sockets (`LISTEN_FDS=2`,
/// descriptors 3 and 4, `LISTEN_PID` its own).
fn with_two_activated_sockets(program: &Path, args: &[&str]) -> Finished {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        "LISTEN_PID=$$ LISTEN_FDS=2 exec \"$0\" \"$@\"",
        program.to_str().unwrap(),
    ])
    .args(args)
    .env_remove("RUST_LOG");
    duo_sys::pass_fds(&mut cmd, &[a.as_fd(), b.as_fd()], 3).unwrap();
    run_within(&mut cmd, LIMIT).unwrap()
}

/// Bug 2. `inherit_at_start` refused two socket-activated sockets before the command
/// line was parsed, so under such an environment (a unit with two `ListenStream=`, say)
/// even `--help`, `--version` and `echo reload` failed with "passed 2 sockets", exit 2.
/// The refusal belongs to serving only. (The bank app's twin of this test is
/// `apps/bank/tests/activation_before_parsing.rs`.)
#[test]
fn two_activated_sockets_refuse_serving_only_in_echo() {
    let echo = Path::new(ECHO);
    for args in [&["--help"][..], &["--version"], &["serve", "--help"]] {
        let done = with_two_activated_sockets(echo, args);
        assert_eq!(done.status.code(), Some(0), "echo {args:?}: {done:?}");
        assert!(!done.stdout.is_empty(), "echo {args:?}: {done:?}");
    }
    // `echo reload` of no supervisor: its own error (exit 1), not the activation's.
    let done = with_two_activated_sockets(echo, &["reload", "--pid", "999999999"]);
    assert_eq!(done.status.code(), Some(1), "{done:?}");
    assert!(!done.stderr.contains("socket activation"), "{done:?}");
    let done = with_two_activated_sockets(echo, &["serve", "--io-threads", "1"]);
    assert_eq!(done.status.code(), Some(2), "{done:?}");
    assert!(done.stderr.contains("passed 2 sockets"), "{}", done.stderr);
}
