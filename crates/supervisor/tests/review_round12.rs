//! Review round 12 of the worker processes (`duo-supervisor`):
//!
//! - The restart back-off of a worker that keeps dying young goes on across an upgrade
//!   (`SIGUSR2`): the new image used to start it again at `backoff_min`, so a worker that
//!   crash-loops was restarted at full pace after every upgrade (a deploy that upgrades
//!   on every run, say), while a reload (`SIGHUP`) kept the pace.
//! - A replacement worker still starting when the supervisor upgrades, whose "ready" byte
//!   meets `EPIPE` (written between the `exec` and the new image's `open` of its pipe
//!   through `/proc`) and which lets the pipe go just after that `open`: the new image saw
//!   the pipe close without a byte and left the worker unready, so it retired a healthy,
//!   serving worker at the ready timeout (and started another). The worker takes itself
//!   for ready (its `notify_ready` returns `Ok`); so does the new image now. (The demo's
//!   `letgo` mode closes the pipe without the byte on cue, as after that `EPIPE`.)
//! - (`echo reload --wait` taking a new generation whose workers die right after it took
//!   over, while the old one still drains, for a failed reload: tested in
//!   `apps/echo/src/reload_wait.rs`, which models a supervisor's children.)
//!
//! The `demo` example runs from a copy in a directory of its own. Every wait has a
//! deadline; the supervisor is killed by its guard if a test fails (its workers then get
//! their parent-death signal).

#[allow(dead_code)]
mod common;

use std::time::Duration;

use common::{mode_file, start_copy, upgrade_with_a_replacement_still_starting, Dir};
use duo_testkit::{children, wait_until, LIMIT};

/// The delays of the `restarting in D` lines of `log`, in order.
fn restart_delays(log: &str) -> Vec<Duration> {
    log.lines()
        .filter_map(|l| l.split("restarting in ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(parse_debug_duration)
        .collect()
}

/// `100ms`, `1.6s`, `800µs` (a `Duration`'s `Debug`) -> the duration.
fn parse_debug_duration(s: &str) -> Option<Duration> {
    let (num, unit) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("µs") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("ns") {
        (n, 1e-9)
    } else {
        (s.strip_suffix('s')?, 1.0)
    };
    Some(Duration::from_secs_f64(num.parse::<f64>().ok()? * unit))
}

/// A worker crash-loops (its mode says `crash`: ready, then exit 3) until the back-off
/// has grown past 400 ms; then the supervisor upgrades to the same binary. The new
/// image's generation crashes too (the reload fails) and the serving generation is made
/// up again: its first restart waits at least as long as the last one before the
/// upgrade, not `backoff_min` (100 ms) again.
#[test]
fn the_crash_back_off_goes_on_across_an_upgrade() {
    let dir = Dir::new("r12-backoff");
    let mode = mode_file(&dir, "echo");
    let mode_var = mode.display().to_string();
    let (mut server, _copy) = start_copy(&dir, &[("DEMO_MODE_FILE", &mode_var)]);
    let pid = server.pid();
    let workers = children(pid);
    assert_eq!(workers.len(), 2, "{workers:?}");
    mode_file(&dir, "crash");
    duo_sys::kill_process(*workers.iter().next().unwrap()).unwrap();
    wait_until("the back-off grew past 400 ms", || {
        restart_delays(&server.stderr())
            .last()
            .is_some_and(|d| *d > Duration::from_millis(400))
    });
    server.signal("USR2");
    let marker = "SIGUSR2: upgrading";
    wait_until(
        "the new image restarted a worker after the back-off",
        || {
            let log = server.stderr();
            log.split_once(marker)
                .is_some_and(|(_, after)| !restart_delays(after).is_empty())
        },
    );
    let log = server.stderr();
    let (before, after) = log.split_once(marker).unwrap();
    let last = *restart_delays(before).last().unwrap();
    let first = restart_delays(after)[0];
    assert!(
        first >= last,
        "the back-off started over after the upgrade: {last:?} before it, {first:?} after\n\
         log:\n{log}"
    );
    let _ = server.terminate("TERM", LIMIT);
}

/// A replacement (mode `letgo`: it waits for the `go` file) is still starting when the
/// supervisor upgrades; the new image adopts it with its readiness pipe, and its own new
/// generation never gets ready (mode `silent`, so that it does not retire the adopted
/// one). Then the replacement lets its pipe go without the byte, as after `EPIPE`: the new
/// image counts it ready, rather than retire it at the ready timeout.
#[test]
fn an_adopted_worker_that_lets_its_readiness_pipe_go_is_ready() {
    let dir = Dir::new("r12-letgo");
    let mode = mode_file(&dir, "echo");
    let mode_var = mode.display().to_string();
    let (mut server, _copy) = start_copy(
        &dir,
        &[
            ("DEMO_MODE_FILE", &mode_var),
            ("DEMO_READY_TIMEOUT_MS", "6000"),
        ],
    );
    let pid = server.pid();
    let replacement = upgrade_with_a_replacement_still_starting(&server, &dir);
    std::fs::write(dir.join("go"), "").unwrap();
    let ready = format!("worker {replacement} (generation 1) is ready");
    let retired = format!("worker {replacement} (generation 1) was not ready within");
    wait_until("the replacement is counted ready or retired", || {
        let log = server.stderr();
        log.contains(&ready) || log.contains(&retired)
    });
    let log = server.stderr();
    assert!(
        !log.contains(&retired),
        "a worker that let its pipe go was retired:\n{log}"
    );
    assert!(
        children(pid).contains(&replacement),
        "{replacement} is gone:\n{log}"
    );
    let _ = server.terminate("TERM", LIMIT);
}
