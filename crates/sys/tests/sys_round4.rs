//! Descriptor-lifetime bugs in duo-sys, found by a review helper and shown against the
//! real kernel (each bug's test failed before its fix; the guards passed before too).
//!
//! 1. `Epoll::modify` with `EXCLUSIVE` deleted the registration and added it again; when
//!    the kernel refused the new one (`EXCLUSIVE | ONESHOT`, or `EXCLUSIVE` on an epoll
//!    descriptor), the error came back but the descriptor was no longer registered: its
//!    events never came, and removing it failed with `NotFound`, while the reactor (which
//!    keeps the old interest on a failed modify) believed it registered.
//! 2. `pass_fds`: std reports a failed `exec` through a close-on-exec channel (a socket
//!    pair in the std used here) it opens at the lowest free numbers during `spawn`; when
//!    those were target numbers, the child's `dup2` replaced it, so spawning a missing
//!    program returned `Ok` (a child that exited at once) and std's 8-byte error report
//!    was written into a descriptor the child was to inherit. (Free target numbers are now
//!    held until the spawn; a target that another descriptor held, closed before the
//!    spawn, makes the spawn fail with `EBUSY` if another file sits there in the child.)
//! 3. `recv_mmsg` closed the descriptors of `SCM_RIGHTS` but not the pidfd the kernel
//!    attaches (`SCM_PIDFD`, Linux >= 6.5) on a socket with `SO_PASSPIDFD`: one leaked
//!    descriptor per datagram.
//!
//! Every test takes [`SERIAL`]: some count this process's descriptors or need the lowest
//! free numbers to stay free, which a concurrent test opening one would upset.

mod common;

use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::send_with_fds;
use duo_sys::{
    dup_at_least, pass_fds, pipe, recv_mmsg, Epoll, EventFd, Events, Interest, MmsgScratch,
    RecvMeta,
};
use duo_testkit::wait_until;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

const WAIT: Option<Duration> = Some(Duration::from_secs(5));
const NO_WAIT: Option<Duration> = Some(Duration::ZERO);

/// The tokens of what `epoll` reports without waiting.
fn ready_tokens(epoll: &Epoll) -> Vec<u64> {
    let mut events = Events::with_capacity(8);
    epoll.wait(&mut events, NO_WAIT).unwrap();
    events.iter().map(|(t, _)| t).collect()
}

/// The kernel refuses `EPOLLEXCLUSIVE` with `EPOLLONESHOT`. A modify asking for that must
/// fail and leave the exclusive registration as it was: still reporting with its token,
/// still removable.
#[test]
fn a_refused_exclusive_modify_keeps_the_registration() {
    let _g = serial();
    let epoll = Epoll::new().unwrap();
    let efd = EventFd::new().unwrap();
    let exclusive = Interest::READABLE | Interest::EXCLUSIVE;
    epoll.add(efd.as_fd(), exclusive, 1).unwrap();
    let err = epoll
        .modify(efd.as_fd(), exclusive | Interest::ONESHOT, 2)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    efd.notify().unwrap();
    assert_eq!(ready_tokens(&epoll), [1], "the registration is gone");
    epoll.delete(efd.as_fd()).unwrap();
}

/// The kernel refuses `EPOLLEXCLUSIVE` on an epoll descriptor (nested epoll). Changing a
/// plain registration of one to an exclusive one must fail and keep the plain one.
#[test]
fn an_exclusive_modify_of_an_epoll_descriptor_keeps_its_registration() {
    let _g = serial();
    let outer = Epoll::new().unwrap();
    let inner = Epoll::new().unwrap();
    let efd = EventFd::new().unwrap();
    inner.add(efd.as_fd(), Interest::READABLE, 0).unwrap();
    outer.add(inner.as_fd(), Interest::READABLE, 1).unwrap();
    let err = outer
        .modify(inner.as_fd(), Interest::READABLE | Interest::EXCLUSIVE, 2)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    efd.notify().unwrap();
    assert_eq!(ready_tokens(&outer), [1], "the registration is gone");
    outer.delete(inner.as_fd()).unwrap();
}

/// Guard (passed before the fix too): an exclusive modify of a descriptor that is not
/// registered is `NotFound` and leaves it unregistered; a valid one still works.
#[test]
fn an_exclusive_modify_of_an_unregistered_descriptor_is_not_found() {
    let _g = serial();
    let epoll = Epoll::new().unwrap();
    let efd = EventFd::new().unwrap();
    let exclusive = Interest::READABLE | Interest::EXCLUSIVE;
    let err = epoll.modify(efd.as_fd(), exclusive, 1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    efd.notify().unwrap();
    assert_eq!(ready_tokens(&epoll), [0u64; 0]);
    assert_eq!(
        epoll.delete(efd.as_fd()).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    epoll.add(efd.as_fd(), exclusive, 1).unwrap();
    epoll.modify(efd.as_fd(), exclusive, 3).unwrap();
    assert_eq!(ready_tokens(&epoll), [3]);
    let mut events = Events::with_capacity(1);
    assert_eq!(epoll.wait(&mut events, WAIT).unwrap(), 1);
    epoll.delete(efd.as_fd()).unwrap();
}

/// The number of descriptors this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The lowest descriptor number free in this process (at or above 3).
fn lowest_free() -> RawFd {
    dup_at_least(std::io::stdin().as_fd(), 3)
        .unwrap()
        .as_raw_fd()
}

/// Everything written to a non-blocking pipe until its last writer is gone; bounded.
fn read_to_end(r: OwnedFd) -> Vec<u8> {
    let mut f = std::fs::File::from(r);
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    wait_until("end of stream on the pipe", || match f.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => {
            out.extend_from_slice(&buf[..n]);
            false
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("reading the pipe: {e}"),
    });
    out
}

/// Spawning a program that does not exist, with descriptors passed at the lowest free
/// numbers (where std's error channel lands during `spawn`): `spawn` must fail with
/// `NotFound`, nothing must be written into the passed descriptors, and once the
/// `Command` is gone the parent must hold no more descriptors than before.
#[test]
fn spawning_a_missing_program_with_passed_fds_fails_cleanly() {
    let _g = serial();
    let pipes: Vec<(OwnedFd, OwnedFd)> = (0..4).map(|_| pipe().unwrap()).collect();
    let before = open_fds();
    let first = lowest_free();
    let mut cmd = Command::new("/nonexistent/duo-sys-round4-no-such-program");
    let writers: Vec<_> = pipes.iter().map(|(_, w)| w.as_fd()).collect();
    pass_fds(&mut cmd, &writers, first).unwrap();
    let outcome = match cmd.spawn() {
        Ok(mut child) => {
            let mut status = None;
            wait_until("the child to exit", || {
                status = child.try_wait().unwrap();
                status.is_some()
            });
            Err(format!("spawn succeeded; the child ended with {status:?}"))
        }
        Err(e) => Ok(e),
    };
    drop(cmd);
    let after = open_fds();
    let received: Vec<Vec<u8>> = pipes
        .into_iter()
        .map(|(r, w)| {
            drop(w);
            read_to_end(r)
        })
        .collect();
    let err = outcome.unwrap();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(after, before, "descriptors kept by pass_fds/spawn");
    assert!(
        received.iter().all(Vec::is_empty),
        "the passed descriptors received {received:?}"
    );
}

/// Spawning with target numbers that other descriptors of this process held when
/// `pass_fds` ran, but that were closed before `spawn` (another thread's, say): std's
/// error channel then lands there. The child must not `dup2` over it: `spawn` fails with
/// `EBUSY` rather than succeeding and writing std's report into a passed descriptor.
#[test]
fn a_target_freed_before_spawn_is_an_error_not_a_lost_exec_report() {
    let _g = serial();
    let pipes: Vec<(OwnedFd, OwnedFd)> = (0..4).map(|_| pipe().unwrap()).collect();
    let first = lowest_free();
    // Two other descriptors at the middle targets, gone before the spawn.
    let efd = EventFd::new().unwrap();
    let others: Vec<OwnedFd> = (1..3)
        .map(|i| dup_at_least(efd.as_fd(), first + i).unwrap())
        .collect();
    assert_eq!(others[1].as_raw_fd(), first + 2);
    let mut cmd = Command::new("/nonexistent/duo-sys-round4-no-such-program");
    let writers: Vec<_> = pipes.iter().map(|(_, w)| w.as_fd()).collect();
    pass_fds(&mut cmd, &writers, first).unwrap();
    drop(others);
    let outcome = match cmd.spawn() {
        Ok(mut child) => {
            let mut status = None;
            wait_until("the child to exit", || {
                status = child.try_wait().unwrap();
                status.is_some()
            });
            Err(format!("spawn succeeded; the child ended with {status:?}"))
        }
        Err(e) => Ok(e),
    };
    drop(cmd);
    let received: Vec<Vec<u8>> = pipes
        .into_iter()
        .map(|(r, w)| {
            drop(w);
            read_to_end(r)
        })
        .collect();
    let err = outcome.unwrap();
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY), "{err}");
    assert!(
        received.iter().all(Vec::is_empty),
        "the passed descriptors received {received:?}"
    );
}

/// `SO_PASSPIDFD` (`asm-generic/socket.h`; the libc crate does not export it).
const SO_PASSPIDFD: libc::c_int = 76;

/// The descriptors of this process that are pidfds.
fn open_pidfds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().contains("pidfd"))
        .count()
}

/// Sets `SO_PASSPIDFD` on `sock`; false if the kernel does not know it (before 6.5).
fn pass_pidfd(sock: &UnixDatagram) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: `on` is an `int` alive for the call, its size is passed; `sock` is open.
    let ret = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PASSPIDFD,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    ret == 0
}

/// On an `AF_UNIX` datagram socket with `SO_PASSPIDFD` the kernel installs a pidfd of the
/// sender with every datagram (`SCM_PIDFD`): `recv_mmsg`, which hands it a control
/// buffer, must close those as it closes `SCM_RIGHTS` descriptors, or each datagram
/// leaks one. Also with descriptors passed beside it, and with more of them than the
/// control buffer holds (`MSG_CTRUNC`: the pidfd then does not fit, and is not
/// installed).
#[test]
fn recv_mmsg_closes_the_pidfds_the_kernel_attaches() {
    let _g = serial();
    let (ours, peer) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    if !pass_pidfd(&ours) {
        eprintln!("SO_PASSPIDFD unknown to this kernel: nothing to check");
        return;
    }
    let (_r, w) = pipe().unwrap();
    let (pidfds, fds) = (open_pidfds(), open_fds());
    for data in [&b"one"[..], b"two", b"three"] {
        peer.send(data).unwrap();
    }
    send_with_fds(&peer, b"four", &[w.as_raw_fd(); 2]);
    send_with_fds(&peer, b"five", &[w.as_raw_fd(); 64]);
    let mut scratch = MmsgScratch::new(8);
    let mut buf = vec![0u8; 8 * 16];
    let mut meta = [RecvMeta::default(); 8];
    let n = recv_mmsg(ours.as_fd(), &mut scratch, &mut buf, 16, &mut meta).unwrap();
    assert_eq!(n, 5);
    assert_eq!(&buf[64..64 + meta[4].len], b"five");
    assert_eq!(open_pidfds(), pidfds, "pidfds kept by recv_mmsg");
    assert_eq!(open_fds(), fds, "descriptors kept by recv_mmsg");
}
