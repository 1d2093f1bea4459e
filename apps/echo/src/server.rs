//! The echo server itself: a `duo_net::TcpServer` that sends back what it receives, raw
//! or as [`framed`] packets, with a graceful stop on SIGINT or SIGTERM; as a
//! single process on its own socket ([`serve`]) or an inherited one ([`serve_on`]), or as
//! a worker of a supervisor ([`serve_worker`]).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duo_metrics::{MetricsEndpoint, MetricsServer};
use duo_net::process::{self, STOP_SIGNALS};
use duo_net::{
    AcceptMode, ConnCtx, Endpoint, EventLoop, HealthConfig, InputBuffer, ServerBuilder,
    ServerHandle, TcpServer, UdpSocket, WhenFull,
};
use duo_supervisor::{StatsSlot, Worker, WorkerStats};

use crate::framed;

/// How often a worker publishes its counters for the supervisor (or at its stats interval,
/// if that is shorter).
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Settings of `echo serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on: TCP (port 0: any free port) or Unix-domain (`unix:/path`,
    /// `unix:@name`).
    pub listen: Endpoint,
    /// I/O threads (sub reactors); 0 serves every connection on the main thread.
    pub io_threads: usize,
    /// Loops on the I/O threads (more than `io_threads`: a loop group, where a ready loop
    /// whose thread is busy or off its core is run by another; see
    /// `ServerBuilder::loops`); 0: one loop per thread.
    pub loops: usize,
    /// How the I/O threads share `loops` loops; see `ServerBuilder::loop_sharing`.
    pub loop_sharing: duo_net::LoopSharing,
    /// Poll connections edge-triggered (else level-triggered).
    pub edge_triggered: bool,
    /// Who accepts connections.
    pub accept: AcceptMode,
    /// With the shared accept mode: hand connections to the least loaded loop when the
    /// accepting loop holds clearly more (`ServerBuilder::balance_accepts`).
    pub balance_accepts: bool,
    /// Close connections that send nothing for this long.
    pub idle_timeout: Option<Duration>,
    /// Beyond this many open connections, new ones are accepted and closed.
    pub max_conns: Option<usize>,
    /// Speak the packet protocol of [`framed`] instead of echoing raw bytes.
    pub framed: bool,
    /// Log connections, messages/s and MiB/s this often.
    pub stats_interval: Option<Duration>,
    /// How long a graceful shutdown waits for connections to close before forcing them.
    pub drain_timeout: Duration,
    /// Serve the metrics endpoint (`duo_metrics`) here, and print `metrics on ADDR`.
    pub metrics: Option<SocketAddr>,
    /// The loops' stall threshold (`None`: the stall detector is off).
    pub stall_threshold: Option<Duration>,
    /// Busy polling on the loops (`Duration::ZERO`: off); see `ServerBuilder::busy_poll`.
    pub busy_poll: Duration,
    /// Accept TCP connections once their first bytes arrived (`Duration::ZERO`: off); see
    /// `ServerBuilder::defer_accept`.
    pub defer_accept: Duration,
    /// Also echo UDP datagrams on the listener's address (same IP and port number), from
    /// one `duo_net::UdpSocket` on the main loop (a worker: one per worker, with
    /// `SO_REUSEPORT`); printed as `udp on ADDR`.
    pub udp: bool,
    /// Datagrams per `recvmmsg`/`sendmmsg` of the UDP echo (1: one `recvfrom` each).
    pub udp_batch: usize,
    /// Serve TLS with this certificate chain and private key (PEM files), loaded by each
    /// process that serves.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Descriptors a worker keeps for itself (loops, timers, signals, the acceptors' spare
/// descriptors, standard streams) below its open-file limit; the rest are for connections.
const WORKER_FD_RESERVE: u64 = 64;

/// Runs the server until a stop signal has been handled: prepares the process
/// ([`process::prepare_server`]), starts the server on `cfg.listen`, prints `listening on
/// ADDR` on stdout, and on SIGINT or SIGTERM shuts down gracefully (a second signal quits
/// at once).
///
/// Call it from the main thread before starting any other thread.
///
/// # Errors
///
/// The process set-up, the event loop or the listening socket failed (the address is in
/// use, say), or stdout could not be written.
pub fn serve(cfg: &ServeConfig) -> io::Result<()> {
    process::prepare_server(&STOP_SIGNALS)?;
    match cfg.listen.as_inet() {
        // `--udp` on "any port": one free for TCP and UDP alike (a port the kernel picks
        // for TCP may be taken for UDP).
        Some(addr) if cfg.udp && addr.port() == 0 => {
            let (addr, udp) = port_free_for_tcp_and_udp(addr)?;
            let builder = TcpServer::builder("echo", addr);
            run_with_udp(cfg, builder, None, Some(udp))
        }
        _ => run(cfg, TcpServer::builder("echo", cfg.listen.clone()), None),
    }
}

/// A port of `addr`'s IP free for both protocols: a UDP socket bound to it (held, so the
/// port stays ours for UDP) and its address, where a TCP listener could bind too (checked
/// by binding one, which is closed again for the server to bind).
///
/// # Errors
///
/// Binding fails for another reason than the port being in use, or 64 ports in a row
/// were taken for TCP.
pub fn port_free_for_tcp_and_udp(
    addr: SocketAddr,
) -> io::Result<(SocketAddr, std::net::UdpSocket)> {
    const TRIES: usize = 64;
    for _ in 0..TRIES {
        let udp = std::net::UdpSocket::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("--udp: bind {addr}: {e}")))?;
        let chosen = udp.local_addr()?;
        match TcpListener::bind(chosen) {
            Ok(_probe) => return Ok((chosen, udp)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("bind {chosen}: {e}"))),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!(
            "--udp: no port of {} free for both TCP and UDP in {TRIES} tries",
            addr.ip()
        ),
    ))
}

/// As [`serve`], on an already listening socket (socket activation) instead of
/// `cfg.listen`.
///
/// # Errors
///
/// As [`serve`]; `InvalidInput` if `listener` is not a listening TCP socket.
pub fn serve_on(cfg: &ServeConfig, listener: TcpListener) -> io::Result<()> {
    process::prepare_server(&STOP_SIGNALS)?;
    run(cfg, TcpServer::builder_on("echo", listener)?, None)
}

/// As [`serve_on`], on an inherited Unix-domain listening socket (socket activation of
/// a `ListenStream=/path` unit); its socket file is left in place at exit (not ours).
///
/// # Errors
///
/// As [`serve`]; `InvalidInput` if `listener` is not listening.
pub fn serve_on_unix(cfg: &ServeConfig, listener: UnixListener) -> io::Result<()> {
    process::prepare_server(&STOP_SIGNALS)?;
    run(cfg, TcpServer::builder_on_unix("echo", listener)?, None)
}

/// Runs the server as a worker of a `duo_supervisor::Supervisor`: on the first listening
/// socket it inherited, telling the supervisor it is ready once it accepts, publishing its
/// counters into its stats row, printing nothing on stdout. SIGTERM drains it as in
/// [`serve`].
///
/// # Errors
///
/// As [`serve`]; `InvalidInput` if the supervisor handed over no listening socket.
pub fn serve_worker(cfg: &ServeConfig, mut worker: Worker) -> io::Result<()> {
    process::prepare_server(&duo_supervisor::WORKER_SIGNALS)?;
    let listener = worker.take_listeners().into_iter().next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the supervisor handed over no listening socket",
        )
    })?;
    run(cfg, TcpServer::builder_on("echo", listener)?, Some(worker))
}

/// Starts the server from `builder` and serves until stopped; announces itself on stdout,
/// or (as a `worker`) to its supervisor.
fn run(cfg: &ServeConfig, builder: ServerBuilder, worker: Option<Worker>) -> io::Result<()> {
    run_with_udp(cfg, builder, worker, None)
}

/// As [`run`], with `--udp` served on `udp` (bound already) if given.
fn run_with_udp(
    cfg: &ServeConfig,
    builder: ServerBuilder,
    worker: Option<Worker>,
    udp_bound: Option<std::net::UdpSocket>,
) -> io::Result<()> {
    HealthConfig::set_process_default(HealthConfig {
        stall_threshold: cfg.stall_threshold,
        ..HealthConfig::process_default()
    });
    let mut main_loop = EventLoop::new()?;
    let messages = Arc::new(AtomicU64::new(0));
    let mut builder = builder
        .io_threads(cfg.io_threads)
        .loops(cfg.loops)
        .loop_sharing(cfg.loop_sharing)
        .accept_mode(cfg.accept)
        .balance_accepts(cfg.balance_accepts)
        .edge_triggered(cfg.edge_triggered)
        .busy_poll(cfg.busy_poll)
        .defer_accept(cfg.defer_accept);
    if let Some(timeout) = cfg.idle_timeout {
        builder = builder.idle_timeout(timeout);
    }
    if let Some((cert, key)) = &cfg.tls {
        let config = duo_net::tls::server_config_from_pem(cert, key)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        builder = builder.tls(config);
    }
    if worker.is_some() {
        // A worker shares its listening socket with the others: at its maximum (or when
        // its descriptors run out) it stops accepting and leaves new connections queued
        // for them, rather than accepting and closing them.
        let room = duo_supervisor::worker_connection_limit(WORKER_FD_RESERVE, cfg.max_conns)?;
        builder = builder.max_connections(room).when_full(WhenFull::Pause);
    } else if let Some(n) = cfg.max_conns {
        builder = builder.max_connections(n);
    }
    // Count messages only when someone reads the count: an atomic shared by every I/O
    // thread costs a contended cache line per message.
    let counter = cfg.stats_interval.map(|_| messages.clone());
    builder = if cfg.framed {
        builder.on_message(move |ctx, input| on_packets(ctx, input, counter.as_deref()))
    } else {
        builder.on_message(move |ctx, input| on_bytes(ctx, input, counter.as_deref()))
    };
    let server = builder.start(&mut main_loop)?;

    let Some(mut worker) = worker else {
        // Stopped (and its thread joined) when this function returns.
        let metrics = match cfg.metrics {
            Some(addr) => Some(serve_metrics(addr, endpoint_for(&server, cfg)?)?),
            None => None,
        };
        process::shutdown_on_signals(
            &mut main_loop,
            &STOP_SIGNALS,
            server.clone_handle(),
            cfg.drain_timeout,
        )?;
        let udp = if cfg.udp {
            let at = match udp_bound {
                Some(socket) => UdpAt::Bound(socket),
                None => UdpAt::Addr(server.local_addr()),
            };
            Some(start_udp(&main_loop, at, cfg.udp_batch, false)?)
        } else {
            None
        };
        if let (Some(metrics), Some(udp)) = (&metrics, &udp) {
            metrics.add_udp_socket(udp.clone());
        }
        if let Some(every) = cfg.stats_interval {
            let counters = Counters {
                server: server.clone_handle(),
                messages,
                udp: udp.clone(),
            };
            report_stats(&mut main_loop, counters, every);
        }
        // Nobody learns where the server is if the lines cannot be written: it stops.
        let ran = crate::supervise::announce(
            server.endpoint(),
            metrics.as_ref().map(|m| m.local_addr()),
            udp.as_ref().map(|u| u.local_addr()),
        )
        .and_then(|()| main_loop.run());
        if let Some(udp) = &udp {
            udp.stop();
            log::info!("udp: {:?}", udp.stats());
        }
        server.stop(&mut main_loop);
        ran?;
        log::info!("stopped");
        return Ok(());
    };
    process::shutdown_on_signals(
        &mut main_loop,
        &STOP_SIGNALS,
        server.clone_handle(),
        cfg.drain_timeout,
    )?;
    duo_supervisor::ignore_supervisor_signals(&mut main_loop)?;
    // Its own endpoint on loopback, which the supervisor's `--metrics` address gathers;
    // stopped when this function returns.
    let metrics = match cfg.metrics {
        Some(_) => duo_supervisor::metrics::serve_worker(endpoint_for(&server, cfg)?, &worker)?,
        None => None,
    };
    // Every worker binds its own UDP socket with SO_REUSEPORT on the shared address: the
    // kernel spreads datagrams over them by source address and port.
    let udp = if cfg.udp {
        Some(start_udp(
            &main_loop,
            UdpAt::Addr(server.local_addr()),
            cfg.udp_batch,
            true,
        )?)
    } else {
        None
    };
    if let (Some(metrics), Some(udp)) = (&metrics, &udp) {
        metrics.add_udp_socket(udp.clone());
    }
    let publish = worker.stats().map(|slot| {
        let every = cfg
            .stats_interval
            .map_or(PUBLISH_EVERY, |s| s.min(PUBLISH_EVERY));
        let counters = Counters {
            server: server.clone_handle(),
            messages,
            udp: udp.clone(),
        };
        publish_stats(&mut main_loop, counters, slot, every)
    });
    // The server accepts from the moment it started: tell the supervisor.
    worker.notify_ready()?;
    log::info!(
        "worker {} (generation {}) serving {}",
        std::process::id(),
        worker.generation(),
        server.local_addr()
    );
    let ran = main_loop.run();
    if let Some(udp) = &udp {
        udp.stop();
        log::info!("worker {} udp: {:?}", std::process::id(), udp.stats());
    }
    server.stop(&mut main_loop);
    // Once more at the end: the supervisor reads the row when it reaps this worker, and
    // would otherwise miss what was counted since the last tick.
    if let Some(publish) = publish {
        publish();
    }
    ran?;
    log::info!("worker {} stopped", std::process::id());
    Ok(())
}

/// Where the UDP echo serves.
enum UdpAt {
    /// Bound here (the TCP listener's address).
    Addr(SocketAddr),
    /// On this socket, bound already.
    Bound(std::net::UdpSocket),
}

/// Starts the UDP echo `at` the TCP listener's address, served by `main_loop`; with
/// `reuse_port` (a worker of several) beside the other workers' sockets.
fn start_udp(
    main_loop: &EventLoop,
    at: UdpAt,
    batch: usize,
    reuse_port: bool,
) -> io::Result<UdpSocket> {
    let builder = match at {
        UdpAt::Addr(addr) => UdpSocket::builder("echo-udp", addr),
        UdpAt::Bound(socket) => UdpSocket::builder_on("echo-udp", socket)?,
    };
    builder
        .reuse_port(reuse_port)
        .batch(batch)
        .unbatched_receive(batch == 1)
        .on_datagram(|ctx, payload, from| {
            // A full send queue is counted (`dropped`) and logged by the socket; an echo
            // has nothing better to do with the error.
            let _ = ctx.send_to(payload, from);
        })
        .start(&main_loop.handle())
        .map_err(|e| io::Error::new(e.kind(), format!("--udp: {e}")))
}

/// The metrics endpoint for `server` (and every loop of the process), with the expiry of
/// its TLS certificate chain when it serves TLS.
fn endpoint_for(server: &TcpServer, cfg: &ServeConfig) -> io::Result<MetricsEndpoint> {
    let mut endpoint = MetricsEndpoint::new();
    endpoint.add_server(server.clone_handle());
    if let Some((cert, _)) = &cfg.tls {
        let expiry = duo_net::tls::chain_expiry(cert)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if let Some(not_after) = expiry {
            endpoint.certificate_expiry(cert, not_after);
        }
    }
    Ok(endpoint)
}

/// Starts `endpoint` on `addr`.
fn serve_metrics(addr: SocketAddr, endpoint: MetricsEndpoint) -> io::Result<MetricsServer> {
    endpoint
        .spawn(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("metrics endpoint on {addr}: {e}")))
}

/// What the stats line and a worker's stats row count: the TCP server's counters, the
/// messages (counted by `on_message` when someone reads them) and the UDP echo's.
#[derive(Clone)]
struct Counters {
    server: ServerHandle,
    messages: Arc<AtomicU64>,
    udp: Option<UdpSocket>,
}

impl Counters {
    /// The totals so far: messages (TCP messages and UDP datagrams), bytes in and out.
    fn totals(&self) -> (u64, u64, u64) {
        let stats = self.server.stats();
        let udp = self.udp.as_ref().map(UdpSocket::stats).unwrap_or_default();
        (
            self.messages
                .load(Ordering::Relaxed)
                .saturating_add(udp.datagrams_in),
            stats.bytes_in().saturating_add(udp.bytes_in),
            stats.bytes_out().saturating_add(udp.bytes_out),
        )
    }
}

/// Publishes the counters into the worker's stats row every `every`; returns the
/// publication, for one last call when the worker ends.
fn publish_stats(
    lp: &mut EventLoop,
    counters: Counters,
    slot: StatsSlot,
    every: Duration,
) -> impl Fn() + Clone {
    let publish = move || {
        let stats = counters.server.stats();
        let (messages, bytes_in, bytes_out) = counters.totals();
        slot.publish(&WorkerStats {
            open: stats.active,
            accepted: stats.accepted,
            bytes_in,
            bytes_out,
            messages,
        });
    };
    // Once now, so the row carries this worker's PID from the start (an upgraded
    // supervisor finds an adopted worker's row by it).
    publish();
    let tick = publish.clone();
    lp.run_every(every, move |_| tick());
    publish
}

/// Raw mode: send back every byte.
fn on_bytes(ctx: &mut ConnCtx<'_>, input: &mut InputBuffer, messages: Option<&AtomicU64>) {
    ctx.send(input.peek());
    input.consume_all();
    if let Some(m) = messages {
        m.fetch_add(1, Ordering::Relaxed);
    }
}

/// Framed mode: answer every complete packet; close the connection on a protocol error.
fn on_packets(ctx: &mut ConnCtx<'_>, input: &mut InputBuffer, messages: Option<&AtomicU64>) {
    // Counted here, not from `echo_frames`' result: an error loses the count of the
    // packets answered before it in the same input.
    let mut answered = 0u64;
    let result = framed::echo_frames(input, |parts| {
        let sent = ctx.send_parts(parts);
        answered += u64::from(sent);
        sent
    });
    if let Err(e) = result {
        duo_net::log_limited!(
            log::Level::Warn,
            "{}: {e}; closing",
            ctx.connection().name()
        );
        input.consume_all();
        // The replies to the good packets before the bad one still go out.
        ctx.close_after_flush();
    }
    if let (Some(m), true) = (messages, answered > 0) {
        m.fetch_add(answered, Ordering::Relaxed);
    }
}

/// Logs one line of statistics every `every`, from the counters.
fn report_stats(lp: &mut EventLoop, counters: Counters, every: Duration) {
    let mut last = (Instant::now(), 0u64, 0u64, 0u64);
    lp.run_every(every, move |_| {
        let now = Instant::now();
        let stats = counters.server.stats();
        let (msgs, bytes_in, bytes_out) = counters.totals();
        let (then, msgs0, in0, out0) = last;
        let elapsed = now.duration_since(then).as_secs_f64().max(1e-9);
        let mib_per_s = |bytes: u64| bytes as f64 / elapsed / (1024.0 * 1024.0);
        log::info!(
            "stats: {} connections, {:.0} msg/s, in {:.2} MiB/s, out {:.2} MiB/s",
            stats.active,
            msgs.saturating_sub(msgs0) as f64 / elapsed,
            mib_per_s(bytes_in.saturating_sub(in0)),
            mib_per_s(bytes_out.saturating_sub(out0)),
        );
        last = (now, msgs, bytes_in, bytes_out);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The port chosen for `--udp` on port 0 is held for UDP and free for TCP: the
    /// server's TCP bind and the UDP echo both get it, whatever other sockets hold.
    #[test]
    fn a_port_for_udp_on_port_0_is_free_for_both() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        for _ in 0..20 {
            let (addr, udp) = port_free_for_tcp_and_udp(any).unwrap();
            assert_ne!(addr.port(), 0);
            assert_eq!(udp.local_addr().unwrap(), addr);
            // Held: nobody else can bind it for UDP now.
            let again = std::net::UdpSocket::bind(addr).unwrap_err();
            assert_eq!(again.kind(), io::ErrorKind::AddrInUse);
            // Free for TCP, as the server will bind it.
            TcpListener::bind(addr).expect("the port is free for TCP");
        }
    }
}
