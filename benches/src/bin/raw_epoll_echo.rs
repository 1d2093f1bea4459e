//! `raw_epoll_echo`: the smallest correct echo server written directly on libc epoll, the
//! "close to the limit" peer baseline of `cargo xtask bench`.
//!
//! One thread, level-triggered epoll, one 64 KiB stack buffer shared by every connection.
//! Whatever a connection's `recv` returns is sent straight back; if the socket takes only
//! part of it, the rest is kept in that connection's `Vec` and the connection waits for
//! `EPOLLOUT` *instead of* `EPOLLIN` until the rest is gone, so a client that does not read
//! stops being read (backpressure) and a connection never holds more than 64 KiB.
//!
//! This file is the one sanctioned user of `libc` outside `duo-sys` (the repository's tidy
//! test exempts paths containing `raw_epoll`): it shows what the reactor's abstractions cost
//! against hand-written syscalls. The listening socket is made with `socket2`.
//!
//! Details:
//! - The epoll token is the descriptor itself, and connections live in a `Vec` indexed by
//!   it. A descriptor closed during one batch of events may be reused by `accept4` in the
//!   same batch; a stale event then reaches the new connection. That is harmless because an
//!   event only triggers a `recv` or `send` attempt (`EAGAIN` is a no-op), never a close by
//!   itself: connections close only on end of file or on a failed syscall.
//! - `EMFILE`/`ENFILE` (and `ENOBUFS`/`ENOMEM`) on `accept4`: logged, and the listening socket
//!   is disabled for 100 ms (a level-triggered listener with a pending connection would
//!   otherwise wake the loop in a spin). The pending connections wait in the backlog.
//! - No `TCP_NODELAY`, as duo's own echo server; stops on SIGTERM/SIGINT's default action.
//!
//! ```text
//! raw_epoll_echo [--listen ADDR]        (default 127.0.0.1:0)
//! ```
//! It prints `listening on HOST:PORT` once the socket listens.

use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use socket2::{Domain, Socket, Type};

/// Bytes read per `recv`; also the most a connection ever keeps unsent.
const BUF_SIZE: usize = 64 << 10;
/// How long accepting pauses when the process is out of descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// One client: its socket and what it sent that could not be echoed yet.
struct Conn {
    fd: OwnedFd,
    pending: Vec<u8>,
}

/// The raw-epoll peer echo server of `cargo xtask bench`.
#[derive(Debug, Parser)]
#[command(name = "raw_epoll_echo")]
struct Cli {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

fn main() -> ExitCode {
    let addr = Cli::parse().listen;
    match serve(addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raw_epoll_echo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Turns a `-1` return into the `errno` error.
fn cvt<T: Default + PartialOrd>(ret: T) -> io::Result<T> {
    if ret < T::default() {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?; // duo's backlog
    Ok(socket.into())
}

/// Adds, modifies or (with `events == 0`) disables the interest in `fd`.
fn ctl(epfd: RawFd, op: i32, fd: RawFd, events: u32) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events,
        u64: fd as u64,
    };
    // SAFETY: `ev` is a valid `epoll_event` the kernel only reads; bad descriptors or ops
    // are reported as errors, not undefined behaviour.
    cvt(unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) }).map(drop)
}

fn serve(addr: SocketAddr) -> io::Result<()> {
    // More descriptors if the hard limit allows (the idle scenario holds 10 000).
    let _ = duo_sys::raise_fd_limit();
    let listener = listen(addr)?;
    let lfd = listener.as_raw_fd();
    // SAFETY: `epoll_create1` takes a flag and no pointers; its result is checked by `cvt`
    // before `OwnedFd` takes sole ownership of the new descriptor.
    let ep = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
    let epfd = ep.as_raw_fd();
    ctl(epfd, libc::EPOLL_CTL_ADD, lfd, libc::EPOLLIN as u32)?;
    println!("listening on {}", listener.local_addr()?);
    io::stdout().flush()?;

    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut buf = [0u8; BUF_SIZE];
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut resume_accept: Option<Instant> = None;
    loop {
        let timeout = resume_accept.map_or(-1, |t| {
            t.saturating_duration_since(Instant::now()).as_millis() as i32 + 1
        });
        // SAFETY: `events` is a writable array of `events.len()` entries, all the kernel may
        // fill.
        let n =
            unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, timeout) };
        let n = match cvt(n) {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if resume_accept.is_some_and(|t| Instant::now() >= t) {
            resume_accept = None;
            ctl(epfd, libc::EPOLL_CTL_MOD, lfd, libc::EPOLLIN as u32)?;
        }
        for ev in &events[..n] {
            let fd = ev.u64 as RawFd;
            if fd == lfd {
                if !accept_all(epfd, lfd, &mut conns)? {
                    ctl(epfd, libc::EPOLL_CTL_MOD, lfd, 0)?;
                    resume_accept = Some(Instant::now() + ACCEPT_PAUSE);
                }
            } else if let Some(slot) = conns.get_mut(fd as usize) {
                if slot.as_mut().is_some_and(|c| !service(epfd, c, &mut buf)) {
                    *slot = None; // closes the socket, which also leaves the epoll set
                }
            }
        }
    }
}

/// Accepts until `EAGAIN`. Returns `false` if out of descriptors (accepting should pause).
fn accept_all(epfd: RawFd, lfd: RawFd, conns: &mut Vec<Option<Conn>>) -> io::Result<bool> {
    loop {
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        // SAFETY: null address pointers are allowed (the peer address is not wanted).
        let ret = unsafe { libc::accept4(lfd, std::ptr::null_mut(), std::ptr::null_mut(), flags) };
        let fd = match cvt(ret) {
            // SAFETY: `accept4` succeeded, so `fd` is a new descriptor nobody else owns.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(true),
                Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO | libc::EPERM) => continue,
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                    eprintln!("raw_epoll_echo: accept: {e}; pausing accept for {ACCEPT_PAUSE:?}");
                    return Ok(false);
                }
                _ => return Err(e),
            },
        };
        let raw = fd.as_raw_fd();
        if let Err(e) = ctl(epfd, libc::EPOLL_CTL_ADD, raw, libc::EPOLLIN as u32) {
            eprintln!("raw_epoll_echo: epoll_ctl: {e}; dropping the connection");
            continue; // `fd` closes here
        }
        if conns.len() <= raw as usize {
            conns.resize_with(raw as usize + 1, || None);
        }
        conns[raw as usize] = Some(Conn {
            fd,
            pending: Vec::new(),
        });
    }
}

/// Handles one event of `c`: flushes what is pending, else reads and echoes. Returns
/// `false` when the connection is finished (end of file or error).
fn service(epfd: RawFd, c: &mut Conn, buf: &mut [u8; BUF_SIZE]) -> bool {
    let fd = c.fd.as_raw_fd();
    if !c.pending.is_empty() {
        match send(fd, &c.pending) {
            Ok(n) => drop(c.pending.drain(..n)),
            Err(e) => return transient(&e),
        }
        // Once drained, wait for input again instead of output.
        return !c.pending.is_empty()
            || ctl(epfd, libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32).is_ok();
    }
    // SAFETY: `buf` is writable for `buf.len()` bytes, the most `recv` writes.
    let ret = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    let n = match cvt(ret) {
        Ok(0) => return false,
        Ok(n) => n as usize,
        Err(e) => return transient(&e),
    };
    let sent = match send(fd, &buf[..n]) {
        Ok(sent) => sent,
        Err(e) if transient(&e) => 0,
        Err(_) => return false,
    };
    if sent < n {
        // Backpressure: stop reading until the rest is out.
        c.pending.extend_from_slice(&buf[sent..n]);
        return ctl(epfd, libc::EPOLL_CTL_MOD, fd, libc::EPOLLOUT as u32).is_ok();
    }
    true
}

/// Whether a failed `recv`/`send` is worth retrying at the next event.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// One `send` of `data` (without SIGPIPE on a reset peer).
fn send(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is readable for `data.len()` bytes, the most `send` reads.
    let ret = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
    cvt(ret).map(|n| n as usize)
}
