//! `epoll`: the readiness notification at the bottom of every duo event loop.
//!
//! [`Epoll`] owns an epoll instance. Descriptors are registered with an [`Interest`] and a
//! caller-chosen 64-bit token; [`Epoll::wait`] fills an [`Events`] buffer with
//! `(token, Ready)` pairs. The token is opaque to this layer: the reactor stores a slot index
//! and a generation in it so that a stale event for a reused slot can be recognised.
//!
//! # Edge and level triggering
//!
//! Level-triggered interest (the default) reports a descriptor on every wait while it is
//! ready. [`Interest::EDGE`] reports it once per *change* to ready: the caller must read
//! (or write) until `EAGAIN`, or until a short read proves the receive queue empty, before
//! it can expect another event. ([`Interest::ONESHOT`] is for a set several threads wait
//! on, whose waiter re-arms the descriptor itself, as duo-reactor's loop groups do. Not
//! for a reactor channel: the reactor re-arms a registration only when its interest
//! changes, so a one-shot channel would go silent after one event.)

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::{context, cvt};

/// What a registration asks to be told about. Combine with `|`.
///
/// ```
/// use duo_sys::Interest;
/// let i = Interest::READABLE | Interest::EDGE;
/// assert!(i.is_readable() && i.is_edge() && !i.is_writable());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Interest(u32);

impl Interest {
    /// No readiness at all: the descriptor stays registered (errors and hang-ups are still
    /// reported, the kernel always reports those) but reads and writes are not.
    pub const NONE: Interest = Interest(0);
    /// Readable (`EPOLLIN`), including the peer's half-close (`EPOLLRDHUP`).
    pub const READABLE: Interest = Interest((libc::EPOLLIN | libc::EPOLLRDHUP) as u32);
    /// Only the peer's half-close (`EPOLLRDHUP`), without "readable": for a socket whose
    /// reading is paused, to learn that the peer has finished sending while its last bytes
    /// stay unread. (Part of [`Interest::READABLE`].)
    pub const READ_HUP: Interest = Interest(libc::EPOLLRDHUP as u32);
    /// Writable (`EPOLLOUT`).
    pub const WRITABLE: Interest = Interest(libc::EPOLLOUT as u32);
    /// Edge-triggered (`EPOLLET`): one event per transition to ready.
    pub const EDGE: Interest = Interest(libc::EPOLLET as u32);
    /// Exclusive wake-up (`EPOLLEXCLUSIVE`), for a descriptor that several epoll instances
    /// watch (one listening socket shared by several loops or processes): an event wakes
    /// one of the instances that are asleep in `epoll_wait` (and any that are busy), not
    /// all of them, so that a new connection does not wake every loop to race for it.
    ///
    /// The kernel accepts it only at registration and with `EPOLLIN`, `EPOLLOUT` and
    /// `EPOLLET`: the read-hang-up bit of [`Interest::READABLE`] is left out of an
    /// exclusive registration (a listening socket has no peer to hang up), and
    /// [`Epoll::modify`] re-registers an exclusive descriptor instead of modifying it.
    pub const EXCLUSIVE: Interest = Interest(libc::EPOLLEXCLUSIVE as u32);
    /// One event per arming (`EPOLLONESHOT`): after the descriptor is reported once it
    /// stays registered but silent until [`Epoll::modify`] arms it again. Several threads
    /// waiting on one epoll instance use it so that a ready descriptor is handed to one of
    /// them, which owns it until it re-arms it (a readiness already pending at re-arming is
    /// reported at once).
    pub const ONESHOT: Interest = Interest(libc::EPOLLONESHOT as u32);

    /// Whether readable events are requested.
    pub const fn is_readable(self) -> bool {
        self.0 & libc::EPOLLIN as u32 != 0
    }
    /// Whether the peer's half-close is requested (by itself, or as part of
    /// [`Interest::READABLE`]).
    pub const fn is_read_hup(self) -> bool {
        self.0 & libc::EPOLLRDHUP as u32 != 0
    }
    /// Whether writable events are requested.
    pub const fn is_writable(self) -> bool {
        self.0 & libc::EPOLLOUT as u32 != 0
    }
    /// Whether the registration is edge-triggered.
    pub const fn is_edge(self) -> bool {
        self.0 & libc::EPOLLET as u32 != 0
    }
    /// Whether the registration asks for exclusive wake-ups.
    pub const fn is_exclusive(self) -> bool {
        self.0 & libc::EPOLLEXCLUSIVE as u32 != 0
    }
    /// Whether the registration is one-shot.
    pub const fn is_oneshot(self) -> bool {
        self.0 & libc::EPOLLONESHOT as u32 != 0
    }
    /// Adds the flags of `other`.
    #[must_use]
    pub const fn add(self, other: Interest) -> Interest {
        Interest(self.0 | other.0)
    }
    /// Removes the flags of `other`.
    #[must_use]
    pub const fn remove(self, other: Interest) -> Interest {
        Interest(self.0 & !other.0)
    }
    /// The raw `epoll_event.events` bits.
    pub const fn bits(self) -> u32 {
        self.0
    }
}

impl std::ops::BitOr for Interest {
    type Output = Interest;
    fn bitor(self, rhs: Interest) -> Interest {
        self.add(rhs)
    }
}

impl std::ops::BitOrAssign for Interest {
    fn bitor_assign(&mut self, rhs: Interest) {
        *self = self.add(rhs);
    }
}

impl std::fmt::Debug for Interest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut sep = "";
        f.write_str("Interest(")?;
        for (set, name) in [
            (self.is_readable(), "READABLE"),
            (self.is_read_hup() && !self.is_readable(), "READ_HUP"),
            (self.is_writable(), "WRITABLE"),
            (self.is_edge(), "EDGE"),
            (self.is_exclusive(), "EXCLUSIVE"),
            (self.is_oneshot(), "ONESHOT"),
        ] {
            if set {
                write!(f, "{sep}{name}")?;
                sep = " | ";
            }
        }
        if sep.is_empty() {
            f.write_str("NONE")?;
        }
        f.write_str(")")
    }
}

/// What the kernel reported for one registration in one wait.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ready(u32);

impl Ready {
    /// Builds a readiness set from raw `epoll_event.events` bits.
    pub const fn from_bits(bits: u32) -> Ready {
        Ready(bits)
    }
    /// The raw `epoll_event.events` bits.
    pub const fn bits(self) -> u32 {
        self.0
    }
    /// Data can be read (`EPOLLIN`) or urgent data is pending (`EPOLLPRI`).
    pub const fn is_readable(self) -> bool {
        self.0 & (libc::EPOLLIN | libc::EPOLLPRI) as u32 != 0
    }
    /// Data can be written (`EPOLLOUT`).
    pub const fn is_writable(self) -> bool {
        self.0 & libc::EPOLLOUT as u32 != 0
    }
    /// An error is pending on the descriptor (`EPOLLERR`); read it with
    /// [`take_socket_error`](crate::take_socket_error) on a socket.
    pub const fn is_error(self) -> bool {
        self.0 & libc::EPOLLERR as u32 != 0
    }
    /// Both directions are shut down (`EPOLLHUP`): the connection is gone.
    pub const fn is_hup(self) -> bool {
        self.0 & libc::EPOLLHUP as u32 != 0
    }
    /// The peer shut down its writing half (`EPOLLRDHUP`): reads will reach end of stream
    /// once the queued bytes are consumed.
    pub const fn is_read_hup(self) -> bool {
        self.0 & libc::EPOLLRDHUP as u32 != 0
    }
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ready")
            .field("readable", &self.is_readable())
            .field("writable", &self.is_writable())
            .field("error", &self.is_error())
            .field("hup", &self.is_hup())
            .field("read_hup", &self.is_read_hup())
            .finish()
    }
}

/// The buffer one [`Epoll::wait`] fills.
///
/// It starts at the capacity given to [`Events::with_capacity`] and doubles (up to
/// [`Events::MAX_CAPACITY`]) whenever a wait fills it completely, because a full buffer
/// means more descriptors were ready than could be reported in one call.
pub struct Events {
    buf: Vec<libc::epoll_event>,
    len: usize,
    /// Whether a full wait doubles the capacity ([`Events::fixed`] does not).
    grows: bool,
}

impl Events {
    /// The capacity beyond which [`Events`] stops growing.
    pub const MAX_CAPACITY: usize = 64 * 1024;

    /// An empty buffer with room for `capacity` events (at least 1).
    pub fn with_capacity(capacity: usize) -> Events {
        let capacity = capacity.clamp(1, Self::MAX_CAPACITY);
        Events {
            buf: vec![libc::epoll_event { events: 0, u64: 0 }; capacity],
            len: 0,
            grows: true,
        }
    }

    /// A buffer that always takes at most `capacity` events (at least 1) per wait: for
    /// threads that share one epoll instance and must each take only what they will
    /// handle, leaving the rest ready for the others.
    pub fn fixed(capacity: usize) -> Events {
        Events {
            grows: false,
            ..Events::with_capacity(capacity)
        }
    }

    /// How many events the next wait can return.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// How many events the last wait returned.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the last wait returned no events.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets the events of the last wait.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The `i`th event of the last wait as `(token, readiness)`.
    pub fn get(&self, i: usize) -> Option<(u64, Ready)> {
        self.buf[..self.len]
            .get(i)
            .map(|ev| (ev.u64, Ready(ev.events)))
    }

    /// The events of the last wait as `(token, readiness)`, in the kernel's order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (u64, Ready)> + '_ {
        self.buf[..self.len]
            .iter()
            .map(|ev| (ev.u64, Ready(ev.events)))
    }

    /// Doubles the capacity if the last wait filled the buffer.
    fn grow_if_full(&mut self) {
        let cap = self.buf.len();
        if self.grows && self.len == cap && cap < Self::MAX_CAPACITY {
            let new_cap = (cap * 2).min(Self::MAX_CAPACITY);
            self.buf
                .resize(new_cap, libc::epoll_event { events: 0, u64: 0 });
        }
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("len", &self.len)
            .field("capacity", &self.buf.len())
            .finish()
    }
}

/// Whether the epoll instance behind `fd` (a duplicate of an [`Epoll`]'s descriptor, say)
/// has events ready now, without taking any: `poll` with a zero timeout, which asks each
/// registration on its ready list whether it is still ready and consumes no event, edge
/// or one-shot.
pub fn has_ready_events(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid `pollfd`, counted as one; a zero timeout does not block.
    cvt(unsafe { libc::poll(&mut p, 1, 0) }).map_err(context("poll(epoll descriptor)"))?;
    Ok(p.revents & libc::POLLIN != 0)
}

/// An epoll instance (`epoll_create1(EPOLL_CLOEXEC)`), closed on drop.
///
/// ```
/// use duo_sys::{Epoll, EventFd, Events, Interest};
/// use std::os::fd::AsFd;
/// use std::time::Duration;
///
/// let epoll = Epoll::new()?;
/// let efd = EventFd::new()?;
/// epoll.add(efd.as_fd(), Interest::READABLE, 7)?;
/// efd.notify()?;
/// let mut events = Events::with_capacity(16);
/// assert_eq!(epoll.wait(&mut events, Some(Duration::from_secs(1)))?, 1);
/// let (token, ready) = events.iter().next().unwrap();
/// assert_eq!(token, 7);
/// assert!(ready.is_readable());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    /// Creates an epoll instance with `EPOLL_CLOEXEC`.
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: `epoll_create1` takes only flags and returns a new descriptor or -1.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })
            .map_err(context("epoll_create1"))?;
        // SAFETY: the call succeeded, so `fd` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd })
    }

    /// Registers `fd` with `interest`; events for it carry `token`.
    ///
    /// Fails with [`io::ErrorKind::AlreadyExists`] if `fd` is already registered.
    /// The registration lasts until [`Epoll::delete`] or until every descriptor that refers
    /// to the open file is closed; callers should delete before closing.
    pub fn add(&self, fd: BorrowedFd<'_>, interest: Interest, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, interest, token)
            .map_err(context("epoll_ctl(ADD)"))
    }

    /// Changes the interest and token of a registered `fd`.
    ///
    /// The kernel refuses to modify an exclusive registration; when `interest` has
    /// [`Interest::EXCLUSIVE`] (keep the flag when changing an exclusive registration),
    /// the registration is deleted and added again instead. For a level-triggered
    /// descriptor nothing is lost: readiness is re-evaluated when it is added.
    ///
    /// An exclusive interest the kernel refuses (with [`Interest::ONESHOT`], or on an
    /// epoll descriptor) fails with [`io::ErrorKind::InvalidInput`] and leaves the
    /// registration as it was: it is checked before the old one is deleted. (Only a
    /// failure of the kernel to allocate the new one, `ENOMEM`, can then leave `fd`
    /// unregistered; the error says so.)
    ///
    /// Fails with [`io::ErrorKind::NotFound`] if `fd` is not registered.
    pub fn modify(&self, fd: BorrowedFd<'_>, interest: Interest, token: u64) -> io::Result<()> {
        if interest.is_exclusive() {
            return self.reregister_exclusive(fd, interest, token);
        }
        self.ctl(libc::EPOLL_CTL_MOD, fd, interest, token)
            .map_err(context("epoll_ctl(MOD)"))
    }

    /// [`Epoll::modify`] to an exclusive `interest`: delete and add, after a probe.
    ///
    /// The probe is an `EPOLL_CTL_ADD` of the new interest: the kernel checks whether it
    /// accepts the interest for `fd` before it looks the registration up, so `EEXIST`
    /// means "acceptable, and registered", and any other error leaves the old registration
    /// untouched. If the probe succeeds, `fd` was not registered: the probe's registration
    /// is deleted again and the answer is `NotFound`, as for a plain modify.
    fn reregister_exclusive(
        &self,
        fd: BorrowedFd<'_>,
        interest: Interest,
        token: u64,
    ) -> io::Result<()> {
        match self.ctl(libc::EPOLL_CTL_ADD, fd, interest, token) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            // `EINVAL` (kind `InvalidInput`) for an interest refused with EXCLUSIVE.
            Err(e) => return Err(context("epoll_ctl(MOD of an exclusive registration)")(e)),
            Ok(()) => {
                self.delete(fd)?;
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "epoll_ctl(MOD): descriptor not registered",
                ));
            }
        }
        self.delete(fd)?;
        self.add(fd, interest, token).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{e}; the descriptor is no longer registered"),
            )
        })
    }

    /// Removes the registration of `fd`.
    ///
    /// Fails with [`io::ErrorKind::NotFound`] if `fd` is not registered.
    pub fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, Interest::NONE, 0)
            .map_err(context("epoll_ctl(DEL)"))
    }

    fn ctl(
        &self,
        op: libc::c_int,
        fd: BorrowedFd<'_>,
        interest: Interest,
        token: u64,
    ) -> io::Result<()> {
        let events = if interest.is_exclusive() {
            interest.0 & !(libc::EPOLLRDHUP as u32)
        } else {
            interest.0
        };
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: both descriptors are live for the call and `event` is a valid
        // `epoll_event` that the kernel only reads (it is ignored for `EPOLL_CTL_DEL`).
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd.as_raw_fd(), &mut event) })?;
        Ok(())
    }

    /// Waits until at least one registered descriptor is ready or `timeout` passes
    /// (`None` waits forever), and fills `events` with what is ready.
    ///
    /// Returns the number of events. A timeout is rounded *up* to whole milliseconds
    /// (`epoll_wait`'s resolution), so a wait never returns before its timeout just because
    /// it was shorter than a millisecond: rounding down would make a loop spin on a zero
    /// timeout until a sub-millisecond deadline passes. Precise deadlines belong on a
    /// [`TimerFd`](crate::TimerFd) registered with the epoll.
    ///
    /// If a signal interrupts the wait (`EINTR`) it returns `Ok(0)`, so the caller re-checks
    /// its state (for example a quit flag) before waiting again.
    ///
    /// When a wait fills `events` completely, its capacity is doubled for the next wait.
    pub fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<usize> {
        events.grow_if_full();
        let timeout_ms = match timeout {
            None => -1,
            Some(t) => {
                let ms = t.as_nanos().div_ceil(1_000_000);
                ms.min(libc::c_int::MAX as u128) as libc::c_int
            }
        };
        let max = events.buf.len().min(libc::c_int::MAX as usize) as libc::c_int;
        // SAFETY: `events.buf` holds `max` writable `epoll_event`s, the kernel writes at
        // most `max` of them, and the epoll descriptor is live.
        let ret = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.buf.as_mut_ptr(),
                max,
                timeout_ms,
            )
        };
        match cvt(ret) {
            Ok(n) => {
                events.len = n as usize;
                Ok(events.len)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                events.len = 0;
                Ok(0)
            }
            Err(e) => {
                events.len = 0;
                Err(context("epoll_wait")(e))
            }
        }
    }

    /// Busy polling: waits without blocking, again and again, for up to `spin_nanos` (on
    /// the [`monotonic_nanos`](crate::monotonic_nanos) clock), and blocks (no timeout)
    /// only if nothing came by then. For a thread that expects work within microseconds
    /// and would rather spend them than sleep and be woken.
    pub fn wait_spinning(&self, events: &mut Events, spin_nanos: u64) -> io::Result<usize> {
        let deadline = crate::monotonic_nanos().saturating_add(spin_nanos);
        loop {
            let n = self.wait(events, Some(Duration::ZERO))?;
            if n > 0 {
                return Ok(n);
            }
            if crate::monotonic_nanos() >= deadline {
                return self.wait(events, None);
            }
            std::hint::spin_loop();
        }
    }
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}
