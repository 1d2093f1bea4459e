//! [`TcpServer`]: main reactor + sub reactors, muduo's `TcpServer`.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use duo_buffer::InputBuffer;
use duo_reactor::{EventLoop, EventLoopThreadPool, Interest, LoopHandle, ThreadInit, Token};
use parking_lot::Mutex;

use crate::acceptor::{listen, Acceptor, ListenOptions, NewConnection};
use crate::callbacks::Callbacks;
use crate::connection::{CloseReason, Conn, ConnEnv, RemoveHook, ServerConnections, ServerLink};
use crate::idle::IdleWheels;
use crate::options::{Backpressure, ConnOptions, OutputLimit};
use crate::stats::{AcceptCounters, IoCounters, ServerStats};
use crate::trim;
use crate::{ConnCtx, TcpConnection};

static NEXT_SERVER: AtomicU64 = AtomicU64::new(1);

/// Defaults of a [`ServerBuilder`].
pub mod defaults {
    /// Output-buffer size above which a connection stops reading (backpressure) and the
    /// high-water-mark callback runs: 4 MiB.
    pub const HIGH_WATER: usize = 4 << 20;
    /// Largest input a connection buffers before the message callback consumes it: 8 MiB.
    pub const MAX_INPUT: usize = 8 << 20;
    /// Most bytes one readiness event reads from an edge-triggered connection before the
    /// loop serves its other connections (the rest is read right after): 256 KiB.
    pub const READ_BUDGET: usize = 256 << 10;
    /// How often each loop checks whether the buffer pool holds memory a past burst left
    /// behind: 10 s.
    pub const BUFFER_TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
}

/// Builds and starts a [`TcpServer`]; from [`TcpServer::builder`].
pub struct ServerBuilder {
    name: String,
    addr: SocketAddr,
    io_threads: usize,
    reuse_port: bool,
    edge_triggered: bool,
    idle_timeout: Option<Duration>,
    idle_refresh_on_read: bool,
    max_connections: Option<usize>,
    high_water: usize,
    low_water: Option<usize>,
    backpressure: Backpressure,
    output_limit: Option<(usize, OutputLimit)>,
    max_input: usize,
    read_budget: usize,
    tcp_nodelay: bool,
    buffer_trim_interval: Option<Duration>,
    callbacks: Callbacks,
    thread_init: Option<ThreadInit>,
}

impl ServerBuilder {
    /// Number of I/O threads (sub reactors); 0 (the default) serves every connection on
    /// the main loop (single reactor).
    pub fn io_threads(mut self, n: usize) -> Self {
        self.io_threads = n;
        self
    }
    /// Sets `SO_REUSEPORT` on the listening socket (several servers on one port).
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.reuse_port = on;
        self
    }
    /// Edge-triggered connections (the default: read and write until `EAGAIN`) or
    /// level-triggered ones (one read per readiness event).
    pub fn edge_triggered(mut self, on: bool) -> Self {
        self.edge_triggered = on;
        self
    }
    /// Closes connections that show no activity for `timeout` (a timing wheel per loop;
    /// closes within one wheel tick after the timeout: 1/8 of it, at most 1 s). Activity
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
        self.idle_refresh_on_read = on;
        self
    }
    /// Beyond `n` open connections, new ones are accepted and closed at once (counted as
    /// rejected).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = Some(n);
        self
    }
    /// Output-buffer high-water mark (default [`defaults::HIGH_WATER`]) and low-water mark
    /// (default half of it). When a connection's unsent output grows past the high mark,
    /// [`on_high_water_mark`](ServerBuilder::on_high_water_mark) runs and, with the
    /// default [`Backpressure::PauseReading`], the connection stops reading until its
    /// output drains below the low mark: a peer that sends requests without reading the
    /// replies is slowed down by TCP itself instead of growing the server.
    ///
    /// A relay or broadcast, whose output comes from *other* connections, wants the
    /// signal without the pause: set [`Backpressure::Notify`] with
    /// [`backpressure`](ServerBuilder::backpressure), and pause the source connection
    /// from `on_high_water_mark` (resume it from
    /// [`on_write_complete`](ServerBuilder::on_write_complete)); bound what a slow reader
    /// can make the server hold with [`output_limit`](ServerBuilder::output_limit).
    pub fn water_marks(mut self, high: usize, low: usize) -> Self {
        self.high_water = high.max(1);
        self.low_water = Some(low.min(self.high_water));
        self
    }
    /// What crossing the high-water mark does: pause this connection's reading (the
    /// default) or only call the callbacks; see [`Backpressure`].
    pub fn backpressure(mut self, policy: Backpressure) -> Self {
        self.backpressure = policy;
        self
    }
    /// Bounds each connection's queued output to `bytes` (no bound by default): a send
    /// that would queue more closes the connection or is refused, as `policy` says
    /// (see [`OutputLimit`]).
    pub fn output_limit(mut self, bytes: usize, policy: OutputLimit) -> Self {
        self.output_limit = Some((bytes.max(1), policy));
        self
    }
    /// Most bytes one readiness event reads from an edge-triggered connection before the
    /// loop serves its other connections and timers (default [`defaults::READ_BUDGET`]);
    /// the rest is read right after, in the same loop iteration's queue. Bounds the work
    /// per event, so one fast sender cannot delay everyone else on its loop.
    pub fn read_budget(mut self, bytes: usize) -> Self {
        self.read_budget = bytes.max(1);
        self
    }
    /// Largest unconsumed input per connection (default [`defaults::MAX_INPUT`]); past it
    /// the connection is closed with a log line.
    pub fn max_input(mut self, bytes: usize) -> Self {
        self.max_input = bytes.max(1);
        self
    }
    /// How often each of the server's loops checks the process-wide buffer pool and, when
    /// its free blocks outweigh those in use (a burst is over), returns them to the system
    /// (default [`defaults::BUFFER_TRIM_INTERVAL`]; zero turns it off). Loops shared by
    /// several servers run one check, at the first server's interval.
    pub fn buffer_trim_interval(mut self, interval: Duration) -> Self {
        self.buffer_trim_interval = Some(interval).filter(|i| !i.is_zero());
        self
    }
    /// Sets `TCP_NODELAY` on every accepted connection (default off).
    pub fn tcp_nodelay(mut self, on: bool) -> Self {
        self.tcp_nodelay = on;
        self
    }
    /// Called when a connection comes up and when it goes down.
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
    /// Called when a connection's output buffer has been fully written.
    pub fn on_write_complete(
        mut self,
        f: impl Fn(&mut ConnCtx<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.callbacks.write_complete = Some(Arc::new(f));
        self
    }
    /// Called when a connection's output buffer crosses the high-water mark.
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
    /// Called for each open connection when a graceful [`shutdown`](ServerHandle::shutdown)
    /// begins; see [`ShutdownCallback`](crate::ShutdownCallback). Without it, a
    /// connection half-closes once its output is written.
    pub fn on_shutdown(mut self, f: impl Fn(&mut ConnCtx<'_>) + Send + Sync + 'static) -> Self {
        self.callbacks.shutdown = Some(Arc::new(f));
        self
    }
    /// Called when a connection has closed.
    pub fn on_close(mut self, f: impl Fn(&TcpConnection) + Send + Sync + 'static) -> Self {
        self.callbacks.close = Some(Arc::new(f));
        self
    }
    /// Runs on each I/O thread's loop before it starts.
    pub fn thread_init(mut self, f: impl Fn(&mut EventLoop) + Send + Sync + 'static) -> Self {
        self.thread_init = Some(Arc::new(f));
        self
    }

    /// Binds, starts the I/O threads and starts accepting on `main`, the calling thread's
    /// loop (which must then [`run`](EventLoop::run)).
    pub fn start(self, main: &mut EventLoop) -> io::Result<TcpServer> {
        let listener = listen(
            self.addr,
            ListenOptions {
                reuse_port: self.reuse_port,
            },
        )?;
        let local_addr = listener
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("listening socket has no inet address"))?;
        let mut pool = EventLoopThreadPool::new(main.handle(), &self.name, self.io_threads);
        if let Some(init) = self.thread_init.clone() {
            pool.set_thread_init(init);
        }
        pool.start()?;
        let loops = pool.handles();
        let id = NEXT_SERVER.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(ServerShared {
            id,
            name: self.name.clone(),
            local_addr,
            main: main.handle(),
            counters: AcceptCounters::default(),
            io: loops
                .iter()
                .map(|_| Arc::new(IoCounters::default()))
                .collect(),
            acceptor: Mutex::new(None),
            stopping: AtomicBool::new(false),
            shutdown_begun: AtomicBool::new(false),
            trims_main: AtomicBool::new(false),
            link: Arc::new(ServerLink {
                id,
                loops: loops.clone(),
            }),
        });
        let opts = Arc::new(ConnOptions {
            edge_triggered: self.edge_triggered,
            high_water: self.high_water,
            low_water: self.low_water.unwrap_or(self.high_water / 2),
            backpressure: self.backpressure,
            output_limit: self.output_limit,
            max_input: self.max_input,
            read_budget: self.read_budget,
            idle_key: self.idle_timeout.map(|_| id),
            idle_refresh_on_read: self.idle_refresh_on_read,
        });
        if let Some(timeout) = self.idle_timeout {
            for h in &loops {
                if h.is_in_loop_thread() {
                    IdleWheels::install(main, id, timeout);
                } else {
                    h.queue_in_loop(move |lp| IdleWheels::install(lp, id, timeout))
                        .map_err(io::Error::from)?;
                }
            }
        }
        if let Some(interval) = self.buffer_trim_interval {
            for h in &loops {
                if h.is_in_loop_thread() {
                    trim::install(main, interval);
                    shared.trims_main.store(true, Ordering::SeqCst);
                } else {
                    // The server's own I/O threads: the timer ends with the loop.
                    h.queue_in_loop(move |lp| trim::install(lp, interval))
                        .map_err(io::Error::from)?;
                }
            }
        }
        Registries::open(main, id);
        let on_new = new_connection_handler(
            shared.clone(),
            loops,
            Arc::new(self.callbacks),
            opts,
            self.max_connections,
            self.tcp_nodelay,
        );
        let counters = shared.clone();
        let acceptor = Acceptor::new(
            local_addr,
            on_new,
            Box::new(move || AcceptCounters::bump(&counters.counters.emfile)),
        );
        let token = main.add_channel(listener, Interest::READABLE, acceptor)?;
        *shared.acceptor.lock() = Some(token);
        log::info!(
            "server {} listening on {local_addr} with {} I/O threads",
            self.name,
            self.io_threads
        );
        Ok(TcpServer { shared, pool })
    }
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("io_threads", &self.io_threads)
            .field("edge_triggered", &self.edge_triggered)
            .field("idle_timeout", &self.idle_timeout)
            .field("high_water", &self.high_water)
            .field("buffer_trim_interval", &self.buffer_trim_interval)
            .field("high_water", &self.high_water)
            .field("callbacks", &self.callbacks)
            .finish_non_exhaustive()
    }
}

/// What the server's parts share.
struct ServerShared {
    id: u64,
    name: String,
    local_addr: SocketAddr,
    main: LoopHandle,
    counters: AcceptCounters,
    /// Byte counters, one per I/O loop (index = position in the pool's handles).
    io: Vec<Arc<IoCounters>>,
    acceptor: Mutex<Option<Token>>,
    stopping: AtomicBool,
    /// A graceful shutdown has begun (a second `shutdown` only adds its continuation).
    shutdown_begun: AtomicBool,
    /// The server installed a buffer-pool trim timer on the main loop (no I/O threads).
    trims_main: AtomicBool,
    /// The server's key and loops, as its connections know them.
    link: Arc<ServerLink>,
}

/// The acceptor's callback for each new socket: admission, naming, choice of loop.
fn new_connection_handler(
    shared: Arc<ServerShared>,
    loops: Vec<LoopHandle>,
    callbacks: Arc<Callbacks>,
    opts: Arc<ConnOptions>,
    max_connections: Option<usize>,
    tcp_nodelay: bool,
) -> NewConnection {
    let mut next_loop = 0usize;
    let mut next_id = 0u64;
    // Shared by every connection (one allocation per server, not per connection).
    let owner: Arc<str> = Arc::from(shared.name.as_str());
    let hook = remove_hook(&shared);
    let envs: Vec<Arc<ConnEnv>> = shared
        .io
        .iter()
        .map(|counters| {
            Arc::new(ConnEnv {
                callbacks: callbacks.clone(),
                opts: (*opts).clone(),
                remove_hook: Some(hook.clone()),
                counters: counters.clone(),
                server: Some(shared.link.clone()),
            })
        })
        .collect();
    Box::new(move |lp, socket, peer| {
        let c = &shared.counters;
        let active = Registries::count(lp, shared.id);
        if max_connections.is_some_and(|max| active >= max) {
            AcceptCounters::bump(&c.rejected);
            log::debug!(
                "{}: rejecting {peer}: {active} connections open",
                shared.name
            );
            return;
        }
        if tcp_nodelay {
            if let Err(e) = socket.set_nodelay(true) {
                log::debug!("{}: TCP_NODELAY for {peer}: {e}", shared.name);
            }
        }
        // A listener bound to one address accepts connections to exactly that address:
        // only a wildcard listener needs `getsockname` to learn which one was dialled.
        let local = if shared.local_addr.ip().is_unspecified() {
            socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .unwrap_or(shared.local_addr)
        } else {
            shared.local_addr
        };
        next_id += 1;
        let index = next_loop % loops.len();
        next_loop = next_loop.wrapping_add(1);
        let target = loops[index].clone();
        let handle = TcpConnection::new(next_id, owner.clone(), peer, local, target.clone());
        Registries::insert(lp, shared.id, handle.clone());
        AcceptCounters::bump(&c.accepted);
        c.active
            .store(Registries::count(lp, shared.id) as u64, Ordering::Relaxed);

        let env = envs[index].clone();
        if target.is_in_loop_thread() {
            if let Err(e) = Conn::establish(lp, socket, handle, env) {
                log::warn!("{}: cannot register {peer}: {e}", shared.name);
            }
        } else {
            let queued = target.queue_in_loop(move |lp| {
                if let Err(e) = Conn::establish(lp, socket, handle, env) {
                    log::warn!("cannot register {peer}: {e}");
                }
            });
            if queued.is_err() {
                log::warn!("{}: I/O loop gone; dropping {peer}", shared.name);
            }
        }
    })
}

/// Removes a closed connection from the server's registry, on the main loop.
fn remove_hook(shared: &Arc<ServerShared>) -> RemoveHook {
    let shared = shared.clone();
    Arc::new(move |conn: &TcpConnection| {
        let id = conn.id();
        let s = shared.clone();
        let _ = shared.main.queue_in_loop(move |lp| {
            if Registries::remove(lp, s.id, id) {
                AcceptCounters::bump(&s.counters.closed);
            }
            s.counters
                .active
                .store(Registries::count(lp, s.id) as u64, Ordering::Relaxed);
        });
    })
}

/// A function to run on the main loop.
type LoopFn = Box<dyn FnOnce(&mut EventLoop)>;

/// The live connections of every server on a main loop, as a loop-local value: owned by the
/// main loop, touched only there.
#[derive(Default)]
struct Registries {
    servers: HashMap<u64, Registry>,
}

#[derive(Default)]
struct Registry {
    conns: HashMap<u64, TcpConnection>,
    /// Run, in order, when the registry empties during a graceful shutdown (one per
    /// `shutdown` call).
    on_empty: Vec<LoopFn>,
}

impl Registries {
    fn open(lp: &mut EventLoop, server: u64) {
        if lp.local::<Registries>().is_none() {
            lp.insert_local(Registries::default());
        }
        lp.with_local::<Registries, _>(|_, r| {
            r.servers.entry(server).or_default();
        });
    }

    fn insert(lp: &mut EventLoop, server: u64, conn: TcpConnection) {
        lp.with_local::<Registries, _>(|_, r| {
            if let Some(reg) = r.servers.get_mut(&server) {
                reg.conns.insert(conn.id(), conn);
            }
        });
    }

    fn count(lp: &EventLoop, server: u64) -> usize {
        lp.local::<Registries>()
            .and_then(|r| r.servers.get(&server))
            .map_or(0, |reg| reg.conns.len())
    }

    fn list(lp: &EventLoop, server: u64) -> Vec<TcpConnection> {
        lp.local::<Registries>()
            .and_then(|r| r.servers.get(&server))
            .map_or_else(Vec::new, |reg| reg.conns.values().cloned().collect())
    }

    /// Removes a connection; true if it was there. Runs the shutdown continuations when the
    /// last one goes.
    fn remove(lp: &mut EventLoop, server: u64, conn: u64) -> bool {
        let (removed, done) = lp
            .with_local::<Registries, _>(|_, r| {
                let Some(reg) = r.servers.get_mut(&server) else {
                    return (false, Vec::new());
                };
                let removed = reg.conns.remove(&conn).is_some();
                let done = if reg.conns.is_empty() {
                    std::mem::take(&mut reg.on_empty)
                } else {
                    Vec::new()
                };
                (removed, done)
            })
            .unwrap_or((false, Vec::new()));
        for f in done {
            f(lp);
        }
        removed
    }

    /// Drops the registry of a stopped server.
    fn forget(lp: &mut EventLoop, server: u64) {
        lp.with_local::<Registries, _>(|_, r| r.servers.remove(&server));
    }

    /// Adds a continuation of a graceful shutdown; runs it now if nothing is open.
    fn when_empty(lp: &mut EventLoop, server: u64, f: LoopFn) {
        let now = lp
            .with_local::<Registries, _>(|_, r| {
                let reg = r.servers.entry(server).or_default();
                if reg.conns.is_empty() {
                    Some(f)
                } else {
                    reg.on_empty.push(f);
                    None
                }
            })
            .flatten();
        if let Some(f) = now {
            f(lp);
        }
    }
}

/// A TCP server: an acceptor on the main loop and a pool of I/O loops that own the
/// connections (muduo's main reactor + sub reactors).
///
/// # Lifecycle
///
/// [`TcpServer::builder`] → [`ServerBuilder::start`] on the main loop → run the main loop.
/// To stop gracefully, call [`TcpServer::shutdown`] from anywhere (a signal handler on the
/// main loop, say): it stops accepting, half-closes every connection once its output is
/// written, force-closes what is left at the deadline, then runs your continuation on the
/// main loop (typically `lp.quit()`). Then [`TcpServer::stop`] joins the I/O threads.
/// Dropping the server stops accepting and joins the I/O threads too.
///
/// # Example
///
/// ```
/// use duo_net::TcpServer;
/// use duo_reactor::EventLoop;
/// use std::io::{Read, Write};
/// use std::time::Duration;
///
/// let mut lp = EventLoop::new()?;
/// let server = TcpServer::builder("echo", "127.0.0.1:0".parse()?)
///     .io_threads(1)
///     .on_message(|ctx, input| {
///         ctx.send(input.peek());
///         input.consume_all();
///     })
///     .start(&mut lp)?;
/// let addr = server.local_addr();
/// let client = std::thread::spawn(move || {
///     let mut s = std::net::TcpStream::connect(addr).unwrap();
///     s.write_all(b"hello").unwrap();
///     let mut buf = [0u8; 5];
///     s.read_exact(&mut buf).unwrap();
///     buf
/// });
/// let shutdown = server.clone_handle();
/// lp.run_every(Duration::from_millis(5), move |_| {
///     if client.is_finished() {
///         shutdown.shutdown(Duration::from_secs(1), |lp| lp.quit());
///     }
/// });
/// lp.run()?;
/// server.stop(&mut lp);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TcpServer {
    shared: Arc<ServerShared>,
    pool: EventLoopThreadPool,
}

/// A `Send + Sync + Clone` handle to a [`TcpServer`] for shutting it down and reading its
/// statistics from anywhere.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<ServerShared>,
}

impl TcpServer {
    /// A builder for a server named `name` listening on `addr` (port 0 picks a free port;
    /// read it back with [`TcpServer::local_addr`]).
    pub fn builder(name: &str, addr: SocketAddr) -> ServerBuilder {
        ServerBuilder {
            name: name.to_owned(),
            addr,
            io_threads: 0,
            reuse_port: false,
            edge_triggered: true,
            idle_timeout: None,
            idle_refresh_on_read: true,
            max_connections: None,
            high_water: defaults::HIGH_WATER,
            low_water: None,
            backpressure: Backpressure::PauseReading,
            output_limit: None,
            max_input: defaults::MAX_INPUT,
            read_budget: defaults::READ_BUDGET,
            tcp_nodelay: false,
            buffer_trim_interval: Some(defaults::BUFFER_TRIM_INTERVAL),
            callbacks: Callbacks::default(),
            thread_init: None,
        }
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// A handle for other threads and callbacks.
    pub fn clone_handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ServerStats {
        stats(&self.shared)
    }

    /// The server's open connections; see [`ServerHandle::connections`].
    pub fn connections(&self) -> ServerConnections {
        ServerConnections::new(self.shared.link.clone())
    }

    /// Graceful stop; see [`ServerHandle::shutdown`].
    pub fn shutdown(&self, grace: Duration, then: impl FnOnce(&mut EventLoop) + Send + 'static) {
        shutdown(&self.shared, grace, Box::new(then));
    }

    /// Stops the server now, on its main loop `main` (typically after
    /// [`run`](EventLoop::run) has returned): closes the listening socket, closes the
    /// connections the main loop serves itself (no I/O threads), stops the idle wheel,
    /// then quits and joins the I/O threads; connections still open there are dropped
    /// (sockets closed, no "down" callbacks). Call it after a graceful
    /// [`shutdown`](TcpServer::shutdown) has completed, or to stop hard.
    ///
    /// `main` must be the loop the server was started on; given another loop, the
    /// main-loop part is queued to the right loop instead (and happens when that loop
    /// next runs, or never if it is gone). Dropping a server without `stop` does the
    /// same queued stop.
    pub fn stop(mut self, main: &mut EventLoop) {
        if main.handle().same_loop(&self.shared.main) {
            stop_on_main(main, &self.shared);
        } else {
            log::error!(
                "server {}: stop() given another loop than the one it was started on",
                self.shared.name
            );
        }
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        // Whatever `stop` did not do directly (or everything, from `drop`) is queued.
        let shared = self.shared.clone();
        let _ = self
            .shared
            .main
            .queue_in_loop(move |lp| stop_on_main(lp, &shared));
        if let Err(e) = self.pool.stop() {
            log::error!("server {}: {e}", self.shared.name);
        }
    }
}

/// The main-loop half of stopping: listener, main-loop connections, idle wheel, registry.
/// Idempotent.
fn stop_on_main(lp: &mut EventLoop, shared: &Arc<ServerShared>) {
    shared.stopping.store(true, Ordering::SeqCst);
    if let Some(token) = shared.acceptor.lock().take() {
        lp.remove_channel(token);
    }
    let id = shared.id;
    IdleWheels::uninstall(lp, id);
    if shared.trims_main.swap(false, Ordering::SeqCst) {
        trim::uninstall(lp);
    }
    for c in Registries::list(lp, id) {
        if c.loop_handle().same_loop(&shared.main) {
            Conn::close_now(lp, &c, CloseReason::Shutdown);
        }
    }
    Registries::forget(lp, id);
}

fn stats(shared: &ServerShared) -> ServerStats {
    let c = &shared.counters;
    ServerStats {
        accepted: c.accepted.load(Ordering::Relaxed),
        active: c.active.load(Ordering::Relaxed),
        closed: c.closed.load(Ordering::Relaxed),
        rejected: c.rejected.load(Ordering::Relaxed),
        fd_exhausted: c.emfile.load(Ordering::Relaxed),
        per_loop: shared.io.iter().map(|io| io.snapshot()).collect(),
    }
}

/// Removes the acceptor's channel (closing the listening socket) on the main loop.
fn stop_accepting(shared: &Arc<ServerShared>) {
    shared.stopping.store(true, Ordering::SeqCst);
    let Some(token) = shared.acceptor.lock().take() else {
        return;
    };
    let _ = shared.main.queue_in_loop(move |lp| {
        lp.remove_channel(token);
    });
}

fn shutdown(
    shared: &Arc<ServerShared>,
    grace: Duration,
    then: Box<dyn FnOnce(&mut EventLoop) + Send>,
) {
    stop_accepting(shared);
    let first = !shared.shutdown_begun.swap(true, Ordering::SeqCst);
    let s = shared.clone();
    let queued = shared.main.queue_in_loop(move |lp| {
        if !first {
            // Already shutting down (connections told, deadline set): wait along.
            Registries::when_empty(lp, s.id, then);
            return;
        }
        let conns = Registries::list(lp, s.id);
        log::info!(
            "server {}: shutting down, {} connections open",
            s.name,
            conns.len()
        );
        for c in &conns {
            let _ = c.queue_in_loop(|ctx| ctx.begin_shutdown());
        }
        if !conns.is_empty() {
            let id = s.id;
            lp.run_after(grace, move |lp| {
                for c in Registries::list(lp, id) {
                    log::info!("{}: still open at the shutdown deadline; closing", c.name());
                    let _ = c.close_with(CloseReason::Shutdown);
                }
            });
        }
        Registries::when_empty(lp, s.id, then);
    });
    if queued.is_err() {
        log::warn!(
            "server {}: main loop is gone; nothing to shut down",
            shared.name
        );
    }
}

impl ServerHandle {
    /// Graceful stop, from any thread: stop accepting; half-close every connection once
    /// its pending output is written (so data already queued is delivered), or hand it
    /// to the [`on_shutdown`](ServerBuilder::on_shutdown) callback; force-close
    /// the connections still open after `grace`; when none is left, run `then` on the main
    /// loop (for example `|lp| lp.quit()`). Calling it again while a shutdown is under way
    /// only adds its `then` (run after the earlier ones); the first call's deadline stands.
    pub fn shutdown(&self, grace: Duration, then: impl FnOnce(&mut EventLoop) + Send + 'static) {
        shutdown(&self.shared, grace, Box::new(then));
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ServerStats {
        stats(&self.shared)
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The server's open connections, on all its loops: run a function on each, or
    /// broadcast a message (see [`ServerConnections`]).
    pub fn connections(&self) -> ServerConnections {
        ServerConnections::new(self.shared.link.clone())
    }

    /// Whether a shutdown or stop was requested.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

impl fmt::Debug for TcpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpServer")
            .field("name", &self.shared.name)
            .field("local_addr", &self.shared.local_addr)
            .field("io_threads", &self.pool.num_threads())
            .finish()
    }
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("name", &self.shared.name)
            .field("local_addr", &self.shared.local_addr)
            .finish()
    }
}
