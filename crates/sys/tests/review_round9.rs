//! Review round 9 of duo-sys (the crate with every `unsafe` block and `libc` call),
//! against the real kernel.
//!
//! 1. `TimerFd::disarm` promised that "expirations that already happened stay readable
//!    until `TimerFd::read`", and `TimerFd::read` that it counts the expirations "since
//!    the last read". The kernel resets the count (and the readiness) on every
//!    `timerfd_settime`: disarming, or arming again, an expired timer that was not read
//!    yet loses its expirations. The test pins what the kernel does; the docs of
//!    `disarm`, `arm_after`/`arm_at` and `read` now say so. (A documentation defect: this
//!    test passed before the fix too; it keeps the docs honest.)
//! 2. `instant_of_nanos` promised that "a converted moment never lies in the future", but
//!    its anchor read the clock as nanoseconds first and as an `Instant` second, so every
//!    converted moment was *late* by the gap between the two reads (a whole time slice
//!    if the thread lost its CPU there): `EventLoop::poll_time` could lie after an
//!    `Instant::now()` read later. The anchor now reads the `Instant` first. Its test
//!    needs the private anchor (to widen the gap deterministically), so it is a unit
//!    test in `src/timerfd.rs`:
//!    `a_converted_moment_never_lies_in_the_future_whatever_the_anchors_gap` (it failed
//!    before the fix, 20 ms in the future).

use std::os::fd::AsFd;
use std::time::Duration;

use duo_sys::{Epoll, Events, Interest, TimerFd};

/// Whether `timer` becomes readable within `limit` (an epoll wait, bounded).
fn readable_within(timer: &TimerFd, limit: Duration) -> bool {
    let epoll = Epoll::new().unwrap();
    epoll.add(timer.as_fd(), Interest::READABLE, 0).unwrap();
    let mut events = Events::with_capacity(1);
    epoll.wait(&mut events, Some(limit)).unwrap() == 1
}

/// An expiration nobody read is gone after `disarm` (and after arming again): the
/// descriptor is no longer readable and `read` says 0.
#[test]
fn setting_the_timer_discards_expirations_not_read_yet() {
    let timer = TimerFd::new().unwrap();
    timer.arm_after(Duration::from_nanos(1)).unwrap();
    assert!(readable_within(&timer, Duration::from_secs(5)), "expired");
    timer.disarm().unwrap();
    assert!(
        !readable_within(&timer, Duration::ZERO),
        "still readable after disarm"
    );
    assert_eq!(timer.read().unwrap(), 0, "the expiration survived disarm");

    // Arming again (for later) discards an unread expiration the same way.
    timer.arm_after(Duration::from_nanos(1)).unwrap();
    assert!(readable_within(&timer, Duration::from_secs(5)), "expired");
    timer.arm_after(Duration::from_secs(3600)).unwrap();
    assert_eq!(
        timer.read().unwrap(),
        0,
        "the expiration survived re-arming"
    );
}
