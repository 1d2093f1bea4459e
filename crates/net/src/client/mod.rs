//! [`TcpClient`]: connects to one server address from a loop and serves the connection
//! with the same callbacks as a server, muduo's `TcpClient`.
//!
//! - this file: the client, its builder, and what the application calls;
//! - [`connector`]: connect attempts (non-blocking connect, timeout, retry with backoff)
//!   and the client's phase.

mod connector;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use duo_reactor::LoopHandle;
use parking_lot::Mutex;

use connector::{cancel_attempt, loop_gone, start, Inner, Phase, State};

use crate::close_reason::CloseReason;
use crate::config::{conn_config_setters, defaults, ConnConfig};
use crate::conn::callbacks::{callback_setters, Callbacks};
use crate::conn::machine::LoopConn;
use crate::endpoint::Endpoint;
use crate::stats::{IoCounters, LoopStats};
use crate::{ConnState, TcpConnection};

/// A failed connect attempt, as the [`on_connect_failed`](ClientBuilder::on_connect_failed)
/// callback sees it.
#[derive(Debug)]
pub struct ConnectFailure {
    /// Why the attempt failed (`ConnectionRefused`, `TimedOut` after
    /// [`connect_timeout`](ClientBuilder::connect_timeout) or the TLS handshake timeout,
    /// `InvalidData` for a TLS handshake that failed, `NotConnected` when the client's
    /// loop is gone, ...).
    pub error: io::Error,
    /// Failed attempts in a row so far, this one included.
    pub attempts: u32,
    /// Whether the client tries again (after the retry delay). `false` when
    /// [`max_attempts`](ClientBuilder::max_attempts) is reached, the error cannot be fixed
    /// by retrying (bad address family, permission), or the client was stopped: the
    /// client then stays idle until [`TcpClient::connect`] is called again.
    pub will_retry: bool,
}

/// Called on the client's loop after each failed connect attempt (on the thread calling
/// `connect` when that loop is gone).
pub(crate) type ConnectFailedCallback = Arc<dyn Fn(&ConnectFailure) + Send + Sync>;

/// Builds a [`TcpClient`]; from [`TcpClient::builder`].
pub struct ClientBuilder {
    name: String,
    addr: Endpoint,
    reconnect: bool,
    retry_initial: Duration,
    retry_max: Duration,
    max_attempts: Option<u32>,
    connect_timeout: Option<Duration>,
    conn: ConnConfig,
    callbacks: Callbacks,
    connect_failed: Option<ConnectFailedCallback>,
    #[cfg(feature = "tls")]
    tls: Option<crate::conn::TlsSetup>,
    /// Set by `tls_handshake_timeout`, before or after `tls`.
    #[cfg(feature = "tls")]
    tls_handshake_timeout: Option<Duration>,
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
    /// at most `max` (defaults [`defaults::RETRY_INITIAL`] and
    /// [`defaults::RETRY_MAX`]).
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
    /// about two minutes for an address that does not answer; at most a day).
    ///
    /// A zero `timeout` is refused, as [`std::net::TcpStream::connect_timeout`] refuses
    /// it (it does not mean "no timeout"): every attempt then fails at once with
    /// [`io::ErrorKind::InvalidInput`], reported to
    /// [`on_connect_failed`](ClientBuilder::on_connect_failed) and not retried.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        // At most a day: a deadline past what `Instant` can hold would overflow.
        self.connect_timeout = Some(timeout.min(Duration::from_secs(86_400)));
        self
    }
    /// Called after each failed connect attempt, with the error and whether the client
    /// will retry; see [`ConnectFailure`]. A relay closes its inbound connection here
    /// when the backend is unreachable.
    ///
    /// It runs on the client's loop, except when that loop is gone (dropped: it ended, or
    /// its thread died): then [`ClientBuilder::connect`] and [`TcpClient::connect`] report
    /// the attempt they could not make at once, on the calling thread, before they return
    /// (`NotConnected`, `will_retry == false`). A `connect` called from inside that report
    /// is not reported again (only logged).
    pub fn on_connect_failed(
        mut self,
        f: impl Fn(&ConnectFailure) + Send + Sync + 'static,
    ) -> Self {
        self.connect_failed = Some(Arc::new(f));
        self
    }
    conn_config_setters!();
    callback_setters!();
    /// Speaks TLS with `config`, verifying the server's certificate as `server_name`
    /// (see [`crate::tls`]; [`tls::server_name`](crate::tls::server_name) makes one from
    /// a string). Needs the feature `tls` (on by default).
    ///
    /// The connection is up once the handshake completes: only then does the connection
    /// callback run and does [`TcpClient::connection`] return its handle (while the
    /// handshake is under way the client is still connecting, as a plain client is until
    /// its connect completes: `connection()` is `None`), so nothing can be sent before
    /// the handshake and everything accepted afterwards goes out in order.
    /// [`disconnect`](TcpClient::disconnect) or [`stop`](TcpClient::stop) during the
    /// handshake just closes the connection.
    ///
    /// A failed handshake closes the connection ([`CloseReason::Tls`],
    /// logged, counted in [`TcpClient::stats`]) without a connection callback (it never
    /// was up), and is a failed connect attempt: it reaches
    /// [`on_connect_failed`](ClientBuilder::on_connect_failed) (`InvalidData`, or
    /// `TimedOut` after the handshake timeout), counts against
    /// [`max_attempts`](ClientBuilder::max_attempts) and is retried after the retry
    /// delay, with or without [`reconnect`](ClientBuilder::reconnect), which a connection
    /// that never came up does not reset however long its handshake took: the attempts on
    /// a server that fails every handshake back off.
    #[cfg(feature = "tls")]
    pub fn tls(
        mut self,
        config: Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    ) -> Self {
        self.tls = Some(crate::conn::TlsSetup {
            role: crate::conn::TlsRole::Client(config, server_name),
            handshake_timeout: self
                .tls_handshake_timeout
                .unwrap_or(crate::tls::DEFAULT_HANDSHAKE_TIMEOUT),
        });
        self
    }
    /// Closes the connection if its TLS handshake has not completed after `timeout`
    /// (default [`tls::DEFAULT_HANDSHAKE_TIMEOUT`](crate::tls::DEFAULT_HANDSHAKE_TIMEOUT),
    /// 10 s), whether called before or after [`tls`](ClientBuilder::tls). Needs the
    /// feature `tls`.
    #[cfg(feature = "tls")]
    pub fn tls_handshake_timeout(mut self, timeout: Duration) -> Self {
        let timeout = timeout.clamp(Duration::from_millis(1), Duration::from_secs(86_400));
        self.tls_handshake_timeout = Some(timeout);
        if let Some(tls) = &mut self.tls {
            tls.handshake_timeout = timeout;
        }
        self
    }

    /// Creates the client on the loop behind `lp` and starts connecting. The connection
    /// will live on that loop. Calling this from a callback of a server's connection with
    /// that connection's loop (`ctx.event_loop().handle()`) is allowed and is how a relay
    /// keeps both of its connections on one loop.
    ///
    /// If that loop is gone (dropped), the client cannot connect: the attempt is reported
    /// to [`on_connect_failed`](ClientBuilder::on_connect_failed) before this returns
    /// (see there), and the client stays idle.
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
            callbacks: Arc::new(self.callbacks),
            connect_failed: self.connect_failed,
            conn: self.conn,
            #[cfg(feature = "tls")]
            tls: self.tls,
            counters: Arc::new(IoCounters::default()),
            attempts: AtomicU64::new(0),
            state: Mutex::new(State {
                wanted: false,
                draining: false,
                phase: Phase::Idle,
                delay: self.retry_initial,
                failures: 0,
                up_since: None,
                ending: false,
                stopped: false,
                connect_after_close: false,
                generation: 0,
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

/// A TCP client: connects to one server address from a loop and serves the connection
/// with the same callbacks as [`TcpServer`](crate::TcpServer).
///
/// The connect is non-blocking (`EINPROGRESS`, then writability and `SO_ERROR`). A failed
/// attempt is retried after a delay that starts at 500 ms and doubles up to 30 s
/// ([`ClientBuilder::retry_backoff`]); a connection to itself (possible on loopback when
/// the kernel picks the server's port as the ephemeral port) is detected and retried.
/// With [`ClientBuilder::reconnect`], a connection that closes is re-established, after
/// the current retry delay: the delay starts again at its initial value only after a
/// connection that stayed up at least that long, so a server that accepts and drops every
/// connection at once sees the reconnects back off like failed attempts.
///
/// All methods are callable from any thread.
///
/// # Failures
///
/// [`ClientBuilder::on_connect_failed`] sees every failed attempt (refused, timed out
/// after [`ClientBuilder::connect_timeout`], unreachable, a TLS handshake that failed or
/// timed out, a loop that is gone) with the error and whether the
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
/// lives on the same loop as the server's connection, and each side can act on the
/// other at once with [`TcpConnection::with_ctx`]. Set
/// [`Backpressure::Notify`](crate::Backpressure::Notify) on both (a relay pauses the *source*
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
/// let server = TcpServer::builder("echo", "127.0.0.1:0".parse::<duo_net::Endpoint>()?)
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
    /// A builder for a client named `name` that connects to `addr`: a TCP address or a
    /// Unix-domain [`Endpoint`] (`unix:/path`, `unix:@name`; example at
    /// [`TcpServer::builder`](crate::TcpServer::builder)).
    pub fn builder(name: &str, addr: impl Into<Endpoint>) -> ClientBuilder {
        let addr = addr.into();
        ClientBuilder {
            name: name.to_owned(),
            addr,
            reconnect: false,
            retry_initial: defaults::RETRY_INITIAL,
            retry_max: defaults::RETRY_MAX,
            max_attempts: None,
            connect_timeout: None,
            conn: ConnConfig::default(),
            callbacks: Callbacks::default(),
            connect_failed: None,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "tls")]
            tls_handshake_timeout: None,
        }
    }

    /// The server's TCP address; `0.0.0.0:0` for a Unix-domain server (see
    /// [`server_endpoint`](TcpClient::server_endpoint)).
    pub fn server_addr(&self) -> SocketAddr {
        self.inner
            .addr
            .as_inet()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The server's address, on any transport.
    pub fn server_endpoint(&self) -> &Endpoint {
        &self.inner.addr
    }

    /// The client's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The current connection, if connected: `None` while connecting, and for a TLS
    /// client also while its handshake is under way (the connection is up, and its
    /// handle returned, only once the handshake completes). `None` too as soon as
    /// [`disconnect`](TcpClient::disconnect) or [`stop`](TcpClient::stop) has been called,
    /// even while the connection they end is still closing (its output draining): it is
    /// no longer the client's. A handle taken before may still accept a send, which is
    /// then dropped if the connection has closed or half-closed when the loop gets to it
    /// (see [`TcpConnection::send`]).
    pub fn connection(&self) -> Option<TcpConnection> {
        let st = self.inner.state.lock();
        match &st.phase {
            Phase::Connected(_) if st.ending => None,
            Phase::Connected(c) if c.state() != ConnState::Connecting => Some(c.clone()),
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
    ///
    /// Each call begins a new run of attempts (failures counted from zero against
    /// [`ClientBuilder::max_attempts`]): an attempt that ended before the call but whose
    /// failure was not handled yet (a TLS handshake that failed just before) belongs to
    /// the run before, and is neither reported nor retried (logged at debug level).
    ///
    /// If the client's loop is gone (dropped), nothing can connect: the attempt is
    /// reported to [`ClientBuilder::on_connect_failed`] on this thread before this returns
    /// (`NotConnected`, not retried).
    pub fn connect(&self) {
        let inner = self.inner.clone();
        {
            let mut st = inner.state.lock();
            st.wanted = true;
            st.draining = false;
            st.delay = inner.retry_initial;
            st.failures = 0;
            // A new run of attempts: a failure of the last one still queued is stale.
            st.generation = st.generation.wrapping_add(1);
        }
        let me = inner.clone();
        if inner.lp.queue_in_loop(move |lp| start(lp, &me)).is_err() {
            loop_gone(&inner);
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
        self.end(true);
    }

    /// Stops connecting and retrying and closes the connection now (unsent output is
    /// dropped).
    ///
    /// Called from another thread, the close is queued to the client's loop, but once
    /// `stop` has returned no message callback begins for the connection, and a
    /// connection that was not up yet for the application (its "up" callback not begun: a
    /// TLS handshake completing meanwhile) never comes up for it: neither its "up" nor
    /// its "down" and close callbacks run. A connection whose "up" callback had begun gets
    /// its "down" calls as usual.
    pub fn stop(&self) {
        self.end(false);
    }

    /// Stops connecting and retrying, and ends the current connection: half-closed once
    /// its output is written (`drain`), or closed now.
    fn end(&self, drain: bool) {
        {
            let mut st = self.inner.state.lock();
            st.wanted = false;
            st.draining = drain;
            st.ending = true;
            st.stopped |= !drain;
            if let (false, Phase::Connected(c)) = (drain, &st.phase) {
                // The close below is queued (it runs after the loop's current batch of
                // events): paused now, the connection starts no message callback after
                // `stop` returned, even one whose input is ready in that batch. What it
                // holds is dropped by the close.
                c.set_read_paused(true);
            }
        }
        let inner = self.inner.clone();
        let _ = self.inner.lp.queue_in_loop(move |lp| {
            cancel_attempt(lp, &inner);
            let conn = {
                let mut st = inner.state.lock();
                let conn = match &st.phase {
                    Phase::Connected(c) => Some(c.clone()),
                    _ => None,
                };
                // Marked here too, not only when called: the connection ended may have
                // come up since (a `connect` after this call wanted it), which cleared the
                // mark; a `connect` queued behind this one then connects again once it
                // has closed.
                st.ending |= conn.is_some();
                conn
            };
            let Some(conn) = conn else { return };
            if drain {
                let _ = conn.shutdown();
                return;
            }
            // Closed here and now, so that a `connect` queued after this `stop` finds the
            // client idle.
            LoopConn::with_machine(lp, &conn, |lp, ch, m| m.close(lp, ch, CloseReason::User));
            if !conn.is_closed() {
                // Its own callback is running further up the stack: queue it.
                let _ = conn.force_close();
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
