//! The restart delay: exponential while workers keep dying young, reset once one lived.

use std::time::Duration;

/// The delay before the next restart.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    stable_after: Duration,
    current: Option<Duration>,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration, stable_after: Duration) -> Backoff {
        Backoff {
            min,
            max,
            stable_after,
            current: None,
        }
    }

    /// The delay before restarting a worker that lived `uptime`: none after a long life
    /// (and the sequence starts over), else `min`, doubling per young death up to `max`.
    pub(crate) fn after_death(&mut self, uptime: Duration) -> Duration {
        if uptime >= self.stable_after {
            self.current = None;
            return Duration::ZERO;
        }
        let next = self
            .current
            .map_or(self.min, |d| d.saturating_mul(2).min(self.max));
        self.current = Some(next);
        next
    }

    /// The delay of the last young death, `None` once a long life reset it: what an
    /// upgrade hands to the next image.
    pub(crate) fn current(&self) -> Option<Duration> {
        self.current
    }

    /// Goes on from `current`, the delay a previous image had reached (an upgrade), kept
    /// within this one's `min..=max`.
    pub(crate) fn resume(&mut self, current: Option<Duration>) {
        self.current = current.map(|d| d.clamp(self.min, self.max));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn young_deaths_double_the_delay_up_to_the_cap_and_a_long_life_resets_it() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500), ms(2000));
        let delays: Vec<_> = (0..5).map(|_| b.after_death(ms(10))).collect();
        assert_eq!(delays, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        assert_eq!(b.after_death(ms(3000)), Duration::ZERO);
        assert_eq!(b.after_death(ms(1)), ms(100));
    }

    #[test]
    fn a_resumed_back_off_goes_on_from_where_it_was_within_the_bounds() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500), ms(2000));
        b.resume(Some(ms(200)));
        assert_eq!(b.after_death(ms(10)), ms(400));
        b.resume(Some(ms(9000)));
        assert_eq!(b.current(), Some(ms(500)));
        b.resume(None);
        assert_eq!(b.after_death(ms(10)), ms(100));
    }
}
