//! Datagram system calls: `recvmmsg`/`sendmmsg` (many datagrams per call) and their
//! one-datagram twins `recvfrom`/`sendto`, over caller-provided buffers.
//!
//! Socket set-up (`bind`, `SO_RCVBUF`, `SO_SNDBUF`, `IPV6_V6ONLY`, `SO_REUSEPORT`,
//! `connect`) is [`socket2`]'s; this module holds only the calls it lacks.
//!
//! Batching saves entries into the kernel, not the kernel's work per datagram, which
//! dominates (`benches/benches/udp.rs`: on loopback a `sendmmsg` of 32 costs a few per
//! cent less per datagram than 32 `sendto`, and a `recvmmsg` of 32 about what 32
//! `recvfrom` cost); what a batch saves its caller is the work around each call (one
//! readiness event, one buffer, one dispatch for many datagrams). For one datagram the
//! plain call is cheaper (no `mmsghdr` to fill and copy in: `sendto` about 12 % less
//! than a `sendmmsg` of one), which is why [`send_to`] and [`recv_from`] exist too.
//!
//! Truncation: a datagram larger than its buffer is cut by the kernel. Both receive
//! calls report it ([`RecvMeta::truncated`]): `recvmmsg` from `MSG_TRUNC` in the message's
//! `msg_flags`, `recvfrom` by asking for the real length with the `MSG_TRUNC` flag.
//!
//! Wildcard addresses: a socket bound to `0.0.0.0` or `::` has no address of its own to
//! send from, so the kernel picks one per destination, which need not be the address a
//! peer sent to (a peer that sent to 127.0.0.2 gets the reply from 127.0.0.1, and a
//! connected peer drops it). [`set_recv_pktinfo`] makes `recv_mmsg` report the address
//! each datagram came in on ([`RecvMeta::local`]), and [`send_mmsg_from`] sends from it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use socket2::SockAddr;

use crate::{cvt, cvt_size};

/// The most datagrams one [`recv_mmsg`] or [`send_mmsg`] call handles (Linux caps `vlen`
/// at `UIO_MAXIOV`, 1024; more than this gains nothing measurable).
pub const MAX_BATCH: usize = 1024;

/// What one received datagram was: its length, its source and whether it was cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes written into the buffer (at most the buffer's length).
    pub len: usize,
    /// The sender (`None` only for an address family other than IPv4 and IPv6).
    pub from: Option<SocketAddr>,
    /// The datagram was larger than the buffer and its tail was discarded by the kernel.
    pub truncated: bool,
    /// The local address the datagram came in on, to reply from ([`send_mmsg_from`]):
    /// reported by [`recv_mmsg`] on a socket set up with [`set_recv_pktinfo`], `None`
    /// otherwise. On an IPv6 socket an IPv4 datagram's is IPv4-mapped, as its source is.
    /// A broadcast or multicast destination gives the receiving interface's address.
    pub local: Option<IpAddr>,
}

/// Room for the control messages of one datagram: an `IP_PKTINFO` and an `IPV6_PKTINFO`
/// one (a dual-stack socket set up by [`set_recv_pktinfo`] gets both for an IPv4
/// datagram), aligned as a `cmsghdr` must be.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Cmsgs([u8; 128]);

/// The message headers, iovecs and address storage of one batch call, kept between calls
/// so that a batch allocates nothing.
///
/// Its capacity (fixed at creation, at most [`MAX_BATCH`]) bounds how many datagrams one
/// [`recv_mmsg`] or [`send_mmsg`] handles. The pointers inside are written at the start of
/// each call and only used during it.
pub struct MmsgScratch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<Cmsgs>,
}

// SAFETY: the raw pointers inside `hdrs` and `iovs` point into buffers borrowed for the
// duration of one call (and into `addrs`, owned here); they are rewritten at the start of
// every call and never read between calls, so moving the scratch to another thread cannot
// make anything reachable from two threads.
unsafe impl Send for MmsgScratch {}

impl std::fmt::Debug for MmsgScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmsgScratch")
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl MmsgScratch {
    /// Room for `capacity` datagrams per call (clamped to `1..=MAX_BATCH`).
    pub fn new(capacity: usize) -> MmsgScratch {
        let capacity = capacity.clamp(1, MAX_BATCH);
        // SAFETY: `mmsghdr`, `iovec` and `sockaddr_storage` are plain C structs for which
        // all-zero bytes are a valid value (null pointers, zero lengths, family 0).
        let (hdr, iov, addr) = unsafe {
            (
                std::mem::zeroed::<libc::mmsghdr>(),
                std::mem::zeroed::<libc::iovec>(),
                std::mem::zeroed::<libc::sockaddr_storage>(),
            )
        };
        MmsgScratch {
            hdrs: vec![hdr; capacity],
            iovs: vec![iov; capacity],
            addrs: vec![addr; capacity],
            cmsgs: vec![Cmsgs([0; 128]); capacity],
        }
    }

    /// How many datagrams one call handles at most.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }
}

/// Receives up to `meta.len()` datagrams with one `recvmmsg` call.
///
/// `buf` is cut into slots of `slot` bytes: datagram `i` lands at
/// `buf[i * slot..i * slot + meta[i].len]`. At most `min(buf.len() / slot, meta.len(),
/// scratch.capacity())` datagrams are received. Returns how many arrived; when none is
/// waiting the error kind is [`io::ErrorKind::WouldBlock`] (the socket is non-blocking);
/// a blocking socket waits for the first datagram only, and takes what else is waiting.
/// A pending socket error (an ICMP "port unreachable" on a connected socket:
/// `ECONNREFUSED`) is returned, and cleared, by the call that meets it. `EINTR` is retried.
/// On an `AF_UNIX` datagram socket, descriptors a peer attaches (`SCM_RIGHTS`) are closed,
/// and so is the pidfd the kernel attaches under `SO_PASSPIDFD` (`SCM_PIDFD`).
pub fn recv_mmsg(
    fd: BorrowedFd<'_>,
    scratch: &mut MmsgScratch,
    buf: &mut [u8],
    slot: usize,
    meta: &mut [RecvMeta],
) -> io::Result<usize> {
    if slot == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "recvmmsg: slot size 0",
        ));
    }
    let n = (buf.len() / slot).min(meta.len()).min(scratch.capacity());
    if n == 0 {
        return Ok(0);
    }
    let base = buf.as_mut_ptr();
    // Raw pointers to the iovecs and addresses are derived once from each vector (never
    // from a reference to one element, which a later borrow of the vector would
    // invalidate under Stacked Borrows) and only written through until the call.
    let iovs = scratch.iovs.as_mut_ptr();
    let addrs = scratch.addrs.as_mut_ptr();
    let cmsgs = scratch.cmsgs.as_mut_ptr();
    for i in 0..n {
        // SAFETY: `i < n <= scratch.capacity()`, the length of `iovs`, `addrs` and
        // `cmsgs`, so the offsets stay inside their vectors; `i * slot + slot <= n * slot
        // <= buf.len()`, so the payload offset stays inside `buf`. The writes go through
        // pointers derived from the vectors' `as_mut_ptr`, which nothing else borrows
        // meanwhile.
        let (iov, addr, cmsg) = unsafe {
            let iov = iovs.add(i);
            iov.write(libc::iovec {
                iov_base: base.add(i * slot).cast::<libc::c_void>(),
                iov_len: slot,
            });
            let addr = addrs.add(i);
            // Family 0 (AF_UNSPEC) unless the kernel writes an address: an address of
            // length 0 then reads as none, not as the previous datagram's source.
            (*addr).ss_family = 0;
            (iov, addr, cmsgs.add(i))
        };
        let hdr = &mut scratch.hdrs[i].msg_hdr;
        hdr.msg_name = addr.cast();
        hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdr.msg_iov = iov;
        hdr.msg_iovlen = 1;
        // The kernel writes control messages only for the options asked for (none unless
        // `set_recv_pktinfo`) and for descriptors an `AF_UNIX` peer attaches (closed in
        // `local_closing_fds`), and sets the length to what it wrote.
        hdr.msg_control = cmsg.cast();
        hdr.msg_controllen = std::mem::size_of::<Cmsgs>();
        hdr.msg_flags = 0;
        scratch.hdrs[i].msg_len = 0;
    }
    let got = loop {
        // SAFETY: the first `n` headers each point at one iovec covering a distinct
        // `slot`-byte part of `buf` (exclusively borrowed for the call), at one
        // `sockaddr_storage` of `scratch` whose size is in `msg_namelen` and at one
        // `Cmsgs` of `scratch` whose size is in `msg_controllen`; the kernel writes at
        // most those bytes, the message lengths and flags; `fd` is live; a null timeout
        // means none.
        let ret = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                scratch.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                // Descriptors an `AF_UNIX` peer passes are closed below; until then
                // they must not leak into a child that another thread starts. On a
                // blocking socket, return once one datagram is in instead of waiting to
                // fill every slot (no effect on a non-blocking one).
                libc::MSG_CMSG_CLOEXEC | libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        match cvt(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other? as usize,
        }
    };
    for (i, m) in meta.iter_mut().enumerate().take(got) {
        let hdr = &scratch.hdrs[i];
        let len = hdr.msg_len as usize;
        let namelen = hdr.msg_hdr.msg_namelen;
        let from = if namelen == 0 {
            // No address (possible on an AF_UNIX socket): none, whatever the storage holds.
            None
        } else {
            // SAFETY: the storage is a fully initialised `sockaddr_storage` (zeroed at
            // creation, written only with whole addresses since), so any read of it is of
            // initialised bytes. `SockAddr::as_socket` dispatches on `ss_family` and reads
            // the `sockaddr_in`/`sockaddr_in6` of that family, not bounded by `namelen`:
            // the family was reset to 0 before the call and the kernel, when it writes an
            // address of `namelen` (> 0, at most the storage's size) bytes, writes the
            // family first, so a family of 4 or 6 is this datagram's own address.
            let addr = unsafe { SockAddr::new(scratch.addrs[i], namelen) };
            addr.as_socket()
        };
        let local = if hdr.msg_hdr.msg_controllen == 0 {
            None
        } else {
            // SAFETY: the header's control pointer and length describe the `Cmsgs` of
            // this datagram, in which the kernel wrote `msg_controllen` bytes of whole
            // control messages during the call (read once: this is the only walk).
            unsafe { local_closing_fds(&hdr.msg_hdr, from) }
        };
        *m = RecvMeta {
            len: len.min(slot),
            from,
            truncated: hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            local,
        };
    }
    Ok(got)
}

/// Sends the datagrams of `msgs` (payload, destination; `None` on a connected socket)
/// with one `sendmmsg(MSG_NOSIGNAL)` call, at most `scratch.capacity()` of them.
///
/// Returns how many the kernel took, in order (fewer than offered when the send buffer
/// filled or a later datagram met an error: the error comes back from the next call),
/// at least 1 when `msgs` is not empty: a call that takes none is an error (the first
/// datagram's, or [`io::ErrorKind::Other`] if the kernel returned 0), so a caller that
/// drops the first datagram on error always progresses. A full send buffer before the
/// first datagram is [`io::ErrorKind::WouldBlock`].
/// `EINTR` is retried.
pub fn send_mmsg<'a>(
    fd: BorrowedFd<'_>,
    scratch: &mut MmsgScratch,
    msgs: impl IntoIterator<Item = (&'a [u8], Option<SocketAddr>)>,
) -> io::Result<usize> {
    send_mmsg_from(
        fd,
        scratch,
        msgs.into_iter().map(|(data, to)| (data, to, None)),
    )
}

/// As [`send_mmsg`], each datagram sent from the local address given with it, if any
/// (an `IP_PKTINFO`, or `IPV6_PKTINFO`, control message): a [`RecvMeta::local`], so that
/// a reply leaves from the address its request came in on. The address must be the
/// socket's family's (IPv4-mapped on an IPv6 socket, for an IPv4 peer) and one of the
/// host's, or that datagram fails (`EINVAL`).
pub fn send_mmsg_from<'a>(
    fd: BorrowedFd<'_>,
    scratch: &mut MmsgScratch,
    msgs: impl IntoIterator<Item = (&'a [u8], Option<SocketAddr>, Option<IpAddr>)>,
) -> io::Result<usize> {
    let mut n = 0;
    // As in `recv_mmsg`: element pointers derived once from each vector's `as_mut_ptr`.
    let iovs = scratch.iovs.as_mut_ptr();
    let addrs = scratch.addrs.as_mut_ptr();
    let cmsgs = scratch.cmsgs.as_mut_ptr();
    for (data, to, src) in msgs.into_iter().take(scratch.capacity()) {
        // SAFETY: `n < scratch.capacity()` (the `take` above), the length of `iovs`,
        // `addrs` and `cmsgs`: the offsets stay inside the vectors, written only through
        // these pointers until the call.
        let (iov, addr_slot, cmsg) = unsafe { (iovs.add(n), addrs.add(n), cmsgs.add(n)) };
        // SAFETY: as above; `iov` points at a valid `iovec` of `scratch`.
        unsafe {
            iov.write(libc::iovec {
                iov_base: data.as_ptr().cast_mut().cast::<libc::c_void>(),
                iov_len: data.len(),
            });
        }
        let hdr = &mut scratch.hdrs[n].msg_hdr;
        match to {
            Some(addr) => {
                let addr = SockAddr::from(addr);
                hdr.msg_namelen = addr.len();
                // SAFETY: `addr_slot` points at a valid `sockaddr_storage` of `scratch`.
                unsafe { addr_slot.write(addr.as_storage()) };
                hdr.msg_name = addr_slot.cast();
            }
            None => {
                hdr.msg_name = std::ptr::null_mut();
                hdr.msg_namelen = 0;
            }
        }
        hdr.msg_iov = iov;
        hdr.msg_iovlen = 1;
        match src {
            Some(ip) => {
                // SAFETY: `cmsg` points at this datagram's `Cmsgs` of `scratch`, written
                // only through it until the call.
                let len = unsafe { write_pktinfo(cmsg, ip) };
                hdr.msg_control = cmsg.cast();
                hdr.msg_controllen = len;
            }
            None => {
                hdr.msg_control = std::ptr::null_mut();
                hdr.msg_controllen = 0;
            }
        }
        hdr.msg_flags = 0;
        n += 1;
    }
    if n == 0 {
        return Ok(0);
    }
    loop {
        // SAFETY: the first `n` headers each point at one iovec over a payload slice
        // borrowed (with lifetime `'a`, so live) for the call, at an address in
        // `scratch` of the length given, or at none, and at a control message in
        // `scratch` of the length given, or at none; `sendmmsg` only reads the payloads
        // (the `cast_mut` above never leads to a write) and writes `msg_len`; `fd` is live.
        let ret = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                scratch.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_NOSIGNAL,
            )
        };
        match cvt(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Not expected from Linux (it reports the first datagram's error instead), but
            // a caller looping until its queue is empty would spin on it: an error, so that
            // the caller drops the first datagram and goes on.
            Ok(0) => {
                return Err(io::Error::other(format!(
                    "sendmmsg took none of {n} datagrams"
                )))
            }
            other => return other.map(|sent| sent as usize),
        }
    }
}

/// Asks the kernel to report the local address each datagram came in on
/// ([`RecvMeta::local`], from [`recv_mmsg`]): `IP_PKTINFO`, and on an IPv6 socket (`v6`)
/// `IPV6_RECVPKTINFO` as well (an IPv4 datagram on a dual-stack socket then brings both;
/// `IP_PKTINFO`'s "specific destination", a local unicast address even for a broadcast,
/// is the one reported).
pub fn set_recv_pktinfo(fd: BorrowedFd<'_>, v6: bool) -> io::Result<()> {
    let on: libc::c_int = 1;
    let both = [
        (libc::IPPROTO_IP, libc::IP_PKTINFO, "setsockopt(IP_PKTINFO)"),
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_RECVPKTINFO,
            "setsockopt(IPV6_RECVPKTINFO)",
        ),
    ];
    for &(level, name, what) in &both[..1 + usize::from(v6)] {
        // SAFETY: the option value is one `int`, passed by pointer with its exact size;
        // the kernel only reads it.
        cvt(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&on as *const libc::c_int).cast::<libc::c_void>(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })
        .map_err(crate::context(what))?;
    }
    Ok(())
}

/// `SCM_PIDFD` (`linux/socket.h`, Linux 6.5, the same on every architecture), which the
/// libc crate does not define: a control message carrying one descriptor, a pidfd of the
/// sender. No other control message the kernel writes at `SOL_SOCKET` has this type
/// (`SCM_RIGHTS` 1, `SCM_CREDENTIALS` 2, `SCM_SECURITY` 3; timestamps and the like take
/// their `SO_*` numbers, none of them 4).
const SCM_PIDFD: libc::c_int = 0x04;

/// The local address in the `IP_PKTINFO`/`IPV6_PKTINFO` control messages of a received
/// datagram whose source is `from` (see [`RecvMeta::local`]): `IP_PKTINFO`'s specific
/// destination if there is one (IPv4-mapped when the source is IPv6), else
/// `IPV6_PKTINFO`'s address unless it is multicast (no reply can leave from that).
///
/// Descriptors passed with the datagram (`SCM_RIGHTS`, from an `AF_UNIX` peer) are
/// closed: the kernel installed them in this process, and nothing here takes them (each
/// datagram would leak some, until `EMFILE`). So is the sender's pidfd that an `AF_UNIX`
/// socket with `SO_PASSPIDFD` receives (`SCM_PIDFD`, one descriptor). Under `MSG_CTRUNC`
/// the kernel installs only those whose numbers fit in the control buffer (and closes the
/// rest itself); the message's length covers exactly those.
///
/// # Safety
///
/// `hdr.msg_control` points at `hdr.msg_controllen` bytes of whole control messages
/// written by the kernel during the call that just returned, aligned for a `cmsghdr`.
unsafe fn local_closing_fds(hdr: &libc::msghdr, from: Option<SocketAddr>) -> Option<IpAddr> {
    let (mut v4, mut v6) = (None, None);
    // SAFETY: `CMSG_FIRSTHDR`/`CMSG_NXTHDR` only return headers lying whole
    // within the control buffer the caller vouches for; each payload is read only when
    // the header's length covers it (for `SCM_RIGHTS` and `SCM_PIDFD`, as many `int`s as
    // it covers within the buffer), unaligned (`CMSG_DATA` promises no alignment). An
    // `SCM_RIGHTS` or `SCM_PIDFD` descriptor is one the kernel has just installed (the
    // caller's word): nothing else in the process owns it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            let (level, kind, len) = ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len as usize);
            let fits = |size: usize| len >= libc::CMSG_LEN(size as libc::c_uint) as usize;
            if level == libc::IPPROTO_IP
                && kind == libc::IP_PKTINFO
                && fits(std::mem::size_of::<libc::in_pktinfo>())
            {
                let info: libc::in_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                v4 = Some(Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr)));
            } else if level == libc::IPPROTO_IPV6
                && kind == libc::IPV6_PKTINFO
                && fits(std::mem::size_of::<libc::in6_pktinfo>())
            {
                let info: libc::in6_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                v6 = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr));
            } else if level == libc::SOL_SOCKET && (kind == libc::SCM_RIGHTS || kind == SCM_PIDFD) {
                let fds = libc::CMSG_DATA(c).cast::<libc::c_int>();
                let end = hdr.msg_control as usize + hdr.msg_controllen;
                let count = (len.saturating_sub(libc::CMSG_LEN(0) as usize))
                    .min(end.saturating_sub(fds as usize))
                    / 4;
                for i in 0..count {
                    // A fresh descriptor the kernel installed for this call: this
                    // process's only reference to it, owned here and closed.
                    drop(OwnedFd::from_raw_fd(fds.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    let local = match (v4, v6) {
        (Some(a), _) if matches!(from, Some(SocketAddr::V6(_))) => IpAddr::V6(a.to_ipv6_mapped()),
        (Some(a), _) => IpAddr::V4(a),
        (None, Some(a)) if !a.is_multicast() => IpAddr::V6(a),
        _ => return None,
    };
    (!local.is_unspecified()).then_some(local)
}

/// Writes into `cmsg` the control message that sends a datagram from `ip` (`IP_PKTINFO`
/// for IPv4, `IPV6_PKTINFO` for IPv6, any interface) and returns its space.
///
/// # Safety
///
/// `cmsg` points at a `Cmsgs` valid for writes.
unsafe fn write_pktinfo(cmsg: *mut Cmsgs, ip: IpAddr) -> usize {
    let (level, kind, size) = match ip {
        IpAddr::V4(_) => (
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            std::mem::size_of::<libc::in_pktinfo>(),
        ),
        IpAddr::V6(_) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_PKTINFO,
            std::mem::size_of::<libc::in6_pktinfo>(),
        ),
    };
    // SAFETY: `cmsg` is valid for writes (the caller's word) and aligned for a `cmsghdr`
    // (`Cmsgs` is 8-aligned); one `cmsghdr` and its payload, `CMSG_SPACE` of at most the
    // size of an `in6_pktinfo` (40 bytes), fit in its 128 bytes. The header is zeroed first
    // (any padding of `cmsghdr`), then written field by field; the payload unaligned.
    unsafe {
        cmsg.write(Cmsgs([0; 128]));
        let c = cmsg.cast::<libc::cmsghdr>();
        (*c).cmsg_len = libc::CMSG_LEN(size as libc::c_uint) as _;
        (*c).cmsg_level = level;
        (*c).cmsg_type = kind;
        let data = libc::CMSG_DATA(c);
        match ip {
            IpAddr::V4(a) => data
                .cast::<libc::in_pktinfo>()
                .write_unaligned(libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(a).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                }),
            IpAddr::V6(a) => data
                .cast::<libc::in6_pktinfo>()
                .write_unaligned(libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: a.octets(),
                    },
                    ipi6_ifindex: 0,
                }),
        }
        libc::CMSG_SPACE(size as libc::c_uint) as usize
    }
}

/// Receives one datagram with `recvfrom(MSG_TRUNC)` into `buf`.
///
/// [`RecvMeta::len`] is the bytes written (at most `buf.len()`); a longer datagram is
/// reported [`truncated`](RecvMeta::truncated). [`RecvMeta::local`] is not reported (use
/// [`recv_mmsg`] for that). Errors as [`recv_mmsg`].
pub fn recv_from(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<RecvMeta> {
    loop {
        let mut full = 0usize;
        // SAFETY: `try_init` hands us a zeroed `sockaddr_storage` and its length; the
        // kernel writes at most that many address bytes and at most `buf.len()` payload
        // bytes into `buf`, exclusively borrowed for the call; `fd` is live.
        let res = unsafe {
            SockAddr::try_init(|storage, len| {
                full = cvt_size(libc::recvfrom(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().cast::<libc::c_void>(),
                    buf.len(),
                    libc::MSG_TRUNC,
                    storage.cast::<libc::sockaddr>(),
                    len,
                ))?;
                Ok(())
            })
        };
        return match res {
            Ok(((), from)) => Ok(RecvMeta {
                len: full.min(buf.len()),
                from: from.as_socket(),
                truncated: full > buf.len(),
                local: None,
            }),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
    }
}

/// Sends one datagram with `sendto(MSG_NOSIGNAL)` (`send` when `to` is `None`, on a
/// connected socket). Returns the bytes sent (all of them: a datagram is never cut on
/// send; one too large fails with `EMSGSIZE`). Errors as [`send_mmsg`].
pub fn send_to(fd: BorrowedFd<'_>, data: &[u8], to: Option<SocketAddr>) -> io::Result<usize> {
    let addr = to.map(SockAddr::from);
    let (name, len) = match &addr {
        Some(a) => (a.as_ptr(), a.len()),
        None => (std::ptr::null(), 0),
    };
    loop {
        // SAFETY: `data` is a live slice the kernel only reads; `name` is null or points at
        // a `SockAddr` (alive in `addr` for the call) of `len` bytes; `fd` is live.
        let ret = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                data.as_ptr().cast::<libc::c_void>(),
                data.len(),
                libc::MSG_NOSIGNAL,
                name,
                len,
            )
        };
        match cvt_size(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;
    use std::time::Duration;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (a, b)
    }

    /// Waits (bounded) until `sock` has a datagram queued.
    fn wait_readable(sock: &UdpSocket) {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut one = [0u8; 1];
        sock.peek_from(&mut one).unwrap();
    }

    /// A datagram that comes without an address (here from the unnamed end of an
    /// `AF_UNIX` socket pair: `msg_namelen` 0) has no source, not the source a previous
    /// call left in the same scratch's address storage.
    #[test]
    fn recv_mmsg_reports_no_source_for_an_address_of_length_0() {
        let (a, b) = pair();
        a.send_to(b"inet", b.local_addr().unwrap()).unwrap();
        let mut scratch = MmsgScratch::new(1);
        let mut buf = [0u8; 64];
        let mut meta = [RecvMeta::default(); 1];
        wait_readable(&b);
        assert_eq!(
            recv_mmsg(b.as_fd(), &mut scratch, &mut buf, 64, &mut meta).unwrap(),
            1
        );
        assert_eq!(meta[0].from, Some(a.local_addr().unwrap()));

        let (u, v) = std::os::unix::net::UnixDatagram::pair().unwrap();
        // An AF_UNIX send puts the datagram on the peer's receive queue before it
        // returns: no wait needed.
        u.send(b"unix").unwrap();
        v.set_nonblocking(true).unwrap();
        assert_eq!(
            recv_mmsg(v.as_fd(), &mut scratch, &mut buf, 64, &mut meta).unwrap(),
            1
        );
        assert_eq!(&buf[..meta[0].len], b"unix");
        assert_eq!(meta[0].from, None, "a stale source: {:?}", meta[0].from);
    }

    #[test]
    fn recv_mmsg_takes_a_batch_with_sources_and_lengths() {
        let (a, b) = pair();
        for i in 0..5u8 {
            a.send_to(&vec![i; 10 + usize::from(i)], b.local_addr().unwrap())
                .unwrap();
        }
        wait_readable(&b);
        b.set_nonblocking(true).unwrap();
        let mut scratch = MmsgScratch::new(8);
        let mut buf = vec![0u8; 8 * 64];
        let mut meta = [RecvMeta::default(); 8];
        let mut got = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while got < 5 && std::time::Instant::now() < deadline {
            match recv_mmsg(b.as_fd(), &mut scratch, &mut buf, 64, &mut meta) {
                Ok(n) => {
                    for (i, m) in meta[..n].iter().enumerate() {
                        let k = (got + i) as u8;
                        assert_eq!(m.len, 10 + usize::from(k));
                        assert_eq!(m.from, Some(a.local_addr().unwrap()));
                        assert!(!m.truncated);
                        assert!(buf[i * 64..i * 64 + m.len].iter().all(|&x| x == k));
                    }
                    got += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, 5);
        let err = recv_mmsg(b.as_fd(), &mut scratch, &mut buf, 64, &mut meta).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn truncation_is_reported_by_both_receive_calls() {
        let (a, b) = pair();
        let to = b.local_addr().unwrap();
        a.send_to(&[7u8; 100], to).unwrap();
        a.send_to(&[8u8; 100], to).unwrap();
        wait_readable(&b);
        let mut scratch = MmsgScratch::new(1);
        let mut buf = [0u8; 16];
        let mut meta = [RecvMeta::default(); 1];
        assert_eq!(
            recv_mmsg(b.as_fd(), &mut scratch, &mut buf, 16, &mut meta).unwrap(),
            1
        );
        assert_eq!((meta[0].len, meta[0].truncated), (16, true));
        wait_readable(&b);
        let m = recv_from(b.as_fd(), &mut buf).unwrap();
        assert_eq!((m.len, m.truncated), (16, true));
        assert_eq!(m.from, Some(a.local_addr().unwrap()));
        assert_eq!(buf, [8u8; 16]);
    }

    #[test]
    fn send_mmsg_and_send_to_deliver_to_each_destination() {
        let (a, b) = pair();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut scratch = MmsgScratch::new(4);
        let (tb, tc) = (b.local_addr().unwrap(), c.local_addr().unwrap());
        let msgs: [(&[u8], Option<SocketAddr>); 3] =
            [(b"one", Some(tb)), (b"two", Some(tc)), (b"three", Some(tb))];
        assert_eq!(send_mmsg(a.as_fd(), &mut scratch, msgs).unwrap(), 3);
        assert_eq!(send_to(a.as_fd(), b"four", Some(tc)).unwrap(), 4);
        let mut buf = [0u8; 16];
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"one");
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"three");
        let n = c.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"two");
        let n = c.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"four");
    }

    #[test]
    fn connected_socket_sends_without_an_address_and_sees_icmp_refusal() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let gone = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = gone.local_addr().unwrap();
        drop(gone);
        a.connect(to).unwrap();
        send_to(a.as_fd(), b"x", None).unwrap();
        // The ICMP error arrives asynchronously: a blocking receive returns it.
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4];
        let err = recv_from(a.as_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }

    /// On a wildcard socket with `set_recv_pktinfo`, `recv_mmsg` reports the address each
    /// datagram was sent to, and `send_mmsg_from` replies from it; without it, none.
    #[test]
    fn pktinfo_reports_the_local_address_and_replies_leave_from_it() {
        let wild = UdpSocket::bind("0.0.0.0:0").unwrap();
        let port = wild.local_addr().unwrap().port();
        let (c, _) = pair();
        let to = SocketAddr::from(([127, 0, 0, 3], port));
        let mut scratch = MmsgScratch::new(2);
        let mut buf = [0u8; 64];
        let mut meta = [RecvMeta::default(); 2];
        for pktinfo in [false, true] {
            if pktinfo {
                set_recv_pktinfo(wild.as_fd(), false).unwrap();
            }
            c.send_to(b"q", to).unwrap();
            wait_readable(&wild);
            // One slot: the socket blocks, and a call for two would wait for a second.
            assert_eq!(
                recv_mmsg(wild.as_fd(), &mut scratch, &mut buf, 64, &mut meta).unwrap(),
                1
            );
            let want = pktinfo.then_some(to.ip());
            assert_eq!(
                (meta[0].local, meta[0].from),
                (want, Some(c.local_addr().unwrap()))
            );
        }
        let reply = [(&b"r"[..], meta[0].from, meta[0].local)];
        assert_eq!(
            send_mmsg_from(wild.as_fd(), &mut scratch, reply).unwrap(),
            1
        );
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (_, from) = c.recv_from(&mut buf).unwrap();
        assert_eq!(from, to);
    }

    #[test]
    fn empty_batches_and_zero_slots() {
        let (_a, b) = pair();
        let mut scratch = MmsgScratch::new(0);
        assert_eq!(scratch.capacity(), 1);
        let mut meta = [RecvMeta::default(); 1];
        assert_eq!(
            recv_mmsg(b.as_fd(), &mut scratch, &mut [], 8, &mut meta).unwrap(),
            0
        );
        assert!(recv_mmsg(b.as_fd(), &mut scratch, &mut [0; 8], 0, &mut meta).is_err());
        let none: [(&[u8], Option<SocketAddr>); 0] = [];
        assert_eq!(send_mmsg(b.as_fd(), &mut scratch, none).unwrap(), 0);
    }
}
