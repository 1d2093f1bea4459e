//! Unix-domain socket calls that neither std nor [`socket2`] offer on stable Rust: the
//! peer's credentials (`SO_PEERCRED`).
//!
//! Addresses (paths and Linux's abstract names) need no code here: `socket2::SockAddr::unix`
//! builds both (a name that starts with a NUL byte is abstract), and `SockAddr::as_pathname`
//! / `as_abstract_namespace` read them back. Whether a path is a socket, and its device and
//! inode, come from `std::fs::symlink_metadata`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::{context, cvt};

/// The credentials of the process at the other end of a Unix-domain socket, as the kernel
/// recorded them when the connection was made (`connect` on the client's side, `listen` on
/// the server's): a later `setuid` or exit of that process does not change them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerCredentials {
    /// The peer's process id (as seen from this process's pid namespace; 0 if the peer
    /// lives in a namespace this one cannot see).
    pub pid: u32,
    /// The peer's effective user id.
    pub uid: u32,
    /// The peer's effective group id.
    pub gid: u32,
}

/// Reads the credentials of a connected Unix-domain socket's peer
/// (`getsockopt(SO_PEERCRED)`).
///
/// Meaningful on connected `AF_UNIX` sockets only: on a socket of another family Linux
/// answers with an unset record (pid 0) rather than an error, so callers ask only sockets
/// they know to be Unix-domain ones.
pub fn peer_credentials(fd: BorrowedFd<'_>) -> io::Result<PeerCredentials> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` holds the size of `cred`, so
    // the kernel writes at most one `ucred` into it; `fd` is borrowed, so live, for the call.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast::<libc::c_void>(),
            &mut len,
        )
    })
    .map_err(context("getsockopt(SO_PEERCRED)"))?;
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::other(format!(
            "getsockopt(SO_PEERCRED): {len} bytes instead of a ucred"
        )));
    }
    Ok(PeerCredentials {
        pid: cred.pid as u32,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// This process's own credentials (pid, effective uid and gid): what a peer in the same
/// process reads with [`peer_credentials`].
pub fn own_credentials() -> PeerCredentials {
    // SAFETY: `geteuid` and `getegid` take nothing and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    PeerCredentials {
        pid: std::process::id(),
        uid,
        gid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn a_socketpair_peer_is_this_process() {
        let (a, b) = UnixStream::pair().unwrap();
        assert_eq!(peer_credentials(a.as_fd()).unwrap(), own_credentials());
        assert_eq!(peer_credentials(b.as_fd()).unwrap(), own_credentials());
    }

    #[test]
    fn an_abstract_connection_carries_credentials_both_ways() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("duo-sys-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixListener::bind_addr(&addr).unwrap();
        let client = UnixStream::connect_addr(&addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert_eq!(peer_credentials(client.as_fd()).unwrap(), own_credentials());
        assert_eq!(peer_credentials(server.as_fd()).unwrap(), own_credentials());
    }

    /// The spin detector's queue probes (`FIONREAD`, `SIOCOUTQ`) answer on AF_UNIX too:
    /// `SIOCOUTQ` counts the memory of what the peer has not read yet (not bytes), so
    /// it is non-zero while data waits and zero once it is read.
    #[test]
    fn queue_probes_work_on_unix_streams() {
        use std::io::{Read, Write};
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(b"hello").unwrap();
        assert_eq!(crate::bytes_available(b.as_fd()).unwrap(), 5);
        assert!(crate::bytes_unacknowledged(a.as_fd()).unwrap() > 0);
        let mut buf = [0u8; 5];
        b.read_exact(&mut buf).unwrap();
        assert_eq!(crate::bytes_available(b.as_fd()).unwrap(), 0);
        assert_eq!(crate::bytes_unacknowledged(a.as_fd()).unwrap(), 0);
    }

    #[test]
    fn a_tcp_socket_has_no_unix_credentials() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        // Linux answers TCP with an unset ucred (pid 0) rather than an
        // error: callers must only ask AF_UNIX sockets, which is what duo-net does.
        let cred = peer_credentials(client.as_fd());
        assert!(cred.as_ref().map_or(true, |c| c.pid == 0), "{cred:?}");
    }
}
