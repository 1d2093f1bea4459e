//! [`TcpServer`]: main reactor + sub reactors, muduo's `TcpServer`.
//!
//! # Threads
//!
//! With `io_threads(0)` the application's loop (the *main loop*) accepts and serves every
//! connection itself. With `io_threads(n)`, n I/O loops serve them, and the
//! [`AcceptMode`] says who accepts: by default every I/O loop accepts for itself on the
//! one listening socket (registered with `EPOLLEXCLUSIVE`), so a connection is served by
//! the thread that accepted it (unless that loop holds clearly more connections than
//! another: then it is handed to the least loaded one); or each I/O loop has a
//! `SO_REUSEPORT` socket of its own; or, as in muduo, the main loop accepts and hands each
//! socket round robin to an I/O loop. Either way one loop alone touches a connection.
//!
//! With [`loops(m)`](ServerBuilder::loops) above n, the n I/O threads serve m loops
//! instead ([`duo_reactor::LoopGroup`]): a connection still belongs to one loop, which
//! alone touches it, but a ready loop whose thread is busy or off its core is run by
//! another I/O thread ([`ServerBuilder::loop_sharing`]), so a thread that loses its core
//! holds up only the loop it was running. Each loop then accepts on a `SO_REUSEPORT`
//! socket of its own (or the main loop accepts, on an inherited or Unix-domain socket):
//! the group's loops wait together in epoll sets, where `EPOLLEXCLUSIVE` cannot pick one
//! of them.
//!
//! # No list of connections
//!
//! The server keeps no set of its connections: it counts the open ones with an atomic
//! (raised on accept, lowered by each connection's close hook on its own loop, so a close
//! costs no message to the main loop), and whatever must reach all of them (a broadcast,
//! a graceful shutdown) is queued to each loop, which visits its own connections
//! ([`ServerConnections`]). An idle connection therefore costs the server nothing beyond
//! its own state.
//!
//! # Graceful shutdown
//!
//! [`ServerHandle::shutdown`]`(grace, then)`: stop accepting (the listening channel is
//! removed, on each loop that has one); on each loop, hand every connection to the `on_shutdown` callback, or
//! half-close it once its output is written; after `grace`, close what is still open
//! ([`CloseReason::Shutdown`]); when the open count reaches zero, run `then` on the main
//! loop. Every connection accepted before the listener went is reached: a loop that
//! accepts for itself registers the connection at once, and the removal of its listener
//! is queued to it before the shutdown's visit; the main loop, accepting for others,
//! queues each registration before it queues the visit; and a loop runs what is queued
//! in order. [`TcpServer::stop`] then closes the main loop's own connections and joins the
//! I/O threads (whose remaining connections go with their loops, without callbacks).
//!
//! - [`builder`]: the settings, and starting a server;
//! - [`accept`]: the listening socket and what happens to each accepted connection;
//! - this file: the running server, its handle, and stopping it (graceful shutdown or at
//!   once).

mod accept;
mod builder;
mod unix;

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use duo_buffer::BufPool;
use duo_reactor::{EventLoop, EventLoopThreadPool, LoopHandle, Token};
use parking_lot::Mutex;

pub use accept::{AcceptMode, WhenFull};
use accept::{Acceptor, Admission};
pub use builder::ServerBuilder;

use crate::close_reason::CloseReason;
use crate::conn::group::{ServerConnections, ServerLink};
use crate::conn::machine::{CloseHook, LoopConn};
use crate::endpoint::Endpoint;
use crate::per_loop::NetLoop;
use crate::stats::{AcceptCounters, IoCounters, ServerStats};

static NEXT_SERVER: AtomicU64 = AtomicU64::new(1);

/// What the TCP-address accessors return for a Unix-domain server.
const NO_INET: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// A function run on the main loop once a graceful shutdown has closed every connection.
type WhenEmpty = Box<dyn FnOnce(&mut EventLoop) + Send>;

/// What the server's parts share.
struct ServerShared {
    id: u64,
    name: String,
    /// The TCP address, or [`NO_INET`] for a Unix-domain server.
    local_addr: SocketAddr,
    endpoint: Endpoint,
    /// The socket file this server's bind created (removed when it stops accepting).
    socket_file: Mutex<Option<unix::SocketFile>>,
    main: LoopHandle,
    /// Accepted, open, closed...: `active` is the number of open connections, raised on
    /// accept and lowered by each connection's close hook on its own loop.
    counters: AcceptCounters,
    /// Byte and close counters, one per I/O loop (index = position in the pool's handles).
    io: Vec<Arc<IoCounters>>,
    /// The listening channels: one on the main loop, or one per I/O loop. Its lock also
    /// orders the pauses and resumes of [`WhenFull::Pause`] (see [`pause_if_full`]).
    acceptors: Mutex<Vec<(LoopHandle, Token)>>,
    /// A descriptor of the listening socket, when the server bound that socket itself and
    /// accepts on the main loop: a drop shuts the socket down with it, so that it stops
    /// listening at once even if the main loop does not run the queued stop soon (or
    /// ever). Dropped when the listener is removed.
    own_listener: Mutex<Option<socket2::Socket>>,
    /// Removals of listening channels queued to their loops and not yet run: until they
    /// have, a loop may still accept (and count) a connection, so a graceful shutdown
    /// does not count the server empty (see [`stop_accepting`]).
    removals_pending: AtomicUsize,
    /// `max_connections` under [`WhenFull::Pause`]: acceptors pause at this many open
    /// connections, and the close that makes room resumes them.
    pause_at: Option<u64>,
    /// Some acceptor paused because the server was full (see [`pause_if_full`]).
    accept_paused: AtomicBool,
    stopping: AtomicBool,
    /// The continuations of graceful shutdowns, run in order on the main loop when no
    /// connection is left.
    on_empty: Mutex<Vec<WhenEmpty>>,
    /// The server installed a buffer-pool trim timer on the main loop (no I/O threads).
    trims_main: AtomicBool,
    /// The main loop's timer of a graceful shutdown's deadline; cancelled when the
    /// server is found empty before it (it would hold the server's loops until then).
    grace_timer: Mutex<Option<duo_reactor::TimerId>>,
    /// The main loop's timer that reports suppressed log lines (see
    /// [`duo_reactor::log_limit`]); cancelled by the stop.
    report_timer: Mutex<Option<duo_reactor::TimerId>>,
    /// The connections' buffer pool.
    pool: BufPool,
    /// The server's key and loops, as its connections know them.
    link: Arc<ServerLink>,
}

/// Run by each connection as it closes, on its own loop: counts it closed and, when it
/// was the last one during a graceful shutdown, lets the main loop finish the shutdown.
fn close_hook(shared: &Arc<ServerShared>) -> CloseHook {
    let shared = shared.clone();
    Arc::new(move |_conn, _up| {
        let c = &shared.counters;
        AcceptCounters::bump(&c.closed);
        let left = c.active.fetch_sub(1, Ordering::SeqCst) - 1;
        if shared.pause_at.is_some_and(|max| left < max)
            && shared.accept_paused.load(Ordering::SeqCst)
        {
            resume_accepting(&shared);
        }
        if left == 0 && shared.link.shutdown_begun.load(Ordering::Acquire) {
            let s = shared.clone();
            let _ = shared.main.queue_in_loop(move |lp| run_when_empty(lp, &s));
        }
    })
}

/// After a connection was accepted on a server that pauses when full: whether this
/// acceptor must stop accepting. When it must, every other acceptor of the server is
/// paused too (a queued function on its loop), so that idle loops stop taking wake-ups
/// of the shared socket that other processes could serve.
///
/// The pause flag and the open count are written and read in opposite orders by this
/// function (set the flag, read the count) and the close hook (lower the count, read the
/// flag), all sequentially consistent: either the close sees the flag and resumes the
/// acceptors, or this sees the lowered count and resumes them itself. The flag is set
/// together with queueing the pauses, and cleared together with queueing the resumes,
/// under the `acceptors` lock: the last function queued to every loop agrees with the
/// flag. (Cleared first and the resumes queued after, without the lock, another loop's
/// pauses could be queued in between and then undone by those resumes, with the flag
/// left set: every loop accepted again while the server was full, each taking one more
/// connection over the maximum.) Only the call that sets the flag counts a pause
/// (`full_pauses`): loops that find the server full at once pause it once.
fn pause_if_full(shared: &Arc<ServerShared>, max: u64) -> Admission {
    let active = &shared.counters.active;
    if active.load(Ordering::SeqCst) < max {
        return Admission::Continue;
    }
    let newly = {
        let acceptors = shared.acceptors.lock();
        for (h, token) in acceptors.iter() {
            let token = *token;
            let _ = h.queue_in_loop(move |lp| {
                lp.with_handler::<Acceptor, _>(token, |_, ch, a| a.pause_full(ch));
            });
        }
        // Whether this call paused a server that was accepting: another loop that found
        // it full at the same moment (one over the maximum) pauses too, but the server
        // stopped accepting once, and that is what `full_pauses` counts.
        !shared.accept_paused.swap(true, Ordering::SeqCst)
    };
    if active.load(Ordering::SeqCst) < max && resume_accepting(shared) {
        // Room was made meanwhile, unseen by the close: the pauses are undone.
        return Admission::Continue;
    }
    if !newly {
        return Admission::Pause;
    }
    AcceptCounters::bump(&shared.counters.full_pauses);
    duo_reactor::log_limited!(
        log::Level::Debug,
        "server {}: {max} connections open; not accepting until one closes",
        shared.name
    );
    Admission::Pause
}

/// If the server is paused because it was full and has room now, clears the pause flag
/// and resumes every acceptor (each on its own loop; one still in the pause after an
/// accept error resumes when its retry comes due), under the `acceptors` lock (see
/// [`pause_if_full`]); a level-triggered listener then reports the connections that
/// waited. Returns whether it resumed them.
///
/// Room is checked again here, under the lock: the close that found room may have been
/// overtaken by another loop's accept that filled the server again and paused it (a
/// resume then would undo that pause, and every loop would take one more connection over
/// the maximum); the close that makes room after that resumes instead.
fn resume_accepting(shared: &ServerShared) -> bool {
    let acceptors = shared.acceptors.lock();
    let room = |max| shared.counters.active.load(Ordering::SeqCst) < max;
    if !shared.pause_at.is_some_and(room) || !shared.accept_paused.swap(false, Ordering::SeqCst) {
        return false;
    }
    for (h, token) in acceptors.iter() {
        let token = *token;
        let _ = h.queue_in_loop(move |lp| {
            lp.with_handler::<Acceptor, _>(token, |_, ch, a| a.resume_full(ch));
        });
    }
    true
}

/// Runs the shutdown continuations if no connection is open and no loop can accept one
/// any more (on the main loop).
fn run_when_empty(lp: &mut EventLoop, shared: &ServerShared) {
    if shared.removals_pending.load(Ordering::Acquire) != 0
        || shared.counters.active.load(Ordering::Acquire) != 0
    {
        return;
    }
    if let Some(timer) = shared.grace_timer.lock().take() {
        lp.cancel(timer);
    }
    let done = std::mem::take(&mut *shared.on_empty.lock());
    for f in done {
        f(lp);
    }
}

/// A TCP server: a pool of I/O loops that own the connections and accept them (or an
/// acceptor on the main loop that hands them out: muduo's main reactor + sub reactors;
/// see [`AcceptMode`]).
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
/// let server = TcpServer::builder("echo", "127.0.0.1:0".parse::<duo_net::Endpoint>()?)
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
    threads: EventLoopThreadPool,
}

/// A `Send + Sync + Clone` handle to a [`TcpServer`] for shutting it down and reading its
/// statistics from anywhere.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<ServerShared>,
}

impl TcpServer {
    /// A builder for a server named `name` listening on `addr`: a TCP address (port 0
    /// picks a free port; read it back with [`TcpServer::local_addr`]) or a Unix-domain
    /// [`Endpoint`] (`unix:/path`, `unix:@name`; see the stale-file policy in
    /// [`TcpServer::endpoint`]).
    ///
    /// # Example: a Unix-domain echo server and a client
    ///
    /// ```
    /// use duo_net::{Endpoint, TcpClient, TcpServer};
    /// use duo_reactor::EventLoop;
    ///
    /// let path = std::env::temp_dir().join(format!("duo-doc-{}.sock", std::process::id()));
    /// let endpoint = Endpoint::unix(&path)?;
    /// let mut lp = EventLoop::new()?;
    /// let server = TcpServer::builder("echo", endpoint.clone())
    ///     .on_message(|ctx, input| {
    ///         ctx.send(input.peek());
    ///         input.consume_all();
    ///     })
    ///     .start(&mut lp)?;
    /// assert_eq!(server.endpoint(), &endpoint);
    /// let client = TcpClient::builder("hello", endpoint)
    ///     .on_connection(|conn| {
    ///         if conn.is_connected() {
    ///             // Who is on the other side: here, this very process.
    ///             let me = conn.peer_credentials().unwrap();
    ///             assert_eq!(me.pid, std::process::id());
    ///             let _ = conn.send(b"hello");
    ///         }
    ///     })
    ///     .on_message(|ctx, input| {
    ///         if input.peek() == b"hello" {
    ///             ctx.event_loop().quit();
    ///         }
    ///     })
    ///     .connect(&lp.handle());
    /// lp.run()?;
    /// drop(client);
    /// server.stop(&mut lp);
    /// assert!(!path.exists(), "the socket file goes with the server");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder(name: &str, addr: impl Into<Endpoint>) -> ServerBuilder {
        ServerBuilder::new(name, addr.into())
    }

    /// A builder for a server that accepts on `listener`, a socket that is already bound
    /// and listening: one inherited from systemd (socket activation) or from a supervisor
    /// process, shared with other processes. Nothing is bound; the server's address is
    /// the listener's. The socket is made non-blocking and close-on-exec.
    ///
    /// # Errors
    ///
    /// `listener` is not a listening TCP socket (`InvalidInput`), or its address cannot
    /// be read.
    pub fn builder_on(name: &str, listener: std::net::TcpListener) -> io::Result<ServerBuilder> {
        ServerBuilder::on_listener(name, listener.into())
    }

    /// [`builder_on`](TcpServer::builder_on) for an inherited Unix-domain listening
    /// socket. The server did not create its socket file, so it leaves the file in place
    /// when it stops.
    ///
    /// # Errors
    ///
    /// `listener` is not listening (`InvalidInput`), or its address cannot be read.
    pub fn builder_on_unix(
        name: &str,
        listener: std::os::unix::net::UnixListener,
    ) -> io::Result<ServerBuilder> {
        ServerBuilder::on_listener(name, std::os::fd::OwnedFd::from(listener).into())
    }

    /// The TCP address the server listens on; `0.0.0.0:0` for a Unix-domain server (see
    /// [`endpoint`](TcpServer::endpoint)).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Where the server listens, on any transport.
    ///
    /// # Unix-domain sockets
    ///
    /// A path that exists at start is replaced only if it is a socket nobody listens on
    /// (a dead server's); a live server's socket, or anything that is not a socket, is
    /// refused with [`io::ErrorKind::AddrInUse`] and left as it is. The server removes its
    /// socket file when it stops accepting (stop or graceful shutdown), if the file is
    /// still the one it created. Connections carry the peer process's
    /// [`peer_credentials`](crate::TcpConnection::peer_credentials).
    pub fn endpoint(&self) -> &Endpoint {
        &self.shared.endpoint
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
    /// same queued stop; a listening socket the server bound itself and accepts on with
    /// the main loop stops listening at the drop already (new connects are refused, and
    /// those still queued end), whenever that loop runs again. An inherited one
    /// ([`builder_on`](TcpServer::builder_on)) is left listening for its other holders.
    /// An abstract Unix name (`unix:@name`) stays bound until the queued stop closes the
    /// socket; a server started on the same loop and name runs that stop first.
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
        // Requested now, whenever the main loop runs its part (it may never run again).
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Also when the main loop is gone and the queued stop below never runs.
        drop(self.shared.socket_file.lock().take());
        // A listener still on the main loop, which may not run the queued stop soon (a
        // drop after `run` returned) or ever: it stops listening now, rather than take
        // connections into a queue nobody accepts from. Only a socket the server bound
        // itself: an inherited one may serve other processes too.
        let own_listener = self.shared.own_listener.lock().take();
        let holds_name = own_listener.is_some();
        if let Some(listener) = own_listener {
            let _ = listener.shutdown(std::net::Shutdown::Read);
            if self.shared.endpoint.is_unix() {
                // TCP resets the connections a shut-down listener held; a Unix-domain
                // listener keeps them queued, their clients connected to nobody: closed
                // here, they see the end (new connects are refused already, so this ends).
                if listener.set_nonblocking(true).is_ok() {
                    while let Ok((queued, _)) = listener.accept() {
                        drop(queued);
                    }
                }
            }
        }
        // Whatever `stop` did not do directly (or everything, from `drop`) is queued.
        let shared = self.shared.clone();
        let _ = self
            .shared
            .main
            .queue_in_loop(move |lp| stop_on_main(lp, &shared));
        if holds_name {
            unix::note_held_name(&self.shared);
        }
        if let Err(e) = self.threads.stop() {
            log::error!("server {}: {e}", self.shared.name);
        }
    }
}

/// The main-loop half of stopping: listener, main-loop connections, per-loop services.
/// Idempotent.
fn stop_on_main(lp: &mut EventLoop, shared: &Arc<ServerShared>) {
    stop_accepting(shared, Some(lp));
    let id = shared.id;
    NetLoop::idle_uninstall(lp, id);
    if shared.trims_main.swap(false, Ordering::SeqCst) {
        NetLoop::trim_uninstall(lp, shared.pool);
    }
    if let Some(timer) = shared.report_timer.lock().take() {
        lp.cancel(timer);
        duo_reactor::report_suppressed();
    }
    // Connections the main loop serves itself (no I/O threads); the I/O threads' ones go
    // with their loops.
    LoopConn::for_each_of_server(lp, id, "server stop", true, &|ctx| {
        ctx.close(CloseReason::Shutdown)
    });
}

fn stats(shared: &ServerShared) -> ServerStats {
    let c = &shared.counters;
    ServerStats {
        accepted: c.accepted.load(Ordering::Relaxed),
        handed_over: c.handed_over.load(Ordering::Relaxed),
        active: c.active.load(Ordering::Relaxed),
        closed: c.closed.load(Ordering::Relaxed),
        rejected: c.rejected.load(Ordering::Relaxed),
        fd_exhausted: c.emfile.load(Ordering::Relaxed),
        accept_errors: c.accept_errors.load(Ordering::Relaxed),
        full_pauses: c.full_pauses.load(Ordering::Relaxed),
        per_loop: shared.io.iter().map(|io| io.snapshot()).collect(),
    }
}

/// Removes the listening channels, each on its own loop (directly if it is `current`,
/// else queued). Each loop drops its descriptor of the listening socket with it; the
/// socket closes with the last one (unless another process holds it too).
///
/// No connection is stranded in a socket shared with `EPOLLEXCLUSIVE`: a loop dispatches
/// the events of an iteration before it runs its queued functions, so a wake-up that
/// picked this loop is accepted before the removal runs, and a connection that arrives
/// after it wakes a loop still registered.
///
/// A loop busy elsewhere may accept (and count) connections until its removal runs, after
/// this returns: `removals_pending` counts the removals not yet run, and the last one to
/// run lets a graceful shutdown check again whether the server is empty.
fn stop_accepting(shared: &Arc<ServerShared>, current: Option<&mut EventLoop>) {
    shared.stopping.store(true, Ordering::SeqCst);
    // New connections would wait for nobody: the path goes now.
    drop(shared.socket_file.lock().take());
    let acceptors = std::mem::take(&mut *shared.acceptors.lock());
    let mut current = current;
    for (h, token) in acceptors {
        match current.as_deref_mut() {
            Some(lp) if lp.handle().same_loop(&h) => {
                lp.remove_channel(token);
                drop(shared.own_listener.lock().take());
            }
            _ => {
                let pending = RemovalPending::new(shared);
                // Dropped unrun if the loop is gone (its listener went with it): counted
                // done either way.
                let _ = h.queue_in_loop(move |lp| {
                    lp.remove_channel(token);
                    drop(pending);
                });
            }
        }
    }
}

/// A listener removal queued by [`stop_accepting`], counted in `removals_pending` until
/// it has run (or was dropped unrun): after the last one, a graceful shutdown under way
/// checks whether the server is empty.
struct RemovalPending(Arc<ServerShared>);

impl RemovalPending {
    fn new(shared: &Arc<ServerShared>) -> RemovalPending {
        shared.removals_pending.fetch_add(1, Ordering::SeqCst);
        RemovalPending(shared.clone())
    }
}

impl Drop for RemovalPending {
    fn drop(&mut self) {
        let shared = &self.0;
        // The listener is gone (removed, or with its loop): so is the reason to hold it.
        drop(shared.own_listener.lock().take());
        let left = shared.removals_pending.fetch_sub(1, Ordering::SeqCst) - 1;
        if left == 0 && shared.link.shutdown_begun.load(Ordering::Acquire) {
            let s = shared.clone();
            let _ = shared.main.queue_in_loop(move |lp| run_when_empty(lp, &s));
        }
    }
}

/// A graceful shutdown: stop accepting, tell every connection (on its own loop), close
/// what is left at the deadline, run `then` when none is left.
///
/// Every connection accepted before the listener was removed is told, once: the visit of
/// each loop tells those registered there, and a connection registered after the
/// shutdown began is told as it is registered (a loop that accepts from the shared
/// listener may hand one to another loop after that loop's visit went by). Likewise at
/// the deadline: one registered after it is closed as it is registered.
fn shutdown(shared: &Arc<ServerShared>, grace: Duration, then: WhenEmpty) {
    stop_accepting(shared, None);
    let first = !shared.link.shutdown_begun.swap(true, Ordering::SeqCst);
    let s = shared.clone();
    let queued = shared.main.queue_in_loop(move |lp| {
        s.on_empty.lock().push(then);
        if first {
            let open = s.counters.active.load(Ordering::Acquire);
            // A loop whose listener is still registered may yet accept connections,
            // which the visit below (queued to it after the removal) reaches.
            let accepting = s.removals_pending.load(Ordering::Acquire);
            log::info!("server {}: shutting down, {open} connections open", s.name);
            let conns = ServerConnections::new(s.link.clone());
            conns.for_each_with_pending("graceful shutdown", |ctx| ctx.begin_shutdown());
            if open > 0 || accepting > 0 {
                let link = s.link.clone();
                let timer = lp.run_after(grace, move |_| {
                    // Before the visits: a connection registered after its loop's visit
                    // closes as it is registered.
                    link.deadline_passed.store(true, Ordering::Release);
                    conns.for_each_with_pending("shutdown deadline", |ctx| {
                        duo_reactor::log_limited!(
                            log::Level::Info,
                            "{}: still open at the shutdown deadline; closing",
                            ctx.connection().name()
                        );
                        ctx.close(CloseReason::Shutdown);
                    });
                });
                *s.grace_timer.lock() = Some(timer);
            }
        }
        // Already shutting down (connections told, deadline set): wait along.
        run_when_empty(lp, &s);
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

    /// The buffer pool the server's connections take their blocks from
    /// ([`ServerBuilder::buffer_pool`](crate::ServerBuilder::buffer_pool), by default
    /// [`BufPool::global`]).
    pub fn buffer_pool(&self) -> BufPool {
        self.shared.pool
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The TCP address the server listens on; `0.0.0.0:0` for a Unix-domain server.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Where the server listens, on any transport ([`TcpServer::endpoint`]).
    pub fn endpoint(&self) -> &Endpoint {
        &self.shared.endpoint
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
            .field("endpoint", &self.shared.endpoint)
            .field("io_threads", &self.threads.num_threads())
            .finish()
    }
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("name", &self.shared.name)
            .field("endpoint", &self.shared.endpoint)
            .finish()
    }
}
