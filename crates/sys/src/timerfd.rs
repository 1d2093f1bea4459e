//! `timerfd` on `CLOCK_MONOTONIC`: a timer that becomes readable when it expires, so an
//! event loop can wait for I/O and for its earliest deadline in the same `epoll_wait`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::{context, cvt, read_counter};

/// A non-blocking, close-on-exec timer descriptor on `CLOCK_MONOTONIC` (the clock
/// [`Instant`] uses on Linux), closed on drop.
///
/// Register it for [`Interest::READABLE`](crate::Interest::READABLE); when it fires, call
/// [`TimerFd::read`] to learn how many expirations happened and to clear the readiness.
///
/// ```
/// use duo_sys::TimerFd;
/// use std::time::Duration;
///
/// let timer = TimerFd::new()?;
/// timer.arm_after(Duration::from_millis(1))?;
/// while timer.read()? == 0 {
///     std::thread::yield_now();
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct TimerFd {
    fd: OwnedFd,
}

/// Converts a duration to a `timespec`, saturating at the largest representable value.
fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as _,
    }
}

/// The monotonic clock (`CLOCK_MONOTONIC`, the clock of [`std::time::Instant`] and of
/// [`TimerFd`]) in nanoseconds since an unspecified start (the boot), as a plain `u64`.
///
/// For code that reads the clock around every callback and only subtracts readings: a
/// difference of two `u64`s costs one instruction where `Instant - Instant` normalises two
/// `timespec`s and checks for overflow. A `u64` of nanoseconds lasts 584 years of uptime.
///
/// ```
/// let a = duo_sys::monotonic_nanos();
/// let b = duo_sys::monotonic_nanos();
/// assert!(b >= a);
/// ```
pub fn monotonic_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `timespec`; `CLOCK_MONOTONIC` always exists on
    // Linux, so the call cannot fail (glibc serves it from the vDSO without a system call).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// The [`Instant`] of a [`monotonic_nanos`] reading, for code that
/// stores the cheap `u64` and hands out an `Instant` now and then.
///
/// Deterministic: the same reading always gives the same `Instant`, and later readings
/// later ones (the conversion is an offset from one anchor pair, an `Instant` and a
/// reading taken together once per process; no clock is read after that). Never later
/// than the moment read (it may be earlier by the gap between the anchor's two clock
/// reads, normally nanoseconds), so never in the future.
///
/// ```
/// let n = duo_sys::monotonic_nanos();
/// let at = duo_sys::instant_of_nanos(n);
/// assert_eq!(at, duo_sys::instant_of_nanos(n));
/// assert!(duo_sys::instant_of_nanos(n + 1_000) > at);
/// assert!(at <= std::time::Instant::now());
/// ```
pub fn instant_of_nanos(nanos: u64) -> std::time::Instant {
    static ANCHOR: std::sync::OnceLock<(std::time::Instant, u64)> = std::sync::OnceLock::new();
    convert(*ANCHOR.get_or_init(|| anchor(|| ())), nanos)
}

/// The anchor pair of [`instant_of_nanos`]: an `Instant` and a [`monotonic_nanos`]
/// reading taken together; `between` runs between the two reads (a test widens the gap).
fn anchor(between: impl FnOnce()) -> (std::time::Instant, u64) {
    // The `Instant` first: it is then no later than the reading, so a converted moment
    // is no later than the moment it converts (`at + (n - base)` with `at <= base` on the
    // one clock), and never lies in the future. (The other way round, a converted moment
    // was late by the gap between the two reads: by a whole time slice if the thread lost
    // its CPU there.)
    let at = std::time::Instant::now();
    between();
    (at, monotonic_nanos())
}

/// The `Instant` of the reading `nanos`, by the anchor pair `(at, base)`.
fn convert((at, base): (std::time::Instant, u64), nanos: u64) -> std::time::Instant {
    if nanos >= base {
        at + Duration::from_nanos(nanos - base)
    } else {
        at.checked_sub(Duration::from_nanos(base - nanos))
            .unwrap_or(at)
    }
}

impl TimerFd {
    /// Creates a disarmed timer (`TFD_NONBLOCK | TFD_CLOEXEC`).
    pub fn new() -> io::Result<TimerFd> {
        // SAFETY: `timerfd_create` takes a clock id and flags and returns a new descriptor
        // or -1.
        let fd = cvt(unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        })
        .map_err(context("timerfd_create"))?;
        // SAFETY: the call succeeded, so `fd` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(TimerFd { fd })
    }

    /// Arms the timer to fire once, `delay` from now, replacing any earlier setting.
    /// Expirations not read yet are discarded (as by [`TimerFd::disarm`]).
    ///
    /// A zero delay fires at once: the kernel reads a zero `it_value` as "disarm", so it
    /// is raised to one nanosecond here.
    pub fn arm_after(&self, delay: Duration) -> io::Result<()> {
        self.settime(delay.max(Duration::from_nanos(1)))
    }

    /// Arms the timer to fire once at `deadline`, replacing any earlier setting (and
    /// discarding expirations not read yet). A deadline in the past fires at once.
    ///
    /// `Instant` exposes no raw clock value, so the deadline is turned into a delay from
    /// now; the conversion costs one clock read and is exact to the nanosecond.
    pub fn arm_at(&self, deadline: Instant) -> io::Result<()> {
        self.arm_after(deadline.saturating_duration_since(Instant::now()))
    }

    /// Disarms the timer. Expirations that happened but were not read yet are discarded
    /// with it: the kernel resets the count, and the readiness, on every setting.
    pub fn disarm(&self) -> io::Result<()> {
        self.settime(Duration::ZERO)
    }

    /// Arms the timer to expire once after `value` (zero disarms it).
    fn settime(&self, value: Duration) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: timespec(Duration::ZERO),
            it_value: timespec(value),
        };
        // SAFETY: `spec` is a valid `itimerspec` the kernel only reads; passing a null
        // old-value pointer is allowed; the descriptor is live.
        cvt(unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) })
            .map_err(context("timerfd_settime"))?;
        Ok(())
    }

    /// Reads and resets the number of expirations since the last read or setting (arming
    /// or disarming); `Ok(0)` when the timer has not expired since (the kernel's `EAGAIN`).
    pub fn read(&self) -> io::Result<u64> {
        read_counter(self.fd.as_fd(), "read(timerfd)")
    }
}

impl AsFd for TimerFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review round 9 (see `tests/review_round9.rs`): however long the gap between the
    /// anchor's two clock reads (the thread may lose its CPU there), a converted reading
    /// is never later than the clock read after it.
    #[test]
    fn a_converted_moment_never_lies_in_the_future_whatever_the_anchors_gap() {
        let pair = anchor(|| std::thread::sleep(Duration::from_millis(20)));
        let n = monotonic_nanos();
        let at = convert(pair, n);
        let now = Instant::now();
        assert!(
            at <= now,
            "converted {:?} after the clock read that followed it",
            at.duration_since(now)
        );
    }
}
