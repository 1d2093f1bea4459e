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
//! # More threads, five ways
//!
//! With `--threads N` (N > 1) the server runs N threads, spread one of five ways, the
//! models a multi-threaded reactor can follow (see `docs/benchmarks.md`, issue 15):
//! - `--spread reuseport` (the default): each thread runs the loop above on its own
//!   `SO_REUSEPORT` listener and epoll set. A connection belongs to the thread that accepted
//!   it, as in duo (one loop per thread) and muduo.
//! - `--spread shared`: the threads share one epoll set and any of them serves any
//!   connection (work sharing, the model of tokio's multi-threaded runtime). Connections are
//!   registered `EPOLLONESHOT`: an event disarms its connection until the thread serving it
//!   re-arms it (one `epoll_ctl` per event, the price of the model on epoll), so one
//!   connection is never served by two threads at once. Each thread takes at most
//!   [`SHARED_BATCH`] events per `epoll_wait`, so a thread that loses its CPU strands few
//!   connections; the others keep serving the rest.
//! - `--spread loops` (with `--loops M`, default N): M reactors, each the loop above with
//!   its own `SO_REUSEPORT` listener and epoll set, so a connection belongs to one reactor
//!   and is served without a lock, as in duo; but a reactor is not tied to a thread. The
//!   reactors' epoll sets are registered `EPOLLONESHOT` in one outer epoll set that every
//!   thread waits on; the thread that takes a reactor's readiness locks it, runs one turn
//!   of it, and re-arms it (one `epoll_ctl` per turn, not per event). So a reactor whose
//!   thread lost its CPU is run by another thread, and with more reactors than threads a
//!   thread that loses its CPU mid-turn strands a small share of the connections.
//! - `--spread owned` (with `--loops M`): M reactors as with `loops`, but reactor k is
//!   owned by thread k mod N, whose own outer set holds it level-triggered (nothing to
//!   re-arm). A thread that has made no progress for `--steal-after-us` (default 200) has
//!   its ready reactors run by a thread that is running (duo's `LoopSharing::Owned`).
//! - `--spread flat` (with `--loops M`): M reactors owned as with `owned`, but with no
//!   epoll set of their own: a reactor's listener and connections sit directly in its
//!   owner's one epoll set, level-triggered, with the reactor's number in the token, and
//!   the thread that takes an event locks the event's reactor for that event alone. A
//!   thread that has made no progress for `--steal-after-us` has its ready events served
//!   by a running thread (`epoll_wait` on the stalled thread's set; an event of a reactor
//!   its owner holds is left, and reported again). No nested epoll: no second wait per
//!   turn and no wake-up chain, so many small reactors cost what one per thread does.
//!
//! ```text
//! raw_epoll_echo [--listen ADDR] [--threads N] [--spread reuseport|shared|loops|owned|flat]
//!                [--loops M] [--steal-after-us US]
//! ```
//! It prints `listening on HOST:PORT` once the socket listens.

use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use socket2::{Domain, Socket, Type};

mod groups;

use groups::{serve_flat, serve_loops, serve_owned};

/// Bytes read per `recv`; also the most a connection ever keeps unsent.
const BUF_SIZE: usize = 64 << 10;
/// How long accepting pauses when the process is out of descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// `--spread shared` registers connections one event at a time (and `loops` its reactors).
const ONESHOT: u32 = libc::EPOLLONESHOT as u32;
/// Events one thread takes per `epoll_wait` in `--spread shared` mode.
const SHARED_BATCH: usize = 8;
/// The most connections `--spread shared` holds (its table is allocated up front, one
/// slot per descriptor number, so it is not sized to an unbounded descriptor limit);
/// a connection whose descriptor is beyond it is closed at once.
const SHARED_MAX_FDS: usize = 1 << 17;

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
    /// Threads serving connections.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// How more than one thread shares the connections.
    #[arg(long, value_enum, default_value_t = Spread::Reuseport)]
    spread: Spread,
    /// `TCP_DEFER_ACCEPT` on the listener(s): accept a connection only once its first
    /// bytes arrived, or after about SECS seconds (0: off); like `echo --defer-accept`.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    defer_accept: u32,
    /// Reactors of `--spread loops` (default: as many as threads).
    #[arg(long, value_name = "M",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    loops: Option<u16>,
    /// `--spread owned`: how long a thread may make no progress before another runs its
    /// ready reactors (and the least time between two looks at one thread).
    #[arg(long, value_name = "US", default_value_t = 200)]
    steal_after_us: u64,
}

/// How `--threads N` threads share the connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Spread {
    /// A listener and an epoll set per thread; a connection stays on its thread.
    Reuseport,
    /// One epoll set for all threads; any thread serves any connection.
    Shared,
    /// `--loops M` reactors (a listener and an epoll set each, a connection stays on its
    /// reactor), and any thread runs any reactor's next turn.
    Loops,
    /// `--loops M` reactors, each owned by one thread (reactor k by thread k mod N), whose
    /// epoll sets sit level-triggered in their owner's outer set; a thread that finds
    /// another making no progress for `--steal-after-us` runs that one's ready reactors.
    Owned,
    /// `--loops M` reactors as with `owned`, but with no epoll set of their own: their
    /// listeners and connections sit directly in their owner thread's one epoll set (the
    /// token names the reactor), and a reactor is locked per event rather than per turn.
    /// A thread that has made no progress for `--steal-after-us` has its ready events
    /// served by a thread that is running, reactor by reactor (those not locked).
    Flat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.loops.is_some()
        && (!matches!(cli.spread, Spread::Loops | Spread::Owned | Spread::Flat) || cli.threads == 1)
    {
        use clap::CommandFactory as _;
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--loops needs --spread loops, owned or flat and --threads of 2 or more",
            )
            .exit();
    }
    // More descriptors if the hard limit allows (the idle scenario holds 10 000).
    let _ = duo_sys::raise_fd_limit();
    let result = match (cli.threads, cli.spread) {
        (1, _) => listen(cli.listen, false, cli.defer_accept)
            .and_then(|l| announce(&l).and_then(|()| serve(l))),
        (n, Spread::Reuseport) => serve_reuseport(cli.listen, n.into(), cli.defer_accept),
        (n, Spread::Shared) => serve_shared(cli.listen, n.into(), cli.defer_accept),
        (n, Spread::Loops) => serve_loops(
            cli.listen,
            n.into(),
            cli.loops.unwrap_or(n).into(),
            cli.defer_accept,
        ),
        (n, spread @ (Spread::Owned | Spread::Flat)) => {
            let serve_group = if spread == Spread::Owned {
                serve_owned
            } else {
                serve_flat
            };
            serve_group(
                cli.listen,
                n.into(),
                cli.loops.unwrap_or(n).into(),
                cli.defer_accept,
                cli.steal_after_us.saturating_mul(1000),
            )
        }
    };
    match result {
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

fn listen(addr: SocketAddr, reuse_port: bool, defer_accept: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?; // duo's backlog
    if defer_accept > 0 {
        duo_sys::set_tcp_defer_accept(std::os::fd::AsFd::as_fd(&socket), defer_accept)?;
    }
    Ok(socket.into())
}

/// Adds, modifies or (with `events == 0`) disables the interest in `fd`, with `fd` as
/// the event's token.
fn ctl(epfd: RawFd, op: i32, fd: RawFd, events: u32) -> io::Result<()> {
    ctl_token(epfd, op, fd, events, fd as u64)
}

/// [`ctl`] with a token of the caller's choice.
fn ctl_token(epfd: RawFd, op: i32, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is a valid `epoll_event` the kernel only reads; bad descriptors or ops
    // are reported as errors, not undefined behaviour.
    cvt(unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) }).map(drop)
}

/// One `epoll_wait` into `events`; an interrupted wait reports no event.
fn wait(epfd: RawFd, events: &mut [libc::epoll_event], timeout: i32) -> io::Result<usize> {
    // SAFETY: `events` is a writable array of `events.len()` entries, all the kernel may
    // fill.
    let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, timeout) };
    match cvt(n) {
        Ok(n) => Ok(n as usize),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

/// Prints the line the harness waits for.
fn announce(listener: &TcpListener) -> io::Result<()> {
    println!("listening on {}", listener.local_addr()?);
    io::stdout().flush()
}

fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: `epoll_create1` takes a flag and no pointers; its result is checked by `cvt`
    // before `OwnedFd` takes sole ownership of the new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) })
}

/// `n` `SO_REUSEPORT` listeners on the address the first one bound, announced.
fn reuseport_listeners(
    addr: SocketAddr,
    n: usize,
    defer_accept: u32,
) -> io::Result<Vec<TcpListener>> {
    let first = listen(addr, true, defer_accept)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..n {
        listeners.push(listen(bound, true, defer_accept)?);
    }
    announce(&listeners[0])?;
    Ok(listeners)
}

/// `n` threads, each with its own `SO_REUSEPORT` listener on the address the first one
/// bound, each running [`serve`].
fn serve_reuseport(addr: SocketAddr, n: usize, defer_accept: u32) -> io::Result<()> {
    let listeners = reuseport_listeners(addr, n, defer_accept)?;
    std::thread::scope(|s| {
        let threads = listeners
            .into_iter()
            .map(|l| s.spawn(move || exit_on_error(serve(l))))
            .collect();
        join_all(threads)
    })
}

/// Ends the process with the error of a server thread (the others cannot go on usefully).
fn exit_on_error(result: io::Result<()>) {
    if let Err(e) = result {
        eprintln!("raw_epoll_echo: {e}");
        std::process::exit(1);
    }
}

/// Waits for the server threads, which return only by ending the process
/// ([`exit_on_error`]) or by panicking.
fn join_all(threads: Vec<std::thread::ScopedJoinHandle<'_, ()>>) -> io::Result<()> {
    threads
        .into_iter()
        .try_for_each(|t| t.join().map_err(|_| io::Error::other("a thread panicked")))
}

fn serve(listener: TcpListener) -> io::Result<()> {
    let mut unit = Unit::new(listener)?;
    let mut buf = [0u8; BUF_SIZE];
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 1024];
    loop {
        let timeout = unit.timeout();
        unit.turn(timeout, &mut buf, &mut events)?;
    }
}

/// One reactor: a listener, an epoll set and the connections it accepted. [`serve`] runs
/// one on its own thread; `--spread loops` hands each turn of one to whichever thread is
/// free ([`serve_loops`]).
struct Unit {
    listener: TcpListener,
    ep: OwnedFd,
    conns: Vec<Option<Conn>>,
    /// When accepting resumes after running out of descriptors.
    resume_accept: Option<Instant>,
}

impl Unit {
    fn new(listener: TcpListener) -> io::Result<Unit> {
        let ep = epoll_create()?;
        ctl(
            ep.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            listener.as_raw_fd(),
            libc::EPOLLIN as u32,
        )?;
        Ok(Unit {
            listener,
            ep,
            conns: Vec::new(),
            resume_accept: None,
        })
    }

    /// How long a wait may block: until accepting resumes, else for ever (`-1`).
    fn timeout(&self) -> i32 {
        self.resume_accept.map_or(-1, |t| {
            t.saturating_duration_since(Instant::now()).as_millis() as i32 + 1
        })
    }

    /// One `epoll_wait` (up to `timeout` ms) and the handling of its events.
    fn turn(
        &mut self,
        timeout: i32,
        buf: &mut [u8; BUF_SIZE],
        events: &mut [libc::epoll_event],
    ) -> io::Result<()> {
        let (epfd, lfd) = (self.ep.as_raw_fd(), self.listener.as_raw_fd());
        let n = wait(epfd, events, timeout)?;
        if self.resume_accept.is_some_and(|t| Instant::now() >= t) {
            self.resume_accept = None;
            ctl(epfd, libc::EPOLL_CTL_MOD, lfd, libc::EPOLLIN as u32)?;
        }
        for ev in &events[..n] {
            let fd = ev.u64 as RawFd;
            if fd == lfd {
                if !accept_all(epfd, lfd, &mut self.conns)? {
                    ctl(epfd, libc::EPOLL_CTL_MOD, lfd, 0)?;
                    self.resume_accept = Some(Instant::now() + ACCEPT_PAUSE);
                }
            } else if let Some(slot) = self.conns.get_mut(fd as usize) {
                let Some(c) = slot.as_mut() else {
                    continue;
                };
                let before = interest(c);
                if !service(c, buf)
                    || (interest(c) != before
                        && ctl(epfd, libc::EPOLL_CTL_MOD, fd, interest(c)).is_err())
                {
                    *slot = None; // closes the socket, which also leaves the epoll set
                }
            }
        }
        Ok(())
    }
}

/// What one `accept4` gave.
enum Accepted {
    /// A new connection.
    Conn(OwnedFd),
    /// No connection waiting (`EAGAIN`).
    Drained,
    /// Out of descriptors or memory (logged): accepting should pause.
    Exhausted,
}

/// One `accept4`, retried over errors that concern one connection only.
fn accept_one(lfd: RawFd) -> io::Result<Accepted> {
    loop {
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        // SAFETY: null address pointers are allowed (the peer address is not wanted).
        let ret = unsafe { libc::accept4(lfd, std::ptr::null_mut(), std::ptr::null_mut(), flags) };
        return match cvt(ret) {
            // SAFETY: `accept4` succeeded, so `fd` is a new descriptor nobody else owns.
            Ok(fd) => Ok(Accepted::Conn(unsafe { OwnedFd::from_raw_fd(fd) })),
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(Accepted::Drained),
                Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO | libc::EPERM) => continue,
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                    eprintln!("raw_epoll_echo: accept: {e}; pausing accept for {ACCEPT_PAUSE:?}");
                    Ok(Accepted::Exhausted)
                }
                _ => Err(e),
            },
        };
    }
}

/// Accepts until `EAGAIN`. Returns `false` if out of descriptors (accepting should pause).
fn accept_all(epfd: RawFd, lfd: RawFd, conns: &mut Vec<Option<Conn>>) -> io::Result<bool> {
    loop {
        let fd = match accept_one(lfd)? {
            Accepted::Conn(fd) => fd,
            Accepted::Drained => return Ok(true),
            Accepted::Exhausted => return Ok(false),
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
/// `false` when the connection is finished (end of file or error). A connection with
/// output pending waits for `EPOLLOUT` instead of `EPOLLIN` ([`interest`]); the caller
/// applies the change.
fn service(c: &mut Conn, buf: &mut [u8; BUF_SIZE]) -> bool {
    let fd = c.fd.as_raw_fd();
    if !c.pending.is_empty() {
        match send(fd, &c.pending) {
            Ok(n) => drop(c.pending.drain(..n)),
            Err(e) => return transient(&e),
        }
        return true;
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
    // Backpressure: the rest waits, and reading stops until it is out.
    c.pending.extend_from_slice(&buf[sent..n]);
    true
}

/// What `c` waits for: output room while it has bytes pending, else input.
fn interest(c: &Conn) -> u32 {
    if c.pending.is_empty() {
        libc::EPOLLIN as u32
    } else {
        libc::EPOLLOUT as u32
    }
}

/// `n` threads on one epoll set, any of them serving any connection (see the module
/// documentation). The listener is level-triggered and every thread that sees it accepts
/// until `EAGAIN`; connections are `EPOLLONESHOT` and re-armed by the thread that served
/// the event, after it has put the connection back in the table.
fn serve_shared(addr: SocketAddr, n: usize, defer_accept: u32) -> io::Result<()> {
    let fd_limit =
        duo_sys::fd_limit().map_or(1024, |(soft, _)| soft.min(SHARED_MAX_FDS as u64)) as usize;
    let listener = listen(addr, false, defer_accept)?;
    let lfd = listener.as_raw_fd();
    let ep = epoll_create()?;
    let epfd = ep.as_raw_fd();
    ctl(epfd, libc::EPOLL_CTL_ADD, lfd, libc::EPOLLIN as u32)?;
    // Indexed by descriptor, sized once: a descriptor is below the limit. A slot's lock is
    // never contended for long: while a connection is disarmed only the thread serving it
    // looks at it (the accepting thread fills a slot before arming its descriptor).
    let conns: Vec<Mutex<Option<Conn>>> = (0..fd_limit).map(|_| Mutex::new(None)).collect();
    // When accepting resumes after running out of descriptors (`monotonic_nanos`), 0 while
    // it is not paused.
    let paused = AtomicU64::new(0);
    announce(&listener)?;
    std::thread::scope(|s| {
        let threads = (0..n)
            .map(|_| s.spawn(|| exit_on_error(shared_worker(epfd, lfd, &conns, &paused))))
            .collect();
        join_all(threads)
    })
}

/// One thread of [`serve_shared`].
fn shared_worker(
    epfd: RawFd,
    lfd: RawFd,
    conns: &[Mutex<Option<Conn>>],
    paused: &AtomicU64,
) -> io::Result<()> {
    let mut buf = [0u8; BUF_SIZE];
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; SHARED_BATCH];
    loop {
        // Accepting paused for lack of descriptors: no thread waits past its end.
        let resume_at = paused.load(Ordering::Acquire);
        let timeout = if resume_at == 0 {
            -1
        } else {
            let left = resume_at.saturating_sub(duo_sys::monotonic_nanos());
            (left / 1_000_000) as i32 + 1
        };
        let n = wait(epfd, &mut events, timeout)?;
        // After every wait, busy or not: the thread that claims an ended pause resumes.
        if resume_at != 0
            && duo_sys::monotonic_nanos() >= resume_at
            && paused
                .compare_exchange(resume_at, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            ctl(epfd, libc::EPOLL_CTL_MOD, lfd, libc::EPOLLIN as u32)?;
        }
        for ev in &events[..n] {
            let fd = ev.u64 as RawFd;
            if fd == lfd {
                accept_shared(epfd, lfd, conns, paused)?;
                continue;
            }
            let Some(slot) = conns.get(fd as usize) else {
                continue;
            };
            let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            let Some(c) = slot.as_mut() else {
                continue;
            };
            // Re-armed for what the connection now waits for; from the `epoll_ctl` on,
            // another thread may take its next event (and waits for this lock).
            if !service(c, &mut buf)
                || ctl(epfd, libc::EPOLL_CTL_MOD, fd, interest(c) | ONESHOT).is_err()
            {
                *slot = None; // closes the socket, which also leaves the epoll set
            }
        }
    }
}

/// [`accept_all`] for the shared epoll set: fills the slot, then arms the descriptor.
fn accept_shared(
    epfd: RawFd,
    lfd: RawFd,
    conns: &[Mutex<Option<Conn>>],
    paused: &AtomicU64,
) -> io::Result<()> {
    loop {
        let fd = match accept_one(lfd)? {
            Accepted::Conn(fd) => fd,
            Accepted::Drained => return Ok(()),
            Accepted::Exhausted => {
                ctl(epfd, libc::EPOLL_CTL_MOD, lfd, 0)?;
                let resume_at = duo_sys::monotonic_nanos() + ACCEPT_PAUSE.as_nanos() as u64;
                paused.store(resume_at, Ordering::Release);
                return Ok(());
            }
        };
        let raw = fd.as_raw_fd();
        let Some(slot) = conns.get(raw as usize) else {
            continue; // beyond the table (`SHARED_MAX_FDS`): closed here
        };
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Conn {
            fd,
            pending: Vec::new(),
        });
        if let Err(e) = ctl(
            epfd,
            libc::EPOLL_CTL_ADD,
            raw,
            libc::EPOLLIN as u32 | ONESHOT,
        ) {
            eprintln!("raw_epoll_echo: epoll_ctl: {e}; dropping the connection");
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
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
