//! Review of round 4's duo-sys changes, against the real kernel (each bug's test failed
//! before its fix).
//!
//! 1. `pass_fds` refuses a spawn with `EBUSY` when a target number that another
//!    descriptor held when it ran sits, in the child, on a different file: the guard
//!    against std's exec-error channel landing there. It fired for any different file,
//!    though std's channel is a close-on-exec socket pair (a pipe in older versions): a
//!    target that another thread's socket held, closed and taken by another thread's TCP
//!    socket before the spawn (descriptor churn that any multi-threaded process has) made
//!    a spawn of an existing program fail, where it used to succeed.
//! 2. Two `pass_fds` calls on one `Command` that name the same target number (the later
//!    one wins, as the later of two `env` calls does), when another open descriptor of
//!    this process sat there: each call took that file as the one found there, but in
//!    the child the first call's `dup2` had replaced it by the time the second call's
//!    hook looked, so the spawn always failed with `EBUSY`, no thread involved.
//!
//! Every test takes [`SERIAL`]: they need the lowest free numbers to stay as they set
//! them, which a concurrent test opening a descriptor would upset.

use std::io::Read;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use duo_sys::{dup_at_least, pass_fds, pipe, EventFd};
use duo_testkit::wait_until;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The lowest descriptor number free in this process (at or above 3).
fn lowest_free() -> RawFd {
    dup_at_least(std::io::stdin().as_fd(), 3)
        .unwrap()
        .as_raw_fd()
}

/// What this process's descriptor `fd` links to in `/proc` (`pipe:[1234]`...).
fn link_of(fd: RawFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Runs `readlink /proc/self/fd/<target>` with `passed` handed to it at `target` by
/// `pass_fds` after `between` ran; what it printed (the file the child had there), or
/// the spawn's error.
fn child_sees(
    target: RawFd,
    passed: std::os::fd::BorrowedFd<'_>,
    between: impl FnOnce(),
) -> std::io::Result<String> {
    let mut cmd = Command::new("readlink");
    cmd.arg(format!("/proc/self/fd/{target}"))
        .stdout(Stdio::piped());
    pass_fds(&mut cmd, &[passed], target).unwrap();
    between();
    Ok(output_of(cmd.spawn()?))
}

/// What `child` (a `readlink`) printed, once it has exited successfully; bounded.
fn output_of(mut child: Child) -> String {
    let mut status = None;
    wait_until("readlink to exit", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    stdout.read_to_string(&mut out).unwrap();
    assert!(status.unwrap().success(), "readlink: {status:?}, {out:?}");
    out.trim().to_owned()
}

/// Bug 1. A target number held by another descriptor (another thread's, say) when
/// `pass_fds` ran, closed and taken by an unrelated file (a TCP socket another thread
/// opens) that stays open through the spawn: std's exec-error channel cannot be there,
/// and the spawn must succeed with the passed descriptor at the target, as it did before
/// the guard. It failed with `EBUSY`.
#[test]
fn a_target_retaken_by_an_unrelated_socket_does_not_fail_the_spawn() {
    let _g = serial();
    let (_r, w) = pipe().unwrap();
    let efd = EventFd::new().unwrap();
    let first = lowest_free();
    let mut holder = Some(dup_at_least(efd.as_fd(), first).unwrap());
    assert_eq!(holder.as_ref().unwrap().as_raw_fd(), first);
    let mut socket = None;
    let seen = child_sees(first, w.as_fd(), || {
        drop(holder.take());
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(l.as_raw_fd(), first, "the socket takes the freed number");
        socket = Some(l);
    });
    let seen = seen.expect("spawning with a target taken by a TCP socket");
    assert_eq!(seen, link_of(w.as_raw_fd()), "the child's descriptor");
}

/// Guard for bug 1: the same with the number left free before the spawn, where std's
/// channel lands: still refused with `EBUSY` (the round-4 behaviour), since std's report
/// would be lost.
#[test]
fn a_target_freed_before_the_spawn_is_still_refused() {
    let _g = serial();
    let (_r, w) = pipe().unwrap();
    let efd = EventFd::new().unwrap();
    let first = lowest_free();
    let mut holder = Some(dup_at_least(efd.as_fd(), first).unwrap());
    assert_eq!(holder.as_ref().unwrap().as_raw_fd(), first);
    let err = child_sees(first, w.as_fd(), || drop(holder.take()))
        .expect_err("std's channel at a target must fail the spawn");
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY), "{err}");
}

/// Bug 2. Two `pass_fds` calls naming the same target, which another descriptor of this
/// process holds through the spawn: the later call's descriptor is the one the child
/// has there. The spawn failed with `EBUSY`: the second hook found the first one's
/// descriptor at the target, not the file seen when it was set up.
#[test]
fn two_calls_naming_an_occupied_target_pass_the_later_descriptor() {
    let _g = serial();
    let (_r1, w1) = pipe().unwrap();
    let (_r2, w2) = pipe().unwrap();
    let efd = EventFd::new().unwrap();
    let first = lowest_free();
    let holder = dup_at_least(efd.as_fd(), first).unwrap();
    assert_eq!(holder.as_raw_fd(), first);
    let mut cmd = Command::new("readlink");
    cmd.arg(format!("/proc/self/fd/{first}"))
        .stdout(Stdio::piped());
    pass_fds(&mut cmd, &[w1.as_fd()], first).unwrap();
    pass_fds(&mut cmd, &[w2.as_fd()], first).unwrap();
    let child = cmd.spawn().expect("spawning with two calls for one target");
    assert_eq!(output_of(child), link_of(w2.as_raw_fd()));
    drop(holder);
}
