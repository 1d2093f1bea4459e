//! `cargo xtask soak [--quick] [--secs N]`: the echo and bank servers under long mixed and
//! hostile load, watched for crashes, descriptor leaks, memory growth and lost money.
//!
//! # What runs
//!
//! Two servers, started once and kept for the whole run: `echo` (2 I/O threads) and `bank`
//! (1 I/O thread, 2 workers, `--hash-cost low` so that registering and logging in, which
//! hash passwords, do not dominate the run), both with a short `--idle-timeout`
//! ([`IDLE_TIMEOUT`]) so that idle eviction happens many times.
//!
//! Against them, for `--secs` seconds (default 600, `--quick` 60):
//!
//! - **Well-behaved load**: `loadgen` lanes, each a thread that runs one `loadgen` child
//!   after another (bounded runs of a sixth of the run, 8 to 30 s), all lanes at once:
//!   echo `pingpong`, `rr`, `churn` and `idle` (1 000 connections held for [`IDLE_HOLD`],
//!   less than the idle timeout), and two `bank` transfer lanes (each run registers its
//!   own accounts and checks at its end that their total did not change).
//! - **Hostile clients**, threads of this process using std sockets:
//!   - *slow readers* ([`SLOW_READERS`] per server, plus [`WARM_UP_SLOW_READERS`] more
//!     during warm-up): send until the server stops reading (its output buffer crosses
//!     the high-water mark) and never read; the server must evict them at the idle
//!     timeout. One still connected [`EVICT_SLACK`] after the timeout (counted from the
//!     last byte the server took) is a failure. Echo gets raw bytes; the bank gets
//!     pipelined `BALANCE` commands, each answered at once with a 59-byte
//!     `ERR NOT_AUTHENTICATED` line (no database work). During warm-up they reset their
//!     connection [`WARM_HOLD`] after the server stops reading and start again.
//!   - *resetters*: connect, send part of a message (or a command whose reply a worker is
//!     still computing, for the bank) and close with `SO_LINGER` 0 (an RST).
//!   - *garbage senders* (bank only; the echo server takes any bytes): random binary
//!     lines, malformed commands and lines over the 1 024-byte limit. Every non-blank line
//!     must get exactly one `ERR` reply, and an overlong line `ERR LINE_TOO_LONG` and the
//!     end of the stream; anything else is a failure.
//!
//! # Phases and samples
//!
//! *Warm-up* is the first 15 % of the run, *load* the rest; the load is the same mix all
//! along. Then every client stops and *cool-down* waits [`COOL_DOWN`] and polls up to
//! [`FD_SETTLE`] for the descriptor counts (and echo's own connection count) to return to
//! their baseline. Every second ([`FINE`]), each server's VmRSS and RssAnon
//! (`/proc/PID/status`), open descriptors (`/proc/PID/fd`), threads and, for echo, its
//! connection count (its `--stats-interval 1` log line) are sampled; the charts show every
//! sample, the report's table one every 10 s (5 s with `--quick` or runs under two
//! minutes) and those at the phase boundaries.
//!
//! # Pass criteria
//!
//! - Both servers run to the end, then exit with status 0 within [`STOP_GRACE`] of SIGTERM;
//!   their logs contain no panic.
//! - Every `loadgen` run exits 0 with zero errors of any kind (the hostile clients have
//!   connections of their own; nothing they do may disturb the well-behaved ones) and,
//!   for the bank, `total_ok` (money conserved).
//! - The hostile clients saw no protocol anomaly and every slow reader was evicted.
//! - Descriptors after cool-down are at most the baseline + [`FD_TOLERANCE`], and echo's
//!   statistics count no open connection. The baseline is sampled after a short priming
//!   run (one small `loadgen` run per server) so that what a server opens once, on first
//!   use (the bank's SQLite read connections), is in it.
//! - **RSS**: VmRSS after the cool-down is at most [`RSS_TOLERANCE`] (or [`RSS_SLACK_KIB`],
//!   whichever is more) above the *warm-up peak*, the highest VmRSS sampled (every
//!   second) during warm-up. Why these two samples:
//!   - Under load VmRSS swings with what the connections hold at that instant (a client
//!     that never reads pins at least the 4 MiB output high-water mark until it is
//!     evicted), so two instants under load (end of warm-up, end of load) can differ
//!     with no leak at all.
//!   - Pools keep their high-water mark: duo's `BufPool` never returns a block to the
//!     system unasked, and a block's pages become resident only when first touched;
//!     glibc keeps part of the freed heap. So VmRSS after the load is not compared with
//!     the baseline, and warm-up must reach the high-water mark of the load: that is what
//!     the slow readers' short cycles and the extra warm-up slow readers are for (memory
//!     held by clients that never read is by far the largest part of it).
//!   - After the cool-down, memory held for connections is gone; what the servers keep
//!     beyond the peak is memory not given back: a leak. Measured on 2 cores in
//!     `--quick` runs: echo's VmRSS after the cool-down was +0.8 to +1.1 % over its
//!     warm-up peak (about 22 MiB), the bank's -2.9 to +3.2 % (about 29 MiB, flat from the
//!     fifth second on). What leaks would add at the rates of a quick run: 1 KiB per echo
//!     connection (about 175 000 churned, idle and reset) is 170 MiB; one output buffer
//!     per evicted slow reader is 4 MiB x 14; 64 bytes per bank transfer (about 45 000)
//!     or 1 KiB per hostile bank connection (about 3 500) is 3 MiB, at the limit. A full
//!     run (600 s) multiplies every leak by ten.
//!   - Why the bank's slow readers send `BALANCE` and not `PING`: a `PING` flood (5-byte
//!     requests, 5-byte replies) costs the bank about 10 MiB per client that never reads
//!     and fragments its heap; its VmRSS then kept rising in steps for 30 s and more (17 to
//!     40 MiB, plateauing near 40 MiB with `MALLOC_ARENA_MAX=1`): no leak, but no steady
//!     state within a quick run either.
//!
//! Output: a summary on stdout, `target/soak/report.md` with `rss.svg` and `fds.svg`
//! beside it, server and failing `loadgen` logs in `target/soak/logs/`. (`target` is
//! `$CARGO_TARGET_DIR` when set.) The bank's database lives in `target/soak/bank-db-*` and
//! is removed at the end.

mod hostile;
mod judge;
mod lanes;
mod report;
#[cfg(test)]
mod review_round8;
mod sample;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Args;

use self::hostile::HostileClients;
use self::judge::{Observed, Stopped};
use self::lanes::{LaneResult, LaneSetting, LANES};
use self::report::{print_progress, RunInfo};
use self::sample::{take, Mark, Proc, Sample, Srv};
use crate::process::{run_bounded, Server};
use crate::report::{create_dir, svg, write};
use crate::{build_release_bins, target_dir, Failure};

/// The servers' `--idle-timeout`.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(6);
/// How long each `loadgen idle` run holds its connections (below the idle timeout).
pub(super) const IDLE_HOLD: Duration = Duration::from_secs(3);
/// Idle connections per `loadgen idle` run.
pub(super) const IDLE_CONNS: u64 = 1000;
/// How often the servers are sampled for the charts and the warm-up peak (the table
/// shows every 10 s, or 5 s).
pub(super) const FINE: Duration = Duration::from_secs(1);
/// Slow readers per server.
pub(super) const SLOW_READERS: usize = 2;
/// Slow readers per server that run during warm-up only, so that warm-up reaches more
/// memory held by clients that never read than the load phase does (see the module docs).
pub(super) const WARM_UP_SLOW_READERS: usize = 2;
/// How long a slow reader holds its connection during warm-up before it resets it.
pub(super) const WARM_HOLD: Duration = Duration::from_millis(500);
/// How long past the idle timeout a slow reader may stay connected.
pub(super) const EVICT_SLACK: Duration = Duration::from_secs(10);
/// Descriptors a server may hold above its baseline after the cool-down.
pub(super) const FD_TOLERANCE: u64 = 4;
/// How much more VmRSS may be after the cool-down than at its peak during warm-up.
pub(super) const RSS_TOLERANCE: f64 = 0.10;
/// ... or this many KiB more, if that is more: for a server of a few MiB, 10 % is less than
/// one large pool block touched for the first time (see the module docs).
pub(super) const RSS_SLACK_KIB: u64 = 2048;
/// Part of the run that is warm-up.
pub(super) const WARM_UP_FRACTION: f64 = 0.15;
/// Pause after the last client is gone, before the cool-down sample.
pub(super) const COOL_DOWN: Duration = Duration::from_secs(3);
/// How long the cool-down waits for the descriptor counts to settle.
pub(super) const FD_SETTLE: Duration = Duration::from_secs(10);
/// How long a server may take to exit after SIGTERM.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(5);
/// A `loadgen` run shorter than this is not started.
pub(super) const MIN_RUN: Duration = Duration::from_secs(3);
/// Hostile failures kept for the report (they are also counted).
pub(super) const MAX_ANOMALIES: usize = 20;

/// Options of `cargo xtask soak`.
#[derive(Debug, Args)]
pub(crate) struct SoakArgs {
    /// A short soak: 60 s of load (unless --secs says otherwise), samples every 5 s.
    #[arg(long)]
    quick: bool,
    /// Seconds of load, 20 to 86400 [default: 600, 60 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(20..=86_400))]
    secs: Option<u64>,
}

/// The timing of a soak, from its options.
struct Plan {
    secs: u64,
    /// Samples in the report's table this far apart.
    interval: Duration,
    /// Length of one `loadgen` run of a lane.
    chunk: Duration,
    /// The command line, for the report.
    command: String,
}

impl Plan {
    fn new(args: &SoakArgs) -> Plan {
        let secs = args.secs.unwrap_or(if args.quick { 60 } else { 600 });
        Plan {
            secs,
            interval: Duration::from_secs(if args.quick || secs < 120 { 5 } else { 10 }),
            chunk: Duration::from_secs((secs / 6).clamp(8, 30)),
            command: format!(
                "cargo xtask soak{}{}",
                if args.quick { " --quick" } else { "" },
                args.secs.map_or(String::new(), |s| format!(" --secs {s}"))
            ),
        }
    }
}

/// Where a soak keeps its files.
struct Dirs {
    /// `target/soak`: the report and charts.
    out: PathBuf,
    /// Server and failing `loadgen` logs.
    logs: PathBuf,
    /// The bank's database, removed at the end.
    db: PathBuf,
}

/// The moments a soak is timed by.
struct Clock {
    /// When the load started.
    start: Instant,
    warm_end: Instant,
    load_end: Instant,
}

impl Clock {
    /// Seconds since the load started.
    fn t(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.start).as_secs_f64()
    }
}

/// Runs `cargo xtask soak`.
pub(crate) fn soak(args: SoakArgs) -> Result<(), Failure> {
    let plan = Plan::new(&args);
    let wall = Instant::now();
    let release = build_release_bins()?;
    let build_secs = wall.elapsed().as_secs_f64();
    let out = target_dir().join("soak");
    let dirs = Dirs {
        logs: out.join("logs"),
        db: out.join(format!("bank-db-{}", std::process::id())),
        out,
    };
    let _ = std::fs::remove_dir_all(&dirs.logs);
    // The databases of soaks that were killed (interrupted) before they removed theirs.
    crate::process::remove_left_behind(&dirs.out, "bank-db-");
    create_dir(&dirs.logs)?;
    if let Err(e) = duo_sys::raise_fd_limit() {
        eprintln!("warning: cannot raise the open-file limit: {e}");
    }
    create_dir(&dirs.db)?;
    let result = run(&plan, &release, &dirs, build_secs, wall);
    let _ = std::fs::remove_dir_all(&dirs.db);
    result
}

/// Everything after the build, so that the caller removes the database whatever happens.
fn run(
    plan: &Plan,
    release: &Path,
    dirs: &Dirs,
    build_secs: f64,
    wall: Instant,
) -> Result<(), Failure> {
    let mut servers = start_servers(release, dirs)?;
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.server.addr()).collect();
    let loadgen = release.join("loadgen");
    println!(
        "soak: {} s of load (warm-up {:.0} s), samples every {} s; echo on {}, bank on {} \
         (--hash-cost low)",
        plan.secs,
        plan.secs as f64 * WARM_UP_FRACTION,
        plan.interval.as_secs(),
        addrs[0],
        addrs[1]
    );
    prime(&loadgen, &addrs, &dirs.logs)?;

    let start = Instant::now();
    let clock = Clock {
        start,
        warm_end: start + Duration::from_secs_f64(plan.secs as f64 * WARM_UP_FRACTION),
        load_end: start + Duration::from_secs(plan.secs),
    };
    let mut samples: Vec<Sample> = Vec::new();
    take(&mut samples, &mut servers, Mark::Baseline, 0.0);
    let stop = Arc::new(AtomicBool::new(false));
    let lanes = start_lanes(&loadgen, &addrs, &clock, plan.chunk, &stop, &dirs.logs);
    let hostile = HostileClients::start(&addrs, &stop, clock.warm_end);
    sample_under_load(&mut samples, &mut servers, &clock, plan.interval);
    stop.store(true, Ordering::Relaxed);
    let lane_results = join_lanes(lanes);
    let hostile = hostile.join();
    let clients_gone = clock.t(Instant::now());
    println!("all clients gone at {clients_gone:.1} s; cooling down");

    cool_down(&mut samples, &mut servers, &clock);
    let stops = stop_servers(&mut servers);
    let verdict = judge::judge(&Observed {
        servers: &servers,
        stops: &stops,
        samples: &samples,
        lanes: &lane_results,
        hostile: &hostile,
    });
    let info = RunInfo {
        command: plan.command.clone(),
        secs: plan.secs,
        interval: plan.interval,
        build_secs,
        wall_secs: wall.elapsed().as_secs_f64(),
        clients_gone,
    };
    let md = report::report_md(&info, &servers, &samples, &lane_results, &hostile, &verdict);
    write(&dirs.out.join("report.md"), &md)?;
    write_charts(&dirs.out, &servers, &samples)?;
    report::print_summary(&info, &lane_results, &hostile, &verdict.checks);
    conclude(&dirs.out, &verdict.failures)
}

/// Starts the echo and bank servers.
fn start_servers(release: &Path, dirs: &Dirs) -> Result<Vec<Srv>, Failure> {
    let idle = IDLE_TIMEOUT.as_secs().to_string();
    let stats = FINE.as_secs().to_string();
    let db = dirs.db.join("bank.db").display().to_string();
    let echo_args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--io-threads",
        "2",
        "--idle-timeout",
        &idle,
        "--stats-interval",
        &stats,
    ];
    let bank_args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--db",
        &db,
        "--io-threads",
        "1",
        "--workers",
        "2",
        "--idle-timeout",
        &idle,
        "--hash-cost",
        "low",
    ];
    let mut servers = Vec::new();
    for (name, args) in [("echo", &echo_args[..]), ("bank", &bank_args[..])] {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let log = dirs.logs.join(format!("{name}.server.log"));
        let server = Server::start(name, &release.join(name), &args, &log).map_err(Failure::Run)?;
        servers.push(Srv {
            name,
            server,
            log,
            gone: None,
        });
    }
    Ok(servers)
}

/// One short run per server, so that what a server opens once, on first use, is in the
/// baseline.
fn prime(loadgen: &Path, addrs: &[SocketAddr], logs: &Path) -> Result<(), Failure> {
    for (i, mode, args) in [
        (0, "rr", &["--conns", "2", "--secs", "1"][..]),
        (
            1,
            "bank",
            &["--clients", "2", "--accounts", "2", "--secs", "1"][..],
        ),
    ] {
        let mut cmd = Command::new(loadgen);
        cmd.arg(mode)
            .args(["--addr", &addrs[i].to_string(), "--json"])
            .args(args);
        let log = logs.join(format!("loadgen-prime-{mode}.log"));
        match run_bounded(&mut cmd, Duration::from_secs(60), &log) {
            Ok((true, _)) => {
                let _ = std::fs::remove_file(&log);
            }
            Ok((false, out)) => {
                return Err(Failure::Run(format!(
                    "the priming {mode} run failed: {} (see {})",
                    out.trim(),
                    log.display()
                )))
            }
            Err(e) => return Err(Failure::Run(format!("the priming {mode} run: {e}"))),
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    Ok(())
}

/// Starts one thread per `loadgen` lane.
fn start_lanes(
    loadgen: &Path,
    addrs: &[SocketAddr],
    clock: &Clock,
    chunk: Duration,
    stop: &Arc<AtomicBool>,
    logs: &Path,
) -> Vec<JoinHandle<LaneResult>> {
    LANES
        .iter()
        .map(|lane| {
            let (loadgen, logs, stop) = (loadgen.to_path_buf(), logs.to_path_buf(), stop.clone());
            let (addr, load_end) = (addrs[lane.server], clock.load_end);
            std::thread::spawn(move || {
                let set = LaneSetting {
                    loadgen: &loadgen,
                    addr,
                    load_end,
                    chunk,
                    stop: &stop,
                    logs: &logs,
                };
                lanes::run_lane(lane, &set)
            })
        })
        .collect()
}

/// Waits for the lanes (they end once told to stop).
fn join_lanes(lanes: Vec<JoinHandle<LaneResult>>) -> Vec<LaneResult> {
    lanes
        .into_iter()
        .map(|h| {
            h.join().unwrap_or_else(|_| LaneResult {
                failures: vec!["the lane's thread panicked".into()],
                ..LaneResult::default()
            })
        })
        .collect()
}

/// Samples until the end of the load; a server that dies ends it early. Every second for
/// the charts and the warm-up peak; every `interval` in the table.
fn sample_under_load(
    samples: &mut Vec<Sample>,
    servers: &mut [Srv],
    clock: &Clock,
    interval: Duration,
) {
    let mut next_fine = clock.start + FINE;
    let mut next_table = clock.start + interval;
    let mut warm_taken = false;
    let mark = |samples: &mut Vec<Sample>, servers: &mut [Srv], mark: Mark, now| {
        take(samples, servers, mark, clock.t(now));
        if mark != Mark::Fine {
            print_progress(samples.last(), servers);
        }
    };
    loop {
        let now = Instant::now();
        if !warm_taken && now >= clock.warm_end {
            mark(samples, servers, Mark::WarmUpEnd, now);
            warm_taken = true;
        }
        if now >= clock.load_end {
            mark(samples, servers, Mark::LoadEnd, now);
            break;
        }
        if now >= next_table {
            mark(samples, servers, Mark::Periodic, now);
            next_table += interval;
            next_fine = now + FINE;
        } else if now >= next_fine {
            mark(samples, servers, Mark::Fine, now);
            next_fine += FINE;
        }
        if servers.iter().any(|s| s.gone.is_some()) {
            println!("a server is gone: stopping the load");
            break;
        }
        let wake = [next_fine, next_table, clock.load_end]
            .into_iter()
            .chain((!warm_taken).then_some(clock.warm_end))
            .min()
            .unwrap_or(clock.load_end);
        std::thread::sleep(
            wake.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250)),
        );
    }
}

/// Waits [`COOL_DOWN`], then up to [`FD_SETTLE`] for the descriptor counts (and echo's
/// connection count) to return to their baseline; takes the cool-down sample.
fn cool_down(samples: &mut Vec<Sample>, servers: &mut [Srv], clock: &Clock) {
    std::thread::sleep(COOL_DOWN);
    let baseline: Vec<Option<Proc>> = samples[0].procs.clone();
    let settle_end = Instant::now() + FD_SETTLE;
    loop {
        let settled = servers
            .iter_mut()
            .zip(&baseline)
            .all(|(s, b)| match (s.sample(), b) {
                (Some(p), Some(b)) => p.fds <= b.fds + FD_TOLERANCE && p.conns.unwrap_or(0) == 0,
                _ => true,
            });
        if settled || Instant::now() >= settle_end {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    take(samples, servers, Mark::CoolDown, clock.t(Instant::now()));
    print_progress(samples.last(), servers);
}

/// Stops every server with SIGTERM; each must exit with status 0 within [`STOP_GRACE`].
fn stop_servers(servers: &mut [Srv]) -> Vec<Stopped> {
    servers
        .iter_mut()
        .map(|s| {
            if let Some(g) = &s.gone {
                return Err(g.clone());
            }
            let r = s.server.terminate(STOP_GRACE).and_then(|(status, took)| {
                let code = status.code().unwrap_or(-1);
                if status.success() {
                    Ok((took.as_secs_f64(), code))
                } else {
                    Err(format!("exited with {status} after SIGTERM"))
                }
            });
            // Named by the caller (`server_failures`).
            r
        })
        .collect()
}

/// Writes `rss.svg` and `fds.svg`: every sample of every server.
fn write_charts(dir: &Path, servers: &[Srv], samples: &[Sample]) -> Result<(), Failure> {
    let t_of = |mark: Mark| samples.iter().find(|s| s.mark == mark).map(|s| s.t);
    let marks = [
        (t_of(Mark::WarmUpEnd), "end of warm-up"),
        (t_of(Mark::LoadEnd), "end of load"),
    ];
    let series = |value: fn(&Proc) -> f64| -> Vec<svg::Series<'_>> {
        servers
            .iter()
            .enumerate()
            .map(|(i, s)| svg::Series {
                name: s.name,
                points: samples
                    .iter()
                    .filter_map(|x| Some((x.t, value(x.procs.get(i)?.as_ref()?))))
                    .collect(),
            })
            .collect()
    };
    write(
        &dir.join("rss.svg"),
        &svg::lines(
            "server VmRSS (MiB) over time",
            &series(|p| p.rss_kib as f64 / 1024.0),
            &marks,
        ),
    )?;
    write(
        &dir.join("fds.svg"),
        &svg::lines(
            "server open file descriptors over time",
            &series(|p| p.fds as f64),
            &marks,
        ),
    )
}

/// PASS, or every failure and an error.
fn conclude(out: &Path, failures: &[String]) -> Result<(), Failure> {
    println!("report: {}", out.join("report.md").display());
    if failures.is_empty() {
        println!("soak: PASS");
        return Ok(());
    }
    for f in failures {
        eprintln!("FAIL: {f}");
    }
    Err(Failure::Run(format!(
        "soak failed ({} problem(s), listed above and in {})",
        failures.len(),
        out.join("report.md").display()
    )))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::judge::{rss_limit_kib, summarize_log};
    use super::sample::echo_conns;
    use super::*;

    #[test]
    fn rss_limit_is_ten_percent_or_the_slack() {
        assert_eq!(rss_limit_kib(100_000), 110_000);
        assert_eq!(rss_limit_kib(3_000), 3_000 + RSS_SLACK_KIB);
    }

    #[test]
    fn reads_echo_connections_and_log_problems() {
        let dir = std::env::temp_dir().join(format!("duo-soak-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("echo.log");
        std::fs::write(
            &log,
            "[2026-01-01T00:00:00Z INFO  echo] stats: 12 connections, 3 msg/s\n\
             [2026-01-01T00:00:01Z WARN  duo_net::connection] echo#17: odd thing 42\n\
             [2026-01-01T00:00:01Z WARN  duo_net::connection] echo#18: odd thing 43\n\
             [2026-01-01T00:00:02Z INFO  echo] stats: 0 connections, 0 msg/s\n\
             thread 'x' panicked at src/main.rs:1:1\n",
        )
        .unwrap();
        assert_eq!(echo_conns(&log), Some(0));
        let s = summarize_log(&log);
        assert_eq!((s.warn, s.error, s.panics), (2, 0, 1));
        assert_eq!(s.kinds.len(), 1, "{:?}", s.kinds);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `cargo xtask soak ARGS`, parsed.
    fn parse(args: &[&str]) -> Result<Plan, clap::Error> {
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            soak: SoakArgs,
        }
        let cli = Cli::try_parse_from(std::iter::once("soak").chain(args.iter().copied()))?;
        Ok(Plan::new(&cli.soak))
    }

    #[test]
    fn options() {
        let p = parse(&["--quick"]).unwrap();
        assert_eq!(
            (p.secs, p.command.as_str()),
            (60, "cargo xtask soak --quick")
        );
        let p = parse(&["--secs", "30"]).unwrap();
        assert_eq!(
            (p.secs, p.command.as_str()),
            (30, "cargo xtask soak --secs 30")
        );
        assert_eq!(p.interval, Duration::from_secs(5));
        assert!(parse(&["--secs", "5"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert_eq!(parse(&[]).unwrap().secs, 600);
    }
}
