//! Rate-limited logging: no log storms from what a peer or the environment can repeat.
//!
//! A peer that resets a thousand connections a second, a codec fed garbage in a loop, a
//! process out of file descriptors: each of these can trigger the same log line as often
//! as it likes. Logged plainly, that fills disks and buries everything else. Every such
//! line goes through a [`LogLimiter`] instead, usually by way of [`log_limited!`](crate::log_limited):
//!
//! - Each **kind** of line (by default: each call site) has its own limiter. It lets a
//!   burst of [`DEFAULT_BURST`] lines through per [`DEFAULT_INTERVAL`] window, then
//!   counts the events it suppresses.
//! - The next line of that kind that is let through (in a later window) carries the
//!   count: `... (1234 similar messages suppressed in the last 10.0s)`.
//! - A count no later event reports is not lost: [`report_suppressed`] logs one summary
//!   line per limiter with a pending count. duo's `TcpServer` calls it every
//!   [`DEFAULT_INTERVAL`] on its main loop and when it stops; a program without one can
//!   call it itself (on a timer, at exit).
//!
//! So a kind produces at most `burst` lines per window, plus at most one summary per
//! [`report_suppressed`] call, however many events there are.
//!
//! # Cost
//!
//! A suppressed event costs one atomic load and one `fetch_add` (the time is read once,
//! from the monotonic clock); nothing is formatted and no lock is taken. A line that is let
//! through costs a compare-and-swap on top of the logging itself. The first suppression of
//! a `'static` limiter takes a lock once, to enter it in the list [`report_suppressed`]
//! walks. The limiter is lock-free and usable from any thread.
//!
//! # Example
//!
//! ```
//! use duo_reactor::log_limited;
//!
//! fn on_bad_frame(peer: &str, why: &str) {
//!     // At most 10 lines per 10 s from this line, however fast peers send garbage.
//!     log_limited!(log::Level::Warn, "{peer}: bad frame: {why}; closing");
//! }
//! # for _ in 0..100 { on_bad_frame("10.0.0.1:4000", "length 0"); }
//! ```
//!
//! Several call sites share one kind (and one budget) through a named limiter:
//!
//! ```
//! use duo_reactor::{log_limited, LogLimiter};
//!
//! static ACCEPT_ERRORS: LogLimiter = LogLimiter::new("accept errors");
//!
//! # let e = std::io::Error::from_raw_os_error(24);
//! log_limited!(limiter: ACCEPT_ERRORS, log::Level::Error, "accept: {e}; pausing");
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[doc(hidden)]
pub use log as __log;

/// Lines a limiter lets through per window by default.
pub const DEFAULT_BURST: u32 = 10;

/// A limiter's window by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Bits of a limiter's state word that count the lines let through in the current window
/// (the rest hold the window's start, in milliseconds since [`epoch`]).
const COUNT_BITS: u32 = 20;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// Limits how often one kind of log line is emitted; see the [module](self) docs.
///
/// Usually a `static`, made by [`log_limited!`](crate::log_limited) for its call site or by hand to share one
/// budget between sites.
pub struct LogLimiter {
    /// What the summary line of [`report_suppressed`] calls this kind.
    name: &'static str,
    burst: u32,
    interval_ms: u64,
    /// Window start (ms since [`epoch`]) `<< COUNT_BITS | lines let through in it`.
    window: AtomicU64,
    /// Events suppressed since a line last reported the count.
    suppressed: AtomicU64,
    /// When a line of this kind was last let through (ms since [`epoch`]).
    last_line_ms: AtomicU64,
    /// Level and target of the last suppressed event, for the summary line.
    last_level: AtomicU64,
    target: OnceLock<&'static str>,
    /// Entered in [`REGISTRY`].
    registered: AtomicBool,
}

/// What a [`LogLimiter`] said about one event that may be logged: how many before it were
/// suppressed, and over how long. Its `Display` is empty when none were, else
/// ` (N similar messages suppressed in the last X.Ys)`, to append to the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    /// Events of this kind suppressed since the last line of this kind.
    pub suppressed: u64,
    /// Time since the last line of this kind (for the first one: since the clock's
    /// zero, the first rate-limited log of the process).
    pub over: Duration,
}

impl fmt::Display for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.suppressed == 0 {
            return Ok(());
        }
        write!(
            f,
            " ({} similar message{} suppressed in the last {:.1}s)",
            self.suppressed,
            if self.suppressed == 1 { "" } else { "s" },
            self.over.as_secs_f64()
        )
    }
}

impl LogLimiter {
    /// A limiter named `name` with the default burst and window
    /// ([`DEFAULT_BURST`] lines per [`DEFAULT_INTERVAL`]).
    pub const fn new(name: &'static str) -> Self {
        Self::with_limits(name, DEFAULT_BURST, DEFAULT_INTERVAL)
    }

    /// A limiter letting `burst` lines through per `interval`.
    ///
    /// `burst` must be between 1 and 2^20 − 1 and `interval` at least a millisecond; in a
    /// `static` a violation is a compile error.
    pub const fn with_limits(name: &'static str, burst: u32, interval: Duration) -> Self {
        assert!(
            burst > 0 && (burst as u64) < COUNT_MASK,
            "burst out of range"
        );
        let interval_ms = interval.as_millis();
        assert!(
            interval_ms > 0 && interval_ms < u32::MAX as u128,
            "interval out of range"
        );
        Self {
            name,
            burst,
            interval_ms: interval_ms as u64,
            window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            last_line_ms: AtomicU64::new(0),
            last_level: AtomicU64::new(0),
            target: OnceLock::new(),
            registered: AtomicBool::new(false),
        }
    }

    /// The name given at construction.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Decides about one event now: `Some` to log it (with the count to append), `None`
    /// if it is suppressed (and counted). A suppressed event of a `'static` limiter
    /// enters it in the list [`report_suppressed`] walks.
    ///
    /// `level` and `target` are remembered for the summary line of [`report_suppressed`].
    pub fn admit(&'static self, level: log::Level, target: &'static str) -> Option<Permit> {
        let permit = self.admit_at(now_ms());
        if permit.is_none() {
            self.last_level.store(level as u64, Ordering::Relaxed);
            if !self.registered.load(Ordering::Relaxed) {
                let _ = self.target.set(target);
                self.register();
            }
        }
        permit
    }

    /// [`admit`](LogLimiter::admit) at `now_ms` milliseconds on a clock of the caller's
    /// choice (monotonic, the same for every call on this limiter, starting at or after
    /// 0). Does not register the limiter with [`report_suppressed`].
    pub fn admit_at(&self, now_ms: u64) -> Option<Permit> {
        let mut cur = self.window.load(Ordering::Relaxed);
        loop {
            let start = cur >> COUNT_BITS;
            let lines = cur & COUNT_MASK;
            let next = if now_ms.saturating_sub(start) >= self.interval_ms {
                (now_ms << COUNT_BITS) | 1
            } else if lines < u64::from(self.burst) {
                cur + 1
            } else {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            match self
                .window
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        let last = self.last_line_ms.swap(now_ms, Ordering::Relaxed);
        Some(Permit {
            suppressed,
            over: Duration::from_millis(now_ms.saturating_sub(last)),
        })
    }

    /// Takes the pending suppressed count (events suppressed since the last line of this
    /// kind) and the time since that line, at `now_ms`; `None` if nothing is pending.
    pub fn take_suppressed_at(&self, now_ms: u64) -> Option<Permit> {
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        if suppressed == 0 {
            return None;
        }
        let last = self.last_line_ms.swap(now_ms, Ordering::Relaxed);
        Some(Permit {
            suppressed,
            over: Duration::from_millis(now_ms.saturating_sub(last)),
        })
    }

    fn register(&'static self) {
        let mut list = REGISTRY.lock();
        if !self.registered.swap(true, Ordering::Relaxed) {
            list.push(self);
        }
    }

    fn level(&self) -> log::Level {
        match self.last_level.load(Ordering::Relaxed) {
            1 => log::Level::Error,
            2 => log::Level::Warn,
            3 => log::Level::Info,
            4 => log::Level::Debug,
            _ => log::Level::Trace,
        }
    }
}

impl fmt::Debug for LogLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogLimiter")
            .field("name", &self.name)
            .field("burst", &self.burst)
            .field("interval_ms", &self.interval_ms)
            .field("suppressed", &self.suppressed.load(Ordering::Relaxed))
            .finish()
    }
}

/// Every `'static` limiter that has suppressed something, for [`report_suppressed`].
static REGISTRY: Mutex<Vec<&'static LogLimiter>> = Mutex::new(Vec::new());

/// The process's reference instant for [`LogLimiter::admit`] (its first use).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX >> COUNT_BITS)
}

/// Logs one summary line (`"{name}: N similar messages suppressed in the last X.Ys"`,
/// at the level and target of the last suppressed event) for every limiter with a
/// suppressed count that no line has reported yet, and clears those counts. Returns the
/// number of events reported.
///
/// Call it periodically (every [`DEFAULT_INTERVAL`], say) and before exiting, so that the
/// last events of a storm are accounted for even if no event of that kind follows.
/// Each call logs at most one line per limiter.
pub fn report_suppressed() -> u64 {
    let limiters: Vec<&'static LogLimiter> = REGISTRY.lock().clone();
    let now = now_ms();
    let mut total = 0;
    for l in limiters {
        if let Some(p) = l.take_suppressed_at(now) {
            total += p.suppressed;
            log::log!(
                target: l.target.get().copied().unwrap_or("duo"),
                l.level(),
                "{}:{}",
                l.name,
                SummaryText(p)
            );
        }
    }
    total
}

/// A [`Permit`]'s count as a summary line's text (without the parentheses).
struct SummaryText(Permit);

impl fmt::Display for SummaryText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.0;
        write!(
            f,
            " {} similar message{} suppressed in the last {:.1}s",
            p.suppressed,
            if p.suppressed == 1 { "" } else { "s" },
            p.over.as_secs_f64()
        )
    }
}

/// Logs like [`log::log!`], through a [`LogLimiter`]: at most
/// [`DEFAULT_BURST`] lines per [`DEFAULT_INTERVAL`] from this call site (or from every
/// site sharing `limiter:`), the rest counted and reported with the next line let
/// through, as ` (N similar messages suppressed in the last X.Ys)`.
///
/// Nothing is counted or formatted when the level is disabled.
///
/// ```
/// # use duo_reactor::{log_limited, LogLimiter};
/// # let (peer, e) = ("10.0.0.1:4000", "connection reset");
/// // One limiter for this line:
/// log_limited!(log::Level::Debug, "{peer}: read: {e}");
/// // A limiter of its own, with other limits:
/// static RESETS: LogLimiter =
///     LogLimiter::with_limits("resets", 5, std::time::Duration::from_secs(60));
/// log_limited!(limiter: RESETS, log::Level::Info, "{peer}: {e}");
/// ```
#[macro_export]
macro_rules! log_limited {
    (limiter: $limiter:expr, $lvl:expr, $fmt:literal $($arg:tt)*) => {{
        let lvl: $crate::log_limit::__log::Level = $lvl;
        if $crate::log_limit::__log::log_enabled!(lvl) {
            let limiter: &'static $crate::LogLimiter = &$limiter;
            if let ::std::option::Option::Some(permit) =
                limiter.admit(lvl, ::std::module_path!())
            {
                $crate::log_limit::__log::log!(lvl, "{}{}", ::std::format_args!($fmt $($arg)*), permit);
            }
        }
    }};
    ($lvl:expr, $fmt:literal $($arg:tt)*) => {{
        static LIMITER: $crate::LogLimiter =
            $crate::LogLimiter::new(::std::concat!(::std::file!(), ":", ::std::line!()));
        $crate::log_limited!(limiter: LIMITER, $lvl, $fmt $($arg)*)
    }};
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{LogLimiter, Permit};

    fn limiter(burst: u32, interval_ms: u64) -> LogLimiter {
        LogLimiter::with_limits("test", burst, Duration::from_millis(interval_ms))
    }

    #[test]
    fn lets_a_burst_through_then_counts() {
        let l = limiter(3, 1000);
        let admitted = (0..100).filter(|_| l.admit_at(5).is_some()).count();
        assert_eq!(admitted, 3);
        assert_eq!(
            l.take_suppressed_at(5),
            Some(Permit {
                suppressed: 97,
                over: Duration::ZERO
            })
        );
        assert_eq!(l.take_suppressed_at(5), None, "a count is reported once");
    }

    #[test]
    fn the_next_window_reports_the_count_once() {
        let l = limiter(2, 1000);
        for t in 0..50 {
            l.admit_at(t);
        }
        assert_eq!(l.admit_at(999), None, "still the first window");
        let p = l.admit_at(1000).expect("a new window lets a line through");
        assert_eq!(p.suppressed, 49);
        assert_eq!(
            p.over,
            Duration::from_millis(999),
            "since the last line, at 1 ms"
        );
        assert_eq!(
            p.to_string(),
            " (49 similar messages suppressed in the last 1.0s)"
        );
        let p = l.admit_at(1001).expect("second of the burst");
        assert_eq!(p.suppressed, 0);
        assert_eq!(p.to_string(), "");
        assert_eq!(l.admit_at(1002), None);
    }

    #[test]
    fn lines_are_bounded_by_burst_per_window() {
        let l = limiter(10, 100);
        // 100 000 events over 10 s of clock: 100 windows of 100 ms.
        let admitted = (0..100_000u64)
            .filter(|i| l.admit_at(i / 10).is_some())
            .count();
        assert_eq!(admitted, 100 * 10);
    }

    #[test]
    fn counts_every_event_across_threads() {
        let l: &'static LogLimiter = Box::leak(Box::new(limiter(10, 1_000_000)));
        let admitted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        if l.admit_at(1).is_some() {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), 10, "exactly the burst, no more");
        let p = l.take_suppressed_at(2).expect("a pending count");
        assert_eq!(p.suppressed, 40_000 - 10);
    }

    #[test]
    fn a_clock_going_backwards_is_harmless() {
        let l = limiter(1, 1000);
        assert!(l.admit_at(5000).is_some());
        assert!(
            l.admit_at(10).is_none(),
            "earlier than the window: suppressed"
        );
        let p = l.admit_at(6000).expect("the next window");
        assert_eq!(p.suppressed, 1);
    }
}
