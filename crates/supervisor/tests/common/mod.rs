//! Helpers shared by the supervisor's test files: talking to the `demo` example's workers,
//! a directory of a test's own.

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

/// A directory of its own for one test (`duo-sup-NAME-PID`), removed when dropped.
pub(crate) struct Dir(PathBuf);

impl Dir {
    pub(crate) fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("duo-sup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    /// `name` in the directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
