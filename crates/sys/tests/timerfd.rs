//! `TimerFd` against the real kernel.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use duo_sys::{Epoll, Events, Interest, TimerFd};

fn wait_readable(timer: &TimerFd, limit: Duration) -> bool {
    let epoll = Epoll::new().unwrap();
    epoll.add(timer.as_fd(), Interest::READABLE, 0).unwrap();
    let mut events = Events::with_capacity(1);
    epoll.wait(&mut events, Some(limit)).unwrap() == 1
}

#[test]
fn fires_within_a_few_ms_of_its_deadline() {
    let timer = TimerFd::new().unwrap();
    let delay = Duration::from_millis(30);
    let start = Instant::now();
    timer.arm_at(start + delay).unwrap();
    // Not expired yet, unless this thread lost the CPU past the deadline meanwhile.
    let n = timer.read().unwrap();
    assert!(
        n == 0 || start.elapsed() >= delay,
        "expired after {:?}, before its deadline",
        start.elapsed()
    );
    if n == 0 {
        assert!(wait_readable(&timer, Duration::from_secs(5)));
        let late = start.elapsed();
        assert!(late >= delay, "fired early: {late:?}");
        // Generous bound: a loaded 2-core CI machine may deschedule us for a while.
        assert!(
            late < delay + Duration::from_secs(2),
            "fired late: {late:?}"
        );
        assert_eq!(timer.read().unwrap(), 1);
    } else {
        assert_eq!(n, 1, "a one-shot timer expires once");
    }
    assert_eq!(timer.read().unwrap(), 0, "read resets the count");
}

#[test]
fn past_deadline_and_zero_delay_fire_at_once() {
    let timer = TimerFd::new().unwrap();
    timer
        .arm_at(Instant::now() - Duration::from_secs(1))
        .unwrap();
    assert!(wait_readable(&timer, Duration::from_secs(5)));
    assert_eq!(timer.read().unwrap(), 1);
    timer.arm_after(Duration::ZERO).unwrap();
    assert!(wait_readable(&timer, Duration::from_secs(5)));
    assert_eq!(timer.read().unwrap(), 1);
}

#[test]
fn disarm_and_rearm() {
    let timer = TimerFd::new().unwrap();
    timer.arm_after(Duration::from_millis(20)).unwrap();
    timer.disarm().unwrap();
    assert!(!wait_readable(&timer, Duration::from_millis(60)));
    // Re-arming replaces the earlier setting.
    timer.arm_after(Duration::from_secs(60)).unwrap();
    timer.arm_after(Duration::from_millis(1)).unwrap();
    assert!(wait_readable(&timer, Duration::from_secs(5)));
}
