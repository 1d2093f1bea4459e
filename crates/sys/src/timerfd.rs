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
/// reading taken together once per process; no clock is read after that).
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
    // The reading first: the anchor's `Instant` is then no earlier than its reading, so a
    // converted moment never lies in the future.
    let &(at, base) = ANCHOR.get_or_init(|| {
        let base = monotonic_nanos();
        (std::time::Instant::now(), base)
    });
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
    ///
    /// A zero delay fires at once: the kernel reads a zero `it_value` as "disarm", so it
    /// is raised to one nanosecond here.
    pub fn arm_after(&self, delay: Duration) -> io::Result<()> {
        self.settime(delay.max(Duration::from_nanos(1)))
    }

    /// Arms the timer to fire once at `deadline`, replacing any earlier setting. A deadline
    /// in the past fires at once.
    ///
    /// `Instant` exposes no raw clock value, so the deadline is turned into a delay from
    /// now; the conversion costs one clock read and is exact to the nanosecond.
    pub fn arm_at(&self, deadline: Instant) -> io::Result<()> {
        self.arm_after(deadline.saturating_duration_since(Instant::now()))
    }

    /// Disarms the timer. Expirations that already happened stay readable until
    /// [`TimerFd::read`].
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

    /// Reads and resets the number of expirations since the last read; `Ok(0)` when the
    /// timer has not expired (the kernel's `EAGAIN`).
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
