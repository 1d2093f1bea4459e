//! Helpers shared by the reactor's integration tests.
#![allow(dead_code)]

pub(crate) mod group;

use std::io::IoSliceMut;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use duo_reactor::{Channel, EventLoop, LoopHandle, TimerId};
use duo_testkit::LIMIT;

/// Runs a loop on a new thread; returns its handle and the thread (which ends when the loop
/// quits).
pub(crate) fn spawn_loop() -> (LoopHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let mut lp = EventLoop::new().unwrap();
        tx.send(lp.handle()).unwrap();
        lp.run().unwrap();
    });
    (rx.recv_timeout(LIMIT).expect("loop thread started"), t)
}

/// Checks that callbacks that recorded the loop iteration they ran in ran at most `batch`
/// per iteration (`what` names them in the message).
pub(crate) fn assert_a_batch_per_iteration(
    iterations: impl IntoIterator<Item = u64>,
    batch: usize,
    what: &str,
) {
    let mut per_iteration = std::collections::HashMap::<u64, usize>::new();
    for iteration in iterations {
        *per_iteration.entry(iteration).or_default() += 1;
    }
    let most = per_iteration.values().copied().max().unwrap_or(0);
    assert!(
        most <= batch,
        "{most} {what} ran in one iteration (at most {batch} wanted; {} iterations)",
        per_iteration.len()
    );
}

/// Stops the loop after [`LIMIT`] so that a broken test fails instead of hanging; the flag
/// says whether it had to.
pub(crate) fn guard(lp: &mut EventLoop) -> (TimerId, Arc<AtomicBool>) {
    let timed_out = Arc::new(AtomicBool::new(false));
    let t = timed_out.clone();
    let id = lp.run_after(LIMIT, move |lp| {
        t.store(true, Ordering::SeqCst);
        lp.quit();
    });
    (id, timed_out)
}

/// Reads and drops whatever the channel's socket holds.
pub(crate) fn drain(ch: &Channel) {
    let mut buf = [0u8; 256];
    while let Ok(n) = duo_sys::readv(ch.fd(), &mut [IoSliceMut::new(&mut buf)]) {
        if n == 0 {
            break;
        }
    }
}
