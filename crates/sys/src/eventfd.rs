//! `eventfd`: a kernel counter that is readable while non-zero, used to wake an event
//! loop blocked in `epoll_wait` from another thread.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::{context, cvt, cvt_size, read_counter};

/// A non-blocking, close-on-exec eventfd, closed on drop.
///
/// [`EventFd::notify`] adds one to the counter and makes the descriptor readable;
/// [`EventFd::drain`] reads the counter back to zero. Many notifications before a drain
/// collapse into one readable event, which is what a wake-up needs.
///
/// ```
/// use duo_sys::EventFd;
/// let efd = EventFd::new()?;
/// assert_eq!(efd.drain()?, 0);
/// efd.notify()?;
/// efd.notify()?;
/// assert_eq!(efd.drain()?, 2);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// Creates an eventfd with a zero counter (`EFD_NONBLOCK | EFD_CLOEXEC`).
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: `eventfd` takes an initial value and flags and returns a new descriptor
        // or -1.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })
            .map_err(context("eventfd"))?;
        // SAFETY: the call succeeded, so `fd` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventFd { fd })
    }

    /// Adds one to the counter, making the descriptor readable. Safe to call from any
    /// thread.
    ///
    /// If the counter is already at its maximum (`EAGAIN`) the descriptor is readable
    /// anyway, so that is not an error.
    pub fn notify(&self) -> io::Result<()> {
        let one = 1u64;
        loop {
            // SAFETY: the buffer is the 8 bytes of `one`, the size an eventfd write needs;
            // the descriptor is live.
            let ret = unsafe {
                libc::write(
                    self.fd.as_raw_fd(),
                    (&one as *const u64).cast::<libc::c_void>(),
                    std::mem::size_of::<u64>(),
                )
            };
            return match cvt_size(ret) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(context("write(eventfd)")(e)),
            };
        }
    }

    /// Reads the counter and resets it to zero; `Ok(0)` if there was nothing to read.
    pub fn drain(&self) -> io::Result<u64> {
        read_counter(self.fd.as_fd(), "read(eventfd)")
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}
