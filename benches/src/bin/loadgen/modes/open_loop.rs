//! `rr --rate`: the open loop, which measures latency at a fixed offered load.
//!
//! Closed loop (plain `rr`), a connection sends its next request when the previous reply
//! arrives: when the server stalls, the generator stops sending, and the stall shows as one
//! slow sample per connection instead of the many requests that would have waited behind
//! it (*coordinated omission*). Open loop, each connection has a [`Schedule`] of intended
//! send times, one every `conns / rate` seconds from a random phase, and every request's
//! latency counts from its intended send time. One request is in flight per connection, as
//! closed loop: a request whose time comes while the previous one is unanswered goes out
//! as soon as that reply arrives (the schedule queues up, and is then worked off as fast as
//! the replies come), so its wait in the queue is part of its latency.
//!
//! Each worker thread waits for its connections' sockets and for its earliest intended
//! send time in the same `epoll_wait`: a [`TimerFd`] armed to the nanosecond, since
//! `epoll_wait`'s own timeout has millisecond resolution ([`drive`]).
//!
//! A request sent more than one interval after its intended time is *late*: the schedule
//! could not be kept (the server was slow, or the generator was short of connections or
//! CPU). When that is more than [`LATE_WARNING`] of the requests, the run says so: the
//! figures then describe a lower offered load than the target.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use duo_sys::TimerFd;
use duo_testkit::Rng as XorShift;

use crate::cli::Mode;
use crate::engine::{Ctx, Engine, Session, Step};
use crate::report::Report;

/// The share of late requests above which the run warns that the schedule was not kept.
pub(crate) const LATE_WARNING: f64 = 0.01;

/// The longest interval between two requests of one connection (a rate so low that a
/// connection sends at most one request in `--secs`' largest value).
const MAX_INTERVAL: Duration = Duration::from_secs(86_400);

/// The unsent requests of one connection at the end are recorded in at most this many
/// groups (each at the shortest wait of its group), however far behind the schedule was.
const UNSENT_GROUPS: u64 = 64;

/// Refuses `--rate` where it does not apply: with `pingpong` (throughput, closed loop by
/// nature) and with `rr --udp`.
pub(crate) fn check_usage(mode: &Mode) -> Result<(), String> {
    match mode {
        Mode::Pingpong(a) if a.rate.is_some() => Err("--rate goes with rr alone".into()),
        Mode::Rr(a) if a.rate.is_some() && a.udp => {
            Err("--rate is for TCP rr: drop --udp (or --rate)".into())
        }
        _ => Ok(()),
    }
}

/// The interval between two requests of one of `conns` connections sharing `rate`
/// requests per second: at least a nanosecond, at most [`MAX_INTERVAL`].
pub(crate) fn interval_for(conns: usize, rate: f64) -> Duration {
    Duration::try_from_secs_f64(conns.max(1) as f64 / rate)
        .unwrap_or(MAX_INTERVAL)
        .clamp(Duration::from_nanos(1), MAX_INTERVAL)
}

/// One connection's intended send times: `start + phase + k * interval`.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    /// The connection's slot in its engine (the key of its timer).
    slot: usize,
    interval: Duration,
    /// Offset of the first send from the start of the measured phase, in `[0, interval)`.
    phase: Duration,
    /// The intended send time of the next request not sent yet (`None` before the first).
    next: Option<Instant>,
}

impl Schedule {
    /// The schedule of the connection in `slot`, one request per `interval`, with a random
    /// phase drawn from `rng`.
    pub(crate) fn new(slot: usize, interval: Duration, rng: &mut XorShift) -> Schedule {
        let nanos = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
        Schedule {
            slot,
            interval,
            phase: Duration::from_nanos(rng.below(nanos)),
            next: None,
        }
    }

    /// The intended send time of the next request (the measured phase began at `go`).
    fn next(&mut self, go: Instant) -> Instant {
        *self.next.get_or_insert(go + self.phase)
    }

    /// If the next request is due at `now`: its intended send time, and the schedule moves
    /// on to the one after.
    fn take_due(&mut self, now: Instant, go: Instant) -> Option<Instant> {
        let next = self.next(go);
        (next <= now).then(|| {
            self.next = Some(next + self.interval);
            next
        })
    }

    /// The requests due in the measured phase (before `end`) and never sent, as `(wait,
    /// count)` groups: each group's shortest wait at `stopped` (a lower bound of the
    /// latency of each of its requests) and size; their sum of counts is how many there
    /// were. (The worker stops a little after `end`: what falls due meanwhile is past the
    /// phase, neither sent nor owed.)
    pub(crate) fn unsent(
        &self,
        end: Instant,
        stopped: Instant,
        go: Instant,
    ) -> Vec<(Duration, u64)> {
        let next = self.next.unwrap_or(go + self.phase);
        let end = end.min(stopped);
        if next >= end {
            return Vec::new();
        }
        let step = self.interval.as_nanos();
        // Due at `next + k * step` for every `k` below `n`: those before `end`.
        let n = u64::try_from((end - next).as_nanos().div_ceil(step)).unwrap_or(u64::MAX);
        let oldest = (stopped - next).as_nanos();
        let per_group = n.div_ceil(UNSENT_GROUPS);
        let wait = |k: u64| {
            let nanos = oldest.saturating_sub(step * u128::from(k));
            Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
        };
        (0..n)
            .step_by(per_group as usize)
            .map(|first| {
                let count = per_group.min(n - first);
                (wait(first + count - 1), count)
            })
            .collect()
    }
}

/// A worker thread's open-loop state: when each idle connection's next request is due,
/// and what the schedule achieved.
#[derive(Debug, Default)]
pub(crate) struct Pacer {
    /// When the measured phase began (`None` before).
    pub(crate) go: Option<Instant>,
    /// `(intended send time, slot)` of connections waiting for their next request's time.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Requests sent, late ones and those never sent.
    pub(crate) counts: RateCounts,
}

impl Pacer {
    /// What the session with `schedule` does now that it has nothing in flight: if its
    /// next request is due, returns that request's intended send time (counted as sent,
    /// and late if it is); if not, arms a timer for it.
    pub(crate) fn next_send(&mut self, schedule: &mut Schedule, now: Instant) -> Option<Instant> {
        let go = *self.go.get_or_insert(now);
        match schedule.take_due(now, go) {
            Some(intended) => {
                self.counts.sent += 1;
                if now.saturating_duration_since(intended) > schedule.interval {
                    self.counts.late += 1;
                }
                Some(intended)
            }
            None => {
                let at = schedule.next(go);
                self.timers.push(Reverse((at, schedule.slot)));
                None
            }
        }
    }

    /// The slot of a connection whose timer is due at `now`, removing its timer.
    fn pop_due(&mut self, now: Instant) -> Option<usize> {
        match self.timers.peek() {
            Some(Reverse((at, slot))) if *at <= now => {
                let slot = *slot;
                self.timers.pop();
                Some(slot)
            }
            _ => None,
        }
    }

    /// The earliest timer.
    fn next_wake(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }
}

/// Runs the measured phase of an open-loop engine until `end`: each time a connection's
/// timer is due, `fire` is called on its session (if its connection is open: one that is
/// reconnecting sends when it opens). `pacer` finds the thread's [`Pacer`].
pub(crate) fn drive<S: Session>(
    engine: &mut Engine<S>,
    end: Instant,
    pacer: fn(&mut S::Shared) -> &mut Pacer,
    fire: fn(&mut S, &mut Ctx<'_, S::Shared>),
) -> io::Result<()> {
    let timer = TimerFd::new()?;
    engine.add_waker(timer.as_fd())?;
    loop {
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        while let Some(slot) = pacer(engine.shared_mut()).pop_due(now) {
            engine.poke(slot, |session, ctx| {
                fire(session, ctx);
                Step::Continue
            });
        }
        match pacer(engine.shared_mut()).next_wake() {
            Some(at) if at < end => timer.arm_at(at)?,
            _ => timer.disarm()?,
        }
        engine.poll(end)?;
        timer.read()?;
    }
}

/// What an open-loop run's schedules achieved (a thread's, or merged, the run's).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RateCounts {
    /// Requests sent in the measured phase.
    pub(crate) sent: u64,
    /// Of those, sent more than one interval after their intended send time.
    pub(crate) late: u64,
    /// Requests whose intended send time fell in the measured phase, never sent: their
    /// connection was still waiting for an earlier reply, or was not open (it never
    /// opened, or was lost or reopening).
    pub(crate) unsent: u64,
}

impl RateCounts {
    /// Adds another thread's counts.
    pub(crate) fn merge(&mut self, other: &RateCounts) {
        self.sent += other.sent;
        self.late += other.late;
        self.unsent += other.unsent;
    }

    /// Fills the report's open-loop fields for a target of `rate` requests per second,
    /// and warns (on stderr and in a note) when more than [`LATE_WARNING`] of the requests
    /// were late.
    pub(crate) fn fill(&self, report: &mut Report, rate: f64) {
        report.target_rate = Some(rate);
        let secs = report.elapsed_secs.unwrap_or(0.0);
        report.achieved_rate = (secs > 0.0).then(|| self.sent as f64 / secs);
        report.sent = Some(self.sent);
        report.late = Some(self.late);
        report.unsent = Some(self.unsent);
        if self.sent > 0 && self.late as f64 > LATE_WARNING * self.sent as f64 {
            let note = format!(
                "{} of {} requests ({:.1} %) were sent more than one interval after their \
                 intended time: the schedule of {rate} requests/s was not kept (a slow \
                 server, or too few connections or too little CPU for this rate); the \
                 latencies still count from the intended times",
                self.late,
                self.sent,
                100.0 * self.late as f64 / self.sent as f64
            );
            eprintln!("loadgen rr: {note}");
            report.notes.push(note);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_share_the_rate_and_stay_in_bounds() {
        assert_eq!(interval_for(10, 1000.0), Duration::from_millis(10));
        assert_eq!(interval_for(1, 1e12), Duration::from_nanos(1));
        assert_eq!(interval_for(1, 1e-300), MAX_INTERVAL);
    }

    #[test]
    fn a_schedule_is_kept_from_its_phase_and_queues_when_behind() {
        let ms = Duration::from_millis;
        let mut rng = XorShift::new(7);
        let mut s = Schedule::new(3, ms(10), &mut rng);
        assert!(s.phase < ms(10));
        let go = Instant::now();
        let mut p = Pacer {
            go: Some(go),
            ..Pacer::default()
        };
        // Before the phase offset: nothing due, a timer at go + phase.
        if s.phase > Duration::ZERO {
            assert_eq!(p.next_send(&mut s, go), None);
            assert_eq!(p.next_wake(), Some(go + s.phase));
            assert_eq!(p.pop_due(go + s.phase), Some(3));
        }
        let first = go + s.phase;
        assert_eq!(p.next_send(&mut s, first), Some(first));
        // 35 ms later: the next three are due at once, and go out with their intended
        // times (from which their latencies count).
        let now = first + ms(35);
        assert_eq!(p.next_send(&mut s, now), Some(first + ms(10)));
        assert_eq!(p.next_send(&mut s, now), Some(first + ms(20)));
        assert_eq!(p.next_send(&mut s, now), Some(first + ms(30)));
        assert_eq!(p.next_send(&mut s, now), None);
        assert_eq!(p.counts.sent, 4);
        // 25 and 15 ms late are late (more than one interval), 5 ms is not.
        assert_eq!(p.counts.late, 2);
    }

    #[test]
    fn unsent_requests_are_grouped_with_their_shortest_waits() {
        let ms = Duration::from_millis;
        let mut rng = XorShift::new(1);
        let mut s = Schedule::new(0, ms(10), &mut rng);
        let go = Instant::now();
        s.next = Some(go);
        // Due at 0, 10, 20, 30 ms; stopped at 35 ms: waits 35, 25, 15, 5 ms.
        let stop = go + ms(35);
        let groups = s.unsent(stop, stop, go);
        assert_eq!(
            groups,
            vec![(ms(35), 1), (ms(25), 1), (ms(15), 1), (ms(5), 1)]
        );
        assert!(s.unsent(go, go, go).is_empty());
        // The phase ended at 25 ms, the worker stopped at 35: the one due at 30 ms was
        // past the phase; the waits count to the stop.
        let groups = s.unsent(go + ms(25), stop, go);
        assert_eq!(groups, vec![(ms(35), 1), (ms(25), 1), (ms(15), 1)]);
        // Far behind: a million due (one each microsecond of the second, the one due at
        // its end not in it), in at most UNSENT_GROUPS groups.
        let mut s = Schedule::new(0, Duration::from_micros(1), &mut rng);
        s.next = Some(go);
        let second = go + Duration::from_secs(1);
        let groups = s.unsent(second, second, go);
        assert!(groups.len() as u64 <= UNSENT_GROUPS);
        assert_eq!(groups.iter().map(|g| g.1).sum::<u64>(), 1_000_000);
    }
}
