//! Unit tests (the code under test is private to the `xtask` binary): what `observe`
//! leaves behind when its run is killed instead of ending: no process (its guards never
//! run then), and its directory (Prometheus' database) is removed by the next run.

use std::path::PathBuf;
use std::process::Command;

use super::child::Running;
use super::RunDir;
use crate::harness_combos::{
    announce_child, children_end_with_a_killed_harness, pid_writing_sleeper, read_pid,
    stand_in_dir, test_dir, wait_to_be_killed,
};

#[test]
#[ignore = "a stand-in harness, run by no_observe_child_outlives_a_killed_run"]
fn stand_in_harness_of_observe() {
    let Some(dir) = stand_in_dir() else { return };
    // Echo, loadgen and Prometheus are started this way.
    let pid_file = dir.join("prometheus.pid");
    let running = Running::spawn(
        "prometheus",
        &mut pid_writing_sleeper(&pid_file),
        &dir.join("prometheus.log"),
        false,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read_pid(&pid_file), running.pid());
    announce_child(running.pid());
    wait_to_be_killed();
}

#[test]
fn no_observe_child_outlives_a_killed_run() {
    children_end_with_a_killed_harness(
        "observe::harness_combos::stand_in_harness_of_observe",
        &test_dir("killed-observe"),
    );
}

/// The PID of a process that has exited and been reaped.
pub(crate) fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("start true");
    let pid = child.id();
    child.wait().expect("reap true");
    pid
}

/// A run directory as a killed `observe` of process `pid` leaves it: with a database.
fn left_behind(pid: u32, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("duo-observe-{pid}-{tag}"));
    std::fs::create_dir_all(dir.join("data/wal")).expect("a left-behind directory");
    std::fs::write(dir.join("data/wal/00000000"), b"samples").expect("a file in it");
    dir
}

#[test]
fn the_next_run_removes_what_a_killed_run_left() {
    let dead = dead_pid();
    let stale = left_behind(dead, "run");
    // A live process's directory is its own business (another run under way).
    let live = left_behind(std::process::id(), "combos_live");
    let dir = RunDir::create("combos_next", false).unwrap_or_else(|e| panic!("{e}"));
    let stale_left = stale.exists();
    let _ = std::fs::remove_dir_all(&stale);
    assert!(
        !stale_left,
        "{} of a dead process was left in place",
        stale.display()
    );
    assert!(live.exists());
    let _ = std::fs::remove_dir_all(&live);
    drop(dir);
}

#[test]
fn a_directory_kept_on_purpose_stays() {
    // `--keep-dir`: the user asked for it, whatever became of its process.
    let kept = RunDir::create("combos_kept", true).unwrap_or_else(|e| panic!("{e}"));
    let path = kept.path.clone();
    drop(kept);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let dead = dead_pid();
    let renamed =
        path.with_file_name(name.replacen(&std::process::id().to_string(), &dead.to_string(), 1));
    std::fs::rename(&path, &renamed).expect("move the kept directory");
    let dir = RunDir::create("combos_after_kept", false).unwrap_or_else(|e| panic!("{e}"));
    let stayed = renamed.exists();
    let _ = std::fs::remove_dir_all(&renamed);
    drop(dir);
    assert!(stayed, "{} was kept on purpose", renamed.display());
}
