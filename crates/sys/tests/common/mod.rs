//! Helpers shared by duo-sys's tests.
#![allow(dead_code)]

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;

/// Sends `data` on `sock` with `fds` attached (`SCM_RIGHTS`), as a peer would.
pub(crate) fn send_with_fds(sock: &UnixDatagram, data: &[u8], fds: &[RawFd]) {
    let payload = std::mem::size_of_val(fds);
    // SAFETY: `CMSG_SPACE` is a pure computation on a length.
    let space = unsafe { libc::CMSG_SPACE(payload as libc::c_uint) } as usize;
    // u64 words: aligned for a `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // SAFETY: all-zero is a valid `msghdr` (no name, no control, no flags).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer is `space` bytes, 8-aligned, so `CMSG_FIRSTHDR` returns a
    // header within it with room for `payload` bytes of data after it; `fds` is copied
    // unaligned; `sendmsg` only reads the buffers, alive for the call.
    let sent = unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(payload as libc::c_uint) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), payload);
        libc::sendmsg(sock.as_raw_fd(), &msg, 0)
    };
    assert_eq!(
        sent,
        data.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
}
