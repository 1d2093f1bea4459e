//! Helpers shared by the supervisor's test files: talking to the `demo` example's workers,
//! a directory of a test's own and the demo's mode file, a copy of the demo to upgrade.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use duo_testkit::{example_binary, ChildServer, ChildServerBuilder, LIMIT};

/// Connects and reads the worker's `pid N` greeting.
pub(crate) fn worker_of_connection(addr: SocketAddr) -> u32 {
    let conn = TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(LIMIT)).unwrap();
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).expect("greeting");
    line.trim()
        .strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bad greeting {line:?}"))
}

/// A directory of a test's own, removed when dropped.
#[allow(unused_imports)] // not every test binary that includes this module uses it
pub(crate) use duo_testkit::TempDir as Dir;

/// Writes `mode` to the directory's `mode` file, atomically (a rename), which the `demo`
/// example's workers read at start (`DEMO_MODE_FILE`); returns its path.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub(crate) fn mode_file(dir: &Dir, mode: &str) -> PathBuf {
    let path = dir.join("mode");
    let tmp = dir.join("mode.tmp");
    std::fs::write(&tmp, mode).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// Puts `contents` at `path` (mode 0755) by a rename, so a binary running from `path`
/// is not written to (`ETXTBSY`) but replaced.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub(crate) fn replace(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The demo binary, copied to `dir/demo`, started as a supervisor of 2 workers (`env`
/// added to its environment): upgrade tests replace that copy on disk.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub(crate) fn start_copy(dir: &Dir, env: &[(&str, &str)]) -> (ChildServer, PathBuf) {
    let copy = dir.join("demo");
    replace(
        &copy,
        &std::fs::read(example_binary("duo-supervisor", "demo")).unwrap(),
    );
    let server = ChildServerBuilder::start_written(|| {
        let mut cmd = Command::new(&copy);
        cmd.arg("2").envs(env.iter().copied());
        ChildServer::builder(cmd)
    });
    (server, copy)
}

/// Kills one of the two workers of `server` (the demo) and waits until its replacement
/// runs the demo in the mode shown as `mode` (`LetGo`, `Silent`: set the mode file
/// first). Returns the killed worker's PID and the replacement's.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub(crate) fn kill_one_and_wait_for_its_replacement(
    server: &ChildServer,
    mode: &str,
) -> (u32, u32) {
    let pid = server.pid();
    let workers = duo_testkit::children(pid);
    assert_eq!(workers.len(), 2, "{workers:?}");
    let victim = *workers.iter().next().unwrap();
    duo_sys::kill_process(victim).unwrap();
    duo_testkit::wait_until("a replacement started", || {
        let now = duo_testkit::children(pid);
        now.len() == 2 && !now.contains(&victim)
    });
    let replacement = *duo_testkit::children(pid)
        .difference(&workers)
        .next()
        .unwrap();
    // Past its `exec` (before it, the forked child holds passing copies of descriptors).
    let started = format!("demo worker {replacement}: mode {mode}");
    duo_testkit::wait_until("the replacement runs the demo", || {
        server.stderr().contains(&started)
    });
    (victim, replacement)
}

/// Replaces a worker of `server` (the demo) by one in mode `letgo` (still starting until
/// its `go` file appears), then upgrades the supervisor with the demo's mode `silent` (its
/// new generation never gets ready) and waits until the new image adopted the
/// replacement, still starting. Returns the replacement's PID.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub(crate) fn upgrade_with_a_replacement_still_starting(server: &ChildServer, dir: &Dir) -> u32 {
    mode_file(dir, "letgo");
    let (_, replacement) = kill_one_and_wait_for_its_replacement(server, "LetGo");
    mode_file(dir, "silent");
    server.signal("USR2");
    let adopting = format!("adopting worker {replacement} ");
    duo_testkit::wait_until(
        "the new image adopted the replacement, still starting",
        || {
            server
                .stderr()
                .lines()
                .any(|l| l.contains(&adopting) && l.contains("still starting"))
        },
    );
    replacement
}
