//! `loadgen idle --procs 2` against duo's real echo server: the connections are spread over
//! two child processes, each confirmed at the start and again at the end of the hold, and
//! the parent's report sums the children's.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use duo_testkit::loadgen_json::LoadgenJson;
use duo_testkit::{
    children, package_binary, run_within, send_signal, wait_child_within, wait_until, ChildServer,
    LIMIT,
};

/// Connections of the run: a few hundred, so the test is quick and light.
const CONNS: u64 = 300;
/// How long the whole loadgen run may take.
const RUN_LIMIT: Duration = Duration::from_secs(60);

#[test]
fn idle_procs_spreads_over_two_processes_and_verifies_every_connection_twice() {
    let mut echo = Command::new(package_binary("echo", "echo"));
    echo.args(["serve", "--listen", "127.0.0.1:0", "--io-threads", "0"]);
    let mut server = ChildServer::start(echo);
    let addr = server.addr().to_string();
    let pid = server.pid().to_string();
    let done = run_within(
        Command::new(env!("CARGO_BIN_EXE_loadgen")).args([
            "idle",
            "--addr",
            &addr,
            "--conns",
            &CONNS.to_string(),
            "--procs",
            "2",
            "--hold",
            "0.5",
            "--timeout",
            "10",
            "--pid",
            &pid,
            "--json",
        ]),
        RUN_LIMIT,
    )
    .unwrap_or_else(|e| panic!("loadgen: {e}"));
    assert!(done.status.success(), "{done:?}");
    assert!(
        done.stderr
            .contains(&format!("holding {CONNS} connections in 2 processes")),
        "{}",
        done.stderr
    );
    let r = LoadgenJson::find_in(&done.stdout).unwrap_or_else(|| panic!("{done:?}"));
    assert_eq!(r.mode, "idle");
    assert_eq!(r.procs, Some(2));
    assert_eq!(r.conns, Some(CONNS));
    assert_eq!(r.established, Some(CONNS), "{r:?}");
    assert_eq!(r.verified_end, Some(CONNS), "{r:?}");
    assert_eq!(r.error_total, 0, "{r:?}");
    assert!(!r.verification_failed && r.failure.is_none(), "{r:?}");
    assert!(r.setup_per_sec.is_some_and(|v| v > 0.0), "{r:?}");
    assert!(r.loadgen_rss_kib.is_some_and(|v| v > 0), "{r:?}");
    assert!(r.rss_hold_kib.is_some(), "{r:?}");
    // Every child is gone: none of them is left holding connections to the server.
    let (status, _) = server.terminate("TERM", Duration::from_secs(10));
    assert!(status.success(), "echo exited with {status}");
}

#[test]
fn a_terminated_parent_takes_its_children_with_it() {
    let mut echo = Command::new(package_binary("echo", "echo"));
    echo.args(["serve", "--listen", "127.0.0.1:0", "--io-threads", "0"]);
    let mut server = ChildServer::start(echo);
    let addr = server.addr().to_string();
    // A long hold: only the signal ends this run early.
    let mut parent = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["idle", "--addr", &addr, "--conns", "200", "--procs", "2"])
        .args(["--hold", "120", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loadgen");
    let stderr = parent.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let holding = std::iter::from_fn(|| {
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()
    })
    .find(|l| l.contains("holding 200 connections in 2 processes"));
    if holding.is_none() {
        let _ = parent.kill();
        let _ = parent.wait();
        panic!("loadgen did not hold its connections within {RUN_LIMIT:?}");
    }
    let kids = children(parent.id());
    assert_eq!(kids.len(), 2, "two child processes: {kids:?}");

    send_signal(parent.id(), "TERM").expect("kill(1)");
    let status = wait_child_within(&mut parent, LIMIT).expect("loadgen exits on SIGTERM");
    assert_eq!(status.code(), Some(128 + 15), "{status}");
    // The parent killed and reaped them before it exited.
    for kid in kids {
        wait_until(&format!("child {kid} gone"), || {
            !std::path::Path::new(&format!("/proc/{kid}")).exists()
        });
    }
    let (status, _) = server.terminate("TERM", Duration::from_secs(10));
    assert!(status.success(), "echo exited with {status}");
}
