//! Review round 11 of the worker processes, its `echo reload` part (the rest is in
//! `crates/supervisor/tests/review_round11.rs`): `echo reload --pid P` printed "sent" and
//! exited 0 whether or not the supervisor then reloaded (it ignores a `SIGHUP` while a
//! reload or upgrade is under way, or while stopping). With `--wait SECS` it now watches
//! the generations of the supervisor's workers and says what came of it, in its exit
//! status too. The supervisor is a child of this test, signalled by PID; every wait has a
//! deadline.

mod common;

use std::path::Path;
use std::process::Command;

use common::supervised::{Sup, ECHO};
use duo_testkit::{run_within, send_signal, wait_until, LIMIT};

/// `echo reload --pid PID --wait SECS [EXTRA..]`, bounded.
fn reload_wait(pid: u32, secs: u64, extra: &[&str]) -> duo_testkit::Finished {
    let mut cmd = Command::new(ECHO);
    cmd.args([
        "reload",
        "--pid",
        &pid.to_string(),
        "--wait",
        &secs.to_string(),
    ])
    .args(extra);
    run_within(&mut cmd, LIMIT).unwrap_or_else(|e| panic!("{e}"))
}

/// A reload that happens: exit 0 once the new generation serves alone.
#[test]
fn reload_wait_reports_a_reload_that_happened() {
    let mut sup = Sup::start(Path::new(ECHO), 2, &[]);
    let old = sup.workers();
    let done = reload_wait(sup.pid(), 30, &[]);
    assert!(done.status.success(), "{done:?}\nlog:\n{}", sup.stderr());
    assert!(done.stderr.contains("generation 2 serves"), "{done:?}");
    let now = sup.workers();
    assert!(now.is_disjoint(&old), "{old:?} -> {now:?}");
    sup.signal("TERM");
    sup.exited_0();
}

/// A supervisor that does not act on the signal (stopped here, as any that ignores it):
/// exit 1, saying no new generation started; once continued, it reloads.
#[test]
fn reload_wait_reports_a_reload_that_did_not_happen() {
    let mut sup = Sup::start(Path::new(ECHO), 1, &[]);
    let pid = sup.pid();
    send_signal(pid, "STOP").unwrap();
    let done = reload_wait(pid, 1, &[]);
    send_signal(pid, "CONT").unwrap();
    assert_eq!(done.status.code(), Some(1), "{done:?}");
    assert!(
        done.stderr.contains("started no new generation"),
        "{done:?}"
    );
    sup.log_has("generation 2 is serving");
    wait_until("one worker", || sup.workers().len() == 1);
    sup.signal("TERM");
    sup.exited_0();
}

/// An upgrade (`--upgrade`: the supervisor executes its binary again, then reloads) is
/// waited for the same way: same PID, a new generation serving alone.
#[test]
fn reload_wait_reports_an_upgrade_that_happened() {
    let mut sup = Sup::start(Path::new(ECHO), 2, &[]);
    let pid = sup.pid();
    let old = sup.workers();
    let done = reload_wait(pid, 30, &["--upgrade"]);
    assert!(done.status.success(), "{done:?}\nlog:\n{}", sup.stderr());
    assert!(done.stderr.contains("generation 2 serves"), "{done:?}");
    assert_eq!(sup.pid(), pid);
    assert!(sup.workers().is_disjoint(&old));
    sup.signal("TERM");
    sup.exited_0();
}
