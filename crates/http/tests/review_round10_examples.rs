//! Review round 10 of the example (`crates/http/examples/hello.rs`): what it does when its
//! output leads nowhere.
//!
//! It wrote its usage message and its errors with `eprintln!`, which panics (exit status
//! 101) when stderr is a pipe or socket whose reader is gone (`SIGPIPE` is ignored, so the
//! write fails with `EPIPE`). So a usage error with stderr gone exited 101, not 2, and a
//! server that could not print its `listening on` line exited 101, not 1, when stderr was
//! gone too. Now a usage error exits 2 and a failed announcement 1, whatever stderr is,
//! and nothing panics.
//!
//! Every run is bounded; a program still running at the deadline is killed by its PID.

use std::process::Command;

use duo_testkit::{example_binary, exit_code_without_output, run_with_gone, Gone, LIMIT};

fn hello(args: &[&str]) -> Command {
    let mut cmd = Command::new(example_binary("duo-http", "hello"));
    cmd.args(args).env("RUST_LOG", "info");
    cmd
}

/// A usage error with stderr gone, or with both streams gone: the usage status, 2 (it was
/// 101, a panic).
#[test]
fn a_usage_error_with_stderr_gone_exits_2() {
    let out = run_with_gone(&mut hello(&["127.0.0.1:0", "extra"]), Gone::Stderr, LIMIT)
        .unwrap_or_else(|e| panic!("hello: {e}"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let code = exit_code_without_output(&mut hello(&["not an address"]), LIMIT);
    assert_eq!(code, Some(2));
}

/// Serving with both streams gone: exit status 1 (it was 101, a panic); with stdout alone
/// gone, 1 and stderr says why.
#[test]
fn a_server_that_cannot_announce_itself_exits_1() {
    let code = exit_code_without_output(&mut hello(&["127.0.0.1:0"]), LIMIT);
    assert_eq!(code, Some(1));
    let out = run_with_gone(&mut hello(&["127.0.0.1:0"]), Gone::Stdout, LIMIT)
        .unwrap_or_else(|e| panic!("hello: {e}"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("hello: printing `listening on"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("panicked"), "{out:?}");
}
