//! [`ServerBuilder`]: a server's settings, and starting it.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use duo_reactor::{EventLoop, EventLoopThreadPool, Interest, LoopHandle, LoopSharing, ThreadInit};
use parking_lot::Mutex;
use socket2::{Socket, Type};

use super::accept::{
    listen, new_connection_handler, AcceptMode, AcceptTrouble, Acceptor, Ids, ListenOptions,
    Placement, WhenFull,
};
use super::unix::{listen_unix, release_held_name};
use super::{close_hook, ServerShared, TcpServer, NEXT_SERVER, NO_INET};
use crate::config::{conn_config_setters, defaults, ConnConfig};
use crate::conn::callbacks::{callback_setters, Callbacks};
use crate::conn::group::ServerLink;
use crate::conn::machine::{LoopConn, Owner};
use crate::endpoint::Endpoint;
use crate::per_loop::NetLoop;
use crate::stats::{AcceptCounters, IoCounters};
use crate::ConnCtx;

/// Builds and starts a [`TcpServer`]; from [`TcpServer::builder`].
pub struct ServerBuilder {
    name: String,
    addr: Endpoint,
    /// A socket already listening (inherited), used instead of binding `addr`.
    listener: Option<Socket>,
    io_threads: usize,
    /// Loops on the I/O threads (more than `io_threads`: a loop group).
    loops: usize,
    loop_sharing: LoopSharing,
    reuse_port: bool,
    defer_accept_secs: u32,
    accept_mode: AcceptMode,
    balance_accepts: bool,
    idle_timeout: Option<Duration>,
    busy_poll: Duration,
    max_connections: Option<usize>,
    when_full: WhenFull,
    buffer_trim_interval: Option<Duration>,
    conn: ConnConfig,
    callbacks: Callbacks,
    thread_init: Option<ThreadInit>,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ServerConfig>>,
    #[cfg(feature = "tls")]
    tls_handshake_timeout: Duration,
}

impl ServerBuilder {
    pub(super) fn new(name: &str, addr: Endpoint) -> ServerBuilder {
        ServerBuilder {
            name: name.to_owned(),
            addr,
            listener: None,
            io_threads: 0,
            loops: 0,
            loop_sharing: LoopSharing::default(),
            reuse_port: false,
            defer_accept_secs: 0,
            accept_mode: AcceptMode::default(),
            balance_accepts: true,
            idle_timeout: None,
            busy_poll: Duration::ZERO,
            max_connections: None,
            when_full: WhenFull::default(),
            buffer_trim_interval: Some(defaults::BUFFER_TRIM_INTERVAL),
            conn: ConnConfig::default(),
            callbacks: Callbacks::default(),
            thread_init: None,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "tls")]
            tls_handshake_timeout: crate::tls::DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    pub(super) fn on_listener(name: &str, listener: Socket) -> io::Result<ServerBuilder> {
        let addr = check_listener(&listener)?;
        let mut builder = ServerBuilder::new(name, addr);
        builder.listener = Some(listener);
        Ok(builder)
    }

    /// Number of I/O threads (sub reactors); 0 (the default) serves every connection on
    /// the main loop (single reactor).
    pub fn io_threads(mut self, n: usize) -> Self {
        self.io_threads = n;
        self
    }
    /// Serves the connections on `n` I/O loops shared by the
    /// [`io_threads`](ServerBuilder::io_threads) threads (default: one loop per thread).
    ///
    /// A connection belongs to one loop, which serves it without a lock as always; with
    /// more loops than threads a loop is not tied to one thread: a ready loop whose
    /// thread is busy elsewhere or off its core is run by another I/O thread
    /// ([`duo_reactor::LoopGroup`], sharing as [`loop_sharing`](ServerBuilder::loop_sharing)
    /// says). A thread that loses its core (to another process on a busy host) then holds
    /// up only the connections of the one loop it was running, instead of every
    /// connection of its thread: a shorter latency tail on a crowded machine. Measured
    /// with 100 request/response connections on 2 threads (`docs/benchmarks.md`): 16
    /// loops, owned (the default sharing), brought the p99 to 1.03-1.10 x tokio's (a loop
    /// per thread: 1.8 x) at a loop per thread's CPU per request; 64 loops shared by
    /// [`LoopSharing::Any`] brought p99 and p99.9 below tokio's for 20-55 % more CPU. With
    /// `n` at most `io_threads` this has no effect; with no I/O threads, `start` refuses
    /// it.
    ///
    /// [`AcceptMode::Shared`] (the default) becomes [`AcceptMode::ReusePort`] with more
    /// loops than threads ([`AcceptMode::MainLoop`] on an inherited or Unix-domain socket,
    /// whichever mode was asked): the group's loops wait together in one outer epoll set,
    /// (or their threads' sets), where `EPOLLEXCLUSIVE` cannot choose one loop per
    /// connection. Mind what
    /// `ReusePort` means when a server stops: the connections still queued on a loop's
    /// listener when it closes are reset (see [`AcceptMode`]), so a server that must hand
    /// its queue over to a successor (worker processes, reloads) serves on an inherited
    /// socket, where the main loop accepts. Busy polling
    /// ([`busy_poll`](ServerBuilder::busy_poll)) applies to the group's threads
    /// ([`duo_reactor::LoopGroup::set_busy_poll`]).
    pub fn loops(mut self, n: usize) -> Self {
        self.loops = n;
        self
    }
    /// How the I/O threads share the loops when there are more loops than threads
    /// ([`loops`](ServerBuilder::loops)); default [`LoopSharing::Owned`]: each loop has an
    /// owner thread and another thread runs its turns only when the owner has made no
    /// progress for a while, for a loop per thread's cost. [`LoopSharing::Any`]: any
    /// free thread runs any ready loop, for the lowest tail at more CPU per event.
    pub fn loop_sharing(mut self, sharing: LoopSharing) -> Self {
        self.loop_sharing = sharing;
        self
    }
    /// Sets `SO_REUSEPORT` on the listening socket (several servers on one port). Not
    /// on a Unix-domain socket, where it has no meaning: ignored there.
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.reuse_port = on;
        self
    }
    /// Defers accepting a TCP connection until the client has sent its first bytes
    /// (`TCP_DEFER_ACCEPT`, nginx's `deferred`), for up to `wait` (whole seconds, rounded
    /// up; zero turns it off, the default). The kernel then completes the connection and
    /// wakes the acceptor once, with the request already there to read, instead of waking
    /// it for the handshake and the loop again for the data: about 10 % less CPU per
    /// connection under short-lived connections here (`docs/benchmarks.md`). A client that
    /// sends nothing is handed over anyway once `wait` has passed (on the kernel's SYN-ACK
    /// retransmission schedule, so possibly a few seconds later), and until then it counts
    /// nowhere in the server.
    ///
    /// Only for protocols where the client speaks first: a server that greets first would
    /// leave its clients waiting for `wait`. Also set on an inherited listening socket;
    /// ignored on a Unix-domain one.
    pub fn defer_accept(mut self, wait: Duration) -> Self {
        // Saturating: `Duration::MAX` ("as long as the kernel allows") must not wrap to 0.
        let secs = wait
            .as_secs()
            .saturating_add(u64::from(wait.subsec_nanos() > 0));
        self.defer_accept_secs = u32::try_from(secs).unwrap_or(u32::MAX);
        self
    }
    /// How the I/O loops get their connections (default [`AcceptMode::Shared`]: every
    /// I/O loop accepts for itself on the one listening socket). See [`AcceptMode`] for
    /// the trade-off.
    pub fn accept_mode(mut self, mode: AcceptMode) -> Self {
        self.accept_mode = mode;
        self
    }
    /// Whether the loops of [`AcceptMode::Shared`] hand a connection to the least loaded
    /// loop when their own holds clearly more connections (default on). The kernel wakes
    /// one loop per connection and that loop drains the queue, so without it a burst of
    /// connections lands on one loop; with it, connections are spread by their count at
    /// the price of a hand-over (a queued function and a wake-up) per connection moved:
    /// about 5 % more CPU per connection for servers of short connections (connect, one
    /// request, close), whose loops drift apart all the time. Turn it off for such a
    /// server when the spread of long connections does not matter. No effect in the
    /// other modes.
    pub fn balance_accepts(mut self, on: bool) -> Self {
        self.balance_accepts = on;
        self
    }
    /// Busy polling on the server's loops (default off): after an iteration that found
    /// work, a loop looks again without blocking for up to `spin` before sleeping in
    /// `epoll_wait`. Trades CPU for tail latency under steady load; see
    /// [`EventLoop::set_busy_poll`] for when it pays. Set on every loop the server serves
    /// on (its I/O threads, or the main loop when it has none), so other users of those
    /// loops see it too; with [`loops`](ServerBuilder::loops) above the number of I/O
    /// threads, on the group's threads, which spin for the next ready loop.
    pub fn busy_poll(mut self, spin: Duration) -> Self {
        self.busy_poll = spin;
        self
    }
    /// Closes connections that show no activity for `timeout` (a timing wheel per loop;
    /// closes within one wheel tick after the timeout: 1/8 of it, at most 1 s, or past about
    /// 18 hours the timeout / 65 536). Activity
    /// is bytes received, and queued output taken by the peer (a client downloading a
    /// large reply slowly is not idle). The close drops what is unsent
    /// ([`CloseReason::Idle`](crate::CloseReason::Idle)).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout).filter(|t| !t.is_zero());
        self
    }
    /// Whether every read (and every write of queued output) counts as activity for the
    /// idle timeout (the default), or only the application's [`ConnCtx::refresh_idle`]
    /// calls do. Turn it off for a protocol
    /// with messages, and refresh on each complete message: then a peer that sends a byte
    /// now and then but never a whole message is evicted like a silent one.
    pub fn idle_refresh_on_read(mut self, on: bool) -> Self {
        self.conn.idle_refresh_on_read = on;
        self
    }
    /// Beyond `n` open connections, new ones are accepted and closed at once (counted as
    /// rejected), or left in the listen queue: see [`when_full`](ServerBuilder::when_full).
    /// Zero admits none: every connection is closed at once, or left in the queue (for
    /// the socket's other holders).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = Some(n);
        self
    }
    /// What happens beyond [`max_connections`](ServerBuilder::max_connections): reject
    /// (the default) or pause accepting until a connection closes ([`WhenFull`]).
    pub fn when_full(mut self, policy: WhenFull) -> Self {
        self.when_full = policy;
        self
    }
    /// How often each of the server's loops checks the server's buffer pool (see
    /// [`buffer_pool`](ServerBuilder::buffer_pool)) and, when its free blocks outweigh
    /// those in use (a burst is over), returns them to the system (default
    /// [`defaults::BUFFER_TRIM_INTERVAL`]; zero turns it off). Loops shared by several
    /// servers run one check, at the first server's interval.
    pub fn buffer_trim_interval(mut self, interval: Duration) -> Self {
        self.buffer_trim_interval = Some(interval).filter(|i| !i.is_zero());
        self
    }
    conn_config_setters!();
    callback_setters!();
    /// Serves TLS with `config` on every connection (see [`crate::tls`]): the callbacks
    /// see plaintext; a connection is up (its connection callback runs) once its
    /// handshake completes; one whose handshake fails is closed, counted
    /// ([`CloseReason::Tls`](crate::CloseReason::Tls)) and logged, and no callback sees it.
    /// Needs the feature `tls` (on by default).
    ///
    /// A configuration that accepts TLS 1.3 early data (0-RTT: `max_early_data_size`
    /// above 0) accepts, and announces to clients in its session tickets, at most
    /// [`max_input`](ServerBuilder::max_input) bytes of it: early data waits in the input
    /// until the handshake completes (no message callback can take it before), so more
    /// would close the connection as input too large, losing what the client was told
    /// was accepted.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }
    /// Closes a TLS connection whose handshake has not completed after `timeout`
    /// (default [`tls::DEFAULT_HANDSHAKE_TIMEOUT`](crate::tls::DEFAULT_HANDSHAKE_TIMEOUT),
    /// 10 s), whether called before or after [`tls`](ServerBuilder::tls). Needs the
    /// feature `tls`.
    #[cfg(feature = "tls")]
    pub fn tls_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.tls_handshake_timeout =
            timeout.clamp(Duration::from_millis(1), Duration::from_secs(86_400));
        self
    }
    /// Called for each open connection when a graceful
    /// [`shutdown`](crate::ServerHandle::shutdown) begins. Without it, a connection
    /// half-closes once its output is written. With it, the callback decides: an
    /// application with replies still being computed for the connection (on a worker
    /// pool, say) stops reading new requests ([`ConnCtx::stop_reading`]), sends what it
    /// owes, then calls [`ConnCtx::close_after_flush`] or [`ConnCtx::shutdown`].
    /// Connections still open when the shutdown's grace period ends are closed
    /// regardless.
    pub fn on_shutdown(mut self, f: impl Fn(&mut ConnCtx<'_>) + Send + Sync + 'static) -> Self {
        self.callbacks.shutdown = Some(Arc::new(f));
        self
    }
    /// Runs on each I/O loop, on its thread, before the server uses it (with
    /// [`loops`](ServerBuilder::loops) above the number of threads: once per loop, on
    /// whichever I/O thread runs the loop's first turn).
    pub fn thread_init(mut self, f: impl Fn(&mut EventLoop) + Send + Sync + 'static) -> Self {
        self.thread_init = Some(Arc::new(f));
        self
    }

    /// Binds, starts the I/O threads and starts accepting on `main`, the calling thread's
    /// loop (which must then [`run`](EventLoop::run)).
    pub fn start(mut self, main: &mut EventLoop) -> io::Result<TcpServer> {
        if self.io_threads == 0 && self.loops > 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "server {}: {} loops need I/O threads to run on (io_threads is 0)",
                    self.name, self.loops
                ),
            ));
        }
        let inherited = self.listener.is_some();
        let mode = self.resolve_accept_mode(inherited);
        let (listener, socket_file) = match (self.listener.take(), &self.addr) {
            (Some(listener), _) => (listener, None),
            (None, Endpoint::Inet(addr)) => (
                listen(
                    *addr,
                    ListenOptions {
                        reuse_port: self.reuse_port || mode == AcceptMode::ReusePort,
                        defer_accept_secs: self.defer_accept_secs,
                    },
                )?,
                None,
            ),
            (None, unix) => {
                release_held_name(main, unix);
                listen_unix(unix)?
            }
        };
        // A relative path reads back as given; an abstract name as its bytes.
        let endpoint = Endpoint::from_sock_addr(&listener.local_addr()?)
            .ok_or_else(|| io::Error::other("the listening socket has no inet or unix address"))?;
        let local_addr = endpoint.as_inet().unwrap_or(NO_INET);
        if inherited && self.defer_accept_secs > 0 && endpoint.as_inet().is_some() {
            duo_sys::set_tcp_defer_accept(
                std::os::fd::AsFd::as_fd(&listener),
                self.defer_accept_secs,
            )?;
        }
        // See `ServerShared::own_listener`.
        let own_listener = match mode {
            AcceptMode::MainLoop if !inherited => Some(listener.try_clone()?),
            _ => None,
        };
        let mut threads = EventLoopThreadPool::new(main.handle(), &self.name, self.io_threads);
        threads.set_loops(self.loops);
        threads.set_loop_sharing(self.loop_sharing);
        if let Some(init) = self.thread_init.clone() {
            threads.set_thread_init(init);
        }
        threads.start()?;
        let loops = threads.handles();
        let id = NEXT_SERVER.fetch_add(1, Ordering::Relaxed);
        let pool = self.conn.pool;
        let shared = Arc::new(ServerShared {
            id,
            name: self.name.clone(),
            local_addr,
            endpoint: endpoint.clone(),
            socket_file: Mutex::new(socket_file),
            main: main.handle(),
            counters: AcceptCounters::default(),
            io: loops
                .iter()
                .map(|h| Arc::new(IoCounters::named(h.name())))
                .collect(),
            acceptors: Mutex::new(Vec::new()),
            own_listener: Mutex::new(own_listener),
            removals_pending: AtomicUsize::new(0),
            pause_at: self
                .max_connections
                .filter(|_| self.when_full == WhenFull::Pause)
                .map(|n| n as u64),
            accept_paused: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            on_empty: Mutex::new(Vec::new()),
            trims_main: AtomicBool::new(false),
            grace_timer: Mutex::new(None),
            report_timer: Mutex::new(None),
            pool,
            link: Arc::new(ServerLink {
                id,
                loops: loops.clone(),
                shutdown_begun: AtomicBool::new(false),
                deadline_passed: AtomicBool::new(false),
            }),
        });
        // Per-loop services: installed on the main loop directly, on the server's own
        // I/O threads by a queued function (they end with their loop).
        if let Some(timeout) = self.idle_timeout {
            on_each_loop(main, &loops, move |lp| {
                NetLoop::idle_install(lp, id, timeout, LoopConn::idle_expired)
            })?;
        }
        if let Some(interval) = self.buffer_trim_interval {
            on_each_loop(main, &loops, move |lp| {
                NetLoop::trim_install(lp, pool, interval)
            })?;
            if loops.iter().any(|h| h.is_in_loop_thread()) {
                shared.trims_main.store(true, Ordering::SeqCst);
            }
        }
        let callbacks = Arc::new(self.callbacks);
        #[cfg(feature = "tls")]
        let tls = self
            .tls
            .take()
            .map(|config| early_data_within(config, self.conn.max_input));
        let owners: Vec<Arc<Owner>> = shared
            .io
            .iter()
            .map(|counters| {
                Arc::new(Owner {
                    callbacks: callbacks.clone(),
                    config: self.conn,
                    idle_key: self.idle_timeout.map(|_| id),
                    on_close: Some(close_hook(&shared)),
                    counters: counters.clone(),
                    server: Some(shared.link.clone()),
                    #[cfg(feature = "tls")]
                    tls: tls.clone().map(|config| crate::conn::TlsSetup {
                        role: crate::conn::TlsRole::Server(config),
                        handshake_timeout: self.tls_handshake_timeout,
                    }),
                })
            })
            .collect();
        let max = self.max_connections;
        let on_exhausted = |shared: &Arc<ServerShared>| -> Box<dyn FnMut(AcceptTrouble) + Send> {
            let shared = shared.clone();
            Box::new(move |trouble| {
                AcceptCounters::bump(match trouble {
                    AcceptTrouble::FdExhausted => &shared.counters.emfile,
                    AcceptTrouble::Error => &shared.counters.accept_errors,
                })
            })
        };
        if mode == AcceptMode::MainLoop {
            let ids = Ids {
                first: 1,
                stride: 1,
            };
            let on_new = new_connection_handler(
                shared.clone(),
                loops,
                owners,
                Placement::RoundRobin,
                max,
                self.when_full,
                ids,
            );
            let acceptor = Acceptor::new(
                endpoint.clone(),
                shared.clone(),
                on_new,
                on_exhausted(&shared),
            );
            let token = match main.add_channel(listener, Interest::READABLE, acceptor) {
                Ok(token) => token,
                Err(e) => {
                    // What was installed on the main loop for this server goes with it
                    // (the I/O threads' part ends with them).
                    NetLoop::idle_uninstall(main, id);
                    if shared.trims_main.swap(false, Ordering::SeqCst) {
                        NetLoop::trim_uninstall(main, pool);
                    }
                    return Err(e.into());
                }
            };
            shared.acceptors.lock().push((main.handle(), token));
        } else {
            // One acceptor per I/O loop, registered by the loop itself; wait for each so
            // that a failure is this call's error and the server accepts once we return.
            let n = loops.len();
            let in_flight: Arc<[AtomicU64]> = (0..n).map(|_| AtomicU64::new(0)).collect();
            let (done, registered) = std::sync::mpsc::channel();
            for (i, h) in loops.iter().enumerate() {
                let socket = match mode {
                    AcceptMode::ReusePort if i > 0 => listen(
                        local_addr,
                        ListenOptions {
                            reuse_port: true,
                            defer_accept_secs: self.defer_accept_secs,
                        },
                    )?,
                    _ => listener.try_clone()?,
                };
                let ids = Ids {
                    first: i as u64 + 1,
                    stride: n as u64,
                };
                let placement = match mode {
                    AcceptMode::Shared if self.balance_accepts => Placement::Balanced {
                        home: i,
                        in_flight: in_flight.clone(),
                    },
                    _ => Placement::Home(i),
                };
                let on_new = new_connection_handler(
                    shared.clone(),
                    loops.clone(),
                    owners.clone(),
                    placement,
                    max,
                    self.when_full,
                    ids,
                );
                let acceptor = Acceptor::new(
                    endpoint.clone(),
                    shared.clone(),
                    on_new,
                    on_exhausted(&shared),
                );
                let interest = match mode {
                    AcceptMode::Shared => Interest::READABLE | Interest::EXCLUSIVE,
                    _ => Interest::READABLE,
                };
                let done = done.clone();
                let handle = h.clone();
                h.queue_in_loop(move |lp| {
                    let _ = done.send(
                        lp.add_channel(socket, interest, acceptor)
                            .map(|token| (handle, token))
                            .map_err(io::Error::from),
                    );
                })
                .map_err(io::Error::from)?;
            }
            drop(done);
            for _ in 0..n {
                let (h, token) = registered
                    .recv()
                    .map_err(|_| io::Error::other("an I/O loop ended while starting"))??;
                shared.acceptors.lock().push((h, token));
            }
            // The loops hold their own descriptors of the socket (`Shared`) or sockets of
            // their own (`ReusePort`).
            drop(listener);
        }
        // Last, once nothing can fail any more: a failed start leaves the main loop's
        // busy polling as it was.
        if !self.busy_poll.is_zero() {
            let spin = self.busy_poll;
            match threads.group() {
                // A group's threads spin on the group's set, not on a loop's.
                Some(group) => group.set_busy_poll(spin),
                // (An I/O loop already gone needs none: no error once accepting.)
                None => {
                    let _ =
                        on_each_loop(main, &threads.handles(), move |lp| lp.set_busy_poll(spin));
                }
            }
        }
        // Suppressed log counts that no later line of their kind reports.
        let report = main.run_every(duo_reactor::log_limit::DEFAULT_INTERVAL, |_| {
            duo_reactor::report_suppressed();
        });
        *shared.report_timer.lock() = Some(report);
        log::info!(
            "server {} listening on {endpoint} with {} I/O threads, {} loops, accepting: {mode:?}{}",
            self.name,
            self.io_threads,
            threads.num_loops(),
            match mode {
                AcceptMode::Shared if self.balance_accepts => " (balanced)",
                AcceptMode::Shared => " (unbalanced)",
                _ => "",
            }
        );
        Ok(TcpServer { shared, threads })
    }

    /// Who accepts, from the mode asked and what the socket allows: with no I/O threads
    /// the main loop; `ReusePort` needs a socket this server binds itself (not an inherited
    /// or Unix-domain one) and falls back to `Shared`; and a loop group cannot use
    /// `Shared`: its loops wait together in one outer epoll set, not in their own
    /// `epoll_wait`, so `EPOLLEXCLUSIVE` cannot pick one of them (every loop would take a
    /// turn for every connection and the first would accept them all): it gets its own
    /// `SO_REUSEPORT` sockets where it can bind them, else the main loop accepts.
    fn resolve_accept_mode(&self, inherited: bool) -> AcceptMode {
        let rebindable = !inherited && self.addr.as_inet().is_some();
        let grouped = self.loops > self.io_threads;
        let mode = match self.accept_mode {
            _ if self.io_threads == 0 => AcceptMode::MainLoop,
            AcceptMode::Shared if grouped && rebindable => AcceptMode::ReusePort,
            AcceptMode::Shared | AcceptMode::ReusePort if grouped && !rebindable => {
                AcceptMode::MainLoop
            }
            AcceptMode::ReusePort if !rebindable => AcceptMode::Shared,
            mode => mode,
        };
        if mode != self.accept_mode {
            log::info!(
                "server {}: accepting {mode:?} instead of {:?} ({} loops on {} I/O threads, {})",
                self.name,
                self.accept_mode,
                self.loops.max(self.io_threads),
                self.io_threads,
                if rebindable {
                    "a socket it binds"
                } else {
                    "an inherited or Unix-domain socket"
                }
            );
        }
        mode
    }
}

/// Checks that `socket` is a listening TCP or Unix-domain stream socket, makes it
/// non-blocking and close-on-exec, and returns its address.
fn check_listener(socket: &Socket) -> io::Result<Endpoint> {
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
    if socket.r#type()? != Type::STREAM {
        return Err(invalid(
            "the inherited socket is not a stream socket".into(),
        ));
    }
    let addr = Endpoint::from_sock_addr(&socket.local_addr()?).ok_or_else(|| {
        invalid("the inherited socket is neither a TCP (IPv4/IPv6) nor a Unix-domain socket".into())
    })?;
    if !socket.is_listener()? {
        return Err(invalid(format!(
            "the inherited socket on {addr} is not listening"
        )));
    }
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    Ok(addr)
}

/// Runs `f` on each of the server's loops: at once on the main loop (the caller's), by a
/// queued function on the server's own I/O threads (what it installs ends with them).
fn on_each_loop(
    main: &mut EventLoop,
    loops: &[LoopHandle],
    f: impl Fn(&mut EventLoop) + Clone + Send + 'static,
) -> io::Result<()> {
    for h in loops {
        if h.is_in_loop_thread() {
            f(main);
        } else {
            h.queue_in_loop(f.clone()).map_err(io::Error::from)?;
        }
    }
    Ok(())
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("io_threads", &self.io_threads)
            .field("loops", &self.loops)
            .field("loop_sharing", &self.loop_sharing)
            .field("accept_mode", &self.accept_mode)
            .field("balance_accepts", &self.balance_accepts)
            .field("reuse_port", &self.reuse_port)
            .field("defer_accept_secs", &self.defer_accept_secs)
            .field("idle_timeout", &self.idle_timeout)
            .field("busy_poll", &self.busy_poll)
            .field("max_connections", &self.max_connections)
            .field("when_full", &self.when_full)
            .field("buffer_trim_interval", &self.buffer_trim_interval)
            .field("conn", &self.conn)
            .field("callbacks", &self.callbacks)
            .finish_non_exhaustive()
    }
}

/// `config`, accepting at most `max_input` bytes of early data (see
/// [`ServerBuilder::tls`]).
#[cfg(feature = "tls")]
fn early_data_within(
    config: Arc<rustls::ServerConfig>,
    max_input: usize,
) -> Arc<rustls::ServerConfig> {
    let max = u32::try_from(max_input).unwrap_or(u32::MAX);
    if config.max_early_data_size <= max {
        return config;
    }
    let mut config = Arc::unwrap_or_clone(config);
    config.max_early_data_size = max;
    Arc::new(config)
}
