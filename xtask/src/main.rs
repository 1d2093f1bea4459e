//! Project automation for duo, run as `cargo xtask <command>` (an alias in
//! `.cargo/config.toml`).
//!
//! Commands:
//! - `bench [--quick] [--only NAME] [--secs N]`: builds release binaries, runs the
//!   micro-benchmarks, then every load scenario against every server (see [`mod@bench`]), and
//!   writes `target/bench/report.{md,json}` and SVG charts.
//! - `ci`: runs `.ci/run`, the same checks CI runs.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod bench;
mod process;
mod soak;

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("error: {msg}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Run(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask <command>

commands:
  bench [--quick] [--only NAME] [--secs N] [--reps N]
                                  micro-benchmarks, then every load scenario against
                                  duo's echo (0, 1, 2 I/O threads), raw-epoll-echo and
                                  tokio-echo, and the bank; writes target/bench/report.*
  soak [--quick] [--secs N]       echo and bank servers under mixed and hostile load,
                                  sampled every 10 s; fails on crashes, leaks, lost money
  ci                              run .ci/run, the checks CI runs";

pub(crate) enum Failure {
    Usage(String),
    Run(String),
}

fn try_main() -> Result<(), Failure> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("bench") => bench::bench(args.collect()),
        Some("soak") => soak::soak(args.collect()),
        Some("ci") => run(Command::new("bash").arg(root().join(".ci/run"))),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(Failure::Usage(format!("unknown command `{other}`"))),
        None => Err(Failure::Usage("no command given".into())),
    }
}

pub(crate) fn run(cmd: &mut Command) -> Result<(), Failure> {
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
