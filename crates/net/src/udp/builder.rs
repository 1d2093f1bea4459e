//! [`UdpBuilder`]: a UDP socket's settings, and starting it on a loop.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use duo_buffer::BufPool;
use duo_reactor::{EventLoop, Interest, LoopHandle};
use duo_sys::socket2::{Domain, Protocol, Socket, Type};
use duo_sys::{MmsgScratch, RecvMeta};

use super::looped::{OnDatagram, SendQueue, UdpCtx, UdpHandler};
use super::stats::UdpCounters;
use super::{Shared, UdpSocket};

/// Settings of a UDP socket, then [`start`](UdpBuilder::start). Made by
/// [`UdpSocket::builder`].
pub struct UdpBuilder {
    name: String,
    addr: SocketAddr,
    on_datagram: Option<OnDatagram>,
    batch: usize,
    max_datagram: usize,
    queue_limit: usize,
    recv_buffer: Option<usize>,
    send_buffer: Option<usize>,
    reuse_port: bool,
    only_v6: Option<bool>,
    connect: Option<SocketAddr>,
    pool: BufPool,
    single_recv: bool,
    /// A socket bound already ([`UdpSocket::builder_on`]): served instead of binding one.
    bound: Option<Socket>,
}

impl std::fmt::Debug for UdpBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpBuilder")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("batch", &self.batch)
            .field("max_datagram", &self.max_datagram)
            .field("queue_limit", &self.queue_limit)
            .finish_non_exhaustive()
    }
}

/// Default datagrams per `recvmmsg`/`sendmmsg` call.
pub const DEFAULT_BATCH: usize = 32;
/// Default receive slot: the largest datagram delivered whole (larger ones are counted as
/// truncated). 2 KiB covers an Ethernet MTU; with [`DEFAULT_BATCH`] a receive takes one
/// 64 KiB pooled block.
pub const DEFAULT_MAX_DATAGRAM: usize = 2048;
/// Default limit of the send queue, in bytes (payloads plus a small cost per datagram).
pub const DEFAULT_SEND_QUEUE: usize = 1024 * 1024;

impl UdpBuilder {
    pub(super) fn new(name: &str, addr: SocketAddr) -> UdpBuilder {
        UdpBuilder {
            name: name.to_owned(),
            addr,
            on_datagram: None,
            batch: DEFAULT_BATCH,
            max_datagram: DEFAULT_MAX_DATAGRAM,
            queue_limit: DEFAULT_SEND_QUEUE,
            recv_buffer: None,
            send_buffer: None,
            reuse_port: false,
            only_v6: None,
            connect: None,
            pool: BufPool::global(),
            single_recv: false,
            bound: None,
        }
    }

    /// Settings for a socket bound already, `socket`, at its address.
    pub(super) fn on(name: &str, socket: std::net::UdpSocket) -> io::Result<UdpBuilder> {
        let addr = socket.local_addr()?;
        let mut builder = UdpBuilder::new(name, addr);
        builder.bound = Some(Socket::from(OwnedFd::from(socket)));
        Ok(builder)
    }

    /// The callback for each datagram received whole: the context (replies, the handle),
    /// the payload (borrowed from a pooled receive buffer for the call) and its source.
    /// Runs on the socket's loop. Without one, datagrams are counted and dropped.
    pub fn on_datagram(
        mut self,
        f: impl Fn(&mut UdpCtx<'_>, &[u8], SocketAddr) + Send + Sync + 'static,
    ) -> UdpBuilder {
        self.on_datagram = Some(Arc::new(f));
        self
    }

    /// Datagrams received per `recvmmsg` and sent per `sendmmsg` (default
    /// [`DEFAULT_BATCH`], clamped to `1..=1024`, and to what one pooled block of
    /// [`MAX_BLOCK`](duo_buffer::MAX_BLOCK) bytes holds of [`max_datagram`](UdpBuilder::max_datagram)
    /// slots).
    pub fn batch(mut self, n: usize) -> UdpBuilder {
        self.batch = n.clamp(1, duo_sys::udp::MAX_BATCH);
        self
    }

    /// The largest datagram delivered whole (default [`DEFAULT_MAX_DATAGRAM`], clamped to
    /// `1..=`[`MAX_PAYLOAD`](super::MAX_PAYLOAD), 65 527). A larger one is cut by the kernel, counted in
    /// [`UdpStats::truncated`](super::UdpStats::truncated), logged (rate-limited) and not
    /// delivered.
    pub fn max_datagram(mut self, bytes: usize) -> UdpBuilder {
        self.max_datagram = bytes.clamp(1, super::MAX_PAYLOAD);
        self
    }

    /// Receives with one `recvfrom` per datagram (up to [`batch`](UdpBuilder::batch) in a
    /// row) instead of one `recvmmsg` per batch: only for measuring what batching saves.
    /// With `batch(1)` sends are unbatched too (one `sendto` per datagram).
    pub fn unbatched_receive(mut self, yes: bool) -> UdpBuilder {
        self.single_recv = yes;
        self
    }

    /// The send queue's limit in bytes (default [`DEFAULT_SEND_QUEUE`]): datagrams wait
    /// there while the socket's send buffer is full, each counted as its payload plus a
    /// 64-byte entry cost (so that empty datagrams are bounded too); beyond it a send is refused with
    /// [`UdpSendError::QueueFull`](super::UdpSendError::QueueFull) and counted as
    /// dropped.
    pub fn send_queue_bytes(mut self, bytes: usize) -> UdpBuilder {
        self.queue_limit = bytes;
        self
    }

    /// The socket's receive buffer (`SO_RCVBUF`; the kernel doubles it).
    pub fn recv_buffer_size(mut self, bytes: usize) -> UdpBuilder {
        self.recv_buffer = Some(bytes);
        self
    }

    /// The socket's send buffer (`SO_SNDBUF`; the kernel doubles it).
    pub fn send_buffer_size(mut self, bytes: usize) -> UdpBuilder {
        self.send_buffer = Some(bytes);
        self
    }

    /// Sets `SO_REUSEPORT`, so that several sockets (one per loop or per process) share
    /// the address and the kernel spreads datagrams between them by source.
    pub fn reuse_port(mut self, yes: bool) -> UdpBuilder {
        self.reuse_port = yes;
        self
    }

    /// For an IPv6 address: `IPV6_V6ONLY` (by default the system's setting).
    pub fn only_v6(mut self, yes: bool) -> UdpBuilder {
        self.only_v6 = Some(yes);
        self
    }

    /// Connects the socket to `peer`: only its datagrams are received,
    /// [`UdpSocket::send`] needs no address, and an ICMP "port unreachable" for an earlier
    /// datagram is reported ([`UdpStats::refused`](super::UdpStats::refused)).
    pub fn connect(mut self, peer: SocketAddr) -> UdpBuilder {
        self.connect = Some(peer);
        self
    }

    /// The pool receive buffers come from (default [`BufPool::global`]).
    pub fn pool(mut self, pool: BufPool) -> UdpBuilder {
        self.pool = pool;
        self
    }

    /// Binds the socket here (errors come back at once) and serves it on the loop of
    /// `lp`, where it is registered before any function queued after this call runs.
    ///
    /// # Errors
    ///
    /// Creating, configuring, binding or connecting the socket.
    pub fn start(mut self, lp: &LoopHandle) -> io::Result<UdpSocket> {
        let socket = match self.bound.take() {
            Some(socket) => self.configure(socket)?,
            None => self.bind()?,
        };
        let local_addr = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("udp: bound to a non-IP address"))?;
        if self.connect.is_none() {
            // A socket its caller connected before handing it over (`UdpSocket::builder_on`)
            // is connected all the same (`getpeername` fails on one that is not).
            self.connect = socket.peer_addr().ok().and_then(|a| a.as_socket());
        }
        self.serve(socket.into(), local_addr, lp)
    }

    /// Serves an already set-up datagram socket `fd` on the loop of `lp`.
    pub(crate) fn serve(
        self,
        fd: OwnedFd,
        local_addr: SocketAddr,
        lp: &LoopHandle,
    ) -> io::Result<UdpSocket> {
        let shared = Arc::new(Shared {
            name: self.name.clone(),
            local_addr,
            peer: self.connect,
            lp: lp.clone(),
            token: OnceLock::new(),
            counters: UdpCounters::default(),
            queue_limit: self.queue_limit,
            stopped: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        // One receive block holds a whole batch: no more slots than the pool's largest
        // block has room for (32 x 64 KiB datagrams fit in 2 MiB; 8 MiB is the most).
        let batch = self
            .batch
            .min(duo_buffer::MAX_BLOCK / self.max_datagram)
            .max(1);
        // Bound to a wildcard address, the socket has no address of its own to reply
        // from: have each datagram's reported, so that replies leave from it. The IPv4
        // wildcard bound on an IPv6 socket (`[::ffff:0.0.0.0]`) is one too.
        let pktinfo = local_addr.ip().to_canonical().is_unspecified();
        if pktinfo {
            duo_sys::set_recv_pktinfo(fd.as_fd(), local_addr.is_ipv6())
                .map_err(|e| io::Error::new(e.kind(), format!("udp {local_addr}: {e}")))?;
        }
        let handler = UdpHandler {
            shared: Arc::clone(&shared),
            on_datagram: self
                .on_datagram
                .unwrap_or_else(|| Arc::new(|_: &mut UdpCtx<'_>, _: &[u8], _| {})),
            pool: self.pool,
            slot: self.max_datagram,
            scratch: MmsgScratch::new(batch),
            meta: vec![RecvMeta::default(); batch],
            queue: SendQueue::default(),
            single_recv: self.single_recv,
            pktinfo,
            flush_scheduled: false,
        };
        let name = self.name;
        let queued = lp.queue_in_loop(move |lp: &mut EventLoop| {
            let shared = Arc::clone(&handler.shared);
            match lp.add_channel(fd, Interest::READABLE, handler) {
                Ok(token) => {
                    let _ = shared.token.set(token);
                }
                Err(e) => log::error!("udp {name}: registering with the loop: {}", e.error),
            }
        });
        if queued.is_err() {
            return Err(io::Error::other("udp: the loop has ended"));
        }
        Ok(UdpSocket { shared })
    }

    /// Creates, configures and binds (and connects) the socket.
    fn bind(&self) -> io::Result<Socket> {
        let socket = Socket::new(
            Domain::for_address(self.addr),
            Type::DGRAM.nonblocking().cloexec(),
            Some(Protocol::UDP),
        )
        .map_err(self.context("socket"))?;
        if let (Some(v6), true) = (self.only_v6, self.addr.is_ipv6()) {
            socket
                .set_only_v6(v6)
                .map_err(self.context("IPV6_V6ONLY"))?;
        }
        if self.reuse_port {
            socket
                .set_reuse_port(true)
                .map_err(self.context("SO_REUSEPORT"))?;
        }
        self.set_buffers(&socket)?;
        socket
            .bind(&self.addr.into())
            .map_err(self.context("bind"))?;
        self.connect_peer(&socket)?;
        Ok(socket)
    }

    /// Configures a socket bound already: non-blocking, close-on-exec, the buffer sizes,
    /// and the connection (binding options such as `SO_REUSEPORT` were the binder's).
    fn configure(&self, socket: Socket) -> io::Result<Socket> {
        if socket.r#type().map_err(self.context("SO_TYPE"))? != Type::DGRAM {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("udp {}: not a datagram socket", self.addr),
            ));
        }
        socket
            .set_nonblocking(true)
            .map_err(self.context("O_NONBLOCK"))?;
        socket
            .set_cloexec(true)
            .map_err(self.context("FD_CLOEXEC"))?;
        self.set_buffers(&socket)?;
        self.connect_peer(&socket)?;
        Ok(socket)
    }

    /// The buffer sizes asked for.
    fn set_buffers(&self, socket: &Socket) -> io::Result<()> {
        if let Some(n) = self.recv_buffer {
            socket
                .set_recv_buffer_size(n)
                .map_err(self.context("SO_RCVBUF"))?;
        }
        if let Some(n) = self.send_buffer {
            socket
                .set_send_buffer_size(n)
                .map_err(self.context("SO_SNDBUF"))?;
        }
        Ok(())
    }

    /// Connects to the peer asked for, if any.
    fn connect_peer(&self, socket: &Socket) -> io::Result<()> {
        match self.connect {
            Some(peer) => socket
                .connect(&peer.into())
                .map_err(self.context("connect")),
            None => Ok(()),
        }
    }

    /// An error of step `what` on this socket, naming its address.
    fn context(&self, what: &'static str) -> impl FnOnce(io::Error) -> io::Error {
        let addr = self.addr;
        move |e: io::Error| io::Error::new(e.kind(), format!("udp {addr}: {what}: {e}"))
    }
}
