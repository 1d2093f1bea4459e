//! The loop's name, counters and settings (health thresholds, busy polling).

use std::time::Duration;

use super::EventLoop;
use crate::health::HealthConfig;
use crate::loop_handle::LoopMetrics;

impl EventLoop {
    /// The loop's counters. The iteration count includes the current iteration; the
    /// other counters are published at the end of each iteration (times and the
    /// detectors' counts as each callback returns).
    pub fn metrics(&self) -> LoopMetrics {
        self.shared.metrics()
    }

    /// The loop's name (see [`LoopHandle::name`](crate::LoopHandle::name)).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The stall and spin thresholds of this loop.
    pub fn health_config(&self) -> HealthConfig {
        self.health.config
    }

    /// Sets busy polling (default: off, `Duration::ZERO`): after an iteration that
    /// dispatched events, the loop polls again without blocking for up to `spin` before it
    /// sleeps in `epoll_wait`.
    ///
    /// A loop under load otherwise sleeps and is woken between bursts that arrive
    /// microseconds apart (on a loaded 2-core machine tens of thousands of times a
    /// second per loop); each wake-up costs a context switch and, where the loops share
    /// the cores with other busy threads, a wait for a core that can reach a scheduler
    /// tick or two. Spinning a few microseconds keeps the loop on its core through such
    /// gaps. The price is CPU: an idle loop does not spin (it blocks after one empty
    /// look), but a lightly loaded one burns up to `spin` after every burst. Worth it for
    /// tail latency under steady load; leave it off where CPU per message matters more.
    /// Values of 10-50 µs are typical; more than a few milliseconds is not useful.
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut lp = duo_reactor::EventLoop::new()?;
    /// lp.set_busy_poll(Duration::from_micros(20));
    /// assert_eq!(lp.busy_poll(), Duration::from_micros(20));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_busy_poll(&mut self, spin: Duration) {
        self.busy_poll_nanos = u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX / 2);
    }

    /// The busy-polling time set by [`EventLoop::set_busy_poll`] (zero: off).
    pub fn busy_poll(&self) -> Duration {
        Duration::from_nanos(self.busy_poll_nanos)
    }

    /// Changes the stall and spin thresholds of this loop (see [`HealthConfig`]); the spin
    /// detector's runs start over.
    pub fn set_health_config(&mut self, config: HealthConfig) {
        self.health.set_config(config);
    }
}
