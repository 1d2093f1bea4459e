//! `duo_net::process` in real child processes: a stop signal that arrives while
//! [`StartupStop::started`](duo_net::process::StartupStop::started) hands the signals over
//! to the server, and what a server says when it cannot print `listening on`.
//!
//! This test runs without the libtest harness (`harness = false`): the stop signals must
//! be blocked on the main thread before any other thread exists, or a
//! `kill(getpid(), SIGTERM)` could be taken by a harness thread that does not block it
//! (and end the process by its default action). The binary runs itself again with
//! [`CHILD_ENV`] set to be the process under test; the parent bounds every wait and kills
//! a child that overruns by its PID.

use std::io::Read;
use std::os::fd::AsFd;
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use duo_net::process::{self, STOP_SIGNALS};
use duo_sys::{Epoll, Events, Interest, Signal, SignalFd};
use duo_testkit::wait_child_within;

/// Set in a child's environment to the scenario it runs.
const CHILD_ENV: &str = "DUO_NET_REVIEW8_PROCESS_CHILD";
/// Children the hand-over test runs: the signal lands in the hand-over in most of them.
const ATTEMPTS: usize = 40;
/// How long a child may take: far more than the few milliseconds one needs.
const CHILD_LIMIT: Duration = Duration::from_secs(5);
/// How long a child waits for the handed-over signal on its own signalfd.
const HANDED_OVER_WAIT: Duration = Duration::from_secs(2);
/// The line a child prints when the signal reached the server's own signalfd.
const HANDED_OVER: &str = "handed over SIGTERM";

fn main() -> ExitCode {
    match std::env::var(CHILD_ENV).as_deref() {
        Ok("handover") => return child_handover(),
        Ok("announce") => return child_announce(),
        Ok(other) => panic!("unknown child scenario {other:?}"),
        Err(_) => {}
    }
    a_stop_signal_during_the_hand_over_reaches_the_server_and_started_returns();
    listening_on_that_cannot_be_printed_says_stdout();
    println!("review_round8_process: ok");
    ExitCode::SUCCESS
}

/// The child of the hand-over test: a server start guarded by `stop_during_startup`, a
/// `SIGTERM` sent (by a thread of its own) the moment the start ends, then the server's
/// own signalfd, which must get it.
fn child_handover() -> ExitCode {
    process::prepare_server(&STOP_SIGNALS).expect("prepare_server");
    let starting = process::stop_during_startup(&STOP_SIGNALS).expect("stop_during_startup");
    let go = Arc::new(AtomicBool::new(false));
    let sender = {
        let go = go.clone();
        // Spawned after `prepare_server`: it blocks the stop signals too.
        thread::spawn(move || {
            while !go.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            duo_sys::signal_process(std::process::id(), Signal::TERM).expect("kill");
        })
    };
    go.store(true, Ordering::Release);
    // A signal the start-up thread read before this returns must not be lost, nor make
    // this wait for ever.
    starting.started();
    sender.join().expect("the sender thread");
    // The server's own signalfd (as `shutdown_on_signals` makes it).
    let signals = SignalFd::new(&STOP_SIGNALS).expect("signalfd");
    let epoll = Epoll::new().expect("epoll");
    epoll
        .add(signals.as_fd(), Interest::READABLE, 1)
        .expect("epoll add");
    let mut events = Events::with_capacity(1);
    let n = epoll
        .wait(&mut events, Some(HANDED_OVER_WAIT))
        .expect("epoll wait");
    match signals.read().expect("read the signalfd") {
        Some(info) if n > 0 => {
            println!("handed over {}", info.signal);
            ExitCode::SUCCESS
        }
        _ => {
            println!("lost: no stop signal reached the server within {HANDED_OVER_WAIT:?}");
            ExitCode::from(3)
        }
    }
}

/// Runs this binary as the child `scenario`, stdout and stderr piped; returns its exit
/// status (`None`: killed after [`CHILD_LIMIT`]), stdout and stderr.
fn run_child(scenario: &str, stdout: Stdio) -> (Option<ExitStatus>, String, String) {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .env(CHILD_ENV, scenario)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let status = wait_child_within(&mut child, CHILD_LIMIT);
    if status.is_none() {
        // Ours, by PID; reaped below.
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    let mut err = String::new();
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    (status, out, err)
}

/// Bug: a stop signal that the start-up thread read after `started` had begun was "sent
/// to the process again" from that same thread, whose signalfd then read it again, at
/// once, in the same read loop: the thread spun for ever (CPU, and one log line per
/// turn), `started` never returned (it joins that thread), and the server never started
/// nor stopped. A `SIGTERM` from a service manager just as a slow start (the bank's
/// database) ended hung the process.
fn a_stop_signal_during_the_hand_over_reaches_the_server_and_started_returns() {
    use std::os::unix::process::ExitStatusExt;
    let mut handed_over = 0;
    for attempt in 1..=ATTEMPTS {
        let (status, out, err) = run_child("handover", Stdio::piped());
        let Some(status) = status else {
            panic!(
                "attempt {attempt}: the child hung (StartupStop::started never returned); \
                 stdout:\n{out}\nstderr:\n{err}"
            );
        };
        // Read before the start ended: the process ends as the signal's default action
        // would. Otherwise the server's signalfd must get it.
        if status.signal() == Some(Signal::TERM.as_raw()) {
            continue;
        }
        assert!(
            status.success() && out.contains(HANDED_OVER),
            "attempt {attempt}: {status}; stdout:\n{out}\nstderr:\n{err}"
        );
        handed_over += 1;
    }
    assert!(handed_over > 0, "no attempt exercised the hand-over");
    println!("hand-over: {handed_over} of {ATTEMPTS} signals reached the server's signalfd");
}

/// The child of the announce test: `announce_listening` on a stdout nobody reads.
fn child_announce() -> ExitCode {
    process::prepare_server(&STOP_SIGNALS).expect("prepare_server");
    match process::announce_listening("127.0.0.1:7000") {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Bug: with stdout a pipe whose reader is gone, `announce_listening` failed with the
/// bare `Broken pipe (os error 32)`, and the servers that pass it on (`echo serve`, the
/// examples) printed just that: nothing said it was stdout, nor the `listening on` line.
fn listening_on_that_cannot_be_printed_says_stdout() {
    let (reader, writer) = duo_sys::pipe().expect("pipe");
    drop(reader);
    let (status, _, err) = run_child("announce", Stdio::from(writer));
    let status = status.expect("the child exits");
    assert_eq!(status.code(), Some(1), "{status}; stderr:\n{err}");
    assert!(
        err.contains("stdout") && err.contains("listening on"),
        "the error does not say what could not be written: {err}"
    );
}
