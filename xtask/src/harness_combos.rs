//! Unit tests (the code under test is private to the `xtask` binary) of the child
//! processes the harnesses start ([`crate::process`]): none may outlive a harness that is
//! killed (a CI timeout's SIGTERM, SIGKILL, a closed terminal) instead of ending normally.
//!
//! A stand-in harness is this test binary run again (one of its ignored tests, told what
//! to do by [`HELPER_ENV`]): it starts children as a harness does, prints their PIDs, and
//! waits to be killed by its PID.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use duo_testkit::{is_running, send_signal, wait_child_within};

use crate::process::{run_bounded, Server};

/// Set (to a directory for its files) in a stand-in harness's environment.
pub(crate) const HELPER_ENV: &str = "DUO_XTASK_STAND_IN_HARNESS";
/// How long a stand-in may take to start its children, and its children to end once it
/// is killed.
const LIMIT: Duration = Duration::from_secs(10);

/// A directory of this test's own, empty.
pub(crate) fn test_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("duo-xtask-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a test directory");
    dir
}

/// In a stand-in harness: the directory it was given, or `None` when run as a test.
pub(crate) fn stand_in_dir() -> Option<PathBuf> {
    std::env::var_os(HELPER_ENV).map(PathBuf::from)
}

/// In a stand-in harness: says that `pid` is a child, once `ready` is printed.
pub(crate) fn announce_child(pid: u32) {
    println!("child {pid}");
}

/// In a stand-in harness: says that every child is started, and waits to be killed.
pub(crate) fn wait_to_be_killed() -> ! {
    println!("ready");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A command of a child that writes its PID into `file`, then sleeps 30 s (the tests'
/// bound should the PID never be read).
pub(crate) fn pid_writing_sleeper(file: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "echo $$ > \"$1.tmp\" && mv \"$1.tmp\" \"$1\" && exec sleep 30",
        "sh",
    ])
    .arg(file);
    cmd
}

/// The PID a [`pid_writing_sleeper`] wrote into `file`, waiting for it up to [`LIMIT`].
pub(crate) fn read_pid(file: &Path) -> u32 {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "no PID in {}", file.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the ignored test `name` of this binary as a stand-in harness in `dir`, kills it
/// with SIGKILL by its PID once its children are started, and checks that every child
/// ends within [`LIMIT`]; a child still running then is killed by its PID and named.
pub(crate) fn children_end_with_a_killed_harness(name: &str, dir: &Path) {
    let exe = std::env::current_exe().expect("the test binary");
    let mut harness = Command::new(exe)
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the stand-in harness");
    let stdout = harness.stdout.take().expect("piped stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + LIMIT;
    let mut children: Vec<u32> = Vec::new();
    let started = loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            // libtest's `test NAME ... ` may precede the first line.
            Ok(line) if line.ends_with("ready") => break true,
            Ok(line) => children.extend(
                line.rsplit_once("child ")
                    .and_then(|(_, p)| p.trim().parse::<u32>().ok()),
            ),
            Err(_) => break false,
        }
    };
    let _ = send_signal(harness.id(), "KILL");
    let _ = wait_child_within(&mut harness, LIMIT);
    let end = Instant::now() + LIMIT;
    while children.iter().any(|&pid| is_running(pid)) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let alive: Vec<u32> = children
        .iter()
        .copied()
        .filter(|&p| is_running(p))
        .collect();
    for &pid in &alive {
        let _ = send_signal(pid, "KILL");
    }
    let _ = std::fs::remove_dir_all(dir);
    assert!(
        started,
        "the stand-in harness {name} did not start its children"
    );
    assert!(!children.is_empty(), "{name} announced no child");
    assert!(
        alive.is_empty(),
        "children {alive:?} (of {children:?}) of {name} still ran {LIMIT:?} after it was \
         killed"
    );
}

#[test]
#[ignore = "a stand-in harness, run by no_child_outlives_a_killed_harness"]
fn stand_in_harness_of_process_rs() {
    let Some(dir) = stand_in_dir() else { return };
    // A server under test, as bench and soak start it.
    let args = ["-c", "echo listening on 127.0.0.1:9; exec sleep 30"].map(String::from);
    let server = Server::start("fake", Path::new("sh"), &args, &dir.join("server.log"))
        .unwrap_or_else(|e| panic!("{e}"));
    announce_child(server.pid());
    // A load generator, run to completion by another thread as soak's lanes do.
    let pid_file = dir.join("loadgen.pid");
    let (file, log) = (pid_file.clone(), dir.join("loadgen.log"));
    std::thread::spawn(move || {
        let _ = run_bounded(
            &mut pid_writing_sleeper(&file),
            Duration::from_secs(60),
            &log,
        );
    });
    announce_child(read_pid(&pid_file));
    wait_to_be_killed();
}

#[test]
fn no_child_outlives_a_killed_harness() {
    children_end_with_a_killed_harness(
        "harness_combos::stand_in_harness_of_process_rs",
        &test_dir("killed-harness"),
    );
}
