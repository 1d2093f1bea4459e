//! Sockets: the loopback-only target, source addresses, non-blocking connect, abortive close.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use duo_sys::socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Resolves `addr` and accepts it only if it is a loopback address: the load generator
/// must never be pointed at another machine.
pub(crate) fn loopback_target(addr: &str) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{addr}`: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("`{addr}` resolves to no address"));
    }
    if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(format!(
            "`{addr}` is not a loopback address ({}): loadgen only targets 127.0.0.0/8 or ::1",
            bad.ip()
        ));
    }
    // Prefer IPv4: only there can connections be spread over source addresses.
    Ok(addrs
        .iter()
        .copied()
        .find(SocketAddr::is_ipv4)
        .unwrap_or(addrs[0]))
}

/// The `i`th of `count` source addresses, `127.0.0.2`, `127.0.0.3`, ... (shifted by `base`
/// addresses, so that processes of one run use disjoint sets): each source
/// address has its own range of ephemeral ports, so spreading connections over several
/// lifts the ~28 000-connection limit of one address. `None` (let the kernel choose) when
/// `count` is 0 or the target is IPv6, which has only one loopback address.
pub(crate) fn source_addr(
    target: SocketAddr,
    count: usize,
    base: usize,
    i: usize,
) -> Option<IpAddr> {
    if count == 0 || !target.is_ipv4() {
        return None;
    }
    let n = ((base + i % count) as u32).min(MAX_SOURCES - 1) + 2;
    // 127.0.0.2 .. 127.255.255.254: the whole of 127/8 is loopback on Linux.
    Some(IpAddr::V4(Ipv4Addr::from(0x7F00_0000 + n)))
}

/// Source addresses there are: 127.0.0.2 .. 127.255.255.254.
pub(crate) const MAX_SOURCES: u32 = 0x00FF_FFFD;

/// Starts a non-blocking connect to `target`, from `source` if given (bound before the
/// connect, port chosen by the kernel). The connect completes in the background: the
/// socket becomes writable, and its `SO_ERROR` (`TcpStream::take_error`) says how it went.
pub(crate) fn start_connect(target: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    // Requests are written whole: never let Nagle hold a message's tail back.
    socket.set_nodelay(true)?;
    if let Some(ip) = source {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if duo_sys::is_connect_in_progress(&e) => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}

/// Closes with `SO_LINGER` 0, which sends RST instead of FIN. The client closes first, so
/// a normal close would leave the connection in `TIME_WAIT` on *our* side for 60 s, holding
/// its local port: a churn run (thousands of connections per second), or several
/// 10 000-connection runs in a row, would exhaust the ephemeral ports. An abortive close
/// leaves nothing behind. Replies still in flight are discarded, which is fine: a connection
/// is closed only when nothing more is expected from it.
pub(crate) fn close_abortively(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
