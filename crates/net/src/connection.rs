//! [`TcpConnection`]: one TCP connection, its thread-safe handle and its loop-side state.
//!
//! A connection lives in two halves:
//! - the **loop side** ([`Conn`], a [`Handler`] registered with the connection's loop) owns
//!   the socket, the [`InputBuffer`], the [`OutputBuffer`] and the flags of the I/O state
//!   machine; only the loop thread touches it, so the hot path takes no lock;
//! - the **handle** ([`TcpConnection`], `Send + Sync + Clone`) holds what any thread may read
//!   (id, addresses, atomic state, user context) plus the loop's handle and the channel's
//!   token. Its methods queue a function onto the loop that looks the token up again, so a
//!   handle that outlives its connection only ever finds nothing: sending on it is a no-op
//!   that reports the connection closed, never a write to a reused descriptor.
//!
//! # What a close keeps
//!
//! Every byte the kernel accepted from the peer reaches the message callback before the
//! connection closes because of the peer (its EOF, a hang-up, a reset or another socket
//! error), whether reading was active or paused at the time: a connection whose reading is
//! paused when the peer goes away keeps the unread input in the kernel until reading
//! resumes, then delivers it, then closes. Output is delivered up to the peer's end: once
//! the peer is gone (hang-up, reset, failed write) nothing more can be sent and what is
//! still queued is dropped. Closes the application or a limit decides ([`CloseReason`])
//! drop what is unread and unsent at that moment, by design.

use std::any::{type_name, Any};
use std::fmt;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use duo_buffer::{BufferError, InputBuffer, OutputBuffer, ReadOutcome};
use duo_reactor::{Channel, EventLoop, Handler, Interest, LoopHandle, Token};
use parking_lot::Mutex;

use crate::callbacks::Callbacks;
use crate::idle::IdleWheels;
use crate::options::{Backpressure, ConnOptions, OutputLimit};
use crate::stats::IoCounters;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnState {
    /// Created, not yet registered with its loop.
    Connecting = 0,
    /// Open in both directions.
    Connected = 1,
    /// Closing: a shutdown was requested or the peer half-closed; the output buffer is
    /// being drained.
    Disconnecting = 2,
    /// Closed; the handle is inert.
    Disconnected = 3,
}

impl ConnState {
    fn from_u8(v: u8) -> ConnState {
        match v {
            0 => ConnState::Connecting,
            1 => ConnState::Connected,
            2 => ConnState::Disconnecting,
            _ => ConnState::Disconnected,
        }
    }
}

/// Why a connection closed ([`TcpConnection::close_reason`]); logged with each connection's
/// "down" line at `debug` level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer ended the connection (end of stream), after everything it sent was
    /// delivered to the message callback.
    Peer,
    /// A socket error ended it (`ConnectionReset` when the peer reset it, `TimedOut`, a
    /// failed write, ...). What the peer sent before the error was still delivered.
    Error(io::ErrorKind),
    /// Nothing arrived within the idle timeout.
    Idle,
    /// The application closed it ([`force_close`](TcpConnection::force_close), a
    /// completed [`close_after_flush`](TcpConnection::close_after_flush), a client's
    /// `stop`).
    User,
    /// The server stopped, or its graceful shutdown's grace period ended.
    Shutdown,
    /// The peer sent more than the input limit without the message callback consuming it.
    InputTooLarge,
    /// The output buffer passed the connection's [`OutputLimit`] (policy `Close`).
    OutputLimit,
    /// The buffer pool could not provide memory for input or output.
    OutOfMemory,
    /// A callback of the application panicked.
    Panic,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Peer => f.write_str("closed by the peer"),
            CloseReason::Error(kind) => write!(f, "socket error: {kind}"),
            CloseReason::Idle => f.write_str("idle timeout"),
            CloseReason::User => f.write_str("closed by the application"),
            CloseReason::Shutdown => f.write_str("server shutdown"),
            CloseReason::InputTooLarge => f.write_str("input limit exceeded"),
            CloseReason::OutputLimit => f.write_str("output limit exceeded"),
            CloseReason::OutOfMemory => f.write_str("buffer memory exhausted"),
            CloseReason::Panic => f.write_str("a callback panicked"),
        }
    }
}

/// The connection is closed (or its loop is gone); nothing was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connection is closed")]
pub struct ConnectionClosed;

/// Why [`TcpConnection::with_ctx`] could not reach a connection at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CtxUnavailable {
    /// The connection is closed (or not yet established).
    #[error("connection is closed")]
    Closed,
    /// The connection belongs to another loop (thread): use a queued method
    /// ([`TcpConnection::queue_in_loop`], [`TcpConnection::send`]) instead.
    #[error("connection lives on another loop")]
    OtherLoop,
    /// One of the connection's own callbacks is running further up this thread's stack
    /// (it holds the connection's state): act through the [`ConnCtx`] that callback was
    /// given, or a queued method.
    #[error("a callback of this connection is running; use its ConnCtx")]
    Busy,
}

/// The connection's context is not what was asked for ([`TcpConnection::with_context`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// No context is set (or it was taken).
    #[error("connection has no context (expected a {expected})")]
    Empty {
        /// The type asked for.
        expected: &'static str,
    },
    /// The context is of another type.
    #[error("connection context is a {found}, not a {expected}")]
    WrongType {
        /// The type asked for.
        expected: &'static str,
        /// The type stored.
        found: &'static str,
    },
}

/// Process-wide origin of the activity clock (an `Instant` cannot be stored atomically).
fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    ms_since_base(Instant::now())
}

fn ms_since_base(at: Instant) -> u64 {
    at.saturating_duration_since(clock_base()).as_millis() as u64
}

/// A user value stored with a connection. Its type's name comes from the vtable, so the
/// box stays two words (an idle connection pays nothing for clear errors).
trait ContextValue: Any + Send {
    fn type_name(&self) -> &'static str;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<T: Any + Send> ContextValue for T {
    fn type_name(&self) -> &'static str {
        type_name::<T>()
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

type Context = Box<dyn ContextValue>;

/// What any thread may read about a connection.
struct Shared {
    id: u64,
    /// The server's or client's name, shared by all its connections.
    owner: Arc<str>,
    peer: SocketAddr,
    local: SocketAddr,
    state: AtomicU8,
    /// Reading paused by the application (set at once by any thread; the loop applies it
    /// to the channel before its next read).
    read_paused: AtomicBool,
    lp: LoopHandle,
    token: OnceLock<Token>,
    /// Set once, when the connection closes (a one-byte lock and a one-byte value: the
    /// handle stays as small as before close reasons existed).
    close_reason: Mutex<Option<CloseReason>>,
    context: Mutex<Option<Context>>,
    last_activity_ms: AtomicU64,
}

/// A TCP connection, as seen from any thread: a cheap `Clone + Send + Sync` handle.
///
/// # Thread safety
///
/// Every method is safe from any thread. Those that act on the socket ([`send`],
/// [`shutdown`], [`force_close`], [`set_tcp_nodelay`], ...) queue a function onto the
/// connection's loop; they return at once and the action happens on the loop, in the
/// order the calls were made. On a closed connection they return [`ConnectionClosed`] (or
/// the queued function finds the connection gone and does nothing). Inside a callback of
/// this connection, prefer the [`ConnCtx`] the callback receives: it acts immediately, in
/// particular `ConnCtx::send` writes straight to the socket when nothing is queued.
///
/// # Acting on another connection of the same loop at once
///
/// A relay or a proxy moves bytes from one connection to another. When both live on the
/// same loop (a [`TcpClient`](crate::TcpClient) connected from a server callback lives on
/// that callback's loop), [`with_ctx`](TcpConnection::with_ctx) gives the other
/// connection's [`ConnCtx`] right away, muduo's `runInLoop` semantics: the bytes are
/// written or buffered before the call returns, and its output length is exact. The
/// queued methods would instead act after the current batch of events. Mixing the two for
/// the same connection can reorder data; keep to one.
///
/// [`stop_reading`](TcpConnection::stop_reading) takes effect at once from any thread,
/// even in the middle of a large read (only a message callback the loop had already
/// decided to run may still start).
///
/// [`send`]: TcpConnection::send
/// [`shutdown`]: TcpConnection::shutdown
/// [`force_close`]: TcpConnection::force_close
/// [`set_tcp_nodelay`]: TcpConnection::set_tcp_nodelay
#[derive(Clone)]
pub struct TcpConnection {
    shared: Arc<Shared>,
}

impl TcpConnection {
    pub(crate) fn new(
        id: u64,
        owner: Arc<str>,
        peer: SocketAddr,
        local: SocketAddr,
        lp: LoopHandle,
    ) -> TcpConnection {
        TcpConnection {
            shared: Arc::new(Shared {
                id,
                owner,
                peer,
                local,
                state: AtomicU8::new(ConnState::Connecting as u8),
                read_paused: AtomicBool::new(false),
                lp,
                token: OnceLock::new(),
                close_reason: Mutex::new(None),
                context: Mutex::new(None),
                last_activity_ms: AtomicU64::new(now_ms()),
            }),
        }
    }

    /// A number unique among the connections of its server or client.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// A readable name for logs, `{server}-{peer}#{id}` when displayed (formatted on
    /// demand: a connection does not carry a string of its own).
    pub fn name(&self) -> ConnName<'_> {
        ConnName(&self.shared)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }

    /// Our side's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// The current state.
    pub fn state(&self) -> ConnState {
        ConnState::from_u8(self.shared.state.load(Ordering::Acquire))
    }

    fn set_state(&self, s: ConnState) {
        self.shared.state.store(s as u8, Ordering::Release);
    }

    /// Whether the connection is open in both directions.
    pub fn is_connected(&self) -> bool {
        self.state() == ConnState::Connected
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.state() == ConnState::Disconnected
    }

    /// Why the connection closed; `None` while it is open. Set before the "down" and close
    /// callbacks run.
    pub fn close_reason(&self) -> Option<CloseReason> {
        *self.shared.close_reason.lock()
    }

    /// The loop that owns the connection.
    pub fn loop_handle(&self) -> &LoopHandle {
        &self.shared.lp
    }

    /// When bytes last arrived (or the connection was opened).
    pub fn last_activity(&self) -> Instant {
        clock_base() + Duration::from_millis(self.shared.last_activity_ms.load(Ordering::Relaxed))
    }

    /// Stores a user value with the connection (a session, a parser state, the other
    /// connection of a relay), replacing the previous one.
    pub fn set_context<T: Any + Send>(&self, value: T) {
        *self.shared.context.lock() = Some(Box::new(value));
    }

    /// Runs `f` on the context, which must be a `T`.
    ///
    /// # Errors
    ///
    /// [`ContextError::Empty`] if no context is set, [`ContextError::WrongType`] (naming
    /// both types) if it is another type; `f` does not run then.
    ///
    /// The context's lock is held during `f`: keep it short, and do not call
    /// `with_context` of the same connection inside it.
    ///
    /// ```
    /// # use duo_net::{TcpConnection, ContextError};
    /// # fn demo(conn: &TcpConnection) {
    /// struct Session { user: Option<String> }
    /// conn.set_context(Session { user: None });
    /// let user: Result<Option<String>, ContextError> =
    ///     conn.with_context(|s: &mut Session| s.user.clone());
    /// assert_eq!(user, Ok(None));
    /// let wrong = conn.with_context(|n: &mut u32| *n);
    /// assert!(matches!(wrong, Err(ContextError::WrongType { expected: "u32", .. })));
    /// # }
    /// ```
    pub fn with_context<T: Any + Send, R>(
        &self,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<R, ContextError> {
        let mut guard = self.shared.context.lock();
        let Some(ctx) = guard.as_deref_mut() else {
            return Err(ContextError::Empty {
                expected: type_name::<T>(),
            });
        };
        let found = <dyn ContextValue>::type_name(ctx);
        match <dyn ContextValue>::as_any_mut(ctx).downcast_mut::<T>() {
            Some(v) => Ok(f(v)),
            None => Err(ContextError::WrongType {
                expected: type_name::<T>(),
                found,
            }),
        }
    }

    /// Removes and returns the context, which must be a `T` (otherwise it stays).
    ///
    /// # Errors
    ///
    /// As [`with_context`](TcpConnection::with_context).
    pub fn take_context<T: Any + Send>(&self) -> Result<T, ContextError> {
        let mut guard = self.shared.context.lock();
        let Some(ctx) = guard.as_deref_mut() else {
            return Err(ContextError::Empty {
                expected: type_name::<T>(),
            });
        };
        if !<dyn ContextValue>::as_any_mut(ctx).is::<T>() {
            return Err(ContextError::WrongType {
                expected: type_name::<T>(),
                found: <dyn ContextValue>::type_name(ctx),
            });
        }
        // Checked above, under the same lock: the downcast cannot fail.
        match guard
            .take()
            .map(|v| <dyn ContextValue>::into_any(v).downcast::<T>())
        {
            Some(Ok(v)) => Ok(*v),
            _ => Err(ContextError::Empty {
                expected: type_name::<T>(),
            }),
        }
    }

    /// Runs `f` with the connection's loop-side context ([`ConnCtx`]) on its loop.
    ///
    /// The function is queued; if the connection has closed by the time it would run, it
    /// is dropped without running. If it panics, the connection is closed (like a panic in
    /// any callback) and the loop goes on. To act at once from a callback on the same
    /// loop, use [`with_ctx`](TcpConnection::with_ctx).
    pub fn queue_in_loop(
        &self,
        f: impl FnOnce(&mut ConnCtx<'_>) + Send + 'static,
    ) -> Result<(), ConnectionClosed> {
        if self.is_closed() {
            return Err(ConnectionClosed);
        }
        let shared = self.shared.clone();
        self.shared
            .lp
            .queue_in_loop(move |lp| {
                let Some(&token) = shared.token.get() else {
                    return;
                };
                lp.with_handler::<Conn, _>(token, |lp, ch, conn| {
                    conn.io.run_guarded(lp, ch, "function run on the loop", f);
                });
            })
            .map_err(|_| ConnectionClosed)
    }

    /// Runs `f` with the connection's [`ConnCtx`] now, from its own loop: `lp` is the
    /// loop of the calling thread (from a callback: [`ConnCtx::event_loop`]). For a relay,
    /// this is how one connection's message callback writes into the other connection and
    /// sees its output length at once.
    ///
    /// A panic in `f` closes this connection (reason [`CloseReason::Panic`]) and returns
    /// [`CtxUnavailable::Closed`].
    ///
    /// # Errors
    ///
    /// [`CtxUnavailable::OtherLoop`] if the connection belongs to another thread's loop,
    /// [`CtxUnavailable::Busy`] if it is the connection whose callback is running (use the
    /// `ConnCtx` that callback has), [`CtxUnavailable::Closed`] if it is closed.
    pub fn with_ctx<R>(
        &self,
        lp: &mut EventLoop,
        f: impl FnOnce(&mut ConnCtx<'_>) -> R,
    ) -> Result<R, CtxUnavailable> {
        if !self.shared.lp.is_in_loop_thread() {
            return Err(CtxUnavailable::OtherLoop);
        }
        let Some(&token) = self.shared.token.get() else {
            return Err(CtxUnavailable::Closed);
        };
        if self.is_closed() {
            return Err(CtxUnavailable::Closed);
        }
        match lp.with_handler::<Conn, _>(token, |lp, ch, conn| {
            conn.io.run_guarded(lp, ch, "function given to with_ctx", f)
        }) {
            Some(Some(r)) => Ok(r),
            Some(None) => Err(CtxUnavailable::Closed),
            None if self.is_closed() => Err(CtxUnavailable::Closed),
            None => Err(CtxUnavailable::Busy),
        }
    }

    /// Sends `data`: queued to the loop, written in call order. Returns
    /// [`ConnectionClosed`] if the connection is already closed (or closing, after a
    /// [`shutdown`](TcpConnection::shutdown)); if it closes before the loop gets to the
    /// data, the data is dropped.
    pub fn send(&self, data: impl Into<Vec<u8>>) -> Result<(), ConnectionClosed> {
        if !self.is_connected() {
            return Err(ConnectionClosed);
        }
        let data = data.into();
        self.queue_in_loop(move |ctx| {
            ctx.send(&data);
        })
    }

    /// Sends a shared message without copying it: the connection's output buffer keeps a
    /// reference to `data` until it is written (see [`ConnCtx::send_shared`]). For one
    /// message sent to many connections.
    pub fn send_shared(&self, data: Arc<[u8]>) -> Result<(), ConnectionClosed> {
        if !self.is_connected() {
            return Err(ConnectionClosed);
        }
        self.queue_in_loop(move |ctx| {
            ctx.send_shared(data);
        })
    }

    /// Half-closes: once everything queued is written, shuts down the writing side. The
    /// connection closes when the peer closes its side.
    pub fn shutdown(&self) -> Result<(), ConnectionClosed> {
        self.queue_in_loop(|ctx| ctx.shutdown())
    }

    /// Closes the connection now, dropping unsent output (reason [`CloseReason::User`]).
    pub fn force_close(&self) -> Result<(), ConnectionClosed> {
        self.close_with(CloseReason::User)
    }

    /// Closes the connection now with `reason`.
    pub(crate) fn close_with(&self, reason: CloseReason) -> Result<(), ConnectionClosed> {
        self.queue_in_loop(move |ctx| ctx.io.close(ctx.lp, ctx.ch, reason))
    }

    /// Stops reading and closes once everything queued before this call is written
    /// (see [`ConnCtx::close_after_flush`]).
    pub fn close_after_flush(&self) -> Result<(), ConnectionClosed> {
        self.queue_in_loop(|ctx| ctx.close_after_flush())
    }

    /// Closes the connection after `delay` unless it closed meanwhile.
    pub fn force_close_after(&self, delay: Duration) -> Result<(), ConnectionClosed> {
        let me = self.clone();
        self.shared
            .lp
            .run_after(delay, move |_| {
                let _ = me.force_close();
            })
            .map(|_| ())
            .map_err(|_| ConnectionClosed)
    }

    /// Sets `TCP_NODELAY` (disables Nagle's algorithm) on the loop; errors are logged.
    pub fn set_tcp_nodelay(&self, on: bool) -> Result<(), ConnectionClosed> {
        self.queue_in_loop(move |ctx| {
            if let Err(e) = ctx.set_tcp_nodelay(on) {
                log::warn!("{}: TCP_NODELAY: {e}", ctx.connection().name());
            }
        })
    }

    /// Enables or disables `SO_KEEPALIVE` on the loop; errors are logged.
    pub fn set_keepalive(&self, on: bool) -> Result<(), ConnectionClosed> {
        self.queue_in_loop(move |ctx| {
            if let Err(e) = ctx.set_keepalive(on) {
                log::warn!("{}: SO_KEEPALIVE: {e}", ctx.connection().name());
            }
        })
    }

    /// Stops reading from the socket: the peer's data (and its end of stream) wait in the
    /// kernel, and the peer is slowed by TCP flow control once the kernel's buffer fills.
    ///
    /// Takes effect at once, from any thread, even in the middle of a large read: once
    /// this returns, the only message callback that may still start is one the loop had
    /// already decided to run at that instant; bytes the loop was reading at that moment
    /// are kept and delivered after [`start_reading`](TcpConnection::start_reading). Nothing is lost while paused: if the peer closes or resets meanwhile,
    /// the connection stays open (for reading only) until
    /// [`start_reading`](TcpConnection::start_reading), delivers what the peer sent, and
    /// then closes. A connection that is never resumed is only closed by an idle timeout
    /// or by the application.
    pub fn stop_reading(&self) -> Result<(), ConnectionClosed> {
        if self.is_closed() {
            return Err(ConnectionClosed);
        }
        self.shared.read_paused.store(true, Ordering::Release);
        self.queue_in_loop(|ctx| ctx.io.sync_reading(ctx.ch))
    }

    /// Resumes reading after [`stop_reading`](TcpConnection::stop_reading) (unless the
    /// connection's own backpressure still holds it).
    pub fn start_reading(&self) -> Result<(), ConnectionClosed> {
        if self.is_closed() {
            return Err(ConnectionClosed);
        }
        self.shared.read_paused.store(false, Ordering::Release);
        self.queue_in_loop(|ctx| ctx.resume_reading())
    }

    /// Whether the application paused reading ([`stop_reading`](TcpConnection::stop_reading)).
    pub fn is_reading_stopped(&self) -> bool {
        self.shared.read_paused.load(Ordering::Acquire)
    }

    pub(crate) fn set_token(&self, token: Token) {
        let _ = self.shared.token.set(token);
    }

    /// Records activity at `at` (the loop's poll time: no clock read per event).
    pub(crate) fn touch(&self, at: Instant) {
        self.shared
            .last_activity_ms
            .store(ms_since_base(at), Ordering::Relaxed);
    }
}

impl fmt::Debug for TcpConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConnection")
            .field("name", &self.name())
            .field("peer", &self.shared.peer)
            .field("local", &self.shared.local)
            .field("state", &self.state())
            .finish()
    }
}

/// A connection's name, from [`TcpConnection::name`]: displays as `{server}-{peer}#{id}`.
#[derive(Clone, Copy)]
pub struct ConnName<'a>(&'a Shared);

impl fmt::Display for ConnName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}#{}", self.0.owner, self.0.peer, self.0.id)
    }
}

impl fmt::Debug for ConnName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Hook run when a connection closes (the server's registry removal).
pub(crate) type RemoveHook = Arc<dyn Fn(&TcpConnection) + Send + Sync>;

/// What a server's connections know of their server: its key and its loops.
pub(crate) struct ServerLink {
    pub(crate) id: u64,
    pub(crate) loops: Vec<LoopHandle>,
}

/// What all connections of one server (or client) on one loop share: one allocation for
/// all of them, one pointer in each.
pub(crate) struct ConnEnv {
    pub(crate) callbacks: Arc<Callbacks>,
    pub(crate) opts: ConnOptions,
    pub(crate) remove_hook: Option<RemoveHook>,
    pub(crate) counters: Arc<IoCounters>,
    /// The owning server (none for a client's connection).
    pub(crate) server: Option<Arc<ServerLink>>,
}

/// The open connections of one server, on all its loops: for a broadcast, or anything
/// else done to every connection. From [`ServerHandle::connections`] or, inside a
/// callback, [`ConnCtx::server_connections`]. `Clone + Send + Sync`.
///
/// [`ServerHandle::connections`]: crate::ServerHandle::connections
#[derive(Clone)]
pub struct ServerConnections {
    link: Arc<ServerLink>,
}

impl ServerConnections {
    pub(crate) fn new(link: Arc<ServerLink>) -> ServerConnections {
        ServerConnections { link }
    }

    /// Runs `f` on every open connection, on each connection's own loop: one queued
    /// function per loop, which visits that loop's connections in no particular order.
    /// Returns at once. Calls made one after another from one thread reach each
    /// connection in that order, so messages broadcast by one sender arrive in the order
    /// sent. A connection is visited if it is open when the function runs on its loop:
    /// one accepted just now may be registered on its loop a moment after that loop ran
    /// the function, and miss it (order *across* senders, or relative to a connection's
    /// arrival, is not promised). A panic in `f` closes that connection only.
    pub fn for_each(&self, f: impl Fn(&mut ConnCtx<'_>) + Send + Sync + 'static) {
        let f: Arc<dyn Fn(&mut ConnCtx<'_>) + Send + Sync> = Arc::new(f);
        let id = self.link.id;
        for lp in &self.link.loops {
            let f = f.clone();
            let _ = lp.queue_in_loop(move |lp| Conn::for_each_on_loop(lp, id, &*f));
        }
    }

    /// Sends `msg` to every open connection without copying it per connection (see
    /// [`ConnCtx::send_shared`]); each connection's [`OutputLimit`] and
    /// [`Backpressure`] policy apply as to any send.
    ///
    /// ```no_run
    /// # fn demo(server: &duo_net::ServerHandle) {
    /// server.connections().broadcast(&b"the market opens\n"[..]);
    /// # }
    /// ```
    pub fn broadcast(&self, msg: impl Into<Arc<[u8]>>) {
        let msg: Arc<[u8]> = msg.into();
        self.for_each(move |ctx| {
            ctx.send_shared(msg.clone());
        });
    }
}

impl fmt::Debug for ServerConnections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConnections")
            .field("server", &self.link.id)
            .field("loops", &self.link.loops.len())
            .finish()
    }
}

/// The loop side of a connection: the registered channel's handler.
pub(crate) struct Conn {
    input: InputBuffer,
    io: ConnIo,
}

/// The sending direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteSide {
    /// Sends are accepted.
    Open,
    /// We half-closed (`shutdown(SHUT_WR)` done, after the output drained).
    Shut,
    /// The peer can no longer receive (hang-up, socket error, failed write); what was
    /// queued was dropped.
    Gone,
}

/// Everything of the loop side but the input buffer, so a message callback can hold the
/// input buffer and a [`ConnCtx`] at once.
pub(crate) struct ConnIo {
    handle: TcpConnection,
    output: OutputBuffer,
    /// What the connection shares with the other connections of its server on its loop.
    env: Arc<ConnEnv>,
    /// Reading paused because the output buffer is above the high-water mark.
    paused_by_backpressure: bool,
    /// Close (not just half-close) once the output is drained, for this reason.
    close_when_drained: Option<CloseReason>,
    /// Whether we can still send.
    write: WriteSide,
    /// The peer sent EOF (reading is over for good).
    peer_eof: bool,
    /// The socket error that ended the connection, reported as the close reason once the
    /// input still in the kernel has been read.
    error: Option<io::ErrorKind>,
    /// Hung up while reading was paused: registered edge-triggered until reading resumes,
    /// so that a level-triggered loop is not woken again and again by the hang-up.
    parked: bool,
    /// A continuation of reading (the read budget of one event was used up) is queued.
    read_queued: bool,
    /// Bytes were read but not delivered: the application paused reading (from another
    /// thread) while the read was under way. They are delivered when reading resumes.
    held_input: bool,
}

impl Conn {
    /// Registers an accepted (or connected) socket with `lp` and runs the "up" callback.
    pub(crate) fn establish(
        lp: &mut EventLoop,
        socket: socket2::Socket,
        handle: TcpConnection,
        env: Arc<ConnEnv>,
    ) -> io::Result<Token> {
        let mut interest = Interest::READABLE;
        if env.opts.edge_triggered {
            interest |= Interest::EDGE;
        }
        let conn = Conn {
            input: InputBuffer::with_pool(duo_buffer::BufPool::global(), env.opts.max_input),
            io: ConnIo {
                handle: handle.clone(),
                output: OutputBuffer::new(),
                env,
                paused_by_backpressure: false,
                close_when_drained: None,
                write: WriteSide::Open,
                peer_eof: false,
                error: None,
                parked: false,
                read_queued: false,
                held_input: false,
            },
        };
        let hook = conn.io.env.remove_hook.clone();
        let token = match lp.add_channel(socket, interest, conn) {
            Ok(t) => t,
            Err(e) => {
                handle
                    .shared
                    .close_reason
                    .lock()
                    .get_or_insert(CloseReason::Error(e.error.kind()));
                handle.set_state(ConnState::Disconnected);
                if let Some(hook) = hook {
                    hook(&handle);
                }
                return Err(e.error);
            }
        };
        handle.set_token(token);
        handle.set_state(ConnState::Connected);
        log::debug!("{}: up", handle.name());
        lp.with_handler::<Conn, _>(token, |lp, ch, conn| {
            conn.io.idle_refresh(lp, ch.token());
            let ok = conn.io.guarded("connection callback", |io| {
                if let Some(cb) = &io.env.callbacks.connection {
                    cb(&io.handle);
                }
            });
            if !ok {
                conn.io.close(lp, ch, CloseReason::Panic);
            } else {
                // The "up" callback may have paused reading through the handle.
                conn.io.sync_reading(ch);
            }
        });
        Ok(token)
    }

    /// Closes the connection behind `handle` now with `reason`, if it lives on `lp` and
    /// is open.
    pub(crate) fn close_now(lp: &mut EventLoop, handle: &TcpConnection, reason: CloseReason) {
        if let Some(&token) = handle.shared.token.get() {
            lp.with_handler::<Conn, _>(token, |lp, ch, conn| conn.io.close(lp, ch, reason));
        }
    }

    /// Runs `f` on each open connection of `server` on this loop. The loop's channels are
    /// visited (no per-connection bookkeeping: an idle connection costs nothing more, and
    /// opening or closing one costs no set insertion or removal).
    fn for_each_on_loop(
        lp: &mut EventLoop,
        server: u64,
        f: &(dyn Fn(&mut ConnCtx<'_>) + Send + Sync),
    ) {
        for token in lp.channel_tokens() {
            lp.with_handler::<Conn, _>(token, |lp, ch, conn| {
                let ours = conn.io.env.server.as_ref().is_some_and(|s| s.id == server);
                if ours && conn.io.state() != ConnState::Disconnected {
                    conn.io
                        .run_guarded(lp, ch, "function run on every connection", f);
                }
            });
        }
    }

    /// Reads what the socket has, delivering it to the message callback, within the read
    /// budget of one event. `until_eagain`: a short read does not prove the socket drained
    /// (the peer's FIN may have come with the data, or this is a continuation run outside
    /// an event), so read on until `EAGAIN` or end of stream.
    fn read_ready(&mut self, lp: &mut EventLoop, ch: &mut Channel, until_eagain: bool) {
        let mut budget = self.io.env.opts.read_budget;
        if !self.io.wants_reading() {
            self.io.sync_reading(ch);
            return;
        }
        if std::mem::take(&mut self.io.held_input) && !self.deliver_and_settle(lp, ch) {
            return;
        }
        loop {
            if !self.io.wants_reading() {
                self.io.sync_reading(ch);
                return;
            }
            match self.input.recv_from(ch.fd()) {
                Ok(ReadOutcome::Data { len, drained }) => {
                    self.io.env.counters.add_in(len);
                    self.io.handle.touch(lp.poll_time());
                    if self.io.env.opts.idle_refresh_on_read {
                        self.io.idle_refresh(lp, ch.token());
                    }
                    if self.io.user_paused() {
                        // Paused (from another thread) while we were reading: no callback
                        // starts after `stop_reading` returned. Keep the bytes for later.
                        self.hold_input(lp, ch);
                        return;
                    }
                    if !self.deliver_and_settle(lp, ch) || !self.io.env.opts.edge_triggered {
                        return;
                    }
                    // A short read means the socket is drained, and saves the read that
                    // would return EAGAIN, unless the peer's FIN came with the data: then
                    // no new edge will report it, so read on to see the EOF now.
                    if drained && !until_eagain {
                        return;
                    }
                    budget = budget.saturating_sub(len);
                    if budget == 0 {
                        // Enough for one event: serve the others, then read on.
                        self.queue_more_reading(lp, ch);
                        return;
                    }
                }
                Ok(ReadOutcome::WouldBlock) => return,
                Ok(ReadOutcome::Eof) => {
                    self.peer_finished(lp, ch);
                    return;
                }
                Err(BufferError::Full { limit }) => {
                    log::warn!(
                        "{}: {limit} bytes of input not consumed by the message callback; closing",
                        self.io.handle.name()
                    );
                    self.io.close(lp, ch, CloseReason::InputTooLarge);
                    return;
                }
                Err(BufferError::Io(e)) => {
                    // The kernel reports an error only once the receive queue is empty:
                    // nothing the peer sent is left behind.
                    log::debug!("{}: read: {e}", self.io.handle.name());
                    let kind = self.io.error.unwrap_or(e.kind());
                    self.io.close(lp, ch, CloseReason::Error(kind));
                    return;
                }
                Err(e) => {
                    log::error!("{}: read: {e}; closing", self.io.handle.name());
                    self.io.close(lp, ch, CloseReason::OutOfMemory);
                    return;
                }
            }
        }
    }

    /// Keeps what was just read in the input buffer, undelivered, until reading resumes.
    fn hold_input(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        self.io.held_input = true;
        if self.settle_input(lp, ch) {
            self.io.sync_reading(ch);
        }
    }

    /// Hands the input to the message callback, keeps what it left, and applies a pause it
    /// asked for (through its `ConnCtx` or a handle). True if the connection is still open
    /// and reading.
    fn deliver_and_settle(&mut self, lp: &mut EventLoop, ch: &mut Channel) -> bool {
        self.deliver(lp, ch);
        if !self.settle_input(lp, ch)
            || ch.is_removed()
            || self.io.state() == ConnState::Disconnected
        {
            return false;
        }
        self.io.sync_reading(ch);
        ch.is_reading()
    }

    /// Moves bytes a callback left in the thread's read area to a block of their own
    /// (usually there are none: nothing is copied); false if that failed and the
    /// connection was closed.
    fn settle_input(&mut self, lp: &mut EventLoop, ch: &mut Channel) -> bool {
        match self.input.settle() {
            Ok(()) => true,
            Err(e) => {
                log::error!(
                    "{}: cannot keep unparsed input: {e}; closing",
                    self.io.handle.name()
                );
                self.io.close(lp, ch, CloseReason::OutOfMemory);
                false
            }
        }
    }

    /// Queues the rest of an edge-triggered read for after the other events of this
    /// iteration (no further edge would report what is left).
    fn queue_more_reading(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        if std::mem::replace(&mut self.io.read_queued, true) {
            return;
        }
        let token = ch.token();
        lp.queue_in_loop(move |lp| {
            lp.with_handler::<Conn, _>(token, |lp, ch, conn| {
                conn.io.read_queued = false;
                conn.read_ready(lp, ch, true);
            });
        });
    }

    /// The peer sent EOF, after everything it sent has been delivered.
    fn peer_finished(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        self.io.peer_eof = true;
        ch.disable_reading();
        if self.io.write != WriteSide::Open {
            // Both directions are done.
            let reason = self.io.peer_reason();
            self.io.close(lp, ch, reason);
            return;
        }
        let env = self.io.env.clone();
        match env.callbacks.half_close.as_deref() {
            // The application finishes its work and closes when it is done.
            Some(cb) => {
                self.io
                    .run_guarded(lp, ch, "half-close callback", |ctx| cb(ctx));
            }
            None => self.io.close_after_flush(lp, ch, CloseReason::Peer),
        }
    }

    /// The idle wheel found no traffic for the timeout.
    pub(crate) fn idle_timeout(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        log::info!("{}: idle timeout; closing", self.io.handle.name());
        self.io.close(lp, ch, CloseReason::Idle);
    }

    /// Hands the input to the message callback.
    fn deliver(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        // A clone of this loop's `ConnEnv` pointer (a cache line only this thread touches),
        // not of the callback's, whose count every I/O thread would bounce.
        let env = self.io.env.clone();
        let Some(cb) = env.callbacks.message.as_deref() else {
            // Nobody wants the bytes: drop them rather than let the buffer fill.
            self.input.consume_all();
            return;
        };
        let input = &mut self.input;
        self.io
            .run_guarded(lp, ch, "message callback", |ctx| cb(ctx, input));
    }
}

impl Handler for Conn {
    fn handle_read(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        let until_eagain = ch.ready().is_read_hup() || ch.ready().is_hup();
        self.read_ready(lp, ch, until_eagain);
    }

    fn handle_write(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        self.io.flush(lp, ch);
    }

    /// A hang-up without "readable": for TCP this happens only while readable is not
    /// asked for (reading paused), so the receive queue may still hold the peer's last
    /// bytes. Nothing more can be sent; what is left to read is kept until reading resumes.
    fn handle_close(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        self.io.write_side_gone(lp, ch);
        if self.io.state() == ConnState::Disconnected {
            return;
        }
        if self.io.peer_eof {
            let reason = self.io.peer_reason();
            self.io.close(lp, ch, reason);
        } else if self.io.wants_reading() {
            self.read_ready(lp, ch, true);
        } else if !self.io.parked {
            log::debug!(
                "{}: peer gone while reading is paused; its last bytes wait for start_reading",
                self.io.handle.name()
            );
            self.io.parked = true;
            ch.set_edge_triggered(true);
        }
    }

    fn handle_error(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        let kind = match duo_sys::take_socket_error(ch.fd()) {
            Ok(Some(e)) => {
                log::debug!("{}: socket error: {e}", self.io.handle.name());
                e.kind()
            }
            Ok(None) => return,
            Err(e) => {
                log::debug!("{}: SO_ERROR: {e}", self.io.handle.name());
                e.kind()
            }
        };
        self.io.error.get_or_insert(kind);
        // A pending socket error ends a TCP connection (a reset, a retransmission or
        // keepalive timeout); the hang-up may be reported with it or just after it (the
        // kernel sets the error first). Nothing more can be sent; the peer's last bytes are
        // read next (readable) or kept until reading resumes (`handle_close`, on the
        // hang-up).
        self.io.write_side_gone(lp, ch);
    }
}

impl ConnIo {
    /// Runs a user callback, catching a panic; false if it panicked (the caller closes).
    fn guarded(&mut self, what: &str, f: impl FnOnce(&mut ConnIo)) -> bool {
        let ok = catch_unwind(AssertUnwindSafe(|| f(self))).is_ok();
        if !ok {
            log::error!(
                "{}: {what} panicked; closing the connection",
                self.handle.name()
            );
        }
        ok
    }

    /// Runs `f` with this connection's [`ConnCtx`], catching a panic: a panicking `f`
    /// closes the connection (reason [`CloseReason::Panic`]) and gives `None`.
    fn run_guarded<R>(
        &mut self,
        lp: &mut EventLoop,
        ch: &mut Channel,
        what: &str,
        f: impl FnOnce(&mut ConnCtx<'_>) -> R,
    ) -> Option<R> {
        let result = {
            let mut ctx = ConnCtx { io: self, ch, lp };
            catch_unwind(AssertUnwindSafe(|| f(&mut ctx)))
        };
        match result {
            Ok(r) => Some(r),
            Err(_) => {
                log::error!(
                    "{}: {what} panicked; closing the connection",
                    self.handle.name()
                );
                self.close(lp, ch, CloseReason::Panic);
                None
            }
        }
    }

    fn idle_refresh(&self, lp: &mut EventLoop, token: Token) {
        if let Some(key) = self.env.opts.idle_key {
            IdleWheels::refresh(lp, key, token);
        }
    }

    fn state(&self) -> ConnState {
        self.handle.state()
    }

    /// The reason for a close the peer caused: its error if there was one.
    fn peer_reason(&self) -> CloseReason {
        self.error.map_or(CloseReason::Peer, CloseReason::Error)
    }

    fn user_paused(&self) -> bool {
        self.handle.shared.read_paused.load(Ordering::Acquire)
    }

    /// Whether the connection should be reading now.
    fn wants_reading(&self) -> bool {
        !self.paused_by_backpressure
            && !self.user_paused()
            && self.close_when_drained.is_none()
            && !self.peer_eof
            && self.state() != ConnState::Disconnected
    }

    /// Makes the channel's read interest match the state (applied by the loop when the
    /// handler returns).
    fn sync_reading(&mut self, ch: &mut Channel) {
        if self.wants_reading() {
            if std::mem::take(&mut self.parked) {
                ch.set_edge_triggered(self.env.opts.edge_triggered);
            }
            // Re-enabling makes epoll re-check readiness, so data (or a hang-up) that
            // arrived while paused is reported even with edge triggering.
            ch.enable_reading();
        } else {
            ch.disable_reading();
        }
    }

    /// The peer can no longer receive: drop the output, stop asking for writability. If
    /// the application was only waiting for the output to drain, close now.
    fn write_side_gone(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        if std::mem::replace(&mut self.write, WriteSide::Gone) == WriteSide::Gone {
            return;
        }
        let unsent = self.output.len();
        if unsent > 0 {
            log::debug!(
                "{}: peer gone with {unsent} bytes unsent; dropped",
                self.handle.name()
            );
            self.output.clear();
        }
        ch.disable_writing();
        if let Some(reason) = self.close_when_drained {
            let reason = self.error.map_or(reason, CloseReason::Error);
            self.close(lp, ch, reason);
            return;
        }
        self.paused_by_backpressure = false;
        self.reading_changed(lp, ch);
    }

    /// Applies the read state to the channel after something may have lifted a pause;
    /// input held back by the pause is delivered right after the current callback (not
    /// from inside it). No epoll event would announce it: those bytes already left the
    /// kernel. Every path that can turn reading back on goes through here.
    fn reading_changed(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        self.sync_reading(ch);
        if self.held_input && self.wants_reading() {
            let token = ch.token();
            lp.queue_in_loop(move |lp| {
                lp.with_handler::<Conn, _>(token, |lp, ch, conn| {
                    if conn.io.held_input {
                        conn.read_ready(lp, ch, true);
                    }
                });
            });
        }
    }

    /// A write failed: the peer is gone (reset, or closed for reading). The input it sent
    /// before is still read; the close follows its end of stream (or the hang-up's event).
    fn write_failed(&mut self, lp: &mut EventLoop, ch: &mut Channel, e: &io::Error) {
        log::debug!("{}: write: {e}", self.handle.name());
        self.error.get_or_insert(e.kind());
        self.write_side_gone(lp, ch);
        if self.peer_eof && self.state() != ConnState::Disconnected {
            let reason = self.peer_reason();
            self.close(lp, ch, reason);
        }
    }

    /// Queues `parts` for sending (or, with `shared`, the one shared message `parts`
    /// views), writing directly when nothing is queued.
    fn send(
        &mut self,
        lp: &mut EventLoop,
        ch: &mut Channel,
        parts: &[&[u8]],
        shared: Option<Arc<[u8]>>,
    ) -> bool {
        if self.state() != ConnState::Connected || self.write != WriteSide::Open {
            return false;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if let Some((limit, policy)) = self.env.opts.output_limit {
            if !self.output.is_empty() && self.output.len() + total > limit {
                match policy {
                    OutputLimit::Close => {
                        log::info!(
                            "{}: {} bytes of output queued (limit {limit}); closing",
                            self.handle.name(),
                            self.output.len()
                        );
                        self.close(lp, ch, CloseReason::OutputLimit);
                    }
                    OutputLimit::Discard => log::trace!(
                        "{}: output limit {limit}: {total} bytes discarded",
                        self.handle.name()
                    ),
                }
                return false;
            }
        }
        let mut written = 0;
        if self.output.is_empty() && !ch.is_writing() {
            // No allocation: up to 8 pieces go out in one call; any further pieces are
            // buffered below like any unwritten rest.
            let mut slices = [IoSlice::new(&[]); 8];
            let count = parts.len().min(slices.len());
            for (slot, part) in slices.iter_mut().zip(parts) {
                *slot = IoSlice::new(part);
            }
            match duo_sys::send_vectored(ch.fd(), &slices[..count]) {
                Ok(n) => {
                    written = n;
                    self.env.counters.add_out(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    self.write_failed(lp, ch, &e);
                    return false;
                }
            }
        }
        if written == total {
            if self.env.callbacks.write_complete.is_some() {
                // Queued, not called: a callback that sends again from write-complete
                // would otherwise recurse without bound.
                let token = ch.token();
                lp.queue_in_loop(move |lp| {
                    lp.with_handler::<Conn, _>(token, |lp, ch, conn| {
                        // A later send may have left output queued meanwhile: then the
                        // flush that drains it reports completion, not this notice.
                        if conn.io.output.is_empty() {
                            conn.io.write_complete(lp, ch)
                        }
                    });
                });
            }
            return true;
        }
        let before = self.output.len();
        if let Some(data) = shared {
            self.output.push_shared(data, written);
        } else {
            let mut skip = written;
            for part in parts {
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                if let Err(e) = self.output.append(&part[skip..]) {
                    log::error!("{}: cannot buffer output: {e}; closing", self.handle.name());
                    self.close(lp, ch, CloseReason::OutOfMemory);
                    return false;
                }
                skip = 0;
            }
        }
        ch.enable_writing();
        let after = self.output.len();
        let hwm = self.env.opts.high_water;
        if after > hwm
            && !self.paused_by_backpressure
            && self.env.opts.backpressure == Backpressure::PauseReading
        {
            // Backpressure: stop reading until the peer drains what we owe it.
            self.paused_by_backpressure = true;
            ch.disable_reading();
        }
        if before <= hwm && after > hwm {
            let env = self.env.clone();
            if let Some(cb) = env.callbacks.high_water_mark.as_deref() {
                if self
                    .run_guarded(lp, ch, "high-water-mark callback", |ctx| cb(ctx, after))
                    .is_none()
                {
                    return false;
                }
            }
        }
        true
    }

    /// Writes as much of the output buffer as the socket takes.
    fn flush(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        if !ch.is_writing() || self.write == WriteSide::Gone {
            return;
        }
        loop {
            match self.output.send_to(ch.fd()) {
                Ok(n) => {
                    self.env.counters.add_out(n);
                    if self.env.opts.idle_refresh_on_read {
                        // A peer still taking queued output (a slow download) is not
                        // idle, even if it sends nothing.
                        self.idle_refresh(lp, ch.token());
                    }
                    if self.output.is_empty() {
                        ch.disable_writing();
                        self.resume_if_drained(lp, ch);
                        self.write_complete(lp, ch);
                        if self.state() == ConnState::Disconnecting {
                            self.finish_disconnect(lp, ch);
                        }
                        return;
                    }
                    self.resume_if_drained(lp, ch);
                    if !self.env.opts.edge_triggered {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.write_failed(lp, ch, &e);
                    return;
                }
            }
        }
    }

    fn resume_if_drained(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        if self.paused_by_backpressure && self.output.len() <= self.env.opts.low_water {
            self.paused_by_backpressure = false;
            self.reading_changed(lp, ch);
        }
    }

    fn write_complete(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        if self.state() == ConnState::Disconnected {
            return;
        }
        let env = self.env.clone();
        if let Some(cb) = env.callbacks.write_complete.as_deref() {
            self.run_guarded(lp, ch, "write-complete callback", |ctx| cb(ctx));
        }
    }

    /// Stop reading, deliver what we still owe the peer, then close with `reason`.
    fn close_after_flush(&mut self, lp: &mut EventLoop, ch: &mut Channel, reason: CloseReason) {
        if self.state() == ConnState::Disconnected {
            return;
        }
        ch.disable_reading();
        self.close_when_drained.get_or_insert(reason);
        if self.output.is_empty() || self.write == WriteSide::Gone {
            let reason = self.close_when_drained.unwrap_or(reason);
            self.close(lp, ch, reason);
        } else if self.state() == ConnState::Connected {
            self.handle.set_state(ConnState::Disconnecting);
        }
    }

    /// The output is drained while disconnecting: half-close, or close if the peer is done.
    fn finish_disconnect(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        if let Some(reason) = self.close_when_drained {
            self.close(lp, ch, reason);
        } else if self.peer_eof {
            // Nothing more can come from the peer either: both directions are done.
            let reason = self.peer_reason();
            self.close(lp, ch, reason);
        } else if self.write == WriteSide::Open {
            self.write = WriteSide::Shut;
            if let Err(e) = duo_sys::shutdown_write(ch.fd()) {
                log::debug!("{}: shutdown: {e}", self.handle.name());
            }
        }
    }

    fn shutdown(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        if self.state() == ConnState::Connected {
            self.handle.set_state(ConnState::Disconnecting);
            if self.output.is_empty() {
                self.finish_disconnect(lp, ch);
            }
        }
    }

    /// Closes now: deregisters (when the handler returns), runs the "down" callbacks.
    fn close(&mut self, lp: &mut EventLoop, ch: &mut Channel, reason: CloseReason) {
        if self.state() == ConnState::Disconnected {
            return;
        }
        self.handle.shared.close_reason.lock().get_or_insert(reason);
        self.handle.set_state(ConnState::Disconnected);
        ch.disable_all();
        ch.remove();
        let token = ch.token();
        if let Some(key) = self.env.opts.idle_key {
            IdleWheels::forget(lp, key, token);
        }
        let dropped = self.output.len();
        if dropped > 0 {
            log::debug!(
                "{}: down ({reason}), {dropped} bytes unsent",
                self.handle.name()
            );
        } else {
            log::debug!("{}: down ({reason})", self.handle.name());
        }
        // The owner forgets the connection first, so that the "down" callbacks see a
        // consistent owner (a client with no connection, say).
        if let Some(hook) = &self.env.remove_hook {
            hook(&self.handle);
        }
        self.guarded("connection callback", |io| {
            if let Some(cb) = &io.env.callbacks.connection {
                cb(&io.handle);
            }
        });
        self.guarded("close callback", |io| {
            if let Some(cb) = &io.env.callbacks.close {
                cb(&io.handle);
            }
        });
    }
}

/// A connection's loop-side context, given to callbacks (and to
/// [`TcpConnection::queue_in_loop`] and [`TcpConnection::with_ctx`]). Its methods act at
/// once, on the loop thread.
pub struct ConnCtx<'a> {
    io: &'a mut ConnIo,
    ch: &'a mut Channel,
    lp: &'a mut EventLoop,
}

impl ConnCtx<'_> {
    /// The connection's handle (clone it to keep it, for instance for a worker thread).
    pub fn connection(&self) -> &TcpConnection {
        &self.io.handle
    }

    /// Sends `data`: written straight to the socket if nothing is queued, the rest
    /// buffered and written when the socket is writable. False if the data was not
    /// accepted: the connection is closed, half-closed by us, its peer is gone, or the
    /// [`OutputLimit`] refused it.
    pub fn send(&mut self, data: &[u8]) -> bool {
        self.io.send(self.lp, self.ch, &[data], None)
    }

    /// Sends several pieces as one message (a header and a payload, say) with one
    /// vectored write and no copy into a joined buffer.
    pub fn send_parts(&mut self, parts: &[&[u8]]) -> bool {
        self.io.send(self.lp, self.ch, parts, None)
    }

    /// Sends a shared message without copying it: what the socket does not take at once
    /// stays queued as a reference to `data` (one allocation for all the connections a
    /// message is broadcast to). Otherwise as [`send`](ConnCtx::send).
    pub fn send_shared(&mut self, data: Arc<[u8]>) -> bool {
        let view = data.clone();
        self.io.send(self.lp, self.ch, &[&view[..]], Some(data))
    }

    /// Bytes waiting in the output buffer.
    pub fn output_len(&self) -> usize {
        self.io.output.len()
    }

    /// Half-closes after the output drains (see [`TcpConnection::shutdown`]).
    pub fn shutdown(&mut self) {
        self.io.shutdown(self.lp, self.ch);
    }

    /// Closes now, dropping unsent output (reason [`CloseReason::User`]).
    pub fn force_close(&mut self) {
        self.io.close(self.lp, self.ch, CloseReason::User);
    }

    /// Stops reading and closes as soon as the output buffer is written: for ending a
    /// connection after a final reply (an error to a hostile peer, say) without losing
    /// the replies before it, and without waiting for the peer as
    /// [`shutdown`](ConnCtx::shutdown) does.
    pub fn close_after_flush(&mut self) {
        self.io
            .close_after_flush(self.lp, self.ch, CloseReason::User);
    }

    /// The start of a graceful server shutdown for this connection: the shutdown
    /// callback if there is one, else a half-close once the output is written.
    pub(crate) fn begin_shutdown(&mut self) {
        if self.io.state() != ConnState::Connected {
            return;
        }
        let env = self.io.env.clone();
        let Some(cb) = env.callbacks.shutdown.as_deref() else {
            self.shutdown();
            return;
        };
        if catch_unwind(AssertUnwindSafe(|| cb(self))).is_err() {
            log::error!(
                "{}: shutdown callback panicked; closing",
                self.io.handle.name()
            );
            self.io.close(self.lp, self.ch, CloseReason::Panic);
        }
    }

    /// Stops reading from the socket; see [`TcpConnection::stop_reading`] (nothing the
    /// peer sends is lost while paused).
    pub fn stop_reading(&mut self) {
        self.io
            .handle
            .shared
            .read_paused
            .store(true, Ordering::Release);
        self.ch.disable_reading();
    }

    /// Resumes reading (unless backpressure still holds it).
    pub fn start_reading(&mut self) {
        self.io
            .handle
            .shared
            .read_paused
            .store(false, Ordering::Release);
        self.resume_reading();
    }

    /// Applies the read state to the channel (see [`ConnIo::reading_changed`]).
    fn resume_reading(&mut self) {
        self.io.reading_changed(self.lp, self.ch);
    }

    /// Marks the connection active now for the idle timeout. Servers built with
    /// [`ServerBuilder::idle_refresh_on_read(false)`](crate::ServerBuilder::idle_refresh_on_read)
    /// call it when a complete request arrives, so a peer that trickles bytes without
    /// ever finishing one (slowloris) is still evicted.
    pub fn refresh_idle(&mut self) {
        self.io.idle_refresh(self.lp, self.ch.token());
    }

    /// Whether the peer has half-closed (sent EOF); see
    /// [`HalfCloseCallback`](crate::HalfCloseCallback).
    pub fn peer_half_closed(&self) -> bool {
        self.io.peer_eof
    }

    /// Whether reading is paused (by the application or by backpressure).
    pub fn is_reading_paused(&self) -> bool {
        self.io.user_paused() || self.io.paused_by_backpressure
    }

    /// The connections of the server this connection belongs to (`None` for a client's
    /// connection): for a broadcast from inside a callback.
    pub fn server_connections(&self) -> Option<ServerConnections> {
        self.io.env.server.clone().map(ServerConnections::new)
    }

    /// Sets `TCP_NODELAY`.
    pub fn set_tcp_nodelay(&self, on: bool) -> io::Result<()> {
        socket2::SockRef::from(&self.ch.fd()).set_nodelay(on)
    }

    /// Sets `SO_KEEPALIVE`.
    pub fn set_keepalive(&self, on: bool) -> io::Result<()> {
        socket2::SockRef::from(&self.ch.fd()).set_keepalive(on)
    }

    /// The connection's loop: schedule timers, queue work, reach another connection of
    /// the same loop at once ([`TcpConnection::with_ctx`]).
    pub fn event_loop(&mut self) -> &mut EventLoop {
        self.lp
    }
}

impl fmt::Debug for ConnCtx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnCtx")
            .field("connection", &self.io.handle)
            .field("output_len", &self.io.output.len())
            .finish()
    }
}
