//! Waits with a deadline, shared by the `ThreadPool` tests: a scenario that could deadlock
//! runs on a helper thread watched by [`within`], a channel is read with [`recv`], and a
//! state with no event to wait on is polled by [`eventually`].

use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

/// The longest any single wait may take before the test is declared hung.
pub(crate) const DEADLINE: Duration = Duration::from_secs(5);

/// Runs `f` on a helper thread and returns its result, failing the test if it does not
/// finish within [`DEADLINE`] (a deadlock fails instead of hanging the suite).
pub(crate) fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let helper = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(v) => {
            helper.join().unwrap();
            v
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: hung for {DEADLINE:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The helper panicked: report its panic.
            std::panic::resume_unwind(helper.join().unwrap_err())
        }
    }
}

/// The next message on `rx`, failing the test (naming `what`) after [`DEADLINE`].
pub(crate) fn recv<T>(rx: &Receiver<T>, what: &str) -> T {
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
}

/// Polls `cond` until it holds, failing after [`DEADLINE`]. Only for states with no event
/// to wait on (a counter bumped after a job returns).
pub(crate) fn eventually(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "{what}: not after {DEADLINE:?}");
        thread::yield_now();
    }
}
