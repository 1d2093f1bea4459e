//! `signalfd`: signals read as data from a descriptor, so an event loop handles SIGINT and
//! SIGTERM as ordinary events instead of in an async-signal handler.
//!
//! # Masks are per thread
//!
//! A signal is delivered through a signalfd only if it is *blocked* in the thread that
//! would otherwise receive it. A process-directed signal (`kill(pid, SIGTERM)`) goes to any
//! thread that does not block it, and if that thread runs the default action the whole
//! process ends. So call [`block_signals`] (or create the [`SignalFd`]) on the main thread
//! **before spawning any thread**: threads inherit the mask of the thread that spawns them.
//!
//! Its test, `crates/sys/tests/signalfd_process.rs`, is a `harness = false` integration
//! test for exactly that reason: under the default harness other threads exist before the
//! test could block the signal, and one of them could take it and end the process.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::{context, cvt, cvt_size};

/// A signal number, such as [`Signal::TERM`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Signal(i32);

impl Signal {
    /// `SIGHUP`: the controlling terminal went away; often "reload configuration".
    pub const HUP: Signal = Signal(libc::SIGHUP);
    /// `SIGINT`: interrupt from the keyboard (Ctrl-C).
    pub const INT: Signal = Signal(libc::SIGINT);
    /// `SIGQUIT`: quit from the keyboard.
    pub const QUIT: Signal = Signal(libc::SIGQUIT);
    /// `SIGTERM`: polite request to terminate.
    pub const TERM: Signal = Signal(libc::SIGTERM);
    /// `SIGUSR1`: user-defined.
    pub const USR1: Signal = Signal(libc::SIGUSR1);
    /// `SIGUSR2`: user-defined.
    pub const USR2: Signal = Signal(libc::SIGUSR2);
    /// `SIGCHLD`: a child process stopped or ended.
    pub const CHLD: Signal = Signal(libc::SIGCHLD);
    /// `SIGPIPE`: write to a pipe or socket with no reader.
    pub const PIPE: Signal = Signal(libc::SIGPIPE);
    /// `SIGTSTP`: stop from the keyboard (Ctrl-Z); job control.
    pub const TSTP: Signal = Signal(libc::SIGTSTP);
    /// `SIGTTIN`: a background process read from its terminal; job control.
    pub const TTIN: Signal = Signal(libc::SIGTTIN);
    /// `SIGTTOU`: a background process wrote to (or configured) its terminal; job control.
    pub const TTOU: Signal = Signal(libc::SIGTTOU);
    /// `SIGCONT`: continue a stopped process (`fg`, `bg`). It continues the process
    /// whether blocked or not; blocked, it is also delivered (to a [`SignalFd`]) afterwards.
    pub const CONT: Signal = Signal(libc::SIGCONT);

    /// A signal from its number, if it is a valid, catchable signal (`SIGKILL` and
    /// `SIGSTOP` cannot be blocked, so they are refused, and so are the numbers between
    /// 31 and `SIGRTMIN()`, which glibc keeps for itself and refuses to block).
    pub fn from_raw(signo: i32) -> Option<Signal> {
        let valid = (1..=libc::SIGRTMAX()).contains(&signo)
            && (signo < 32 || signo >= libc::SIGRTMIN())
            && signo != libc::SIGKILL
            && signo != libc::SIGSTOP;
        valid.then_some(Signal(signo))
    }

    /// The signal number.
    pub const fn as_raw(self) -> i32 {
        self.0
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            libc::SIGHUP => "SIGHUP",
            libc::SIGINT => "SIGINT",
            libc::SIGQUIT => "SIGQUIT",
            libc::SIGTERM => "SIGTERM",
            libc::SIGUSR1 => "SIGUSR1",
            libc::SIGUSR2 => "SIGUSR2",
            libc::SIGCHLD => "SIGCHLD",
            libc::SIGPIPE => "SIGPIPE",
            libc::SIGTSTP => "SIGTSTP",
            libc::SIGTTIN => "SIGTTIN",
            libc::SIGTTOU => "SIGTTOU",
            libc::SIGCONT => "SIGCONT",
            n => return write!(f, "signal {n}"),
        };
        f.write_str(name)
    }
}

/// One signal read from a [`SignalFd`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SignalInfo {
    /// Which signal arrived.
    pub signal: Signal,
    /// The process that sent it (0 when the kernel sent it).
    pub sender_pid: u32,
}

pub(crate) fn sigset(signals: &[Signal]) -> io::Result<libc::sigset_t> {
    // SAFETY: `sigset_t` is plain data; all-zero is a valid value that `sigemptyset` then
    // initialises properly.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable `sigset_t`.
    cvt(unsafe { libc::sigemptyset(&mut set) }).map_err(context("sigemptyset"))?;
    for s in signals {
        // SAFETY: `set` was initialised by `sigemptyset`; `Signal` only holds valid numbers
        // (its constructors check), and `sigaddset` reports EINVAL otherwise.
        cvt(unsafe { libc::sigaddset(&mut set, s.0) }).map_err(context("sigaddset"))?;
    }
    Ok(set)
}

/// `pthread_sigmask(how, set)` on the calling thread; returns the mask as it was before.
/// `what` names the call in the error (the pthread functions return the error number
/// instead of setting `errno`).
fn sigmask(
    how: libc::c_int,
    set: &libc::sigset_t,
    what: &'static str,
) -> io::Result<libc::sigset_t> {
    let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: `set` is an initialised `sigset_t` the call only reads; `old` is room for one
    // `sigset_t`, which the call writes when it succeeds.
    match unsafe { libc::pthread_sigmask(how, set, old.as_mut_ptr()) } {
        // SAFETY: the call succeeded, so it wrote the previous mask into `old`.
        0 => Ok(unsafe { old.assume_init() }),
        e => Err(context(what)(io::Error::from_raw_os_error(e))),
    }
}

/// Blocks `signals` in the calling thread's signal mask (`pthread_sigmask(SIG_BLOCK)`).
///
/// Threads spawned afterwards inherit the mask, so call it on the main thread before
/// starting any other; then a process-directed signal stays pending until a
/// [`SignalFd`] reads it.
pub fn block_signals(signals: &[Signal]) -> io::Result<()> {
    sigmask(libc::SIG_BLOCK, &sigset(signals)?, "pthread_sigmask").map(drop)
}

/// The signals that ask a process to stop: `SIGINT`, `SIGTERM`, `SIGHUP`, `SIGQUIT`.
pub const TERMINATION_SIGNALS: [Signal; 4] = [Signal::INT, Signal::TERM, Signal::HUP, Signal::QUIT];

/// Blocks [`TERMINATION_SIGNALS`] in the calling thread. duo's loop threads
/// (`duo_reactor::EventLoopThread`) call it when they start, so a process-directed stop
/// signal is handled by a thread of the application (the main thread, or a [`SignalFd`])
/// and never by an I/O loop. Other threads (a `duo_workers::ThreadPool`'s workers, say)
/// keep the mask they inherit from the thread that spawned them.
pub fn block_termination_signals() -> io::Result<()> {
    block_signals(&TERMINATION_SIGNALS)
}

/// Ignores `SIGPIPE` for the whole process, so writing to a socket whose peer has gone
/// fails with `EPIPE` instead of killing the process. Idempotent.
pub fn ignore_sigpipe() -> io::Result<()> {
    // SAFETY: installing `SIG_IGN` runs no code in signal context; `signal` is
    // async-signal-safe and affects only the disposition of SIGPIPE.
    let prev = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    if prev == libc::SIG_ERR {
        return Err(context("signal(SIGPIPE, SIG_IGN)")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Stops this process as a job-control stop signal's default action does, and returns once
/// it is continued (`SIGCONT`): the classic way for a program that handles `signal`
/// itself (here: reads it from a [`SignalFd`], blocked) to stop after doing its part,
/// say stopping processes of its own first. `signal` gets its default action
/// (`SIG_DFL`), is raised to the calling thread while still blocked there, and unblocked
/// (the process stops), then blocked again and given back the disposition it had.
///
/// The process stops once, even if another `signal` was already pending (a second
/// Ctrl-Z in quick succession): the stop takes one, and the `SIGCONT` that continues the
/// process discards the others (a raise after the unblocking would stop it a second
/// time, once continued).
///
/// Only for `SIGTSTP`, `SIGTTIN` and `SIGTTOU` (else `InvalidInput`): unlike `SIGSTOP`,
/// the kernel discards these for a process group that is orphaned (no process outside it
/// in its session could ever continue it), and then this returns at once without
/// stopping. Other threads need not unblock anything: the stop takes the whole process.
///
/// # Errors
///
/// `signal` is not one of those three, or a system call failed (the signal is left
/// blocked in the calling thread either way, and its disposition restored if it was
/// changed).
pub fn stop_self(signal: Signal) -> io::Result<()> {
    if ![libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU].contains(&signal.0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("stop_self: {signal} is not a job-control stop signal"),
        ));
    }
    let set = sigset(&[signal])?;
    let mask = |how: libc::c_int, what: &'static str| sigmask(how, &set, what).map(drop);
    // Blocked first (it should be already): the raise below must stay pending until the
    // unblocking.
    mask(libc::SIG_BLOCK, "pthread_sigmask(SIG_BLOCK)")?;
    // SAFETY: `sigaction` is plain data; all-zero is a valid value (empty mask, no flags,
    // `SIG_DFL`).
    let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    dfl.sa_sigaction = libc::SIG_DFL;
    // SAFETY: as above; the kernel overwrites it with the current disposition.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: installing `SIG_DFL` runs no code in signal context; both pointers are to
    // live `sigaction` values, the old one written by the kernel.
    cvt(unsafe { libc::sigaction(signal.0, &dfl, &mut old) }).map_err(context("sigaction"))?;
    // SAFETY: `raise` sends a valid signal number to the calling thread, where it is
    // blocked: it stays pending.
    let stopped = cvt(unsafe { libc::raise(signal.0) })
        .map_err(context("raise"))
        // Unblocked, the pending signal takes its default action (stop) on the way back
        // from this call, which returns once the process is continued.
        .and_then(|_| mask(libc::SIG_UNBLOCK, "pthread_sigmask(SIG_UNBLOCK)"));
    let blocked = mask(libc::SIG_BLOCK, "pthread_sigmask(SIG_BLOCK)");
    // SAFETY: `old` is the disposition the kernel reported above (a handler the program
    // installed, `SIG_IGN` or `SIG_DFL`); a null old-action pointer is allowed.
    let restored = cvt(unsafe { libc::sigaction(signal.0, &old, std::ptr::null_mut()) })
        .map_err(context("sigaction (restore)"));
    stopped.and(blocked).and(restored).map(drop)
}

/// Ends this process as `signal`'s default action does (`SIGTERM`, `SIGINT`: termination,
/// the exit status a shell reports as killed by that signal), from the calling thread: for a
/// program that read `signal` from a [`SignalFd`] (so it is blocked everywhere) and decides
/// that there is nothing to do but what the default action would have done, say a server
/// told to stop before it started serving. `signal` gets its default action (`SIG_DFL`),
/// is raised to the calling thread while blocked there, then unblocked: the pending signal
/// is delivered on the way back from that call. Every thread ends with the process; no
/// destructor runs.
///
/// Returns only if the process goes on: a call failed, or `signal`'s default action is
/// not to terminate. Such a signal (`SIGCHLD`, `SIGURG`, `SIGWINCH`, `SIGCONT`, a stop
/// signal) is refused before anything is touched, with [`io::ErrorKind::InvalidInput`]:
/// giving one whose default is to be ignored `SIG_DFL` would discard an instance of it
/// already pending (a `SIGCHLD` a [`SignalFd`] has not read yet: a child never reaped),
/// and raising a stop signal would stop the process rather than end it. The error says
/// which. Before it returns, the calling thread's
/// signal mask and `signal`'s disposition are what they were at the call (blocked again if
/// it was, its handler or `SIG_IGN` back), so a program may go on as before.
pub fn terminate_by(signal: Signal) -> io::Error {
    if !default_action_terminates(signal) {
        return io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("terminate_by: {signal}'s default action does not end the process; refused"),
        );
    }
    let set = match sigset(&[signal]) {
        Ok(set) => set,
        Err(e) => return e,
    };
    // SAFETY: `sigaction` is plain data; all-zero is a valid value (empty mask, no flags,
    // `SIG_DFL`).
    let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    dfl.sa_sigaction = libc::SIG_DFL;
    // SAFETY: as above; the kernel overwrites it with the current disposition.
    let mut old_action: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: installing `SIG_DFL` runs no code in signal context; both pointers are to
    // live `sigaction` values, the old one written by the kernel.
    if let Err(e) = cvt(unsafe { libc::sigaction(signal.0, &dfl, &mut old_action) }) {
        return context("sigaction")(e);
    }
    let (error, mask_restored) = match sigmask(libc::SIG_BLOCK, &set, "pthread_sigmask(SIG_BLOCK)")
    {
        Ok(old_mask) => {
            let e = raise_unblocked(signal, &set);
            // The process goes on: the mask as it was (the signal blocked again if it was).
            let restored = sigmask(libc::SIG_SETMASK, &old_mask, "pthread_sigmask(SIG_SETMASK)");
            (e, restored.map(drop))
        }
        Err(e) => (e, Ok(())),
    };
    // SAFETY: `old_action` is the disposition the kernel reported above (a handler the
    // program installed, `SIG_IGN` or `SIG_DFL`); a null old-action pointer is allowed.
    let action_restored =
        cvt(unsafe { libc::sigaction(signal.0, &old_action, std::ptr::null_mut()) })
            .map_err(context("sigaction (restore)"));
    match mask_restored.and(action_restored.map(drop)) {
        Ok(()) => error,
        Err(e) => e,
    }
}

/// Whether `signal`'s default action ends the process (`signal(7)`): every signal but
/// those ignored by default (`SIGCHLD`, `SIGURG`, `SIGWINCH`), `SIGCONT` and the stop
/// signals.
fn default_action_terminates(signal: Signal) -> bool {
    ![
        libc::SIGCHLD,
        libc::SIGURG,
        libc::SIGWINCH,
        libc::SIGCONT,
        libc::SIGSTOP,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
    ]
    .contains(&signal.0)
}

/// [`terminate_by`]'s raise (`signal` blocked in the calling thread, in `set`) and
/// unblocking; the error it returns when the process goes on.
fn raise_unblocked(signal: Signal, set: &libc::sigset_t) -> io::Error {
    // SAFETY: `raise` sends a valid signal number to the calling thread, where it is
    // blocked: it stays pending until the unblocking below.
    if let Err(e) = cvt(unsafe { libc::raise(signal.0) }) {
        return context("raise")(e);
    }
    // Unblocked, the pending signal takes its default action before the call returns.
    if let Err(e) = sigmask(libc::SIG_UNBLOCK, set, "pthread_sigmask(SIG_UNBLOCK)") {
        return e;
    }
    io::Error::other(format!("{signal}'s default action did not end the process"))
}

/// A non-blocking, close-on-exec signalfd that reads the signals it was created for.
///
/// [`SignalFd::new`] blocks those signals in the calling thread (see the
/// [module docs](self) on why that must happen before other threads start). The mask is
/// not restored on drop: a signal that arrives after the descriptor is gone stays pending
/// instead of suddenly running its default action.
///
/// ```no_run
/// use duo_sys::{Signal, SignalFd};
/// // On the main thread, before spawning any other thread:
/// let signals = SignalFd::new(&[Signal::INT, Signal::TERM])?;
/// // ... register `signals` with an Epoll for READABLE, and when it fires:
/// while let Some(info) = signals.read()? {
///     println!("got {}", info.signal);
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    /// Blocks `signals` in the calling thread and returns a descriptor that reads them.
    ///
    /// If the descriptor cannot be made (`EMFILE`), the thread's mask is put back as it
    /// was: the signals are not left blocked with nothing to read them.
    pub fn new(signals: &[Signal]) -> io::Result<SignalFd> {
        let set = sigset(signals)?;
        let old = sigmask(libc::SIG_BLOCK, &set, "pthread_sigmask")?;
        // SAFETY: `-1` asks for a new descriptor; `set` is an initialised `sigset_t` the
        // kernel only reads.
        let made = cvt(unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) })
            .map_err(context("signalfd"));
        let fd = match made {
            Ok(fd) => fd,
            Err(e) => {
                // The mask before the block; it cannot fail with a valid `how` and set.
                let _ = sigmask(libc::SIG_SETMASK, &old, "pthread_sigmask(SIG_SETMASK)");
                return Err(e);
            }
        };
        // SAFETY: the call succeeded, so `fd` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SignalFd { fd })
    }

    /// Reads one pending signal; `Ok(None)` when none is pending.
    pub fn read(&self) -> io::Result<Option<SignalInfo>> {
        // SAFETY: `signalfd_siginfo` is plain data; all-zero is a valid value.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: the buffer is exactly one `signalfd_siginfo`, the unit a signalfd
            // read writes; the descriptor is live.
            let ret = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast::<libc::c_void>(),
                    std::mem::size_of::<libc::signalfd_siginfo>(),
                )
            };
            return match cvt_size(ret) {
                Ok(n) if n == std::mem::size_of::<libc::signalfd_siginfo>() => {
                    Ok(Some(SignalInfo {
                        signal: Signal(info.ssi_signo as i32),
                        sender_pid: info.ssi_pid,
                    }))
                }
                Ok(n) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("read(signalfd): short read of {n} bytes"),
                )),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(context("read(signalfd)")(e)),
            };
        }
    }
}

impl AsFd for SignalFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}
