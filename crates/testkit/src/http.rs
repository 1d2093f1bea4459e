//! The smallest HTTP client a test needs: one GET over a fresh connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::LIMIT;

/// `GET path` over a fresh connection to `addr` (`Connection: close`, every wait bounded
/// by [`LIMIT`]): the status code and the body. Panics on a malformed reply: a test's
/// failure, with what came back.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.set_write_timeout(Some(LIMIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("GET {path} to {addr}: {e}"));
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .unwrap_or_else(|e| panic!("reply to GET {path} from {addr}: {e}"));
    let status = reply
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in the reply to GET {path}: {reply:?}"));
    let body = reply.split_once("\r\n\r\n").map_or("", |p| p.1).to_owned();
    (status, body)
}
