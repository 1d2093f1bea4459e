//! [`HttpServer`] (on the application's loop), [`HttpServerThread`] (on a loop thread of
//! its own) and their builder.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use duo_net::{EventLoop, OutputLimit, ServerHandle, ServerStats, TcpServer};
use duo_reactor::EventLoopThread;

use crate::conn::Service;
use crate::limits::defaults;
use crate::{Limits, Method, Request, Responder, Response, Router};

/// An HTTP/1.1 server on a [`TcpServer`]: routes from a [`Router`], keep-alive and
/// pipelining, size and time limits, and a clear 4xx (then close) for a bad request.
///
/// Two ways to run it:
/// - [`HttpServerBuilder::start`] on the application's own [`EventLoop`], like a
///   [`TcpServer`] (handlers run on that loop, or on the server's I/O threads with
///   [`io_threads`](HttpServerBuilder::io_threads));
/// - [`HttpServerBuilder::spawn`] on a loop thread of its own ([`HttpServerThread`]): an
///   endpoint that must answer even while the application's loops are stalled (metrics,
///   health).
///
/// # What it does on the wire
///
/// - Every response has `Date` (RFC 9110 section 6.6.1; a handler may set its own) and
///   `Content-Length` (204 and 304 have no body and no length, 205 no body and length
///   0);
///   responses to pipelined requests go out in request order; `HEAD` gets the `GET`
///   route's head without its body (and without `Content-Length` when that body is
///   empty and the route gives no
///   [`head_content_length`](crate::Response::head_content_length): the server cannot
///   tell an empty resource from a body not generated), and the server's own refusals
///   of a `HEAD` request come without theirs too. Any answer to `CONNECT` closes the
///   connection, with `Connection: close`: a 2xx one goes without length or body (a
///   client takes what follows it for a tunnel, and the server makes none), and a
///   client may have sent tunnel bytes behind a refused one without waiting for it,
///   which are never read as requests.
/// - HTTP/1.1 connections stay open unless the request says `Connection: close`; HTTP/1.0
///   ones close after the response unless the request says `Connection: keep-alive`
///   (`close` wins when the field lists both).
/// - Request bodies come with `Content-Length` or chunked, decoded as they arrive
///   ([`ChunkedRequest`](crate::ChunkedRequest): extensions and trailer fields are read
///   and dropped); see [`parse_request`](crate::parse_request) for every refusal.
///   `Expect: 100-continue` gets `100 Continue` once the head is accepted.
/// - Limits ([`defaults`]): head 8 KiB → 431, body 1 MiB → 413 (before
///   it is read; a chunked one as soon as a chunk's size would pass it), head within 10 s → 408, body within 30 s → 408, 60 s idle between
///   requests → close; [`max_connections`](HttpServerBuilder::max_connections) beyond
///   which new connections are closed at once. Timeouts are clamped to
///   [`defaults::MAX_TIMEOUT`] (one day).
/// - A client that pipelines requests without reading the responses gets no further
///   answers (and its further requests are not read) once 1 MiB of output is queued for
///   it ([`max_pending_output`](HttpServerBuilder::max_pending_output)), until it has
///   read them; then the server answers on, in order. Meanwhile the request timeouts do
///   not run; a client that reads none of its responses for the keep-alive timeout is
///   closed.
/// - After a response that ends the connection the server half-closes, reads and drops
///   what the peer still sends for up to the linger time (2 s), then closes: the peer
///   reads the response instead of a reset.
/// - A [deferred](HttpServerBuilder::route_deferred) handler has 30 s to answer
///   ([`response_timeout`](HttpServerBuilder::response_timeout)), else 503 and close;
///   its connection reads and runs nothing further meanwhile. A client that closes
///   meanwhile still gets the answer written (it may have only half-closed and still
///   read), unless the server was built with
///   [`abort_on_client_close`](HttpServerBuilder::abort_on_client_close). A client that
///   resets its connection while it waits for an answer, or while the server waits for
///   it to read its responses, has the connection closed at once: nothing can reach it.
/// - A peer's bytes never panic the server; a handler that panics gets its client a 500
///   and its connection closed, and every other connection goes on.
///
/// # Example
///
/// A server on its own thread, one request with a plain [`std::net::TcpStream`], stop:
///
/// ```
/// use std::io::{Read, Write};
/// use duo_http::{HttpServer, Method, Response, StatusCode};
///
/// let server = HttpServer::builder("status", "127.0.0.1:0".parse()?)
///     .route(Method::Get, "/healthz", |_req| Response::text(StatusCode::OK, "ok\n"))
///     .spawn()?;
/// let mut s = std::net::TcpStream::connect(server.local_addr())?;
/// s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
/// let mut reply = String::new();
/// s.read_to_string(&mut reply)?; // the server closes after this response
/// assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"));
/// assert!(reply.ends_with("\r\n\r\nok\n"));
/// server.stop()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct HttpServer {
    tcp: TcpServer,
}

impl HttpServer {
    /// A builder for a server named `name` (in logs and thread names) on `addr` (port 0
    /// picks a free port; the server reports the real one).
    pub fn builder(name: &str, addr: SocketAddr) -> HttpServerBuilder {
        HttpServerBuilder::new(name, Bind::Addr(addr))
    }

    /// A builder for a server that serves on `listener`, a TCP socket that is already
    /// bound and listening (inherited from systemd or from a previous image of the
    /// process, say): nothing is bound, and connections the kernel queued on it before the
    /// server started are served. A socket that is not a listening TCP socket makes
    /// [`start`](HttpServerBuilder::start) (or `spawn`) fail with `InvalidInput`.
    pub fn builder_on(name: &str, listener: std::net::TcpListener) -> HttpServerBuilder {
        HttpServerBuilder::new(name, Bind::Listener(listener))
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.tcp.local_addr()
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        self.tcp.name()
    }

    /// The underlying TCP server's counters (connections, bytes).
    pub fn stats(&self) -> ServerStats {
        self.tcp.stats()
    }

    /// A `Send + Sync` handle to the underlying TCP server: stats and graceful shutdown
    /// from any thread.
    pub fn clone_handle(&self) -> ServerHandle {
        self.tcp.clone_handle()
    }

    /// Graceful stop: stop accepting; an idle connection closes at once, one with a
    /// request under way (being received, or waiting behind responses its client has
    /// not read) answers that request with `Connection: close` and closes after it
    /// (later pipelined requests are not run); force-close what is left after `grace`,
    /// then run `then` on the loop the server was started on (see
    /// [`TcpServer::shutdown`]).
    pub fn shutdown(&self, grace: Duration, then: impl FnOnce(&mut EventLoop) + Send + 'static) {
        self.tcp.shutdown(grace, then);
    }

    /// The underlying TCP server, for what takes one: say
    /// [`duo_net::process::run_until_stopped`], which serves until a stop signal.
    pub fn into_tcp_server(self) -> TcpServer {
        self.tcp
    }

    /// Stops now, on `main`, the loop it was started on (see [`TcpServer::stop`]).
    pub fn stop(self, main: &mut EventLoop) {
        self.tcp.stop(main);
    }
}

impl fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpServer")
            .field("tcp", &self.tcp)
            .finish()
    }
}

/// Builds and starts an [`HttpServer`]; from [`HttpServer::builder`].
#[derive(Debug)]
pub struct HttpServerBuilder {
    name: String,
    bind: Bind,
    router: Router,
    limits: Limits,
    header_timeout: Duration,
    body_timeout: Duration,
    keep_alive_timeout: Duration,
    linger: Duration,
    response_timeout: Duration,
    max_pending_output: usize,
    abort_on_client_close: bool,
    max_connections: Option<usize>,
    io_threads: usize,
    #[cfg(feature = "tls")]
    tls: Option<Arc<duo_net::tls::rustls::ServerConfig>>,
}

/// Where a server listens.
#[derive(Debug)]
enum Bind {
    /// Bound when the server starts.
    Addr(SocketAddr),
    /// Already bound and listening.
    Listener(std::net::TcpListener),
}

/// The shortest timeout: a zero one is taken as this.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// `t` within [`MIN_TIMEOUT`] and [`defaults::MAX_TIMEOUT`].
fn clamp_timeout(t: Duration) -> Duration {
    t.clamp(MIN_TIMEOUT, defaults::MAX_TIMEOUT)
}

impl HttpServerBuilder {
    fn new(name: &str, bind: Bind) -> HttpServerBuilder {
        HttpServerBuilder {
            name: name.to_owned(),
            bind,
            router: Router::new(),
            limits: Limits::default(),
            header_timeout: defaults::HEADER_TIMEOUT,
            body_timeout: defaults::BODY_TIMEOUT,
            keep_alive_timeout: defaults::KEEP_ALIVE_TIMEOUT,
            linger: defaults::LINGER,
            response_timeout: defaults::RESPONSE_TIMEOUT,
            abort_on_client_close: false,
            max_pending_output: defaults::MAX_PENDING_OUTPUT,
            max_connections: None,
            io_threads: 0,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Routes `method` requests for the exact `path` to `handler` (see [`Router`]).
    /// Handlers run on a loop thread: keep them quick (see [`Handler`](crate::Handler)).
    pub fn route(
        mut self,
        method: Method,
        path: &str,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Self {
        self.router.add(method, path, Arc::new(handler));
        self
    }

    /// Routes `method` requests for the exact `path` to `handler`, which answers later,
    /// from any thread, through its [`Responder`] (see
    /// [`DeferredHandler`](crate::DeferredHandler)): for an answer that takes I/O or
    /// time, without holding the loop.
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use duo_http::{HttpServer, Method, Request, Responder, Response, StatusCode};
    ///
    /// let server = HttpServer::builder("slow", "127.0.0.1:0".parse()?)
    ///     .route_deferred(Method::Get, "/report", |_req: &Request, r: Responder| {
    ///         // Work that must not run on the loop, on a thread of its own.
    ///         std::thread::spawn(move || {
    ///             let sum: u64 = (1..=1000).sum();
    ///             r.respond(Response::text(StatusCode::OK, format!("{sum}\n")));
    ///         });
    ///     })
    ///     .spawn()?;
    /// let mut s = std::net::TcpStream::connect(server.local_addr())?;
    /// s.write_all(b"GET /report HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    /// let mut reply = String::new();
    /// s.read_to_string(&mut reply)?;
    /// assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"));
    /// assert!(reply.ends_with("\r\n\r\n500500\n"));
    /// server.stop()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn route_deferred(
        mut self,
        method: Method,
        path: &str,
        handler: impl Fn(&Request, Responder) + Send + Sync + 'static,
    ) -> Self {
        self.router.add_deferred(method, path, Arc::new(handler));
        self
    }

    /// Replaces the routes with `router`'s.
    pub fn router(mut self, router: Router) -> Self {
        self.router = router;
        self
    }

    /// All size limits at once.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Longest request head (default [`defaults::MAX_HEAD`]); longer → 431.
    pub fn max_head_bytes(mut self, n: usize) -> Self {
        self.limits.max_head = n;
        self
    }

    /// Most header fields in a request (default [`defaults::MAX_HEADERS`]); more → 431.
    pub fn max_headers(mut self, n: usize) -> Self {
        self.limits.max_headers = n;
        self
    }

    /// Longest request body (default [`defaults::MAX_BODY`]); longer → 413. At most
    /// 7.5 MiB less the head limit: a connection holds a request in one block of its
    /// input (`duo_net::defaults::MAX_INPUT`, 8 MiB, with room for two reads); a larger
    /// value is taken as that.
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.limits.max_body = n;
        self
    }

    /// Time for a request head to arrive (default [`defaults::HEADER_TIMEOUT`]), counted
    /// from the connection's start for its first request and from the first byte of each
    /// later one; past it → 408 and close (or a plain close if nothing came). Clamped,
    /// like every timeout, to [`defaults::MAX_TIMEOUT`] (one day).
    pub fn header_timeout(mut self, t: Duration) -> Self {
        self.header_timeout = clamp_timeout(t);
        self
    }

    /// Time for a request body to arrive after its head (default
    /// [`defaults::BODY_TIMEOUT`]); past it → 408 and close.
    pub fn body_timeout(mut self, t: Duration) -> Self {
        self.body_timeout = clamp_timeout(t);
        self
    }

    /// How long a connection may wait between requests (default
    /// [`defaults::KEEP_ALIVE_TIMEOUT`]); then it is closed.
    pub fn keep_alive_timeout(mut self, t: Duration) -> Self {
        self.keep_alive_timeout = clamp_timeout(t);
        self
    }

    /// How long, after a response that ends the connection, the server waits for the
    /// peer to close (default [`defaults::LINGER`]).
    pub fn linger(mut self, t: Duration) -> Self {
        self.linger = clamp_timeout(t);
        self
    }

    /// How long a [deferred](HttpServerBuilder::route_deferred) handler may take to
    /// answer (default [`defaults::RESPONSE_TIMEOUT`]), counted from the request; past
    /// it → 503 and close, and its late answer is dropped.
    pub fn response_timeout(mut self, t: Duration) -> Self {
        self.response_timeout = clamp_timeout(t);
        self
    }

    /// Gives up on a client that finishes sending (closes, or half-closes) while its
    /// [deferred](HttpServerBuilder::route_deferred) answer is outstanding (default off):
    /// its connection closes once the responses already queued are written, so its
    /// [`Responder::is_connected`](crate::Responder::is_connected) turns false (the
    /// handler can drop the work), the answer goes nowhere, and the requests it pipelined
    /// after are not run; a deferred request reached later in a pipeline after the
    /// client's end is not run either. As nginx does for a client that closes while its
    /// request is proxied (HAProxy's `abortonclose`).
    ///
    /// Either way, a client that resets its connection meanwhile (or while the server waits
    /// for it to read its responses) has it closed at once: nothing can reach it.
    ///
    /// Off, a client that half-closes after its requests and still reads (some scripted
    /// clients do) gets every answer; a client that simply went away is noticed when its
    /// answer is written, or at the response timeout. Turn it on where handlers do
    /// costly work and clients give up: long polls, slow queries.
    pub fn abort_on_client_close(mut self, on: bool) -> Self {
        self.abort_on_client_close = on;
        self
    }

    /// Output a connection may have queued for its client before the server stops
    /// answering (and reading) its pipelined requests until the client has read it all
    /// (default [`defaults::MAX_PENDING_OUTPUT`], 1 MiB). A connection holds at most this
    /// plus one response; one past this plus [`defaults::OUTPUT_BACKSTOP`] is closed.
    pub fn max_pending_output(mut self, bytes: usize) -> Self {
        self.max_pending_output = bytes;
        self
    }

    /// Beyond `n` open connections, new ones are accepted and closed at once (no limit
    /// by default).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = Some(n);
        self
    }

    /// I/O threads of the underlying [`TcpServer`] (default 0: the loop the server runs
    /// on serves every connection, which is right for a few routes).
    pub fn io_threads(mut self, n: usize) -> Self {
        self.io_threads = n;
        self
    }

    /// Serves HTTPS: TLS with `config` on every connection, through duo-net's TLS
    /// ([`ServerBuilder::tls`](duo_net::ServerBuilder::tls); build `config` from PEM files
    /// with [`duo_net::tls::server_config_from_pem`]). The handshake must complete within
    /// the header timeout, then the head within another; a client that fails the
    /// handshake (speaks plain HTTP, say) or does not finish it in time is closed without
    /// a response. Clients that negotiate the protocol by ALPN find `http/1.1`
    /// only if `config.alpn_protocols` lists it. This server speaks HTTP/1.x alone, so
    /// every other protocol in that list (`h2`, say, in a configuration shared with an
    /// HTTP/2 server) is left out of what it offers: a client that negotiated HTTP/2
    /// would send a preface this server refuses. Needs the feature `tls` (on by default).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<duo_net::tls::rustls::ServerConfig>) -> Self {
        let http1 = |p: &Vec<u8>| p == b"http/1.1" || p == b"http/1.0";
        self.tls = Some(if config.alpn_protocols.iter().all(http1) {
            config
        } else {
            let mut only_http1 = Arc::unwrap_or_clone(config);
            only_http1.alpn_protocols.retain(http1);
            Arc::new(only_http1)
        });
        self
    }

    /// Binds and starts serving on `main`, the calling thread's loop (which must then
    /// run).
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use std::time::Duration;
    /// use duo_http::{HttpServer, Method, Response, StatusCode};
    /// use duo_net::EventLoop;
    ///
    /// let mut lp = EventLoop::new()?;
    /// let server = HttpServer::builder("hello", "127.0.0.1:0".parse()?)
    ///     .route(Method::Get, "/", |req| {
    ///         Response::text(StatusCode::OK, format!("hi {}\n", req.peer_addr().ip()))
    ///     })
    ///     .start(&mut lp)?;
    /// let addr = server.local_addr();
    /// let (reply_tx, reply) = std::sync::mpsc::channel();
    /// let client = std::thread::spawn(move || {
    ///     let mut s = std::net::TcpStream::connect(addr).unwrap();
    ///     s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    ///     let mut text = String::new();
    ///     s.read_to_string(&mut text).unwrap(); // HTTP/1.0: closed after the response
    ///     reply_tx.send(text).unwrap();
    /// });
    /// let handle = server.clone_handle();
    /// lp.run_every(Duration::from_millis(5), move |_| {
    ///     if client.is_finished() {
    ///         handle.shutdown(Duration::from_secs(1), |lp| lp.quit());
    ///     }
    /// });
    /// lp.run()?;
    /// server.stop(&mut lp);
    /// let reply = reply.recv()?;
    /// assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"));
    /// assert!(reply.ends_with("\r\n\r\nhi 127.0.0.1\n"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Binding or listening failed (or the socket of [`HttpServer::builder_on`] is not a
    /// listening TCP socket), or the I/O threads could not start.
    pub fn start(self, main: &mut EventLoop) -> io::Result<HttpServer> {
        // The input a connection may hold: one unfinished request, plus what one read
        // brings of the next ones; the request limits are checked before that, and keep
        // within the most a connection's input holds.
        let reads = 2 * duo_net::defaults::READ_BUDGET;
        let mut limits = self.limits;
        limits.max_head = limits.max_head.min(duo_net::defaults::MAX_INPUT - reads);
        let room = duo_net::defaults::MAX_INPUT - reads - limits.max_head;
        limits.max_body = limits.max_body.min(room);
        let max_input = limits.max_head + limits.max_body + reads;
        let svc = Arc::new(Service {
            router: self.router,
            limits,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            keep_alive_timeout: self.keep_alive_timeout,
            linger: self.linger,
            response_timeout: self.response_timeout,
            max_pending_output: self.max_pending_output,
        });
        let (abort, on_finished) = (self.abort_on_client_close, svc.clone());
        // `serve` keeps each connection's output within the bound plus one response; the
        // limit only backs that up.
        let backstop = self
            .max_pending_output
            .saturating_add(defaults::OUTPUT_BACKSTOP);
        let (on_up, on_msg, on_drained, on_stop) = (svc.clone(), svc.clone(), svc.clone(), svc);
        let tcp = match self.bind {
            Bind::Addr(addr) => TcpServer::builder(&self.name, addr),
            Bind::Listener(listener) => TcpServer::builder_on(&self.name, listener)?,
        };
        let mut tcp = tcp
            .io_threads(self.io_threads)
            .max_input(max_input)
            .output_limit(backstop, OutputLimit::Close)
            .tcp_nodelay(true)
            .on_connection(move |conn| on_up.on_connection(conn))
            .on_message(move |ctx, input| on_msg.on_message(ctx, input))
            .on_write_complete(move |ctx| on_drained.on_write_complete(ctx))
            .on_shutdown(move |ctx| on_stop.on_shutdown(ctx))
            .on_close(Service::on_close);
        if let Some(n) = self.max_connections {
            tcp = tcp.max_connections(n);
        }
        #[cfg(feature = "tls")]
        if let Some(config) = self.tls {
            // A client that connects and never completes its handshake is bounded as one
            // that never sends its head.
            tcp = tcp.tls(config).tls_handshake_timeout(self.header_timeout);
        }
        // Told when a client finishes sending, or is gone, while its connection is not
        // reading: a gone client's connection closes at once (nothing can reach it), a
        // finished one's as `abort_on_client_close` says.
        tcp = tcp
            .on_peer_half_close_while_paused(move |ctx| on_finished.on_client_finished(ctx, abort));
        let tcp = tcp.start(main)?;
        log::info!("http server {} on {}", self.name, tcp.local_addr());
        Ok(HttpServer { tcp })
    }

    /// Starts the server on a loop thread of its own (named after the server), where its
    /// handlers run: it keeps answering while the application's loops are busy or
    /// stalled. Returns once the server listens.
    ///
    /// # Errors
    ///
    /// The thread could not start, or [`start`](HttpServerBuilder::start) failed on it.
    pub fn spawn(self) -> io::Result<HttpServerThread> {
        let thread = EventLoopThread::spawn(&self.name, None)?;
        let (tx, rx) = mpsc::channel();
        thread
            .handle()
            .queue_in_loop(move |lp| {
                let started = self.start(lp).map(|server| {
                    let handle = server.clone_handle();
                    lp.insert_local(Running(server));
                    handle
                });
                let _ = tx.send(started);
            })
            .map_err(io::Error::from)?;
        let handle = rx
            .recv()
            .map_err(|_| io::Error::other("the server's loop thread ended while starting"))??;
        Ok(HttpServerThread {
            thread: Some(thread),
            handle,
        })
    }
}

/// How long [`HttpServerThread::shutdown`] waits beyond its grace period.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(1);

/// The server a [`HttpServerThread`]'s loop runs (a loop-local value).
struct Running(HttpServer);

/// An [`HttpServer`] running on a loop thread of its own, from
/// [`HttpServerBuilder::spawn`]. Dropping it stops the server and joins the thread, as
/// [`stop`](HttpServerThread::stop) does.
pub struct HttpServerThread {
    thread: Option<EventLoopThread>,
    handle: ServerHandle,
}

impl HttpServerThread {
    /// The address the server listens on (the real port when it was bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// The underlying TCP server's counters.
    pub fn stats(&self) -> ServerStats {
        self.handle.stats()
    }

    /// Stops the server (its listening socket and connections close) and joins its
    /// thread. The stop runs on the server's loop, after the handler running there (if
    /// any) returns.
    ///
    /// # Errors
    ///
    /// The loop ended with an error, or its thread panicked.
    pub fn stop(mut self) -> io::Result<()> {
        self.stop_inner()
    }

    /// Graceful stop, then [`stop`](HttpServerThread::stop): as [`HttpServer::shutdown`]
    /// (idle connections close at once, a request under way, a deferred one too, is
    /// answered with `Connection: close`, what is left after `grace` is closed), waiting
    /// for it to finish before the thread is joined. Blocks the calling thread for at
    /// most `grace` plus the time a handler running at that moment takes.
    ///
    /// # Errors
    ///
    /// As [`stop`](HttpServerThread::stop).
    pub fn shutdown(mut self, grace: Duration) -> io::Result<()> {
        if self.thread.is_some() {
            let (done, finished) = mpsc::channel();
            self.handle.shutdown(grace, move |_| {
                let _ = done.send(());
            });
            // The shutdown's own deadline closes what is left after `grace`; the margin
            // covers a handler still running then. Past it, `stop` closes the rest.
            // (Saturating: a grace of `Duration::MAX`, "as long as it takes", must not
            // overflow.)
            if finished
                .recv_timeout(grace.saturating_add(SHUTDOWN_MARGIN))
                .is_err()
            {
                log::warn!(
                    "http server on {}: the graceful shutdown did not finish; stopping",
                    self.handle.local_addr()
                );
            }
        }
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let (done, stopped) = mpsc::channel();
        let queued = thread.handle().queue_in_loop(move |lp| {
            if let Some(Running(server)) = lp.remove_local::<Running>() {
                server.stop(lp);
            }
            let _ = done.send(());
        });
        if queued.is_ok() {
            // Only fails if the loop ended without running it; joining says why.
            let _ = stopped.recv();
        }
        thread.stop()
    }
}

impl Drop for HttpServerThread {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            log::error!("http server on {}: {e}", self.handle.local_addr());
        }
    }
}

impl fmt::Debug for HttpServerThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpServerThread")
            .field("server", &self.handle)
            .field("running", &self.thread.is_some())
            .finish()
    }
}
