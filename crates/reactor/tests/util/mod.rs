//! Helpers shared by the reactor's integration tests.
#![allow(dead_code)]

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use duo_reactor::{EventLoop, LoopHandle};

/// The longest any single wait in these tests may take before the test fails.
pub(crate) const LIMIT: Duration = Duration::from_secs(10);

/// Runs a loop on a new thread; returns its handle and the thread (which yields the loop's
/// metrics tasks count when it ends).
pub(crate) fn spawn_loop() -> (LoopHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let mut lp = EventLoop::new().unwrap();
        tx.send(lp.handle()).unwrap();
        lp.run().unwrap();
    });
    (rx.recv_timeout(LIMIT).expect("loop thread started"), t)
}

/// Waits until `cond` holds, polling it, or panics after [`LIMIT`].
pub(crate) fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Joins a thread, failing the test if it does not end within [`LIMIT`].
pub(crate) fn join_within<T: Send + 'static>(t: JoinHandle<T>) -> T {
    let deadline = Instant::now() + LIMIT;
    while !t.is_finished() {
        assert!(Instant::now() < deadline, "thread did not finish in time");
        std::thread::sleep(Duration::from_millis(1));
    }
    t.join().expect("thread panicked")
}
