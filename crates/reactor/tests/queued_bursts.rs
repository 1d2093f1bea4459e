//! A burst of functions queued from other threads (a producer faster than its loop: a
//! worker pool answering, a broadcast from outside) runs over several iterations, at
//! most a batch per iteration, so that the loop's I/O and timers are served between
//! batches: in the order queued, none lost, on a loop thread and on the loops of a
//! group (whose turns only readiness of the loop brings).

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use duo_reactor::{EventLoopThread, LoopGroup, LoopHandle, LoopSharing};
use duo_testkit::LIMIT;
use util::assert_a_batch_per_iteration;

mod util;

const N: usize = 5000;
/// The most queued functions one iteration may run.
const BATCH: usize = 256;

/// Holds `h`'s loop in a queued function while `N` more are queued, then lets it go; checks
/// that they all run, in order, at most `BATCH` per iteration.
fn a_burst_runs_a_batch_per_iteration(h: &LoopHandle) {
    let (held_tx, held) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    h.queue_in_loop(move |_| {
        held_tx.send(()).unwrap();
        release_rx.recv_timeout(LIMIT).unwrap();
    })
    .unwrap();
    held.recv_timeout(LIMIT).unwrap();
    // Per function: its number and the iteration of its loop it ran in.
    let ran: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let (done_tx, done) = mpsc::channel();
    for i in 0..N {
        let (ran, done_tx) = (ran.clone(), done_tx.clone());
        h.queue_in_loop(move |lp| {
            let iteration = lp.handle().metrics().iterations;
            let mut ran = ran.lock().unwrap();
            ran.push((i, iteration));
            if ran.len() == N {
                done_tx.send(()).unwrap();
            }
        })
        .unwrap();
    }
    release.send(()).unwrap();
    done.recv_timeout(LIMIT)
        .expect("every queued function runs");
    let ran = ran.lock().unwrap();
    assert!(
        ran.iter().enumerate().all(|(k, &(i, _))| k == i),
        "queued functions run in the order queued"
    );
    assert_a_batch_per_iteration(ran.iter().map(|&(_, it)| it), BATCH, "queued functions");
}

#[test]
fn a_burst_of_queued_functions_runs_a_batch_per_iteration() {
    let thread = EventLoopThread::spawn("burst", None).unwrap();
    a_burst_runs_a_batch_per_iteration(thread.handle());
    drop(thread);
}

#[test]
fn a_burst_on_a_group_loop_runs_a_batch_per_turn() {
    for sharing in [LoopSharing::Owned, LoopSharing::Any] {
        let group = LoopGroup::start_sharing("burst", 2, 4, sharing, None).unwrap();
        a_burst_runs_a_batch_per_iteration(&group.handles()[1]);
        group.stop().unwrap();
    }
}
