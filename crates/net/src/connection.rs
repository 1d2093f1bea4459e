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

use std::any::Any;
use std::fmt;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use duo_buffer::{BufferError, InputBuffer, OutputBuffer, ReadOutcome};
use duo_reactor::{Channel, EventLoop, Handler, Interest, LoopHandle, Token};
use parking_lot::Mutex;

use crate::callbacks::Callbacks;
use crate::idle::IdleWheels;
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

/// The connection is closed (or its loop is gone); nothing was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connection is closed")]
pub struct ConnectionClosed;

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

/// What any thread may read about a connection.
struct Shared {
    id: u64,
    /// The server's or client's name, shared by all its connections.
    owner: Arc<str>,
    peer: SocketAddr,
    local: SocketAddr,
    state: AtomicU8,
    lp: LoopHandle,
    token: OnceLock<Token>,
    context: Mutex<Option<Box<dyn Any + Send>>>,
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
                lp,
                token: OnceLock::new(),
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

    /// The loop that owns the connection.
    pub fn loop_handle(&self) -> &LoopHandle {
        &self.shared.lp
    }

    /// When bytes last arrived (or the connection was opened).
    pub fn last_activity(&self) -> Instant {
        clock_base() + Duration::from_millis(self.shared.last_activity_ms.load(Ordering::Relaxed))
    }

    /// Stores a user value with the connection (a session, a parser state), replacing the
    /// previous one.
    pub fn set_context<T: Any + Send>(&self, value: T) {
        *self.shared.context.lock() = Some(Box::new(value));
    }

    /// Runs `f` on the context if it is a `T`; `None` if there is none or it is another
    /// type. The context's lock is held during `f`: keep it short, and do not call
    /// `with_context` of the same connection inside it.
    pub fn with_context<T: Any + Send, R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let mut guard = self.shared.context.lock();
        guard.as_mut()?.downcast_mut::<T>().map(f)
    }

    /// Removes and returns the context if it is a `T`.
    pub fn take_context<T: Any + Send>(&self) -> Option<T> {
        let mut guard = self.shared.context.lock();
        if guard.as_ref().is_some_and(|c| c.is::<T>()) {
            guard
                .take()
                .and_then(|b| b.downcast::<T>().ok())
                .map(|b| *b)
        } else {
            None
        }
    }

    /// Runs `f` with the connection's loop-side context ([`ConnCtx`]) on its loop.
    ///
    /// The function is queued; if the connection has closed by the time it would run, it
    /// is dropped without running. If it panics, the connection is closed (like a panic in
    /// any callback) and the loop goes on.
    pub fn run_in_loop(
        &self,
        f: impl FnOnce(&mut ConnCtx<'_>) + Send + 'static,
    ) -> Result<(), ConnectionClosed> {
        if self.is_closed() {
            return Err(ConnectionClosed);
        }
        let shared = self.shared.clone();
        self.shared
            .lp
            .run_in_loop(move |lp| {
                let Some(&token) = shared.token.get() else {
                    return;
                };
                lp.with_handler::<Conn, _>(token, |lp, ch, conn| {
                    let ok = {
                        let mut ctx = ConnCtx {
                            io: &mut conn.io,
                            ch,
                            lp,
                        };
                        catch_unwind(AssertUnwindSafe(|| f(&mut ctx))).is_ok()
                    };
                    if !ok {
                        log::error!(
                            "{}: function run on the connection's loop panicked; closing",
                            conn.io.handle.name()
                        );
                        conn.io.close(lp, ch);
                    }
                });
            })
            .map_err(|_| ConnectionClosed)
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
        self.run_in_loop(move |ctx| {
            ctx.send(&data);
        })
    }

    /// Half-closes: once everything queued is written, shuts down the writing side. The
    /// connection closes when the peer closes its side.
    pub fn shutdown(&self) -> Result<(), ConnectionClosed> {
        self.run_in_loop(|ctx| ctx.shutdown())
    }

    /// Closes the connection now, dropping unsent output.
    pub fn force_close(&self) -> Result<(), ConnectionClosed> {
        self.run_in_loop(|ctx| ctx.force_close())
    }

    /// Stops reading and closes once everything queued before this call is written
    /// (see [`ConnCtx::close_after_flush`]).
    pub fn close_after_flush(&self) -> Result<(), ConnectionClosed> {
        self.run_in_loop(|ctx| ctx.close_after_flush())
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
        self.run_in_loop(move |ctx| {
            if let Err(e) = ctx.set_tcp_nodelay(on) {
                log::warn!("{}: TCP_NODELAY: {e}", ctx.connection().name());
            }
        })
    }

    /// Enables or disables `SO_KEEPALIVE` on the loop; errors are logged.
    pub fn set_keepalive(&self, on: bool) -> Result<(), ConnectionClosed> {
        self.run_in_loop(move |ctx| {
            if let Err(e) = ctx.set_keepalive(on) {
                log::warn!("{}: SO_KEEPALIVE: {e}", ctx.connection().name());
            }
        })
    }

    /// Stops reading from the socket (the peer's data waits in the kernel).
    pub fn stop_reading(&self) -> Result<(), ConnectionClosed> {
        self.run_in_loop(|ctx| ctx.stop_reading())
    }

    /// Resumes reading after [`stop_reading`](TcpConnection::stop_reading).
    pub fn start_reading(&self) -> Result<(), ConnectionClosed> {
        self.run_in_loop(|ctx| ctx.start_reading())
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

/// Settings a connection takes from its server or client.
#[derive(Debug, Clone)]
pub(crate) struct ConnOptions {
    pub(crate) edge_triggered: bool,
    pub(crate) high_water: usize,
    pub(crate) low_water: usize,
    pub(crate) max_input: usize,
    /// Key of the owning server's idle wheel on each loop, if idle timeouts are on.
    pub(crate) idle_key: Option<u64>,
    /// Every read refreshes the idle timer (else only [`ConnCtx::refresh_idle`] does).
    pub(crate) idle_refresh_on_read: bool,
}

/// Hook run when a connection closes (the server's registry removal).
pub(crate) type RemoveHook = Arc<dyn Fn(&TcpConnection) + Send + Sync>;

/// What all connections of one server (or client) on one loop share: one allocation for
/// all of them, one pointer in each.
pub(crate) struct ConnEnv {
    pub(crate) callbacks: Arc<Callbacks>,
    pub(crate) opts: ConnOptions,
    pub(crate) remove_hook: Option<RemoveHook>,
    pub(crate) counters: Arc<IoCounters>,
}

/// The loop side of a connection: the registered channel's handler.
pub(crate) struct Conn {
    input: InputBuffer,
    io: ConnIo,
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
    /// Reading paused by the user.
    paused_by_user: bool,
    /// Close (not just half-close) once the output is drained: the peer already sent EOF.
    close_when_drained: bool,
    /// `shutdown(SHUT_WR)` already done.
    write_shut: bool,
    /// The peer sent EOF (reading is over for good).
    peer_eof: bool,
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
                paused_by_user: false,
                close_when_drained: false,
                write_shut: false,
                peer_eof: false,
            },
        };
        let hook = conn.io.env.remove_hook.clone();
        let token = match lp.add_channel(socket, interest, conn) {
            Ok(t) => t,
            Err(e) => {
                handle.set_state(ConnState::Disconnected);
                if let Some(hook) = hook {
                    hook(&handle);
                }
                return Err(e.error);
            }
        };
        handle.set_token(token);
        handle.set_state(ConnState::Connected);
        lp.with_handler::<Conn, _>(token, |lp, ch, conn| {
            conn.io.idle_refresh(lp, ch.token());
            let ok = conn.io.guarded("connection callback", |io| {
                if let Some(cb) = &io.env.callbacks.connection {
                    cb(&io.handle);
                }
            });
            if !ok {
                conn.io.close(lp, ch);
            }
        });
        Ok(token)
    }
}

impl Conn {
    /// Closes the connection behind `handle` now, if it lives on `lp` and is open.
    pub(crate) fn close_now(lp: &mut EventLoop, handle: &TcpConnection) {
        if let Some(&token) = handle.shared.token.get() {
            lp.with_handler::<Conn, _>(token, |lp, ch, conn| conn.io.close(lp, ch));
        }
    }
}

impl Handler for Conn {
    fn handle_read(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        loop {
            let outcome = self.input.recv_from(ch.fd());
            match outcome {
                Ok(ReadOutcome::Data { len, drained }) => {
                    self.io.env.counters.add_in(len);
                    self.io.handle.touch(lp.poll_time());
                    if self.io.env.opts.idle_refresh_on_read {
                        self.io.idle_refresh(lp, ch.token());
                    }
                    self.deliver(lp, ch);
                    // Bytes the callback left in the thread's read area move to a block
                    // (usually there are none: nothing is copied).
                    if let Err(e) = self.input.settle() {
                        log::error!(
                            "{}: cannot keep unparsed input: {e}; closing",
                            self.io.handle.name()
                        );
                        self.io.close(lp, ch);
                        return;
                    }
                    if ch.is_removed() || !ch.is_reading() || !self.io.env.opts.edge_triggered {
                        return;
                    }
                    // A short read means the socket is drained, and saves the read that
                    // would return EAGAIN, unless the peer's FIN came with the data: then
                    // no new edge will report it, so read on to see the EOF now.
                    if drained && !ch.ready().is_read_hup() {
                        return;
                    }
                }
                Ok(ReadOutcome::WouldBlock) => return,
                Ok(ReadOutcome::Eof) => {
                    self.io.peer_eof = true;
                    ch.disable_reading();
                    let env = self.io.env.clone();
                    match env.callbacks.half_close.as_deref() {
                        // The application finishes its work and closes when it is done.
                        Some(cb) => {
                            let ok = {
                                let mut ctx = ConnCtx {
                                    io: &mut self.io,
                                    ch,
                                    lp,
                                };
                                catch_unwind(AssertUnwindSafe(|| cb(&mut ctx))).is_ok()
                            };
                            if !ok {
                                log::error!(
                                    "{}: half-close callback panicked; closing",
                                    self.io.handle.name()
                                );
                                self.io.close(lp, ch);
                            }
                        }
                        None => self.io.close_after_flush(lp, ch),
                    }
                    return;
                }
                Err(BufferError::Full { limit }) => {
                    log::warn!(
                        "{}: {limit} bytes of input not consumed by the message callback; closing",
                        self.io.handle.name()
                    );
                    self.io.close(lp, ch);
                    return;
                }
                Err(e) => {
                    log::debug!("{}: read: {e}", self.io.handle.name());
                    self.io.close(lp, ch);
                    return;
                }
            }
        }
    }

    fn handle_write(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        self.io.flush(lp, ch);
    }

    fn handle_close(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        self.io.close(lp, ch);
    }

    fn handle_error(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        match duo_sys::take_socket_error(ch.fd()) {
            Ok(Some(e)) => log::debug!("{}: socket error: {e}", self.io.handle.name()),
            Ok(None) => return,
            Err(e) => log::debug!("{}: SO_ERROR: {e}", self.io.handle.name()),
        }
        self.io.close(lp, ch);
    }
}

impl Conn {
    /// The idle wheel found no traffic for the timeout.
    pub(crate) fn idle_timeout(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        log::info!("{}: idle timeout; closing", self.io.handle.name());
        self.io.close(lp, ch);
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
        let ok = {
            let mut ctx = ConnCtx {
                io: &mut self.io,
                ch,
                lp,
            };
            catch_unwind(AssertUnwindSafe(|| cb(&mut ctx, input))).is_ok()
        };
        if !ok {
            log::error!(
                "{}: message callback panicked; closing the connection",
                self.io.handle.name()
            );
            self.io.close(lp, ch);
        }
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

    fn idle_refresh(&self, lp: &mut EventLoop, token: Token) {
        if let Some(key) = self.env.opts.idle_key {
            IdleWheels::refresh(lp, key, token);
        }
    }

    fn state(&self) -> ConnState {
        self.handle.state()
    }

    /// Queues `data` for sending, writing directly when nothing is queued.
    fn send(&mut self, lp: &mut EventLoop, ch: &mut Channel, parts: &[&[u8]]) -> bool {
        if self.state() != ConnState::Connected || self.write_shut {
            return false;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
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
                    log::debug!("{}: write: {e}", self.handle.name());
                    self.close(lp, ch);
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
                        conn.io.write_complete(lp, ch)
                    });
                });
            }
            return true;
        }
        let before = self.output.len();
        let mut skip = written;
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            if let Err(e) = self.output.append(&part[skip..]) {
                log::error!("{}: cannot buffer output: {e}; closing", self.handle.name());
                self.close(lp, ch);
                return false;
            }
            skip = 0;
        }
        ch.enable_writing();
        let after = self.output.len();
        let hwm = self.env.opts.high_water;
        if after > hwm && !self.paused_by_backpressure {
            // Backpressure: stop reading until the peer drains what we owe it.
            self.paused_by_backpressure = true;
            ch.disable_reading();
        }
        if before <= hwm && after > hwm {
            let env = self.env.clone();
            if let Some(cb) = env.callbacks.high_water_mark.as_deref() {
                let ok = {
                    let mut ctx = ConnCtx { io: self, ch, lp };
                    catch_unwind(AssertUnwindSafe(|| cb(&mut ctx, after))).is_ok()
                };
                if !ok {
                    log::error!(
                        "{}: high-water-mark callback panicked; closing",
                        self.handle.name()
                    );
                    self.close(lp, ch);
                    return false;
                }
            }
        }
        true
    }

    /// Writes as much of the output buffer as the socket takes.
    fn flush(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        if !ch.is_writing() {
            return;
        }
        loop {
            match self.output.send_to(ch.fd()) {
                Ok(n) => {
                    self.env.counters.add_out(n);
                    if self.output.is_empty() {
                        ch.disable_writing();
                        self.resume_if_drained(ch);
                        self.write_complete(lp, ch);
                        if self.state() == ConnState::Disconnecting {
                            self.finish_disconnect(lp, ch);
                        }
                        return;
                    }
                    self.resume_if_drained(ch);
                    if !self.env.opts.edge_triggered {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::debug!("{}: write: {e}", self.handle.name());
                    self.close(lp, ch);
                    return;
                }
            }
        }
    }

    fn resume_if_drained(&mut self, ch: &mut Channel) {
        if self.paused_by_backpressure && self.output.len() <= self.env.opts.low_water {
            self.paused_by_backpressure = false;
            if !self.paused_by_user && !self.close_when_drained && !self.peer_eof {
                // Re-enabling makes epoll re-check readiness, so data that arrived while
                // paused is reported even with edge triggering.
                ch.enable_reading();
            }
        }
    }

    fn write_complete(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        let env = self.env.clone();
        let Some(cb) = env.callbacks.write_complete.as_deref() else {
            return;
        };
        let ok = {
            let mut ctx = ConnCtx { io: self, ch, lp };
            catch_unwind(AssertUnwindSafe(|| cb(&mut ctx))).is_ok()
        };
        if !ok {
            log::error!(
                "{}: write-complete callback panicked; closing",
                self.handle.name()
            );
            self.close(lp, ch);
        }
    }

    /// The peer sent EOF, or we are done with it: stop reading, deliver what we still
    /// owe it, then close.
    fn close_after_flush(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        ch.disable_reading();
        self.close_when_drained = true;
        if self.output.is_empty() {
            self.close(lp, ch);
        } else if self.state() == ConnState::Connected {
            self.handle.set_state(ConnState::Disconnecting);
        }
    }

    /// The output is drained while disconnecting: half-close, or close if the peer is done.
    fn finish_disconnect(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        if self.close_when_drained || self.peer_eof {
            // Nothing more can come from the peer either: both directions are done.
            self.close(lp, ch);
        } else if !self.write_shut {
            self.write_shut = true;
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
    fn close(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        if self.state() == ConnState::Disconnected {
            return;
        }
        self.handle.set_state(ConnState::Disconnected);
        ch.disable_all();
        ch.remove();
        if let Some(key) = self.env.opts.idle_key {
            IdleWheels::forget(lp, key, ch.token());
        }
        let dropped = self.output.len();
        if dropped > 0 {
            log::debug!("{}: closed with {dropped} bytes unsent", self.handle.name());
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
/// [`TcpConnection::run_in_loop`]). Its methods act at once, on the loop thread.
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
    /// buffered and written when the socket is writable. False if the connection is
    /// closed or half-closed by us.
    pub fn send(&mut self, data: &[u8]) -> bool {
        self.io.send(self.lp, self.ch, &[data])
    }

    /// Sends several pieces as one message (a header and a payload, say) with one
    /// vectored write and no copy into a joined buffer.
    pub fn send_parts(&mut self, parts: &[&[u8]]) -> bool {
        self.io.send(self.lp, self.ch, parts)
    }

    /// Bytes waiting in the output buffer.
    pub fn output_len(&self) -> usize {
        self.io.output.len()
    }

    /// Half-closes after the output drains (see [`TcpConnection::shutdown`]).
    pub fn shutdown(&mut self) {
        self.io.shutdown(self.lp, self.ch);
    }

    /// Closes now, dropping unsent output.
    pub fn force_close(&mut self) {
        self.io.close(self.lp, self.ch);
    }

    /// Stops reading and closes as soon as the output buffer is written: for ending a
    /// connection after a final reply (an error to a hostile peer, say) without losing
    /// the replies before it, and without waiting for the peer as
    /// [`shutdown`](ConnCtx::shutdown) does.
    pub fn close_after_flush(&mut self) {
        self.io.close_after_flush(self.lp, self.ch);
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
            self.force_close();
        }
    }

    /// Stops reading from the socket.
    pub fn stop_reading(&mut self) {
        self.io.paused_by_user = true;
        self.ch.disable_reading();
    }

    /// Resumes reading (unless backpressure still holds it).
    pub fn start_reading(&mut self) {
        self.io.paused_by_user = false;
        if !self.io.paused_by_backpressure
            && !self.io.close_when_drained
            && !self.io.peer_eof
            && !self.io.handle.is_closed()
        {
            self.ch.enable_reading();
        }
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

    /// Whether reading is paused (by the user or by backpressure).
    pub fn is_reading_paused(&self) -> bool {
        self.io.paused_by_user || self.io.paused_by_backpressure
    }

    /// Sets `TCP_NODELAY`.
    pub fn set_tcp_nodelay(&self, on: bool) -> io::Result<()> {
        socket2::SockRef::from(&self.ch.fd()).set_nodelay(on)
    }

    /// Sets `SO_KEEPALIVE`.
    pub fn set_keepalive(&self, on: bool) -> io::Result<()> {
        socket2::SockRef::from(&self.ch.fd()).set_keepalive(on)
    }

    /// The connection's loop: schedule timers, queue work.
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
