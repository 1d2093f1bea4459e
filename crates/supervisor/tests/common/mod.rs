//! Helpers shared by the supervisor's test files: talking to the `demo` example's workers.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};

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
