//! Review round 8 of the supervisor, with the `demo` example as a child process.
//!
//! - An upgrade whose `exec` failed (the binary replaced again after its check passed)
//!   left the supervisor serving on with `SIGPIPE` at its default action: `std`'s `exec`
//!   resets it before `execve` and leaves it so when that fails. A log line to a stderr
//!   pipe whose reader had gone then killed the supervisor (and, by their parent-death
//!   signal, its workers) instead of failing with `EPIPE`. It is ignored again now.
//! - The restart back-off advanced without a restart being scheduled: a promotion short
//!   of workers (a reload to workers that die right after reporting ready), a failed
//!   replacement or a failed spawn while a restart was pending already counted a young
//!   death, so the next delay skipped a step (doubled twice). It advances once per wait
//!   now.
//!
//! Every wait is bounded; the supervisor is killed by its guard if a test fails, and its
//! workers then by their parent-death signal.

#[allow(dead_code)]
mod common;

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::sync::mpsc;
use std::thread;

use common::{mode_file, Dir};
use duo_testkit::{example_binary, ChildServer, ChildServerBuilder, LIMIT};

/// `SIGUSR2` with a binary that passes its check and then cannot be executed: the
/// supervisor goes on, and a write to its stderr once nobody reads it is an error it
/// ignores, not its death by `SIGPIPE` (as before the failed upgrade).
#[test]
fn a_failed_upgrade_exec_leaves_sigpipe_ignored() {
    let dir = Dir::new("sigpipe");
    // A copy of its own: the check replaces it on disk (`DEMO_CHECK_BREAKS_BINARY`).
    let bin = dir.join("demo");
    std::fs::copy(example_binary("duo-supervisor", "demo"), &bin).unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    let mut server = ChildServerBuilder::start_written(|| {
        let mut cmd = Command::new(&bin);
        cmd.arg("2")
            .env("DEMO_CHECK_BREAKS_BINARY", "1")
            .env("RUST_LOG", "info");
        ChildServer::builder(cmd).stderr(writer.try_clone().unwrap())
    });
    // (The supervisor holds the pipe's write end now; ours must not keep it open.)
    drop(writer);
    // Collects the log until the failed `exec` is reported, then closes the pipe's only
    // read end.
    let (failed_tx, failed_rx) = mpsc::channel();
    let collector = thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut log = String::new();
        let mut line = String::new();
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            log.push_str(&line);
            if line.contains("failed") && line.contains("this image keeps running") {
                let _ = failed_tx.send(());
                break;
            }
            line.clear();
        }
        log
    });
    server.signal("USR2");
    assert!(
        failed_rx.recv_timeout(LIMIT).is_ok(),
        "the failed exec was not logged within {LIMIT:?}"
    );
    let log = collector.join().unwrap();
    assert!(log.contains("passed its check"), "{log}");
    // Nobody reads the supervisor's stderr now: its next log line (the stop's, at the
    // latest) fails with EPIPE.
    server.signal("TERM");
    let status = server.wait_exit(LIMIT);
    assert!(
        status.success(),
        "the supervisor ended with {status} after a failed upgrade and a closed stderr \
         (signal 13 is SIGPIPE); log until the failure:\n{log}"
    );
}

/// The delays of the `restarting in D` lines of `log`, in order.
fn restart_delays(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split("restarting in ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// A reload while a crash loop waits out its back-off, to a configuration whose workers
/// die right after they report ready: the restart delay goes on doubling from where it
/// was, one step per wait. The end of the new generation (promoted short of workers, at
/// the time; now a failed reload that leaves the serving generation short) used to
/// advance the back-off although the restart already pending was kept, so the next delay
/// skipped a step (5 s, the cap, where 3.2 s was due).
#[test]
fn a_reload_during_a_back_off_does_not_skip_a_step_of_it() {
    let dir = Dir::new("backoff");
    let mode = mode_file(&dir, "echo");
    let mut cmd = Command::new(example_binary("duo-supervisor", "demo"));
    // Four: the more workers of the new generation, the likelier one of them has been
    // reaped (ready, then dead) by the time the last reports ready.
    cmd.arg("4")
        .env("DEMO_MODE_FILE", &mode)
        .env("DEMO_STOP_TIMEOUT_MS", "1000")
        .env("RUST_LOG", "info");
    let mut server = ChildServer::start(cmd);
    let first = duo_testkit::children(server.pid());
    mode_file(&dir, "crash");
    let victim = *first.iter().next().unwrap();
    duo_testkit::send_signal(victim, "KILL").unwrap();
    // 100 ms, 200, 400, 800, 1.6 s: the reload comes while the last one runs.
    server.wait_for_stderr("restarting in 1.6s", LIMIT);
    server.signal("HUP");
    // (Its workers die right after they report ready: the reload fails, and the serving
    // generation, short of workers, goes on with its pending restart.)
    server.wait_for_stderr("generation 1 keeps serving", LIMIT);
    duo_testkit::wait_until("the restart after the reload", || {
        restart_delays(&server.stderr()).len() >= 6
    });
    let delays = restart_delays(&server.stderr());
    assert_eq!(
        delays[..6],
        ["100ms", "200ms", "400ms", "800ms", "1.6s", "3.2s"],
        "{}",
        server.stderr()
    );
    let (status, _) = server.terminate("TERM", LIMIT);
    assert!(status.success(), "{status}");
}

/// Workers that fail before they are ready, but only after `stable_after` (a start-up
/// that takes a while, then fails: a database that refuses, say), were restarted at once
/// each time: their "long life" reset the back-off, though none of them ever served. A
/// worker that never became ready died young, whatever its age: the restarts back off.
#[test]
fn workers_that_never_become_ready_back_off_however_long_they_took() {
    let dir = Dir::new("slowfail");
    let mode = mode_file(&dir, "echo");
    let mut cmd = Command::new(example_binary("duo-supervisor", "demo"));
    cmd.arg("1")
        .env("DEMO_MODE_FILE", &mode)
        .env("DEMO_STABLE_AFTER_MS", "100")
        .env("DEMO_READY_TIMEOUT_MS", "10000")
        .env("RUST_LOG", "info");
    let mut server = ChildServer::start(cmd);
    let first = duo_testkit::children(server.pid());
    mode_file(&dir, "slowfail");
    let victim = *first.iter().next().unwrap();
    duo_testkit::send_signal(victim, "KILL").unwrap();
    // The killed worker had lived (and served) longer than 100 ms: restarted at once.
    // Its replacements each die 300 ms after their start, never ready: 100 ms, 200 ms.
    server.wait_for_stderr("restarting in 200ms", LIMIT);
    let delays = restart_delays(&server.stderr());
    assert_eq!(delays[..2], ["100ms", "200ms"], "{}", server.stderr());
    let (status, _) = server.terminate("TERM", LIMIT);
    assert!(status.success(), "{status}");
}

/// A reload to a configuration whose workers report ready and exit at once: the new
/// generation must not replace the serving one. It used to be promoted as soon as each
/// of its workers had reported ready, though they had all died by then (or were about
/// to), and the healthy old generation was retired: the service went down for a reload
/// that failed. A worker of the new generation that dies before its generation serves
/// fails the reload; the old workers serve on.
#[test]
fn a_reload_whose_workers_die_right_after_ready_keeps_the_old_generation() {
    let dir = Dir::new("reload-crash");
    let mode = mode_file(&dir, "echo");
    let mut cmd = Command::new(example_binary("duo-supervisor", "demo"));
    cmd.arg("2")
        .env("DEMO_MODE_FILE", &mode)
        .env("RUST_LOG", "info");
    let mut server = ChildServer::start(cmd);
    let old = duo_testkit::children(server.pid());
    mode_file(&dir, "crash");
    server.signal("HUP");
    server.wait_for_stderr("generation 1 keeps serving", LIMIT);
    let log = server.stderr();
    assert!(!log.contains("generation 2 is serving"), "{log}");
    assert!(!log.contains("retiring the previous workers"), "{log}");
    // (The new generation's workers, dying or retired, are reaped meanwhile.)
    duo_testkit::wait_until("only the old workers left", || {
        duo_testkit::children(server.pid()) == old
    });
    let pid = common::worker_of_connection(server.addr());
    assert!(old.contains(&pid), "served by {pid}, not one of {old:?}");
    let (status, _) = server.terminate("TERM", LIMIT);
    assert!(status.success(), "{status}");
}
