//! Command-line interface.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Load generator for duo's echo and bank servers (loopback only).
///
/// `--addr` takes a loopback `HOST:PORT` or a Unix-domain socket of this host
/// (`unix:/path`, `unix:@name`, in the form duo's servers print: `\xNN` is the byte `NN`).
/// Over a Unix-domain socket there are no source addresses
/// to spread connections over: `idle --per-source` and `churn --sources` do not apply (the
/// report says so), and nothing limits the connections but descriptors.
///
/// Every mode runs `--threads` threads, each with its own epoll loop over its share of the
/// connections. Errors (refused, reset, timeout, mismatch, ...) are counted and printed. Exit
/// code: 0 = ran (errors, if any, are reported), 1 = verification failed (wrong bytes echoed,
/// bank money not conserved), the run measured nothing (no connection was ever established;
/// UDP: no datagram came back) or the bank's set-up failed, or any error with `--strict`,
/// 2 = bad usage (also: an address that is not loopback).
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, args_override_self = true)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) mode: Mode,
}

/// The modes.
#[derive(Debug, Subcommand)]
pub(crate) enum Mode {
    /// Each connection sends SIZE random bytes, waits for all of them to come back (checking
    /// every byte), and repeats. Reports messages/s and MiB/s.
    #[command(args_override_self = true)]
    Pingpong(EchoArgs),
    /// Request/response: one outstanding SIZE-byte request per connection, with a latency
    /// histogram. Reports requests/s and p50/p99/p99.9/max latency. A request still
    /// awaiting its answer when the phase ends (over TCP or --udp, its connection not
    /// failed) counts with what it has waited so far if that is longer than every
    /// answered one, so a stall at the end is not lost.
    #[command(args_override_self = true)]
    Rr(EchoArgs),
    /// Opens CONNS connections (in batches, spread over source addresses 127.0.0.2, .3, ...),
    /// confirms each with a small echo, holds them, and reports how many were established
    /// and, with --pid, the server's RSS per connection.
    #[command(args_override_self = true)]
    Idle(IdleArgs),
    /// CONNS workers each loop: connect, 64-byte round trip, close. Reports connections/s.
    #[command(args_override_self = true)]
    Churn(ChurnArgs),
    /// Bank transfers: sets up ACCOUNTS accounts, has CLIENTS logged-in clients transfer
    /// money at random (one request outstanding each), then checks that the sum of the
    /// balances did not change.
    #[command(args_override_self = true)]
    Bank(BankArgs),
}

/// Options every mode has.
#[derive(Debug, Clone, Args)]
pub(crate) struct Common {
    /// Threads, each running its own epoll loop over its share of the connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) threads: u16,
    /// Print one JSON object line on stdout instead of the human-readable summary.
    #[arg(long)]
    pub(crate) json: bool,
    /// Exit with code 1 on any error, not only when verification fails.
    #[arg(long)]
    pub(crate) strict: bool,
    /// Seconds a connect or a reply may take, and each set-up phase (connecting, logging
    /// in, reading balances) may last.
    #[arg(long, default_value = "10", value_parser = parse_secs, value_name = "SECS")]
    pub(crate) timeout: Duration,
    /// Seed of the random bytes and choices [default: from the clock].
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// The server's process id: report the CPU time it used during the measured phase
    /// alone (set-up such as connecting or logging in excluded), as `server_cpu_secs`,
    /// with the processes below it (a supervisor's workers, `--processes`).
    /// Not with `idle`, which has no measured phase (its `--pid` reads the server's RSS).
    /// A PID whose CPU time cannot be read (no such process) is a usage error.
    #[arg(long, value_name = "PID")]
    pub(crate) server_pid: Option<u32>,
    /// Speak TLS (rustls), verifying the server as `localhost` against the CA
    /// certificates of this PEM file.
    #[arg(long, value_name = "PEM")]
    pub(crate) tls_ca: Option<std::path::PathBuf>,
}

/// `pingpong` and `rr`.
#[derive(Debug, Clone, Args)]
pub(crate) struct EchoArgs {
    /// The echo server: a loopback HOST:PORT, or a Unix-domain socket (unix:/path,
    /// unix:@name; `\xNN` is the byte NN, as the servers print such an address).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub(crate) addr: String,
    /// Connections.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) conns: u64,
    /// Bytes per message [default: 16384 for pingpong, 64 for rr].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64 * 1024 * 1024))]
    pub(crate) size: Option<u64>,
    /// Length of the measured phase, in seconds (a hard bound).
    #[arg(long, default_value = "5", value_parser = parse_secs, value_name = "SECS")]
    pub(crate) secs: Duration,
    /// An orderly close by the server (end of stream, FIN) is not an error: it is counted
    /// as `server_closed` (and the requests then outstanding on the connection as
    /// `unanswered_on_close`) and the connection is reopened at once. For a server that
    /// drains its connections on a reload. Refused, reset, timeout and mismatch stay errors.
    #[arg(long)]
    pub(crate) reconnect: bool,
    /// `rr` only: over UDP (connected sockets, one datagram outstanding each; a request
    /// unanswered after 200 ms counts as `lost` and the next one is sent). SIZE >= 16.
    #[arg(long)]
    pub(crate) udp: bool,
    /// `rr` only: open loop at RATE requests per second in all, spread evenly over the
    /// connections. Each connection sends on its own schedule (a constant interval, a random
    /// phase), one request in flight at a time: a request whose time comes while the
    /// previous one is unanswered goes out as soon as that reply arrives. Latency counts from
    /// the intended send time, so a stall weighs for every request it delayed (corrected for
    /// coordinated omission). Not with --udp.
    #[arg(long, value_parser = parse_rate, value_name = "RATE")]
    pub(crate) rate: Option<f64>,
    #[command(flatten)]
    pub(crate) common: Common,
}

/// `idle`.
#[derive(Debug, Clone, Args)]
pub(crate) struct IdleArgs {
    /// The echo server: a loopback HOST:PORT, or a Unix-domain socket (unix:/path,
    /// unix:@name; `\xNN` is the byte NN, as the servers print such an address).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub(crate) addr: String,
    /// Connections to open (in all, over the `--procs` processes).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub(crate) conns: u64,
    /// Processes to spread the connections over: with more than 1, this process starts P
    /// children of its own binary, each opening its share of CONNS from source addresses
    /// of its own, and sums their reports. Each process needs a descriptor per connection,
    /// so CONNS / P must fit under the open-file limit (`ulimit -Hn`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    pub(crate) procs: u64,
    /// The longest the connect phase may last [default: --timeout plus 1 s per 5 000
    /// connections of the whole run].
    #[arg(long, value_parser = parse_secs, value_name = "SECS")]
    pub(crate) setup_secs: Option<Duration>,
    /// Seconds to hold the connections once they are open.
    #[arg(long, default_value = "5", value_parser = parse_secs_or_zero, value_name = "SECS")]
    pub(crate) hold: Duration,
    /// The server's process id: sample its VmRSS before connecting and while holding (that
    /// process alone: for a server of several processes, `cargo xtask scale` sums the
    /// whole process tree). A PID whose RSS cannot be read (no such process) is a usage
    /// error.
    #[arg(long)]
    pub(crate) pid: Option<u32>,
    /// Connects (and final verification probes) in flight at most, per thread [default:
    /// 256; with --procs, 2048 over all processes and threads, at least 16 each].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub(crate) batch: Option<u64>,
    /// Connections per source address (127.0.0.2, 127.0.0.3, ...), at most. Above ~14 000
    /// the kernel's choice of a local port slows down sharply.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=28_000))]
    pub(crate) per_source: u64,
    /// (Internal: a child of `--procs`.) Print `held N` on stdout once the connections are
    /// open, hold them until a line arrives on stdin, then verify them; exit at once if
    /// stdin ends first (the parent is gone).
    #[arg(long, hide = true)]
    pub(crate) child: bool,
    /// (Internal, with `--child`.) The index of this process's first source address.
    #[arg(long, hide = true, default_value_t = 0)]
    pub(crate) source_base: u64,
    #[command(flatten)]
    pub(crate) common: Common,
}

/// `churn`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ChurnArgs {
    /// The echo server: a loopback HOST:PORT, or a Unix-domain socket (unix:/path,
    /// unix:@name; `\xNN` is the byte NN, as the servers print such an address).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub(crate) addr: String,
    /// Concurrent workers (each holds at most one connection at a time).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub(crate) conns: u64,
    /// Bytes of the round trip on each connection.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub(crate) size: u64,
    /// Length of the measured phase, in seconds (a hard bound).
    #[arg(long, default_value = "5", value_parser = parse_secs, value_name = "SECS")]
    pub(crate) secs: Duration,
    /// Source addresses to spread the connections over (127.0.0.2, 127.0.0.3, ...).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=250))]
    pub(crate) sources: u64,
    /// An orderly close by the server (end of stream, FIN) is not an error: it is counted
    /// as `server_closed` (and the requests then outstanding on the connection as
    /// `unanswered_on_close`) and the connection is reopened at once. For a server that
    /// drains its connections on a reload. Refused, reset, timeout and mismatch stay errors.
    #[arg(long)]
    pub(crate) reconnect: bool,
    #[command(flatten)]
    pub(crate) common: Common,
}

/// `bank`.
#[derive(Debug, Clone, Args)]
pub(crate) struct BankArgs {
    /// The bank server: a loopback HOST:PORT, or a Unix-domain socket (unix:/path,
    /// unix:@name; `\xNN` is the byte NN, as the servers print such an address).
    #[arg(long, default_value = "127.0.0.1:7100")]
    pub(crate) addr: String,
    /// Logged-in clients doing transfers; client i uses account i % ACCOUNTS.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub(crate) clients: u64,
    /// Accounts to create (at least 2).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=100_000))]
    pub(crate) accounts: u64,
    /// Length of the measured phase, in seconds (a hard bound).
    #[arg(long, default_value = "5", value_parser = parse_secs, value_name = "SECS")]
    pub(crate) secs: Duration,
    /// Cents deposited in each account at set-up.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000_000))]
    pub(crate) deposit: u64,
    /// Largest amount of one transfer, in cents (amounts are uniform in 1..=MAX).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000_000))]
    pub(crate) max_amount: u64,
    /// Connections used at once to set up accounts and to read balances at the end
    /// (`REGISTER` and `LOGIN` hash passwords: slow on purpose).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub(crate) setup_conns: u64,
    #[command(flatten)]
    pub(crate) common: Common,
}

impl Mode {
    /// The mode's name.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Mode::Pingpong(_) => "pingpong",
            Mode::Rr(_) => "rr",
            Mode::Idle(_) => "idle",
            Mode::Churn(_) => "churn",
            Mode::Bank(_) => "bank",
        }
    }

    /// The options every mode has.
    pub(crate) fn common(&self) -> &Common {
        match self {
            Mode::Pingpong(a) | Mode::Rr(a) => &a.common,
            Mode::Idle(a) => &a.common,
            Mode::Churn(a) => &a.common,
            Mode::Bank(a) => &a.common,
        }
    }

    /// The server address as given.
    pub(crate) fn addr(&self) -> &str {
        match self {
            Mode::Pingpong(a) | Mode::Rr(a) => &a.addr,
            Mode::Idle(a) => &a.addr,
            Mode::Churn(a) => &a.addr,
            Mode::Bank(a) => &a.addr,
        }
    }

    /// The longest the whole run may take: its measured phase plus a `--timeout` for each
    /// set-up phase, plus a margin. Past it the process exits, whatever the server does.
    pub(crate) fn hard_limit(&self) -> Duration {
        let margin = Duration::from_secs(5);
        let t = self.common().timeout;
        match self {
            Mode::Pingpong(a) | Mode::Rr(a) => a.secs + t + margin,
            // Connecting, waiting for the other processes to connect (--procs), the hold,
            // the final verification; a parent of --procs waits a little longer than its
            // children.
            Mode::Idle(a) => {
                let setup = a.setup_limit(t);
                let parent = if a.procs > 1 {
                    margin * 2
                } else {
                    Duration::ZERO
                };
                setup * 2 + a.hold + a.verify_limit(t) + margin + parent
            }
            Mode::Churn(a) => a.secs + margin,
            // Set-up, logins, the drain of outstanding transfers, the balance check.
            Mode::Bank(a) => a.secs + t * 4 + margin,
        }
    }
}

/// Connections per second that the default limits of `idle`'s phases assume at least.
const MIN_RATE: f64 = 5_000.0;

impl IdleArgs {
    /// How long the connect phase may last: `--setup-secs`, or `timeout` plus 1 s per
    /// [`MIN_RATE`] connections of the whole run.
    pub(crate) fn setup_limit(&self, timeout: Duration) -> Duration {
        self.setup_secs
            .unwrap_or_else(|| timeout + Duration::from_secs_f64(self.conns as f64 / MIN_RATE))
    }

    /// How long the final verification may last: as long as the connect phase (the
    /// processes of `--procs` verify all at once, as they connected: the server answers
    /// them all).
    pub(crate) fn verify_limit(&self, timeout: Duration) -> Duration {
        self.setup_limit(timeout)
    }
}

/// A positive, finite number of requests per second (fractions allowed).
fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of requests per second"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err("must be a finite number of requests per second, more than 0".into());
    }
    Ok(v)
}

/// A positive number of seconds (fractions allowed).
fn parse_secs(s: &str) -> Result<Duration, String> {
    match parse_secs_or_zero(s)? {
        d if d.is_zero() => Err("must be more than 0".into()),
        d => Ok(d),
    }
}

/// A number of seconds, zero allowed.
fn parse_secs_or_zero(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(0.0..=86_400.0).contains(&v) {
        return Err("must be between 0 and 86400".into());
    }
    Ok(Duration::from_secs_f64(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn repeated_options_override() {
        // `cargo xtask bench --quick` appends a second `--conns` to the idle scenario.
        let cli = Cli::try_parse_from([
            "loadgen", "idle", "--conns", "10000", "--json", "--conns", "2000",
        ])
        .unwrap();
        let Mode::Idle(a) = cli.mode else {
            panic!("idle")
        };
        assert_eq!(a.conns, 2000);
        assert!(a.common.json);
    }

    #[test]
    fn rate_is_positive_and_finite() {
        for good in ["1000", "0.5", "1e6"] {
            assert!(parse_rate(good).is_ok(), "{good}");
        }
        for bad in ["0", "-5", "inf", "NaN", "fast", ""] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        let cli = Cli::try_parse_from(["loadgen", "rr", "--rate", "250"]).unwrap();
        let Mode::Rr(a) = cli.mode else { panic!("rr") };
        assert_eq!(a.rate, Some(250.0));
    }
}
