//! Socket system calls that [`socket2`] does not offer on borrowed descriptors, in the
//! form the upper layers of duo need them.
//!
//! All functions take a [`BorrowedFd`], so they work on any socket the caller owns
//! (`socket2::Socket`, `std::net::TcpStream`, `OwnedFd`). Errors are returned exactly as
//! the kernel reported them (no added context), because callers branch on them:
//! `WouldBlock` ends an edge-triggered read or write loop, `EMFILE` triggers the acceptor's
//! spare-descriptor recovery. `EINTR` is retried here and never returned.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use socket2::SockAddr;

use crate::{context, cvt, cvt_size};

/// The most buffers one `readv`/`writev` call accepts (Linux's `UIO_MAXIOV`).
///
/// The vectored functions here pass at most this many slices to the kernel and ignore the
/// rest, so a partial count comes back instead of `EINVAL`.
pub const IOV_MAX: usize = 1024;

/// The index of the first non-empty buffer (0 if all are empty): the vectored calls
/// start there, so that the [`IOV_MAX`] buffers they pass cannot all be empty while a
/// later one is not (which would return `Ok(0)`: end of stream for a read, no progress
/// for a write).
fn first_non_empty<T: std::ops::Deref<Target = [u8]>>(bufs: &[T]) -> usize {
    bufs.iter().position(|b| !b.is_empty()).unwrap_or(0)
}

/// Retries a system call while it fails with `EINTR`.
fn retry_eintr<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Accepts one connection from a listening socket with `accept4(SOCK_NONBLOCK |
/// SOCK_CLOEXEC)`: the new descriptor is non-blocking and closed on `exec` from the moment
/// it exists, with no window for another thread's `fork` to leak it.
///
/// Returns the connected socket and the peer's address. When the backlog is empty the
/// error kind is [`io::ErrorKind::WouldBlock`]; `EMFILE`/`ENFILE` come back as raw OS
/// errors (`err.raw_os_error() == Some(libc::EMFILE)`). `ECONNABORTED` (the peer gave up
/// while queued) is returned as [`io::ErrorKind::ConnectionAborted`]; callers should go on
/// accepting.
pub fn accept4(listener: BorrowedFd<'_>) -> io::Result<(OwnedFd, SockAddr)> {
    retry_eintr(|| {
        // SAFETY: `try_init` hands us a pointer to a zeroed `sockaddr_storage` and to its
        // length, initialised to the storage size; `accept4` writes at most that many bytes
        // and updates the length, which is exactly the contract `try_init` documents.
        let (fd, addr) = unsafe {
            SockAddr::try_init(|storage, len| {
                cvt(libc::accept4(
                    listener.as_raw_fd(),
                    storage.cast::<libc::sockaddr>(),
                    len,
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                ))
            })?
        };
        // SAFETY: `accept4` succeeded, so `fd` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok((fd, addr))
    })
}

/// Reads into several buffers with one `readv` call, filling them in order.
///
/// Returns the number of bytes read; `Ok(0)` with non-empty buffers means end of stream.
/// At most [`IOV_MAX`] buffers are used.
pub fn readv(fd: BorrowedFd<'_>, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
    let start = first_non_empty(bufs);
    let bufs = &mut bufs[start..];
    let count = bufs.len().min(IOV_MAX);
    retry_eintr(|| {
        // SAFETY: `IoSliceMut` is ABI-compatible with `struct iovec` on Unix (guaranteed
        // by std), the pointer covers `count <= bufs.len()` valid, writable slices that stay
        // borrowed for the duration of the call, and `fd` is a live descriptor.
        cvt_size(unsafe {
            libc::readv(
                fd.as_raw_fd(),
                bufs.as_mut_ptr().cast::<libc::iovec>(),
                count as libc::c_int,
            )
        })
    })
}

/// Receives into `buf` with one `recv` call: the one-buffer path of [`recv_vectored`].
///
/// Returns the number of bytes read; `Ok(0)` with a non-empty `buf` means end of stream.
/// Cheaper than [`readv`] with one buffer: the kernel looks the socket up directly instead
/// of going through the file layer and copying an iovec array in. Fails with `ENOTSOCK` on
/// descriptors that are not sockets.
fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    retry_eintr(|| {
        // SAFETY: the pointer and length describe `buf`, a valid writable slice borrowed
        // for the duration of the call; `fd` is a live descriptor.
        cvt_size(unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) })
    })
}

/// Receives into several buffers from a socket, filling them in order: one `recv(2)` when
/// there is one buffer (the common case, and the cheaper call), one [`readv`] otherwise.
///
/// Returns the number of bytes read; `Ok(0)` with non-empty buffers means end of stream.
pub fn recv_vectored(fd: BorrowedFd<'_>, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
    match bufs {
        [one] => recv(fd, one),
        _ => readv(fd, bufs),
    }
}

/// Sends `buf` on a socket with one `send(MSG_NOSIGNAL)` call: the one-buffer path of
/// [`send_vectored`].
///
/// Returns the number of bytes sent, which may be less than `buf.len()`. A send to a
/// connection the peer has reset fails with `EPIPE` instead of raising `SIGPIPE`. Fails
/// with `ENOTSOCK` on descriptors that are not sockets.
fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    retry_eintr(|| {
        // SAFETY: the pointer and length describe `buf`, a valid slice borrowed for the
        // duration of the call that the kernel only reads; `fd` is a live descriptor.
        cvt_size(unsafe {
            libc::send(
                fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        })
    })
}

/// Writes several buffers with one `writev` call, in order.
///
/// Returns the number of bytes written, which may be less than the total (the caller
/// keeps the rest). At most [`IOV_MAX`] buffers are used. On a socket whose peer has gone,
/// `writev` raises `SIGPIPE`; use [`send_vectored`] on sockets, or [`crate::ignore_sigpipe`].
pub fn writev(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let bufs = &bufs[first_non_empty(bufs)..];
    let count = bufs.len().min(IOV_MAX);
    retry_eintr(|| {
        // SAFETY: `IoSlice` is ABI-compatible with `struct iovec` (guaranteed by std); the
        // pointer covers `count <= bufs.len()` valid slices borrowed for the duration of
        // the call, which the kernel only reads; `fd` is a live descriptor.
        cvt_size(unsafe {
            libc::writev(
                fd.as_raw_fd(),
                bufs.as_ptr().cast::<libc::iovec>(),
                count as libc::c_int,
            )
        })
    })
}

/// Sends several buffers on a socket with one `sendmsg(MSG_NOSIGNAL)` call.
///
/// Same as [`writev`] but a write to a connection the peer has reset fails with `EPIPE`
/// instead of raising `SIGPIPE`, so a library never kills its process on peer behaviour.
/// Fails with `ENOTSOCK` on descriptors that are not sockets. One buffer goes out with the
/// cheaper `send(2)` (no `msghdr` and iovec to copy in).
pub fn send_vectored(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let bufs = &bufs[first_non_empty(bufs)..];
    if let [one] = bufs {
        return send(fd, one);
    }
    let count = bufs.len().min(IOV_MAX);
    retry_eintr(|| {
        // SAFETY: `msghdr` is a plain C struct for which all-zero is a valid value (no name,
        // no control data, no flags).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = bufs.as_ptr().cast::<libc::iovec>().cast_mut();
        msg.msg_iovlen = count as _;
        // SAFETY: `msg` points at `count` `IoSlice`s (ABI-compatible with `iovec`) that
        // stay borrowed for the call; the kernel only reads them (`sendmsg` takes a const
        // `msghdr`), so the `cast_mut` above never leads to a write; `fd` is live.
        cvt_size(unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) })
    })
}

/// Shuts down the writing half of a connection (`shutdown(SHUT_WR)`): the peer reads end
/// of stream once everything sent before has arrived, and can still send to us.
///
/// A socket that is already disconnected (`ENOTCONN`) is not an error.
pub fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `shutdown` takes a descriptor and a constant; `fd` is live for the call.
    match cvt(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) }) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
        Err(e) => Err(context("shutdown(SHUT_WR)")(e)),
    }
}

/// Reads and clears the pending error of a socket (`getsockopt(SO_ERROR)`).
///
/// Returns `Ok(None)` when there is none. This is how a non-blocking `connect` learns its
/// outcome, and how an `EPOLLERR` event learns its cause.
pub fn take_socket_error(fd: BorrowedFd<'_>) -> io::Result<Option<io::Error>> {
    let err = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR, "getsockopt(SO_ERROR)")?;
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

/// `getsockopt` of an option whose value is one `int`; `what` names the call in errors.
fn getsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    what: &'static str,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes, and `len` holds the size of `value`,
    // so the kernel writes at most an int into it.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast::<libc::c_void>(),
            &mut len,
        )
    })
    .map_err(context(what))?;
    Ok(value)
}

/// Sets `TCP_DEFER_ACCEPT` on a listening TCP socket: the kernel completes a connection
/// (and wakes `accept`) only once the client has sent data, or after about `secs` seconds
/// without any (then the connection is handed over as usual). For protocols where the
/// client speaks first this saves the server a wake-up and a readiness event per
/// connection, and connections that never send anything cost it nothing until then.
/// `secs == 0` turns it off.
pub fn set_tcp_defer_accept(fd: BorrowedFd<'_>, secs: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    // SAFETY: the option value is one `int`, passed by pointer with its exact size; the
    // kernel only reads it.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&value as *const libc::c_int).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map_err(context("setsockopt(TCP_DEFER_ACCEPT)"))?;
    Ok(())
}

/// Reads `TCP_DEFER_ACCEPT` of a listening TCP socket, in seconds (0: off). The kernel keeps
/// it as a number of SYN-ACK retransmissions, so this may be larger than what was set
/// (on Linux 6.18: 1 s reads back as 1 s, 2 s as 3 s, 5 s as 7 s).
pub fn tcp_defer_accept(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let value = getsockopt_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
        "getsockopt(TCP_DEFER_ACCEPT)",
    )?;
    Ok(u32::try_from(value).unwrap_or(0))
}

/// The number of bytes waiting in a socket's receive queue (`ioctl(FIONREAD)`).
pub fn bytes_available(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: `FIONREAD` writes one `int` through the pointer, which points at `n`.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n as *mut libc::c_int) })
        .map_err(context("ioctl(FIONREAD)"))?;
    Ok(n as usize)
}

/// The number of bytes in a socket's send queue not yet acknowledged by the peer
/// (`ioctl(SIOCOUTQ)`): zero once everything written has reached the peer's kernel.
pub fn bytes_unacknowledged(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: `SIOCOUTQ` (`TIOCOUTQ`) writes one `int` through the pointer, which points at
    // `n`.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n as *mut libc::c_int) })
        .map_err(context("ioctl(SIOCOUTQ)"))?;
    Ok(n as usize)
}

/// Whether the socket's receiving side is shut down (`poll` reports `POLLRDHUP`), whatever
/// an epoll registration asks for: a Unix-domain listening socket that another holder shut
/// down is reported readable, and `accept` there fails with `EAGAIN` (not `EINVAL`, as on
/// a TCP one), so only this tells it from a wake-up another acceptor won.
pub fn is_read_shut_down(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid `pollfd`, counted as one; a zero timeout does not block.
    cvt(unsafe { libc::poll(&mut p, 1, 0) }).map_err(context("poll(POLLRDHUP)"))?;
    Ok(p.revents & libc::POLLRDHUP != 0)
}

/// Whether an error means the process or the system ran out of file descriptors
/// (`EMFILE` or `ENFILE`), the case an acceptor must handle without spinning.
pub fn is_fd_exhaustion(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Whether an `accept` error concerns only the connection being accepted, not the
/// listener or the system: the peer reset the connection before it was accepted
/// (`ECONNABORTED`, `EPROTO`), or one of the network errors Linux passes on from the new
/// socket (`ENETDOWN`, `ENOPROTOOPT`, `EHOSTDOWN`, `ENONET`, `EHOSTUNREACH`,
/// `ENETUNREACH`; accept(2), "Error handling"). Either way that connection has left the
/// listen queue and the next one can be accepted at once. Running out of resources
/// (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) is not such an error.
pub fn is_per_connection_accept_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EPROTO
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
        )
    )
}

/// Whether an error from a non-blocking `connect` means the connection is under way
/// (`EINPROGRESS`, or `EINTR`, after which the connect also goes on in the background):
/// wait for the socket to become writable, then read [`take_socket_error`].
pub fn is_connect_in_progress(err: &io::Error) -> bool {
    // Not EAGAIN: for TCP that means no free local port, a failure to retry later.
    matches!(
        err.raw_os_error(),
        Some(libc::EINPROGRESS) | Some(libc::EINTR)
    )
}
