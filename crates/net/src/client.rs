//! [`TcpClient`]: one outgoing connection with non-blocking connect, retry and reconnect
//! (muduo's `TcpClient` + `Connector`).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use duo_buffer::InputBuffer;
use duo_reactor::{Channel, EventLoop, Handler, Interest, LoopHandle, TimerId, Token};
use parking_lot::Mutex;
use socket2::{Domain, SockAddr, Socket, Type};

use crate::callbacks::{Callbacks, ConnectFailedCallback, ConnectFailure};
use crate::connection::{CloseReason, Conn, ConnEnv, RemoveHook};
use crate::options::{Backpressure, ConnOptions, OutputLimit};
use crate::server::defaults;
use crate::stats::{IoCounters, LoopStats};
use crate::{ConnCtx, TcpConnection};

/// Ids of client connections, unique in the process.
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Defaults of a [`ClientBuilder`].
pub mod client_defaults {
    use std::time::Duration;

    /// First delay before retrying a failed connect: 500 ms.
    pub const RETRY_INITIAL: Duration = Duration::from_millis(500);
    /// The delay doubles after each failure up to this: 30 s.
    pub const RETRY_MAX: Duration = Duration::from_secs(30);
}

/// Builds a [`TcpClient`]; from [`TcpClient::builder`].
pub struct ClientBuilder {
    name: String,
    addr: SocketAddr,
    reconnect: bool,
    retry_initial: Duration,
    retry_max: Duration,
    max_attempts: Option<u32>,
    connect_timeout: Option<Duration>,
    edge_triggered: bool,
    high_water: usize,
    low_water: Option<usize>,
    backpressure: Backpressure,
    output_limit: Option<(usize, OutputLimit)>,
    max_input: usize,
    read_budget: usize,
    tcp_nodelay: bool,
    callbacks: Callbacks,
    connect_failed: Option<ConnectFailedCallback>,
}

impl ClientBuilder {
    /// Reconnect (after the retry delay) when an established connection closes, unless
    /// the close came from [`TcpClient::disconnect`] or [`TcpClient::stop`]. Off by
    /// default. Failed connect attempts are always retried.
    pub fn reconnect(mut self, on: bool) -> Self {
        self.reconnect = on;
        self
    }
    /// Retry delays: the first failure waits `initial`, each further one twice as long,
    /// at most `max` (defaults [`client_defaults::RETRY_INITIAL`] and
    /// [`client_defaults::RETRY_MAX`]).
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_initial = initial.max(Duration::from_millis(1));
        self.retry_max = max.max(self.retry_initial);
        self
    }
    /// Gives up after `n` failed attempts in a row (default: retry for ever). The last
    /// failure reaches [`on_connect_failed`](ClientBuilder::on_connect_failed) with
    /// `will_retry == false`.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n.max(1));
        self
    }
    /// Fails an attempt that has not connected within `timeout` (default: the kernel's,
    /// about two minutes for an address that does not answer).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        // At most a day: a deadline past what `Instant` can hold would overflow.
        self.connect_timeout =
            Some(timeout.min(Duration::from_secs(86_400))).filter(|t| !t.is_zero());
        self
    }
    /// Called after each failed connect attempt, with the error and whether the client
    /// will retry; see [`ConnectFailure`]. A relay closes its inbound connection here
    /// when the backend is unreachable.
    pub fn on_connect_failed(
        mut self,
        f: impl Fn(&ConnectFailure) + Send + Sync + 'static,
    ) -> Self {
        self.connect_failed = Some(Arc::new(f));
        self
    }
    /// Edge-triggered (default) or level-triggered connection.
    pub fn edge_triggered(mut self, on: bool) -> Self {
        self.edge_triggered = on;
        self
    }
    /// Output-buffer high and low water marks (see [`ServerBuilder::water_marks`](crate::ServerBuilder::water_marks)).
    pub fn water_marks(mut self, high: usize, low: usize) -> Self {
        self.high_water = high.max(1);
        self.low_water = Some(low.min(self.high_water));
        self
    }
    /// What crossing the high-water mark does (see [`Backpressure`]; a relay's client
    /// wants [`Backpressure::Notify`]).
    pub fn backpressure(mut self, policy: Backpressure) -> Self {
        self.backpressure = policy;
        self
    }
    /// Bounds the queued output (see [`ServerBuilder::output_limit`](crate::ServerBuilder::output_limit)).
    pub fn output_limit(mut self, bytes: usize, policy: OutputLimit) -> Self {
        self.output_limit = Some((bytes.max(1), policy));
        self
    }
    /// Most bytes read per readiness event (see [`ServerBuilder::read_budget`](crate::ServerBuilder::read_budget)).
    pub fn read_budget(mut self, bytes: usize) -> Self {
        self.read_budget = bytes.max(1);
        self
    }
    /// Largest unconsumed input (default [`defaults::MAX_INPUT`]).
    pub fn max_input(mut self, bytes: usize) -> Self {
        self.max_input = bytes.max(1);
        self
    }
    /// Sets `TCP_NODELAY` on the connection (default off).
    pub fn tcp_nodelay(mut self, on: bool) -> Self {
        self.tcp_nodelay = on;
        self
    }
    /// Called when the connection comes up and when it goes down.
    pub fn on_connection(mut self, f: impl Fn(&TcpConnection) + Send + Sync + 'static) -> Self {
        self.callbacks.connection = Some(Arc::new(f));
        self
    }
    /// Called when bytes arrive.
    pub fn on_message(
        mut self,
        f: impl Fn(&mut ConnCtx<'_>, &mut InputBuffer) + Send + Sync + 'static,
    ) -> Self {
        self.callbacks.message = Some(Arc::new(f));
        self
    }
    /// Called when the output buffer has been fully written.
    pub fn on_write_complete(
        mut self,
        f: impl Fn(&mut ConnCtx<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.callbacks.write_complete = Some(Arc::new(f));
        self
    }
    /// Called when the output buffer crosses the high-water mark.
    pub fn on_high_water_mark(
        mut self,
        f: impl Fn(&mut ConnCtx<'_>, usize) + Send + Sync + 'static,
    ) -> Self {
        self.callbacks.high_water_mark = Some(Arc::new(f));
        self
    }
    /// Called when the peer half-closes; see [`HalfCloseCallback`](crate::HalfCloseCallback).
    /// Without it, a connection closes once its output is written after the peer's EOF.
    pub fn on_peer_half_close(
        mut self,
        f: impl Fn(&mut ConnCtx<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.callbacks.half_close = Some(Arc::new(f));
        self
    }
    /// Called when the connection has closed.
    pub fn on_close(mut self, f: impl Fn(&TcpConnection) + Send + Sync + 'static) -> Self {
        self.callbacks.close = Some(Arc::new(f));
        self
    }

    /// Creates the client on the loop behind `lp` and starts connecting. The connection
    /// will live on that loop. Calling this from a callback of a server's connection with
    /// that connection's loop (`ctx.event_loop().handle()`) is allowed and is how a relay
    /// keeps both of its connections on one thread.
    pub fn connect(self, lp: &LoopHandle) -> TcpClient {
        let inner = Arc::new(Inner {
            name: self.name,
            addr: self.addr,
            lp: lp.clone(),
            reconnect: self.reconnect,
            retry_initial: self.retry_initial,
            retry_max: self.retry_max,
            max_attempts: self.max_attempts,
            connect_timeout: self.connect_timeout,
            tcp_nodelay: self.tcp_nodelay,
            callbacks: Arc::new(self.callbacks),
            connect_failed: self.connect_failed,
            opts: Arc::new(ConnOptions {
                edge_triggered: self.edge_triggered,
                high_water: self.high_water,
                low_water: self.low_water.unwrap_or(self.high_water / 2),
                backpressure: self.backpressure,
                output_limit: self.output_limit,
                max_input: self.max_input,
                read_budget: self.read_budget,
                idle_key: None,
                idle_refresh_on_read: true,
            }),
            counters: Arc::new(IoCounters::default()),
            attempts: AtomicU64::new(0),
            state: Mutex::new(State {
                wanted: false,
                draining: false,
                phase: Phase::Idle,
                delay: self.retry_initial,
                failures: 0,
                ending: false,
                connect_after_close: false,
            }),
        });
        let client = TcpClient { inner };
        client.connect();
        client
    }
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("reconnect", &self.reconnect)
            .field("retry_initial", &self.retry_initial)
            .field("retry_max", &self.retry_max)
            .field("callbacks", &self.callbacks)
            .finish_non_exhaustive()
    }
}

/// Where the client is. Changed only on its loop.
#[derive(Debug)]
enum Phase {
    /// Nothing in progress.
    Idle,
    /// A non-blocking connect is in flight on this channel (with its timeout timer).
    Connecting(Token, Option<TimerId>),
    /// Waiting for the retry timer.
    Waiting(TimerId),
    /// Connected.
    Connected(TcpConnection),
}

struct State {
    /// The user wants a connection (set by `connect`, cleared by `disconnect`/`stop`).
    wanted: bool,
    /// `disconnect` was called: the connection finishes by itself (output written,
    /// half-closed, closed when the server closes), even if the client is dropped.
    draining: bool,
    phase: Phase,
    /// The next retry delay.
    delay: Duration,
    /// Failed attempts in a row.
    failures: u32,
    /// `disconnect` or `stop` asked the current connection to end.
    ending: bool,
    /// `connect` was called while that connection was ending: connect again once it has
    /// closed.
    connect_after_close: bool,
}

struct Inner {
    name: String,
    addr: SocketAddr,
    lp: LoopHandle,
    reconnect: bool,
    retry_initial: Duration,
    retry_max: Duration,
    max_attempts: Option<u32>,
    connect_timeout: Option<Duration>,
    tcp_nodelay: bool,
    callbacks: Arc<Callbacks>,
    connect_failed: Option<ConnectFailedCallback>,
    opts: Arc<ConnOptions>,
    counters: Arc<IoCounters>,
    attempts: AtomicU64,
    state: Mutex<State>,
}

/// A TCP client: connects to one server address from a loop and serves the connection
/// with the same callbacks as [`TcpServer`](crate::TcpServer).
///
/// The connect is non-blocking (`EINPROGRESS`, then writability and `SO_ERROR`). A failed
/// attempt is retried after a delay that starts at 500 ms and doubles up to 30 s
/// ([`ClientBuilder::retry_backoff`]); a connection to itself (possible on loopback when
/// the kernel picks the server's port as the ephemeral port) is detected and retried.
/// With [`ClientBuilder::reconnect`], a connection that closes is re-established.
///
/// All methods are callable from any thread.
///
/// # Failures
///
/// [`ClientBuilder::on_connect_failed`] sees every failed attempt (refused, timed out
/// after [`ClientBuilder::connect_timeout`], unreachable) with the error and whether the
/// client will try again; [`ClientBuilder::max_attempts`] bounds the retries. A client
/// that gives up stays idle until [`connect`](TcpClient::connect) is called again.
///
/// # Dropping
///
/// Dropping the client stops it ([`TcpClient::stop`]): the connection closes at once and
/// unsent output is dropped. To let the output drain first, call
/// [`disconnect`](TcpClient::disconnect) before dropping it: the connection then writes
/// everything queued, half-closes, and closes when the server closes its side.
///
/// # In a relay or proxy
///
/// A server callback may create a client with its own loop's handle
/// (`ctx.event_loop().handle()` or `conn.loop_handle()`): the client's connection then
/// lives on the same thread as the server's connection, and each side can act on the
/// other at once with [`TcpConnection::with_ctx`]. Set
/// [`Backpressure::Notify`] on both (a relay pauses the *source*
/// connection when the destination's output passes the high-water mark, and resumes it on
/// write-complete), and close the inbound connection from `on_connect_failed` when the
/// backend is unreachable. `crates/net/examples/tunnel.rs` does all of this.
///
/// # Example
///
/// ```
/// use duo_net::{TcpClient, TcpServer};
/// use duo_reactor::EventLoop;
///
/// let mut lp = EventLoop::new()?;
/// let server = TcpServer::builder("echo", "127.0.0.1:0".parse()?)
///     .on_message(|ctx, input| {
///         ctx.send(input.peek());
///         input.consume_all();
///     })
///     .start(&mut lp)?;
/// let client = TcpClient::builder("hello", server.local_addr())
///     .on_connection(|conn| {
///         if conn.is_connected() {
///             let _ = conn.send(&b"ping"[..]);
///         }
///     })
///     .on_message(|ctx, input| {
///         if input.len() >= 4 {
///             ctx.event_loop().quit();
///         }
///     })
///     .connect(&lp.handle());
/// lp.run()?;
/// client.stop();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TcpClient {
    inner: Arc<Inner>,
}

impl TcpClient {
    /// A builder for a client named `name` that connects to `addr`.
    pub fn builder(name: &str, addr: SocketAddr) -> ClientBuilder {
        ClientBuilder {
            name: name.to_owned(),
            addr,
            reconnect: false,
            retry_initial: client_defaults::RETRY_INITIAL,
            retry_max: client_defaults::RETRY_MAX,
            max_attempts: None,
            connect_timeout: None,
            edge_triggered: true,
            high_water: defaults::HIGH_WATER,
            low_water: None,
            backpressure: Backpressure::PauseReading,
            output_limit: None,
            max_input: defaults::MAX_INPUT,
            read_budget: defaults::READ_BUDGET,
            tcp_nodelay: false,
            callbacks: Callbacks::default(),
            connect_failed: None,
        }
    }

    /// The server address.
    pub fn server_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The client's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The current connection, if connected.
    pub fn connection(&self) -> Option<TcpConnection> {
        match &self.inner.state.lock().phase {
            Phase::Connected(c) => Some(c.clone()),
            _ => None,
        }
    }

    /// Connect attempts made so far (including the successful ones).
    pub fn attempts(&self) -> u64 {
        self.inner.attempts.load(Ordering::Relaxed)
    }

    /// Bytes moved by this client's connections.
    pub fn stats(&self) -> LoopStats {
        self.inner.counters.snapshot()
    }

    /// Starts connecting (again) if not connected or connecting: at once, also when a
    /// retry was waiting (the retry delay starts over). Called after
    /// [`disconnect`](TcpClient::disconnect) or [`stop`](TcpClient::stop), it connects
    /// again once the old connection has closed. [`ClientBuilder::connect`] already calls
    /// it.
    pub fn connect(&self) {
        let inner = self.inner.clone();
        {
            let mut st = inner.state.lock();
            st.wanted = true;
            st.draining = false;
            st.delay = inner.retry_initial;
            st.failures = 0;
        }
        let me = inner.clone();
        if inner.lp.queue_in_loop(move |lp| start(lp, &me)).is_err() {
            log::warn!("client {}: loop is gone; cannot connect", inner.name);
        }
    }

    /// Stops connecting and retrying, and half-closes the connection if there is one
    /// (after its output is written; it closes when the server closes its side). Does
    /// not reconnect afterwards.
    ///
    /// This is how to let a client's output drain before dropping it: after
    /// `disconnect`, dropping the client does not cut the connection short; it goes on
    /// by itself until everything queued is written and the server has closed its side.
    /// (Dropping a client without `disconnect` closes the connection at once and drops
    /// unsent output, like [`stop`](TcpClient::stop).)
    pub fn disconnect(&self) {
        {
            let mut st = self.inner.state.lock();
            st.wanted = false;
            st.draining = true;
            st.ending = true;
        }
        let inner = self.inner.clone();
        let _ = self.inner.lp.queue_in_loop(move |lp| {
            cancel_attempt(lp, &inner);
            let conn = match &inner.state.lock().phase {
                Phase::Connected(c) => Some(c.clone()),
                _ => None,
            };
            if let Some(conn) = conn {
                let _ = conn.shutdown();
            }
        });
    }

    /// Stops connecting and retrying and closes the connection now (unsent output is
    /// dropped).
    pub fn stop(&self) {
        {
            let mut st = self.inner.state.lock();
            st.wanted = false;
            st.draining = false;
            st.ending = true;
        }
        let inner = self.inner.clone();
        let _ = self.inner.lp.queue_in_loop(move |lp| {
            cancel_attempt(lp, &inner);
            let conn = match &inner.state.lock().phase {
                Phase::Connected(c) => Some(c.clone()),
                _ => None,
            };
            if let Some(conn) = conn {
                // Closed here and now, so that a `connect` queued after this `stop`
                // finds the client idle.
                Conn::close_now(lp, &conn, CloseReason::User);
                if !conn.is_closed() {
                    // Its own callback is running further up the stack: queue it.
                    let _ = conn.force_close();
                }
            }
        });
    }
}

impl Drop for TcpClient {
    /// Stops the client ([`stop`](TcpClient::stop)), unless
    /// [`disconnect`](TcpClient::disconnect) was called: then the connection finishes by
    /// itself, its output written.
    fn drop(&mut self) {
        if self.inner.state.lock().draining {
            let inner = self.inner.clone();
            let _ = self
                .inner
                .lp
                .queue_in_loop(move |lp| cancel_attempt(lp, &inner));
        } else {
            self.stop();
        }
    }
}

impl fmt::Debug for TcpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.state.lock();
        f.debug_struct("TcpClient")
            .field("name", &self.inner.name)
            .field("addr", &self.inner.addr)
            .field("wanted", &st.wanted)
            .field("phase", &st.phase)
            .finish()
    }
}

/// Cancels an in-flight connect or a pending retry (on the loop).
fn cancel_attempt(lp: &mut EventLoop, inner: &Arc<Inner>) {
    let phase = {
        let mut st = inner.state.lock();
        match st.phase {
            Phase::Connecting(..) | Phase::Waiting(_) => {
                std::mem::replace(&mut st.phase, Phase::Idle)
            }
            _ => return,
        }
    };
    match phase {
        Phase::Connecting(token, timer) => {
            lp.remove_channel(token);
            if let Some(timer) = timer {
                lp.cancel(timer);
            }
        }
        Phase::Waiting(timer) => {
            lp.cancel(timer);
        }
        _ => {}
    }
}

/// Begins a connect attempt if one is wanted and nothing is in progress (on the loop).
fn start(lp: &mut EventLoop, inner: &Arc<Inner>) {
    {
        let mut st = inner.state.lock();
        if !st.wanted {
            return;
        }
        match st.phase {
            Phase::Idle => {}
            Phase::Waiting(timer) => {
                // `connect` while a retry waits: now, not at the end of the delay.
                st.phase = Phase::Idle;
                lp.cancel(timer);
            }
            Phase::Connected(_) => {
                if st.ending {
                    st.connect_after_close = true;
                }
                return;
            }
            Phase::Connecting(..) => return,
        }
    }
    inner.attempts.fetch_add(1, Ordering::Relaxed);
    let socket = match Socket::new(
        Domain::for_address(inner.addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    ) {
        Ok(s) => s,
        Err(e) => return failed(lp, inner, io::Error::new(e.kind(), format!("socket: {e}"))),
    };
    match socket.connect(&SockAddr::from(inner.addr)) {
        Ok(()) => connected(lp, inner, socket),
        Err(e) if duo_sys::is_connect_in_progress(&e) => {
            let handler = Connecting {
                inner: inner.clone(),
            };
            match lp.add_channel(socket, Interest::WRITABLE, handler) {
                Ok(token) => {
                    let timer = inner.connect_timeout.map(|t| {
                        let me = inner.clone();
                        lp.run_after(t, move |lp| connect_timed_out(lp, &me, token))
                    });
                    inner.state.lock().phase = Phase::Connecting(token, timer);
                }
                Err(e) => failed(lp, inner, e.error),
            }
        }
        Err(e) => failed(lp, inner, e),
    }
}

/// The connect attempt on `token` took longer than the connect timeout.
fn connect_timed_out(lp: &mut EventLoop, inner: &Arc<Inner>, token: Token) {
    {
        let mut st = inner.state.lock();
        match st.phase {
            Phase::Connecting(t, _) if t == token => st.phase = Phase::Idle,
            _ => return,
        }
    }
    lp.remove_channel(token);
    failed(
        lp,
        inner,
        io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
    );
}

/// An attempt failed: tell the application, then retry or give up.
fn failed(lp: &mut EventLoop, inner: &Arc<Inner>, error: io::Error) {
    let (attempts, will_retry) = {
        let mut st = inner.state.lock();
        st.phase = Phase::Idle;
        st.failures = st.failures.saturating_add(1);
        let exhausted = inner.max_attempts.is_some_and(|max| st.failures >= max);
        let will_retry = st.wanted && !fatal(&error) && !exhausted;
        if !will_retry {
            st.wanted = false;
        }
        (st.failures, will_retry)
    };
    if !will_retry {
        log::warn!(
            "client {}: connect to {} failed ({error}) after {attempts} attempts; giving up",
            inner.name,
            inner.addr
        );
    }
    if let Some(cb) = &inner.connect_failed {
        let failure = ConnectFailure {
            error,
            attempts,
            will_retry,
        };
        if catch_unwind(AssertUnwindSafe(|| cb(&failure))).is_err() {
            log::error!("client {}: connect-failed callback panicked", inner.name);
        }
        if will_retry {
            retry(lp, inner, &failure.error.to_string());
        }
    } else if will_retry {
        retry(lp, inner, &error.to_string());
    }
}

/// Errors that a retry cannot fix (bad address family, permissions).
fn fatal(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
    )
}

/// Schedules the next attempt after the current delay, and doubles the delay.
fn retry(lp: &mut EventLoop, inner: &Arc<Inner>, why: &str) {
    let delay = {
        let mut st = inner.state.lock();
        st.phase = Phase::Idle;
        if !st.wanted {
            return;
        }
        let d = st.delay;
        st.delay = (d * 2).min(inner.retry_max);
        d
    };
    log::info!(
        "client {}: connect to {} failed ({why}); retrying in {delay:?}",
        inner.name,
        inner.addr
    );
    let me = inner.clone();
    let timer = lp.run_after(delay, move |lp| {
        {
            let mut st = me.state.lock();
            if matches!(st.phase, Phase::Waiting(_)) {
                st.phase = Phase::Idle;
            }
        }
        start(lp, &me);
    });
    inner.state.lock().phase = Phase::Waiting(timer);
}

/// The connect completed: set the connection up on this loop.
fn connected(lp: &mut EventLoop, inner: &Arc<Inner>, socket: Socket) {
    let (local, peer) = match (socket.local_addr(), socket.peer_addr()) {
        (Ok(l), Ok(p)) => (l.as_socket(), p.as_socket()),
        (Err(e), _) | (_, Err(e)) => return failed(lp, inner, e),
    };
    let (Some(local), Some(peer)) = (local, peer) else {
        return failed(
            lp,
            inner,
            io::Error::new(io::ErrorKind::Unsupported, "not an inet socket"),
        );
    };
    if local == peer {
        drop(socket);
        // Not the server's fault nor the network's: does not count as a failure.
        return retry(lp, inner, "connected to itself");
    }
    if !inner.state.lock().wanted {
        return;
    }
    if inner.tcp_nodelay {
        if let Err(e) = socket.set_nodelay(true) {
            log::debug!("client {}: TCP_NODELAY: {e}", inner.name);
        }
    }
    // Numbered process-wide, so that the connections of several clients with the same
    // name (one per relayed connection, say) are told apart in logs.
    let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    let handle = TcpConnection::new(id, Arc::from(inner.name.as_str()), peer, local, lp.handle());
    {
        let mut st = inner.state.lock();
        st.phase = Phase::Connected(handle.clone());
        st.delay = inner.retry_initial;
        st.failures = 0;
        st.ending = false;
        st.connect_after_close = false;
    }
    let weak = Arc::downgrade(inner);
    let hook: RemoveHook = Arc::new(move |conn: &TcpConnection| {
        if let Some(inner) = weak.upgrade() {
            closed(&inner, conn);
        }
    });
    let env = Arc::new(ConnEnv {
        callbacks: inner.callbacks.clone(),
        opts: (*inner.opts).clone(),
        remove_hook: Some(hook),
        counters: inner.counters.clone(),
        server: None,
    });
    let establish = Conn::establish(lp, socket, handle, env);
    if let Err(e) = establish {
        log::warn!("client {}: cannot register the connection: {e}", inner.name);
        // The remove hook has set the client idle: count it as a failed attempt.
        failed(lp, inner, e);
    }
}

/// The connection closed (on the loop, from inside its handler): forget it and, if
/// asked to, reconnect.
fn closed(inner: &Arc<Inner>, conn: &TcpConnection) {
    let (now, again) = {
        let mut st = inner.state.lock();
        if matches!(&st.phase, Phase::Connected(c) if c.id() == conn.id()) {
            st.phase = Phase::Idle;
        }
        let now = std::mem::take(&mut st.connect_after_close) && st.wanted;
        (now, st.wanted && inner.reconnect)
    };
    if now {
        let me = inner.clone();
        // Queued: the closing connection's handler is still on the stack.
        let _ = inner.lp.queue_in_loop(move |lp| start(lp, &me));
    } else if again {
        log::info!("client {}: connection closed; reconnecting", inner.name);
        let me = inner.clone();
        // Queued: the closing connection's handler is still on the stack.
        let _ = inner.lp.queue_in_loop(move |lp| {
            if matches!(me.state.lock().phase, Phase::Idle) {
                retry(lp, &me, "connection closed");
            }
        });
    }
}

/// The handler of a socket whose connect is in flight.
struct Connecting {
    inner: Arc<Inner>,
}

impl Connecting {
    /// Writable, error or hang-up: the connect finished one way or the other.
    fn finish(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        ch.remove();
        let inner = self.inner.clone();
        let timer = {
            let mut st = inner.state.lock();
            match st.phase {
                Phase::Connecting(t, timer) if t == ch.token() => {
                    st.phase = Phase::Idle;
                    timer
                }
                _ => return,
            }
        };
        if let Some(timer) = timer {
            lp.cancel(timer);
        }
        let error = match duo_sys::take_socket_error(ch.fd()) {
            Ok(None) => None,
            Ok(Some(e)) | Err(e) => Some(e),
        };
        if let Some(e) = error {
            return failed(lp, &inner, e);
        }
        // The channel owns the descriptor and deregisters and closes it when this handler
        // returns; the connection registers its own descriptor for the same socket.
        let fd = match ch.fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => return failed(lp, &inner, e),
        };
        connected(lp, &inner, Socket::from(fd));
    }
}

impl Handler for Connecting {
    fn handle_write(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        self.finish(lp, ch);
    }
    fn handle_error(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        self.finish(lp, ch);
    }
    fn handle_close(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        self.finish(lp, ch);
    }
}
