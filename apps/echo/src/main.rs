//! `echo`: the duo echo server, and the target of `cargo xtask bench`.
//!
//! ```text
//! echo [serve] [--listen ADDR] [--io-threads N] [--trigger edge|level]
//!      [--idle-timeout SECS] [--max-conns N] [--framed] [--stats-interval SECS]
//! ```
//!
//! - `--listen ADDR` (default `127.0.0.1:7000`; port 0 picks a free port). When the server
//!   is ready it prints one line to stdout, `listening on HOST:PORT`, with the real port.
//! - `--io-threads N`: I/O threads (sub reactors); default the number of cores, 0 serves
//!   everything on the main thread (single reactor).
//! - `--trigger edge|level`: how connections are polled (default `edge`).
//! - `--idle-timeout SECS`: close connections that send nothing for that long.
//! - `--max-conns N`: beyond `N` open connections, new ones are accepted and closed.
//! - `--framed`: the packet protocol of [`framed`] (8-byte header: type and length, `u32`
//!   big-endian). Type 1 (DATA_SEND) is answered with type 2 (DATA_ECHO) and the same
//!   payload; any other type, or a payload over 1 MiB, closes the connection. Without it,
//!   every byte received is sent back as is.
//! - `--stats-interval SECS`: log connections, messages/s and MiB/s every `SECS`.
//!
//! Logs go to stderr (`RUST_LOG`, default `info`). SIGINT or SIGTERM stops the server
//! gracefully: it stops accepting, half-closes every connection once its pending output is
//! written, force-closes what is still open after 4 s, and exits with status 0. A second
//! signal quits at once. Usage errors exit with status 2, runtime errors (the address is
//! in use, say) with status 1.
//!
//! Try it with `cargo run --release -p echo -- --listen 127.0.0.1:7000`, then
//! `nc 127.0.0.1 7000`.
#![forbid(unsafe_code)]

mod framed;

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use duo_net::{ConnCtx, InputBuffer, ServerHandle, TcpServer};
use duo_reactor::{EventLoop, Signal};

/// How long a graceful shutdown waits for connections to close before forcing them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// The signals that stop the server.
const STOP_SIGNALS: [Signal; 2] = [Signal::INT, Signal::TERM];

/// The echo server of duo (raw bytes, or the packet protocol with `--framed`).
#[derive(Debug, Parser)]
#[command(name = "echo", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the echo server (the default).
    Serve(ServeArgs),
}

/// Options of `echo serve`.
#[derive(Debug, Clone, Args)]
struct ServeArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7000", value_parser = parse_addr)]
    listen: SocketAddr,
    /// I/O threads (sub reactors); 0 serves every connection on the main thread.
    /// [default: number of cores]
    #[arg(long, value_name = "N")]
    io_threads: Option<usize>,
    /// Edge- or level-triggered polling of connections.
    #[arg(long, value_enum, default_value_t = Trigger::Edge)]
    trigger: Trigger,
    /// Close connections that send nothing for SECS seconds (0: never).
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<u64>,
    /// Accept at most N connections at a time; further ones are closed at once.
    #[arg(long, value_name = "N")]
    max_conns: Option<usize>,
    /// Packet mode: 8-byte header (type, length; u32 big-endian) + payload; type 1 is
    /// answered with type 2 and the same payload.
    #[arg(long)]
    framed: bool,
    /// Log connections, messages/s and MiB/s every SECS seconds.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    stats_interval: Option<u64>,
}

/// How connections are polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Trigger {
    /// Edge-triggered: read and write until `EAGAIN`.
    Edge,
    /// Level-triggered: one read per readiness event.
    Level,
}

/// Parses `HOST:PORT`, resolving a host name (`localhost:7000`) to its first address.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    s.to_socket_addrs()
        .map_err(|e| format!("`{s}` is not a HOST:PORT address: {e}"))?
        .next()
        .ok_or_else(|| format!("`{s}` resolves to no address"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match serve(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the server until a stop signal has been handled.
fn serve(args: &ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    // Before any thread starts: threads inherit this mask, so a stop signal can only be
    // taken from the signalfd of the main loop, never by the default action elsewhere.
    duo_sys::block_signals(&STOP_SIGNALS)?;
    duo_sys::ignore_sigpipe()?;
    // A server holds a descriptor per connection: take what the hard limit allows.
    match duo_sys::raise_fd_limit() {
        Ok(n) => log::debug!("open-file limit: {n}"),
        Err(e) => log::warn!("cannot raise the open-file limit: {e}"),
    }

    let mut main_loop = EventLoop::new()?;
    let io_threads = args
        .io_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get));
    let messages = Arc::new(AtomicU64::new(0));
    let mut builder = TcpServer::builder("echo", args.listen)
        .io_threads(io_threads)
        .edge_triggered(args.trigger == Trigger::Edge);
    if let Some(secs) = args.idle_timeout {
        builder = builder.idle_timeout(Duration::from_secs(secs));
    }
    if let Some(n) = args.max_conns {
        builder = builder.max_connections(n);
    }
    // Count messages only when someone reads the count: an atomic shared by every I/O
    // thread costs a contended cache line per message.
    let counter = args.stats_interval.map(|_| messages.clone());
    builder = if args.framed {
        builder.on_message(move |ctx, input| on_packets(ctx, input, counter.as_deref()))
    } else {
        builder.on_message(move |ctx, input| on_bytes(ctx, input, counter.as_deref()))
    };
    let server = builder.start(&mut main_loop)?;

    let handle = server.clone_handle();
    let mut stopping = false;
    main_loop.watch_signals(&STOP_SIGNALS, move |lp, sig| {
        if stopping {
            log::warn!("{sig} again: quitting now");
            lp.quit();
            return;
        }
        stopping = true;
        log::info!("{sig}: stopping (grace {SHUTDOWN_GRACE:?})");
        handle.shutdown(SHUTDOWN_GRACE, |lp| lp.quit());
    })?;
    if let Some(secs) = args.stats_interval {
        report_stats(&mut main_loop, server.clone_handle(), messages, secs);
    }

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", server.local_addr())?;
    stdout.flush()?;
    drop(stdout);

    main_loop.run()?;
    server.stop(&mut main_loop);
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

/// Logs one line of statistics every `secs` seconds, from the server's counters.
fn report_stats(lp: &mut EventLoop, server: ServerHandle, messages: Arc<AtomicU64>, secs: u64) {
    let mut last = (Instant::now(), 0u64, 0u64, 0u64);
    lp.run_every(Duration::from_secs(secs), move |_| {
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
