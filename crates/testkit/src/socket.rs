//! Connected socket pairs for tests of readiness and socket I/O, and what the kernel
//! says of a loopback TCP socket.

use std::net::SocketAddr;
use std::os::unix::net::UnixStream;

/// A connected `AF_UNIX` stream pair (`socketpair(2)`), both ends non-blocking: what a
/// readiness test registers, without a listener or a port.
pub fn nonblocking_pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    a.set_nonblocking(true).expect("non-blocking");
    b.set_nonblocking(true).expect("non-blocking");
    (a, b)
}

/// A loopback TCP port that refuses connections: bound, never listening. As long as it is
/// held, connecting to [`addr`](RefusedPort::addr) is refused (`ECONNREFUSED`) and no
/// other test's `bind` to port 0 can be given the port (where binding and then releasing a
/// port would let a test running beside it take it). Dropping it frees the port, for
/// instance for a server a test starts there later.
#[derive(Debug)]
pub struct RefusedPort {
    /// Held for its port; closed with this.
    _socket: socket2::Socket,
    addr: SocketAddr,
}

impl RefusedPort {
    /// Binds a fresh port on 127.0.0.1.
    pub fn new() -> RefusedPort {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a TCP socket");
        let any: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, 0).into();
        socket.bind(&any.into()).expect("bind a loopback port");
        let addr = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("the bound address");
        RefusedPort {
            _socket: socket,
            addr,
        }
    }

    /// The port's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Default for RefusedPort {
    fn default() -> Self {
        RefusedPort::new()
    }
}

/// (send queue, receive queue) of the IPv4 TCP socket from port `local` to port `remote`
/// (on any address), from `/proc/net/tcp`: bytes not yet acknowledged by the peer, bytes
/// not yet read. `None` if the kernel lists no such socket: never connected, or closed,
/// which a socket is as soon as it has processed a reset (its descriptor may still be
/// open, with unread data).
pub fn tcp_queues(local: u16, remote: u16) -> Option<(u64, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let (l, r) = (format!(":{local:04X}"), format!(":{remote:04X}"));
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || !f[1].ends_with(&l) || !f[2].ends_with(&r) {
            return None;
        }
        let (tx, rx) = f[4].split_once(':')?;
        Some((
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}
