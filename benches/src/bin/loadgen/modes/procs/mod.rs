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

mod children;

use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use duo_testkit::loadgen_json::LoadgenJson;

use self::children::{children_rss_kib, reap, Children, KillOnDrop, Lines, CHILDREN};
pub(crate) use self::children::{kill_children, watch_signals};
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
        addr: Some(env.target.to_string()),
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

    // 1. Every child opens its connections and says `held N` (or dies: then the run
    // fails at once rather than at the end of the set-up limit).
    state.collect_until(start + setup + MARGIN, |c| {
        c.held
            .iter()
            .zip(&c.ended)
            .all(|(held, &ended)| held.is_some() || ended)
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
