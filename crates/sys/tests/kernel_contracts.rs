//! Kernel contracts of duo-sys's wrappers, checked against the real kernel by a review
//! helper (each bug's test failed before its fix; the others are guards of behaviour
//! found fine).
//!
//! 1. `recv_mmsg` on an `AF_UNIX` datagram socket kept the descriptors a peer attached
//!    (`SCM_RIGHTS`): it hands the kernel a control buffer (for `IP_PKTINFO`), so the
//!    kernel installed them in this process, not even close-on-exec, and nothing closed
//!    them: up to 28 leaked descriptors per datagram, until `EMFILE`.

mod common;

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::send_with_fds;
use duo_sys::{pipe, recv_mmsg, MmsgScratch, RecvMeta};

/// Whether every write end of the pipe whose read end is `r` is closed: the read sees end
/// of stream (the pipe is non-blocking: a live write end anywhere reads `WouldBlock`).
fn all_writers_closed(r: &OwnedFd) -> bool {
    let mut f = std::fs::File::from(r.try_clone().unwrap());
    match f.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        other => panic!("reading the pipe: {other:?}"),
    }
}

/// Whether `cond` holds within 2 s (polled).
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A peer of an `AF_UNIX` datagram socket (which `recv_mmsg` serves: it takes any
/// datagram socket) attaches descriptors to its datagrams. `recv_mmsg` hands the kernel a
/// control buffer (for `IP_PKTINFO`), so the kernel installs those descriptors in this
/// process: nothing may keep them, or every datagram leaks some (until `EMFILE`), and
/// they were not even close-on-exec, so every child process inherited them. Also with
/// more descriptors than the control buffer holds (`MSG_CTRUNC`: the kernel installs
/// those that fit) and with datagrams that carry none, in the same batch.
#[test]
fn recv_mmsg_does_not_keep_descriptors_a_peer_passes() {
    let (ours, peer) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let (r, w) = pipe().unwrap();
    let many: Vec<RawFd> = vec![w.as_raw_fd(); 64];
    send_with_fds(&peer, b"one", &[w.as_raw_fd()]);
    send_with_fds(&peer, b"two", &[w.as_raw_fd(), w.as_raw_fd()]);
    peer.send(b"three").unwrap();
    send_with_fds(&peer, b"four", &many);
    drop(w);
    // The datagrams in the queue hold the write end.
    assert!(!all_writers_closed(&r));

    let mut scratch = MmsgScratch::new(8);
    let mut buf = vec![0u8; 8 * 16];
    let mut meta = [RecvMeta::default(); 8];
    // An AF_UNIX send queues the datagram before it returns: all four are there.
    let n = recv_mmsg(ours.as_fd(), &mut scratch, &mut buf, 16, &mut meta).unwrap();
    assert_eq!(n, 4);
    let got: Vec<&[u8]> = (0..n).map(|i| &buf[i * 16..i * 16 + meta[i].len]).collect();
    assert_eq!(got, [&b"one"[..], b"two", b"three", b"four"]);
    // Closed at once; a bounded poll only because a test of this file that starts a
    // child may hold a copy between its `fork` and its `exec`.
    assert!(
        eventually(|| all_writers_closed(&r)),
        "recv_mmsg kept descriptors the peer passed"
    );
}

/// Found fine, kept as a guard: the other receive paths give the kernel no control
/// buffer, and the kernel then closes the descriptors a peer attached itself (and sets
/// `MSG_CTRUNC`): `recv_from` on a datagram socket, `recv_vectored` (one buffer: `recv`;
/// several: `readv`) on a stream one, as duo-net's Unix-domain connections read.
#[test]
fn the_other_receive_paths_do_not_keep_passed_descriptors() {
    use std::io::IoSliceMut;
    let (r, w) = pipe().unwrap();
    let (ours, peer) = UnixDatagram::pair().unwrap();
    send_with_fds(&peer, b"dgram", &[w.as_raw_fd(), w.as_raw_fd()]);
    let (s_ours, s_peer) = std::os::unix::net::UnixStream::pair().unwrap();
    for data in [&b"one"[..], b"two"] {
        let payload = std::mem::size_of::<RawFd>();
        // SAFETY: as in `send_with_fds`, over the stream socket.
        let sent = unsafe {
            let space = libc::CMSG_SPACE(payload as libc::c_uint) as usize;
            let mut control = vec![0u64; space.div_ceil(8)];
            let mut iov = libc::iovec {
                iov_base: data.as_ptr().cast_mut().cast(),
                iov_len: data.len(),
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload as libc::c_uint) as _;
            let fd = w.as_raw_fd();
            std::ptr::copy_nonoverlapping(
                (&fd as *const RawFd).cast::<u8>(),
                libc::CMSG_DATA(c),
                payload,
            );
            libc::sendmsg(s_peer.as_raw_fd(), &msg, 0)
        };
        assert_eq!(sent, 3);
    }
    drop(w);
    let mut buf = [0u8; 16];
    let m = duo_sys::recv_from(ours.as_fd(), &mut buf).unwrap();
    assert_eq!(&buf[..m.len], b"dgram");
    // A stream read stops at a message boundary that carries descriptors: one each.
    let mut a = [0u8; 8];
    let n = duo_sys::recv_vectored(s_ours.as_fd(), &mut [IoSliceMut::new(&mut a)]).unwrap();
    assert_eq!(&a[..n], b"one");
    let (mut b1, mut b2) = ([0u8; 2], [0u8; 8]);
    let n = duo_sys::recv_vectored(
        s_ours.as_fd(),
        &mut [IoSliceMut::new(&mut b1), IoSliceMut::new(&mut b2)],
    )
    .unwrap();
    assert_eq!(n, 3);
    assert!(
        eventually(|| all_writers_closed(&r)),
        "a descriptor was kept"
    );
}

/// Found fine, kept as a guard: an eventfd whose counter is at its maximum
/// (`0xffff_ffff_ffff_fffe`) refuses another increment with `EAGAIN`; `notify` takes that
/// as done (the descriptor is readable anyway) and `drain` reads the whole count.
#[test]
fn a_saturated_eventfd_still_notifies_and_drains() {
    let efd = duo_sys::EventFd::new().unwrap();
    let max = u64::MAX - 1;
    // SAFETY: an 8-byte write of a `u64` to an eventfd this test owns.
    let n = unsafe {
        libc::write(
            efd.as_raw_fd(),
            (&max as *const u64).cast::<libc::c_void>(),
            8,
        )
    };
    assert_eq!(n, 8);
    efd.notify().unwrap();
    assert_eq!(efd.drain().unwrap(), max);
    assert_eq!(efd.drain().unwrap(), 0);
    efd.notify().unwrap();
    assert_eq!(efd.drain().unwrap(), 1);
}
