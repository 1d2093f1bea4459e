//! One run: a fresh server, `loadgen` against it, the server's CPU time, and the lines
//! printed as runs finish.

use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use duo_testkit::loadgen_json::LoadgenJson;
use duo_testkit::pg::PgCluster;

use super::outcome::{fmt_rate, fmt_steal, fmt_us, Outcome, Run};
use super::pg::{run_pgbench, PhaseCpu, RunDatabase, Sampler};
use super::scenarios::{Entrant, Scenario, Target};
use super::steal::StealMeter;
use crate::process::{run_bounded, Server};

/// Where and how long runs go.
pub(super) struct Setting<'a> {
    /// Seconds of measured load per run.
    pub(super) secs: u64,
    /// A short version (`--quick`).
    pub(super) quick: bool,
    /// The release binaries.
    pub(super) release: &'a Path,
    /// Where server and `loadgen` logs go.
    pub(super) logs: &'a Path,
    /// When a run spoiled by steal time is repeated.
    pub(super) steal: StealPolicy,
}

/// When a run spoiled by the hypervisor's steal time is repeated.
#[derive(Clone, Copy)]
pub(super) struct StealPolicy {
    /// Steal above this (% of the machine's CPU time over the run) spoils a run.
    pub(super) max_pct: f64,
    /// Extra attempts at most.
    pub(super) retries: u32,
}

/// Starts `entrant`, runs the scenario's `loadgen` against it and stops it; `tag` names
/// the logs. The PostgreSQL scenarios run on `pg`: the bank on a database made for the
/// run, with the CPU of its processes and of the database server sampled (see
/// [`super::pg`]); `pgbench` instead of `loadgen` for the baseline.
pub(super) fn run_one(
    sc: &Scenario,
    entrant: &Entrant,
    tag: &str,
    set: &Setting<'_>,
    pg: Option<&PgCluster>,
) -> Run {
    match (sc.target, pg) {
        (Target::PgBench, Some(pg)) => run_pgbench(pg, tag, set),
        (Target::BankPg { .. }, Some(pg)) => match RunDatabase::create(pg) {
            // The database outlives the server (dropped first, in `run_server`).
            Ok(db) => {
                let mut args = entrant.args.clone();
                args.extend(["--db".into(), db.url()]);
                run_server(sc, entrant, &args, tag, set, pg.postmaster_pid())
            }
            Err(e) => Run::failed(e),
        },
        (target, None) if target.on_postgres() => {
            Run::failed("no PostgreSQL cluster for this scenario".into())
        }
        _ => run_server(sc, entrant, &entrant.args, tag, set, None),
    }
}

/// [`run_one`] with the server's arguments; with `postmaster`, the CPU time of the
/// server's and the database's process trees over the measured phase is sampled.
fn run_server(
    sc: &Scenario,
    entrant: &Entrant,
    args: &[String],
    tag: &str,
    set: &Setting<'_>,
    postmaster: Option<u32>,
) -> Run {
    let server_log = set.logs.join(format!("{tag}.server.log"));
    let mut server = match Server::start(tag, &entrant.exe, args, &server_log) {
        Ok(s) => s,
        Err(e) => return Run::failed(e),
    };
    let sampler = postmaster.map(|pm| Sampler::start(Some(server.pid()), pm));
    let mut cmd = loadgen_command(sc, &server, set);
    let before = server.cpu_time();
    let steal = StealMeter::start();
    let ran = run_bounded(
        &mut cmd,
        Duration::from_secs(set.secs + 120),
        &set.logs.join(format!("{tag}.loadgen.log")),
    );
    let steal_pct = steal.finish();
    let after = server.cpu_time();
    let whole_run = match (after, before) {
        (Ok(a), Ok(b)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    let mut run = loadgen_run(sc.mode, ran, whole_run, tag);
    run.steal_pct = steal_pct;
    if let Some(sampler) = sampler {
        let phase = run.result.as_ref().ok().and_then(|j| j.elapsed_secs);
        charge_phase(&mut run, sampler.finish(phase.map(Duration::from_secs_f64)));
    }
    let exited = server.exited();
    drop(server);
    server_ended(run, exited, tag)
}

/// The run of a `loadgen` in `mode` that ended as `ran`: its report (or why there is
/// none), and the server CPU time it is charged (`whole_run`: the server's CPU time over
/// all of `loadgen`'s run, set-up included); `tag` names the logs.
pub(super) fn loadgen_run(
    mode: &str,
    ran: Result<(bool, String), String>,
    whole_run: Option<Duration>,
    tag: &str,
) -> Run {
    let result = ran.and_then(|(ok, out)| {
        let mut report = LoadgenJson::find_in(&out)
            .ok_or_else(|| format!("loadgen printed no JSON (see logs/{tag}.loadgen.log)"))?;
        if let Some(failure) = &report.failure {
            // The run could not do its job (no connection ever established, its hard time
            // limit hit): a report all the same, but no measurement.
            return Err(format!("loadgen: {failure} (see logs/{tag}.loadgen.log)"));
        }
        if report.work().unwrap_or(0) == 0 {
            // Not one unit of work (a server that accepts and never answers): a rate of 0
            // and no CPU per operation are no measurement.
            let errors: Vec<String> = report
                .errors
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            return Err(format!(
                "loadgen measured no work (errors: {}; see logs/{tag}.loadgen.log)",
                if errors.is_empty() {
                    "none".into()
                } else {
                    errors.join(", ")
                }
            ));
        }
        if !ok {
            report.verification_failed = true;
        }
        Ok(report)
    });
    let cpu = if mode == "idle" {
        // No measured phase (nor `--server-pid`): the whole run is what there is.
        whole_run
    } else {
        // The measured phase alone, as loadgen sampled it (also when it exited non-zero);
        // without that figure there is none: the whole run includes the set-up.
        result
            .as_ref()
            .ok()
            .and_then(|j| j.server_cpu_secs)
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
    };
    Run {
        result,
        cpu,
        db_cpu: None,
        steal_pct: None,
        attempts: 1,
        steal_high: false,
        server_exited: false,
    }
}

/// `run`, failed when its server had already ended (`exited`, its status) when `loadgen`
/// did: what loadgen measured then is not the server's figure (a crash shows only as
/// connections lost), and a server that dies under load is what the bench must report.
pub(super) fn server_ended(mut run: Run, exited: Option<ExitStatus>, tag: &str) -> Run {
    if let Some(status) = exited {
        run.server_exited = true;
        run.result = Err(format!(
            "the server exited during the run ({status}; see logs/{tag}.server.log)"
        ));
    }
    run
}

/// Charges `run` (on PostgreSQL) with the CPU time of the front-end's processes and of
/// the database server over the measured phase, as the [`Sampler`] found it.
pub(super) fn charge_phase(run: &mut Run, phase_cpu: Option<PhaseCpu>) {
    // The front-end's processes over the same window as the database's.
    // Not sampled is unknown, not free.
    run.cpu = phase_cpu.and_then(|c| c.front);
    run.db_cpu = phase_cpu.map(|c| c.db);
}

/// The `loadgen` command line of `sc` against `server`.
fn loadgen_command(sc: &Scenario, server: &Server, set: &Setting<'_>) -> Command {
    let mut cmd = Command::new(set.release.join("loadgen"));
    cmd.arg(sc.mode)
        .args(["--addr", server.announced()])
        .args(sc.args)
        .arg("--json");
    if sc.target == Target::EchoTls {
        let (_, _, ca) = super::scenarios::tls_files();
        cmd.arg("--tls-ca").arg(ca);
    }
    if sc.mode == "idle" {
        let hold = if set.quick { 1 } else { set.secs.min(5) };
        cmd.args([
            "--hold",
            &hold.to_string(),
            "--pid",
            &server.pid().to_string(),
        ]);
        if set.quick {
            // A short version: fewer connections.
            cmd.args(["--conns", "2000"]);
        }
    } else {
        // loadgen samples the server's CPU over the measured phase alone: set-up
        // (connecting, the bank's argon2 logins) would otherwise be charged to it.
        cmd.args(["--secs", &set.secs.to_string()])
            .args(["--server-pid", &server.pid().to_string()]);
    }
    cmd
}

/// One line per run, as it finishes.
pub(super) fn print_run(server: &str, rep: usize, r: &Run) {
    let tail = match (r.get(|j| j.p99_us), r.get(|j| j.p999_us)) {
        (Some(p99), Some(p999)) if r.get(|j| Some(j.mode == "rr")) == Some(true) => {
            format!("  p99 {p99:.0} µs  p99.9 {p999:.0} µs")
        }
        _ => String::new(),
    };
    let attempts = match (r.attempts, r.steal_high) {
        (1, _) => String::new(),
        (n, false) => format!(" (attempt {n})"),
        (n, true) => format!(" (HIGH in all {n} attempts, least kept)"),
    };
    match &r.result {
        Ok(_) => println!(
            "   {server:<16} #{rep}  rate {:>12}  server CPU/op {:>9}{}{tail}  \
             steal {:>6}{attempts}  errors {}{}",
            fmt_rate(r.rate()),
            fmt_us(r.cpu_per_op_us()),
            r.db_cpu.map_or(String::new(), |_| format!(
                "  database CPU/op {:>9}",
                fmt_us(r.db_cpu_per_op_us())
            )),
            fmt_steal(r.steal_pct),
            r.errors(),
            if r.verification_failed() {
                "  VERIFICATION FAILED"
            } else {
                ""
            }
        ),
        Err(e) => println!("   {server:<16} #{rep}  FAILED: {e}"),
    }
}

/// One line per server with the medians over its repetitions.
pub(super) fn print_outcome(o: &Outcome) {
    println!(
        "   {:<16} median  rate {:>12}  server CPU/op {:>9}  steal {:>6}  errors {}",
        o.server,
        fmt_rate(o.rate()),
        fmt_us(o.cpu_per_op_us()),
        fmt_steal(o.steal_stats().map(|s| s.median)),
        o.errors()
    );
}
