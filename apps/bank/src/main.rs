//! `bank`: duo's online-bank demo, a line-protocol service on `duo-net`.
//!
//! - `bank serve`: a line-protocol server (see `docs/bank-protocol.md`) on a `duo_net`
//!   `TcpServer`, with accounts in an embedded SQLite database or on a PostgreSQL server,
//!   password hashes (argon2),
//!   database work on a worker pool, replies in request order, group commit, heartbeat and
//!   idle eviction, graceful shutdown on SIGINT/SIGTERM.
//! - `bank serve --processes N`: a supervisor (`duo_supervisor`) binds `--listen` once and
//!   runs `N` worker processes (this binary again), each a whole bank server accepting on
//!   that socket; more than one only on PostgreSQL (SQLite has one writer process). It
//!   prints the `listening on` line once the workers are ready. SIGINT/SIGTERM drains every
//!   worker and exits 0; SIGHUP reloads (new workers from the binary on disk, then the old
//!   ones drain); SIGUSR2 upgrades (the supervisor executes its binary again, same PID,
//!   then reloads); a worker that dies is restarted.
//! - Socket activation: started with `LISTEN_FDS`/`LISTEN_PID` (systemd,
//!   `systemd-socket-activate`), `bank serve` (with or without `--processes`) serves on the
//!   inherited socket instead of binding `--listen`; exactly one socket is expected.
//! - `bank serve --metrics ADDR`: serves `GET /metrics` (duo's loop and server figures and
//!   the bank's own: writes by kind and outcome, batch sizes, commit latency, failed
//!   logins, database errors; see `docs/observability.md`), `/healthz` and `/debug/loops`
//!   on `ADDR`, and prints `metrics on HOST:PORT` after the `listening on` line. With
//!   `--processes` the supervisor serves `ADDR`, gathering every worker's figures at each
//!   request, each sample labelled `process`, `pid` and `generation`.
//! - `bank serve --tls-cert PEM --tls-key PEM`: serves TLS (rustls) with that certificate
//!   chain and key (both or neither; a file that cannot be used is a usage error); every
//!   worker process loads them itself.
//! - `bank client`: a blocking client, one-shot or interactive; `--tls [--ca PEM]` speaks
//!   TLS, verifying the server against the CA certificates of `--ca` (default: the
//!   system's bundle) as the host name of `--connect`.
//! - `bank serve --listen unix:/path` (or `unix:@name`): serves on a Unix-domain socket (a
//!   dead server's socket file is replaced, a live one's refused; the file is removed at
//!   exit); not with `--processes` (a usage error). `bank client --connect unix:/path`
//!   talks to it.
//!
//! Exit status: 0 on success, 1 on a runtime error (the message says why), 2 on a usage
//! error (a bad flag, `--processes 0`, `--processes` or `--db-writers` above 1 on SQLite,
//! `--no-early-release` or `--db-timeout` on SQLite,
//! more processes than the descriptor budget allows, an inherited socket that is not one
//! listening TCP socket, a `--connect` value that is no address, a `--ca` or
//! `--tls-cert` file that cannot be used).
#![forbid(unsafe_code)]

use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use duo_net::process::say;
use duo_net::Endpoint;
use duo_supervisor::{Inherited, SupervisorError, Worker};

use bank::server::{self, ServeConfig, ServeError};
use bank::{client, supervise, Database, HashCost};

/// Exit status of a usage error.
const USAGE: u8 = 2;

/// `--db-timeout` when not given, in seconds.
const DEFAULT_DB_TIMEOUT: u64 = 30;

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
    /// Address to listen on: HOST:PORT (port 0 picks a free port; the chosen address is
    /// printed), unix:/path or unix:@name (a Unix-domain socket).
    #[arg(long, default_value = "127.0.0.1:7100", value_parser = parse_listen)]
    listen: Endpoint,
    /// The database: an SQLite file (`bank.db`, `sqlite:PATH`; created with its schema if
    /// absent) or a PostgreSQL server (`postgres://USER@HOST:PORT/DB`, also
    /// `postgresql:///DB?host=/socket/dir`; the schema is created or checked at start; a
    /// password the URL does not hold is taken from `PGPASSWORD`, which keeps it out of `ps`).
    #[arg(long, default_value = "bank.db", value_parser = DatabaseArg)]
    db: Database,
    /// Batches that may commit at once on PostgreSQL with group commit (without it, every
    /// worker commits its own). More than one helps only when concurrent batches touch
    /// different accounts: batches that share one wait for each other's commit. 1 to 64.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    db_writers: u16,
    /// I/O threads (sub reactors); 0 serves every connection on the main thread; at most
    /// 256.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=256))]
    io_threads: u16,
    /// Serve the connections on M loops shared by the I/O threads instead of one loop per
    /// thread: a ready loop whose thread is busy or off its core is run by another, so a
    /// thread that loses its core holds up only the loop it was running (a lower tail on a
    /// busy host; see docs/scaling.md). Needs I/O threads; 0: one loop per thread.
    #[arg(long, value_name = "M", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=4096))]
    loops: u16,
    /// With --loops: `owned` (each loop has an owner thread; another runs its turns when
    /// the owner makes no progress) or `any` (any free thread runs any ready loop: the
    /// lowest tail, more CPU per request; see docs/scaling.md).
    #[arg(long, value_name = "owned|any", default_value_t, requires = "loops")]
    loop_sharing: duo_net::LoopSharing,
    /// Worker threads for database work and password hashing [default: number of CPUs, at least 2].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// Close connections silent for this many seconds (0: never).
    // A negative number is taken as the value, so that it is refused as one (naming
    // the option), not as an unknown argument.
    #[arg(long, default_value_t = 60, allow_negative_numbers = true)]
    idle_timeout: u64,
    /// Jobs the worker queue holds (1 to 16777216); beyond it commands are answered
    /// `ERR BUSY`.
    #[arg(long, default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=duo_net::ThreadPool::MAX_CAPACITY as i64))]
    queue_capacity: u32,
    /// Commit every write in its own transaction (one fsync each) instead of batching the
    /// writes that arrive together into shared commits.
    #[arg(long)]
    no_group_commit: bool,
    /// On PostgreSQL, let every commit hold its row locks until it is on disk. By default
    /// a batch's locks go as soon as it commits and its replies wait for a flush barrier
    /// (an OK still means on disk); use this behind a transaction-pooling proxy, which
    /// breaks the session the barrier relies on. A usage error on SQLite.
    #[arg(long)]
    no_early_release: bool,
    /// On PostgreSQL, how long one database call (a batch of writes, a read, a flush
    /// barrier) may wait for the server before its connection is dropped and its commands
    /// are answered `ERR UNAVAILABLE` (a server or a path to it that stalled without
    /// closing); 0: no limit. Connecting is bounded by the URL's connect_timeout (5 s)
    /// for each host and address, start-up included; then the next host is tried.
    /// Another value than the default is a usage error on SQLite.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = DEFAULT_DB_TIMEOUT,
        allow_negative_numbers = true
    )]
    db_timeout: u64,
    /// Run N worker processes, each a whole server, under a supervisor that owns the
    /// listening socket; more than 1 needs PostgreSQL.
    #[arg(long, value_name = "N")]
    processes: Option<usize>,
    /// Serve /metrics (Prometheus), /healthz and /debug/loops on ADDR (port 0: any free
    /// port, printed as `metrics on HOST:PORT`).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    metrics: Option<SocketAddr>,
    /// Log (and count) a callback that holds a loop longer than MS milliseconds; 0: off.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 25,
        allow_negative_numbers = true
    )]
    stall_ms: u64,
    /// Serve TLS with the certificate chain in this PEM file (with --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Cost of new password hashes; `low` is for tests only.
    #[arg(long, value_enum, default_value = "default", hide = true)]
    hash_cost: HashCost,
}

#[derive(Debug, Args)]
struct ClientArgs {
    /// Server address: HOST:PORT, unix:/path or unix:@name.
    #[arg(long, default_value = "127.0.0.1:7100", value_parser = parse_connect)]
    connect: String,
    /// Speak TLS, verifying the server's certificate as the host of --connect.
    #[arg(long)]
    tls: bool,
    /// CA certificates (PEM) to verify the server with [default: the system's bundle].
    #[arg(long, value_name = "PEM", requires = "tls")]
    ca: Option<std::path::PathBuf>,
    /// A command and its arguments (a lone `;` separates several); none for an
    /// interactive session.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// `unix:/path`, `unix:@name`, or `HOST:PORT` (a host name resolved to its first
/// address; an IPv6 address in brackets): [`Endpoint::resolve`].
fn parse_listen(s: &str) -> Result<Endpoint, String> {
    Endpoint::resolve(s).map_err(|e| e.to_string())
}

/// `HOST:PORT`, a host name resolved to its first address: [`duo_net::resolve_inet`].
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    duo_net::resolve_inet(s).map_err(|e| e.to_string())
}

/// `--connect`: `unix:/path`, `unix:@name`, or `HOST:PORT` with a port number (an IPv6
/// address in brackets), checked but not resolved: a value of another form is a usage
/// error, a host name that does not resolve the connection's failure.
fn parse_connect(s: &str) -> Result<String, String> {
    if s.starts_with("unix:") {
        return Endpoint::parse_address(s)
            .map(|_| s.to_owned())
            .map_err(|e| e.to_string());
    }
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(s.to_owned());
    }
    if s.matches(':').count() > 1 && !s.starts_with('[') {
        return Err(format!(
            "{s}: an IPv6 address goes in brackets before its port, as [::1]:7100"
        ));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(s.to_owned()),
        _ => Err(format!(
            "{s}: expected HOST:PORT (a port number 0-65535), unix:/path or unix:@name"
        )),
    }
}

/// Parses `--db` with [`Database::parse`]. Its own parser, not a function: clap puts the
/// value as given in a function's error (`invalid value 'postgres://u:PASSWORD@...'`),
/// where [`Database::parse`]'s message already holds it without the password.
#[derive(Debug, Clone, Copy)]
struct DatabaseArg;

impl clap::builder::TypedValueParser for DatabaseArg {
    type Value = Database;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Database, clap::Error> {
        let refuse = |why: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for '--db <DB>': {why}\n"),
            )
            .with_cmd(cmd)
        };
        let s = value
            .to_str()
            .ok_or_else(|| refuse("not UTF-8".to_owned()))?;
        Database::parse(s).map_err(refuse)
    }
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
}

fn main() -> ExitCode {
    // What the parent handed over comes first, before any thread could read the
    // environment: the worker protocol of a supervisor, or systemd's socket activation.
    let Inherited {
        worker,
        listener: inherited,
    } = match duo_supervisor::inherit_at_start("bank", duo_sys::listen_fds) {
        Ok(i) => i,
        Err(e) => return fail(USAGE, &e),
    };
    let cli = Cli::parse(); // usage errors exit with status 2
    match cli.command {
        Cmd::Serve(a) => {
            // Refused only now, to serve: `--help` and `client` work under any environment.
            let inherited = match inherited {
                Ok(inherited) => inherited,
                Err(e) => return fail(USAGE, &e),
            };
            init_logging();
            // A peer that makes a callback panic gets rate-limited log lines, not a
            // stderr dump (with a backtrace under RUST_BACKTRACE) per event.
            duo_net::process::install_panic_hook();
            serve(a, worker, inherited)
        }
        Cmd::Client(a) => {
            if std::env::var_os("RUST_LOG").is_some() {
                init_logging();
            }
            let tls = client::ClientTls {
                enabled: a.tls,
                ca: a.ca,
            };
            match client::run(&a.connect, &tls, &a.command) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e @ (client::ClientError::Usage(_) | client::ClientError::Ca(_))) => {
                    fail(USAGE, &format!("bank: {e}"))
                }
                Err(e) => {
                    say(format!("bank: error: {e}"));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `bank serve`: as a worker of a supervisor, as a supervisor (`--processes`), or alone;
/// on an inherited socket or on `--listen`.
fn serve(a: ServeArgs, worker: Option<Worker>, inherited: Option<TcpListener>) -> ExitCode {
    let processes = a.processes;
    let cfg = config(a);
    if let Some((cert, key)) = &cfg.tls {
        // Checked once here: a bad file is one clear usage error, not one per worker.
        if let Err(e) = duo_net::tls::server_config_from_pem(cert, key) {
            return fail(USAGE, &format!("bank: {e}"));
        }
    }
    if cfg.loops > 0 && cfg.io_threads == 0 {
        return fail(
            USAGE,
            "bank: --loops needs I/O threads to run on (--io-threads is 0)",
        );
    }
    if let Some(worker) = worker {
        return report(server::serve_worker(cfg, worker));
    }
    if let Some(n) = processes {
        if cfg.listen.is_unix() {
            return fail(
                USAGE,
                "bank: --processes needs a TCP --listen address (the supervisor hands TCP \
                 listeners to its workers); serve a unix: address from one process",
            );
        }
        if let Err(why) = supervise::check_processes(n, &cfg.db) {
            return fail(USAGE, &format!("bank: {why}"));
        }
    }
    if cfg.db_writers > 1 && !cfg.db.allows_several_front_ends() {
        return fail(
            USAGE,
            &format!(
                "bank: --db-writers {} needs PostgreSQL: SQLite ({}) has one writer \
                 connection; leave out --db-writers",
                cfg.db_writers, cfg.db
            ),
        );
    }
    if let Some(why) = postgres_only(&cfg) {
        return fail(USAGE, &format!("bank: {why}"));
    }
    match (processes, inherited) {
        (None, None) => report(server::serve(cfg)),
        (None, Some(listener)) => report(server::serve_on(cfg, listener)),
        (Some(n), inherited) => run_supervisor(&cfg, n, inherited),
    }
}

/// An option only PostgreSQL uses, given with an SQLite database (where it would do
/// nothing, silently): why that is refused.
fn postgres_only(cfg: &ServeConfig) -> Option<String> {
    if cfg.db.allows_several_front_ends() {
        return None;
    }
    let db = &cfg.db;
    if !cfg.early_release {
        return Some(format!(
            "--no-early-release needs PostgreSQL: SQLite ({db}) holds no row locks to \
             release early; leave it out"
        ));
    }
    if cfg.db_timeout != Some(Duration::from_secs(DEFAULT_DB_TIMEOUT)) {
        return Some(format!(
            "--db-timeout needs PostgreSQL: SQLite ({db}) is a file of this process, with \
             no server to wait for; leave it out"
        ));
    }
    None
}

/// `serve --processes N`: binds (unless a socket was inherited) and supervises.
fn run_supervisor(cfg: &ServeConfig, n: usize, inherited: Option<TcpListener>) -> ExitCode {
    let Some(listen) = cfg.listen.as_inet() else {
        return fail(USAGE, "bank: --processes needs a TCP --listen address");
    };
    let (listener, addr) = match duo_supervisor::inherited_or_bound(inherited, listen) {
        Ok(bound) => bound,
        Err(e) => return fail(1, &format!("bank: error: {e}")),
    };
    log::info!(
        "bank supervisor: {n} worker processes on {addr}, database {}",
        cfg.db
    );
    match supervise::supervisor(n, listener).and_then(|s| supervise::run(s, addr, cfg.metrics)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ SupervisorError::Config(_)) => fail(USAGE, &format!("bank: {e}")),
        Err(e) => fail(1, &format!("bank: error: {e}")),
    }
}

/// The server's settings from the command line.
fn config(a: ServeArgs) -> ServeConfig {
    let workers = a.workers.map_or_else(
        || std::thread::available_parallelism().map_or(2, |n| n.get().max(2)),
        usize::from,
    );
    ServeConfig {
        listen: a.listen,
        db: a.db,
        db_writers: a.db_writers.into(),
        io_threads: a.io_threads.into(),
        loops: a.loops.into(),
        loop_sharing: a.loop_sharing,
        workers,
        queue_capacity: a.queue_capacity as usize,
        idle_timeout: Duration::from_secs(a.idle_timeout),
        group_commit: !a.no_group_commit,
        early_release: !a.no_early_release,
        db_timeout: (a.db_timeout > 0).then(|| Duration::from_secs(a.db_timeout)),
        hash_cost: a.hash_cost,
        metrics: a.metrics,
        stall_threshold: (a.stall_ms > 0).then(|| Duration::from_millis(a.stall_ms)),
        tls: a.tls_cert.zip(a.tls_key),
    }
}

/// Exit 0, or log and print the error and exit 1.
fn report(result: Result<(), ServeError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            fail(1, &format!("bank: error: {e}"))
        }
    }
}

/// Prints `message` to stderr and exits with `status`.
fn fail(status: u8, message: &str) -> ExitCode {
    say(message);
    ExitCode::from(status)
}
