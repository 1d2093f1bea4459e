//! Descriptors inherited from the process that started us: systemd socket activation
//! (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`) and any protocol of the same shape
//! (a count in an environment variable, descriptors from fd 3 on).
//!
//! # Ownership of inherited descriptors
//!
//! Taking an inherited descriptor number as an [`OwnedFd`] is sound only if nothing else in
//! the process owns that number. The functions here make that so by construction:
//!
//! - the numbers are announced by a variable that our parent set: it must be in the
//!   environment the process was started with (`/proc/self/environ`), with the same value,
//!   so code of this process cannot announce a descriptor it already owns by setting a
//!   variable at run time;
//! - the variables are read and removed under one process-wide lock, so each announcement
//!   is taken at most once;
//! - the numbers were open when the process started (each is checked to be open now), so no
//!   later `open`/`socket` in this process can have been given them unless they were closed
//!   first, and only their taker closes them.
//!
//! Call these functions early in `main`, before other threads read the environment.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use socket2::{Domain, Socket, Type};

use crate::{context, cvt};

/// The first inherited descriptor of the systemd protocol (after stdin, stdout, stderr).
pub const LISTEN_FDS_START: RawFd = 3;

/// The most descriptors one announcement may hand over: far more than any server
/// listens on, and a bound on the work a bogus variable can cause.
pub const MAX_INHERITED_FDS: usize = 1024;

/// Why inherited descriptors could not be taken.
#[derive(Debug)]
pub enum ActivationError {
    /// An environment variable of the protocol does not hold what it should.
    BadVariable {
        /// The variable.
        name: String,
        /// Its value (lossily decoded).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An announced descriptor is not open.
    NotOpen {
        /// The descriptor number.
        fd: RawFd,
    },
    /// An announced descriptor is close-on-exec: it cannot have survived the `exec` that
    /// started this process, so this process opened it itself (or took it already: a
    /// number announced twice).
    NotInherited {
        /// The descriptor number.
        fd: RawFd,
    },
    /// An announced descriptor is not a listening TCP (IPv4 or IPv6 stream) socket.
    NotListeningTcp {
        /// The descriptor number.
        fd: RawFd,
        /// What it is instead.
        reason: String,
    },
    /// The environment the process started with could not be read.
    Environ(io::Error),
    /// A system call on an announced descriptor failed.
    Io {
        /// The descriptor number.
        fd: RawFd,
        /// The error.
        source: io::Error,
    },
}

impl std::fmt::Display for ActivationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActivationError::BadVariable {
                name,
                value,
                reason,
            } => write!(f, "{name}={value:?}: {reason}"),
            ActivationError::NotOpen { fd } => {
                write!(f, "inherited descriptor {fd} is not open")
            }
            ActivationError::NotInherited { fd } => write!(
                f,
                "descriptor {fd} is close-on-exec, so it was not inherited \
                 (opened by this process, or announced twice)"
            ),
            ActivationError::NotListeningTcp { fd, reason } => write!(
                f,
                "inherited descriptor {fd} is not a listening TCP socket: {reason}"
            ),
            ActivationError::Environ(e) => write!(f, "reading /proc/self/environ: {e}"),
            ActivationError::Io { fd, source } => {
                write!(f, "inherited descriptor {fd}: {source}")
            }
        }
    }
}

impl std::error::Error for ActivationError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ActivationError::Io { source, .. } | ActivationError::Environ(source) => Some(source),
            _ => None,
        }
    }
}

/// Serialises reading and removing the announcing variables (see the module docs).
static ENV_LOCK: Mutex<()> = Mutex::new(());

/// The sockets systemd (or `systemd-socket-activate`, or a duo supervisor re-executing
/// itself) passed to this process, as listening TCP sockets, in order; empty when the
/// process was not socket-activated.
///
/// Follows `sd_listen_fds(3)`: the descriptors are `3..3+LISTEN_FDS`, meant for us only
/// if `LISTEN_PID` is our process id. `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` are
/// removed from the environment either way, so a child process cannot mistake them for
/// its own. Each descriptor is set close-on-exec and must be a listening IPv4/IPv6 stream
/// socket; otherwise the error names the descriptor (all of them are closed then).
///
/// # Errors
///
/// A variable is malformed, or a descriptor is closed or not a listening TCP socket.
pub fn listen_fds() -> Result<Vec<TcpListener>, ActivationError> {
    take_listen_fds()?.into_iter().map(into_listener).collect()
}

/// A listening socket handed over by socket activation ([`listen_fds_any`]).
#[derive(Debug)]
pub enum ActivatedListener {
    /// A listening TCP (IPv4 or IPv6) socket.
    Tcp(TcpListener),
    /// A listening Unix-domain stream socket (systemd's `ListenStream=/path`).
    Unix(std::os::unix::net::UnixListener),
}

/// As [`listen_fds`], but a listening Unix-domain stream socket is accepted too (a
/// `ListenStream=/run/app.sock` unit, `systemd-socket-activate -l /run/app.sock`).
///
/// # Errors
///
/// As [`listen_fds`]; a descriptor that is neither kind of listening stream socket is
/// refused with [`ActivationError::NotListeningTcp`], saying what it is.
pub fn listen_fds_any() -> Result<Vec<ActivatedListener>, ActivationError> {
    take_listen_fds()?
        .into_iter()
        .map(into_any_listener)
        .collect()
}

/// The descriptors of the systemd protocol meant for this process (see [`listen_fds`]),
/// unchecked; the variables are removed either way.
fn take_listen_fds() -> Result<Vec<OwnedFd>, ActivationError> {
    let fds = {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let pid = std::env::var_os("LISTEN_PID");
        let count = std::env::var_os("LISTEN_FDS");
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
        let (Some(pid), Some(count)) = (pid, count) else {
            return Ok(Vec::new());
        };
        let pid = parse_number("LISTEN_PID", &pid)?;
        if pid != u64::from(std::process::id()) {
            return Ok(Vec::new());
        }
        let n = parse_count("LISTEN_FDS", &count)?;
        announced_at_start("LISTEN_FDS", &count)?;
        take_range(LISTEN_FDS_START, n)?
    };
    Ok(fds)
}

/// Takes the descriptors announced by `count_var` (a count, descriptors from
/// `first` on), removing the variable; `Ok(None)` if it is not set. Each is set
/// close-on-exec. For protocols of the systemd shape that are not systemd's (a duo
/// supervisor's workers, say).
///
/// # Errors
///
/// The count is malformed (or would number descriptors past `RawFd::MAX`), or a
/// descriptor is not open.
pub fn take_fds_from_env(
    count_var: &str,
    first: RawFd,
) -> Result<Option<Vec<OwnedFd>>, ActivationError> {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(count) = std::env::var_os(count_var) else {
        return Ok(None);
    };
    std::env::remove_var(count_var);
    if first < 3 {
        return Err(bad(
            count_var,
            &count,
            "descriptors must start above stdio (3 or more)",
        ));
    }
    let n = parse_count(count_var, &count)?;
    // `n <= MAX_INHERITED_FDS`, so it fits a `RawFd`; the numbers must too.
    if first.checked_add(n as RawFd).is_none() {
        return Err(bad(
            count_var,
            &count,
            "descriptor numbers past the largest there can be",
        ));
    }
    announced_at_start(count_var, &count)?;
    take_range(first, n).map(Some)
}

/// Takes the one descriptor whose number `var` holds, removing the variable; `Ok(None)`
/// if it is not set. The descriptor is set close-on-exec.
///
/// # Errors
///
/// The number is malformed (negative, or 0..=2, which are stdio), or it is not open.
pub fn take_fd_from_env(var: &str) -> Result<Option<OwnedFd>, ActivationError> {
    let _guard = ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(value) = std::env::var_os(var) else {
        return Ok(None);
    };
    std::env::remove_var(var);
    let fd = parse_number(var, &value)?;
    let fd = RawFd::try_from(fd)
        .ok()
        .filter(|fd| *fd >= 3)
        .ok_or_else(|| {
            bad(
                var,
                &value,
                "not a descriptor number above stdio (3 or more)",
            )
        })?;
    announced_at_start(var, &value)?;
    take_one(fd).map(Some)
}

/// Checks that `fd` is a listening TCP socket (IPv4 or IPv6, `SOCK_STREAM`, `SO_ACCEPTCONN`).
///
/// # Errors
///
/// [`ActivationError::NotListeningTcp`] saying what it is instead, or [`ActivationError::Io`].
pub fn check_listening_tcp(fd: BorrowedFd<'_>) -> Result<(), ActivationError> {
    let raw = fd.as_raw_fd();
    let socket = socket2::SockRef::from(&fd);
    let io_err = |source| ActivationError::Io { fd: raw, source };
    let not = |reason: String| ActivationError::NotListeningTcp { fd: raw, reason };
    let ty = match socket.r#type() {
        Ok(ty) => ty,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => {
            return Err(not("not a socket".into()))
        }
        Err(e) => return Err(io_err(e)),
    };
    let domain = socket.domain().map_err(io_err)?;
    if domain != Domain::IPV4 && domain != Domain::IPV6 {
        return Err(not(format!("domain {domain:?}, not IPv4 or IPv6")));
    }
    if ty != Type::STREAM {
        return Err(not(format!("type {ty:?}, not a stream socket")));
    }
    if !socket.is_listener().map_err(io_err)? {
        return Err(not("not listening (no listen() was called)".into()));
    }
    Ok(())
}

/// A listening TCP socket (checked by [`check_listening_tcp`]) or a listening
/// Unix-domain stream socket.
fn into_any_listener(fd: OwnedFd) -> Result<ActivatedListener, ActivationError> {
    let raw = fd.as_raw_fd();
    let socket = socket2::SockRef::from(&fd);
    if socket.domain().ok() != Some(Domain::UNIX) {
        return into_listener(fd).map(ActivatedListener::Tcp);
    }
    let io_err = |source| ActivationError::Io { fd: raw, source };
    let not = |reason: &str| ActivationError::NotListeningTcp {
        fd: raw,
        reason: format!("a Unix-domain socket, {reason}"),
    };
    if socket.r#type().map_err(io_err)? != Type::STREAM {
        return Err(not("not a stream socket"));
    }
    if !socket.is_listener().map_err(io_err)? {
        return Err(not("not listening (no listen() was called)"));
    }
    Ok(ActivatedListener::Unix(
        std::os::unix::net::UnixListener::from(fd),
    ))
}

/// A descriptor checked by [`check_listening_tcp`], as a [`TcpListener`].
fn into_listener(fd: OwnedFd) -> Result<TcpListener, ActivationError> {
    check_listening_tcp(fd.as_fd())?;
    Ok(TcpListener::from(Socket::from(fd)))
}

/// Checks that `name=value` was in the environment this process was started with (module
/// docs: only the parent may announce descriptors).
fn announced_at_start(name: &str, value: &std::ffi::OsStr) -> Result<(), ActivationError> {
    use std::os::unix::ffi::OsStrExt;
    let mut entry = name.as_bytes().to_vec();
    entry.push(b'=');
    entry.extend_from_slice(value.as_bytes());
    let environ = std::fs::read("/proc/self/environ").map_err(ActivationError::Environ)?;
    if environ.split(|b| *b == 0).any(|e| e == entry.as_slice()) {
        Ok(())
    } else {
        Err(bad(
            name,
            value,
            "not set so when the process started: only the parent may announce descriptors",
        ))
    }
}

fn bad(name: &str, value: &std::ffi::OsStr, reason: &'static str) -> ActivationError {
    ActivationError::BadVariable {
        name: name.to_owned(),
        value: value.to_string_lossy().into_owned(),
        reason,
    }
}

fn parse_number(name: &str, value: &std::ffi::OsStr) -> Result<u64, ActivationError> {
    value
        .to_str()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| bad(name, value, "not a non-negative number"))
}

fn parse_count(name: &str, value: &std::ffi::OsStr) -> Result<usize, ActivationError> {
    let n = parse_number(name, value)?;
    usize::try_from(n)
        .ok()
        .filter(|n| *n <= MAX_INHERITED_FDS)
        .ok_or_else(|| bad(name, value, "more descriptors than duo takes (1024)"))
}

/// Takes `first..first+count` (which the caller has checked not to overflow).
///
/// If one cannot be taken, the others are still taken, and closed with the error: each
/// was announced, so nobody else in this process owns it, and left open it would be
/// inherited by every child the process starts.
fn take_range(first: RawFd, count: usize) -> Result<Vec<OwnedFd>, ActivationError> {
    let mut taken = Vec::with_capacity(count);
    let mut failed = None;
    for i in 0..count {
        match take_one(first + i as RawFd) {
            Ok(fd) => taken.push(fd),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    match failed {
        Some(e) => Err(e), // (`taken` is dropped: closed)
        None => Ok(taken),
    }
}

/// Takes ownership of the inherited descriptor `fd` and sets it close-on-exec. The caller
/// holds `ENV_LOCK` and has just removed the variable announcing `fd` (module docs).
fn take_one(fd: RawFd) -> Result<OwnedFd, ActivationError> {
    // SAFETY: `F_GETFD` only reads the descriptor flags; on a number that is not open it
    // fails with EBADF and touches nothing.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags == -1 {
        return Err(ActivationError::NotOpen { fd });
    }
    if flags & libc::FD_CLOEXEC != 0 {
        // Everything this process opens (std, duo) is close-on-exec, and so is every
        // descriptor taken here: only one inherited through `exec` is not.
        return Err(ActivationError::NotInherited { fd });
    }
    // SAFETY: `fd` is open (checked just above) and nothing else in this process owns it:
    // it is not close-on-exec, so it came through the `exec` that started the process
    // (every descriptor the process opens itself, and every one taken here before, is
    // close-on-exec), and it was announced by a variable that was read and removed under
    // `ENV_LOCK` (see the module docs for the whole argument).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `F_SETFD` on a descriptor we own; only sets its flags.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) })
        .map_err(context("fcntl(F_SETFD, FD_CLOEXEC)"))
        .map_err(|source| ActivationError::Io { fd, source })?;
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_numbers_are_typed_errors() {
        let e = parse_count("LISTEN_FDS", std::ffi::OsStr::new("x")).unwrap_err();
        assert!(e.to_string().contains("LISTEN_FDS"), "{e}");
        let e = parse_count("LISTEN_FDS", std::ffi::OsStr::new("100000")).unwrap_err();
        assert!(matches!(e, ActivationError::BadVariable { .. }), "{e}");
        assert_eq!(parse_count("N", std::ffi::OsStr::new("2")).unwrap(), 2);
    }

    #[test]
    fn a_descriptor_this_process_opened_or_took_already_is_not_taken() {
        // std opens close-on-exec, and so is everything `take_one` returns: neither can
        // have come through `exec`, so neither gets a second owner.
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let e = take_one(file.as_raw_fd()).unwrap_err();
        assert!(matches!(e, ActivationError::NotInherited { .. }), "{e}");
        assert!(e.to_string().contains("close-on-exec"), "{e}");
        // The file is still ours and open.
        let mut buf = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut &file, &mut buf).unwrap(), 1);
    }

    #[test]
    fn unix_listeners_are_taken_as_such_others_are_refused() {
        let dir = std::env::temp_dir().join(format!("duo-activation-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = std::os::unix::net::UnixListener::bind(&dir).unwrap();
        let fd = OwnedFd::from(listener);
        assert!(matches!(
            into_any_listener(fd).unwrap(),
            ActivatedListener::Unix(_)
        ));
        let _ = std::fs::remove_file(&dir);

        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(matches!(
            into_any_listener(OwnedFd::from(tcp)).unwrap(),
            ActivatedListener::Tcp(_)
        ));

        let (unix, _) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = into_any_listener(OwnedFd::from(unix)).unwrap_err();
        assert!(
            e.to_string()
                .contains("a Unix-domain socket, not listening"),
            "{e}"
        );

        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let e = into_any_listener(OwnedFd::from(file)).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
    }

    #[test]
    fn a_listening_socket_passes_the_check_others_do_not() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        check_listening_tcp(listener.as_fd()).unwrap();

        let unbound = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let e = check_listening_tcp(unbound.as_fd()).unwrap_err();
        assert!(e.to_string().contains("not listening"), "{e}");

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = check_listening_tcp(udp.as_fd()).unwrap_err();
        assert!(e.to_string().contains("not a stream"), "{e}");

        let (unix, _) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = check_listening_tcp(unix.as_fd()).unwrap_err();
        assert!(e.to_string().contains("not IPv4"), "{e}");

        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let e = check_listening_tcp(file.as_fd()).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("descriptor {}", file.as_raw_fd())),
            "{e}"
        );
    }
}
