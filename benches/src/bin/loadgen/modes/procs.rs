//! `idle --procs P`: the connections of one `idle` run spread over P child processes.
//!
//! One process can hold only as many connections as its open-file limit allows (20 000
//! here), so a million connections need about 53 processes. This process (the *parent*)
//! holds none: it starts P children of its own binary (`loadgen idle --child ...`), each
//! with its share of `--conns` and a disjoint range of source addresses (`--source-base`),
//! so their local ports never collide, and coordinates them over their standard streams:
//!
//! 1. Each child opens and confirms its connections, prints `held N` on stdout and
//!    holds. The parent waits until every child has said so (at most the connect phase,
//!    [`IdleArgs::setup_limit`], plus a margin): the connect phase's wall-clock time gives
//!    the set-up rate of the whole run. It then prints `loadgen idle: holding N connections
//!    in P processes` on stderr (what `cargo xtask scale` waits for before it samples
//!    memory).
//! 2. It holds for `--hold` seconds, sampling the server's VmRSS (`--pid`) and the
//!    children's, then writes a line to each child's stdin: each verifies every
//!    connection with a second echo and prints its `--json` report.
//! 3. The parent sums the reports: established (verified at start), verified at the end,
//!    faults by kind, notes.
//!
//! The children never outlive the parent: if the parent fails, its children are killed by
//! PID (on every return path, and by the watchdog); SIGINT, SIGTERM and SIGHUP are handled
//! on a thread of their own ([`watch_signals`]) that kills them before exiting; and if the
//! parent dies anyway (SIGKILL), a child sees its stdin end and exits at once.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use duo_sys::{Epoll, Events, Interest, Signal, SignalFd};
use duo_testkit::loadgen_json::LoadgenJson;

use crate::cli::IdleArgs;
use crate::fault::Fault;
use crate::host::{fd_budget, rss_kib, SPARE_FDS};
use crate::modes::idle::DEFAULT_BATCH;
use crate::modes::Env;
use crate::net::MAX_SOURCES;
use crate::report::Report;

/// Connects in flight over all processes and threads when `--batch` is not given: the
/// server's accept queue (`net.core.somaxconn`, 4 096 here) should not overflow.
const TOTAL_BATCH: u64 = 2048;
/// ... but at least this many per thread.
const MIN_BATCH: u64 = 16;
/// Slack on top of each phase's own limit before the parent gives up on a child.
const MARGIN: Duration = Duration::from_secs(5);
/// How often the server's and the children's memory is sampled while holding.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// The children, for killing them by PID from anywhere (the watchdog, the signal thread,
/// a failing run). A child stays here until it has been reaped, so its PID cannot have
/// been reused by another process meanwhile.
static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

/// Checks that each process's share of the connections fits under the open-file limit,
/// and that there are enough source addresses; the message says what would work.
pub(crate) fn check_usage(args: &IdleArgs) -> Result<(), String> {
    let (procs, conns) = (args.procs, args.conns);
    if procs > conns {
        return Err(format!(
            "--procs {procs} is more than --conns {conns}: every process needs a connection"
        ));
    }
    let hard = fd_budget().hard;
    let per_proc = hard.saturating_sub(SPARE_FDS).max(1);
    let share = conns.div_ceil(procs);
    if share > per_proc {
        return Err(format!(
            "{conns} connections over {procs} processes is {share} per process, more than \
             the open-file limit allows ({per_proc}: hard limit {hard} less {SPARE_FDS} \
             spare); use --procs {} or more, or raise the hard limit (ulimit -Hn)",
            conns.div_ceil(per_proc)
        ));
    }
    let sources = share.div_ceil(args.per_source) * procs;
    if sources > u64::from(MAX_SOURCES) {
        return Err(format!(
            "{sources} source addresses needed, 127.0.0.0/8 has {MAX_SOURCES}: raise --per-source"
        ));
    }
    Ok(())
}

/// Handles SIGINT, SIGTERM and SIGHUP on a thread of their own: the children are killed
/// by PID, then the process exits with 128 + the signal's number. Call it on the main
/// thread before any other thread starts, so that every thread has them blocked. Without
/// it (it failed) the default action applies and the children exit when their stdin ends.
pub(crate) fn watch_signals() {
    let signals = [Signal::INT, Signal::TERM, Signal::HUP];
    let fd = match SignalFd::new(&signals) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("loadgen idle: cannot watch signals ({e}); children exit with their stdin");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("loadgen-signals".into())
        .spawn(move || {
            let signal = match wait_signal(&fd) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("loadgen idle: waiting for signals failed: {e}");
                    return;
                }
            };
            eprintln!("loadgen idle: {signal}; killing the child processes");
            kill_children();
            std::process::exit(128 + signal.as_raw());
        });
    if let Err(e) = spawned {
        eprintln!("loadgen idle: cannot start the signal thread: {e}");
    }
}

/// Blocks until one of the signals of `fd` arrives.
fn wait_signal(fd: &SignalFd) -> std::io::Result<Signal> {
    let epoll = Epoll::new()?;
    epoll.add(fd.as_fd(), Interest::READABLE, 0)?;
    let mut events = Events::with_capacity(1);
    loop {
        epoll.wait(&mut events, None)?;
        if let Some(info) = fd.read()? {
            return Ok(info.signal);
        }
    }
}

/// Kills every child still running, by PID, and reaps it.
pub(crate) fn kill_children() {
    let mut children = CHILDREN.lock().unwrap_or_else(PoisonError::into_inner);
    for child in children.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
    children.clear();
}

/// Kills the children when the run ends early (an error returned, a panic).
struct KillOnDrop;

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_children();
    }
}

/// One child's part of the run.
#[derive(Debug, Clone, Copy)]
struct Share {
    conns: u64,
    /// Its first source address (an index: 0 is 127.0.0.2).
    source_base: u64,
}

/// Splits `conns` over `procs` processes, each with its own source addresses.
fn shares(conns: u64, procs: u64, per_source: u64) -> Vec<Share> {
    let mut base = 0;
    (0..procs)
        .map(|i| {
            let n = conns / procs + u64::from(i < conns % procs);
            let share = Share {
                conns: n,
                source_base: base,
            };
            base += n.div_ceil(per_source);
            share
        })
        .collect()
}

/// What the children say on stdout: `(child, line)`, `None` at its end.
type Lines = Receiver<(usize, Option<String>)>;

/// Runs `idle --procs P` (P > 1).
pub(crate) fn run(args: &IdleArgs, env: &Env) -> Result<Report, String> {
    let procs = args.procs as usize;
    let threads = env.threads.max(1) as u64;
    let batch = args
        .batch
        .unwrap_or_else(|| (TOTAL_BATCH / (args.procs * threads)).clamp(MIN_BATCH, DEFAULT_BATCH));
    let setup = args.setup_limit(env.timeout);
    let mut report = Report {
        mode: "idle",
        unit: "confirmed",
        addr: Some(env.target),
        size: Some(8),
        threads: env.threads,
        conns: Some(args.conns),
        procs: Some(args.procs),
        ..Report::default()
    };
    if let Some(pid) = args.pid {
        match rss_kib(pid) {
            Ok(kib) => report.rss_before_kib = Some(kib),
            Err(e) => report.notes.push(e),
        }
    }
    let _kill = KillOnDrop;
    let start = Instant::now();
    let (lines, stdins) = spawn_children(args, env, batch, setup)?;
    let mut state = Children::new(procs, lines);

    // 1. Every child opens its connections and says `held N`.
    state.collect_until(start + setup + MARGIN, |c| {
        c.held.iter().all(Option::is_some)
    });
    let connect = start.elapsed();
    if let Some(i) = (0..procs).find(|&i| state.held[i].is_none()) {
        let why = if state.ended[i] {
            "exited"
        } else {
            "did not finish its connect phase in time"
        };
        return Err(format!(
            "process {i} of {procs} {why} before holding its connections (its messages are above)"
        ));
    }
    let holding: u64 = state.held.iter().flatten().sum();
    eprintln!("loadgen idle: holding {holding} connections in {procs} processes");

    // 2. The hold, sampling memory; its last sample is the one reported.
    let hold_start = Instant::now();
    let hold_end = hold_start + args.hold;
    let mut samples = Vec::new();
    loop {
        let now = Instant::now();
        let step = SAMPLE_INTERVAL.min(hold_end.saturating_duration_since(now));
        state.collect_until(now + step, |_| false);
        samples.push((args.pid.map(rss_kib), children_rss_kib()));
        if Instant::now() >= hold_end {
            break;
        }
    }
    let held = hold_start.elapsed();

    // 3. Verification: each child verifies and reports.
    for (i, mut stdin) in stdins.into_iter().enumerate() {
        if stdin.write_all(b"verify\n").is_err() && !state.ended[i] {
            report
                .notes
                .push(format!("process {i}: could not be told to verify"));
        }
    }
    let verify_limit = args.verify_limit(env.timeout) + MARGIN;
    state.collect_until(Instant::now() + verify_limit, |c| {
        c.ended.iter().all(|&e| e)
    });
    let statuses = reap(Instant::now() + MARGIN);

    report.connect_secs = Some(connect.as_secs_f64());
    report.hold_secs = Some(held.as_secs_f64());
    if let Some((server, loadgen)) = samples.pop() {
        match server {
            Some(Ok(kib)) => report.rss_hold_kib = Some(kib),
            Some(Err(e)) => report.notes.push(e),
            None => {}
        }
        report.loadgen_rss_kib = Some(loadgen + rss_kib(std::process::id()).unwrap_or(0));
    }
    aggregate(&mut report, &state.reports, &statuses, connect);
    Ok(report)
}

/// Starts the children; returns their stdout lines (one reader thread each) and their
/// stdins.
fn spawn_children(
    args: &IdleArgs,
    env: &Env,
    batch: u64,
    setup: Duration,
) -> Result<(Lines, Vec<ChildStdin>), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
    let (tx, rx) = mpsc::channel();
    let mut stdins = Vec::new();
    for (i, share) in shares(args.conns, args.procs, args.per_source)
        .into_iter()
        .enumerate()
    {
        let mut cmd = Command::new(&exe);
        cmd.arg("idle")
            .args(["--addr", &env.target.to_string()])
            .args(["--conns", &share.conns.to_string()])
            .args(["--hold", &args.hold.as_secs_f64().to_string()])
            .args(["--setup-secs", &setup.as_secs_f64().to_string()])
            .args(["--batch", &batch.to_string()])
            .args(["--per-source", &args.per_source.to_string()])
            .args(["--source-base", &share.source_base.to_string()])
            .args(["--threads", &env.threads.to_string()])
            .args(["--timeout", &env.timeout.as_secs_f64().to_string()])
            .args(["--seed", &(env.seed ^ (i as u64 + 1)).to_string()])
            .args(["--child", "--json"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start child process {i}: {e}"))?;
        let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
            return Err(format!("child process {i} has no stdin or stdout pipe"));
        };
        CHILDREN
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(child);
        stdins.push(stdin);
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("loadgen-child-{i}"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((i, Some(line))).is_err() {
                        return;
                    }
                }
                let _ = tx.send((i, None));
            })
            .map_err(|e| format!("cannot start a thread to read child {i}: {e}"))?;
    }
    Ok((rx, stdins))
}

/// What the parent knows of its children.
struct Children {
    lines: Lines,
    /// `held N` said.
    held: Vec<Option<u64>>,
    /// Stdout ended.
    ended: Vec<bool>,
    /// The `--json` reports.
    reports: Vec<Option<LoadgenJson>>,
}

impl Children {
    fn new(procs: usize, lines: Lines) -> Children {
        Children {
            lines,
            held: vec![None; procs],
            ended: vec![false; procs],
            reports: vec![None; procs],
        }
    }

    /// Takes the children's lines until `done` holds (checked after each) or `deadline`.
    /// A child that ends before saying `held` ends the wait too.
    fn collect_until(&mut self, deadline: Instant, done: impl Fn(&Children) -> bool) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((i, Some(line))) => {
                    if let Some(n) = line.strip_prefix("held ") {
                        self.held[i] = Some(n.trim().parse().unwrap_or(0));
                    } else if let Some(r) = LoadgenJson::find_in(&line) {
                        self.reports[i] = Some(r);
                    }
                }
                Ok((i, None)) => {
                    self.ended[i] = true;
                    if self.held[i].is_none() {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => return,
                Err(RecvTimeoutError::Disconnected) => {
                    // Every child's stdout has ended: nothing more will come; the wait is
                    // still a wait (the hold goes on), not a spin.
                    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                    return;
                }
            }
            if done(self) {
                return;
            }
        }
    }
}

/// The summed VmRSS of the children still registered, KiB.
fn children_rss_kib() -> u64 {
    let children = CHILDREN.lock().unwrap_or_else(PoisonError::into_inner);
    children.iter().filter_map(|c| rss_kib(c.id()).ok()).sum()
}

/// Waits for every child to exit until `deadline` (killing the rest then); returns each
/// one's exit code (`None`: killed or killed by a signal).
fn reap(deadline: Instant) -> Vec<Option<i32>> {
    loop {
        let mut children = CHILDREN.lock().unwrap_or_else(PoisonError::into_inner);
        let all_done = children
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(Some(_))));
        if all_done || Instant::now() >= deadline {
            let codes = children
                .iter_mut()
                .map(|c| match c.try_wait() {
                    Ok(Some(status)) => status.code(),
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        None
                    }
                })
                .collect();
            children.clear();
            return codes;
        }
        drop(children);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sums the children's reports into `report`.
fn aggregate(
    report: &mut Report,
    reports: &[Option<LoadgenJson>],
    codes: &[Option<i32>],
    connect: Duration,
) {
    let (mut established, mut verified, mut verify) = (0, 0, 0.0f64);
    let mut failed = Vec::new();
    for (i, r) in reports.iter().enumerate() {
        let code = codes.get(i).copied().flatten();
        let Some(r) = r else {
            failed.push(format!(
                "process {i} printed no report (exit code {code:?})"
            ));
            continue;
        };
        established += r.established.unwrap_or(0);
        verified += r.verified_end.unwrap_or(0);
        verify = verify.max(r.verify_secs.unwrap_or(0.0));
        report.fd_limit = report.fd_limit.max(r.fd_limit);
        for (name, &n) in &r.errors {
            let kind = Fault::from_name(name).unwrap_or_else(|| {
                report.notes.push(format!(
                    "process {i}: unknown error kind `{name}` counted as io"
                ));
                Fault::Io
            });
            report.errors.add(kind, n);
        }
        report
            .notes
            .extend(r.notes.iter().map(|n| format!("process {i}: {n}")));
        if let Some(f) = &r.failure {
            failed.push(format!("process {i}: {f}"));
        } else if r.verification_failed {
            failed.push(format!("process {i}: verification failed"));
        } else if code != Some(0) && r.error_total == 0 {
            failed.push(format!("process {i} exited with code {code:?}"));
        }
    }
    let secs = connect.as_secs_f64();
    report.established = Some(established);
    report.msgs = Some(established);
    report.elapsed_secs = Some(secs);
    report.msgs_per_sec = (secs > 0.0).then(|| established as f64 / secs);
    report.setup_per_sec = report.msgs_per_sec;
    report.verified_end = Some(verified);
    report.verify_secs = Some(verify);
    if let (Some(before), Some(hold)) = (report.rss_before_kib, report.rss_hold_kib) {
        if established > 0 {
            let delta = hold as f64 - before as f64;
            report.rss_per_conn_bytes = Some(delta * 1024.0 / established as f64);
        }
    }
    let conns = report.conns.unwrap_or(0);
    if established < conns {
        report
            .notes
            .push(format!("{established} of {conns} connections confirmed"));
    }
    if verified < established {
        report.notes.push(format!(
            "{verified} of {established} confirmed connections echoed again at the end of the hold"
        ));
    }
    if !failed.is_empty() {
        report.failure = Some(failed.join("; "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_connection_with_disjoint_sources() {
        let s = shares(1_000_001, 53, 10_000);
        assert_eq!(s.iter().map(|s| s.conns).sum::<u64>(), 1_000_001);
        assert!(s.iter().all(|s| s.conns.abs_diff(1_000_001 / 53) <= 1));
        for w in s.windows(2) {
            assert_eq!(
                w[1].source_base,
                w[0].source_base + w[0].conns.div_ceil(10_000)
            );
        }
    }
}
