//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::io::IoSliceMut;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Longest any wait in a test may take.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A deterministic, non-periodic-looking byte for stream position `i`.
pub fn byte_at(i: usize) -> u8 {
    let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 ^ (i as u8)
}

/// `len` bytes of the test stream starting at position `start`.
pub fn pattern(start: usize, len: usize) -> Vec<u8> {
    (start..start + len).map(byte_at).collect()
}

/// Copies `src` into `iovs` front to back; returns how many bytes were copied.
pub fn scatter(iovs: &mut [IoSliceMut<'_>], mut src: &[u8]) -> usize {
    let mut copied = 0;
    for iov in iovs.iter_mut() {
        let n = iov.len().min(src.len());
        iov[..n].copy_from_slice(&src[..n]);
        src = &src[n..];
        copied += n;
    }
    copied
}

/// A connected TCP pair over loopback, both ends non-blocking and with `TCP_NODELAY`.
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    for s in [&client, &server] {
        s.set_nonblocking(true).expect("nonblocking");
        s.set_nodelay(true).expect("nodelay");
    }
    (client, server)
}

/// Calls `step` until it returns `Some`, failing the test after [`DEADLINE`].
pub fn until<T>(what: &str, mut step: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = step() {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}
