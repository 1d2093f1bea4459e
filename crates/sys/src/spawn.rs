//! Starting and managing child processes beyond what [`std::process`] offers: handing
//! descriptors to a child at fixed numbers, a parent-death signal, reaping any child
//! (`waitpid(-1)`), signalling a child by PID, and pipes.
//!
//! A supervisor that re-executes itself keeps its children but loses their
//! [`std::process::Child`] values; [`reap_any`] and [`signal_process`] work from the PID
//! alone.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};

use crate::{context, cvt, Signal};

/// One above the highest target number any successful [`pass_fds`] call of this process
/// has asked for: sources are duplicated at or above it (see there).
static TARGETS_END: AtomicI32 = AtomicI32::new(0);

/// Arranges for `fds[i]` to be descriptor `first + i` in the child that `cmd` starts,
/// without close-on-exec (so the program it executes inherits them), as the systemd
/// protocol (`first` = 3) and duo's worker protocol expect. Other descriptors stay as they
/// are (duo's are all close-on-exec).
///
/// Each source is first duplicated in the parent (`F_DUPFD_CLOEXEC`) to a number at or
/// above `first + fds.len()` (and above the targets of every earlier call that
/// succeeded, so several calls on one `Command` work too), so no target number can be one
/// of the sources and the `dup2` calls in the child cannot overwrite a descriptor that a
/// later one still has to copy. The child side (a `pre_exec` hook) only calls `fstat`,
/// `fcntl`, `getsockopt` and `dup2`, which are async-signal-safe, and allocates nothing.
/// The duplicates live as long as `cmd`.
///
/// `std` reports a failed `exec` (a missing program: [`io::ErrorKind::NotFound`]) through
/// a close-on-exec channel (a pipe or a socket pair, by version) it opens during `spawn`
/// at the lowest free numbers. Were that a target number, the child's `dup2` would
/// replace it: `spawn` would succeed with a child that exits at once, and std's report
/// would be written into a descriptor the child was to inherit. So every target number
/// that is free here is held, until `cmd` is dropped, by a close-on-exec duplicate of its
/// source, where the channel cannot land. A target number that another descriptor of
/// this process holds is safe as long as that one stays open; should it be closed before
/// `spawn` (by another thread), and a different file that may be std's channel (a
/// close-on-exec `SOCK_SEQPACKET` socket or pipe) sit at that number in the child, the
/// hook does not `dup2` over it but fails, and `spawn` returns `EBUSY`
/// ([`io::ErrorKind::ResourceBusy`]): an error, where there might otherwise be a lost
/// report. Any other file there (a socket another thread opened meanwhile, say) is
/// replaced, as a free number would be.
///
/// # Errors
///
/// `first` is below 3 (the targets would replace stdio), or duplicating failed (`EMFILE`,
/// or `EINVAL` for a number above the descriptor limit).
pub fn pass_fds(cmd: &mut Command, fds: &[BorrowedFd<'_>], first: RawFd) -> io::Result<()> {
    if first < 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "pass_fds: target descriptors below 3 would replace stdin/stdout/stderr",
        ));
    }
    let above = i32::try_from(fds.len())
        .ok()
        .and_then(|n| first.checked_add(n))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pass_fds: too many"))?;
    // At or above every target asked for so far by a call that succeeded, not only this
    // call's: the hooks of several calls on one `Command` run in order, and an earlier
    // one's `dup2` must not land on a later one's source. A call that fails adds no hook,
    // so its targets are recorded only once it has succeeded: one asking for numbers
    // beyond the open-file limit would otherwise raise the floor there for good, and
    // every later call would fail too.
    let floor = TARGETS_END.load(Ordering::Relaxed).max(above);
    let sources = fds
        .iter()
        .map(|fd| dup_at_least(*fd, floor))
        .collect::<io::Result<Vec<OwnedFd>>>()?;
    let targets = fds
        .iter()
        .zip(first..)
        .map(|(fd, target)| Target::hold(*fd, target))
        .collect::<io::Result<Vec<Target>>>()?;
    // A later call on the same `Command` comes after this store in this thread (or in one
    // the `&mut Command` was handed to, which synchronises), so it loads this or more.
    TARGETS_END.fetch_max(above, Ordering::Relaxed);
    let hook = move || {
        // Before any `dup2`: whether std's error channel may sit at a target (see above).
        for (target, t) in (first..).zip(&targets) {
            if t.held.is_none()
                && file_id(target).is_some_and(|id| Some(id) != t.found)
                && may_be_exec_channel(target)
            {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
        }
        for (i, src) in sources.iter().enumerate() {
            // `i < fds.len()`, and `first + fds.len()` did not overflow above.
            let target = first + i as RawFd;
            // SAFETY: both are plain descriptor numbers; `src` is open (owned by the
            // closure, which lives until the exec) and `target` is not one of the sources
            // (all are >= `above`). `dup2` is async-signal-safe and the new descriptor does
            // not have close-on-exec. We are in the forked child, where nothing else runs.
            if unsafe { libc::dup2(src.as_raw_fd(), target) } == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook only calls `fstat`, `fcntl`, `getsockopt` and `dup2`
    // (async-signal-safe) and reads its own vectors (no allocation, no lock), as
    // `pre_exec` requires.
    unsafe {
        cmd.pre_exec(hook);
    }
    Ok(())
}

/// A target number of [`pass_fds`], as found in the parent.
struct Target {
    /// A close-on-exec duplicate of the source that holds the number, which was free,
    /// until the `Command` goes.
    held: Option<OwnedFd>,
    /// Otherwise the identity of the file another descriptor of this process had there
    /// (`None` if it was freed and taken again meanwhile).
    found: Option<FileId>,
}

impl Target {
    /// Takes `target` with a close-on-exec duplicate of `fd` if it is free.
    fn hold(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<Target> {
        if let Some(id) = file_id(target) {
            return Ok(Target {
                held: None,
                found: Some(id),
            });
        }
        let dup = dup_at_least(fd, target)?;
        // Above `target` if another thread took it meanwhile: then dropped.
        let held = (dup.as_raw_fd() == target).then_some(dup);
        Ok(Target { held, found: None })
    }
}

/// A file's device and inode numbers.
type FileId = (libc::dev_t, libc::ino_t);

/// The identity of the file descriptor number `fd` refers to; `None` if `fd` is not
/// open. One `fstat`: async-signal-safe, allocating nothing.
fn file_id(fd: RawFd) -> Option<FileId> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fstat` only reads the metadata of whatever `fd` names (it takes no
    // ownership and changes nothing) and writes one `stat` into `st`; on a number that is
    // not open it fails with `EBADF` and writes nothing.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } == -1 {
        return None;
    }
    // SAFETY: `fstat` succeeded, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    Some((st.st_dev, st.st_ino))
}

/// Whether the file at descriptor number `fd` may be std's exec-error channel: a
/// close-on-exec `AF_UNIX` socket pair of `SOCK_SEQPACKET` (std on Linux) or pipe (older
/// versions). Another file at a target number (a TCP socket, an eventfd, a stream socket
/// pair, or the descriptor an earlier `pass_fds` hook of the same `Command` put there,
/// which `dup2` left without close-on-exec) cannot be, and is replaced. Only system calls
/// that are async-signal-safe (`fcntl`, `fstat`, `getsockopt`), allocating nothing.
fn may_be_exec_channel(fd: RawFd) -> bool {
    // SAFETY: `F_GETFD` only reads the descriptor's flags; on a number that is not open it
    // fails with `EBADF`.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags == -1 || flags & libc::FD_CLOEXEC == 0 {
        return false;
    }
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: as in `file_id`: `fstat` writes one `stat` into `st`, or fails and writes
    // nothing.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } == -1 {
        return false;
    }
    // SAFETY: `fstat` succeeded, so it initialised `st`.
    let mode = unsafe { st.assume_init() }.st_mode & libc::S_IFMT;
    if mode == libc::S_IFIFO {
        return true;
    }
    if mode != libc::S_IFSOCK {
        return false;
    }
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `kind` is an `int` alive for the call and `len` its size, as `SO_TYPE`
    // writes; `getsockopt` only reads the socket's type (failing on a non-socket).
    let ret = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    // (A socket whose type cannot be read is taken for the channel: refused, not lost.)
    ret == -1 || kind == libc::SOCK_SEQPACKET
}

/// Makes the child `cmd` starts receive `signal` when this thread ends (`prctl(PR_SET_PDEATHSIG)`),
/// so workers do not outlive a supervisor killed with `SIGKILL`. If the parent is already
/// gone when the child starts, the child exits at once (status 1).
///
/// The signal follows the *thread* that spawned the child: spawn from a thread that lives
/// as long as the parent (the main thread).
pub fn set_parent_death_signal(cmd: &mut Command, signal: Signal) {
    // SAFETY: `getpid` has no preconditions.
    let parent = unsafe { libc::getpid() };
    let hook = move || {
        // SAFETY: `prctl(PR_SET_PDEATHSIG, sig)` only sets a flag of the calling process;
        // it and `getppid` are async-signal-safe system calls.
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal.as_raw() as libc::c_ulong) == -1 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // The parent died before the flag was set; its signal would never come.
                libc::_exit(1);
            }
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe system calls and allocates nothing.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Makes the child `cmd` starts begin with no signal blocked (`sigprocmask(SIG_SETMASK,
/// empty)` before the `exec`). A process that reads signals from a signalfd blocks them,
/// and a child inherits the mask across `exec`: without this a worker would never die of
/// (or see) the `SIGTERM` its supervisor sends.
///
/// # Errors
///
/// Building the empty signal set failed (it cannot, in practice).
pub fn unblock_signals_in_child(cmd: &mut Command) -> io::Result<()> {
    let empty = crate::signalfd::sigset(&[])?;
    let hook = move || {
        // SAFETY: `empty` is an initialised `sigset_t` owned by the closure; a null old-set
        // pointer is allowed; `sigprocmask` is async-signal-safe and we are in the forked,
        // single-threaded child.
        if unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook makes one async-signal-safe system call and allocates nothing.
    unsafe {
        cmd.pre_exec(hook);
    }
    Ok(())
}

/// Starts the child `cmd` in a process group of its own (`setpgid(0, 0)`, as
/// [`CommandExt::process_group`]) that writes to its terminal like any other: `SIGTTOU` is
/// ignored in the child (`SIG_IGN` survives the `exec`). In a group of its own the child
/// is a background process of the terminal it shares with its parent, and with the
/// terminal set to `stty tostop` its first write there (a log line) would stop it until
/// someone sends it `SIGCONT`, which a terminal's `fg` does not (it continues the
/// foreground job's group, not the child's).
///
/// A supervisor uses it for its workers, so that a terminal's Ctrl-C reaches each
/// worker once, forwarded by the supervisor, not also directly.
///
/// [`CommandExt::process_group`]: std::os::unix::process::CommandExt::process_group
pub fn in_process_group_of_its_own(cmd: &mut Command) {
    std::os::unix::process::CommandExt::process_group(cmd, 0);
    let hook = || {
        // SAFETY: `signal` with `SIG_IGN` runs no code in signal context and is
        // async-signal-safe; we are in the forked, single-threaded child.
        if unsafe { libc::signal(libc::SIGTTOU, libc::SIG_IGN) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook makes one async-signal-safe system call and allocates nothing.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Makes the child `cmd` starts inherit no descriptor beyond stdin, stdout and stderr:
/// before the `exec`, every descriptor from 3 up is set close-on-exec in the child
/// (`close_range(3, ~0, CLOSE_RANGE_CLOEXEC)`, Linux 5.11). Close-on-exec rather than
/// closed: std's channel that reports a failed `exec` stays open until the `exec`. On an
/// older kernel the descriptors this process has open without close-on-exec now (listed
/// from `/proc/self/fd`; any other is opened close-on-exec by std and duo) get it in the
/// child; without `/proc`, every number below the open-file limit is tried.
///
/// For a child that must not get, say, a listening socket a process cleared close-on-exec
/// on or inherited without it. Do not combine it with [`pass_fds`] on one `Command`: which
/// of their hooks runs last decides.
///
/// # Errors
///
/// Without `/proc`, the open-file limit could not be read.
pub fn inherit_only_stdio(cmd: &mut Command) -> io::Result<()> {
    let fallback = Fallback::now()?;
    let hook = move || {
        // SAFETY: `close_range` with `CLOSE_RANGE_CLOEXEC` only sets a flag on the open
        // descriptors of the range (it closes nothing); it is a plain system call,
        // async-signal-safe, made in the forked, single-threaded child.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if ret == 0 {
            return Ok(());
        }
        // Older than Linux 5.11 (`ENOSYS`, or `EINVAL` for the flag): one at a time.
        fallback.apply()
    };
    // SAFETY: the hook only makes async-signal-safe system calls (`close_range`, `fcntl`)
    // and allocates nothing (it reads the list made here).
    unsafe {
        cmd.pre_exec(hook);
    }
    Ok(())
}

/// The descriptors [`inherit_only_stdio`] sets close-on-exec one at a time, on a kernel
/// without `CLOSE_RANGE_CLOEXEC`.
enum Fallback {
    /// These (the parent's descriptors without close-on-exec).
    Listed(Vec<RawFd>),
    /// Every number from 3 below this one (`/proc` could not be read).
    Below(RawFd),
}

impl Fallback {
    /// The descriptors of this process that lack close-on-exec now, or every number below
    /// the open-file limit if `/proc` cannot be read (an error if that cannot either).
    fn now() -> io::Result<Fallback> {
        match std::fs::read_dir("/proc/self/fd") {
            Ok(dir) => Ok(Fallback::Listed(
                dir.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<RawFd>().ok())
                    .filter(|fd| *fd >= 3 && !is_close_on_exec(*fd))
                    .collect(),
            )),
            Err(_) => {
                let (soft, _) = crate::fd_limit()?;
                Ok(Fallback::Below(RawFd::try_from(soft).unwrap_or(RawFd::MAX)))
            }
        }
    }

    /// Sets close-on-exec on each: async-signal-safe (`fcntl` only), allocating nothing.
    fn apply(&self) -> io::Result<()> {
        match self {
            Fallback::Listed(fds) => fds.iter().try_for_each(|fd| set_close_on_exec(*fd)),
            Fallback::Below(end) => (3..*end).try_for_each(set_close_on_exec),
        }
    }
}

/// Whether `fd` is open and close-on-exec (one `fcntl`).
fn is_close_on_exec(fd: RawFd) -> bool {
    // SAFETY: `F_GETFD` only reads a descriptor's flags (`EBADF` on a number not open).
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    flags != -1 && flags & libc::FD_CLOEXEC != 0
}

/// Sets close-on-exec on `fd` if it is open (a number not open is left alone):
/// async-signal-safe (`fcntl` only), allocating nothing.
fn set_close_on_exec(fd: RawFd) -> io::Result<()> {
    // SAFETY: `F_GETFD` only reads a descriptor's flags (`EBADF` on a number not open).
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags == -1 || flags & libc::FD_CLOEXEC != 0 {
        return Ok(());
    }
    // SAFETY: `F_SETFD` only sets the flags of the open descriptor `fd`.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Duplicates `fd` to the lowest free number at or above `min`, close-on-exec
/// (`fcntl(F_DUPFD_CLOEXEC)`).
///
/// # Errors
///
/// `min` is negative, or no descriptor is free (`EMFILE`, `EINVAL` above the limit).
pub fn dup_at_least(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    if min < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "dup_at_least: negative descriptor number",
        ));
    }
    // SAFETY: `fd` is borrowed, so open; `F_DUPFD_CLOEXEC` creates a new descriptor.
    let new = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) })
        .map_err(context("fcntl(F_DUPFD_CLOEXEC)"))?;
    // SAFETY: the call succeeded, so `new` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Sets (`inherit` = false) or clears (`inherit` = true) close-on-exec on `fd`, for a
/// process about to `exec` itself with its descriptors kept in place. Clearing it lets any
/// child started meanwhile by another thread inherit the descriptor: do it only in a
/// single-threaded process, just before the `exec`.
///
/// # Errors
///
/// `fcntl` failed.
pub fn set_inherit_on_exec(fd: BorrowedFd<'_>, inherit: bool) -> io::Result<()> {
    // SAFETY: `F_GETFD` only reads the flags of a descriptor we borrow.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) })
        .map_err(context("fcntl(F_GETFD)"))?;
    let flags = if inherit {
        flags & !libc::FD_CLOEXEC
    } else {
        flags | libc::FD_CLOEXEC
    };
    // SAFETY: `F_SETFD` only sets the flags of a descriptor we borrow.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags) })
        .map_err(context("fcntl(F_SETFD)"))?;
    Ok(())
}

/// Reaps one child that has ended (`waitpid(-1, WNOHANG)`): its PID and exit status, or
/// `Ok(None)` if no child has ended (or there are no children). Call it in a loop on
/// `SIGCHLD`, which the kernel coalesces. Children whose [`std::process::Child`] is still
/// held are reaped too (the `Child` then cannot `wait`), so use it only in a process that
/// tracks its children by PID.
///
/// # Errors
///
/// `waitpid` failed with something other than `ECHILD` or `EINTR`.
pub fn reap_any() -> io::Result<Option<(u32, ExitStatus)>> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a valid `int` the kernel writes; `-1` means any child.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        return match pid {
            0 => Ok(None),
            -1 => {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::ECHILD) => Ok(None),
                    Some(libc::EINTR) => continue,
                    _ => Err(context("waitpid")(err)),
                }
            }
            // `waitpid` returns a positive PID here.
            pid => Ok(Some((pid as u32, ExitStatus::from_raw(status)))),
        };
    }
}

/// A PID as `kill` takes it, refusing 0 and values that would name a process group or
/// every process (`kill(0)`, `kill(-1)`, `kill(-pgid)`).
fn checked_pid(pid: u32) -> io::Result<libc::pid_t> {
    libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("kill: {pid} is not a process id"),
            )
        })
}

fn kill(pid: u32, signo: libc::c_int, what: &'static str) -> io::Result<()> {
    let pid = checked_pid(pid)?;
    // SAFETY: `pid` is a single positive process id (checked), `signo` a valid signal.
    cvt(unsafe { libc::kill(pid, signo) }).map_err(|e| {
        if e.raw_os_error() == Some(libc::ESRCH) {
            // The kernel's ESRCH has no `ErrorKind` of its own; callers branch on it.
            io::Error::new(io::ErrorKind::NotFound, format!("{what}: no process {pid}"))
        } else {
            context(what)(e)
        }
    })?;
    Ok(())
}

/// Sends `signal` to the one process `pid` (`kill(2)`).
///
/// # Errors
///
/// `pid` is 0 or above `i32::MAX` (`InvalidInput`: they would mean a process group or
/// every process), there is no such process (`ESRCH`, kind `NotFound`), or it is not ours
/// to signal (`PermissionDenied`).
pub fn signal_process(pid: u32, signal: Signal) -> io::Result<()> {
    kill(pid, signal.as_raw(), "kill")
}

/// Sends `SIGKILL` to the one process `pid`. Errors as [`signal_process`].
pub fn kill_process(pid: u32) -> io::Result<()> {
    kill(pid, libc::SIGKILL, "kill(SIGKILL)")
}

/// Sends `SIGSTOP` to the one process `pid`: it stops, whatever it handles or blocks,
/// until a `SIGCONT` ([`Signal::CONT`]) continues it. Errors as [`signal_process`].
pub fn stop_process(pid: u32) -> io::Result<()> {
    kill(pid, libc::SIGSTOP, "kill(SIGSTOP)")
}

/// Whether process `pid` exists (`kill(pid, 0)`; a zombie still exists until reaped).
pub fn process_exists(pid: u32) -> bool {
    match kill(pid, 0, "kill(0)") {
        Ok(()) => true,
        Err(e) => e.kind() == io::ErrorKind::PermissionDenied,
    }
}

/// Executes `cmd` in place of this process ([`CommandExt::exec`]): returns only if that
/// failed, with the error, and with `SIGPIPE` as it was before the call. `std`'s `exec`
/// sets `SIGPIPE` to its default action before `execve` (for the new image), and leaves
/// it so when `execve` fails: a process that goes on after a failed `exec` (a supervisor
/// whose upgrade failed) would otherwise die of a write to a pipe nobody reads (its
/// stderr's, say) instead of getting `EPIPE`.
pub fn exec_in_place(cmd: &mut Command) -> io::Error {
    // SAFETY: `sigaction` is plain data, for which all zeroes is a valid value (an empty
    // mask, no flags, `SIG_DFL`); it is only an out-parameter here.
    let mut before: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only reads SIGPIPE's disposition into `before`, a valid
    // `sigaction` we own.
    let read = unsafe { libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut before) } == 0;
    let err = cmd.exec();
    if read {
        // SAFETY: `before` is the disposition the kernel gave us above (`SIG_IGN`,
        // `SIG_DFL` or the handler installed then, with its flags and mask): installing
        // it again is the state before the call. It cannot fail for SIGPIPE with a valid
        // action, and there would be nothing better to do than go on.
        let _ = unsafe { libc::sigaction(libc::SIGPIPE, &before, std::ptr::null_mut()) };
    }
    err
}

/// A pipe, both ends close-on-exec and non-blocking (`pipe2(O_CLOEXEC | O_NONBLOCK)`):
/// `(read end, write end)`.
///
/// # Errors
///
/// `pipe2` failed (`EMFILE`).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is an array of two ints, what `pipe2` writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })
        .map_err(context("pipe2"))?;
    // SAFETY: the call succeeded, so both are fresh descriptors nothing else owns.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((r, w))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use super::*;

    /// Reaps `pid` with `reap_any`, polling with a deadline. Tests run in parallel and
    /// `reap_any` takes any child, so what one test reaps for another is kept for it.
    fn reap(pid: u32) -> ExitStatus {
        use std::collections::HashMap;
        use std::sync::Mutex;
        static REAPED: Mutex<Option<HashMap<u32, ExitStatus>>> = Mutex::new(None);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            {
                let mut reaped = REAPED.lock().unwrap_or_else(|p| p.into_inner());
                let reaped = reaped.get_or_insert_with(HashMap::new);
                while let Some((p, status)) = reap_any().unwrap() {
                    reaped.insert(p, status);
                }
                if let Some(status) = reaped.remove(&pid) {
                    return status;
                }
            }
            assert!(Instant::now() < deadline, "child {pid} not reaped");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn descriptors_arrive_at_fixed_numbers_even_when_sources_overlap_targets() {
        let (r1, w1) = pipe().unwrap();
        let (r2, w2) = pipe().unwrap();
        // Sources in the reverse order of the targets, at low numbers that may be targets.
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "printf one >&4; printf two >&3"])
            .stdin(Stdio::null());
        pass_fds(&mut cmd, &[w2.as_fd(), w1.as_fd()], 3).unwrap();
        // Reaped by pid (`reap`), as a supervisor does.
        let pid = cmd.spawn().unwrap().id();
        drop(cmd);
        drop((w1, w2));
        let status = reap(pid);
        assert!(status.success(), "{status}");
        assert_eq!(read_to_end(r1), "one");
        assert_eq!(read_to_end(r2), "two");
    }

    /// All of a non-blocking pipe's data, to its end. The end may come late: a child
    /// another test forks meanwhile holds the write ends (close-on-exec) until its `exec`.
    fn read_to_end(pipe: OwnedFd) -> String {
        let mut pipe = std::fs::File::from(pipe);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => return String::from_utf8(got).unwrap(),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "the pipe never ended");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("reading the pipe: {e}"),
            }
        }
    }

    #[test]
    fn targets_below_three_are_refused() {
        let (_r, w) = pipe().unwrap();
        let e = pass_fds(&mut Command::new("true"), &[w.as_fd()], 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_killed_child_is_reaped_with_its_signal() {
        let pid = Command::new("sleep").arg("30").spawn().unwrap().id();
        assert!(process_exists(pid));
        kill_process(pid).unwrap();
        let status = reap(pid);
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(!process_exists(pid));
        let e = signal_process(pid, Signal::TERM).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }

    #[test]
    fn group_and_broadcast_pids_are_refused() {
        for pid in [0, u32::MAX, 1 << 31] {
            let e = signal_process(pid, Signal::TERM).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{pid}");
        }
    }

    #[test]
    fn a_pipe_is_nonblocking_and_closes_on_exec() {
        let (r, w) = pipe().unwrap();
        let mut r = std::fs::File::from(r);
        let e = r.read(&mut [0u8; 1]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        std::fs::File::from(w).write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        assert_eq!(r.read(&mut b).unwrap(), 1);
        set_inherit_on_exec(r.as_fd(), true).unwrap();
        set_inherit_on_exec(r.as_fd(), false).unwrap();
        let d = dup_at_least(r.as_fd(), 100).unwrap();
        assert!(d.as_raw_fd() >= 100);
    }

    #[test]
    fn only_stdio_is_inherited() {
        let (r, w) = pipe().unwrap();
        // Inheritable here, as a listener is for an instant before an upgrade's `exec`.
        set_inherit_on_exec(r.as_fd(), true).unwrap();
        let probe = |only_stdio: bool| {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c")
                .arg(format!("test -e /proc/self/fd/{}", r.as_raw_fd()));
            if only_stdio {
                inherit_only_stdio(&mut cmd).unwrap();
            }
            let pid = cmd.spawn().unwrap().id();
            reap(pid).code()
        };
        assert_eq!(probe(false), Some(0), "inherited without the hook");
        assert_eq!(probe(true), Some(1), "not inherited with it");
        // The fallback of kernels without `CLOSE_RANGE_CLOEXEC`, on its own.
        let fallback = Fallback::now().unwrap();
        assert!(matches!(&fallback, Fallback::Listed(fds) if fds.contains(&r.as_raw_fd())));
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!("test -e /proc/self/fd/{}", r.as_raw_fd()));
        // SAFETY: `apply` only calls `fcntl` (async-signal-safe) and allocates nothing.
        unsafe {
            cmd.pre_exec(move || fallback.apply());
        }
        assert_eq!(reap(cmd.spawn().unwrap().id()).code(), Some(1));
        assert!(
            !is_close_on_exec(r.as_raw_fd()),
            "the parent's flag is untouched"
        );
        drop(w);
    }

    #[test]
    fn parent_death_signal_is_set_in_the_child() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "exit 7"]);
        set_parent_death_signal(&mut cmd, Signal::TERM);
        unblock_signals_in_child(&mut cmd).unwrap();
        let pid = cmd.spawn().unwrap().id();
        assert_eq!(reap(pid).code(), Some(7));
    }
}
