//! Review round 9 of loadgen: a run that fails as a whole still prints its `--json`
//! report (with the `failure`), so that a script reading it learns why, not only that
//! the report is missing; and an `idle --procs` run whose child dies fails at once.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use duo_testkit::loadgen_json::LoadgenJson;
use duo_testkit::{children, send_signal, wait_child_within, wait_until_within};

/// `idle --procs 2` against a server that accepts but never echoes (the children wait
/// for their confirmations), one child killed: the parent fails without waiting for the
/// set-up limit (60 s here), and says why in JSON too (it used to print no report).
#[test]
fn a_procs_run_whose_child_dies_fails_at_once_with_a_json_report() {
    // The kernel completes the connections in the backlog; nobody ever reads them.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let mut loadgen = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "idle",
            "--addr",
            &addr,
            "--conns",
            "20",
            "--procs",
            "2",
            "--hold",
            "0.2",
            "--timeout",
            "60",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = loadgen.id();
    wait_until_within(Duration::from_secs(20), "two children", || {
        children(pid).len() == 2
    });
    let victim = *children(pid).iter().next().unwrap();
    send_signal(victim, "KILL").unwrap();
    let status = wait_child_within(&mut loadgen, Duration::from_secs(30)).unwrap_or_else(|| {
        let _ = loadgen.kill();
        let _ = loadgen.wait();
        panic!("loadgen went on waiting for its dead child");
    });
    let out = loadgen.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    let r = LoadgenJson::find_in(&stdout).unwrap_or_else(|| panic!("no report: {stderr}"));
    assert_eq!(r.mode, "idle");
    let failure = r
        .failure
        .unwrap_or_else(|| panic!("no failure in the report: {stdout}"));
    assert!(failure.contains("exited before holding"), "{failure}");
    assert!(stderr.contains(&failure), "the same on stderr: {stderr}");
    drop(silent);
}
