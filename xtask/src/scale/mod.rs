//! `cargo xtask scale --conns N [--quick] [--processes K] [--procs P] [--hold SECS]
//! [--json]`: how many idle connections duo's echo server holds on this host, and what
//! each costs.
//!
//! 1. **Limits first** ([`limits`]): `fs.file-max` less the handles in use, the hard
//!    `RLIMIT_NOFILE` (connections per process), free memory, and for information
//!    `fs.nr_open`, `net.ipv4.ip_local_port_range`, `net.core.somaxconn` and the
//!    connection-tracking table. If one of them does not allow N connections the run does
//!    not start: the message names it and the largest N it allows (exit status 1).
//! 2. **Plan**: K server worker processes and P load generator processes, each holding
//!    at most its hard open-file limit less a margin (19 000 under 20 000), unless given.
//! 3. **Run**: builds the release `echo` and `loadgen` (like `cargo xtask bench`), starts
//!    `echo serve --io-threads 0 --listen 127.0.0.1:0` (with `--processes K` when K > 1),
//!    samples the baseline (the server's process tree, the kernel), runs `loadgen idle
//!    --procs P --conns N --hold SECS --json`, samples again while it holds (once it says
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

mod limits;
mod memory;

use std::fs::File;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use duo_testkit::loadgen_json::LoadgenJson;

use self::limits::Host;
use self::memory::{KernelMem, TreeMem};
use crate::process::Server;
use crate::report::create_dir;
use crate::{cargo, root, run, target_dir, Failure};

/// Connections of `--quick`.
const QUICK_CONNS: u64 = 100_000;
/// Default hold, seconds (`--quick`: [`QUICK_HOLD`]).
const HOLD: f64 = 5.0;
const QUICK_HOLD: f64 = 2.0;
/// How long after `holding` the memory is sampled (the last echoes settle).
const SETTLE: Duration = Duration::from_millis(300);
/// How long the server may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// `loadgen`'s `--timeout`.
const LOADGEN_TIMEOUT: u64 = 10;

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
struct Plan {
    conns: u64,
    server_procs: u64,
    loadgen_procs: u64,
    hold: f64,
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
    let per_proc = host.conns_per_process();
    let plan = Plan {
        conns,
        server_procs: args.processes.unwrap_or(conns.div_ceil(per_proc)),
        loadgen_procs: args.procs.unwrap_or(conns.div_ceil(per_proc)),
        hold,
    };
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
    check_processes_flag(&bins, &plan, per_proc)?;
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

/// Progress: on stdout, or on stderr when stdout is for the JSON line.
fn say(json: bool, text: &str) {
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
struct Bins {
    echo: PathBuf,
    loadgen: PathBuf,
}

/// Builds the release `echo` and `loadgen` (only those), as `cargo xtask bench` does.
fn build_bins(json: bool) -> Result<Bins, Failure> {
    say(json, "building release echo and loadgen...");
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root()).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "echo",
        "-p",
        "duo-benches",
        "--bin",
        "echo",
        "--bin",
        "loadgen",
    ]);
    if json {
        // Keep stdout for the JSON line.
        cmd.stdout(Stdio::null());
    }
    run(&mut cmd)?;
    let release = target_dir().join("release");
    Ok(Bins {
        echo: release.join("echo"),
        loadgen: release.join("loadgen"),
    })
}

/// With K > 1, the echo server must have `--processes`: say so plainly if it has not.
fn check_processes_flag(bins: &Bins, plan: &Plan, per_proc: u64) -> Result<(), Failure> {
    if plan.server_procs <= 1 {
        return Ok(());
    }
    let help = duo_testkit::run_within(
        Command::new(&bins.echo).args(["serve", "--help"]),
        Duration::from_secs(10),
    )
    .map_err(Failure::Run)?;
    if help.stdout.contains("--processes") {
        Ok(())
    } else {
        Err(Failure::Run(format!(
            "{} connections need {} server processes (the open-file limit allows about {} \
             per process), but this echo has no `serve --processes`; use --conns {} or less",
            plan.conns, plan.server_procs, per_proc, per_proc
        )))
    }
}

/// Everything measured.
#[derive(Debug)]
struct Outcome {
    report: Option<LoadgenJson>,
    loadgen_failure: Option<String>,
    server_before: TreeMem,
    server_hold: Option<TreeMem>,
    kernel_before: KernelMem,
    kernel_hold: Option<KernelMem>,
    loadgen_hold: Option<TreeMem>,
    sample_errors: Vec<String>,
    stop: Result<(i32, Duration), String>,
    wall: Duration,
}

/// Starts the server, runs the load generator, samples, stops the server.
fn run_scale(bins: &Bins, plan: &Plan, logs: &Path, json: bool) -> Result<Outcome, Failure> {
    let started = Instant::now();
    let mut server_args: Vec<String> = ["serve", "--io-threads", "0", "--listen", "127.0.0.1:0"]
        .map(String::from)
        .to_vec();
    if plan.server_procs > 1 {
        server_args.extend(["--processes".into(), plan.server_procs.to_string()]);
    }
    let mut server = Server::start("echo", &bins.echo, &server_args, &logs.join("server.log"))
        .map_err(Failure::Run)?;
    let server_before = TreeMem::of(server.pid()).map_err(Failure::Run)?;
    let kernel_before = KernelMem::now().map_err(Failure::Run)?;
    say(
        json,
        &format!(
            "server {} (pid {}, {} process(es)); connecting...",
            server.addr(),
            server.pid(),
            server_before.procs
        ),
    );

    let mut cmd = Command::new(&bins.loadgen);
    cmd.args(["idle", "--addr", &server.addr().to_string()])
        .args(["--conns", &plan.conns.to_string()])
        .args(["--procs", &plan.loadgen_procs.to_string()])
        .args(["--hold", &plan.hold.to_string()])
        .args(["--timeout", &LOADGEN_TIMEOUT.to_string()])
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let log = logs.join("loadgen.log");
    let log_file =
        File::create(&log).map_err(|e| Failure::Run(format!("{}: {e}", log.display())))?;
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::Run(format!("cannot start loadgen: {e}")))?;
    let loadgen_pid = child.id();
    let holding = forward_stderr(&mut child, log_file);
    // Connecting takes at most loadgen's connect phase; it says when it holds.
    let setup = Duration::from_secs(LOADGEN_TIMEOUT + 30) + Duration::from_secs(plan.conns / 5_000);
    let mut sample_errors = Vec::new();
    let (mut server_hold, mut kernel_hold, mut loadgen_hold) = (None, None, None);
    match holding.recv_timeout(setup) {
        Ok(line) => {
            say(json, &line);
            std::thread::sleep(SETTLE);
            server_hold = keep(TreeMem::of(server.pid()), &mut sample_errors);
            kernel_hold = keep(KernelMem::now(), &mut sample_errors);
            loadgen_hold = keep(TreeMem::of(loadgen_pid), &mut sample_errors);
        }
        Err(_) => sample_errors.push(format!(
            "loadgen never said it was holding its connections (see {})",
            log.display()
        )),
    }
    let bound = setup * 2 + Duration::from_secs_f64(plan.hold) + Duration::from_secs(60);
    let (report, loadgen_failure) = match duo_testkit::finish_within(child, bound) {
        Ok(done) => {
            let report = LoadgenJson::find_in(&done.stdout);
            let failure =
                (!done.status.success()).then(|| format!("loadgen exited with {}", done.status));
            (report, failure)
        }
        Err(e) => (None, Some(format!("loadgen {e}"))),
    };
    let stop = match server.terminate(STOP_GRACE) {
        Ok((status, took)) => Ok((status.code().unwrap_or(-1), took)),
        Err(e) => Err(e),
    };
    Ok(Outcome {
        report,
        loadgen_failure,
        server_before,
        server_hold,
        kernel_before,
        kernel_hold,
        loadgen_hold,
        sample_errors,
        stop,
        wall: started.elapsed(),
    })
}

/// The value of `r`, or `None` with its error kept in `errors`.
fn keep<T>(r: Result<T, String>, errors: &mut Vec<String>) -> Option<T> {
    r.map_err(|e| errors.push(e)).ok()
}

/// Copies the child's stderr to `file` on a thread; the receiver gets the line saying
/// that the connections are held.
fn forward_stderr(child: &mut std::process::Child, mut file: File) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let Some(stderr) = child.stderr.take() else {
        return rx; // not piped: the sender is gone, so nobody waits for the line
    };
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(file, "{line}");
            if line.contains("holding") {
                let _ = tx.send(line);
            }
        }
    });
    rx
}

impl Outcome {
    /// Bytes per connection of an increase from `before` to `after` KiB.
    fn per_conn(&self, before: u64, after: u64) -> Option<f64> {
        let n = self.established().filter(|&n| n > 0)?;
        Some((after as f64 - before as f64) * 1024.0 / n as f64)
    }

    fn established(&self) -> Option<u64> {
        self.report.as_ref().and_then(|r| r.established)
    }

    /// `(rss, pss)` bytes per connection of the server.
    fn server_per_conn(&self) -> (Option<f64>, Option<f64>) {
        let Some(h) = self.server_hold else {
            return (None, None);
        };
        let b = self.server_before;
        (
            self.per_conn(b.rss_kib, h.rss_kib),
            self.per_conn(b.pss_kib, h.pss_kib),
        )
    }

    /// Kernel: `(tcp mem, slab, sunreclaim)` bytes per connection, and sockets added.
    fn kernel_per_conn(&self) -> Option<(f64, f64, f64, i64)> {
        let h = self.kernel_hold?;
        let b = self.kernel_before;
        Some((
            self.per_conn(b.tcp_mem_pages * 4, h.tcp_mem_pages * 4)?,
            self.per_conn(b.slab_kib, h.slab_kib)?,
            self.per_conn(b.sunreclaim_kib, h.sunreclaim_kib)?,
            h.tcp_inuse as i64 - b.tcp_inuse as i64,
        ))
    }

    /// What went wrong; empty if nothing did.
    fn problems(&self, plan: &Plan) -> Vec<String> {
        let mut p = self.sample_errors.clone();
        p.extend(self.loadgen_failure.clone());
        match &self.report {
            None => p.push("loadgen printed no report".into()),
            Some(r) => {
                let est = r.established.unwrap_or(0);
                if est < plan.conns {
                    p.push(format!("{est} of {} connections established", plan.conns));
                }
                if r.verified_end.unwrap_or(0) < est {
                    p.push(format!(
                        "{} of {est} connections verified at the end",
                        r.verified_end.unwrap_or(0)
                    ));
                }
                if r.error_total > 0 {
                    p.push(format!("loadgen errors: {:?}", r.errors));
                }
                p.extend(r.failure.clone());
            }
        }
        match &self.stop {
            Ok((0, _)) => {}
            Ok((code, _)) => p.push(format!("the server exited with {code} after SIGTERM")),
            Err(e) => p.push(format!("stopping the server: {e}")),
        }
        p
    }

    /// The human-readable report.
    fn to_human(&self, plan: &Plan) -> String {
        let mut s = String::new();
        let mut line = |label: &str, text: String| s.push_str(&format!("  {label:<16}{text}\n"));
        let r = self.report.clone().unwrap_or_default();
        line(
            "established",
            format!(
                "{} of {} (verified at start), {} verified at the end (in {:.2} s)",
                r.established.unwrap_or(0),
                plan.conns,
                r.verified_end.unwrap_or(0),
                r.verify_secs.unwrap_or(0.0)
            ),
        );
        line(
            "set-up rate",
            format!(
                "{:.0} connections/s (connect phase {:.2} s)",
                r.setup_per_sec.unwrap_or(0.0),
                r.connect_secs.unwrap_or(0.0)
            ),
        );
        let (rss, pss) = self.server_per_conn();
        if let Some(h) = self.server_hold {
            let b = self.server_before;
            line(
                "server memory",
                format!(
                    "{} process(es): RSS {} -> {} KiB ({} B/conn), PSS {} -> {} KiB ({} B/conn)",
                    h.procs,
                    b.rss_kib,
                    h.rss_kib,
                    fmt_b(rss),
                    b.pss_kib,
                    h.pss_kib,
                    fmt_b(pss)
                ),
            );
        }
        if let (Some((tcp, slab, unrecl, socks)), Some(h)) =
            (self.kernel_per_conn(), self.kernel_hold)
        {
            let b = self.kernel_before;
            line(
                "kernel memory",
                format!(
                    "TCP sockets +{socks}, TCP buffer pages {} -> {} ({} B/conn), Slab {} -> {} \
                     KiB ({} B/conn), SUnreclaim {} -> {} KiB ({} B/conn); both ends",
                    b.tcp_mem_pages,
                    h.tcp_mem_pages,
                    fmt_b(Some(tcp)),
                    b.slab_kib,
                    h.slab_kib,
                    fmt_b(Some(slab)),
                    b.sunreclaim_kib,
                    h.sunreclaim_kib,
                    fmt_b(Some(unrecl))
                ),
            );
        }
        if let Some(l) = self.loadgen_hold {
            line(
                "loadgen memory",
                format!(
                    "{} process(es): RSS {} KiB, PSS {} KiB ({} B/conn)",
                    l.procs,
                    l.rss_kib,
                    l.pss_kib,
                    fmt_b(
                        self.established()
                            .filter(|&n| n > 0)
                            .map(|n| l.pss_kib as f64 * 1024.0 / n as f64)
                    )
                ),
            );
        }
        line(
            "server stop",
            match &self.stop {
                Ok((code, took)) => {
                    format!("SIGTERM -> exit {code} in {:.2} s", took.as_secs_f64())
                }
                Err(e) => e.clone(),
            },
        );
        line(
            "errors",
            if r.error_total == 0 {
                "none".into()
            } else {
                format!("{} {:?}", r.error_total, r.errors)
            },
        );
        for n in &r.notes {
            line("note", n.clone());
        }
        line("wall time", format!("{:.1} s", self.wall.as_secs_f64()));
        let problems = self.problems(plan);
        line(
            "result",
            if problems.is_empty() {
                "PASS".into()
            } else {
                format!("FAIL: {}", problems.join("; "))
            },
        );
        s
    }

    /// The report as one JSON line.
    fn to_json(&self, plan: &Plan) -> String {
        let r = self.report.clone().unwrap_or_default();
        let (rss, pss) = self.server_per_conn();
        let kernel = self.kernel_per_conn();
        let problems = self.problems(plan);
        serde_json::json!({
            "conns": plan.conns,
            "server_procs": plan.server_procs,
            "loadgen_procs": plan.loadgen_procs,
            "hold_secs": plan.hold,
            "established": r.established,
            "verified_end": r.verified_end,
            "setup_per_sec": r.setup_per_sec,
            "connect_secs": r.connect_secs,
            "verify_secs": r.verify_secs,
            "server_rss_before_kib": self.server_before.rss_kib,
            "server_pss_before_kib": self.server_before.pss_kib,
            "server_rss_hold_kib": self.server_hold.map(|m| m.rss_kib),
            "server_pss_hold_kib": self.server_hold.map(|m| m.pss_kib),
            "server_rss_per_conn_bytes": rss,
            "server_pss_per_conn_bytes": pss,
            "kernel_tcp_inuse_added": kernel.map(|k| k.3),
            "kernel_tcp_mem_per_conn_bytes": kernel.map(|k| k.0),
            "kernel_slab_per_conn_bytes": kernel.map(|k| k.1),
            "kernel_sunreclaim_per_conn_bytes": kernel.map(|k| k.2),
            "loadgen_rss_kib": self.loadgen_hold.map(|m| m.rss_kib),
            "loadgen_pss_kib": self.loadgen_hold.map(|m| m.pss_kib),
            "server_exit": self.stop.as_ref().ok().map(|s| s.0),
            "errors": r.errors,
            "error_total": r.error_total,
            "wall_secs": self.wall.as_secs_f64(),
            "ok": problems.is_empty(),
            "problems": problems,
        })
        .to_string()
    }
}

/// Bytes per connection, or `?`.
fn fmt_b(v: Option<f64>) -> String {
    v.map_or("?".into(), |b| format!("{b:.0}"))
}
