//! `cargo xtask bench`: the micro-benchmarks, then every scenario against every server,
//! one table, with ratios.
//!
//! Micro-benchmarks: the criterion benches of `duo-benches` (`benches/benches/*.rs`), run
//! with `cargo bench`; their medians are read back from `target/criterion` ([`micro`]).
//!
//! Servers: duo's `echo` as a single reactor and with 1 and 2 I/O threads, and the two
//! peers built in the same workspace, `raw_epoll_echo` (one thread, level-triggered, libc
//! epoll: "close to the limit") and `tokio_echo` (the idiomatic Rust peer). Each scenario
//! starts a fresh server, runs `loadgen` against it, which samples the server's CPU time
//! (`utime + stime` from `/proc/PID/stat`) over the measured phase alone (connecting and
//! logging in excluded), and stops it. Throughput on this kind of shared machine swings
//! 30-50 % between runs; CPU time per message holds within about 10 %, so the report
//! gives both and ranks by the latter.
//!
//! The bank runs on SQLite (`bank-group`, `bank-single`) and on PostgreSQL
//! (`bank-pg-group`, `bank-pg-group-2` with 2 front-end processes, `bank-pg-single`),
//! where PostgreSQL's own `pgbench` on the same cluster (`bank-pg-pgbench`, run whenever
//! one of those is) is the baseline, and the CPU time of the front-end's processes and of
//! the database server is reported per transfer ([`pg`]). Where PostgreSQL is not
//! installed those are skipped with one line, unless `CI` is set.
//!
//! Every run records the hypervisor's steal time over it ([`steal`]): a run where it
//! exceeds `--max-steal` (5 % by default) is made again at once, up to twice (once with
//! `--quick`), and the attempt with the least steal is kept when all were high.
//!
//! The bench fails (exit status 1, after writing its report) when a run could not be made,
//! measured no work, ended with its server gone, or whose `loadgen` could not do its job
//! (its report's `failure`), and when a run's verification failed (an echo that differed,
//! the bank's money not conserved): such runs are shown in the report, not passed over.

#[cfg(test)]
mod harness_combos;
mod micro;
mod outcome;
mod pg;
mod report;
#[cfg(test)]
mod review_round11;
#[cfg(test)]
mod review_round8;
mod runner;
mod scenarios;
mod steal;

use std::path::Path;

use clap::Args;
use duo_testkit::pg::PgCluster;

use self::micro::Estimate;
use self::outcome::{Outcome, Run};
use self::report::{Header, Results};
use self::runner::{Setting, StealPolicy};
use self::scenarios::{Scenario, Target, MICRO, SCENARIOS};
use crate::report::{create_dir, machine, unix_now, write};
use crate::{build_release_bins, target_dir, Failure};

/// Options of `cargo xtask bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// A short version of everything (1 s per run, one repetition, short criterion runs).
    #[arg(long)]
    quick: bool,
    /// Only the micro-benchmarks and scenarios whose name starts with NAME.
    #[arg(long, value_name = "NAME")]
    only: Option<String>,
    /// Seconds of load per run, 1 to 86400 [default: 10, 1 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
    secs: Option<u64>,
    /// Interleaved repetitions of every run, 1 to 1000 [default: 3, 1 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_REPS))]
    reps: Option<u64>,
    /// Repeat a run whose hypervisor steal time exceeded PCT % of the machine's CPU time
    /// (at most 2 more attempts, 1 with --quick).
    #[arg(long, value_name = "PCT", default_value_t = DEFAULT_MAX_STEAL_PCT)]
    max_steal: f64,
}

/// The most `--secs` and `--reps` take (a day; a thousand): beyond, the runs' time bounds
/// would overflow.
const MAX_SECS: u64 = 86_400;
const MAX_REPS: u64 = 1000;
/// Steal time above which a run is repeated, % of the machine's CPU time.
const DEFAULT_MAX_STEAL_PCT: f64 = 5.0;
/// Extra attempts of a run spoiled by steal (`--quick`: one).
const STEAL_RETRIES: u32 = 2;
const STEAL_RETRIES_QUICK: u32 = 1;

impl BenchArgs {
    fn selected(&self, name: &str) -> bool {
        self.only.as_deref().is_none_or(|o| name.starts_with(o))
    }

    /// The command line, for the report.
    fn command(&self) -> String {
        let mut c = "cargo xtask bench".to_owned();
        if self.quick {
            c.push_str(" --quick");
        }
        if let Some(r) = self.reps {
            c.push_str(&format!(" --reps {r}"));
        }
        if let Some(o) = &self.only {
            c.push_str(&format!(" --only {o}"));
        }
        if let Some(s) = self.secs {
            c.push_str(&format!(" --secs {s}"));
        }
        if self.max_steal != DEFAULT_MAX_STEAL_PCT {
            c.push_str(&format!(" --max-steal {}", self.max_steal));
        }
        c
    }

    /// Whether this is a full run, the kind that rewrites `docs/benchmarks.md`.
    fn full(&self) -> bool {
        !self.quick && self.only.is_none() && self.secs.is_none() && self.reps.is_none()
    }

    /// When runs are repeated for steal.
    fn steal_policy(&self) -> StealPolicy {
        StealPolicy {
            max_pct: self.max_steal,
            retries: if self.quick {
                STEAL_RETRIES_QUICK
            } else {
                STEAL_RETRIES
            },
        }
    }
}

/// Runs `cargo xtask bench`.
pub(crate) fn bench(opts: BenchArgs) -> Result<(), Failure> {
    check_only(&opts)?;
    if !(opts.max_steal.is_finite() && opts.max_steal >= 0.0) {
        return Err(Failure::Usage(format!(
            "--max-steal must be a percentage (0 or more), not {}",
            opts.max_steal
        )));
    }
    let out_dir = target_dir().join("bench");
    let mut micro = Vec::new();
    for m in MICRO.iter().filter(|m| opts.selected(m.name)) {
        println!("\n## {} — {}\n", m.name, m.about);
        micro.extend(micro::run_micro(m, opts.quick)?);
    }
    let micro_md = if micro.is_empty() {
        String::new()
    } else {
        let md = micro::table(&micro);
        println!("\nmicro-benchmarks (criterion medians):\n\n{md}");
        md
    };
    let mut scenarios: Vec<&Scenario> =
        SCENARIOS.iter().filter(|s| opts.selected(s.name)).collect();
    if scenarios.is_empty() {
        create_dir(&out_dir)?;
        return write(&out_dir.join("micro.md"), &micro_md);
    }
    let release = build_release_bins()?;
    let mut skipped = Vec::new();
    let pg = postgres_scenarios(&mut scenarios, &release, opts.quick, &mut skipped)?;
    let logs = out_dir.join("logs");
    create_dir(&logs)?;
    let secs = opts.secs.unwrap_or(if opts.quick { 1 } else { 10 });
    let reps = opts
        .reps
        .map_or(if opts.quick { 1 } else { 3 }, |r| r as usize);
    let set = Setting {
        secs,
        quick: opts.quick,
        release: &release,
        logs: &logs,
        steal: opts.steal_policy(),
    };
    let fd_limit = raise_fd_limit();
    let mut results = Vec::new();
    for sc in scenarios {
        let outcomes = run_scenario(sc, reps, fd_limit, &set, &out_dir, pg.as_ref())?;
        results.push((sc, outcomes));
    }
    drop(pg);
    let (machine, command) = (machine(), opts.command());
    let header = Header {
        command: &command,
        machine: &machine,
        secs,
        reps,
        skipped: &skipped,
        steal: set.steal,
    };
    let md = write_reports(&out_dir, &results, &micro, &micro_md, &header)?;
    if opts.full() {
        report::update_docs(&md)?;
        println!("docs/benchmarks.md updated with this run");
    }
    failed_runs(&results)
}

/// Prepares the PostgreSQL scenarios among `scenarios`: adds the `pgbench` baseline when
/// a bank one is there, and starts the cluster they share. Leaves them out, with a note
/// in `skipped`, where PostgreSQL is absent (an error under CI, see
/// [`pg::start_cluster`]); leaves out the one with 2 front-end processes when this
/// `bank` has no `serve --processes` yet.
fn postgres_scenarios(
    scenarios: &mut Vec<&Scenario>,
    release: &Path,
    quick: bool,
    skipped: &mut Vec<String>,
) -> Result<Option<PgCluster>, Failure> {
    let bank_pg = |sc: &Scenario| matches!(sc.target, Target::BankPg { .. });
    let several =
        |sc: &Scenario| matches!(sc.target, Target::BankPg { processes, .. } if processes > 1);
    let pgbench = |sc: &Scenario| sc.target == Target::PgBench;
    if !scenarios.iter().any(|s| bank_pg(s) || pgbench(s)) {
        return Ok(None);
    }
    if scenarios.iter().any(|s| bank_pg(s)) && !scenarios.iter().any(|s| pgbench(s)) {
        scenarios.extend(SCENARIOS.iter().filter(|s| pgbench(s)));
    }
    if scenarios.iter().any(|s| several(s)) && !pg::bank_has_processes(release) {
        let names: Vec<&str> = scenarios
            .iter()
            .filter(|s| several(s))
            .map(|s| s.name)
            .collect();
        let note = format!(
            "{}: this `bank serve` has no `--processes` (several front-end processes) yet",
            names.join(", ")
        );
        println!("\nskipped {note}");
        skipped.push(note);
        scenarios.retain(|s| !several(s));
    }
    let names: Vec<&str> = scenarios
        .iter()
        .filter(|s| s.target.on_postgres())
        .map(|s| s.name)
        .collect();
    let pg = pg::start_cluster(&names, quick)?;
    if pg.is_none() {
        skipped.push(format!("{}: PostgreSQL not found", names.join(", ")));
        scenarios.retain(|sc| !sc.target.on_postgres());
    }
    Ok(pg)
}

/// `--only` must name something.
fn check_only(opts: &BenchArgs) -> Result<(), Failure> {
    let Some(only) = &opts.only else {
        return Ok(());
    };
    let known: Vec<&str> = MICRO
        .iter()
        .map(|m| m.name)
        .chain(SCENARIOS.iter().map(|s| s.name))
        .collect();
    // (An empty name would match everything: a full run, and one whose report would
    // say `--only ` for it.)
    if !only.is_empty() && known.iter().any(|k| k.starts_with(only.as_str())) {
        Ok(())
    } else {
        Err(Failure::Usage(format!(
            "no benchmark or scenario named `{only}` (known: {})",
            known.join(", ")
        )))
    }
}

/// Raises this process's open-file limit (the servers and `loadgen` inherit it); returns
/// it.
fn raise_fd_limit() -> u64 {
    let limit = match duo_sys::raise_fd_limit() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("warning: cannot raise the open-file limit: {e}");
            duo_sys::fd_limit().map(|l| l.0).unwrap_or(1024)
        }
    };
    println!("\nopen-file limit for the servers and the load generator: {limit}");
    limit
}

/// Runs one scenario: every server in turn, `reps` times (interleaved, so that a slow
/// spell of the machine hits all of them rather than one).
fn run_scenario(
    sc: &Scenario,
    reps: usize,
    fd_limit: u64,
    set: &Setting<'_>,
    out_dir: &Path,
    pg: Option<&PgCluster>,
) -> Result<Vec<Outcome>, Failure> {
    println!("\n== {} ({})", sc.name, sc.about);
    if sc.conns + 64 > fd_limit {
        println!(
            "   note: needs about {} descriptors per process, limit is {fd_limit}; \
             the load generator reports how many it got",
            sc.conns + 64
        );
    }
    // `bank-PID-...`: those of benches killed before they removed theirs go at the next.
    crate::process::remove_left_behind(out_dir, "bank-");
    let db_dir = out_dir.join(format!(
        "bank-{}-{}-{}",
        std::process::id(),
        sc.name,
        unix_now()
    ));
    let entrants = scenarios::entrants(sc, set.release, &db_dir);
    let mut outcomes: Vec<Outcome> = entrants
        .iter()
        .map(|e| Outcome {
            server: e.name.to_owned(),
            duo: e.duo,
            runs: Vec::new(),
        })
        .collect();
    // On SQLite; on PostgreSQL, the runner makes a database per run.
    let bank = matches!(sc.target, Target::Bank(_));
    for rep in 0..reps {
        for (entrant, outcome) in entrants.iter().zip(&mut outcomes) {
            let fresh_db = || {
                if bank {
                    // A fresh database per run.
                    let _ = std::fs::remove_dir_all(&db_dir);
                    create_dir(&db_dir)?;
                }
                Ok(())
            };
            let run = run_attempts(sc, entrant, rep, set, pg, fresh_db)?;
            runner::print_run(entrant.name, rep, &run);
            outcome.runs.push(run);
        }
    }
    if bank {
        let _ = std::fs::remove_dir_all(&db_dir);
    }
    if reps > 1 {
        outcomes.iter().for_each(runner::print_outcome);
    }
    Ok(outcomes)
}

/// One run of `entrant`, made again at once (before the next server's, so that the
/// repetitions stay interleaved) while the hypervisor's steal time spoils it: see
/// [`until_steal_low`].
fn run_attempts(
    sc: &Scenario,
    entrant: &scenarios::Entrant,
    rep: usize,
    set: &Setting<'_>,
    pg: Option<&PgCluster>,
    fresh_db: impl Fn() -> Result<(), Failure>,
) -> Result<Run, Failure> {
    let policy = set.steal;
    until_steal_low(policy, |attempt, previous| {
        if let Some(prev) = previous {
            println!(
                "   {:<16} #{rep}  steal {} > {} %: repeating (attempt {attempt} of {})",
                entrant.name,
                outcome::fmt_steal(prev.steal_pct),
                policy.max_pct,
                policy.retries + 1
            );
        }
        fresh_db()?;
        let tag = match attempt {
            1 => format!("{}-{}-{rep}", sc.name, entrant.name),
            n => format!("{}-{}-{rep}-attempt{n}", sc.name, entrant.name),
        };
        Ok(runner::run_one(sc, entrant, &tag, set, pg))
    })
}

/// Makes a run with `attempt(n, previous spoiled attempt)` until one's steal is at most
/// `policy.max_pct`, `policy.retries` more times at most. Keeps the first attempt under
/// the threshold, else the one with the least steal, marked `steal_high`; `attempts`
/// counts them all. A run that failed, or whose steal is unknown, is not repeated; a
/// repetition that failed leaves the spoiled attempts' least, a measurement all the same,
/// unless its server died during it: that crash is the run's result (it fails the bench).
fn until_steal_low(
    policy: StealPolicy,
    mut attempt: impl FnMut(u32, Option<&Run>) -> Result<Run, Failure>,
) -> Result<Run, Failure> {
    let steal = |r: &Run| r.steal_pct.unwrap_or(f64::INFINITY);
    let mut best: Option<Run> = None;
    let mut last: Option<Run> = None;
    for n in 1..=policy.retries.saturating_add(1) {
        let mut run = attempt(n, last.as_ref())?;
        run.attempts = n;
        let high = run.result.is_ok() && run.steal_pct.is_some_and(|s| s > policy.max_pct);
        if let Some(prev) = last.take() {
            if best.as_ref().is_none_or(|b| steal(&prev) < steal(b)) {
                best = Some(prev);
            }
        }
        if !high {
            return Ok(match best {
                Some(mut b) if run.result.is_err() && !run.server_exited => {
                    b.attempts = n;
                    b.steal_high = true;
                    b
                }
                _ => run,
            });
        }
        last = Some(run);
    }
    let mut kept = match (best, last) {
        (Some(b), Some(l)) if steal(&b) <= steal(&l) => b,
        (_, Some(l)) => l,
        (b, None) => b.unwrap_or_else(|| Run::failed("no attempt was made".into())),
    };
    kept.attempts = policy.retries.saturating_add(1);
    kept.steal_high = true;
    Ok(kept)
}

/// Writes `report.md`, `report.json` and the charts; prints the report. Returns the
/// markdown of the scenarios (what goes into `docs/benchmarks.md`).
fn write_reports(
    out_dir: &Path,
    results: &Results<'_>,
    micro: &[Estimate],
    micro_md: &str,
    header: &Header<'_>,
) -> Result<String, Failure> {
    let md = report::scenarios_md(results, header);
    let full_md = if micro_md.is_empty() {
        md.clone()
    } else {
        format!("Micro-benchmarks (criterion medians):\n\n{micro_md}\n{md}")
    };
    write(&out_dir.join("report.md"), &full_md)?;
    let json = report::report_json(results, micro, header);
    write(
        &out_dir.join("report.json"),
        &serde_json::to_string_pretty(&json).unwrap_or_default(),
    )?;
    report::write_charts(out_dir, results)?;
    println!("\n{md}");
    println!("report: {}", out_dir.join("report.md").display());
    Ok(md)
}

/// An error naming every run that could not be made at all (also one whose `loadgen`
/// could not do its job, or whose server died), and every one whose verification failed
/// (an echo that differed, money not conserved): measured, and in the report, but a
/// bench with such a run does not pass.
fn failed_runs(results: &Results<'_>) -> Result<(), Failure> {
    let named = |pick: fn(&Outcome) -> bool| -> Vec<String> {
        results
            .iter()
            .flat_map(|(sc, os)| {
                os.iter()
                    .filter(move |o| pick(o))
                    .map(move |o| format!("{} on {}", sc.name, o.server))
            })
            .collect()
    };
    let failed = named(|o| o.failure().is_some());
    let unverified = named(Outcome::verification_failed);
    let mut why = Vec::new();
    if !failed.is_empty() {
        why.push(format!("runs that failed: {}", failed.join(", ")));
    }
    if !unverified.is_empty() {
        why.push(format!(
            "runs whose verification failed: {}",
            unverified.join(", ")
        ));
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(Failure::Run(why.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duo_testkit::loadgen_json::LoadgenJson;

    fn run_with_steal(pct: f64) -> Run {
        let mut r = Run::failed(String::new());
        r.result = Ok(LoadgenJson::default());
        r.steal_pct = Some(pct);
        r
    }

    fn attempts(policy: StealPolicy, steals: &[f64]) -> (Run, Vec<u32>) {
        let mut made = Vec::new();
        let run = until_steal_low(policy, |n, prev| {
            assert_eq!(prev.is_some(), n > 1);
            made.push(n);
            Ok(run_with_steal(steals[n as usize - 1]))
        })
        .unwrap_or_else(|_| panic!("the attempts do not fail"));
        (run, made)
    }

    const POLICY: StealPolicy = StealPolicy {
        max_pct: 5.0,
        retries: 2,
    };

    #[test]
    fn a_clean_run_is_kept_at_once() {
        let (run, made) = attempts(POLICY, &[1.0]);
        assert_eq!(made, [1]);
        assert_eq!((run.attempts, run.steal_high), (1, false));
    }

    #[test]
    fn a_spoiled_run_is_made_again_until_clean() {
        let (run, made) = attempts(POLICY, &[9.0, 4.0]);
        assert_eq!(made, [1, 2]);
        assert_eq!((run.attempts, run.steal_high), (2, false));
        assert_eq!(run.steal_pct, Some(4.0));
    }

    #[test]
    fn when_every_attempt_is_spoiled_the_least_is_kept_and_marked() {
        let (run, made) = attempts(POLICY, &[9.0, 6.0, 12.0]);
        assert_eq!(made, [1, 2, 3]);
        assert_eq!((run.attempts, run.steal_high), (3, true));
        assert_eq!(run.steal_pct, Some(6.0));
        let no_retry = StealPolicy {
            max_pct: 5.0,
            retries: 0,
        };
        let (run, made) = attempts(no_retry, &[9.0]);
        assert_eq!(made, [1]);
        assert_eq!((run.attempts, run.steal_high), (1, true));
    }

    #[test]
    fn failed_or_unmeasured_runs_are_not_repeated() {
        let run = until_steal_low(POLICY, |_, _| {
            let mut r = Run::failed("refused".into());
            r.steal_pct = Some(50.0);
            Ok(r)
        })
        .unwrap_or_else(|_| panic!("the attempts do not fail"));
        assert_eq!((run.attempts, run.steal_high), (1, false));
        let run = until_steal_low(POLICY, |_, _| {
            let mut r = run_with_steal(0.0);
            r.steal_pct = None;
            Ok(r)
        })
        .unwrap_or_else(|_| panic!("the attempts do not fail"));
        assert_eq!(run.attempts, 1);
    }
}
