//! `cargo xtask observe [--quick] [--keep-dir]`: a real Prometheus server scrapes duo's echo
//! server under load, and its HTTP query API must show `duo_` series whose counters grow.
//!
//! 1. Finds `prometheus` (on `PATH`, else `/usr/bin/prometheus`; the Debian package
//!    `prometheus`, which `.ci/run` installs when it is missing). Without it the run fails
//!    at once and says how to install it.
//! 2. Builds the release `echo` and `loadgen` (like `cargo xtask bench`), starts
//!    `echo serve --listen 127.0.0.1:0 --metrics 127.0.0.1:0` and reads its `listening on`
//!    and `metrics on` lines, then `loadgen rr --conns 20` against it.
//! 3. Writes `prometheus.yml` into a directory of its own under the system's temporary
//!    directory (job `echo`, the metrics address, scraped every second) and starts
//!    `prometheus` with its database there, listening on a free loopback port; waits (at
//!    most 60 s) until `/-/ready` answers.
//! 4. Asks `/api/v1/query` every 250 ms until all of these hold, or fails when they do
//!    not within the time limit (30 s with `--quick`, 90 s without):
//!    - at least 2 successful scrapes (`up{job="echo"}` samples equal to 1; 10 without
//!      `--quick`), and the last `up` is 1;
//!    - `count({__name__=~"duo_.+"})` is above 0;
//!    - `duo_server_bytes_in_total` and `duo_loop_iterations_total` exist and grew between
//!      their first and last scrape, summed over their series;
//!    - no series of those counters nor of `duo_server_connections_accepted_total` ever
//!      went down between two scrapes, and the accepted connections reached the load's 20.
//!
//!    The server, the load generator and Prometheus must keep running meanwhile.
//!
//!    With `--processes N`, echo runs as a supervisor of N worker processes whose
//!    `--metrics` address gathers every worker's figures: then also `duo_aggregate_up`
//!    must be 1 for N workers and `duo_server_bytes_in_total{process="worker"}` must have
//!    series of N distinct `pid`s.
//! 5. Prints what Prometheus had (scrapes, series per `duo_` name, each counter's first
//!    and last value) and the time taken; stops everything it started by PID (also when a
//!    step fails) and deletes its directory unless `--keep-dir`. Exit status 0 only if
//!    every check passed.

mod check;
mod child;
#[cfg(test)]
pub(crate) mod harness_combos;
mod http;
mod prometheus;
#[cfg(test)]
mod stand_in;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Args;

use self::check::{wait_for, Expect};
use self::child::{Echo, Running};
use self::prometheus::{tail, Prometheus};
use crate::Failure;

/// Connections of the load (`loadgen rr --conns`).
const CONNS: u32 = 20;
/// How long echo may take to print its two lines.
const ECHO_STARTUP: Duration = Duration::from_secs(60);
/// How long Prometheus may take to be ready.
const READY_LIMIT: Duration = Duration::from_secs(60);

/// Options of `cargo xtask observe`.
#[derive(Debug, Args)]
pub(crate) struct ObserveArgs {
    /// Two scrapes are enough, and the checks must pass within 30 s (instead of ten
    /// scrapes within 90 s).
    #[arg(long)]
    quick: bool,
    /// Keep the run's directory (prometheus.yml, Prometheus' database, the logs).
    #[arg(long)]
    keep_dir: bool,
    /// Run echo as a supervisor of N worker processes, scraped through the supervisor's
    /// one metrics address.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=16))]
    processes: Option<u16>,
}

/// Runs `cargo xtask observe`.
pub(crate) fn observe(args: ObserveArgs) -> Result<(), Failure> {
    let began = Instant::now();
    let exe = prometheus::find().map_err(Failure::Run)?;
    let version = prometheus::version(&exe).map_err(Failure::Run)?;
    println!("{} ({version})", exe.display());
    let (expect, limit) = if args.quick {
        (
            Expect {
                scrapes: 2,
                accepted: f64::from(CONNS),
                workers: args.processes.map(usize::from),
            },
            Duration::from_secs(30),
        )
    } else {
        (
            Expect {
                scrapes: 10,
                accepted: f64::from(CONNS),
                workers: args.processes.map(usize::from),
            },
            Duration::from_secs(90),
        )
    };
    let release = build_bins()?;
    // Dropped last: the processes below are stopped before their directory goes.
    let dir = RunDir::create("run", args.keep_dir).map_err(Failure::Run)?;
    let mut run = Run {
        dir: &dir.path,
        echo: None,
        loadgen: None,
        prometheus: None,
    };
    let outcome = run.go(&exe, &release, &expect, limit);
    match &outcome {
        Ok(findings) => {
            let p = run
                .prometheus
                .as_ref()
                .map_or(Duration::ZERO, |p| p.startup);
            print!("{}", findings.describe());
            println!(
                "ok: every check passed in {:.1} s (Prometheus ready after {:.1} s)",
                began.elapsed().as_secs_f64(),
                p.as_secs_f64()
            );
        }
        Err(_) if !args.keep_dir => run.print_logs(),
        Err(_) => {}
    }
    drop(run);
    drop(dir);
    outcome.map(drop).map_err(Failure::Run)
}

/// The processes of a run, stopped (by their guards) when it is dropped.
struct Run<'a> {
    dir: &'a Path,
    echo: Option<Echo>,
    loadgen: Option<Running>,
    prometheus: Option<Prometheus>,
}

impl Run<'_> {
    /// Starts echo, the load and Prometheus, and waits for the checks.
    fn go(
        &mut self,
        exe: &Path,
        release: &Path,
        expect: &Expect,
        limit: Duration,
    ) -> Result<check::Findings, String> {
        let echo = Echo::start(
            &release.join("echo"),
            &self.dir.join("echo.log"),
            ECHO_STARTUP,
            expect.workers,
        )?;
        let (addr, metrics) = (echo.addr, echo.metrics);
        let echo = self.echo.insert(echo);
        println!(
            "echo (PID {}) serves on {addr}, metrics on {metrics}",
            echo.process.pid()
        );
        // The load outlasts every wait below; it is stopped when the checks are done.
        let secs = (READY_LIMIT + limit).as_secs() + 10;
        let mut cmd = Command::new(release.join("loadgen"));
        cmd.args(["rr", "--addr", &addr.to_string()]).args([
            "--conns",
            &CONNS.to_string(),
            "--secs",
            &secs.to_string(),
        ]);
        let loadgen = Running::spawn("loadgen", &mut cmd, &self.dir.join("loadgen.log"), false)?;
        println!("loadgen rr (PID {}): {CONNS} connections", loadgen.pid());
        let loadgen = self.loadgen.insert(loadgen);
        let prom = Prometheus::start(exe, self.dir, metrics, READY_LIMIT)?;
        println!(
            "prometheus (PID {}) at http://{} scrapes http://{metrics}/metrics every 1 s",
            prom.pid(),
            prom.addr
        );
        let prom = self.prometheus.insert(prom);
        let api = prom.addr;
        wait_for(api, expect, Instant::now() + limit, || {
            echo.process.still_running()?;
            loadgen.still_running()?;
            prom.still_running()
        })
    }

    /// The end of each log, for a failed run whose directory is about to go.
    fn print_logs(&self) {
        for name in ["echo.log", "loadgen.log", "prometheus.log"] {
            let path = self.dir.join(name);
            if path.exists() {
                eprintln!("--- the end of {name} ---\n{}", tail(&path, 10));
            }
        }
    }
}

/// The run's directory under the system's temporary directory, deleted when dropped
/// unless kept.
struct RunDir {
    path: PathBuf,
    keep: bool,
}

/// The start of a run directory's name, before `PID-TAG`.
const RUN_DIR_PREFIX: &str = "duo-observe-";
use crate::process::{remove_left_behind, KEEP_MARK};

impl RunDir {
    /// `duo-observe-PID-TAG`. First removes the directories that runs killed before they
    /// could remove theirs left behind.
    fn create(tag: &str, keep: bool) -> Result<RunDir, String> {
        let tmp = std::env::temp_dir();
        remove_left_behind(&tmp, RUN_DIR_PREFIX);
        let path = tmp.join(format!("{RUN_DIR_PREFIX}{}-{tag}", std::process::id()));
        // A directory left by an earlier process of the same PID.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if keep {
            let mark = path.join(KEEP_MARK);
            std::fs::write(&mark, "").map_err(|e| format!("{}: {e}", mark.display()))?;
        }
        Ok(RunDir { path, keep })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep {
            println!("kept {}", self.path.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Builds the release `echo` and `loadgen`; returns the directory they are in.
fn build_bins() -> Result<PathBuf, Failure> {
    println!("building release echo and loadgen...");
    crate::build_echo_and_loadgen(true)
}
