//! `bank` when its standard streams lead nowhere: a pipe or socket whose reader is gone.
//! `SIGPIPE` is ignored (Rust's runtime and `duo_net::process::prepare_server` do it), so
//! a write there fails with `EPIPE`; the exit status must still say what happened (2 for a
//! usage error, 1 for a failure), not 101 from a panic of `eprintln!`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::TempDir;
use duo_testkit::exit_code_without_output;

/// How long the process may take: it fails at once.
const LIMIT: Duration = Duration::from_secs(10);

/// Runs `bank ARGS` with stdout and stderr broken; its exit code.
fn exit_code(args: &[&str]) -> Option<i32> {
    exit_code_without_output(Command::new(env!("CARGO_BIN_EXE_bank")).args(args), LIMIT)
}

/// Bug: `fail` printed with `eprintln!`, which panics when stderr cannot be written: a
/// usage error exited 101 (a panic), not 2.
#[test]
fn a_usage_error_with_stderr_gone_exits_2() {
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--io-threads",
        "0",
        "--loops",
        "2",
    ];
    assert_eq!(exit_code(&args), Some(2));
}

/// Bug: likewise a server that could not print `listening on` (stdout gone) exited 101,
/// not 1.
#[test]
fn a_server_with_stdout_and_stderr_gone_exits_1() {
    let dir = TempDir::new("review8-process");
    let db = dir.join("bank.db");
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--io-threads",
        "1",
        "--hash-cost",
        "low",
        "--db",
        db.to_str().expect("a UTF-8 path"),
    ];
    assert_eq!(exit_code(&args), Some(1));
}
