//! Review round 12 of the worker processes, second look at the round's own fixes
//! (`duo-supervisor`): an adopted worker still starting when the supervisor upgraded,
//! whose reopened readiness pipe closes because the worker *dies* (not because its byte
//! met `EPIPE`), was counted ready at the pipe's close (the close comes before the
//! `SIGCHLD`), and its age since the adoption then counted as a life: past
//! `stable_after`, a worker that never served reset the restart back-off and was
//! restarted at once, though "one that never became ready backs off, whatever its age".
//!
//! The `demo` example runs from a copy in a directory of its own. Every wait has a
//! deadline; the supervisor is killed by its guard if a test fails (its workers then get
//! their parent-death signal).

#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use common::{mode_file, start_copy, upgrade_with_a_replacement_still_starting, Dir};
use duo_testkit::{wait_until, LIMIT};

/// A replacement (mode `letgo`, which waits for a `go` file that never comes) is still
/// starting when the supervisor upgrades; the new image adopts it with its readiness
/// pipe (its own new generation never gets ready: mode `silent`). Past `stable_after`
/// (300 ms here) after the adoption the replacement is killed before it was ever ready:
/// its death must advance the back-off (a `restarting in` line), not reset it.
#[test]
fn an_adopted_worker_that_dies_starting_is_not_a_long_life() {
    const STABLE: Duration = Duration::from_millis(300);
    let dir = Dir::new("r12f-letgo-dies");
    let mode = mode_file(&dir, "echo");
    let mode_var = mode.display().to_string();
    let (mut server, _copy) = start_copy(
        &dir,
        &[
            ("DEMO_MODE_FILE", &mode_var),
            ("DEMO_READY_TIMEOUT_MS", "20000"),
            ("DEMO_STABLE_AFTER_MS", "300"),
        ],
    );
    let replacement = upgrade_with_a_replacement_still_starting(&server, &dir);
    let adopted = Instant::now();
    // Old enough to count as a long life, had it ever been ready.
    let old = adopted + STABLE * 2;
    wait_until("the adopted replacement is past stable_after", || {
        Instant::now() >= old
    });
    duo_sys::kill_process(replacement).unwrap();
    let died = format!("worker {replacement} (generation 1) died after");
    wait_until("the replacement's death is seen", || {
        server.stderr().contains(&died)
    });
    // Its place is filled again: after a back-off, or (the defect) at once.
    wait_until("its place is filled again", || {
        let log = server.stderr();
        let after = log.split_once(&died).map_or("", |(_, a)| a);
        after.contains("started worker") && after.contains("(generation 1")
    });
    let log = server.stderr();
    let after = log.split_once(&died).unwrap().1;
    assert!(
        !log.contains(&format!("worker {replacement} (generation 1) is ready")),
        "a worker that died starting was counted ready:\n{log}"
    );
    assert!(
        after.contains("restarting in"),
        "a worker that died before it was ever ready was restarted at once (its age \
         counted as a life):\n{log}"
    );
    let _ = server.terminate("TERM", LIMIT);
    assert!(Instant::now() - adopted < LIMIT);
}
