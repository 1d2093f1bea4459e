//! Review round 6b: timers whose callbacks take longer than the loop expected.
//!
//! A repeating timer is rescheduled at `previous deadline + interval`, or at
//! `now + interval` when that is already past. These tests check that "now" is the time
//! the timer is put back, not the time its batch started: a callback slower than its
//! interval, or an earlier callback of the same batch that stalled, must not make the
//! repeating timer run again at once, back to back.

mod util;

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duo_reactor::EventLoop;
use util::guard;

/// Busy-waits (the loop's thread is stuck in a callback, as with a slow computation).
fn spin_until(t: Instant) {
    while Instant::now() < t {
        std::hint::spin_loop();
    }
}

/// A repeating timer whose callback runs four times longer than its interval: each run
/// is followed by at least one interval of rest, instead of the next run starting as soon
/// as the previous one ends (which would keep the loop in that timer for good).
#[test]
fn a_repeating_timer_slower_than_its_interval_rests_an_interval_between_runs() {
    const INTERVAL: Duration = Duration::from_millis(5);
    const WORK: Duration = Duration::from_millis(20);
    const RUNS: usize = 4;
    let mut lp = EventLoop::new().unwrap();
    let (_, timed_out) = guard(&mut lp);
    let runs: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let r = runs.clone();
    let id = Arc::new(Mutex::new(None));
    let own = id.clone();
    *id.lock() = Some(lp.run_every(INTERVAL, move |lp| {
        let start = Instant::now();
        spin_until(start + WORK);
        let mut runs = r.lock();
        runs.push((start, Instant::now()));
        if runs.len() == RUNS {
            let own = own.lock().expect("the timer's id");
            assert!(lp.cancel(own));
            lp.quit();
        }
    }));
    lp.run().unwrap();
    assert!(!timed_out.load(std::sync::atomic::Ordering::SeqCst));
    let runs = runs.lock();
    assert_eq!(runs.len(), RUNS);
    for (k, w) in runs.windows(2).enumerate() {
        let rest = w[1].0 - w[0].1;
        assert!(
            rest >= INTERVAL,
            "run {} started {rest:?} after run {k} ended: a timer slower than its interval \
             runs back to back ({runs:?})",
            k + 1
        );
    }
}

/// Two timers due in the same batch: the first stalls the loop for 20 periods of the
/// second, a repeating one. The overdue repeating timer runs once after the stall, then
/// waits a period: it does not run a second time in the very next iteration.
#[test]
fn a_stall_inside_the_batch_does_not_make_a_repeating_timer_run_twice_in_a_row() {
    const PERIOD: Duration = Duration::from_millis(5);
    let mut lp = EventLoop::new().unwrap();
    let (_, timed_out) = guard(&mut lp);
    let fires: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let t0 = Instant::now();
    // The staller, due no later than the repeating timer (first due at now + PERIOD).
    lp.run_at(t0 + PERIOD, |_| spin_until(Instant::now() + 20 * PERIOD));
    let f = fires.clone();
    lp.run_every(PERIOD, move |lp| {
        let mut fires = f.lock();
        fires.push(Instant::now());
        if fires.len() == 2 {
            lp.quit();
        }
    });
    // Both are due before the loop first looks: they are in one batch.
    lp.queue_in_loop(move |_| spin_until(t0 + 3 * PERIOD));
    lp.run().unwrap();
    assert!(!timed_out.load(std::sync::atomic::Ordering::SeqCst));
    let fires = fires.lock();
    assert_eq!(fires.len(), 2);
    // (Only the run after the overdue one: later ones keep to `deadline + period`, so a
    // run that came late is followed by one less than a period after it.)
    let gap = fires[1] - fires[0];
    assert!(
        gap >= PERIOD,
        "the repeating timer ran again {gap:?} after its overdue run ({fires:?})"
    );
}
