//! Helpers shared by the supervisor's test files: talking to the `demo` example's workers,
//! a directory of a test's own and the demo's mode file.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;

use duo_testkit::LIMIT;

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
