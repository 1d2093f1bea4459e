//! The supervisor run as a user runs it: the `demo` example (a supervisor of copies of
//! itself) as a child process, signalled by PID, every wait bounded.

#[allow(dead_code)]
mod common;

use common::worker_of_connection;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use duo_testkit::{
    children, example_binary, is_running, run_within, wait_until, ChildServer, ChildServerBuilder,
    LIMIT,
};

fn demo() -> Command {
    Command::new(example_binary("duo-supervisor", "demo"))
}

fn start(args: &[&str]) -> ChildServer {
    let mut cmd = demo();
    cmd.args(args);
    ChildServer::start(cmd)
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[test]
fn workers_start_ready_and_all_accept() {
    let server = start(&["2"]);
    let workers = children(server.pid());
    assert_eq!(workers.len(), 2, "{workers:?}");
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + LIMIT;
    while seen.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "only {seen:?} of {workers:?} answered"
        );
        seen.insert(worker_of_connection(server.addr()));
    }
    assert_eq!(seen, workers, "connections are served by the workers");
    assert_eq!(count(&server.stderr(), "is ready"), 2);
}

#[test]
fn a_killed_worker_is_replaced_by_a_new_one() {
    let server = start(&["2"]);
    let before = children(server.pid());
    let victim = *before.iter().next().unwrap();
    duo_testkit::send_signal(victim, "KILL").unwrap();
    wait_until("a replacement worker", || {
        let now = children(server.pid());
        now.len() == 2 && !now.contains(&victim)
    });
    server.wait_for_stderr("killed by signal 9", LIMIT);
    let after = children(server.pid());
    for _ in 0..4 {
        let pid = worker_of_connection(server.addr());
        assert!(
            after.contains(&pid),
            "served by {pid}, not one of {after:?}"
        );
    }
}

#[test]
fn a_crash_loop_is_slowed_down_not_a_fork_bomb() {
    let mut server = start(&["2", "crash"]);
    let window = Duration::from_millis(1500);
    let t0 = Instant::now();
    wait_until("restarts", || {
        count(&server.stderr(), "started worker") >= 6
    });
    while t0.elapsed() < window {
        std::thread::sleep(Duration::from_millis(20));
    }
    // 100, 200, 400, 800 ms between rounds of 2: about 10 starts in 1.5 s; a supervisor
    // without back-off would start hundreds.
    let started = count(&server.stderr(), "started worker");
    assert!(started <= 14, "{started} starts in {window:?}");
    assert!(server.stderr().contains("exit status 3"));
    assert!(server.stderr().contains("workers keep dying young"));
    let (status, _) = server.terminate("TERM", LIMIT);
    assert!(status.success(), "{status}");
}

#[test]
fn sigterm_stops_every_worker_then_the_supervisor_exits_0() {
    let mut server = start(&["3"]);
    let workers = children(server.pid());
    assert_eq!(workers.len(), 3);
    let (status, _) = server.terminate("TERM", LIMIT);
    assert!(status.success(), "{status}");
    let log = server.stderr_to_end(LIMIT);
    assert_eq!(count(&log, "killed by signal 15"), 3, "{log}");
    assert!(log.contains("all workers have exited"), "{log}");
    for pid in workers {
        wait_until("worker gone", || !is_running(pid));
    }
}

#[test]
fn reload_starts_new_workers_and_retires_the_old() {
    let server = start(&["2"]);
    let old = children(server.pid());
    server.signal("HUP");
    server.wait_for_stderr("generation 2 is serving", LIMIT);
    wait_until("old workers gone", || old.iter().all(|p| !is_running(*p)));
    // And reaped: then only the new ones are children.
    wait_until("two new workers only", || {
        let now = children(server.pid());
        now.len() == 2 && now.is_disjoint(&old)
    });
    let new = children(server.pid());
    let pid = worker_of_connection(server.addr());
    assert!(new.contains(&pid));
}

#[test]
fn a_reload_that_never_gets_ready_is_killed_and_the_old_generation_serves_on() {
    let dir = std::env::temp_dir().join(format!("duo-sup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mode = dir.join("mode");
    std::fs::write(&mode, "echo").unwrap();
    let mut cmd = demo();
    cmd.arg("2")
        .env("DEMO_MODE_FILE", &mode)
        .env("DEMO_READY_TIMEOUT_MS", "700");
    let server = ChildServer::start(cmd);
    let old = children(server.pid());
    std::fs::write(&mode, "silent").unwrap();
    server.signal("HUP");
    server.wait_for_stderr("generation 2 was not ready", LIMIT);
    wait_until("the new generation killed", || {
        children(server.pid()) == old
    });
    let pid = worker_of_connection(server.addr());
    assert!(old.contains(&pid));
    // A later reload with a good configuration goes through.
    std::fs::write(&mode, "echo").unwrap();
    server.signal("HUP");
    server.wait_for_stderr("generation 3 is serving", LIMIT);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn upgrade_re_executes_the_supervisor_with_the_same_pid() {
    let server = start(&["2"]);
    let old = children(server.pid());
    server.signal("USR2");
    server.wait_for_stderr("generation 2 is serving", LIMIT);
    // The stats region was handed over too: each adopted worker's row is found.
    assert_eq!(
        count(&server.stderr(), ", stats row "),
        2,
        "{}",
        server.stderr()
    );
    wait_until("old workers gone", || old.iter().all(|p| !is_running(*p)));
    // And reaped: then only the new ones are children.
    wait_until("two new workers only", || {
        let now = children(server.pid());
        now.len() == 2 && now.is_disjoint(&old)
    });
    let new = children(server.pid());
    let pid = worker_of_connection(server.addr());
    assert!(new.contains(&pid));
}

#[test]
fn workers_that_cannot_start_fail_the_supervisor() {
    let done = run_within(demo().args(["2", "fail"]), LIMIT).unwrap();
    assert_eq!(done.status.code(), Some(1), "{done:?}");
    assert!(
        done.stderr
            .contains("exited before it was ready: exit status 4"),
        "{}",
        done.stderr
    );
    assert!(done.stdout.is_empty());
}

#[test]
fn bad_configurations_exit_2_with_a_reason() {
    let done = run_within(demo().arg("0"), LIMIT).unwrap();
    assert_eq!(done.status.code(), Some(2));
    assert!(
        done.stderr.contains("at least one worker"),
        "{}",
        done.stderr
    );
    let done = run_within(demo().arg("100000"), LIMIT).unwrap();
    assert_eq!(done.status.code(), Some(2));
    assert!(done.stderr.contains("too many"), "{}", done.stderr);
}

#[test]
fn without_its_binary_a_reload_and_an_upgrade_fail_and_the_old_workers_serve_on() {
    // A copy of the demo in a directory of its own, removed once the supervisor runs.
    let dir = std::env::temp_dir().join(format!("duo-sup-gone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("demo");
    std::fs::copy(example_binary("duo-supervisor", "demo"), &copy).unwrap();
    let server = ChildServerBuilder::start_written(|| {
        let mut cmd = Command::new(&copy);
        cmd.arg("2");
        ChildServer::builder(cmd)
    });
    let workers = children(server.pid());
    std::fs::remove_dir_all(&dir).unwrap();

    server.signal("HUP");
    server.wait_for_stderr("cannot start a worker", LIMIT);
    server.signal("USR2");
    server.wait_for_stderr("this image keeps running", LIMIT);
    assert_eq!(children(server.pid()), workers, "the same workers serve");
    let pid = worker_of_connection(server.addr());
    assert!(workers.contains(&pid));
    // And it still stops cleanly.
    let mut server = server;
    let (status, _) = server.terminate("TERM", LIMIT);
    assert!(status.success(), "{status}");
}

/// On a failing test, SIGKILLs the listed PIDs that still run the demo binary.
struct KillStubbornOnPanic(Vec<u32>);

impl Drop for KillStubbornOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for pid in &self.0 {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("demo") {
                let _ = duo_testkit::send_signal(*pid, "KILL");
            }
        }
    }
}

#[test]
fn workers_that_ignore_the_stop_are_killed_at_the_deadline() {
    let mut cmd = demo();
    cmd.args(["2", "stubborn"])
        .env("DEMO_STOP_TIMEOUT_MS", "500");
    let mut server = ChildServer::start(cmd);
    let workers = children(server.pid());
    // These workers ignore SIGTERM, even the one their parent's death sends: should this
    // test fail before they are killed, kill them (still running the demo) by PID.
    let _cleanup = KillStubbornOnPanic(workers.iter().copied().collect());
    server.signal("TERM");
    server.wait_for_stderr("stopping", LIMIT);
    // A second signal forwards SIGINT (ignored here too); the deadline still holds.
    server.signal("INT");
    let status = server.wait_exit(LIMIT);
    assert!(status.success(), "{status}");
    let log = server.stderr_to_end(LIMIT);
    assert!(log.contains("workers quit now (SIGINT)"), "{log}");
    assert!(log.contains("SIGKILL"), "{log}");
    assert_eq!(count(&log, "killed by signal 9"), 2, "{log}");
    for pid in workers {
        assert!(!is_running(pid));
    }
}

#[test]
fn a_worker_without_what_the_protocol_promises_refuses_to_start() {
    let done = run_within(demo().env("DUO_WORKER", "1"), LIMIT).unwrap();
    assert_eq!(done.status.code(), Some(2), "{done:?}");
    assert!(
        done.stderr.contains("DUO_LISTEN_FDS is not set"),
        "{}",
        done.stderr
    );
    // A listener announced at a descriptor that is not open.
    let done = run_within(
        demo().env("DUO_WORKER", "1").env("DUO_LISTEN_FDS", "1"),
        LIMIT,
    )
    .unwrap();
    assert_eq!(done.status.code(), Some(2), "{done:?}");
    assert!(
        done.stderr.contains("descriptor 3 is not open"),
        "{}",
        done.stderr
    );
}
