//! `bank`: duo's online-bank demo, a line-protocol service on `duo-net`.
//!
//! - `bank serve`: a line-protocol server (see `docs/bank-protocol.md`) on a `duo_net`
//!   `TcpServer`, with accounts in an embedded SQLite database or on a PostgreSQL server,
//!   password hashes (argon2),
//!   database work on a worker pool, replies in request order, group commit, heartbeat and
//!   idle eviction, graceful shutdown on SIGINT/SIGTERM.
//! - `bank client`: a blocking client, one-shot or interactive.
//!
//! Exit status: 0 on success, 1 on a runtime error (the message says why), 2 on a usage
//! error.
#![forbid(unsafe_code)]

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use bank::server::{self, ServeConfig};
use bank::{client, Database, HashCost};

/// An online bank over a line protocol, on the duo reactor library.
#[derive(Debug, Parser)]
#[command(name = "bank", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the server until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Send commands to a server: the given one, or lines read from standard input.
    Client(ClientArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:7100", value_parser = parse_addr)]
    listen: SocketAddr,
    /// The database: an SQLite file (`bank.db`, `sqlite:PATH`; created with its schema if
    /// absent) or a PostgreSQL server (`postgres://USER@HOST:PORT/DB`, also
    /// `postgresql:///DB?host=/socket/dir`; the schema is created or checked at start).
    #[arg(long, default_value = "bank.db", value_parser = Database::parse)]
    db: Database,
    /// Transactions that may commit at once on PostgreSQL (with group commit; without it,
    /// every worker commits its own).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    db_writers: u16,
    /// I/O threads (sub reactors); 0 serves every connection on the main thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=256))]
    io_threads: u16,
    /// Worker threads for database work and password hashing [default: number of CPUs].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// Close connections silent for this many seconds (0: never).
    #[arg(long, default_value_t = 60)]
    idle_timeout: u64,
    /// Jobs the worker queue holds; beyond it commands are answered `ERR BUSY`.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    queue_capacity: u32,
    /// Commit every write in its own transaction (one fsync each) instead of batching the
    /// writes that arrive together into shared commits.
    #[arg(long)]
    no_group_commit: bool,
    /// Cost of new password hashes; `low` is for tests only.
    #[arg(long, value_enum, default_value = "default", hide = true)]
    hash_cost: HashCost,
}

#[derive(Debug, Args)]
struct ClientArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7100")]
    connect: String,
    /// A command and its arguments (a lone `;` separates several); none for an
    /// interactive session.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("{s}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s}: resolves to no address"))
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // usage errors exit with status 2
    match cli.command {
        Cmd::Serve(a) => {
            init_logging();
            let workers = a.workers.map_or_else(
                || std::thread::available_parallelism().map_or(2, |n| n.get().max(2)),
                usize::from,
            );
            let cfg = ServeConfig {
                listen: a.listen,
                db: a.db,
                db_writers: a.db_writers.into(),
                io_threads: a.io_threads.into(),
                workers,
                queue_capacity: a.queue_capacity as usize,
                idle_timeout: Duration::from_secs(a.idle_timeout),
                group_commit: !a.no_group_commit,
                hash_cost: a.hash_cost,
            };
            match server::serve(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e}");
                    eprintln!("bank: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Client(a) => {
            if std::env::var_os("RUST_LOG").is_some() {
                init_logging();
            }
            match client::run(&a.connect, &a.command) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("bank: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
