//! Review round 10 of the examples (`crates/net/examples/*.rs`): what they do when their
//! output leads nowhere.
//!
//! Each wrote its usage message and its errors with `eprintln!`, which panics (exit status
//! 101) when stderr is a pipe or socket whose reader is gone (`SIGPIPE` is ignored, so the
//! write fails with `EPIPE`). So a usage error with stderr gone exited 101, not 2, and a
//! server that could not print its `listening on` line exited 101, not 1, when stderr was
//! gone too. Now a usage error exits 2 and a failed announcement 1, whatever stderr is,
//! and nothing panics.
//!
//! Every run is bounded; a program still running at the deadline is killed by its PID.

use std::process::Command;

use duo_testkit::{example_binary, exit_code_without_output, run_with_gone, Gone, LIMIT};

/// Each example, with arguments it takes (listening on a free port) and arguments that
/// are a usage error.
const EXAMPLES: [(&str, &[&str], &[&str]); 4] = [
    (
        "echo",
        &["127.0.0.1:0", "1"],
        &["127.0.0.1:0", "1", "extra"],
    ),
    ("chat", &["127.0.0.1:0"], &["127.0.0.1:0", "extra"]),
    ("factor", &["127.0.0.1:0", "1"], &["127.0.0.1:0", "0"]),
    // The backend is never connected to: nobody connects to the tunnel.
    ("tunnel", &["127.0.0.1:0", "127.0.0.1:9"], &["127.0.0.1:0"]),
];

fn example(name: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(example_binary("duo-net", name));
    cmd.args(args).env("RUST_LOG", "info");
    cmd
}

/// A usage error with stderr gone: the usage status, 2 (it was 101, a panic).
#[test]
fn a_usage_error_with_stderr_gone_exits_2() {
    for (name, _, bad) in EXAMPLES {
        let out = run_with_gone(&mut example(name, bad), Gone::Stderr, LIMIT)
            .unwrap_or_else(|e| panic!("{name} {bad:?}: {e}"));
        assert_eq!(out.status.code(), Some(2), "{name} {bad:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{name} {bad:?}: {out:?}");
    }
}

/// Likewise with stdout gone too.
#[test]
fn a_usage_error_with_no_output_exits_2() {
    for (name, _, bad) in EXAMPLES {
        let code = exit_code_without_output(&mut example(name, bad), LIMIT);
        assert_eq!(code, Some(2), "{name} {bad:?}");
    }
}

/// Serving, with stdout and stderr gone: the `listening on` line cannot be printed, nor
/// the error saying so: exit status 1 (it was 101, a panic), not serving on unannounced.
#[test]
fn a_server_that_cannot_announce_itself_or_say_why_exits_1() {
    for (name, good, _) in EXAMPLES {
        let code = exit_code_without_output(&mut example(name, good), LIMIT);
        assert_eq!(code, Some(1), "{name} {good:?}");
    }
}

/// With stdout gone and stderr there: exit status 1, and stderr says why (no panic).
#[test]
fn a_server_that_cannot_announce_itself_says_why_and_exits_1() {
    for (name, good, _) in EXAMPLES {
        let out = run_with_gone(&mut example(name, good), Gone::Stdout, LIMIT)
            .unwrap_or_else(|e| panic!("{name} {good:?}: {e}"));
        assert_eq!(out.status.code(), Some(1), "{name} {good:?}: {out:?}");
        assert!(
            out.stderr
                .contains(&format!("{name}: printing `listening on")),
            "{name} {good:?}: {out:?}"
        );
        assert!(!out.stderr.contains("panicked"), "{name} {good:?}: {out:?}");
    }
}
