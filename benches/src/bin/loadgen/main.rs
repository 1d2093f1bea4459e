//! `loadgen`: the load generator of duo's benchmarks (loopback only).
//!
//! ```text
//! loadgen pingpong --addr 127.0.0.1:7000 --conns 100 --size 16384 --secs 10 [--threads 2]
//! loadgen rr       --addr 127.0.0.1:7000 --conns 100 --size 64 --secs 10
//! loadgen rr       --addr 127.0.0.1:7000 --conns 100 --size 64 --secs 10 --rate 20000
//! loadgen rr --udp --addr 127.0.0.1:7000 --conns 100 --size 64 --secs 10
//! loadgen idle     --addr 127.0.0.1:7000 --conns 10000 --hold 5 [--pid SERVER_PID] [--procs P]
//! loadgen churn    --addr 127.0.0.1:7000 --conns 50 --secs 10 [--reconnect]
//! loadgen bank     --addr 127.0.0.1:7100 --clients 100 --accounts 50 --secs 10
//! ... [--json] [--strict] [--timeout SECS] [--seed N] [--tls-ca PEM]
//! ```
//!
//! Each of `--threads` threads runs its own epoll loop ([`engine::Engine`], on
//! `duo_sys::Epoll`) over its share of non-blocking connections; the modes
//! ([`modes`]) only supply the protocol of one connection ([`engine::Session`]). Errors are
//! counted by kind and always reported; the exit code is 1 when verification failed (an
//! echoed byte differs, bank money not conserved), when the run could not do its job (no
//! connection was ever established, the bank's set-up failed, a child of `idle --procs`
//! died: the `failure`, also on stderr and, with `--json`, in a report all the same) or,
//! with `--strict`, on any error; 2 on bad usage, such as an address that is not
//! loopback. Every run ends within a hard time limit (see [`cli::Mode::hard_limit`]),
//! whatever the server does.
//!
//! `rr --rate R` runs open loop: requests go out on a schedule of R per second whatever
//! the server does, and latency counts from each request's intended send time (see
//! [`modes::open_loop`]).
//!
//! `idle --procs P` spreads its connections over P child processes of this binary (one
//! process can hold only as many connections as its open-file limit allows): see
//! [`modes::procs`].
#![forbid(unsafe_code)]

mod cli;
mod conn;
mod engine;
mod fault;
mod host;
mod latency;
mod modes;
mod net;
mod report;
mod runner;
mod tls;

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use duo_testkit::loadgen_json::LoadgenJson;

use crate::cli::{Cli, IdleArgs, Mode};
use crate::modes::{echo, Env};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mode = cli.mode;
    let common = mode.common().clone();
    let target = match net::target(mode.addr()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let procs = match &mode {
        Mode::Idle(a) if a.procs > 1 => Some(a),
        _ => None,
    };
    if let Some(args) = procs {
        // Before any thread starts, so that every thread has the signals blocked.
        if let Err(e) = modes::procs::check_usage(args) {
            eprintln!("loadgen idle: {e}");
            return ExitCode::from(2);
        }
        modes::procs::watch_signals();
    }
    if matches!(mode, Mode::Idle(_)) && common.server_pid.is_some() {
        // Not silently ignored: the user asked for a figure the mode cannot give.
        eprintln!(
            "loadgen idle: --server-pid does not apply (idle has no measured phase); --pid \
             reads the server's RSS"
        );
        return ExitCode::from(2);
    }
    if let Err(e) = modes::udp::check_usage(&mode)
        .and_then(|()| modes::open_loop::check_usage(&mode))
        .and_then(|()| check_pids(&mode))
    {
        eprintln!("loadgen: {e}");
        return ExitCode::from(2);
    }
    arm_watchdog(mode.name(), mode.hard_limit(), common.json);
    if let Some(ca) = &common.tls_ca {
        if let Err(e) = tls::enable(ca) {
            eprintln!("loadgen: --tls-ca: {e}");
            return ExitCode::from(2);
        }
    }

    let env = Env {
        target,
        threads: usize::from(common.threads),
        timeout: common.timeout,
        seed: common.seed.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        }),
        fds: host::fd_budget(),
        server_pid: common.server_pid,
        reconnect: match &mode {
            Mode::Pingpong(a) | Mode::Rr(a) => a.reconnect,
            Mode::Churn(a) => a.reconnect,
            Mode::Idle(_) | Mode::Bank(_) => false,
        },
        source_base: match &mode {
            Mode::Idle(a) => a.source_base as usize,
            _ => 0,
        },
    };
    let result = match &mode {
        Mode::Pingpong(a) => echo::run(echo::Kind::Pingpong, a, &env),
        Mode::Rr(a) if a.udp => modes::udp::run(a, &env),
        Mode::Rr(a) => echo::run(echo::Kind::Rr, a, &env),
        Mode::Idle(a) if a.procs > 1 => modes::procs::run(a, &env),
        Mode::Idle(a) => modes::idle::run(a, &env),
        Mode::Churn(a) => modes::churn::run(a, &env),
        Mode::Bank(a) => modes::bank::run(a, &env),
    };
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen {}: {e}", mode.name());
            // A script that asked for JSON gets a report on every run, also one that could
            // not do its job.
            if common.json {
                println!("{}", failure_report(mode.name(), e, None).to_line());
            }
            return ExitCode::FAILURE;
        }
    };
    if common.json {
        println!("{}", report.to_json().to_line());
    } else {
        print!("{}", report.to_human());
    }
    if let Some(failure) = &report.failure {
        eprintln!("loadgen {}: {failure}", mode.name());
    }
    if report.failed() || (common.strict && report.errors.total() > 0) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Refuses a `--server-pid` (or `idle --pid`) that names no process whose figures can be
/// read: the run could not give the figure asked for, and would only say so in a note at
/// its end.
fn check_pids(mode: &Mode) -> Result<(), String> {
    if let Some(pid) = mode.common().server_pid {
        duo_testkit::tree_cpu_time(pid).map_err(|e| {
            format!("--server-pid {pid}: cannot read its CPU time ({e}): is the server running?")
        })?;
    }
    if let Mode::Idle(IdleArgs { pid: Some(pid), .. }) = mode {
        host::rss_kib(*pid).map_err(|e| format!("--pid {pid}: {e}: is the server running?"))?;
    }
    Ok(())
}

/// The JSON report of a run of `mode` that failed as a whole (`failure`), counted as one
/// error of kind `error` if given.
fn failure_report(mode: &str, failure: String, error: Option<&str>) -> LoadgenJson {
    LoadgenJson {
        mode: mode.to_owned(),
        errors: error.map(|e| (e.to_owned(), 1)).into_iter().collect(),
        error_total: u64::from(error.is_some()),
        failure: Some(failure),
        ..LoadgenJson::default()
    }
}

/// Ends the process after `limit`, even if a server hangs in a way no timeout covers.
/// Every phase has its own deadline, so this is a backstop that should never fire.
fn arm_watchdog(mode: &'static str, limit: Duration, json: bool) {
    let spawned = std::thread::Builder::new()
        .name("loadgen-watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            let msg = format!(
                "hard time limit of {:.0} s exceeded; giving up (is the server hung?)",
                limit.as_secs_f64()
            );
            eprintln!("loadgen {mode}: {msg}");
            modes::procs::kill_children();
            if json {
                println!(
                    "{}",
                    failure_report(mode, msg, Some("hard_timeout")).to_line()
                );
            }
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        eprintln!("loadgen: cannot start the watchdog thread: {e}");
    }
}
