//! Waiting on a condition or a thread, with a deadline.

use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The longest any single wait of a test should take before the test fails: long enough for
/// a loaded machine, short enough that a hang fails instead of stalling the suite.
pub const LIMIT: Duration = Duration::from_secs(10);

/// How long a poll sleeps between two looks at a condition.
const POLL: Duration = Duration::from_millis(1);

/// Waits until `cond` holds, polling it, or panics after [`LIMIT`] naming `what`.
pub fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_until_within(LIMIT, what, cond);
}

/// Waits until `cond` holds, polling it, or panics after `limit` naming `what`.
pub fn wait_until_within(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        thread::sleep(POLL);
    }
}

/// Joins a thread, failing the test if it does not finish within [`LIMIT`]; a panic of the
/// thread is re-raised, so its own message reaches the test's report.
pub fn join_within<T>(what: &str, t: JoinHandle<T>) -> T {
    join_before(Instant::now() + LIMIT, what, t)
}

/// Joins a thread, failing the test if it has not finished by `deadline`; a panic of the
/// thread is re-raised.
pub fn join_before<T>(deadline: Instant, what: &str, t: JoinHandle<T>) -> T {
    while !t.is_finished() {
        assert!(
            Instant::now() < deadline,
            "{what}: thread did not finish in time"
        );
        thread::sleep(POLL);
    }
    match t.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}
