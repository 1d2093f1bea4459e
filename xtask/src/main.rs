//! Project automation for duo, run as `cargo xtask <command>` (an alias in
//! `.cargo/config.toml`).
//!
//! Commands:
//! - `bench [--quick] [--only NAME] [--secs N] [--reps N] [--max-steal PCT]`: runs the
//!   criterion micro-benchmarks, builds release binaries, then every load scenario
//!   against every server (see [`mod@bench`]), and writes `target/bench/report.{md,json}`
//!   and SVG charts.
//! - `soak [--quick] [--secs N]`: the echo and bank servers under long mixed and hostile
//!   load (see [`mod@soak`]).
//! - `scale --conns N [--quick] [--processes K] [--procs P] [--hold SECS] [--json]`: checks
//!   the host's limits, then has duo's echo server hold N idle connections and reports what
//!   each costs in memory (see [`mod@scale`]).
//! - `observe [--quick] [--keep-dir] [--processes N]`: a real Prometheus server scrapes the echo server
//!   under load; its query API must show `duo_` series and growing counters (see
//!   [`mod@observe`]).
//! - `ci`: runs `.ci/run`, the same checks CI runs.
//!
//! Shared by bench and soak: [`mod@report`] (machine description, markdown tables, SVG
//! charts, result files) and [`mod@process`] (the child processes).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};

mod bench;
#[cfg(test)]
mod harness_combos;
mod observe;
mod process;
mod report;
mod scale;
mod soak;

/// Project automation for duo.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Micro-benchmarks, then every load scenario against duo's echo (0, 1, 2 I/O
    /// threads), raw-epoll-echo and tokio-echo, and the bank; writes target/bench/report.*
    Bench(bench::BenchArgs),
    /// Echo and bank servers under mixed and hostile load, sampled every second; fails on
    /// crashes, leaks, lost money.
    Soak(soak::SoakArgs),
    /// Checks the host's limits, then has the echo server hold N idle connections (K server
    /// processes, P load generator processes) and reports the memory each costs.
    Scale(scale::ScaleArgs),
    /// A real Prometheus server scrapes the echo server under load; its query API must show
    /// duo_ series and counters that grow.
    Observe(observe::ObserveArgs),
    /// Run .ci/run, the checks CI runs.
    Ci,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout with status 0; usage errors exit with 2.
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Cmd::Bench(args) => bench::bench(args),
        Cmd::Soak(args) => soak::soak(args),
        Cmd::Scale(args) => scale::scale(args),
        Cmd::Observe(args) => observe::observe(args),
        Cmd::Ci => run(Command::new("bash").arg(root().join(".ci/run"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Run(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Why a command failed: bad usage (exit status 2) or a failed run (1).
pub(crate) enum Failure {
    Usage(String),
    Run(String),
}

/// Runs a command to completion; a failure to start or a non-zero exit is an error.
pub(crate) fn run(cmd: &mut Command) -> Result<(), Failure> {
    process::ends_with_harness(cmd);
    let status = cmd
        .status()
        .map_err(|e| Failure::Run(format!("cannot start {:?}: {e}", cmd.get_program())))?;
    if status.success() {
        Ok(())
    } else {
        Err(Failure::Run(format!(
            "{:?} failed: {status}",
            cmd.get_program()
        )))
    }
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace root, where
/// cargo is run) or `target` under the root.
pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => root().join(d),
        _ => root().join("target"),
    }
}

/// Builds the release binaries the bench and the soak run (the apps, `loadgen` and the
/// peer servers); returns the directory they are in.
pub(crate) fn build_release_bins() -> Result<PathBuf, Failure> {
    println!("building release binaries...");
    run(Command::new(cargo()).current_dir(root()).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "echo",
        "-p",
        "bank",
        "-p",
        "duo-benches",
        "--bins",
    ]))?;
    Ok(target_dir().join("release"))
}

/// Builds the release `echo` and `loadgen` only (what `observe` and `scale` run), as
/// [`build_release_bins`] does; `stdout` false keeps cargo off our standard output (for a
/// JSON report). Returns the directory they are in.
pub(crate) fn build_echo_and_loadgen(stdout: bool) -> Result<PathBuf, Failure> {
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
    if !stdout {
        cmd.stdout(std::process::Stdio::null());
    }
    run(&mut cmd)?;
    Ok(target_dir().join("release"))
}

/// The cargo that runs us (so `cargo +nightly xtask` stays on nightly).
pub(crate) fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// The workspace root: the parent of this crate's directory.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
