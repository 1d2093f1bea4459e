//! What `bank` does with socket activation's environment before its command line is
//! parsed (the echo app's twin is in `apps/echo/tests/supervisor_job_control.rs`).

use std::net::TcpListener;
use std::os::fd::AsFd;
use std::process::Command;

use duo_testkit::{run_within, Finished, LIMIT};

const BANK: &str = env!("CARGO_BIN_EXE_bank");

/// Runs `bank ARGS` under socket activation of two listening sockets (`LISTEN_FDS=2`,
/// descriptors 3 and 4, `LISTEN_PID` its own).
fn with_two_activated_sockets(args: &[&str]) -> Finished {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=2 exec \"$0\" \"$@\"", BANK])
        .args(args)
        .env_remove("RUST_LOG");
    duo_sys::pass_fds(&mut cmd, &[a.as_fd(), b.as_fd()], 3).unwrap();
    run_within(&mut cmd, LIMIT).unwrap()
}

/// `duo_supervisor::inherit_at_start` refused two socket-activated sockets before the
/// command line was parsed, so under such an environment (a unit with two
/// `ListenStream=`, say) even `bank --help`, `bank --version` and `bank client` failed
/// with "passed 2 sockets", exit 2. The refusal belongs to `bank serve` only.
#[test]
fn two_activated_sockets_refuse_serving_only() {
    for args in [&["--help"][..], &["--version"], &["serve", "--help"]] {
        let done = with_two_activated_sockets(args);
        assert_eq!(done.status.code(), Some(0), "bank {args:?}: {done:?}");
        assert!(!done.stdout.is_empty(), "bank {args:?}: {done:?}");
    }
    // A client of a port nobody listens on: its own error (exit 1).
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let done = with_two_activated_sockets(&["client", "--connect", &addr, "balance"]);
    assert_eq!(done.status.code(), Some(1), "{done:?}");
    assert!(!done.stderr.contains("socket activation"), "{done:?}");
    let done = with_two_activated_sockets(&["serve", "--db", "sqlite::memory:"]);
    assert_eq!(done.status.code(), Some(2), "{done:?}");
    assert!(done.stderr.contains("passed 2 sockets"), "{}", done.stderr);
}
