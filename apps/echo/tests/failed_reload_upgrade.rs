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

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use common::supervised::{Gate, Sup};
use duo_testkit::{children, is_running, wait_until, LIMIT};

/// `--drain-timeout 1`: the supervisor's `stop_timeout` is 1 s + echo's 2 s margin.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Room past `stop_timeout` for the SIGKILL and the reap.
const MARGIN: Duration = Duration::from_secs(4);

/// A gate under which a new worker, once closed: the first to take `fail-token` exits
/// with status 7 once the other is stuck (so the generation fails at once, with its
/// other worker not ready); the other ignores SIGTERM, writes its PID to `stuck` and
/// waits for `open`.
fn stuck_gate(name: &str) -> Gate {
    Gate::with_worker_part(name, |d| {
        format!(
            "if mv '{d}/fail-token' '{d}/taken-'$$ 2>/dev/null; then\n  \
             while [ ! -e '{d}/stuck' ]; do sleep 0.02; done\n  exit 7\nfi\n\
             trap '' TERM\necho $$ > '{d}/stuck.tmp' && mv '{d}/stuck.tmp' '{d}/stuck'\n\
             while [ ! -e '{d}/open' ]; do sleep 0.05; done\n"
        )
    })
}

/// Starts `echo serve --processes 2` from the gate, serving; fails its next reload with
/// one worker that exits and one that is stuck, ignoring SIGTERM; returns the stuck PID.
fn start_and_fail_a_reload(name: &str) -> (Sup, Gate, u32) {
    let gate = stuck_gate(name);
    let sup = Sup::start(&gate.exe(), 2, &["--drain-timeout", "1"]);
    sup.log_has("generation 1 is serving");
    fs::write(gate.dir().join("fail-token"), "").unwrap();
    gate.close();
    sup.signal("HUP");
    sup.log_has("retired it");
    let stuck: u32 = fs::read_to_string(gate.dir().join("stuck"))
        .expect("the stuck worker wrote its PID before the other one exited")
        .trim()
        .parse()
        .unwrap();
    assert!(children(sup.pid()).contains(&stuck), "{stuck} is a worker");
    (sup, gate, stuck)
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
    let (sup, _gate, stuck) = start_and_fail_a_reload("control");
    let retired = Instant::now();
    assert!(
        gone_by(stuck, retired + STOP_TIMEOUT + MARGIN),
        "worker {stuck} of the failed generation still runs {:?} after it was retired; \
         log:\n{}",
        STOP_TIMEOUT + MARGIN,
        sup.stderr()
    );
}

/// An upgrade between the failed reload and its `stop_timeout`: the new image adopts the
/// straggler as draining and still kills it at the stop timeout (counted again from the
/// upgrade).
#[test]
fn a_straggler_of_a_failed_reload_is_killed_at_the_stop_timeout_across_an_upgrade() {
    let (sup, _gate, stuck) = start_and_fail_a_reload("upgrade");
    let retired = Instant::now();
    sup.signal("USR2");
    sup.wait_for_stderr(&format!("adopting worker {stuck} "), LIMIT);
    wait_until("the upgraded image serving", || {
        let log = sup.stderr();
        let tail = log.rsplit("SIGUSR2: upgrading").next().unwrap_or("");
        tail.contains(" is serving: workers")
    });
    assert!(
        gone_by(stuck, retired + 2 * STOP_TIMEOUT + MARGIN),
        "worker {stuck} of the failed generation still runs {:?} after it was retired \
         (the upgrade dropped its SIGKILL deadline); log:\n{}",
        2 * STOP_TIMEOUT + MARGIN,
        sup.stderr()
    );
}
