//! [`Channel`]: one descriptor registered with a loop, its interest, and the
//! [`Handler`] that reacts to its events.

use std::any::Any;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use duo_sys::{Interest, Ready};

use crate::health::SpinWatch;
use crate::EventLoop;

/// Names a registration in one [`EventLoop`]: a slot index and the slot's generation.
///
/// When a channel is removed its slot is reused with a new generation, so a token kept by
/// mistake (or an event already in flight for the old channel) can never reach the new
/// one: it is simply not found.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub(crate) u64);

impl Token {
    pub(crate) fn new(index: u32, generation: u32) -> Token {
        Token(u64::from(generation) << 32 | u64::from(index))
    }
    pub(crate) fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
    pub(crate) fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// The raw value passed to epoll as the event's data.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The token whose [`as_u64`](Token::as_u64) is `raw`: for keeping a token in an
    /// `AtomicU64`. Safe on any value, but meant for values `as_u64` gave: a made-up or
    /// another loop's token names no channel (not found) or, by chance, a live one of
    /// this loop, which the caller would then act on.
    ///
    /// ```
    /// use duo_reactor::Token;
    /// let raw = 42u64;
    /// assert_eq!(Token::from_u64(raw).as_u64(), raw);
    /// ```
    pub fn from_u64(raw: u64) -> Token {
        Token(raw)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}v{})", self.index(), self.generation())
    }
}

/// A descriptor registered with an [`EventLoop`]: the descriptor itself (owned: it is
/// closed when the channel is removed), the readiness it asks for, and its [`Token`].
///
/// A channel is handed to its [`Handler`] on every event and by
/// [`EventLoop::with_channel`]. The interest methods (`enable_reading`,
/// `disable_writing`, ...) record what the channel wants; the loop applies the change to
/// epoll (one `epoll_ctl`, only if something changed) when the handler returns. Likewise
/// [`Channel::remove`] takes effect when the handler returns: the descriptor is removed
/// from epoll and closed, the handler is dropped, and no further event reaches either,
/// including events of the same `epoll_wait` batch that were not yet dispatched.
pub struct Channel {
    pub(crate) fd: OwnedFd,
    token: Token,
    /// What the owner wants.
    interest: Interest,
    /// What epoll currently has.
    pub(crate) registered: Interest,
    /// The readiness being dispatched (empty outside dispatch).
    pub(crate) ready: Ready,
    removed: bool,
    /// No other descriptor refers to the open file (see [`Channel::set_sole_descriptor`]).
    pub(crate) sole: bool,
    /// The handler reported progress during this dispatch ([`Channel::progressed`]).
    pub(crate) progress: bool,
    /// The spin detector's record of this channel's recent dispatches.
    pub(crate) watch: SpinWatch,
}

impl Channel {
    pub(crate) fn new(fd: OwnedFd, token: Token, interest: Interest) -> Channel {
        Channel {
            fd,
            token,
            interest,
            registered: interest,
            ready: Ready::from_bits(0),
            removed: false,
            sole: false,
            progress: false,
            watch: SpinWatch::default(),
        }
    }

    /// The readiness the kernel reported for the event being dispatched (empty when the
    /// channel is reached outside dispatch, through [`EventLoop::with_channel`]). An
    /// edge-triggered reader that stops before `EAGAIN` (after a short read, say) must
    /// check [`Ready::is_read_hup`] here: the peer's half-close may already be in, and
    /// no further edge will report it.
    ///
    /// [`EventLoop::with_channel`]: crate::EventLoop::with_channel
    pub fn ready(&self) -> Ready {
        self.ready
    }

    /// The descriptor, for reading, writing and socket options.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Declares that no other descriptor refers to this channel's open file (it was not
    /// duplicated, and is not shared with another process): closing it then removes it
    /// from epoll, so removing the channel skips the `EPOLL_CTL_DEL` system call (one per
    /// connection saved on a server with many short connections).
    ///
    /// Declare it only when it is true. If a duplicate did exist, the registration would
    /// outlive the channel until the duplicate closed: its events would carry a token the
    /// loop no longer knows and be ignored, but a level-triggered one would keep waking
    /// the loop. (A child process between `fork` and `exec` briefly holds such duplicates:
    /// descriptors are close-on-exec, so that window ends at its `exec`.)
    pub fn set_sole_descriptor(&mut self) {
        self.sole = true;
    }

    /// Tells the loop's spin detector that this event got something done (bytes moved, a
    /// connection accepted, a signal read). A channel dispatched with the same readiness
    /// [`HealthConfig::spin_threshold`](crate::HealthConfig) times in a row, the loop never
    /// sleeping in between, without progress is reported as a spin (a level-triggered
    /// readiness nobody consumes looks exactly like that). Changing the interest or
    /// removing the channel counts as progress too. Once a handler has called it, its word
    /// is taken; for a handler that never does, the detector checks before it reports that
    /// the socket's queues did not move either (`FIONREAD`, `SIOCOUTQ`) and that the loop's
    /// thread kept its CPU during the handler, so a busy stream is not mistaken for a spin. It costs one store.
    pub fn progressed(&mut self) {
        self.progress = true;
    }

    /// This channel's token.
    pub fn token(&self) -> Token {
        self.token
    }

    /// The interest the channel asks for (applied when control returns to the loop).
    pub fn interest(&self) -> Interest {
        self.interest
    }

    /// Replaces the whole interest (readable, writable, edge). Not one-shot: the loop
    /// re-registers a channel only when its interest changes, so a one-shot channel would
    /// be reported once and then never again.
    pub fn set_interest(&mut self, interest: Interest) {
        self.interest = interest;
    }

    /// Asks for readable events.
    pub fn enable_reading(&mut self) {
        self.interest = self.interest.add(Interest::READABLE);
    }

    /// Stops asking for readable events.
    pub fn disable_reading(&mut self) {
        self.interest = self.interest.remove(Interest::READABLE);
    }

    /// Asks for writable events (do this when a write hit `EAGAIN`).
    pub fn enable_writing(&mut self) {
        self.interest = self.interest.add(Interest::WRITABLE);
    }

    /// Stops asking for writable events (do this when the output is drained, or the
    /// loop would wake for every writable socket).
    pub fn disable_writing(&mut self) {
        self.interest = self.interest.remove(Interest::WRITABLE);
    }

    /// Stops asking for reads and writes. Errors and hang-ups are still reported: the
    /// kernel always reports those.
    pub fn disable_all(&mut self) {
        self.interest = self
            .interest
            .remove(Interest::READABLE)
            .remove(Interest::WRITABLE);
    }

    /// Switches between edge-triggered (`true`) and level-triggered (`false`) reporting.
    pub fn set_edge_triggered(&mut self, edge: bool) {
        self.interest = if edge {
            self.interest.add(Interest::EDGE)
        } else {
            self.interest.remove(Interest::EDGE)
        };
    }

    /// Whether readable events are asked for.
    pub fn is_reading(&self) -> bool {
        self.interest.is_readable()
    }

    /// Whether writable events are asked for.
    pub fn is_writing(&self) -> bool {
        self.interest.is_writable()
    }

    /// Removes the channel from its loop once control returns to the loop: it is
    /// deregistered, its descriptor closed and its handler dropped.
    pub fn remove(&mut self) {
        self.removed = true;
    }

    /// Whether [`Channel::remove`] was called.
    pub fn is_removed(&self) -> bool {
        self.removed
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("fd", &self.fd)
            .field("token", &self.token)
            .field("interest", &self.interest)
            .field("removed", &self.removed)
            .finish()
    }
}

/// Reacts to the events of one [`Channel`].
///
/// For each ready event the loop calls, in this order and each only if the event carries
/// it: [`handle_error`](Handler::handle_error) (`EPOLLERR`),
/// [`handle_close`](Handler::handle_close) (hang-up without "readable"),
/// [`handle_read`](Handler::handle_read) (readable, including the peer's half-close), and
/// [`handle_write`](Handler::handle_write) (writable). If a step removes the channel, the
/// later steps are skipped. Every method gets the loop (`&mut EventLoop`: register other
/// channels, add timers, queue work, quit) and the channel; the handler itself is taken out
/// of the loop for the duration of the call, so there is no aliasing and no `RefCell`.
///
/// The default methods do nothing. A handler is called by whichever thread runs its loop
/// (one at a time), so it must be `Send`. Implementors can be found again by token and type with
/// [`EventLoop::with_handler`].
pub trait Handler: Any + Send {
    /// The descriptor is readable, or the peer shut down its writing half.
    fn handle_read(&mut self, lp: &mut EventLoop, channel: &mut Channel) {
        let _ = (lp, channel);
    }
    /// The descriptor is writable.
    fn handle_write(&mut self, lp: &mut EventLoop, channel: &mut Channel) {
        let _ = (lp, channel);
    }
    /// The descriptor is hung up (`EPOLLHUP`) and "readable" was not reported with it.
    ///
    /// That does **not** prove nothing is left to read: the kernel reports hang-ups and
    /// errors whatever the interest, but "readable" only when it is asked for. A channel
    /// that is not reading (paused) may still have the peer's last bytes in its receive
    /// queue; a handler that wants them keeps the descriptor and reads once it resumes.
    /// A level-triggered registration is reported hung up on every wait: switch it to
    /// edge-triggered (or remove it) while it waits.
    fn handle_close(&mut self, lp: &mut EventLoop, channel: &mut Channel) {
        let _ = (lp, channel);
    }
    /// An error is pending on the descriptor (read it with `duo_sys::take_socket_error`).
    fn handle_error(&mut self, lp: &mut EventLoop, channel: &mut Channel) {
        let _ = (lp, channel);
    }
    /// What this handler serves, for the loop's reports (a stall names the callback that
    /// ran too long): a connection's name, say. Called only to write such a report (a
    /// label that panics is caught, and the report names it so). `None` by default.
    fn label(&self) -> Option<String> {
        None
    }
}

/// A callback of an [`FnHandler`].
type Callback = Box<dyn FnMut(&mut EventLoop, &mut Channel) + Send>;

/// A [`Handler`] made of closures, muduo's `Channel::setReadCallback` style.
///
/// ```
/// use duo_reactor::{EventLoop, FnHandler};
/// use duo_sys::Interest;
/// use std::os::unix::net::UnixStream;
///
/// let mut lp = EventLoop::new()?;
/// let (a, b) = UnixStream::pair()?;
/// b.set_nonblocking(true)?;
/// let handler = FnHandler::new().on_read(|lp, ch| {
///     let mut buf = [0u8; 16];
///     let n = duo_sys::readv(ch.fd(), &mut [std::io::IoSliceMut::new(&mut buf)]).unwrap();
///     assert_eq!(&buf[..n], b"hi");
///     ch.remove();
///     lp.quit();
/// });
/// lp.add_channel(b, Interest::READABLE, handler)?;
/// std::io::Write::write_all(&mut &a, b"hi")?;
/// lp.run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Default)]
pub struct FnHandler {
    read: Option<Callback>,
    write: Option<Callback>,
    close: Option<Callback>,
    error: Option<Callback>,
}

impl FnHandler {
    /// A handler that ignores every event until callbacks are set.
    pub fn new() -> FnHandler {
        FnHandler::default()
    }
    /// Sets the read callback.
    pub fn on_read(mut self, f: impl FnMut(&mut EventLoop, &mut Channel) + Send + 'static) -> Self {
        self.read = Some(Box::new(f));
        self
    }
    /// Sets the write callback.
    pub fn on_write(
        mut self,
        f: impl FnMut(&mut EventLoop, &mut Channel) + Send + 'static,
    ) -> Self {
        self.write = Some(Box::new(f));
        self
    }
    /// Sets the close (hang-up) callback.
    pub fn on_close(
        mut self,
        f: impl FnMut(&mut EventLoop, &mut Channel) + Send + 'static,
    ) -> Self {
        self.close = Some(Box::new(f));
        self
    }
    /// Sets the error callback.
    pub fn on_error(
        mut self,
        f: impl FnMut(&mut EventLoop, &mut Channel) + Send + 'static,
    ) -> Self {
        self.error = Some(Box::new(f));
        self
    }
}

impl Handler for FnHandler {
    fn handle_read(&mut self, lp: &mut EventLoop, channel: &mut Channel) {
        if let Some(f) = &mut self.read {
            f(lp, channel);
        }
    }
    fn handle_write(&mut self, lp: &mut EventLoop, channel: &mut Channel) {
        if let Some(f) = &mut self.write {
            f(lp, channel);
        }
    }
    fn handle_close(&mut self, lp: &mut EventLoop, channel: &mut Channel) {
        if let Some(f) = &mut self.close {
            f(lp, channel);
        }
    }
    fn handle_error(&mut self, lp: &mut EventLoop, channel: &mut Channel) {
        if let Some(f) = &mut self.error {
            f(lp, channel);
        }
    }
}

impl fmt::Debug for FnHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnHandler")
            .field("read", &self.read.is_some())
            .field("write", &self.write.is_some())
            .field("close", &self.close.is_some())
            .field("error", &self.error.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection of every loop holds a channel, so its size is part of what an
    /// idle connection costs (duo's target: at most 0.5 KiB of user space per connection,
    /// measured by `cargo xtask bench --only idle`). Grow it knowingly: this fails first.
    #[test]
    fn a_channel_stays_small() {
        assert!(
            std::mem::size_of::<Channel>() <= 56,
            "Channel is {} bytes",
            std::mem::size_of::<Channel>()
        );
        assert!(
            std::mem::size_of::<SpinWatch>() <= 28,
            "SpinWatch is {} bytes",
            std::mem::size_of::<SpinWatch>()
        );
    }
}
