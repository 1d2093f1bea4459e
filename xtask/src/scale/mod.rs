//! `cargo xtask scale --conns N [--quick] [--processes K] [--procs P] [--hold SECS]
//! [--json]`: how many idle connections duo's echo server holds on this host, and what
//! each costs.
//!
//! 1. **Limits first** ([`limits`]): `fs.file-max` less the handles in use, the hard
//!    `RLIMIT_NOFILE` (connections per process), free memory, and for information
//!    `fs.nr_open`, `net.ipv4.ip_local_port_range`, `net.core.somaxconn` and the
//!    connection-tracking table. If one of them does not allow N connections the run does
//!    not start: the message names it and the largest N it allows (exit status 1).
//! 2. **Plan**: P load generator processes, each holding at most its hard open-file limit
//!    less a margin (19 000 under 20 000), and K server worker processes planned 80 % full
//!    (15 200 each: they share an accept queue, so their shares need not be equal), unless
//!    given.
//! 3. **Run**: builds the release `echo` and `loadgen` (like `cargo xtask bench`), starts
//!    `echo serve --io-threads 0 --listen 127.0.0.1:0` (with `--processes K` when K > 1),
//!    samples the baseline (the server's process tree, the kernel), runs `loadgen idle
//!    --procs P --conns N --per-source S --hold SECS --json` (S: at most half the local
//!    port range, each connection being bound to its source address before connecting), samples again while it holds (once it says
//!    `holding N connections` on stderr), waits for its report (every connection echoed
//!    at the start and again at the end of the hold), then stops the server with SIGTERM
//!    and checks that it exits with status 0.
//! 4. **Report**: connections established and verified, the set-up rate, the server's
//!    memory per connection (RSS and PSS summed over the supervisor and its workers, the
//!    increase over the baseline divided by the connections), the kernel's (TCP sockets in
//!    use, TCP buffer pages, `Slab` and `SUnreclaim`; both ends of each connection are on
//!    this host, so those figures cover two sockets per connection), the load generator's
//!    memory. Anything that failed makes the exit status 1.
//!
//! Logs go to `target/scale/logs/`.

#[cfg(test)]
mod harness_combos;
mod limits;
mod memory;
mod one_run;
mod outcome;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use self::limits::Host;
use self::one_run::run_scale;
use crate::report::create_dir;
use crate::{target_dir, Failure};

/// Connections of `--quick`.
const QUICK_CONNS: u64 = 100_000;
/// Default hold, seconds (`--quick`: [`QUICK_HOLD`]).
const HOLD: f64 = 5.0;
const QUICK_HOLD: f64 = 2.0;
/// How long after `holding` the memory is sampled (the last echoes settle).
pub(super) const SETTLE: Duration = Duration::from_millis(300);
/// How long the server may take to exit after SIGTERM.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(30);
/// How full (of its per-process share) a server worker is planned to be by default. The
/// load generator splits its connections exactly; the server's workers share one accept
/// queue and need not take equal shares, so each gets headroom: 100 000 connections go to
/// 7 workers, not 6.
const SERVER_FILL_PERCENT: u64 = 80;
/// `loadgen`'s `--timeout`.
pub(super) const LOADGEN_TIMEOUT: u64 = 10;

/// Options of `cargo xtask scale`.
#[derive(Debug, Args)]
pub(crate) struct ScaleArgs {
    /// Connections to open and hold [required unless --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    conns: Option<u64>,
    /// 100 000 connections (unless --conns), held 2 s.
    #[arg(long)]
    quick: bool,
    /// Server worker processes (`echo serve --processes K`) [default: from the open-file
    /// limit].
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..=1024))]
    processes: Option<u64>,
    /// Load generator processes (`loadgen idle --procs P`) [default: from the open-file
    /// limit].
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u64).range(1..=1000))]
    procs: Option<u64>,
    /// Seconds to hold the connections [default: 5, 2 with --quick].
    #[arg(long, value_name = "SECS")]
    hold: Option<f64>,
    /// Print one JSON object line on stdout at the end (the progress still goes to stderr).
    #[arg(long)]
    json: bool,
}

/// The run's plan.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    /// Connections to hold.
    pub(super) conns: u64,
    /// Server worker processes (K).
    pub(super) server_procs: u64,
    /// Load generator processes (P).
    pub(super) loadgen_procs: u64,
    /// Seconds to hold.
    pub(super) hold: f64,
    /// Connections per source address (`loadgen --per-source`): within the host's local
    /// port range.
    pub(super) per_source: u64,
}

impl Plan {
    /// The plan for `conns` connections held `hold` seconds on `host`, with `(K, P)`
    /// server and load generator processes where given.
    pub(super) fn new(
        conns: u64,
        hold: f64,
        procs: (Option<u64>, Option<u64>),
        host: &Host,
    ) -> Plan {
        let per_proc = host.conns_per_process();
        let (k, p) = default_processes(conns, per_proc);
        Plan {
            conns,
            server_procs: procs.0.unwrap_or(k),
            loadgen_procs: procs.1.unwrap_or(p),
            hold,
            per_source: host.conns_per_source(),
        }
    }
}

/// Runs `cargo xtask scale`.
pub(crate) fn scale(args: ScaleArgs) -> Result<(), Failure> {
    let conns = match (args.conns, args.quick) {
        (Some(n), _) => n,
        (None, true) => QUICK_CONNS,
        (None, false) => return Err(Failure::Usage("give --conns N (or --quick)".into())),
    };
    let hold = args
        .hold
        .unwrap_or(if args.quick { QUICK_HOLD } else { HOLD });
    if !(1.0..=3600.0).contains(&hold) {
        return Err(Failure::Usage(format!(
            "--hold {hold}: between 1 and 3600 seconds (memory is sampled during the hold)"
        )));
    }
    let host = Host::read().map_err(Failure::Run)?;
    let plan = Plan::new(conns, hold, (args.processes, args.procs), &host);
    say(
        args.json,
        &format!(
            "scale: {conns} connections, {} server process(es), {} loadgen process(es), \
             hold {hold} s\nlimits:",
            plan.server_procs, plan.loadgen_procs
        ),
    );
    check_limits(&host, &plan, args.json)?;
    let bins = build_bins(args.json)?;
    let logs = target_dir().join("scale").join("logs");
    create_dir(&logs)?;
    let outcome = run_scale(&bins, &plan, &logs, args.json)?;
    if args.json {
        println!("{}", outcome.to_json(&plan));
    } else {
        print!("{}", outcome.to_human(&plan));
    }
    match outcome.problems(&plan) {
        problems if problems.is_empty() => Ok(()),
        problems => Err(Failure::Run(problems.join("; "))),
    }
}

/// The default `(server workers, load generator processes)` for `conns` connections when
/// one process may hold `per_proc`.
fn default_processes(conns: u64, per_proc: u64) -> (u64, u64) {
    let server_share = (per_proc * SERVER_FILL_PERCENT / 100).max(1);
    (
        conns.div_ceil(server_share),
        conns.div_ceil(per_proc.max(1)),
    )
}

/// Progress: on stdout, or on stderr when stdout is for the JSON line.
pub(super) fn say(json: bool, text: &str) {
    if json {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
}

/// Prints the limits; an error naming the one that does not allow the plan, and the
/// largest number of connections it allows.
fn check_limits(host: &Host, plan: &Plan, json: bool) -> Result<(), Failure> {
    let all = host.limits(Some(plan.server_procs));
    say(json, limits::table(&all, plan.conns).trim_end());
    let per_proc = host.conns_per_process();
    if plan.conns.div_ceil(plan.loadgen_procs) > per_proc {
        return Err(Failure::Usage(format!(
            "--procs {}: {} connections per load generator process, the open-file limit \
             (hard {}) allows {per_proc}; use --procs {} or more",
            plan.loadgen_procs,
            plan.conns.div_ceil(plan.loadgen_procs),
            host.fd_hard,
            plan.conns.div_ceil(per_proc)
        )));
    }
    match limits::binding(&all) {
        Some(l) if l.allows.is_some_and(|n| n < plan.conns) => Err(Failure::Run(format!(
            "{} limits this run: {} ({}); the largest feasible --conns is {}",
            l.name,
            l.value,
            l.why,
            l.allows.unwrap_or(0)
        ))),
        _ => Ok(()),
    }
}

/// The release binaries the run needs.
pub(super) struct Bins {
    pub(super) echo: PathBuf,
    pub(super) loadgen: PathBuf,
}

/// Builds the release `echo` and `loadgen` (only those), as `cargo xtask bench` does.
fn build_bins(json: bool) -> Result<Bins, Failure> {
    say(json, "building release echo and loadgen...");
    // Keep stdout for the JSON line.
    let release = crate::build_echo_and_loadgen(!json)?;
    Ok(Bins {
        echo: release.join("echo"),
        loadgen: release.join("loadgen"),
    })
}

#[cfg(test)]
mod tests {
    use super::default_processes;

    #[test]
    fn processes_follow_the_per_process_limit() {
        assert_eq!(default_processes(15_000, 19_000), (1, 1));
        assert_eq!(default_processes(100_000, 19_000), (7, 6));
        assert_eq!(default_processes(1_000_000, 19_000), (66, 53));
    }
}
