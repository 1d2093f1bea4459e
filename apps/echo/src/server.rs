//! The echo server itself: a `duo_net::TcpServer` that sends back what it receives, raw
//! or as [`framed`](crate::framed) packets, with a graceful stop on SIGINT or SIGTERM.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duo_net::process::{self, STOP_SIGNALS};
use duo_net::{AcceptMode, ConnCtx, EventLoop, InputBuffer, ServerHandle, TcpServer};

use crate::framed;

/// How long a graceful shutdown waits for connections to close before forcing them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// Settings of `echo serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// I/O threads (sub reactors); 0 serves every connection on the main thread.
    pub io_threads: usize,
    /// Poll connections edge-triggered (else level-triggered).
    pub edge_triggered: bool,
    /// Who accepts connections.
    pub accept: AcceptMode,
    /// Close connections that send nothing for this long.
    pub idle_timeout: Option<Duration>,
    /// Beyond this many open connections, new ones are accepted and closed.
    pub max_conns: Option<usize>,
    /// Speak the packet protocol of [`framed`] instead of echoing raw bytes.
    pub framed: bool,
    /// Log connections, messages/s and MiB/s this often.
    pub stats_interval: Option<Duration>,
}

/// Runs the server until a stop signal has been handled: prepares the process
/// ([`process::prepare_server`]), starts the server, prints `listening on ADDR` on stdout,
/// and on SIGINT or SIGTERM shuts down gracefully (a second signal quits at once).
///
/// Call it from the main thread before starting any other thread.
///
/// # Errors
///
/// The process set-up, the event loop or the listening socket failed (the address is in
/// use, say), or stdout could not be written.
pub fn serve(cfg: &ServeConfig) -> io::Result<()> {
    process::prepare_server(&STOP_SIGNALS)?;

    let mut main_loop = EventLoop::new()?;
    let messages = Arc::new(AtomicU64::new(0));
    let mut builder = TcpServer::builder("echo", cfg.listen)
        .io_threads(cfg.io_threads)
        .accept_mode(cfg.accept)
        .edge_triggered(cfg.edge_triggered);
    if let Some(timeout) = cfg.idle_timeout {
        builder = builder.idle_timeout(timeout);
    }
    if let Some(n) = cfg.max_conns {
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

    if let Some(every) = cfg.stats_interval {
        report_stats(&mut main_loop, server.clone_handle(), messages, every);
    }
    process::run_until_stopped(&mut main_loop, server, SHUTDOWN_GRACE)?;
    log::info!("stopped");
    Ok(())
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
    let result = framed::echo_frames(input, |parts| ctx.send_parts(parts));
    let answered = match result {
        Ok(n) => n,
        Err(e) => {
            log::warn!("{}: {e}; closing", ctx.connection().name());
            input.consume_all();
            // The replies to the good packets before the bad one still go out.
            ctx.close_after_flush();
            0
        }
    };
    if let (Some(m), true) = (messages, answered > 0) {
        m.fetch_add(answered as u64, Ordering::Relaxed);
    }
}

/// Logs one line of statistics every `every`, from the server's counters.
fn report_stats(
    lp: &mut EventLoop,
    server: ServerHandle,
    messages: Arc<AtomicU64>,
    every: Duration,
) {
    let mut last = (Instant::now(), 0u64, 0u64, 0u64);
    lp.run_every(every, move |_| {
        let now = Instant::now();
        let stats = server.stats();
        let (msgs, bytes_in, bytes_out) = (
            messages.load(Ordering::Relaxed),
            stats.bytes_in(),
            stats.bytes_out(),
        );
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
