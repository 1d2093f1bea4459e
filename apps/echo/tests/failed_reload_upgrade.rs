//! A failed reload's generation is retired with `SIGTERM`, and its stragglers get
//! `SIGKILL` at `stop_timeout`, also across an upgrade (`SIGUSR2`) in between: the new
//! image adopts a straggler as "still draining" and keeps the deadline (a review helper
//! found that the upgrade lost it, so the straggler ran until the supervisor stopped).
//!
//! A worker of the failed generation that does not react to `SIGTERM` (stuck before it
//! is ready: a duo worker blocks the stop signals for its signalfd early, and the ready
//! timeout is exactly the case of a worker stuck in its start) is played by a script that
//! ignores `SIGTERM` until a file `open` exists. Every wait is bounded; every process is
//! killed by PID.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use duo_testkit::{children, is_running, send_signal, wait_until, ChildServer, LIMIT};

const ECHO: &str = env!("CARGO_BIN_EXE_echo");
/// `--drain-timeout 1`: the supervisor's `stop_timeout` is 1 s + echo's 2 s margin.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Room past `stop_timeout` for the SIGKILL and the reap.
const MARGIN: Duration = Duration::from_secs(4);

fn number_after(line: &str, key: &str) -> Option<u32> {
    let rest = line.split(key).nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A supervisor; dropped, it is SIGKILLed, then every worker its log names is SIGKILLed
/// by PID (the stuck one ignores the SIGTERM of `PR_SET_PDEATHSIG`).
struct Sup {
    server: ChildServer,
    dir: PathBuf,
}

impl Drop for Sup {
    fn drop(&mut self) {
        let _ = fs::write(self.dir.join("open"), "");
        self.server.kill();
        let pids: BTreeSet<u32> = self
            .server
            .stderr()
            .lines()
            .filter_map(|l| number_after(l, "started worker "))
            .collect();
        for pid in pids {
            if is_running(pid) {
                let _ = send_signal(pid, "KILL");
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A directory with `echo` (a hard link of the binary, replaced by a script by
/// [`close_gate`]) and `echo-real`.
fn gate_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("failed_reload-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    for name in ["echo", "echo-real"] {
        if fs::hard_link(ECHO, dir.join(name)).is_err() {
            fs::copy(ECHO, dir.join(name)).unwrap();
        }
    }
    let d = dir.display();
    // A new worker: the first to take `fail-token` exits with status 7 once the other is
    // stuck (so the generation fails at once, with its other worker not ready); the other
    // ignores SIGTERM, writes its PID to `stuck` and waits for `open`. The supervisor
    // re-executing itself (no DUO_WORKER) runs the real binary.
    let script = format!(
        "#!/bin/sh\nif [ -n \"$DUO_WORKER\" ]; then\n  \
         if mv '{d}/fail-token' '{d}/taken-'$$ 2>/dev/null; then\n    \
         while [ ! -e '{d}/stuck' ]; do sleep 0.02; done\n    exit 7\n  fi\n  \
         trap '' TERM\n  echo $$ > '{d}/stuck.tmp' && mv '{d}/stuck.tmp' '{d}/stuck'\n  \
         while [ ! -e '{d}/open' ]; do sleep 0.05; done\nfi\n\
         exec '{d}/echo-real' \"$@\"\n"
    );
    fs::write(dir.join("gate.sh"), script).unwrap();
    fs::set_permissions(dir.join("gate.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn close_gate(dir: &Path) {
    fs::write(dir.join("fail-token"), "").unwrap();
    fs::rename(dir.join("gate.sh"), dir.join("echo")).unwrap();
}

/// Starts `echo serve --processes 2` from `dir`, serving; fails its next reload with one
/// worker that exits and one that is stuck, ignoring SIGTERM; returns the stuck PID.
fn start_and_fail_a_reload(name: &str) -> (Sup, u32) {
    let dir = gate_dir(name);
    let mut cmd = Command::new(dir.join("echo"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--io-threads", "1"])
        .args(["--processes", "2", "--drain-timeout", "1"])
        .env("RUST_LOG", "info");
    let sup = Sup {
        server: ChildServer::start(cmd),
        dir: dir.clone(),
    };
    sup.server.wait_for_stderr("generation 1 is serving", LIMIT);
    close_gate(&dir);
    sup.server.signal("HUP");
    sup.server.wait_for_stderr("retired it", LIMIT);
    let stuck: u32 = fs::read_to_string(dir.join("stuck"))
        .expect("the stuck worker wrote its PID before the other one exited")
        .trim()
        .parse()
        .unwrap();
    assert!(
        children(sup.server.pid()).contains(&stuck),
        "{stuck} is a worker"
    );
    (sup, stuck)
}

/// Waits until `pid` is gone or `deadline` passes; whether it is gone.
fn gone_by(pid: u32, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if !is_running(pid) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    !is_running(pid)
}

/// Without an upgrade: the straggler of the failed generation is killed at
/// `stop_timeout`.
#[test]
fn a_straggler_of_a_failed_reload_is_killed_at_the_stop_timeout() {
    let (sup, stuck) = start_and_fail_a_reload("control");
    let retired = Instant::now();
    assert!(
        gone_by(stuck, retired + STOP_TIMEOUT + MARGIN),
        "worker {stuck} of the failed generation still runs {:?} after it was retired; \
         log:\n{}",
        STOP_TIMEOUT + MARGIN,
        sup.server.stderr()
    );
}

/// An upgrade between the failed reload and its `stop_timeout`: the new image adopts the
/// straggler as draining and still kills it at the stop timeout (counted again from the
/// upgrade).
#[test]
fn a_straggler_of_a_failed_reload_is_killed_at_the_stop_timeout_across_an_upgrade() {
    let (sup, stuck) = start_and_fail_a_reload("upgrade");
    let retired = Instant::now();
    sup.server.signal("USR2");
    sup.server
        .wait_for_stderr(&format!("adopting worker {stuck} "), LIMIT);
    wait_until("the upgraded image serving", || {
        let log = sup.server.stderr();
        let tail = log.rsplit("SIGUSR2: upgrading").next().unwrap_or("");
        tail.contains(" is serving: workers")
    });
    assert!(
        gone_by(stuck, retired + 2 * STOP_TIMEOUT + MARGIN),
        "worker {stuck} of the failed generation still runs {:?} after it was retired \
         (the upgrade dropped its SIGKILL deadline); log:\n{}",
        2 * STOP_TIMEOUT + MARGIN,
        sup.server.stderr()
    );
}
