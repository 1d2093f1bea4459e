//! [`Poller`]: the epoll-backed readiness source of one loop.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use duo_sys::{Epoll, Events, Interest, Ready};

/// An epoll instance and the event buffer it fills.
///
/// The buffer starts with [`Poller::INITIAL_EVENTS`] entries and doubles whenever a wait
/// fills it (see [`duo_sys::Events`]), so a loop with many busy descriptors needs fewer
/// `epoll_wait` calls per round of work.
#[derive(Debug)]
pub(crate) struct Poller {
    epoll: Epoll,
    events: Events,
}

impl Poller {
    /// The event buffer's starting capacity.
    pub(crate) const INITIAL_EVENTS: usize = 64;

    /// Creates a poller with a new epoll instance.
    pub(crate) fn new() -> io::Result<Poller> {
        Ok(Poller {
            epoll: Epoll::new()?,
            events: Events::with_capacity(Self::INITIAL_EVENTS),
        })
    }

    /// Waits for readiness (`None` = until something is ready) and returns how many
    /// events are ready; read them with [`Poller::event`]. A signal interrupting the wait
    /// returns `Ok(0)`.
    pub(crate) fn poll(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        self.epoll.wait(&mut self.events, timeout)
    }

    /// Busy polling ([`EventLoop::set_busy_poll`](crate::EventLoop::set_busy_poll)):
    /// polls without blocking for up to `spin_nanos`, then, if nothing came, blocks.
    pub(crate) fn poll_spinning(&mut self, spin_nanos: u64) -> io::Result<usize> {
        self.epoll.wait_spinning(&mut self.events, spin_nanos)
    }

    /// The `i`th event of the last poll as `(token, readiness)`.
    pub(crate) fn event(&self, i: usize) -> Option<(u64, Ready)> {
        self.events.get(i)
    }

    /// The epoll descriptor (readable when a registered descriptor is ready).
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.epoll)
    }

    /// Registers `fd`.
    pub(crate) fn add(&self, fd: BorrowedFd<'_>, interest: Interest, token: u64) -> io::Result<()> {
        self.epoll.add(fd, interest, token)
    }

    /// Changes the registration of `fd`.
    pub(crate) fn modify(
        &self,
        fd: BorrowedFd<'_>,
        interest: Interest,
        token: u64,
    ) -> io::Result<()> {
        self.epoll.modify(fd, interest, token)
    }

    /// Removes the registration of `fd`.
    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.epoll.delete(fd)
    }
}
