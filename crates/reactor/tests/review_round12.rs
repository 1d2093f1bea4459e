//! Review round 12 of the reactor (duo-reactor: the event loop, timers and the timing
//! wheel, loop groups and the loop-health detectors): the spin detector's two halves in a
//! `LoopGroup` (a channel reported again and again, a loop woken again and again for
//! nothing) on loops that only a helper runs or that wait for a busy group's thread, and
//! the stall detector under a callback that stalls and then panics, each shown by a test
//! that failed before its fix.

mod util;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use duo_reactor::{
    EventLoop, FnHandler, HealthConfig, Interest, LoopGroup, LoopHandle, LoopSharing,
};
use duo_testkit::{nonblocking_pair, wait_until_within, LIMIT};

use util::group::{on_loop, owned_by, stick};

/// Spin reports only (no stall reports from the busy callbacks below).
fn spin_only(lp: &mut EventLoop, threshold: u32) {
    lp.set_health_config(HealthConfig {
        stall_threshold: None,
        spin_threshold: Some(threshold),
    });
}

/// Waits until `h` reports a spin while its owner is stuck: within half of `LIMIT`, the
/// time the stuck callback holds its thread at most (a spin its owner's turns found after
/// that would not count).
fn spin_while_helped_only(h: &LoopHandle, what: &str) {
    wait_until_within(LIMIT / 2, what, || h.metrics().spins >= 1);
}

/// A loop whose owner thread is stuck in another loop's callback is run by a helper only,
/// one turn per help delay. The helper's look at the owner's set does not sleep, but its
/// turns were judged by the time since the loop's previous turn (the help delay, far
/// above the 5 µs that make a sleep), so every helped turn ended the channel's run of
/// dispatches: a level-triggered readiness nobody consumes went unreported for as long
/// as the owner stayed stuck.
#[test]
fn a_spinning_channel_on_a_loop_only_a_helper_runs_is_reported() {
    let group = LoopGroup::start_sharing("r12-hspin", 2, 4, LoopSharing::Owned, None).unwrap();
    let handles = group.handles().to_vec();
    let mut stuck = stick(&handles[0]);
    let helped = handles[owned_by(stuck.index(), 2, 4, 0)[0]].clone();
    let (a, b) = nonblocking_pair();
    on_loop(&helped, move |lp| {
        spin_only(lp, 20);
        // Level-triggered and never read: reported at every turn.
        lp.add_channel(b, Interest::READABLE, FnHandler::new().on_read(|_, _| {}))
            .unwrap();
    });
    (&a).write_all(b"x").unwrap();
    spin_while_helped_only(&helped, "the helped loop's spin is reported");
    stuck.release();
    group.stop().unwrap();
}

/// Registers a channel declared the sole descriptor of its socket while the test keeps a
/// duplicate, with a byte pending, and removes it: the registration outlives the channel
/// (as `Channel::set_sole_descriptor` warns), and its level-triggered readiness wakes the
/// loop at every turn for an event nobody is dispatched (an empty wake-up). Returns the
/// duplicate (dropping it ends the storm) and the peer.
fn empty_wakeup_storm(lp: &mut EventLoop) -> (UnixStream, UnixStream) {
    let (a, b) = nonblocking_pair();
    let dup = b.try_clone().unwrap();
    let token = lp
        .add_channel(b, Interest::READABLE, FnHandler::new())
        .unwrap();
    lp.with_channel(token, |_, ch, _| ch.set_sole_descriptor())
        .unwrap();
    (&a).write_all(b"x").unwrap();
    assert!(lp.remove_channel(token));
    (dup, a)
}

/// A loop of a busy group (its one thread always has another loop's turn to run, 1.5 ms
/// long) woken at every turn for nothing: the time between its turns is the time it
/// waited for the thread, not a pause between wake-ups, but was judged as one (over the
/// 1 ms that makes wake-ups "far apart"), so the storm of empty wake-ups was never a spin.
#[test]
fn empty_wake_ups_in_a_busy_group_are_a_spin() {
    for sharing in [LoopSharing::Owned, LoopSharing::Any] {
        empty_wakeups_in_a_busy_group(sharing);
    }
}

fn empty_wakeups_in_a_busy_group(sharing: LoopSharing) {
    let group = LoopGroup::start_sharing("r12-empty", 1, 2, sharing, None).unwrap();
    let (storm, busy) = (group.handles()[0].clone(), group.handles()[1].clone());
    on_loop(&busy, |lp| {
        spin_only(lp, 1_000_000);
        lp.run_every(Duration::ZERO, |_| {
            let until = duo_sys::monotonic_nanos() + 1_500_000;
            while duo_sys::monotonic_nanos() < until {
                std::hint::spin_loop();
            }
        });
    });
    let kept = on_loop(&storm, |lp| {
        spin_only(lp, 20);
        empty_wakeup_storm(lp)
    });
    wait_until_within(
        LIMIT,
        &format!("the empty wake-ups are reported as a spin ({sharing:?})"),
        || storm.metrics().spins >= 1,
    );
    assert!(storm.metrics().empty_wakeups >= 20, "{:?}", storm.metrics());
    drop(kept);
    group.stop().unwrap();
}

/// The same storm on a loop only a helper runs, with a help delay of 2 ms: the helper's
/// turns come 2 ms apart, which was taken for wake-ups far apart.
#[test]
fn empty_wake_ups_on_a_loop_only_a_helper_runs_are_a_spin() {
    let group = LoopGroup::start_sharing("r12-hempty", 2, 4, LoopSharing::Owned, None).unwrap();
    group.set_steal_after(Duration::from_millis(2));
    let handles = group.handles().to_vec();
    let mut stuck = stick(&handles[0]);
    let helped = handles[owned_by(stuck.index(), 2, 4, 0)[0]].clone();
    let kept = on_loop(&helped, |lp| {
        spin_only(lp, 20);
        empty_wakeup_storm(lp)
    });
    spin_while_helped_only(&helped, "the helped loop's empty wake-ups are a spin");
    drop(kept);
    stuck.release();
    group.stop().unwrap();
}

/// Busy for `d` on the calling thread (a callback that holds its loop).
fn hold(d: Duration) {
    let until = duo_sys::monotonic_nanos() + d.as_nanos() as u64;
    while duo_sys::monotonic_nanos() < until {
        std::hint::spin_loop();
    }
}

/// A callback that holds its loop past the stall threshold and then panics stalled the
/// loop as much as one that returns, but the panic skipped its accounting: no stall was
/// counted nor reported, the longest callback and the time split never saw it. (Also
/// for each kind: a queued function, a timer, an I/O handler.)
#[test]
fn a_callback_that_stalls_and_then_panics_is_a_stall() {
    const HELD: Duration = Duration::from_millis(30);
    let mut lp = EventLoop::new().unwrap();
    lp.set_health_config(HealthConfig {
        stall_threshold: Some(Duration::from_millis(10)),
        spin_threshold: None,
    });
    let run = |lp: &mut EventLoop| {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lp.run()));
        assert!(r.is_err(), "the callback's panic comes out of run");
    };
    // A queued function.
    lp.queue_in_loop(|_| {
        hold(HELD);
        panic!("a queued function panics after a stall");
    });
    run(&mut lp);
    let m = lp.metrics();
    assert_eq!(m.stalls, 1, "{m:?}");
    assert!(m.longest_callback >= HELD, "{m:?}");
    assert!(m.task_time >= HELD, "{m:?}");
    // A timer.
    lp.run_after(Duration::ZERO, |_| {
        hold(HELD);
        panic!("a timer panics after a stall");
    });
    run(&mut lp);
    let m = lp.metrics();
    assert_eq!(m.stalls, 2, "{m:?}");
    assert!(m.timer_time >= HELD, "{m:?}");
    // An I/O handler.
    let (a, b) = nonblocking_pair();
    lp.add_channel(
        b,
        Interest::READABLE,
        FnHandler::new().on_read(|_, _| {
            hold(HELD);
            panic!("a handler panics after a stall");
        }),
    )
    .unwrap();
    (&a).write_all(b"x").unwrap();
    run(&mut lp);
    let m = lp.metrics();
    assert_eq!(m.stalls, 3, "{m:?}");
    assert!(m.io_time >= HELD, "{m:?}");
}
