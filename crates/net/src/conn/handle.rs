//! [`TcpConnection`]: the handle to a connection that any thread may hold.

use std::any::{type_name, Any};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duo_reactor::{EventLoop, LoopHandle, Token};
use parking_lot::Mutex;

use super::ctx::ConnCtx;
use super::machine::LoopConn;
use crate::close_reason::CloseReason;
use crate::endpoint::Endpoint;
use duo_sys::PeerCredentials;

mod transit;

/// What the TCP-address accessors return on a Unix-domain connection.
const NO_INET: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnState {
    /// Created, not yet registered with its loop.
    Connecting = 0,
    /// Open in both directions.
    Connected = 1,
    /// Closing: the application asked for it ([`shutdown`](TcpConnection::shutdown),
    /// [`close_after_flush`](TcpConnection::close_after_flush), a server's graceful
    /// shutdown) or the peer half-closed and no half-close callback keeps the connection
    /// open; no more sends are accepted, the output buffer is being drained (and, after a
    /// shutdown, our side stays half-closed until the peer closes its side). Or the peer
    /// is gone (a hang-up, a reset, a failed write) and the connection closes once what
    /// the peer sent before has been delivered (at once, unless reading is paused).
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

/// The activity clock: milliseconds of [`duo_sys::monotonic_nanos`] (`CLOCK_MONOTONIC`,
/// the clock of `Instant`), a plain number an atomic can hold.
fn now_ms() -> u64 {
    duo_sys::monotonic_nanos() / 1_000_000
}

/// No token yet: never a channel's (a slab index never has all 32 bits set).
const NO_TOKEN: u64 = u64::MAX;

/// `read_paused`: the application has paused reading.
const PAUSED: u8 = 1;
/// `read_paused`: reading was paused since the loop last looked
/// ([`TcpConnection::take_paused_since`]).
const PAUSED_SINCE: u8 = 2;

/// `send_limit` of a connection without an output limit: sends from other threads are
/// not counted.
const NO_SEND_LIMIT: usize = usize::MAX;

/// A [`TcpConnection`] held weakly ([`TcpConnection::downgrade`]).
pub(crate) struct WeakConnection(std::sync::Weak<ConnShared>);

impl WeakConnection {
    /// The connection, if any handle of it is still alive.
    pub(crate) fn upgrade(&self) -> Option<TcpConnection> {
        self.0.upgrade().map(|shared| TcpConnection { shared })
    }
}

fn token_of(shared: &ConnShared) -> Option<Token> {
    let raw = shared.token.load(Ordering::Acquire);
    (raw != NO_TOKEN).then(|| Token::from_u64(raw))
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

/// The part of a connection every thread may see: identity, state, user context, and
/// where its loop-side half lives (loop and token).
struct ConnShared {
    id: u64,
    /// The server's or client's name, shared by all its connections (a thin pointer:
    /// `Arc<str>` would be 8 bytes more, in every connection).
    owner: Arc<String>,
    peer: Endpoint,
    local: Endpoint,
    /// The peer process's credentials (Unix-domain connections), read once when the
    /// connection was made.
    credentials: Option<PeerCredentials>,
    state: AtomicU8,
    /// Reading paused by the application ([`PAUSED`], set at once by any thread; the loop
    /// applies it to the channel before its next read), and whether it was paused since
    /// the loop last looked ([`PAUSED_SINCE`]: a message callback that paused and left
    /// input has it delivered again on resuming, even when another thread resumed reading
    /// before the callback returned).
    read_paused: AtomicU8,
    /// A function was queued for the connection from its own loop's thread (by its "up"
    /// callback, say): a TLS connection delivers the input that came with its
    /// handshake after such functions (`conn/tls.rs`).
    queued_on_loop: AtomicBool,
    lp: LoopHandle,
    /// The channel's token on `lp` ([`Token::as_u64`]), [`NO_TOKEN`] until registered.
    token: AtomicU64,
    /// Set once, when the connection closes (a one-byte lock and a one-byte value: the
    /// handle stays as small as before close reasons existed).
    close_reason: Mutex<Option<CloseReason>>,
    context: Mutex<Option<Context>>,
    last_activity_ms: AtomicU64,
    /// The connection's output limit as sends from other threads see it (bytes, with
    /// `LIMIT_CLOSES` (`handle/transit.rs`) for the policy), [`NO_SEND_LIMIT`] without one: set when the
    /// connection is registered.
    send_limit: AtomicUsize,
    /// Bytes sent from other threads that the loop has not taken into the output buffer
    /// yet (counted only under an output limit): what such sends may add is bounded by
    /// the limit, as the output buffer is.
    in_transit: AtomicUsize,
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
    shared: Arc<ConnShared>,
}

impl TcpConnection {
    pub(crate) fn new(
        id: u64,
        owner: Arc<String>,
        peer: Endpoint,
        local: Endpoint,
        credentials: Option<PeerCredentials>,
        lp: LoopHandle,
    ) -> TcpConnection {
        TcpConnection {
            shared: Arc::new(ConnShared {
                id,
                owner,
                peer,
                local,
                credentials,
                state: AtomicU8::new(ConnState::Connecting as u8),
                read_paused: AtomicU8::new(0),
                queued_on_loop: AtomicBool::new(false),
                lp,
                token: AtomicU64::new(NO_TOKEN),
                close_reason: Mutex::new(None),
                context: Mutex::new(None),
                last_activity_ms: AtomicU64::new(now_ms()),
                send_limit: AtomicUsize::new(NO_SEND_LIMIT),
                in_transit: AtomicUsize::new(0),
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

    /// The peer's TCP address. A Unix-domain connection has none: this returns the
    /// unspecified address `0.0.0.0:0` for it; [`peer_endpoint`](Self::peer_endpoint)
    /// answers for every transport.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer.as_inet().unwrap_or(NO_INET)
    }

    /// Our side's TCP address (`0.0.0.0:0` on a Unix-domain connection; see
    /// [`local_endpoint`](Self::local_endpoint)).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local.as_inet().unwrap_or(NO_INET)
    }

    /// The peer's address on any transport: a TCP address, or for a Unix-domain
    /// connection the peer socket's path or name, usually
    /// [`Endpoint::UnixUnnamed`] (a client that did not bind; its
    /// [`peer_credentials`](Self::peer_credentials) say who it is).
    pub fn peer_endpoint(&self) -> &Endpoint {
        &self.shared.peer
    }

    /// Our side's address on any transport (a server's connections: the address it
    /// listens on).
    pub fn local_endpoint(&self) -> &Endpoint {
        &self.shared.local
    }

    /// The peer process's pid, uid and gid on a Unix-domain connection, as the kernel
    /// recorded them when the connection was made (`SO_PEERCRED`, read once then);
    /// `None` on TCP.
    pub fn peer_credentials(&self) -> Option<PeerCredentials> {
        self.shared.credentials
    }

    /// Whether this is a Unix-domain connection (the TCP-only setters
    /// [`set_tcp_nodelay`](Self::set_tcp_nodelay) and
    /// [`set_keepalive`](Self::set_keepalive) do nothing on it).
    pub fn is_unix(&self) -> bool {
        self.shared.local.is_unix()
    }

    /// The current state.
    pub fn state(&self) -> ConnState {
        ConnState::from_u8(self.shared.state.load(Ordering::Acquire))
    }

    pub(crate) fn set_state(&self, s: ConnState) {
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
        let ms = self.shared.last_activity_ms.load(Ordering::Relaxed);
        duo_sys::instant_of_nanos(ms.saturating_mul(1_000_000))
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
    /// # #[allow(dead_code)]
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
        if self.shared.lp.is_in_loop_thread() {
            self.shared.queued_on_loop.store(true, Ordering::Relaxed);
        }
        let shared = self.shared.clone();
        self.shared
            .lp
            .queue_in_loop(move |lp| {
                if let Some(token) = token_of(&shared) {
                    LoopConn::with_ctx_at(lp, token, "function run on the loop", f);
                }
            })
            .map_err(|_| ConnectionClosed)
    }

    /// Whether a function was queued for the connection from its loop's thread since the
    /// last call ([`queue_in_loop`](TcpConnection::queue_in_loop)); clears the mark.
    #[cfg(feature = "tls")]
    pub(crate) fn take_queued_on_loop(&self) -> bool {
        self.shared.queued_on_loop.swap(false, Ordering::Relaxed)
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
        let Some(token) = token_of(&self.shared) else {
            return Err(CtxUnavailable::Closed);
        };
        if self.is_closed() {
            return Err(CtxUnavailable::Closed);
        }
        match LoopConn::with_ctx_at(lp, token, "function given to with_ctx", f) {
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
    ///
    /// Under an [`output_limit`](crate::ServerBuilder::output_limit), what other threads
    /// have sent and the loop has not taken yet counts against the limit too (apart from
    /// the output buffer, so together they hold at most about twice the limit): a send
    /// past it is dropped here ([`OutputLimit::Discard`]) or closes the connection
    /// ([`OutputLimit::Close`]: this send and every later one return
    /// [`ConnectionClosed`]). Without a limit such sends are not bounded: a thread that
    /// produces faster than the peer reads should set one, or pace itself.
    ///
    /// [`OutputLimit::Discard`]: crate::OutputLimit::Discard
    /// [`OutputLimit::Close`]: crate::OutputLimit::Close
    pub fn send(&self, data: impl Into<Vec<u8>>) -> Result<(), ConnectionClosed> {
        if !self.is_connected() {
            return Err(ConnectionClosed);
        }
        let data = data.into();
        self.queue_send(data.len(), move |ctx| {
            ctx.send(&data);
        })
    }

    /// Sends a shared message without copying it: the connection's output buffer keeps a
    /// reference to `data` until it is written (see [`ConnCtx::send_shared`]). For one
    /// message sent to many connections. (Over TLS each connection queues its own
    /// ciphertext: see [`ConnCtx::send_shared`].) The output limit applies as for
    /// [`send`](TcpConnection::send).
    pub fn send_shared(&self, data: Arc<[u8]>) -> Result<(), ConnectionClosed> {
        if !self.is_connected() {
            return Err(ConnectionClosed);
        }
        self.queue_send(data.len(), move |ctx| {
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
        self.queue_in_loop(|ctx| ctx.force_close())
    }

    /// Stops reading and closes once everything queued before this call is written
    /// (see [`ConnCtx::close_after_flush`]).
    pub fn close_after_flush(&self) -> Result<(), ConnectionClosed> {
        self.queue_in_loop(|ctx| ctx.close_after_flush())
    }

    /// Closes the connection after `delay` unless it closed meanwhile.
    ///
    /// The timer holds the connection weakly: one that closes earlier (and its context)
    /// is freed then, not kept until `delay` has passed.
    pub fn force_close_after(&self, delay: Duration) -> Result<(), ConnectionClosed> {
        let me = self.downgrade();
        self.shared
            .lp
            .run_after(delay, move |_| {
                if let Some(conn) = me.upgrade() {
                    let _ = conn.force_close();
                }
            })
            .map(|_| ())
            .map_err(|_| ConnectionClosed)
    }

    /// Sets `TCP_NODELAY` (disables Nagle's algorithm) on the loop; errors are logged.
    /// Nothing on a Unix-domain connection (it has no Nagle delay).
    pub fn set_tcp_nodelay(&self, on: bool) -> Result<(), ConnectionClosed> {
        self.queue_in_loop(move |ctx| {
            if let Err(e) = ctx.set_tcp_nodelay(on) {
                duo_reactor::log_limited!(
                    log::Level::Warn,
                    "{}: TCP_NODELAY: {e}",
                    ctx.connection().name()
                );
            }
        })
    }

    /// Enables or disables `SO_KEEPALIVE` on the loop; errors are logged. Nothing on a
    /// Unix-domain connection (the kernel knows at once when its peer is gone).
    pub fn set_keepalive(&self, on: bool) -> Result<(), ConnectionClosed> {
        self.queue_in_loop(move |ctx| {
            if let Err(e) = ctx.set_keepalive(on) {
                duo_reactor::log_limited!(
                    log::Level::Warn,
                    "{}: SO_KEEPALIVE: {e}",
                    ctx.connection().name()
                );
            }
        })
    }

    /// Stops reading from the socket: the peer's data (and its end of stream) wait in the
    /// kernel, and the peer is slowed by TCP flow control once the kernel's buffer fills.
    ///
    /// Takes effect at once, from any thread, even in the middle of a large read: once
    /// this returns, the only message callback that may still start is one the loop had
    /// already decided to run at that instant; bytes the loop was reading at that moment
    /// are kept and delivered after [`start_reading`](TcpConnection::start_reading).
    /// Nothing is lost while paused: if the peer closes or resets meanwhile, the
    /// connection stays open (for reading only) until
    /// [`start_reading`](TcpConnection::start_reading), delivers what the peer sent, and
    /// then closes. A connection that is never resumed is only closed by an idle timeout
    /// or by the application.
    pub fn stop_reading(&self) -> Result<(), ConnectionClosed> {
        if self.is_closed() {
            return Err(ConnectionClosed);
        }
        self.set_read_paused(true);
        self.queue_in_loop(|ctx| ctx.sync_reading())
    }

    /// Resumes reading after [`stop_reading`](TcpConnection::stop_reading) (unless the
    /// connection's own backpressure still holds it).
    ///
    /// Like `stop_reading`, it takes effect at once, not in the order of functions queued
    /// to the loop: a [`ConnCtx::stop_reading`](crate::ConnCtx::stop_reading) in a
    /// function queued before this call (with [`TcpConnection::queue_in_loop`], say) but
    /// run after it pauses the connection again. Resume on the loop (a queued function
    /// calling [`ConnCtx::start_reading`](crate::ConnCtx::start_reading)) to keep to the
    /// queue's order.
    pub fn start_reading(&self) -> Result<(), ConnectionClosed> {
        if self.is_closed() {
            return Err(ConnectionClosed);
        }
        self.set_read_paused(false);
        self.queue_in_loop(|ctx| ctx.resume_reading())
    }

    /// Whether the application paused reading ([`stop_reading`](TcpConnection::stop_reading)).
    pub fn is_reading_stopped(&self) -> bool {
        self.shared.read_paused.load(Ordering::Acquire) & PAUSED != 0
    }

    pub(crate) fn set_token(&self, token: Token) {
        // Set once, by the loop, before anyone can ask for it from another thread (the
        // queued functions that read it run on the same loop, after this).
        let _ = self.shared.token.compare_exchange(
            NO_TOKEN,
            token.as_u64(),
            Ordering::Release,
            Ordering::Relaxed,
        );
    }

    /// A reference that does not keep the connection alive (for timers of its own).
    pub(crate) fn downgrade(&self) -> WeakConnection {
        WeakConnection(Arc::downgrade(&self.shared))
    }

    /// The token of the connection's channel on its loop, once registered.
    pub(crate) fn token(&self) -> Option<Token> {
        token_of(&self.shared)
    }

    pub(crate) fn set_read_paused(&self, paused: bool) {
        if paused {
            self.shared
                .read_paused
                .fetch_or(PAUSED | PAUSED_SINCE, Ordering::AcqRel);
        } else {
            self.shared.read_paused.fetch_and(!PAUSED, Ordering::AcqRel);
        }
    }

    /// Whether reading was paused since the last call (even if resumed since), clearing
    /// the mark.
    pub(crate) fn take_paused_since(&self) -> bool {
        let flags = &self.shared.read_paused;
        flags.load(Ordering::Acquire) & PAUSED_SINCE != 0
            && flags.fetch_and(!PAUSED_SINCE, Ordering::AcqRel) & PAUSED_SINCE != 0
    }

    /// Records why the connection closed (the first reason stands) and marks it closed.
    pub(crate) fn mark_closed(&self, reason: CloseReason) {
        self.shared.close_reason.lock().get_or_insert(reason);
        self.set_state(ConnState::Disconnected);
    }

    /// Records activity at `at_nanos` (the loop's poll time,
    /// [`EventLoop::poll_time_nanos`]: no clock read per event).
    pub(crate) fn touch(&self, at_nanos: u64) {
        self.shared
            .last_activity_ms
            .store(at_nanos / 1_000_000, Ordering::Relaxed);
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
pub struct ConnName<'a>(&'a ConnShared);

impl fmt::Display for ConnName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.0.peer, self.0.credentials) {
            // An unnamed Unix-domain peer is told apart by its process.
            (Endpoint::UnixUnnamed, Some(c)) => {
                write!(f, "{}-unix:pid{}#{}", self.0.owner, c.pid, self.0.id)
            }
            (peer, _) => write!(f, "{}-{}#{}", self.0.owner, peer, self.0.id),
        }
    }
}

impl fmt::Debug for ConnName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod size_tests {
    use super::ConnShared;
    use crate::conn::machine::LoopConn;

    /// An idle connection is mostly these two (the shared half behind its `Arc`, the loop
    /// half in its channel's entry): duo's target is at most 0.5 KiB of user space per
    /// connection (`cargo xtask bench --only idle`). With glibc's 16-byte size classes a
    /// few bytes more can cost 16 per connection: grow them knowingly, this fails first.
    #[test]
    fn a_connection_stays_small() {
        let shared = std::mem::size_of::<ConnShared>();
        let conn = std::mem::size_of::<LoopConn>();
        assert!(shared <= 168, "ConnShared is {shared} bytes");
        assert!(conn <= 160, "LoopConn is {conn} bytes");
    }
}
