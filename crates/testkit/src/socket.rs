//! Connected socket pairs for tests of readiness and socket I/O.

use std::os::unix::net::UnixStream;

/// A connected `AF_UNIX` stream pair (`socketpair(2)`), both ends non-blocking: what a
/// readiness test registers, without a listener or a port.
pub fn nonblocking_pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    a.set_nonblocking(true).expect("non-blocking");
    b.set_nonblocking(true).expect("non-blocking");
    (a, b)
}
