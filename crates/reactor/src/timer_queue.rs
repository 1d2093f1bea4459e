//! [`TimerQueue`]: the timers of one loop, on a single `timerfd`.
//!
//! The guarantees (order, no early run, no drift, exact cancel) are documented on
//! [`EventLoop`]; this is how they are kept:
//!
//! - A `BTreeMap<(deadline, seq), Timer>` plus a `seq -> deadline` map, so cancelling is
//!   exact and O(log n). A repeating timer whose callback is running stays in the
//!   `seq` map, so a cancel from its own callback is seen and it is not rescheduled.
//! - Sequence numbers are taken when `run_*` is called (on the calling thread for a
//!   [`LoopHandle`](crate::LoopHandle)), so equal deadlines run in call order.
//! - The `timerfd` is re-armed only when the earliest deadline changes; a cancel leaves it
//!   armed, costing at most one spurious wake-up instead of a system call per cancel.
//! - Due timers are collected first, then taken out and run one by one, each looked up
//!   again, so a callback can cancel a later timer of the same batch.
//! - A batch holds at most [`TimerQueue::BATCH`] timers: the `timerfd`, re-armed for the
//!   earliest deadline, which has passed, fires at once for the rest.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use duo_sys::TimerFd;

use crate::EventLoop;

/// The longest delay a deadline is given (about a century): anything longer, up to
/// `Duration::MAX`, is taken as this, a deadline that never comes in practice, instead of
/// overflowing `Instant` (whose `+` panics).
pub const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The instant `delay` after `from`, with `delay` at most [`FOREVER`]: never panics,
/// whatever the delay (a timeout read from a user's configuration, `Duration::MAX` for
/// "never"). The loop's timers and duo's timeouts compute their deadlines with it.
///
/// ```
/// use std::time::{Duration, Instant};
/// let now = Instant::now();
/// assert_eq!(duo_reactor::deadline_after(now, Duration::from_secs(1)), now + Duration::from_secs(1));
/// assert_eq!(duo_reactor::deadline_after(now, Duration::MAX), now + duo_reactor::FOREVER);
/// ```
pub fn deadline_after(from: Instant, delay: Duration) -> Instant {
    // `Instant` counts from the boot in an `i64` of seconds: a century more always fits.
    // Were it ever not to, the farthest delay that fits is found by halving (never an
    // earlier deadline than need be).
    let mut delay = delay.min(FOREVER);
    loop {
        if let Some(at) = from.checked_add(delay) {
            return at;
        }
        delay /= 2;
    }
}

/// Identifies a timer for [`EventLoop::cancel`] and [`crate::LoopHandle::cancel`].
///
/// Ids are unique per loop for its whole life, so cancelling a timer that already fired
/// (or was cancelled) is a harmless no-op, never the cancellation of some newer timer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TimerId(pub(crate) u64);

/// A timer's callback. It runs on the loop thread with the loop at hand.
pub(crate) type TimerCallback = Box<dyn FnMut(&mut EventLoop) + Send>;

pub(crate) struct Timer {
    pub(crate) callback: TimerCallback,
    pub(crate) interval: Option<Duration>,
    /// The callback's type name (its path in the source), for the stall report.
    pub(crate) name: &'static str,
}

/// The timers of one [`EventLoop`]: a `BTreeMap` ordered by `(deadline, sequence)` and one
/// `timerfd` armed at the earliest deadline, so the loop waits for timers and I/O in the
/// same `epoll_wait`. Users reach it through the loop's timer methods; the guarantees are
/// documented on [`EventLoop`] ("Timers").
pub(crate) struct TimerQueue {
    pub(crate) timerfd: TimerFd,
    timers: BTreeMap<(Instant, u64), Timer>,
    /// Deadline of every live timer by sequence number. A repeating timer whose callback
    /// is running stays here (but not in `timers`) so that cancelling it from its own
    /// callback can be noticed.
    active: HashMap<u64, Instant>,
    /// The deadline the `timerfd` is armed for.
    armed: Option<Instant>,
    /// Reusable buffer for the keys of expired timers.
    expired: Vec<(Instant, u64)>,
}

impl TimerQueue {
    /// Due timers one loop iteration runs at most.
    pub(crate) const BATCH: usize = 128;

    pub(crate) fn new() -> io::Result<TimerQueue> {
        Ok(TimerQueue {
            timerfd: TimerFd::new()?,
            timers: BTreeMap::new(),
            active: HashMap::new(),
            armed: None,
            expired: Vec::new(),
        })
    }

    /// Number of pending timers (a repeating timer counts once).
    pub(crate) fn len(&self) -> usize {
        self.active.len()
    }

    /// The earliest pending deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers.keys().next().map(|&(d, _)| d)
    }

    pub(crate) fn insert(&mut self, seq: u64, deadline: Instant, timer: Timer) {
        self.active.insert(seq, deadline);
        self.timers.insert((deadline, seq), timer);
        if self.armed.is_none_or(|armed| deadline < armed) {
            self.arm(Some(deadline));
        }
    }

    /// Cancels timer `seq`; true if it was pending (or is a repeating timer now running).
    ///
    /// The `timerfd` is left armed: if the cancelled timer was the earliest, the loop
    /// wakes once for nothing, which is cheaper than a `timerfd_settime` per cancel.
    pub(crate) fn cancel(&mut self, seq: u64) -> bool {
        match self.active.remove(&seq) {
            Some(deadline) => {
                self.timers.remove(&(deadline, seq));
                true
            }
            None => false,
        }
    }

    /// Moves the keys of the earliest timers due at `now`, at most [`TimerQueue::BATCH`],
    /// into a buffer the caller gives back with [`TimerQueue::put_expired_buffer`].
    pub(crate) fn take_expired(&mut self, now: Instant) -> Vec<(Instant, u64)> {
        let mut out = std::mem::take(&mut self.expired);
        out.clear();
        out.extend(
            self.timers
                .range(..=(now, u64::MAX))
                .map(|(&k, _)| k)
                .take(TimerQueue::BATCH),
        );
        out
    }

    pub(crate) fn put_expired_buffer(&mut self, buf: Vec<(Instant, u64)>) {
        self.expired = buf;
    }

    /// Takes a due timer out to run it; `None` if it was cancelled meanwhile.
    pub(crate) fn take(&mut self, key: (Instant, u64)) -> Option<Timer> {
        let timer = self.timers.remove(&key)?;
        if timer.interval.is_none() {
            self.active.remove(&key.1);
        }
        Some(timer)
    }

    /// Puts a repeating timer back after its callback ran, unless it cancelled meanwhile.
    ///
    /// "Now" is read here, after the callback, not when the batch started: a callback
    /// slower than its interval, or an earlier one of the batch that stalled, would
    /// otherwise put the timer back at a deadline already past, and it would run again
    /// at once, back to back (one clock read, from the vDSO, per repeating run only).
    pub(crate) fn reschedule(&mut self, key: (Instant, u64), timer: Timer) {
        let Some(interval) = timer.interval else {
            return;
        };
        if !self.active.contains_key(&key.1) {
            return;
        }
        let now = Instant::now();
        let mut next = deadline_after(key.0, interval);
        if next <= now {
            next = deadline_after(now, interval);
        }
        self.active.insert(key.1, next);
        self.timers.insert((next, key.1), timer);
    }

    /// Arms the `timerfd` for the earliest pending deadline (or disarms it).
    pub(crate) fn rearm(&mut self) {
        let next = self.next_deadline();
        if next != self.armed {
            self.arm(next);
        }
    }

    fn arm(&mut self, deadline: Option<Instant>) {
        let result = match deadline {
            Some(d) => self.timerfd.arm_at(d),
            None => self.timerfd.disarm(),
        };
        match result {
            Ok(()) => self.armed = deadline,
            // Cannot happen with a valid timerfd and in-range times; if it did, timers
            // would stall, so say so loudly.
            Err(e) => crate::log_limited!(log::Level::Error, "cannot arm the loop's timerfd: {e}"),
        }
    }

    /// Called when the timerfd fired: it is no longer armed.
    pub(crate) fn fired(&mut self) {
        // Reading clears the readiness; the count itself is not needed because the map
        // says what is due.
        let _ = self.timerfd.read();
        self.armed = None;
    }
}

impl fmt::Debug for TimerQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerQueue")
            .field("pending", &self.active.len())
            .field("next_deadline", &self.next_deadline())
            .field("armed", &self.armed)
            .finish()
    }
}
