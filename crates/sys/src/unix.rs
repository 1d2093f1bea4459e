//! Unix-domain socket calls that neither std nor [`socket2`] offer on stable Rust: the
//! peer's credentials (`SO_PEERCRED`).
//!
//! Addresses (paths and Linux's abstract names): [`unix_addr`] builds both, a path that
//! fills all of `sun_path` (108 bytes, no terminating NUL) included, which
//! `socket2::SockAddr::unix` refuses though Linux binds and connects to it (so a peer may
//! show up with one). `SockAddr::as_pathname` / `as_abstract_namespace` read the kernel's
//! answers back (the kernel terminates a 108-byte path it reports with a NUL past
//! `sun_path`, within the `sockaddr_storage`). Whether a path is a socket, and its device
//! and inode, come from `std::fs::symlink_metadata`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use socket2::SockAddr;

use crate::{context, cvt};

/// The size of `sun_path`: the longest path (with no terminating NUL) or abstract name
/// (with its leading NUL) a Unix-domain address holds.
pub const SUN_PATH_LEN: usize = 108;

/// The address of a Unix-domain path or abstract name given as the bytes of `sun_path`: a
/// leading NUL makes it an abstract name (the bytes after it, not NUL-terminated), else a
/// path (NUL-terminated when shorter than `sun_path`; exactly 108 bytes fill it, as Linux
/// allows). `socket2::SockAddr::unix` stops a path at 107 bytes. (socket2's
/// `as_pathname` reads such a full path back one byte short, for want of a NUL: read the
/// kernel's answers (`local_addr`, `peer_addr`), which come back whole.)
///
/// # Errors
///
/// `InvalidInput` for no bytes (that is the unnamed address, not one to bind or connect
/// to), more than [`SUN_PATH_LEN`] bytes, or a path with a NUL byte inside.
pub fn unix_addr(sun_path: &[u8]) -> io::Result<SockAddr> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
    let is_abstract = match sun_path.first() {
        None => return Err(invalid("an empty Unix-domain address")),
        Some(&first) => first == 0,
    };
    if sun_path.len() > SUN_PATH_LEN {
        return Err(invalid("a Unix-domain address holds at most 108 bytes"));
    }
    if !is_abstract && sun_path.contains(&0) {
        return Err(invalid("a Unix-domain path cannot contain a NUL byte"));
    }
    let offset = std::mem::offset_of!(libc::sockaddr_un, sun_path);
    // A path shorter than `sun_path` carries its NUL (as `SockAddr::unix` writes it); the
    // kernel refuses a length past `sizeof(sockaddr_un)`, so a full one carries none.
    let nul = usize::from(!is_abstract && sun_path.len() < SUN_PATH_LEN);
    let len = (offset + sun_path.len() + nul) as libc::socklen_t;
    // SAFETY: `try_init` hands a pointer to a `sockaddr_storage` (128 bytes, aligned for
    // any socket address, so for a `sockaddr_un`, 110 bytes) and to its length. We write
    // the family, at most 108 bytes into `sun_path` (checked above) and, for a path
    // shorter than that, its terminating NUL right after it (index < 108): all within
    // `sun_path`, written explicitly rather than trusting the storage to be zeroed. `len`
    // is at most `sizeof(sockaddr_un)`, within the storage, and covers only bytes written.
    let ((), addr) = unsafe {
        SockAddr::try_init(|storage, storage_len| {
            let un = storage.cast::<libc::sockaddr_un>();
            (*un).sun_family = libc::AF_UNIX as libc::sa_family_t;
            let dst = std::ptr::addr_of_mut!((*un).sun_path).cast::<u8>();
            std::ptr::copy_nonoverlapping(sun_path.as_ptr(), dst, sun_path.len());
            if nul == 1 {
                dst.add(sun_path.len()).write(0);
            }
            *storage_len = len;
            Ok(())
        })
    }?;
    Ok(addr)
}

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

    /// A path that fills `sun_path` (108 bytes, no NUL) binds, and the kernel reports it
    /// whole; one byte more, an empty address or a NUL inside a path are refused.
    #[test]
    fn unix_addr_takes_all_of_sun_path() {
        use std::os::unix::ffi::OsStrExt;
        let dir = duo_testkit::TempDir::new("sys-unix-addr");
        let base = dir.path().as_os_str().as_bytes().to_vec();
        let mut path = base.clone();
        path.push(b'/');
        path.resize(SUN_PATH_LEN, b'p');
        let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        s.bind(&unix_addr(&path).unwrap()).unwrap();
        let local = s.local_addr().unwrap();
        assert_eq!(
            local.as_pathname().unwrap().as_os_str().as_bytes(),
            &path[..]
        );
        // A shorter path, and an abstract name, as `SockAddr::unix` builds them.
        let short = unix_addr(&path[..50]).unwrap();
        assert_eq!(
            short.as_pathname().unwrap().as_os_str().as_bytes(),
            &path[..50]
        );
        let name = unix_addr(b"\0duo-name").unwrap();
        assert_eq!(name.as_abstract_namespace(), Some(&b"duo-name"[..]));
        let mut long = path.clone();
        long.push(b'q');
        for bad in [&long[..], b"", b"a\0b"] {
            let err = unix_addr(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}: {err}");
        }
        assert!(
            unix_addr(&[0u8; SUN_PATH_LEN]).is_ok(),
            "an abstract name of 107 bytes"
        );
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
