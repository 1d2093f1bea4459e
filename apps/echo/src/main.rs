//! `echo`: the duo echo server, and the target of `cargo xtask bench`.
//!
//! ```text
//! echo [serve] [--listen ADDR] [--io-threads N] [--accept main|shared|reuseport]
//!      [--trigger edge|level]
//!      [--idle-timeout SECS] [--max-conns N] [--framed] [--stats-interval SECS]
//! ```
//!
//! - `--listen ADDR` (default `127.0.0.1:7000`; port 0 picks a free port). When the server
//!   is ready it prints one line to stdout, `listening on HOST:PORT`, with the real port.
//! - `--io-threads N`: I/O threads (sub reactors); default the number of cores, 0 serves
//!   everything on the main thread (single reactor).
//! - `--accept main|shared|reuseport`: who accepts (default `shared`: every I/O thread on
//!   the one listening socket, so a connection never changes threads; `main`: the main
//!   loop, handing connections round robin to the I/O threads; `reuseport`: every I/O
//!   thread on a `SO_REUSEPORT` socket of its own). See `duo_net::AcceptMode`.
//! - `--trigger edge|level`: how connections are polled (default `edge`).
//! - `--idle-timeout SECS`: close connections that send nothing for that long.
//! - `--max-conns N`: beyond `N` open connections, new ones are accepted and closed.
//! - `--framed`: the packet protocol of [`echo::framed`] (8-byte header: type and length,
//!   `u32` big-endian). Type 1 (DATA_SEND) is answered with type 2 (DATA_ECHO) and the same
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

use std::net::{SocketAddr, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use duo_net::AcceptMode;
use echo::ServeConfig;

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
    /// Who accepts connections: the main loop (handing them round robin to the I/O
    /// threads), every I/O thread on the one listening socket (`EPOLLEXCLUSIVE`), or every
    /// I/O thread on a listening socket of its own (`SO_REUSEPORT`).
    #[arg(long, value_enum, default_value_t = Accept::Shared)]
    accept: Accept,
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

/// Who accepts connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Accept {
    /// The main loop accepts and hands each connection to an I/O thread, round robin.
    Main,
    /// Every I/O thread accepts on the one listening socket (`EPOLLEXCLUSIVE`).
    Shared,
    /// Every I/O thread accepts on its own `SO_REUSEPORT` listening socket.
    Reuseport,
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
    match echo::serve(&config(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The server's settings from the command line.
fn config(args: &ServeArgs) -> ServeConfig {
    ServeConfig {
        listen: args.listen,
        io_threads: args
            .io_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get)),
        edge_triggered: args.trigger == Trigger::Edge,
        accept: match args.accept {
            Accept::Main => AcceptMode::MainLoop,
            Accept::Shared => AcceptMode::Shared,
            Accept::Reuseport => AcceptMode::ReusePort,
        },
        idle_timeout: args.idle_timeout.map(Duration::from_secs),
        max_conns: args.max_conns,
        framed: args.framed,
        stats_interval: args.stats_interval.map(Duration::from_secs),
    }
}
