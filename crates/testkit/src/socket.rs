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
    let f = tcp_row(local, remote)?;
    let (tx, rx) = f[4].split_once(':')?;
    Some((
        u64::from_str_radix(tx, 16).ok()?,
        u64::from_str_radix(rx, 16).ok()?,
    ))
}

/// The TCP state of the IPv4 socket from port `local` to port `remote` (on any address),
/// from `/proc/net/tcp`: what a test waits on to know that a segment has reached the
/// kernel on the other side, say a FIN (the socket is then [`TcpState::CloseWait`])
/// that no one has read yet. `None` if the kernel lists no such socket (see
/// [`tcp_queues`]).
pub fn tcp_state(local: u16, remote: u16) -> Option<TcpState> {
    let f = tcp_row(local, remote)?;
    Some(TcpState::from_code(u8::from_str_radix(&f[3], 16).ok()?))
}

/// A TCP socket's state as the kernel lists it (`st` in `/proc/net/tcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    /// `ESTABLISHED`.
    Established,
    /// `FIN_WAIT1`: this side has sent its FIN, not yet acknowledged.
    FinWait1,
    /// `FIN_WAIT2`: this side's FIN is acknowledged; the peer's has not come.
    FinWait2,
    /// `CLOSE_WAIT`: the peer's FIN has arrived; this side has not closed.
    CloseWait,
    /// `LAST_ACK`: both FINs sent, this side's not yet acknowledged.
    LastAck,
    /// `TIME_WAIT`.
    TimeWait,
    /// Any other state, by the kernel's number.
    Other(u8),
}

impl TcpState {
    fn from_code(code: u8) -> TcpState {
        match code {
            0x01 => TcpState::Established,
            0x04 => TcpState::FinWait1,
            0x05 => TcpState::FinWait2,
            0x06 => TcpState::TimeWait,
            0x08 => TcpState::CloseWait,
            0x09 => TcpState::LastAck,
            other => TcpState::Other(other),
        }
    }
}

/// The fields of the line of `/proc/net/tcp` for the socket from port `local` to port
/// `remote`, if the kernel lists one.
fn tcp_row(local: u16, remote: u16) -> Option<Vec<String>> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let (l, r) = (format!(":{local:04X}"), format!(":{remote:04X}"));
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || !f[1].ends_with(&l) || !f[2].ends_with(&r) {
            return None;
        }
        Some(f.into_iter().map(str::to_owned).collect())
    })
}
