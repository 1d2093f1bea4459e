//! Review round 11 of the reactor (duo-reactor: the event loop, timers, loop groups and
//! the loop-health detectors): the two suspects the last review left, and an overflow
//! of a loop-health figure, each shown by a test that failed before its fix.

mod util;

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duo_reactor::{EventLoop, FnHandler, HealthConfig, Interest, LoopGroup, LoopSharing};
use duo_testkit::{nonblocking_pair, wait_until_within, LIMIT};

use util::group::on_loop;
use util::guard;

/// In a group, a loop's turns never block in its own `epoll_wait`: the time between two
/// turns is the time the loop waited for a thread (here, while another loop of the busy
/// group ran a turn), not a sleep. It counted as one, and a sleep ends every channel's
/// run of dispatches without progress, so a level-triggered readiness nobody consumes
/// went unreported for ever in a busy group.
#[test]
fn a_spinning_channel_in_a_busy_group_is_reported() {
    for sharing in [LoopSharing::Owned, LoopSharing::Any] {
        spin_in_a_busy_group(sharing);
    }
}

fn spin_in_a_busy_group(sharing: LoopSharing) {
    let group = LoopGroup::start_sharing("r11-spin", 1, 2, sharing, None).unwrap();
    let (spinning, busy) = (group.handles()[0].clone(), group.handles()[1].clone());
    // The busy loop: a timer due in every iteration whose callback runs 50 µs, so that the
    // group's one thread is never idle and the spinning loop waits for it between turns.
    on_loop(&busy, |lp| {
        lp.run_every(Duration::ZERO, |_| {
            let until = duo_sys::monotonic_nanos() + 50_000;
            while duo_sys::monotonic_nanos() < until {
                std::hint::spin_loop();
            }
        });
    });
    let (a, b) = nonblocking_pair();
    on_loop(&spinning, move |lp| {
        lp.set_health_config(HealthConfig {
            spin_threshold: Some(200),
            ..lp.health_config()
        });
        // Level-triggered and never read: reported at every turn.
        lp.add_channel(b, Interest::READABLE, FnHandler::new().on_read(|_, _| {}))
            .unwrap();
    });
    (&a).write_all(b"x").unwrap();
    wait_until_within(
        LIMIT,
        &format!("the spin is reported ({sharing:?})"),
        || spinning.metrics().spins >= 1,
    );
    group.stop().unwrap();
}

/// A quit asked during a `run` that a panic then ends was left set: the next `run`
/// returned after one pass over what was queued, instead of running until its own quit.
#[test]
fn a_quit_asked_in_a_run_that_panics_does_not_end_the_next_run() {
    let mut lp = EventLoop::new().unwrap();
    lp.queue_in_loop(|lp| {
        lp.quit();
        panic!("a function panics after quitting (expected)");
    });
    assert!(catch_unwind(AssertUnwindSafe(|| lp.run())).is_err());
    let (_guard, timed_out) = guard(&mut lp);
    let fired = Arc::new(AtomicBool::new(false));
    let f = fired.clone();
    lp.run_after(Duration::from_millis(20), move |lp| {
        f.store(true, Ordering::SeqCst);
        lp.quit();
    });
    lp.run().unwrap();
    assert!(!timed_out.load(Ordering::SeqCst));
    assert!(
        fired.load(Ordering::SeqCst),
        "the next run returned before its timer quit it"
    );
}

/// The timer lateness figure is a sum of nanoseconds kept in a `u64`. A deadline from
/// before the epoch of the clock (an `Instant` less a long delay, which std allows) made
/// one lateness saturate to `u64::MAX`, and the next timer's overflowed the sum: a panic
/// out of `run` in a debug build ("attempt to add with overflow") that dropped the timer,
/// a sum wrapped to a small figure in a release build. The sum saturates now.
#[test]
fn the_timer_lateness_sum_saturates_instead_of_overflowing() {
    let mut lp = EventLoop::new().unwrap();
    let (_guard, timed_out) = guard(&mut lp);
    let Some(ancient) = Instant::now().checked_sub(Duration::from_secs(600 * 365 * 24 * 3600))
    else {
        return; // no such instant on this platform: nothing to check
    };
    let fired = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let f = fired.clone();
        lp.run_at(ancient, move |_| {
            f.fetch_add(1, Ordering::SeqCst);
        });
    }
    let f = fired.clone();
    lp.run_after(Duration::from_millis(1), move |lp| {
        f.fetch_add(1, Ordering::SeqCst);
        lp.quit();
    });
    lp.run().unwrap();
    assert!(!timed_out.load(Ordering::SeqCst));
    assert_eq!(fired.load(Ordering::SeqCst), 3);
    let lateness = lp.metrics().timer_lateness;
    assert_eq!(lateness.count(), 3);
    assert_eq!(lateness.sum, Duration::from_nanos(u64::MAX), "saturated");
}
