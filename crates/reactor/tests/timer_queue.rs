//! Timers: ordering, never early, cancellation (before and during firing), repetition,
//! scheduling from other threads.

mod util;

use parking_lot::Mutex;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use duo_reactor::{EventLoop, TimerId};
use duo_testkit::{join_within, Rng, LIMIT};
use util::{assert_a_batch_per_iteration, spawn_loop};

#[test]
fn ten_thousand_random_deadlines_fire_in_order_and_never_early() {
    const N: usize = 10_000;
    let mut lp = EventLoop::new().unwrap();
    let fired: Arc<Mutex<Vec<(Instant, usize, Instant)>>> = Arc::default();
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let base = Instant::now();
    for i in 0..N {
        // Deadlines over 0..200 ms, many sharing the same millisecond.
        let deadline = base + Duration::from_millis(rng.below(200));
        let fired = fired.clone();
        lp.run_at(deadline, move |_| {
            fired.lock().push((deadline, i, Instant::now()))
        });
    }
    assert_eq!(lp.timer_count(), N);
    let f = fired.clone();
    lp.run_every(Duration::from_millis(5), move |lp| {
        if f.lock().len() == N {
            lp.quit();
        }
    });
    lp.run_after(LIMIT, |lp| lp.quit());
    lp.run().unwrap();
    let fired = fired.lock();
    assert_eq!(fired.len(), N);
    for w in fired.windows(2) {
        let ((d0, i0, _), (d1, i1, _)) = (w[0], w[1]);
        assert!(
            d0 < d1 || (d0 == d1 && i0 < i1),
            "out of order: {i0} then {i1}"
        );
    }
    for &(deadline, i, at) in fired.iter() {
        assert!(at >= deadline, "timer {i} fired {:?} early", deadline - at);
    }
    // Every timer plus the watcher's ticks.
    assert!(lp.metrics().timers_fired as usize > N);
}

#[test]
fn cancel_before_firing_and_from_an_earlier_callback_of_the_same_batch() {
    let mut lp = EventLoop::new().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let at = Instant::now() + Duration::from_millis(5);
    let l = log.clone();
    let cancelled_early = lp.run_at(at, move |_| l.lock().push("cancelled early"));
    assert!(lp.cancel(cancelled_early));
    assert!(!lp.cancel(cancelled_early), "second cancel is a no-op");

    // Same deadline: the first callback cancels the second, already due, one.
    let victim: Arc<Mutex<Option<TimerId>>> = Arc::default();
    let (l, v) = (log.clone(), victim.clone());
    lp.run_at(at, move |lp| {
        l.lock().push("first");
        assert!(lp.cancel(v.lock().unwrap()));
    });
    let l = log.clone();
    *victim.lock() = Some(lp.run_at(at, move |_| l.lock().push("victim")));
    lp.run_at(at + Duration::from_millis(5), |lp| lp.quit());
    lp.run().unwrap();
    assert_eq!(*log.lock(), ["first"]);
    assert_eq!(lp.timer_count(), 0);
}

#[test]
fn run_every_fires_n_times_then_cancels_itself() {
    let mut lp = EventLoop::new().unwrap();
    let count = Arc::new(Mutex::new(0));
    let id: Arc<Mutex<Option<TimerId>>> = Arc::default();
    // Stops a loop that never gets to the fifth tick, and says so.
    let timed_out = Arc::new(Mutex::new(false));
    let t = timed_out.clone();
    let guard = lp.run_after(LIMIT, move |lp| {
        *t.lock() = true;
        lp.quit();
    });
    let (c, i) = (count.clone(), id.clone());
    let start = Instant::now();
    *id.lock() = Some(lp.run_every(Duration::from_millis(2), move |lp| {
        *c.lock() += 1;
        if *c.lock() == 5 {
            assert!(
                lp.cancel(i.lock().unwrap()),
                "a running repeating timer is cancellable"
            );
            // Give it time to (wrongly) fire a sixth time: 10 periods, counted from the
            // cancellation however late the loop got here.
            lp.run_after(Duration::from_millis(20), move |lp| {
                lp.cancel(guard);
                lp.quit();
            });
        }
    }));
    lp.run().unwrap();
    assert!(
        !*timed_out.lock(),
        "no fifth tick within {LIMIT:?}: {} ticks",
        count.lock()
    );
    assert_eq!(*count.lock(), 5);
    assert!(
        start.elapsed() >= Duration::from_millis(10),
        "5 periods of 2 ms"
    );
    assert_eq!(lp.timer_count(), 0);
}

#[test]
fn run_every_from_another_thread_then_cancel_through_the_handle() {
    let (handle, t) = spawn_loop();
    let (tx, rx) = mpsc::channel();
    let id = handle
        .run_every(Duration::from_millis(1), move |_| {
            let _ = tx.send(());
        })
        .unwrap();
    for _ in 0..5 {
        rx.recv_timeout(LIMIT).expect("repeating timer fires");
    }
    handle.cancel(id).unwrap();
    // After the cancellation ran on the loop, no more ticks arrive: wait for a function
    // queued after the cancel, then drain what was sent before it.
    let (done_tx, done_rx) = mpsc::channel();
    handle
        .queue_in_loop(move |lp| done_tx.send(lp.timer_count()).unwrap())
        .unwrap();
    assert_eq!(done_rx.recv_timeout(LIMIT).unwrap(), 0);
    while rx.try_recv().is_ok() {}
    // The sender was dropped with the cancelled timer, so the channel is now closed.
    assert!(matches!(
        rx.recv_timeout(LIMIT),
        Err(mpsc::RecvTimeoutError::Disconnected)
    ));
    handle.quit();
    join_within("the loop thread", t);
}

#[test]
fn equal_deadlines_from_other_threads_run_in_scheduling_order() {
    let (handle, t) = spawn_loop();
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_millis(20);
    for i in 0..100 {
        let order = order.clone();
        handle
            .run_at(deadline, move |_| order.lock().push(i))
            .unwrap();
    }
    let (tx, rx) = mpsc::channel();
    handle
        .run_at(deadline + Duration::from_millis(1), move |_| {
            tx.send(()).unwrap()
        })
        .unwrap();
    rx.recv_timeout(LIMIT).unwrap();
    assert_eq!(*order.lock(), (0..100).collect::<Vec<_>>());
    handle.quit();
    join_within("the loop thread", t);
}

#[test]
fn timer_scheduled_by_a_timer_in_the_past_runs_next_iteration() {
    let mut lp = EventLoop::new().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    lp.run_after(Duration::ZERO, move |lp| {
        let iteration = lp.metrics().iterations;
        let l2 = l.clone();
        l.lock().push(iteration);
        lp.run_after(Duration::ZERO, move |lp| {
            l2.lock().push(lp.metrics().iterations);
            lp.quit();
        });
    });
    lp.run().unwrap();
    let log = log.lock();
    assert_eq!(log.len(), 2);
    assert!(log[1] > log[0], "{log:?}");
}

/// A thousand timers due at the same moment (a burst of connections whose timeouts were
/// set together) run over several iterations, at most 128 per iteration, so that the
/// loop's I/O is served between batches; still in deadline order, and none lost.
#[test]
fn a_burst_of_due_timers_runs_a_batch_per_iteration() {
    const N: usize = 1000;
    const BATCH: usize = 128;
    let mut lp = EventLoop::new().unwrap();
    // Per timer: its number and the loop iteration it ran in.
    let fired: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let due = Instant::now() + Duration::from_millis(20);
    for i in 0..N {
        let fired = fired.clone();
        lp.run_at(due, move |lp| {
            let iteration = lp.handle().metrics().iterations;
            let mut fired = fired.lock();
            fired.push((i, iteration));
            if fired.len() == N {
                lp.quit();
            }
        });
    }
    lp.run_after(LIMIT, |lp| lp.quit());
    lp.run().unwrap();
    let fired = fired.lock();
    assert_eq!(fired.len(), N, "every timer ran");
    assert!(
        fired.windows(2).all(|w| w[0].0 < w[1].0),
        "timers due together run in the order they were set"
    );
    assert_a_batch_per_iteration(fired.iter().map(|&(_, it)| it), BATCH, "timers");
}
