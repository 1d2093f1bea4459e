//! Review round 10 of the process helpers and the supervisor: `echo serve --processes`
//! whose stdout nobody reads.
//!
//! - Its `listening on` line could not be written (`EPIPE`): it logged that and served on,
//!   exit status 0 at the next stop, while `echo serve` without `--processes` exits 1 at
//!   once (nobody can learn the address: a script waiting for the line waits for ever). It
//!   stops its workers and exits 1 now, as a single process does.
//! - Neither mode panics (exit status 101) with stdout or stderr gone.
//!
//! Every wait is bounded; a server still running at the deadline is killed by its PID.

use std::process::Command;

use duo_testkit::{run_with_gone, Finished, Gone, LIMIT};

/// Runs `echo serve --listen 127.0.0.1:0 ARGS..` with the `gone` stream leading nowhere;
/// how it ended, and what it wrote on the other stream. Fails the test if it still runs
/// after `LIMIT` (it is then killed by PID).
fn echo_with(gone: Gone, args: &[&str]) -> Finished {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_echo"));
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info");
    run_with_gone(&mut cmd, gone, LIMIT).unwrap_or_else(|e| panic!("echo serve {args:?}: {e}"))
}

/// `--processes 2`, stdout gone: the workers are stopped and the supervisor exits 1,
/// saying why, without being asked to stop.
#[test]
fn processes_with_stdout_gone_exit_1() {
    let out = echo_with(Gone::Stdout, &["--processes", "2"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    assert!(out.stderr.contains("listening on"), "{out:?}");
}

/// The single process does so already (the same status for both modes).
#[test]
fn a_single_process_with_stdout_gone_exits_1() {
    let out = echo_with(Gone::Stdout, &[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
}

/// A bad flag with stderr gone: the usage status (2), not a panic.
#[test]
fn a_bad_flag_with_stderr_gone_is_the_usage_status() {
    let out = echo_with(Gone::Stderr, &["--processes", "2", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// The forms a peer's address reads back as, but no server can listen on
/// (`unix:(unnamed)`, `unix:@(empty)`), are usage errors (2), as `unix:@` is, not a
/// failed start (1).
#[test]
fn listening_on_a_peer_only_form_is_a_usage_error() {
    for listen in ["unix:(unnamed)", "unix:@(empty)"] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_echo"));
        cmd.args(["serve", "--listen", listen]);
        let out = duo_testkit::run_within(&mut cmd, LIMIT).unwrap();
        assert_eq!(out.status.code(), Some(2), "{listen}: {out:?}");
        assert!(out.stderr.contains("not an address"), "{listen}: {out:?}");
    }
}
