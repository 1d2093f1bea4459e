//! `echo serve --processes N` upgraded (`SIGUSR2`, `echo reload --upgrade`) checks the new
//! binary first: it runs it with `DUO_UPGRADE_CHECK=1`, where echo parses its command line
//! and its files, binds nothing (the serving image holds the address) and exits 0; a
//! binary that fails that check is not executed, and the old image serves on. Every child
//! is killed by PID on drop, every wait is bounded.

mod common;

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::round_trip;
use common::supervised::{Gate, Sup};
use duo_testkit::{children, run_within, wait_until, ChildServer, LIMIT};

const ECHO: &str = env!("CARGO_BIN_EXE_echo");

/// `echo ARGS` as the upgrade's check runs it; its end within a few seconds.
fn check(args: &[&str]) -> duo_testkit::Finished {
    let mut cmd = Command::new(ECHO);
    cmd.args(args)
        .env("DUO_UPGRADE_CHECK", "1")
        .env("RUST_LOG", "info");
    run_within(&mut cmd, Duration::from_secs(5)).expect("the check ends")
}

/// The check on an address a server holds (a fixed `--listen`, as in production): it must
/// not try to bind it (that fails, and would refuse every upgrade), and never listens.
#[test]
fn the_check_binds_nothing_and_exits_0_on_the_served_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    // `echo serve --listen ADDR --processes 2`, then `extra`.
    let two_workers = |extra: &[&str]| {
        let mut args = vec!["serve", "--listen", &addr, "--processes", "2"];
        args.extend_from_slice(extra);
        check(&args)
    };
    let done = two_workers(&["--io-threads", "1"]);
    assert_eq!(done.status.code(), Some(0), "{done:?}");
    assert!(done.stdout.is_empty(), "nothing announced: {}", done.stdout);
    assert!(done.stderr.contains("upgrade check"), "{}", done.stderr);
    assert!(!done.stderr.contains("started worker"), "{}", done.stderr);
    // What echo refuses, it still refuses in the check (exit 2): the upgrade is refused.
    let done = check(&["serve", "--listen", &addr, "--processes", "0"]);
    assert_eq!(done.status.code(), Some(2), "{done:?}");
    let done = two_workers(&["--no-such-flag"]);
    assert_eq!(done.status.code(), Some(2), "{done:?}");
}

/// On a fixed port the upgrade's check passes and the upgrade goes through (same PID).
#[test]
fn an_upgrade_on_a_fixed_port_passes_its_check() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(ECHO);
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--io-threads", "1", "--processes", "2"])
        .env("RUST_LOG", "info");
    let sup = Sup(ChildServer::start(cmd));
    wait_until("the first workers", || sup.workers().len() == 2);
    assert_eq!(sup.addr().port(), port);
    let pid = sup.pid();
    let old = sup.workers();
    let done = run_within(
        Command::new(ECHO).args(["reload", "--pid", &pid.to_string(), "--upgrade"]),
        LIMIT,
    )
    .unwrap();
    assert!(done.status.success(), "{done:?}");
    sup.log_has("passed its check");
    sup.log_has("generation 2 is serving");
    assert_eq!(sup.pid(), pid);
    wait_until("the new workers only", || {
        let now = children(pid);
        now.len() == 2 && now.is_disjoint(&old)
    });
    round_trip(&mut sup.connect(), b"after the upgrade");
}

/// The reported bug, with echo: the binary replaced on disk by one that exits 3 at start.
/// The supervisor (same PID) and its workers serve on, the failure is logged with the
/// status.
#[test]
fn an_upgrade_to_a_binary_that_exits_3_keeps_echo_serving() {
    let gate = Gate::new("probe-exit3");
    let mut sup = Sup::start(&gate.exe(), 2, &[]);
    let pid = sup.pid();
    let workers = sup.workers();
    let mut held = sup.connect();
    round_trip(&mut held, b"before");
    let bad = gate.dir().join("bad");
    fs::write(&bad, "#!/bin/sh\nexit 3\n").unwrap();
    fs::set_permissions(&bad, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&bad, gate.exe()).unwrap();
    sup.signal("USR2");
    wait_until("the upgrade refused", || {
        if let Some(status) = sup.try_wait() {
            panic!("the supervisor exited ({status}):\n{}", sup.stderr());
        }
        sup.stderr().contains("upgrade refused")
    });
    assert!(sup.stderr().contains("exit status 3"), "{}", sup.stderr());
    assert_eq!(sup.workers(), workers);
    round_trip(&mut held, b"held across");
    round_trip(&mut sup.connect(), b"a new one");
    assert_eq!(sup.pid(), pid);
    drop(held);
    sup.signal("TERM");
    sup.exited_0();
}
