//! Latency recording: an HDR histogram in nanoseconds, summarised in microseconds.

use std::time::Duration;

use hdrhistogram::Histogram;

/// The longest latency recorded exactly; longer ones are recorded as this.
const MAX_NANOS: u64 = 3_600 * 1_000_000_000;

/// Latencies of one thread (or, merged, of a run).
#[derive(Debug, Clone)]
pub(crate) struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            // Three significant digits: 0.1 % resolution at any magnitude.
            hist: Histogram::new_with_bounds(1, MAX_NANOS, 3)
                .expect("constant histogram bounds are valid"),
        }
    }
}

/// The usual percentiles, in microseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Summary {
    /// Samples.
    pub(crate) count: u64,
    /// Mean.
    pub(crate) mean_us: f64,
    /// Median.
    pub(crate) p50_us: f64,
    /// 99th percentile.
    pub(crate) p99_us: f64,
    /// 99.9th percentile.
    pub(crate) p999_us: f64,
    /// Largest.
    pub(crate) max_us: f64,
}

impl Latency {
    /// Records one latency.
    pub(crate) fn record(&mut self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.hist.saturating_record(nanos.clamp(1, MAX_NANOS));
    }

    /// Records the waits of requests still unanswered when the measured phase ended
    /// (each a lower bound of its latency), those that had already waited longer than
    /// every answered request of this histogram (or all, if none was answered). A server
    /// that stops answering before the end would otherwise leave no trace in the figures
    /// but fewer answers: its stall is what those waits are. A wait no longer than some
    /// answered request's is left out: it lies within the answered distribution, and as a
    /// sample cut short it would only pull the figures down (every connection has a
    /// request in flight when the phase ends).
    pub(crate) fn record_unanswered(&mut self, waits: impl IntoIterator<Item = Duration>) {
        self.record_unanswered_n(waits.into_iter().map(|wait| (wait, 1)));
    }

    /// [`Latency::record_unanswered`] for `(wait, count)` pairs: `count` requests that
    /// have each waited at least `wait` (`rr --rate`: requests due and never sent).
    pub(crate) fn record_unanswered_n(&mut self, waits: impl IntoIterator<Item = (Duration, u64)>) {
        let longest = (!self.hist.is_empty()).then(|| self.hist.max());
        for (wait, count) in waits {
            let nanos = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
            if count > 0 && longest.is_none_or(|longest| nanos > longest) {
                self.hist
                    .saturating_record_n(nanos.clamp(1, MAX_NANOS), count);
            }
        }
    }

    /// Adds the samples of `other`.
    pub(crate) fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    /// The summary, or `None` without samples.
    pub(crate) fn summary(&self) -> Option<Summary> {
        if self.hist.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1_000.0;
        Some(Summary {
            count: self.hist.len(),
            mean_us: self.hist.mean() / 1_000.0,
            p50_us: us(self.hist.value_at_quantile(0.50)),
            p99_us: us(self.hist.value_at_quantile(0.99)),
            p999_us: us(self.hist.value_at_quantile(0.999)),
            max_us: us(self.hist.max()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_waits_longer_than_every_answer_are_recorded() {
        let ms = Duration::from_millis;
        let mut l = Latency::default();
        l.record(ms(5));
        l.record_unanswered([ms(1), ms(5), ms(1200), ms(900)]);
        let s = l.summary().unwrap();
        assert_eq!(s.count, 3);
        assert!((s.max_us - 1_200_000.0).abs() < 1_200.0, "{s:?}");
        // Nothing answered: every wait is all there is.
        let mut l = Latency::default();
        l.record_unanswered([ms(3), ms(4)]);
        assert_eq!(l.summary().unwrap().count, 2);
        let mut l = Latency::default();
        l.record_unanswered([]);
        assert!(l.summary().is_none());
        // In groups: 5 waited 2 s (above every answer), 7 waited 1 ms (below: left out).
        let mut l = Latency::default();
        l.record(ms(5));
        l.record_unanswered_n([(ms(2000), 5), (ms(1), 7), (ms(3000), 0)]);
        let s = l.summary().unwrap();
        assert_eq!(s.count, 6);
        assert!((s.max_us - 2_000_000.0).abs() < 2_000.0, "{s:?}");
    }
}
