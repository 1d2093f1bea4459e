//! Review round 6 of the supervisor, with the `demo` example as a child process: what a
//! worker that does not cooperate does to a reload.
//!
//! - A retired generation's worker that ignores `SIGTERM` (or never finishes draining)
//!   used to run, and accept connections, until the supervisor stopped: only a failed
//!   reload's workers and a stop had a `SIGKILL` deadline. Now a retired worker gets one
//!   too, at `stop_timeout` after its `SIGTERM`, also across an upgrade in between.
//! - A replacement worker (the serving generation made up after a death) that never
//!   reports ready used to be kept forever, the generation one short and nothing logged;
//!   now it is retired at `ready_timeout` and replaced, with the back-off.
//!
//! Every wait is bounded; the supervisor is killed by its guard if a test fails, and the
//! workers that ignore `SIGTERM` (their parent-death signal too) by PID.

#[allow(dead_code)]
mod common;

use common::worker_of_connection;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use duo_testkit::{all_gone_within, children, example_binary, wait_until, ChildServer, LIMIT};

/// A directory of the test's own with the mode file the demo's workers read at start.
struct ModeFile {
    dir: PathBuf,
}

impl ModeFile {
    fn new(name: &str, mode: &str) -> ModeFile {
        let dir = std::env::temp_dir().join(format!("duo-r6-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = ModeFile { dir };
        file.set(mode);
        file
    }

    fn path(&self) -> PathBuf {
        self.dir.join("mode")
    }

    fn set(&self, mode: &str) {
        // Written whole, then renamed: a worker starting meanwhile reads one mode or the other.
        let tmp = self.dir.join("mode.tmp");
        std::fs::write(&tmp, mode).unwrap();
        std::fs::rename(&tmp, self.path()).unwrap();
    }
}

impl Drop for ModeFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIGKILLs, when dropped (a failing test too), every listed PID that still runs the demo:
/// a stubborn worker ignores the parent-death signal of the supervisor's guard.
struct KillDemos(BTreeSet<u32>);

impl Drop for KillDemos {
    fn drop(&mut self) {
        for pid in &self.0 {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("demo") {
                let _ = duo_testkit::send_signal(*pid, "KILL");
            }
        }
    }
}

/// `demo 2` with its workers' mode read from `mode` and the supervisor's timeouts.
fn start(mode: &ModeFile, ready_ms: u64, stop_ms: u64) -> ChildServer {
    let mut cmd = Command::new(example_binary("duo-supervisor", "demo"));
    cmd.arg("2")
        .env("DEMO_MODE_FILE", mode.path())
        .env("DEMO_READY_TIMEOUT_MS", ready_ms.to_string())
        .env("DEMO_STOP_TIMEOUT_MS", stop_ms.to_string())
        .env("RUST_LOG", "info");
    let server = ChildServer::start(cmd);
    wait_until("two workers", || children(server.pid()).len() == 2);
    server
}

/// A reload away from workers that ignore `SIGTERM`: they are killed at the stop
/// timeout, and the new generation alone serves. They used to run (and accept new
/// connections, on the old configuration) until the supervisor stopped.
#[test]
fn a_retired_worker_that_ignores_sigterm_is_killed_at_the_stop_timeout() {
    let mode = ModeFile::new("retired", "stubborn");
    let mut server = start(&mode, 10_000, 500);
    let old = children(server.pid());
    let _kill = KillDemos(old.clone());
    mode.set("echo");
    server.signal("HUP");
    server.wait_for_stderr("generation 2 is serving", LIMIT);
    assert!(
        all_gone_within(&old, Duration::from_secs(4)),
        "the retired workers {old:?} still run 4 s after their SIGTERM (stop timeout \
         500 ms):\n{}",
        server.stderr()
    );
    wait_until("generation 2 alone", || {
        let now = children(server.pid());
        now.len() == 2 && now.is_disjoint(&old)
    });
    let new = children(server.pid());
    for _ in 0..4 {
        let pid = worker_of_connection(server.addr());
        assert!(new.contains(&pid), "served by {pid}, not one of {new:?}");
    }
    let (status, _) = server.terminate("TERM", LIMIT);
    assert!(status.success(), "{status}");
}

/// As above with an upgrade right after the reload: the new image adopts the retired
/// workers as draining and gives them the deadline the previous image's timer held.
#[test]
fn a_retired_worker_that_ignores_sigterm_is_killed_across_an_upgrade() {
    let mode = ModeFile::new("retired-upgrade", "stubborn");
    let mut server = start(&mode, 10_000, 2_000);
    let old = children(server.pid());
    let _kill = KillDemos(old.clone());
    mode.set("echo");
    server.signal("HUP");
    server.wait_for_stderr("generation 2 is serving", LIMIT);
    server.signal("USR2");
    server.wait_for_stderr("generation 3 is serving", LIMIT);
    let log = server.stderr();
    for pid in &old {
        assert!(
            log.contains(&format!(
                "adopting worker {pid} (generation 1), still draining"
            )),
            "{log}"
        );
    }
    assert!(
        all_gone_within(&old, Duration::from_secs(6)),
        "the retired workers {old:?} still run 6 s after the upgrade (stop timeout \
         2 s):\n{}",
        server.stderr()
    );
    let (status, _) = server.terminate("TERM", LIMIT);
    assert!(status.success(), "{status}");
}

/// A worker that dies is replaced; a replacement that never reports ready is retired at
/// the ready timeout and replaced in turn, until one gets ready. It used to be kept for
/// good: the generation served one short, silently.
#[test]
fn a_replacement_that_never_gets_ready_is_retired_at_the_ready_timeout() {
    let mode = ModeFile::new("replacement", "echo");
    let mut server = start(&mode, 700, 500);
    let first = children(server.pid());
    let _kill = KillDemos(first.clone());
    mode.set("silent");
    let victim = *first.iter().next().unwrap();
    duo_testkit::send_signal(victim, "KILL").unwrap();
    let mut replacement = 0;
    wait_until("a replacement worker", || {
        let now = children(server.pid());
        match now.difference(&first).next() {
            Some(pid) => {
                replacement = *pid;
                true
            }
            None => false,
        }
    });
    let gone = all_gone_within(&[replacement], Duration::from_secs(4));
    assert!(
        gone,
        "the replacement {replacement} never reported ready and still runs 4 s later \
         (ready timeout 700 ms):\n{}",
        server.stderr()
    );
    assert!(
        server.stderr().contains(&format!(
            "worker {replacement} (generation 1) was not ready"
        )),
        "{}",
        server.stderr()
    );
    // A working configuration again: the next replacement serves.
    mode.set("echo");
    let survivor = *first.iter().find(|p| **p != victim).unwrap();
    wait_until("two ready workers", || {
        let log = server.stderr();
        let now = children(server.pid());
        now.len() == 2
            && now.contains(&survivor)
            && now.iter().all(|p| {
                *p == survivor || log.contains(&format!("worker {p} (generation 1) is ready"))
            })
    });
    let now = children(server.pid());
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + LIMIT;
    while seen.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "only {seen:?} of {now:?} answered"
        );
        seen.insert(worker_of_connection(server.addr()));
    }
    assert_eq!(seen, now);
    let (status, _) = server.terminate("TERM", LIMIT);
    assert!(status.success(), "{status}");
}
