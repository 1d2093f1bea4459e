//! One run: a fresh server, `loadgen` against it, the server's CPU time, and the lines
//! printed as runs finish.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use duo_testkit::loadgen_json::LoadgenJson;

use super::outcome::{fmt_rate, fmt_us, Outcome, Run};
use super::scenarios::{Entrant, Scenario};
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
}

/// Starts `entrant`, runs the scenario's `loadgen` against it and stops it; `tag` names
/// the logs.
pub(super) fn run_one(sc: &Scenario, entrant: &Entrant, tag: &str, set: &Setting<'_>) -> Run {
    let server_log = set.logs.join(format!("{tag}.server.log"));
    let server = match Server::start(tag, &entrant.exe, &entrant.args, &server_log) {
        Ok(s) => s,
        Err(e) => {
            return Run {
                result: Err(e),
                cpu: Duration::ZERO,
            }
        }
    };
    let mut cmd = loadgen_command(sc, &server, set);
    let before = server.cpu_time();
    let ran = run_bounded(
        &mut cmd,
        Duration::from_secs(set.secs + 120),
        &set.logs.join(format!("{tag}.loadgen.log")),
    );
    let after = server.cpu_time();
    let mut cpu = match (after, before) {
        (Ok(a), Ok(b)) => a.saturating_sub(b),
        _ => Duration::ZERO,
    };
    let result = ran.and_then(|(ok, out)| {
        let mut report = LoadgenJson::find_in(&out)
            .ok_or_else(|| format!("loadgen printed no JSON (see logs/{tag}.loadgen.log)"))?;
        if ok {
            if let Some(secs) = report.server_cpu_secs {
                cpu = Duration::from_secs_f64(secs);
            }
        } else {
            report.verification_failed = true;
        }
        Ok(report)
    });
    drop(server);
    Run { result, cpu }
}

/// The `loadgen` command line of `sc` against `server`.
fn loadgen_command(sc: &Scenario, server: &Server, set: &Setting<'_>) -> Command {
    let mut cmd = Command::new(set.release.join("loadgen"));
    cmd.arg(sc.mode)
        .args(["--addr", &server.addr().to_string()])
        .args(sc.args)
        .arg("--json");
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
    match &r.result {
        Ok(_) => println!(
            "   {server:<16} #{rep}  rate {:>12}  server CPU/op {:>9}  errors {}{}",
            fmt_rate(r.rate()),
            fmt_us(r.cpu_per_op_us()),
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
        "   {:<10} median  rate {:>12}  server CPU/op {:>9}  errors {}",
        o.server,
        fmt_rate(o.rate()),
        fmt_us(o.cpu_per_op_us()),
        o.errors()
    );
}
