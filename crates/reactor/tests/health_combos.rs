//! Loop health in combinations no other test combines: a loop whose `run` a panicking
//! callback ended, the spin detector switched off and on again between two empty
//! wake-ups, and a timer that keeps firing at zero delay (work, not a spin).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duo_reactor::{EventLoop, HealthConfig};
use duo_testkit::LIMIT;

/// A callback's panic unwinds out of `run`: the loop runs nothing any more, so it is not
/// busy (as after a `run` that returned). It was: its `busy_for` grew for as long as the
/// loop lived, and `/healthz` answered `503 stuck: loop NAME busy for ...` for ever.
#[test]
fn a_loop_whose_run_a_panic_ended_is_not_busy() {
    let mut lp = EventLoop::new().unwrap();
    let handle = lp.handle();
    lp.queue_in_loop(|_| panic!("a callback that panics (the test expects it)"));
    let ran = catch_unwind(AssertUnwindSafe(|| lp.run()));
    assert!(ran.is_err(), "the panic comes out of run");
    // The loop lives on (its owner may run it again): it is listed, and not busy.
    assert!(duo_reactor::loops().iter().any(|h| h.same_loop(&handle)));
    let m = handle.metrics();
    assert_eq!(m.busy_for, None, "{m:?}");
    // And it runs again as before.
    lp.queue_in_loop(|lp| lp.quit());
    lp.run().unwrap();
    assert_eq!(lp.metrics().busy_for, None);
}

/// Spin threshold 2 (empty wake-ups in a row): one quick empty wake-up, then the
/// detector is switched off for an iteration that does work, then on again and one more
/// quick empty wake-up. The two are not in a row (work came between them), so no spin.
/// It was one: while off, the detector kept its run and did not see the work end it.
#[test]
fn a_spin_run_does_not_survive_switching_the_detector_off_and_on() {
    let mut lp = EventLoop::new().unwrap();
    let on = HealthConfig {
        stall_threshold: None,
        spin_threshold: Some(2),
    };
    let off = HealthConfig {
        stall_threshold: None,
        spin_threshold: None,
    };
    lp.set_health_config(on);
    // A timer cancelled right after it was armed wakes the loop once, for nothing (the
    // timerfd stays armed): a quick empty wake-up. (Done in a queued function: a timer
    // callback's batch re-arms the timerfd for the timers left.)
    fn empty_wakeup_soon(lp: &mut EventLoop) {
        let id = lp.run_at(Instant::now(), |_| {});
        lp.cancel(id);
    }
    lp.run_after(Duration::from_millis(2), move |lp| {
        lp.queue_in_loop(move |lp| {
            empty_wakeup_soon(lp);
            // After the empty wake-up: switch off, work, and arm the next one.
            lp.run_after(Duration::from_millis(3), move |lp| {
                lp.set_health_config(off);
                lp.queue_in_loop(|lp| {
                    empty_wakeup_soon(lp);
                    lp.quit();
                });
            });
        });
    });
    lp.run().unwrap();
    let first = lp.metrics();
    assert_eq!(
        (first.empty_wakeups, first.spins),
        (1, 0),
        "one empty wake-up so far: {first:?}"
    );
    lp.set_health_config(on);
    lp.run_after(Duration::from_millis(20), |lp| lp.quit());
    lp.run().unwrap();
    let m = lp.metrics();
    assert_eq!(m.empty_wakeups, 2, "the second empty wake-up: {m:?}");
    assert_eq!(m.spins, 0, "two empty wake-ups with work between: {m:?}");
}

/// A repeating timer with a zero interval fires once per iteration: the loop never
/// sleeps, but every iteration runs a callback, so it is no spin (it is work).
#[test]
fn a_timer_that_keeps_firing_at_zero_delay_is_no_spin() {
    let mut lp = EventLoop::new().unwrap();
    lp.set_health_config(HealthConfig {
        stall_threshold: None,
        spin_threshold: Some(100),
    });
    let fired = Arc::new(AtomicU32::new(0));
    let count = fired.clone();
    lp.run_every(Duration::ZERO, move |lp| {
        if count.fetch_add(1, Ordering::Relaxed) == 2_000 {
            lp.quit();
        }
    });
    lp.run_after(LIMIT, |lp| lp.quit());
    lp.run().unwrap();
    let m = lp.metrics();
    assert!(fired.load(Ordering::Relaxed) > 2_000, "{m:?}");
    assert_eq!((m.spins, m.empty_wakeups), (0, 0), "{m:?}");
}
