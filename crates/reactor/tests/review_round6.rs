//! Review, round 6: the queued-function backlog (`LoopMetrics::tasks_queued`, the
//! `duo_loop_tasks_queued` gauge) while the loop runs a batch it took.
//!
//! The loop is held in queued functions (never slept on); every wait has a deadline.

mod util;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use duo_reactor::{EventLoop, EventLoopThread, LoopHandle};
use duo_testkit::{wait_until, LIMIT};

/// Queues a function that holds `h`'s loop until the returned sender is used (or
/// dropped); returns once it runs.
fn hold(h: &LoopHandle) -> mpsc::Sender<()> {
    let (held_tx, held) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    h.queue_in_loop(move |_| {
        let _ = held_tx.send(());
        let _ = release_rx.recv_timeout(LIMIT);
    })
    .unwrap();
    held.recv_timeout(LIMIT).expect("the loop is held");
    release
}

/// A loop busy with a backlog of 10 000 queued functions reports them as queued while it
/// runs the first of them. The functions taken off the shared queue for a pass used to be
/// counted only when the pass ended (as those it left for later), so a loop running the
/// first batch of a backlog (or the whole of it, quitting) reported 0.
#[test]
fn a_backlog_being_run_is_reported_as_queued() {
    const N: usize = 10_000;
    let lp = EventLoopThread::spawn("review6-backlog", None).unwrap();
    let h = lp.handle().clone();
    let first_held = hold(&h);
    // The first of the backlog holds the loop too, once the loop has taken it with the
    // rest (they are queued while the loop is held, so one take gets them all).
    let (in_first_tx, in_first) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    h.queue_in_loop(move |_| {
        let _ = in_first_tx.send(());
        let _ = release_rx.recv_timeout(LIMIT);
    })
    .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 1..N {
        let ran = ran.clone();
        h.queue_in_loop(move |_| {
            ran.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
    }
    // (The holding function may count too: taken, and its pass has not ended.)
    let queued = h.metrics().tasks_queued;
    assert!(
        queued == N as u64 || queued == N as u64 + 1,
        "{queued} reported queued while held with {N} waiting"
    );
    first_held.send(()).unwrap();
    in_first
        .recv_timeout(LIMIT)
        .expect("the backlog's first runs");
    let queued = h.metrics().tasks_queued;
    assert!(
        queued >= (N - 1) as u64 && queued <= N as u64,
        "running the first of {N} queued functions, the loop reports {queued} queued"
    );
    release_tx.send(()).unwrap();
    wait_until("the backlog runs", || ran.load(Ordering::Relaxed) == N - 1);
    wait_until("nothing reported queued", || h.metrics().tasks_queued == 0);
    lp.stop().unwrap();
}

/// A quitting loop runs everything it took in one pass, past the batch bound: the
/// backlog it is running is still reported, and counted down as it goes (within a
/// batch), not all of it until the pass ends. (It used to read 0 throughout.)
#[test]
fn a_quitting_loop_reports_the_backlog_it_runs() {
    const N: usize = 1000;
    const AT: usize = 600;
    const BATCH: u64 = 256;
    let mut lp = EventLoop::new().unwrap();
    let h = lp.handle();
    let seen = Arc::new(AtomicU64::new(u64::MAX));
    for i in 0..N {
        let seen = seen.clone();
        h.queue_in_loop(move |lp| {
            if i == AT {
                seen.store(lp.handle().metrics().tasks_queued, Ordering::Relaxed);
            }
        })
        .unwrap();
    }
    // Quit before `run`: one pass over what is queued.
    h.quit();
    lp.run().unwrap();
    let waiting = (N - AT - 1) as u64;
    let seen = seen.load(Ordering::Relaxed);
    assert!(
        (waiting..=waiting + BATCH).contains(&seen),
        "the {AT}th of {N} functions run in one pass saw {seen} reported queued, {waiting} waiting"
    );
    assert_eq!(h.metrics().tasks_queued, 0);
}
