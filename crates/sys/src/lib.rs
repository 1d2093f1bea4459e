//! Safe wrappers over the Linux system calls duo is built on.
//!
//! `duo-sys` is the only crate of duo that calls `libc`. Every type here owns its file
//! descriptor (`OwnedFd`) and closes it on drop; every function that only uses a descriptor
//! takes a [`BorrowedFd`](std::os::fd::BorrowedFd). Descriptors are created with
//! `CLOEXEC` and, where it makes sense, `NONBLOCK`. Errors are [`std::io::Error`]s, with the
//! failing system call named in the message where that helps the reader of a log.
//!
//! | Module | What it wraps |
//! |---|---|
//! | [`epoll`] | `epoll_create1`, `epoll_ctl`, `epoll_wait`: [`Epoll`], [`Interest`], [`Events`], [`Ready`]; [`has_ready_events`] (whether an epoll set has events ready, taking none) |
//! | [`timerfd`] | `timerfd_create`, `timerfd_settime`: [`TimerFd`] on `CLOCK_MONOTONIC`; `clock_gettime(CLOCK_MONOTONIC)` as plain nanoseconds: [`monotonic_nanos`], and back to an `Instant`: [`instant_of_nanos`] |
//! | [`eventfd`] | `eventfd`: [`EventFd`], a counter used to wake a sleeping loop |
//! | [`signalfd`] | `signalfd`, `pthread_sigmask`: [`SignalFd`], [`Signal`], [`ignore_sigpipe`] |
//! | [`socket`] | `accept4`, `readv`, `recv`, `writev`, `send`/`sendmsg(MSG_NOSIGNAL)`, `shutdown`, `SO_ERROR`, `TCP_DEFER_ACCEPT`, `FIONREAD`, `TIOCOUTQ`, `poll(POLLRDHUP)` |
//! | [`process`] | `getrlimit`/`setrlimit(RLIMIT_NOFILE)`: [`fd_limit`], [`set_fd_limit`], [`raise_fd_limit`]; `malloc_trim`: [`release_free_heap`]; `getrusage(RUSAGE_THREAD)`: [`thread_context_switches`]; `sched_setaffinity`: [`pin_thread`] |
//! | [`procfd`] | none: `/proc/self/fd` links name a pipe ([`fd_name`]); another process's `/proc/PID/fd` opens it again, `O_NONBLOCK` ([`open_pipe_held_by`]) |
//! | [`activation`] | systemd socket activation ([`listen_fds`]: `LISTEN_PID`/`LISTEN_FDS`), descriptors announced by environment variables ([`take_fds_from_env`], [`take_fd_from_env`]), [`check_listening_tcp`] |
//! | [`spawn`] | `dup2` in a `pre_exec` hook, after `fstat`, `fcntl(F_GETFD)` and `getsockopt(SO_TYPE)` checks of the targets ([`pass_fds`]), `prctl(PR_SET_PDEATHSIG)`, `sigprocmask` in the child ([`unblock_signals_in_child`]), `waitpid(-1, WNOHANG)` ([`reap_any`]), `kill` ([`signal_process`], [`kill_process`]), `pipe2` ([`pipe`]), `F_DUPFD_CLOEXEC` |
//! | [`udp`] | `recvmmsg`, `sendmmsg`, `recvfrom(MSG_TRUNC)`, `sendto(MSG_NOSIGNAL)`, `IP_PKTINFO`: [`recv_mmsg`], [`send_mmsg`], [`send_mmsg_from`], [`set_recv_pktinfo`], [`recv_from`], [`send_to`] over caller-provided buffers ([`MmsgScratch`]) |
//! | [`shm`] | `memfd_create`, `ftruncate`, seals, `mmap(MAP_SHARED)`: [`SharedCounters`], `u64` counters shared between processes |
//! | [`unix`] | `getsockopt(SO_PEERCRED)`, `geteuid`/`getegid`: [`peer_credentials`], [`own_credentials`]; Unix-domain addresses, a path that fills all of `sun_path` included: [`unix_addr`] |
//!
//! Sockets themselves are created and configured with [`socket2`], re-exported here.
//!
//! # Rules this crate keeps
//!
//! - **Descriptors.** Every descriptor is created `CLOEXEC`, atomically with its creation,
//!   so there is no window in which a `fork` + `exec` on another thread leaks it into a
//!   child process.
//! - **`unsafe`.** Every `unsafe` block carries a `// SAFETY:` argument
//!   (`clippy::undocumented_unsafe_blocks` is denied here, and a test in
//!   `xtask/tests/tidy.rs` checks it too). The crates above this one are
//!   `#![forbid(unsafe_code)]` and never mention `libc::` (also tidy tests), so this crate
//!   is the whole of duo's unsafe surface (the one other `libc` user is the
//!   `raw_epoll_echo` benchmark baseline, exempt by design: it is the raw-epoll yardstick).
//! - **Errors.** The hot I/O calls ([`accept4`], [`readv`], [`recv_vectored`], [`writev`],
//!   [`send_vectored`]) return the kernel's error untouched, because their callers branch
//!   on it (`WouldBlock`, `EMFILE`, `EPIPE`). Set-up calls (`epoll_create1`, `epoll_ctl`,
//!   `timerfd_settime`, ...) name the failing call in the message and keep the
//!   [`ErrorKind`](std::io::ErrorKind). `EINTR` is retried inside, except by
//!   [`Epoll::wait`], which returns `Ok(0)` so that its caller re-checks its own state (a
//!   quit flag) before waiting again.
#![warn(missing_docs, missing_debug_implementations)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod activation;
pub mod epoll;
pub mod eventfd;
pub mod process;
pub mod procfd;
pub mod shm;
pub mod signalfd;
pub mod socket;
pub mod spawn;
pub mod timerfd;
pub mod udp;
pub mod unix;

pub use activation::{
    check_listening_tcp, listen_fds, take_fd_from_env, take_fds_from_env, ActivationError,
    LISTEN_FDS_START,
};
pub use activation::{listen_fds_any, ActivatedListener};
pub use epoll::{has_ready_events, Epoll, Events, Interest, Ready};
pub use eventfd::EventFd;
pub use process::{
    fd_limit, pin_thread, raise_fd_limit, release_free_heap, set_fd_limit, thread_context_switches,
};
pub use procfd::{fd_name, open_pipe_held_by};
pub use shm::SharedCounters;
pub use signalfd::{
    block_signals, block_termination_signals, ignore_sigpipe, stop_self, terminate_by, Signal,
    SignalFd, SignalInfo, TERMINATION_SIGNALS,
};
pub use socket::{
    accept4, bytes_available, bytes_unacknowledged, is_connect_in_progress, is_fd_exhaustion,
    is_per_connection_accept_error, is_read_shut_down, readv, recv_vectored, send_vectored,
    set_tcp_defer_accept, shutdown_write, take_socket_error, tcp_defer_accept, writev, IOV_MAX,
};
pub use spawn::{
    dup_at_least, exec_in_place, in_process_group_of_its_own, inherit_only_stdio, kill_process,
    pass_fds, pipe, process_exists, reap_any, set_inherit_on_exec, set_parent_death_signal,
    signal_process, stop_process, unblock_signals_in_child,
};
pub use timerfd::{instant_of_nanos, monotonic_nanos, TimerFd};
pub use udp::{
    recv_from, recv_mmsg, send_mmsg, send_mmsg_from, send_to, set_recv_pktinfo, MmsgScratch,
    RecvMeta,
};
pub use unix::{own_credentials, peer_credentials, unix_addr, PeerCredentials, SUN_PATH_LEN};

pub use socket2;

/// Turns the `-1` a system call returns on failure into the thread's `errno`.
///
/// The error is returned as is, so `raw_os_error()` and `kind()` answer directly: the hot
/// I/O calls (`accept4`, `readv`, `writev`) use this because their callers branch on
/// `EAGAIN`, `EINTR` and `EMFILE`.
fn cvt(ret: libc::c_int) -> std::io::Result<libc::c_int> {
    if ret == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Same as [`cvt`] for calls that return `ssize_t`.
fn cvt_size(ret: libc::ssize_t) -> std::io::Result<usize> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Names the failing call in an error from a set-up call (`epoll_create1`, `epoll_ctl`,
/// `timerfd_settime`, ...), where a log line saying which call failed helps more than the
/// raw code. The [`std::io::ErrorKind`] is kept; `WouldBlock` and `Interrupted` pass
/// unchanged because callers branch on them.
fn context(call: &'static str) -> impl FnOnce(std::io::Error) -> std::io::Error {
    move |err| match err.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => err,
        kind => std::io::Error::new(kind, format!("{call}: {err}")),
    }
}

/// Reads the 8-byte counter of an eventfd or timerfd, retrying `EINTR`.
///
/// Returns `Ok(0)` when the descriptor is not readable (`EAGAIN`): both kernels only
/// ever report non-zero counts, so zero unambiguously means "nothing yet".
fn read_counter(fd: std::os::fd::BorrowedFd<'_>, what: &'static str) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut count = 0u64;
    loop {
        // SAFETY: the buffer is the 8 bytes of `count`, which is exactly what a read of an
        // eventfd or timerfd writes; the descriptor is borrowed, so live, for the call.
        let ret = unsafe {
            libc::read(
                fd.as_raw_fd(),
                (&mut count as *mut u64).cast::<libc::c_void>(),
                std::mem::size_of::<u64>(),
            )
        };
        return match cvt_size(ret) {
            Ok(_) => Ok(count),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => Err(context(what)(e)),
        };
    }
}
