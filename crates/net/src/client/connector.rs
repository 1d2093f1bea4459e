//! Connect attempts: a non-blocking connect (`EINPROGRESS`, then writability and
//! `SO_ERROR`), its timeout, retries with backoff, and the client's phase.
//!
//! On success the descriptor is duplicated for the connection's own channel (the connect
//! channel closes its copy when its handler returns). A connection to itself (on loopback
//! the kernel may pick the server's port as the ephemeral port, and a connect to a port
//! nobody listens on then "succeeds") is detected (`local == peer`) and retried without
//! counting as a failure. Failed attempts retry after a delay doubling from 500 ms to
//! 30 s (`retry_backoff`), up to `max_attempts` if set, each within `connect_timeout` if
//! set; errors a retry cannot fix (permission, bad address family) end the attempts. A
//! reconnect after a close waits the current delay too; a connection that stayed up at
//! least that long resets it to the initial delay first. A TLS connection is an attempt
//! until its handshake completes: one whose handshake failed or timed out never was up,
//! resets nothing, and is a failed attempt like a refused connect (reported, counted
//! against `max_attempts`, retried or given up).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use duo_reactor::{Channel, EventLoop, Handler, Interest, LoopHandle, TimerId, Token};
use parking_lot::Mutex;
use socket2::{Domain, Socket, Type};

use super::{ConnectFailedCallback, ConnectFailure};
use crate::close_reason::{CloseReason, TlsFailure};
use crate::config::ConnConfig;
use crate::conn::callbacks::Callbacks;
use crate::conn::machine::{CloseHook, LoopConn, Owner};
use crate::endpoint::Endpoint;
use crate::guard::catch_user_panic;
use crate::stats::IoCounters;
use crate::TcpConnection;

/// Ids of client connections, unique in the process.
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Where the client is. Changed only on its loop.
#[derive(Debug)]
pub(super) enum Phase {
    /// Nothing in progress.
    Idle,
    /// A non-blocking connect is in flight on this channel (with its timeout timer).
    Connecting(Token, Option<TimerId>),
    /// Waiting for the retry timer.
    Waiting(TimerId),
    /// Connected.
    Connected(TcpConnection),
}

pub(super) struct State {
    /// The user wants a connection (set by `connect`, cleared by `disconnect`/`stop`).
    pub(super) wanted: bool,
    /// `disconnect` was called: the connection finishes by itself (output written,
    /// half-closed, closed when the server closes), even if the client is dropped.
    pub(super) draining: bool,
    pub(super) phase: Phase,
    /// The next retry delay.
    pub(super) delay: Duration,
    /// When the current connection came up: one that stays up at least as long as the
    /// retry delay resets it (see [`closed`]).
    pub(super) up_since: Option<std::time::Instant>,
    /// Failed attempts in a row.
    pub(super) failures: u32,
    /// `disconnect` or `stop` asked the current connection to end.
    pub(super) ending: bool,
    /// `stop` asked the current connection to end: if it was not up yet for the
    /// application (a TLS handshake completing as another thread calls `stop`), it never
    /// comes up for it (see [`up_noted`]).
    pub(super) stopped: bool,
    /// `connect` was called while that connection was ending: connect again once it has
    /// closed.
    pub(super) connect_after_close: bool,
    /// Bumped by each `connect`, which begins a new run of attempts (its failures counted
    /// from zero). What a closing connection queues about itself (its failed attempt, a
    /// reconnect) carries the generation it belonged to, and is stale once a `connect`
    /// came after it: that call's own attempt is under way or queued.
    pub(super) generation: u64,
}

pub(super) struct Inner {
    pub(super) name: String,
    pub(super) addr: Endpoint,
    pub(super) lp: LoopHandle,
    pub(super) reconnect: bool,
    pub(super) retry_initial: Duration,
    pub(super) retry_max: Duration,
    pub(super) max_attempts: Option<u32>,
    pub(super) connect_timeout: Option<Duration>,
    pub(super) callbacks: Arc<Callbacks>,
    pub(super) connect_failed: Option<ConnectFailedCallback>,
    pub(super) conn: ConnConfig,
    #[cfg(feature = "tls")]
    pub(super) tls: Option<crate::conn::TlsSetup>,
    pub(super) counters: Arc<IoCounters>,
    pub(super) attempts: AtomicU64,
    pub(super) state: Mutex<State>,
}

/// Cancels an in-flight connect or a pending retry (on the loop).
pub(super) fn cancel_attempt(lp: &mut EventLoop, inner: &Arc<Inner>) {
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
pub(super) fn start(lp: &mut EventLoop, inner: &Arc<Inner>) {
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
    if inner.connect_timeout == Some(Duration::ZERO) {
        // Refused as std's `TcpStream::connect_timeout` refuses it (fatal: no retry).
        let e = io::Error::new(io::ErrorKind::InvalidInput, "zero connect timeout");
        return failed(lp, inner, e);
    }
    let (domain, addr) = match (&inner.addr, inner.addr.to_sock_addr()) {
        (Endpoint::Inet(a), Ok(addr)) => (Domain::for_address(*a), addr),
        (_, Ok(addr)) => (Domain::UNIX, addr),
        (_, Err(e)) => return failed(lp, inner, e),
    };
    let socket = match Socket::new(domain, Type::STREAM.nonblocking().cloexec(), None) {
        Ok(s) => s,
        Err(e) => return failed(lp, inner, io::Error::new(e.kind(), format!("socket: {e}"))),
    };
    // A Unix-domain connect completes at once or fails at once (`EAGAIN`: the server's
    // backlog is full, retried like any failure); only TCP's goes on in the background.
    match socket.connect(&addr) {
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
    let (attempts, will_retry, generation, stopped) = {
        let mut st = inner.state.lock();
        // `disconnect` or `stop` came first (its cancelling still queued): the user's
        // decision, not a connect that gave up.
        let stopped = !st.wanted;
        st.phase = Phase::Idle;
        st.failures = st.failures.saturating_add(1);
        let exhausted = inner.max_attempts.is_some_and(|max| st.failures >= max);
        let will_retry = st.wanted && !fatal(&error) && !exhausted;
        if !will_retry {
            st.wanted = false;
        }
        (st.failures, will_retry, st.generation, stopped)
    };
    if stopped {
        log::debug!(
            "client {}: connect to {} failed ({error}) after the client was stopped",
            inner.name,
            inner.addr
        );
    } else if !will_retry {
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
        catch_user_panic(
            &mut (),
            |_| cb(&failure),
            |_| format!("client {}", inner.name),
            "connect-failed callback",
        );
        // Unless the callback called `connect`: that began a new run, its attempt queued
        // and its delay started over (a retry scheduled here would double it).
        if will_retry && inner.state.lock().generation == generation {
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
        // Saturating: a delay too long for the clock (`Duration::MAX` from a user's
        // configuration) means "retry never", not a panic on the loop.
        st.delay = d.saturating_mul(2).min(inner.retry_max);
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
        (Ok(l), Ok(p)) => (Endpoint::from_sock_addr(&l), Endpoint::from_sock_addr(&p)),
        (Err(e), _) | (_, Err(e)) => return failed(lp, inner, e),
    };
    let (Some(local), Some(peer)) = (local, peer) else {
        return failed(
            lp,
            inner,
            io::Error::new(
                io::ErrorKind::Unsupported,
                "neither an inet nor a unix socket",
            ),
        );
    };
    // Only TCP can connect to itself; Unix-domain peers are told by their credentials.
    let unix = peer.is_unix();
    let credentials = if unix {
        match duo_sys::peer_credentials(std::os::fd::AsFd::as_fd(&socket)) {
            Ok(c) => Some(c),
            Err(e) => return failed(lp, inner, e),
        }
    } else {
        None
    };
    if !unix && local == peer {
        drop(socket);
        // Not the server's fault nor the network's: does not count as a failure.
        return retry(lp, inner, "connected to itself");
    }
    if !inner.state.lock().wanted {
        return;
    }
    if inner.conn.tcp_nodelay && !unix {
        if let Err(e) = socket.set_nodelay(true) {
            log::debug!("client {}: TCP_NODELAY: {e}", inner.name);
        }
    }
    // Numbered process-wide, so that the connections of several clients with the same
    // name (one per relayed connection, say) are told apart in logs.
    let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    let handle = TcpConnection::new(
        id,
        Arc::new(inner.name.clone()),
        peer,
        local,
        credentials,
        lp.handle(),
    );
    {
        let mut st = inner.state.lock();
        // Checked again where the connection is published, in one lock with it: a `stop`
        // from another thread since the check above found no connection to pause, and
        // this one must not come up after it.
        if !st.wanted {
            return;
        }
        st.phase = Phase::Connected(handle.clone());
        // The delay is not reset here: a server that accepts and then drops every
        // connection at once must see the reconnects slow down, not one every initial
        // delay for ever. A connection that lasts resets it when it closes: lasts from
        // when it came up (its "up" callback, below), which for TLS is when its
        // handshake completed, not now (a slow handshake is no time up).
        st.up_since = None;
        // `failures` is not reset here: a TLS connection is an attempt until its
        // handshake completes, and one that fails counts (see [`closed`]).
        st.ending = false;
        st.stopped = false;
        st.connect_after_close = false;
    }
    let weak = Arc::downgrade(inner);
    let hook: CloseHook = Arc::new(move |conn: &TcpConnection, was_up| {
        if let Some(inner) = weak.upgrade() {
            closed(&inner, conn, was_up);
        }
    });
    let owner = Arc::new(Owner {
        callbacks: up_noted(inner, &handle),
        config: inner.conn,
        idle_key: None,
        on_close: Some(hook),
        counters: inner.counters.clone(),
        server: None,
        #[cfg(feature = "tls")]
        tls: inner.tls.clone(),
    });
    let establish = LoopConn::establish(lp, socket, handle, owner);
    if let Err(e) = establish {
        // The close hook has set the client idle and queued the failed attempt (a
        // connection that never was up), which reports its reason.
        log::warn!("client {}: cannot register the connection: {e}", inner.name);
    }
}

/// The client's callbacks for the connection `conn`, its "up" call (the first call of the
/// connection callback, made once the connection is up: at once for plain TCP, after the
/// handshake for TLS) first noting when the connection came up (see [`closed`]).
///
/// A connection that `stop` ended before its "up" call (a TLS handshake that completes in
/// the loop's batch of events during which another thread calls `stop`, whose close is
/// queued behind that batch) is hidden from the application: neither its "up" call nor
/// its "down" calls (connection and close callbacks) reach the user, who was told by
/// `stop` returning that the client is done.
fn up_noted(inner: &Arc<Inner>, conn: &TcpConnection) -> Arc<Callbacks> {
    let mut callbacks = Callbacks::clone(&inner.callbacks);
    let user = callbacks.connection.take();
    let weak = Arc::downgrade(inner);
    let id = conn.id();
    let first = std::sync::atomic::AtomicBool::new(true);
    let hidden = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hide = hidden.clone();
    callbacks.connection = Some(Arc::new(move |c: &TcpConnection| {
        if first.swap(false, Ordering::Relaxed) {
            if let Some(inner) = weak.upgrade() {
                let mut st = inner.state.lock();
                if matches!(&st.phase, Phase::Connected(c) if c.id() == id) {
                    if st.stopped {
                        hide.store(true, Ordering::Relaxed);
                    } else {
                        st.up_since = Some(std::time::Instant::now());
                    }
                }
            }
        }
        if hide.load(Ordering::Relaxed) {
            return;
        }
        if let Some(user) = &user {
            user(c);
        }
    }));
    if let Some(close) = callbacks.close.take() {
        callbacks.close = Some(Arc::new(move |c: &TcpConnection| {
            if !hidden.load(Ordering::Relaxed) {
                close(c);
            }
        }));
    }
    Arc::new(callbacks)
}

/// `connect` found the client's loop gone: a failed attempt, reported on the calling
/// thread (there is no loop to report it on) and not retried. A `connect` from inside
/// that report (the callback trying again) is only logged: reported, it would recurse
/// for ever.
pub(super) fn loop_gone(inner: &Arc<Inner>) {
    thread_local! {
        /// The clients whose loop-gone failure this thread is reporting.
        static REPORTING: std::cell::RefCell<Vec<usize>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let key = Arc::as_ptr(inner) as usize;
    let attempts = {
        let mut st = inner.state.lock();
        st.wanted = false;
        st.failures = st.failures.saturating_add(1);
        st.failures
    };
    log::warn!("client {}: loop is gone; cannot connect", inner.name);
    let Some(cb) = &inner.connect_failed else {
        return;
    };
    if REPORTING.with(|r| r.borrow().contains(&key)) {
        return;
    }
    REPORTING.with(|r| r.borrow_mut().push(key));
    let failure = ConnectFailure {
        error: io::Error::from(duo_reactor::LoopClosed),
        attempts,
        will_retry: false,
    };
    catch_user_panic(
        &mut (),
        |_| cb(&failure),
        |_| format!("client {}", inner.name),
        "connect-failed callback",
    );
    REPORTING.with(|r| r.borrow_mut().retain(|k| *k != key));
}

/// The connection closed (on the loop, from inside its handler): forget it and, if
/// asked to, reconnect. `was_up`: it came up (a TLS connection whose handshake failed or
/// timed out never did, however long it took). One that never came up while the client
/// still wanted it (not ended by `disconnect` or `stop`) is a failed attempt: reported,
/// counted against `max_attempts`, retried or given up like a refused connect.
fn closed(inner: &Arc<Inner>, conn: &TcpConnection, was_up: bool) {
    let (now, again, attempt_failed, generation) = {
        let mut st = inner.state.lock();
        let mut attempt_failed = false;
        if matches!(&st.phase, Phase::Connected(c) if c.id() == conn.id()) {
            st.phase = Phase::Idle;
            // Up at least as long as the delay it would wait now: a working connection
            // that ended, so the next one is tried soon again. A TLS handshake that
            // failed, even slowly, resets nothing: a server that never completes one
            // sees the retries back off.
            let up_for = st.up_since.take().filter(|_| was_up).map(|t| t.elapsed());
            if up_for.is_some_and(|d| d >= st.delay) {
                st.delay = inner.retry_initial;
            }
            if was_up {
                st.failures = 0;
            } else {
                // Not ended by `disconnect` or `stop` (a `connect` since may want it
                // again: that connects once it has closed, below).
                attempt_failed = st.wanted && !st.ending;
            }
        }
        let now = std::mem::take(&mut st.connect_after_close) && st.wanted;
        (
            now,
            st.wanted && inner.reconnect,
            attempt_failed,
            st.generation,
        )
    };
    if attempt_failed {
        let error = never_up_error(conn);
        let me = inner.clone();
        // Queued: the closing connection's handler is still on the stack. A `connect`
        // (a new attempt under way or queued, with its own count of failures) or `stop`
        // since then takes precedence: the failure is then no longer the client's to
        // count or retry (counted, it could end the new run before it began).
        let _ = inner.lp.queue_in_loop(move |lp| {
            let current = {
                let st = me.state.lock();
                st.wanted && matches!(st.phase, Phase::Idle) && st.generation == generation
            };
            if current {
                failed(lp, &me, error);
            } else {
                log::debug!(
                    "client {}: attempt failed ({error}), superseded by a connect or stop",
                    me.name
                );
            }
        });
    } else if now {
        let me = inner.clone();
        // Queued: the closing connection's handler is still on the stack.
        let _ = inner.lp.queue_in_loop(move |lp| start(lp, &me));
    } else if again {
        log::info!("client {}: connection closed; reconnecting", inner.name);
        let me = inner.clone();
        // Queued: the closing connection's handler is still on the stack.
        let _ = inner.lp.queue_in_loop(move |lp| {
            let current = {
                let st = me.state.lock();
                matches!(st.phase, Phase::Idle) && st.generation == generation
            };
            // (A `connect` since then connects at once, with the delay reset.)
            if current {
                retry(lp, &me, "connection closed");
            }
        });
    }
}

/// The error a failed attempt reports for a connection that closed before it was up (a
/// TLS handshake that failed or timed out, a registration that failed).
fn never_up_error(conn: &TcpConnection) -> io::Error {
    let kind = match conn.close_reason() {
        Some(CloseReason::Tls(TlsFailure::HandshakeTimeout) | CloseReason::Idle) => {
            io::ErrorKind::TimedOut
        }
        Some(CloseReason::Tls(_)) => io::ErrorKind::InvalidData,
        Some(CloseReason::Error(kind)) => kind,
        Some(CloseReason::Peer) => io::ErrorKind::UnexpectedEof,
        _ => io::ErrorKind::Other,
    };
    let reason = conn
        .close_reason()
        .map_or_else(|| "closed".to_owned(), |r| r.to_string());
    io::Error::new(
        kind,
        format!("connection closed before it was up ({reason})"),
    )
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
