//! Project automation for duo, run as `cargo xtask <command>` (an alias in
//! `.cargo/config.toml`).
//!
//! Commands:
//! - `bench [--quick] [--only NAME]`: builds the benchmarks in release mode and runs them,
//!   printing each one's table.
//! - `ci`: runs `.ci/run`, the same checks CI runs.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// A benchmark the `bench` command knows: its name and the binary of `duo-benches` that
/// runs it.
struct Bench {
    name: &'static str,
    bin: &'static str,
    about: &'static str,
}

const BENCHES: &[Bench] = &[
    Bench {
        name: "bufpool",
        bin: "bufpool",
        about: "BufPool allocate+free against the system allocator, 1 and 2 threads",
    },
    Bench {
        name: "reactor",
        bin: "reactor",
        about: "cross-thread wake-up latency, timer schedule/cancel/fire, queue_in_loop throughput",
    },
];

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
  bench [--quick] [--only NAME]   run the benchmarks (release build)
  ci                              run .ci/run, the checks CI runs";

enum Failure {
    Usage(String),
    Run(String),
}

fn try_main() -> Result<(), Failure> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("bench") => bench(args.collect()),
        Some("ci") => run(Command::new("bash").arg(root().join(".ci/run"))),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(Failure::Usage(format!("unknown command `{other}`"))),
        None => Err(Failure::Usage("no command given".into())),
    }
}

fn bench(args: Vec<String>) -> Result<(), Failure> {
    let mut quick = false;
    let mut only: Option<String> = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => {
                only = Some(
                    it.next()
                        .ok_or_else(|| Failure::Usage("--only needs a name".into()))?,
                )
            }
            other => return Err(Failure::Usage(format!("unknown bench option `{other}`"))),
        }
    }
    let selected: Vec<&Bench> = BENCHES
        .iter()
        .filter(|b| only.as_deref().is_none_or(|o| o == b.name))
        .collect();
    if selected.is_empty() {
        let names: Vec<_> = BENCHES.iter().map(|b| b.name).collect();
        return Err(Failure::Usage(format!(
            "no benchmark named `{}` (known: {})",
            only.unwrap_or_default(),
            names.join(", ")
        )));
    }
    run(Command::new(cargo()).current_dir(root()).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "duo-benches",
        "--bins",
    ]))?;
    for b in selected {
        println!("\n## {} — {}\n", b.name, b.about);
        let exe = root().join("target/release").join(b.bin);
        let mut cmd = Command::new(&exe);
        if quick {
            cmd.arg("--quick");
        }
        run(&mut cmd)?;
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<(), Failure> {
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

/// The cargo that runs us (so `cargo +nightly xtask` stays on nightly).
fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// The workspace root: the parent of this crate's directory.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
