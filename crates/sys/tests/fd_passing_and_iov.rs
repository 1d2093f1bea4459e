//! Bugs found in duo-sys by a review helper, each shown against the real kernel (each
//! test failed before its fix).
//!
//! 1. `pass_fds` called twice on one `Command`: the first call's `pre_exec` hook `dup2`s
//!    onto a number that the second call chose, in the parent, for its own source
//!    duplicate, so the second hook passes the wrong descriptor (wrong result, silently).
//! 2. The vectored I/O calls cut the slice list at `IOV_MAX` without skipping empty
//!    slices: with `IOV_MAX` empty slices in front of a non-empty one, `readv` returns
//!    `Ok(0)` (documented as end of stream) while data is queued, and `writev` /
//!    `send_vectored` return `Ok(0)` (no progress, no `WouldBlock`) for non-empty data.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use duo_sys::{pass_fds, pipe, readv, send_vectored, writev, IOV_MAX};
use duo_testkit::wait_until;

fn is_open(fd: RawFd) -> bool {
    // SAFETY: `F_GETFD` only reads the flags of a descriptor number; on a number that is
    // not open it fails with EBADF and touches nothing.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// The first `base` from 600 on with `base..base + 8` all free in this process.
fn free_window() -> RawFd {
    (600..5000)
        .step_by(16)
        .find(|&b| (b..b + 8).all(|fd| !is_open(fd)))
        .expect("a window of 8 free descriptor numbers")
}

/// Everything written to a (non-blocking) pipe until all its writers are gone; bounded.
fn read_all(r: OwnedFd) -> String {
    let mut f = std::fs::File::from(r);
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    wait_until("end of stream on the pipe", || match f.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => {
            out.extend_from_slice(&buf[..n]);
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("reading the pipe: {e}"),
    });
    String::from_utf8(out).unwrap()
}

/// Two `pass_fds` calls with disjoint target ranges on one `Command`, the natural way to
/// hand a child two groups of descriptors (say its stats memfd at one number, its
/// listeners at 3..). Each call is correct alone; together the child gets, at the second
/// call's target, the first call's descriptor.
///
/// Call A: `[x, y]` at `B+1, B+2`; its sources are duplicated at `B+3, B+4`.
/// Call B: `[w]` at `B`; its source is duplicated at the lowest free number >= `B+1`,
/// which is `B+1` (a target of call A, free in the parent). In the child, A's hook runs
/// first and `dup2(x', B+1)` replaces B's source, so B's hook puts `x` at `B`.
#[test]
fn pass_fds_twice_on_one_command_passes_the_descriptors_asked_for() {
    let base = free_window();
    let (wr, ww) = pipe().unwrap();
    let (xr, xw) = pipe().unwrap();
    let (yr, yw) = pipe().unwrap();
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        "echo w >/proc/self/fd/$1; echo x >/proc/self/fd/$2; echo y >/proc/self/fd/$3",
        "sh",
    ])
    .args([base, base + 1, base + 2].map(|fd| fd.to_string()))
    .stdin(Stdio::null());
    pass_fds(&mut cmd, &[xw.as_fd(), yw.as_fd()], base + 1).unwrap();
    pass_fds(&mut cmd, &[ww.as_fd()], base).unwrap();
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    drop(cmd);
    drop((ww, xw, yw));
    let mut status = None;
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("the child to exit", || {
            status = child.try_wait().unwrap();
            status.is_some()
        })
    }));
    if waited.is_err() {
        let _ = duo_sys::kill_process(pid);
        let _ = child.wait();
        panic!("child {pid} did not exit within the limit");
    }
    assert!(status.unwrap().success(), "{status:?}");
    let (w, x, y) = (read_all(wr), read_all(xr), read_all(yr));
    assert_eq!(
        (w.as_str(), x.as_str(), y.as_str()),
        ("w\n", "x\n", "y\n"),
        "fd {base} should be w's pipe, {} x's, {} y's",
        base + 1,
        base + 2
    );
}

/// `readv` documents `Ok(0)` with non-empty buffers as end of stream. With `IOV_MAX`
/// empty buffers before a 16-byte one it returns `Ok(0)` while 4 bytes are queued and the
/// peer is still connected: a caller closes a live connection.
#[test]
fn readv_past_iov_max_empty_buffers_does_not_report_end_of_stream() {
    let (mut a, b) = UnixStream::pair().unwrap();
    a.write_all(b"data").unwrap();
    let mut empties: Vec<[u8; 0]> = vec![[]; IOV_MAX];
    let mut last = [0u8; 16];
    let mut bufs: Vec<IoSliceMut<'_>> = empties.iter_mut().map(|e| IoSliceMut::new(e)).collect();
    bufs.push(IoSliceMut::new(&mut last));
    let n = readv(b.as_fd(), &mut bufs).unwrap();
    assert_eq!(
        duo_sys::bytes_available(b.as_fd()).unwrap() + n,
        4,
        "accounting"
    );
    assert_eq!(
        n, 4,
        "readv returned Ok({n}) (\"end of stream\") with 4 bytes queued and a 16-byte buffer"
    );
}

/// The write side of the same cut: `writev` and `send_vectored` with `IOV_MAX` empty
/// slices before "xyz" return `Ok(0)`: no progress and no `WouldBlock`, so a loop that
/// writes until everything is out (or until `WouldBlock`) spins forever.
#[test]
fn writev_and_send_vectored_past_iov_max_empty_slices_make_progress() {
    let (a, b) = UnixStream::pair().unwrap();
    let empty: [u8; 0] = [];
    let mut slices: Vec<IoSlice<'_>> = (0..IOV_MAX).map(|_| IoSlice::new(&empty)).collect();
    slices.push(IoSlice::new(b"xyz"));
    let by_writev = writev(a.as_fd(), &slices).unwrap();
    let by_send = send_vectored(a.as_fd(), &slices).unwrap();
    drop(a);
    let mut got = Vec::new();
    b.set_nonblocking(true).unwrap();
    let _ = (&b).read_to_end(&mut got);
    assert_eq!(
        (by_writev, by_send),
        (3, 3),
        "3 bytes offered after {IOV_MAX} empty slices; the peer got {got:?}"
    );
}
