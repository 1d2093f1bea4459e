//! Sockets: the loopback-only target (TCP, or a Unix-domain socket of this host), source
//! addresses, non-blocking connect, abortive close.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use duo_net::Endpoint;
use duo_sys::socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Where the load goes: a loopback TCP address, or a Unix-domain socket (`unix:/path`,
/// `unix:@name`), which is local by nature.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A loopback TCP address.
    Inet(SocketAddr),
    /// A Unix-domain address, and the form it was given in (for reports).
    Unix(SockAddr, String),
}

impl Target {
    /// The TCP address, if the target is one.
    pub(crate) fn inet(&self) -> Option<SocketAddr> {
        match self {
            Target::Inet(a) => Some(*a),
            Target::Unix(..) => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Inet(a) => write!(f, "{a}"),
            Target::Unix(_, shown) => f.write_str(shown),
        }
    }
}

/// `unix:/path` or `unix:@name` as a Unix-domain target, read as duo's servers print
/// them (`listening on unix:...`: [`duo_net::Endpoint`]'s form, whose `\xNN` is the byte
/// `NN`), anything else as [`loopback_target`].
pub(crate) fn target(addr: &str) -> Result<Target, String> {
    if !addr.starts_with("unix:") {
        return loopback_target(addr).map(Target::Inet);
    }
    let endpoint: duo_net::Endpoint = addr.parse().map_err(|e| format!("{e}"))?;
    let bytes = match &endpoint {
        Endpoint::Unix(path) => path.as_os_str().as_bytes().to_vec(),
        // A leading NUL byte makes it abstract (Linux's convention).
        Endpoint::Abstract(name) => [&[0u8][..], name].concat(),
        _ => {
            return Err(format!(
                "`{addr}` is not a Unix-domain address to connect to"
            ))
        }
    };
    // Not `SockAddr::unix`, which stops a path at 107 bytes (Linux takes 108).
    let sock = duo_sys::unix_addr(&bytes).map_err(|e| format!("`{addr}`: {e}"))?;
    Ok(Target::Unix(sock, addr.to_owned()))
}

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
pub(crate) fn source_addr(target: &Target, count: usize, base: usize, i: usize) -> Option<IpAddr> {
    if count == 0 || !target.inet().is_some_and(|t| t.is_ipv4()) {
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
/// socket becomes writable, and its `SO_ERROR` (`Socket::take_error`) says how it went.
/// A Unix-domain connect completes (or fails: `EAGAIN` when the server's backlog is full)
/// at once.
pub(crate) fn start_connect(target: &Target, source: Option<IpAddr>) -> io::Result<Socket> {
    let target = match target {
        Target::Inet(a) => *a,
        Target::Unix(addr, _) => {
            let socket = Socket::new(Domain::UNIX, Type::STREAM.nonblocking(), None)?;
            socket.connect(addr)?;
            return Ok(socket);
        }
    };
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
    Ok(socket)
}

/// Closes with `SO_LINGER` 0, which sends RST instead of FIN. The client closes first, so
/// a normal close would leave the connection in `TIME_WAIT` on *our* side for 60 s, holding
/// its local port: a churn run (thousands of connections per second), or several
/// 10 000-connection runs in a row, would exhaust the ephemeral ports. An abortive close
/// leaves nothing behind. Replies still in flight are discarded, which is fine: a connection
/// is closed only when nothing more is expected from it.
/// (A Unix-domain socket has no `TIME_WAIT`; the linger setting is harmless there.)
pub(crate) fn close_abortively(stream: Socket) {
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}
