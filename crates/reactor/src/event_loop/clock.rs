//! The current iteration's time and number, read by callbacks without a clock read.

use std::time::Instant;

use super::EventLoop;

impl EventLoop {
    /// When the current iteration's `epoll_wait` returned: a clock read once per iteration
    /// and shared by every event it dispatches (muduo's `pollReturnTime`). Callbacks that
    /// stamp activity use it instead of reading the clock per event; it lags the true time
    /// by at most the time the iteration has run so far.
    ///
    /// The same value for every call within an iteration. The loop keeps this moment as
    /// [`poll_time_nanos`](EventLoop::poll_time_nanos) and converts it
    /// ([`duo_sys::instant_of_nanos`], no clock read).
    pub fn poll_time(&self) -> Instant {
        duo_sys::instant_of_nanos(self.poll_nanos)
    }

    /// [`poll_time`](EventLoop::poll_time) on the clock of [`duo_sys::monotonic_nanos`]
    /// (`CLOCK_MONOTONIC`, the clock `Instant` reads on Linux): free to read, and a plain
    /// number to store in an atomic or subtract.
    ///
    /// ```
    /// let lp = duo_reactor::EventLoop::new()?;
    /// assert!(lp.poll_time_nanos() <= duo_sys::monotonic_nanos());
    /// # Ok::<(), duo_reactor::LoopError>(())
    /// ```
    pub fn poll_time_nanos(&self) -> u64 {
        self.poll_nanos
    }

    /// The number of the current iteration: raised once per poll, and once for the
    /// functions [`run`](EventLoop::run) runs before its first poll. Two calls return the
    /// same number only within one iteration, whatever the clock's resolution (two
    /// iterations may share a [`poll_time`](EventLoop::poll_time)); for a budget that
    /// must be per iteration. Starts at 0 for a loop that has not run yet; wraps (after
    /// 2^64 iterations).
    ///
    /// ```
    /// let mut lp = duo_reactor::EventLoop::new()?;
    /// let before = lp.iteration();
    /// lp.queue_in_loop(|lp| lp.quit());
    /// lp.run()?;
    /// assert!(lp.iteration() > before);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn iteration(&self) -> u64 {
        self.iteration
    }
}
