//! `echo`: the duo echo server, and the target of `cargo xtask bench`.
//!
//! ```text
//! echo [serve] [--listen ADDR] [--io-threads N] [--loops M] [--loop-sharing owned|any]
//!      [--accept main|shared|reuseport] [--no-accept-balance] [--trigger edge|level]
//!      [--idle-timeout SECS] [--max-conns N] [--framed] [--stats-interval SECS]
//!      [--drain-timeout SECS] [--processes N] [--metrics ADDR] [--stall-ms MS]
//!      [--busy-poll-us US] [--defer-accept SECS]
//!      [--udp [--udp-batch N]]
//!      [--tls-cert PEM --tls-key PEM]
//! echo reload --pid PID [--upgrade]
//! ```
//!
//! - `--listen ADDR` (default `127.0.0.1:7000`; port 0 picks a free port). When the server
//!   is ready it prints one line to stdout, `listening on HOST:PORT`, with the real port.
//!   `unix:/path` listens on a Unix-domain socket file (a dead server's file is replaced,
//!   a live server's or anything that is not a socket is refused; the file is removed at
//!   exit) and `unix:@name` on an abstract Unix-domain name; the line then reads
//!   `listening on unix:/path` (or `unix:@name`). Not with `--processes` (the supervisor
//!   hands TCP listeners to its workers; a usage error), and `--accept reuseport` falls
//!   back to `shared` there.
//! - `--io-threads N`: I/O threads (sub reactors); default the number of cores, 0 serves
//!   everything on the main thread (single reactor); at most 4096 (a usage error beyond).
//! - `--loops M`: serve the connections on `M` loops shared by the I/O threads instead of
//!   one loop per thread (`ServerBuilder::loops`): a ready loop whose thread is busy or
//!   off its core is run by another I/O thread, so a thread that loses its core holds
//!   up one loop's connections, not its whole share. Needs `--io-threads` of at least 1
//!   (a usage error otherwise); `M` at most the number of I/O threads (or 0) changes
//!   nothing; at most 4096.
//! - `--loop-sharing owned|any` (with `--loops`): `owned` (default) gives each loop an
//!   owner thread and lets another run its turns only when the owner has made no
//!   progress for 200 µs (a loop per thread's CPU cost); `any` lets any free thread run
//!   any ready loop (the lowest tail, more CPU per request). See `duo_net::LoopSharing`.
//! - `--accept main|shared|reuseport`: who accepts (default `shared`: every I/O thread on
//!   the one listening socket, handing a connection to the least loaded thread only
//!   when its own holds clearly more, unless `--no-accept-balance`; `main`: the main
//!   loop, handing connections round robin to the I/O threads; `reuseport`: every I/O
//!   thread on a `SO_REUSEPORT` socket of its own). See `duo_net::AcceptMode`.
//! - `--trigger edge|level`: how connections are polled (default `edge`).
//! - `--idle-timeout SECS`: close connections that send nothing for that long.
//! - `--max-conns N` (at least 1): beyond `N` open connections, new ones are accepted and
//!   closed. With `--processes`, `N` is per worker, and a worker at its maximum (by default: its
//!   open-file limit less a reserve) stops accepting instead, leaving new connections to
//!   the other workers.
//! - `--framed`: the packet protocol of [`echo::framed`] (8-byte header: type and length,
//!   `u32` big-endian). Type 1 (DATA_SEND) is answered with type 2 (DATA_ECHO) and the same
//!   payload; any other type, or a payload over 1 MiB, closes the connection. Without it,
//!   every byte received is sent back as is.
//! - `--stats-interval SECS` (1 to 86400): log connections, messages/s and MiB/s every
//!   `SECS` (with `--processes`, the supervisor logs one line summed over its workers;
//!   with `--udp`, each datagram echoed counts as a message, and its bytes with the rest).
//! - `--metrics ADDR`: serve `GET /metrics` (Prometheus/OpenMetrics text: every loop's
//!   health, the server's connections and traffic, the buffer pool; see
//!   `docs/observability.md`), `GET /healthz` and `GET /debug/loops` on `ADDR`, from a
//!   thread of its own. Port 0 picks a free port: the real address is printed on stdout
//!   as `metrics on HOST:PORT`, right after the `listening on` line. With `--processes`
//!   the supervisor serves `ADDR` and gathers every worker's figures at each request
//!   (each worker serves its own on a loopback port it publishes to the supervisor); every
//!   sample is labelled `process`, `pid` and `generation` (see `docs/observability.md`).
//! - `--stall-ms MS` (default 25; 0 switches it off): a callback that holds a loop longer
//!   than this is logged as a stall (rate-limited) and counted in `duo_loop_stalls_total`.
//! - `--busy-poll-us US` (default 0: off): after an iteration that found work, each loop
//!   polls again without blocking for up to US microseconds before it sleeps
//!   (`ServerBuilder::busy_poll`): fewer sleeps and wake-ups under steady load, for tail
//!   latency, at the price of CPU.
//! - `--defer-accept SECS` (default 0: off; at most 3600): TCP connections are accepted
//!   only once the client has sent its first bytes, or after about SECS seconds of silence
//!   (`TCP_DEFER_ACCEPT`, `ServerBuilder::defer_accept`): one wake-up per connection
//!   instead of two, about 10 % less server CPU per short-lived connection here. Ignored
//!   on a Unix-domain socket.
//! - `--udp`: also echo UDP datagrams on the same address and port number as the TCP
//!   listener (with port 0, a port free for both protocols is chosen; one
//!   `duo_net::UdpSocket` on the main loop: `recvmmsg`/`sendmmsg` batches
//!   of 32, datagrams up to 2 KiB; larger ones are counted as truncated and not echoed).
//!   Printed on stdout as `udp on HOST:PORT`, after the `listening on` (and `metrics on`)
//!   line. With `--processes`, every worker binds a UDP socket of its own on that
//!   address with `SO_REUSEPORT` (the kernel spreads datagrams over them by source), and
//!   the supervisor prints the `udp on` line (a worker that cannot bind it, because a
//!   socket without `SO_REUSEPORT` holds the port, fails and is restarted with back-off).
//!   Under socket activation the UDP socket is bound beside the inherited TCP one. With
//!   `--metrics`, its figures are on the page (`duo_udp_*`, `socket="echo-udp"`).
//!   `--udp-batch N` (default 32): datagrams per `recvmmsg`/`sendmmsg`; 1 receives with
//!   one `recvfrom` per datagram (the benchmark's comparison). Datagrams are plaintext, so
//!   `--udp` and `--tls-cert` together are a usage error (there is no DTLS).
//! - `--tls-cert PEM --tls-key PEM`: serve TLS (rustls; TLS 1.3 and 1.2) with the
//!   certificate chain and private key in these PEM files (both or neither). The echo is
//!   of the plaintext. With `--processes`, every worker loads the files itself. A file
//!   that cannot be read or holds no certificate (key) is a usage error; a certificate
//!   that has expired or is not valid yet is served, with a warning naming the file and
//!   its dates.
//! - `--drain-timeout SECS` (default 4, at most 86400): how long a graceful stop waits for
//!   connections to finish before it closes them.
//! - `--processes N`: a supervisor process binds `--listen` once and runs `N` worker
//!   processes (this binary again; they find out from their environment, the worker
//!   protocol of `duo_supervisor`) that all accept on that socket. It prints the
//!   `listening on` line once the workers are ready; the workers print nothing on stdout.
//!   A worker that dies is restarted (with a growing delay if it keeps dying young).
//!   SIGHUP reloads: new workers (from the binary on disk) start, and once they are ready
//!   the old ones drain; SIGUSR2 upgrades: the supervisor executes its binary again (same
//!   PID) and then reloads. No connection is refused or reset meanwhile. Ctrl-Z (SIGTSTP
//!   to the supervisor) stops the workers and then the supervisor, as a shell's job;
//!   `fg`/`bg` (SIGCONT) continues them all. A worker sent SIGHUP or SIGUSR2 itself (as
//!   `pkill -HUP echo` does) logs and ignores it: those are the supervisor's.
//! - Socket activation: started by systemd (or `systemd-socket-activate`) with
//!   `LISTEN_FDS`/`LISTEN_PID`, `echo serve` (with or without `--processes`) serves on the
//!   inherited socket instead of binding `--listen`; exactly one socket is expected (a
//!   usage error of `serve` only: `--help` and `reload` work all the same). A
//!   Unix-domain one (`ListenStream=/path`) is served too, by one process (not with
//!   `--processes`), and its file is left in place at exit.
//! - `echo reload --pid PID` sends SIGHUP to the echo supervisor `PID` (`--upgrade`:
//!   SIGUSR2), after checking that `PID` is one (the same binary, run with `--processes`).
//!   Its exit status says only that the signal was delivered: the supervisor may ignore
//!   it (a reload or upgrade already under way, a stop, a new binary its check refuses).
//!   With `--wait SECS` it watches the generations of the supervisor's workers (in their
//!   `/proc/PID/environ`) and exits 0 once a new generation serves alone, 1 if the
//!   reload failed, was ignored or is not done within SECS. A failure is known once the
//!   new generation's workers have all been gone for 6 s while old ones serve (a
//!   generation that took over and lost a worker gets it back after the restart
//!   back-off): with a shorter SECS a failed reload reports "not confirmed".
//!
//! Logs go to stderr (`RUST_LOG`, default `info`). SIGINT or SIGTERM stops the server
//! gracefully: it stops accepting, half-closes every connection once its pending output is
//! written, force-closes what is still open after the drain timeout, and exits with status
//! 0 (a supervisor forwards the signal to its workers and exits once they have). A second
//! signal quits at once. Usage errors (a bad flag or a value out of its range, such as
//! `--processes 0` or `--max-conns 0`, more processes than the supervisor's descriptor
//! budget allows, an inherited socket that is neither a listening TCP socket nor a
//! listening Unix-domain one, a Unix-domain one with `--processes`) exit with status 2,
//! runtime errors (the address is in use, no such supervisor to reload) with status 1.
//!
//! Try it with `cargo run --release -p echo -- --listen 127.0.0.1:7000`, then
//! `nc 127.0.0.1 7000`.
#![forbid(unsafe_code)]

use std::net::{SocketAddr, TcpListener};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use duo_net::process::say;
use duo_net::{AcceptMode, Endpoint};
use duo_supervisor::{Inherited, SupervisorError};
use duo_sys::ActivatedListener;
use echo::{supervise, ServeConfig};

mod reload_wait;

/// Exit status of a usage error.
const USAGE: u8 = 2;

/// The longest `--drain-timeout` and `--stats-interval` (one day): the timers they set
/// must stay within the clock's range.
const MAX_SECS: u64 = 86_400;

/// The most `--loops` (as `bank serve`'s): each loop holds descriptors of its own, and
/// far more than a host's threads would only cost memory (or abort on allocating it).
const MAX_LOOPS: i64 = 4096;

/// The most `--io-threads`, as many as `--loops` may have: beyond a host's cores a thread
/// only costs memory and descriptors (a mistyped 100000 used to start threads until the
/// descriptors ran out, and fail seconds later with `Too many open files`).
const MAX_IO_THREADS: i64 = MAX_LOOPS;

/// The echo server of duo (raw bytes, or the packet protocol with `--framed`).
#[derive(Debug, Parser)]
#[command(name = "echo", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

// Parsed once at start-up: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the echo server (the default).
    Serve(ServeArgs),
    /// Tell a running echo supervisor (`serve --processes N`) to reload its workers
    /// (SIGHUP), or to upgrade itself (SIGUSR2).
    Reload(ReloadArgs),
}

/// Options of `echo reload`.
#[derive(Debug, Clone, Args)]
struct ReloadArgs {
    /// The supervisor's process id.
    #[arg(long, value_name = "PID")]
    pid: u32,
    /// Re-execute the supervisor's binary (SIGUSR2) instead of only starting new workers.
    #[arg(long)]
    upgrade: bool,
    /// Wait up to SECS seconds for the outcome: exit 0 once a new generation serves alone
    /// (the old workers drained), 1 if it failed, was ignored, or is not done by then. A
    /// failure is known once the new workers have all been gone 6 s (a new generation
    /// that lost its workers is restarted after the back-off): give SECS the ready time
    /// and 6 more. Without it, the exit status says only that the signal was delivered.
    #[arg(long, value_name = "SECS")]
    wait: Option<u64>,
}

/// Options of `echo serve`.
#[derive(Debug, Clone, Args)]
struct ServeArgs {
    /// Address to listen on: HOST:PORT (port 0: any free port), unix:/path (a Unix-domain
    /// socket file) or unix:@name (an abstract Unix-domain name).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7000", value_parser = parse_listen)]
    listen: Endpoint,
    /// I/O threads (sub reactors); 0 serves every connection on the main thread; at most
    /// 4096. [default: number of cores]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=MAX_IO_THREADS))]
    io_threads: Option<u16>,
    /// Serve the connections on N loops shared by the I/O threads (a ready loop whose
    /// thread is busy or off its core is run by another): a shorter latency tail on a
    /// busy host. Default (or 0): one loop per I/O thread; at most 4096.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=MAX_LOOPS))]
    loops: Option<u16>,
    /// With --loops: `owned` (each loop has an owner thread; another runs its turns when
    /// the owner makes no progress) or `any` (any free thread runs any ready loop: the
    /// lowest tail, more CPU per request).
    #[arg(long, value_name = "owned|any", default_value_t, requires = "loops")]
    loop_sharing: duo_net::LoopSharing,
    /// Who accepts connections: the main loop (handing them round robin to the I/O
    /// threads), every I/O thread on the one listening socket (`EPOLLEXCLUSIVE`), or every
    /// I/O thread on a listening socket of its own (`SO_REUSEPORT`).
    #[arg(long, value_enum, default_value_t = Accept::Shared)]
    accept: Accept,
    /// With `--accept shared`: never hand a connection to another thread, even when the
    /// accepting thread holds clearly more connections (by default it hands it to the
    /// least loaded one; off saves about 5 % CPU per connection for short connections).
    #[arg(long)]
    no_accept_balance: bool,
    /// Edge- or level-triggered polling of connections.
    #[arg(long, value_enum, default_value_t = Trigger::Edge)]
    trigger: Trigger,
    /// Close connections that send nothing for SECS seconds (0: never).
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<u64>,
    /// Accept at most N connections at a time (at least 1); further ones are closed at
    /// once (with --processes: per worker, and a full worker leaves them to the others).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_conns: Option<u64>,
    /// Packet mode: 8-byte header (type, length; u32 big-endian) + payload; type 1 is
    /// answered with type 2 and the same payload.
    #[arg(long)]
    framed: bool,
    /// Log connections, messages/s and MiB/s every SECS seconds (1 to 86400); with --udp,
    /// datagrams count as messages.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
    stats_interval: Option<u64>,
    /// How long a graceful stop waits for connections to finish before closing them (at
    /// most 86400).
    #[arg(long, value_name = "SECS", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(0..=MAX_SECS))]
    drain_timeout: u64,
    /// Run N worker processes under a supervisor that owns the listening socket.
    #[arg(long, value_name = "N")]
    processes: Option<usize>,
    /// Serve /metrics (Prometheus), /healthz and /debug/loops on ADDR (port 0: any free
    /// port, printed as `metrics on HOST:PORT`).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    metrics: Option<SocketAddr>,
    /// Log (and count) a callback that holds a loop longer than MS milliseconds; 0: off.
    #[arg(long, value_name = "MS", default_value_t = 25)]
    stall_ms: u64,
    /// Busy polling: after an iteration that found work, a loop polls again without
    /// blocking for up to US microseconds before sleeping; 0: off.
    #[arg(long, value_name = "US", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    busy_poll_us: u64,
    /// Accept a TCP connection only once the client has sent data, or after about SECS
    /// seconds without any (TCP_DEFER_ACCEPT); 0: off.
    #[arg(long, value_name = "SECS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    defer_accept: u64,
    /// Also echo UDP datagrams on the listener's address (printed as `udp on HOST:PORT`).
    /// Plaintext: not with TLS (there is no DTLS).
    #[arg(long, conflicts_with = "tls_cert")]
    udp: bool,
    /// With --udp: datagrams per recvmmsg/sendmmsg (1: one recvfrom per datagram).
    #[arg(long, value_name = "N", default_value_t = 32, requires = "udp",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    udp_batch: u16,
    /// Serve TLS with the certificate chain in this PEM file (with --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
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

/// `unix:/path`, `unix:@name`, or `HOST:PORT` (a host name resolved to its first
/// address; an IPv6 address in brackets): [`Endpoint::resolve`].
fn parse_listen(s: &str) -> Result<Endpoint, String> {
    Endpoint::resolve(s).map_err(|e| e.to_string())
}

/// `HOST:PORT`, a host name resolved to its first address: [`duo_net::resolve_inet`].
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    duo_net::resolve_inet(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    // What the parent handed over comes first, before any thread could read the
    // environment: the worker protocol of a supervisor, or systemd's socket activation.
    let Inherited {
        worker,
        listener: inherited,
    } = match duo_supervisor::inherit_at_start("echo", duo_sys::listen_fds_any) {
        Ok(i) => i,
        Err(e) => return fail(USAGE, &e),
    };
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        Some(Command::Reload(args)) => return reload(&args),
        None => cli.serve,
    };
    // Refused only now, to serve: `--help` and `reload` work under any environment.
    let inherited = match inherited {
        Ok(inherited) => inherited,
        Err(e) => return fail(USAGE, &e),
    };
    // A peer that makes a callback panic gets rate-limited log lines, not a stderr dump
    // (with a backtrace under RUST_BACKTRACE) per event.
    duo_net::process::install_panic_hook();
    let cfg = config(&args);
    if cfg.loops > 0 && cfg.io_threads == 0 {
        return fail(
            USAGE,
            "echo: --loops needs I/O threads to run on (--io-threads is 0)",
        );
    }
    if let Some((cert, key)) = &cfg.tls {
        // Checked once here, so that a bad file is one clear error (not one per worker).
        if let Err(e) = duo_net::tls::server_config_from_pem(cert, key) {
            return fail(USAGE, &format!("echo: {e}"));
        }
    }
    if let Some(worker) = worker {
        return report(echo::serve_worker(&cfg, worker));
    }
    // A Unix-domain socket from socket activation: served by this one process.
    let inherited = match inherited {
        Some(ActivatedListener::Unix(_)) if args.processes.is_some() => {
            return fail(
                USAGE,
                "echo: --processes needs a TCP socket (the supervisor hands TCP listeners \
                 to its workers); socket activation passed a Unix-domain one",
            )
        }
        Some(ActivatedListener::Unix(_)) if args.udp => {
            return fail(
                USAGE,
                "echo: --udp needs a TCP socket (datagrams are echoed on its IP address and \
                 port); socket activation passed a Unix-domain one",
            )
        }
        Some(ActivatedListener::Unix(listener)) => {
            return report(echo::serve_on_unix(&cfg, listener))
        }
        Some(ActivatedListener::Tcp(listener)) => Some(listener),
        None => None,
    };
    if args.udp && inherited.is_none() && args.listen.is_unix() {
        return fail(
            USAGE,
            "echo: --udp needs a TCP --listen address (datagrams are echoed on its IP \
             address and port)",
        );
    }
    match args.processes {
        None => match inherited {
            Some(listener) => report(echo::serve_on(&cfg, listener)),
            None => report(echo::serve(&cfg)),
        },
        Some(0) => fail(USAGE, "echo: --processes must be at least 1"),
        Some(_) if args.listen.is_unix() => fail(
            USAGE,
            "echo: --processes needs a TCP --listen address (the supervisor hands TCP \
             listeners to its workers); serve a unix: address from one process with \
             --io-threads",
        ),
        Some(n) => run_supervisor(&cfg, n, inherited),
    }
}

/// `serve --processes N`: binds (unless a socket was inherited) and supervises.
fn run_supervisor(cfg: &ServeConfig, n: usize, inherited: Option<TcpListener>) -> ExitCode {
    let Some(mut listen) = cfg.listen.as_inet() else {
        return fail(USAGE, "echo: --processes needs a TCP --listen address");
    };
    if cfg.udp && inherited.is_none() && listen.port() == 0 {
        // Every worker binds the TCP listener's port for UDP (`SO_REUSEPORT`): choose one
        // free for both. (The probe's UDP socket closes here, so that the workers' can
        // bind; the port is taken again at once.)
        match echo::port_free_for_tcp_and_udp(listen) {
            Ok((addr, _probe)) => listen = addr,
            Err(e) => return fail(1, &format!("echo: {e}")),
        }
    }
    let (listener, addr) = match duo_supervisor::inherited_or_bound(inherited, listen) {
        Ok(bound) => bound,
        Err(e) => return fail(1, &format!("echo: {e}")),
    };
    let result = supervise::supervisor(cfg, n, listener)
        .and_then(|s| supervise::run(s, addr, cfg.metrics, cfg.udp));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ SupervisorError::Config(_)) => fail(USAGE, &format!("echo: {e}")),
        Err(e) => fail(1, &format!("echo: {e}")),
    }
}

/// `echo reload`: signals the supervisor `PID` after checking it is one.
fn reload(args: &ReloadArgs) -> ExitCode {
    let pid = args.pid;
    if let Err(why) = check_supervisor(pid) {
        return fail(1, &format!("echo reload: {why}"));
    }
    let (signal, name) = if args.upgrade {
        (duo_net::Signal::USR2, "upgrade")
    } else {
        (duo_net::Signal::HUP, "reload")
    };
    let before = reload_wait::generations(pid);
    if let Err(e) = duo_sys::signal_process(pid, signal) {
        return fail(1, &format!("echo reload: {e}"));
    }
    let Some(secs) = args.wait else {
        say(format!(
            "echo reload: sent {signal} ({name}) to {pid}; whether it acts on it is in its log \
             (--wait SECS to wait for the outcome)"
        ));
        return ExitCode::SUCCESS;
    };
    say(format!(
        "echo reload: sent {signal} ({name}) to {pid}; waiting up to {secs}s"
    ));
    let limit = Duration::from_secs(secs);
    let outcome = reload_wait::watch(pid, &before, limit);
    match reload_wait::describe(&outcome, pid, limit) {
        (line, true) => {
            say(line);
            ExitCode::SUCCESS
        }
        (line, false) => fail(1, &line),
    }
}

/// Whether `pid` runs this same binary with `--processes` (an echo supervisor), and is
/// not one of its workers (which run with the same command line).
fn check_supervisor(pid: u32) -> Result<(), String> {
    is_echo_with_processes(pid)?;
    if let Some(parent) = parent_of(pid) {
        if is_echo_with_processes(parent).is_ok() {
            return Err(format!(
                "process {pid} is a worker of the echo supervisor {parent}; reload that one"
            ));
        }
    }
    Ok(())
}

/// The parent of `pid`, from `/proc/PID/stat` ("pid (comm) state ppid ...").
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `Ok` if `pid` runs this same binary with `--processes`; else why not.
fn is_echo_with_processes(pid: u32) -> Result<(), String> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let exe = std::fs::read_link(proc_dir.join("exe"))
        .map_err(|e| format!("no process {pid} that we may inspect ({e})"))?;
    let me = std::env::current_exe().map_err(|e| format!("the echo binary: {e}"))?;
    if !same_binary(&exe, &me) {
        return Err(format!(
            "process {pid} runs {}, not this echo ({})",
            exe.display(),
            me.display()
        ));
    }
    let cmdline = std::fs::read(proc_dir.join("cmdline"))
        .map_err(|e| format!("reading the command line of {pid}: {e}"))?;
    let supervises = cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == b"--processes" || arg.starts_with(b"--processes="));
    if !supervises {
        return Err(format!(
            "process {pid} is an echo server without --processes, not a supervisor"
        ));
    }
    Ok(())
}

/// Whether two `/proc/PID/exe` targets are the same file path; a binary replaced on disk
/// since the process started reads `PATH (deleted)`.
fn same_binary(a: &Path, b: &Path) -> bool {
    let strip = |p: &Path| {
        let s = p.to_string_lossy();
        s.strip_suffix(" (deleted)").unwrap_or(&s).to_owned()
    };
    strip(a) == strip(b)
}

/// Exit 0, or print the error and exit 1.
fn report(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &format!("echo: {e}")),
    }
}

/// Prints `message` to stderr and exits with `status`.
fn fail(status: u8, message: &str) -> ExitCode {
    say(message);
    ExitCode::from(status)
}

/// The server's settings from the command line.
fn config(args: &ServeArgs) -> ServeConfig {
    ServeConfig {
        listen: args.listen.clone(),
        io_threads: args
            .io_threads
            .map(usize::from)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get)),
        loops: args.loops.map_or(0, usize::from),
        loop_sharing: args.loop_sharing,
        edge_triggered: args.trigger == Trigger::Edge,
        accept: match args.accept {
            Accept::Main => AcceptMode::MainLoop,
            Accept::Shared => AcceptMode::Shared,
            Accept::Reuseport => AcceptMode::ReusePort,
        },
        balance_accepts: !args.no_accept_balance,
        idle_timeout: args.idle_timeout.map(Duration::from_secs),
        max_conns: args
            .max_conns
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        framed: args.framed,
        stats_interval: args.stats_interval.map(Duration::from_secs),
        drain_timeout: Duration::from_secs(args.drain_timeout),
        metrics: args.metrics,
        stall_threshold: (args.stall_ms > 0).then(|| Duration::from_millis(args.stall_ms)),
        busy_poll: Duration::from_micros(args.busy_poll_us),
        defer_accept: Duration::from_secs(args.defer_accept),
        udp: args.udp,
        udp_batch: usize::from(args.udp_batch),
        tls: args.tls_cert.clone().zip(args.tls_key.clone()),
    }
}
