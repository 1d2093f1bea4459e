//! UDP on the loop: [`UdpSocket`], a datagram socket served by an [`EventLoop`](duo_reactor::EventLoop), its
//! [`UdpBuilder`], the callback's [`UdpCtx`] and the counters ([`UdpStats`]).
//!
//! - **Receive in batches.** The socket is level-triggered; a readable event takes one
//!   64 KiB block from the [`BufPool`](duo_buffer::BufPool) (by default: 32 slots of
//!   2 KiB), fills it with one `recvmmsg` (up to four batches per event), calls
//!   `on_datagram` for each datagram, and gives the block back when the event ends. An
//!   idle socket holds no receive buffer.
//! - **Send in batches.** Replies from `on_datagram` and sends from other threads go into
//!   a send queue that is flushed when the batch of callbacks ends (or the queued
//!   function runs): one `sendto` for one datagram, `sendmmsg` for several.
//! - **Truncation.** A datagram larger than the slot
//!   ([`UdpBuilder::max_datagram`]) is detected (`MSG_TRUNC`), counted
//!   ([`UdpStats::truncated`]), logged (rate-limited) and **not delivered**: a cut
//!   datagram is not the datagram its sender sent.
//! - **Backpressure.** When the socket's send buffer is full (`EAGAIN`) the queue waits
//!   for writability; beyond its limit ([`UdpBuilder::send_queue_bytes`]) a send is
//!   refused with [`UdpSendError::QueueFull`] and counted ([`UdpStats::dropped`]). Nothing
//!   is dropped silently. A datagram the kernel refuses (`EMSGSIZE`, ...) is counted in
//!   [`UdpStats::send_errors`] and logged.
//! - **Wildcard addresses.** A socket bound to `0.0.0.0`, `::` or `::ffff:0.0.0.0` learns the address each
//!   datagram came in on (`IP_PKTINFO`), and a reply from `on_datagram` to its source
//!   leaves from that address, the one the peer sent to.
//! - **ICMP errors** (`ECONNREFUSED` on a connected socket) are counted
//!   ([`UdpStats::refused`]) and logged; the socket goes on.
//!
//! # Example: an echo, and a client
//!
//! ```
//! use duo_net::UdpSocket;
//! use duo_reactor::EventLoopThread;
//!
//! let io = EventLoopThread::spawn("udp", None)?;
//! let echo = UdpSocket::builder("echo", "127.0.0.1:0".parse()?)
//!     .on_datagram(|ctx, payload, from| {
//!         let _ = ctx.send_to(payload, from);
//!     })
//!     .start(io.handle())?;
//!
//! let client = std::net::UdpSocket::bind("127.0.0.1:0")?;
//! client.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
//! client.send_to(b"ping", echo.local_addr())?;
//! let mut buf = [0u8; 16];
//! let (n, _) = client.recv_from(&mut buf)?;
//! assert_eq!(&buf[..n], b"ping");
//! assert_eq!(echo.stats().datagrams_in, 1);
//!
//! echo.stop();
//! io.stop()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod builder;
mod looped;
mod stats;
#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use duo_reactor::{LoopHandle, Token};

pub use builder::{UdpBuilder, DEFAULT_BATCH, DEFAULT_MAX_DATAGRAM, DEFAULT_SEND_QUEUE};
pub use looped::UdpCtx;
pub use stats::UdpStats;

use looped::{check_len, UdpHandler, ENTRY_COST};
use stats::UdpCounters;

/// The largest UDP payload (the 16-bit length field less the UDP header): 65 527 bytes,
/// what sends accept and what [`UdpBuilder::max_datagram`] is clamped to.
///
/// Over IPv4 the IP header (20 bytes) comes out of the same 65 535, so the kernel refuses
/// payloads of 65 508 to 65 527 bytes with `EMSGSIZE`: such a send is accepted here and
/// then dropped and counted in [`UdpStats::send_errors`] (IPv6 without jumbograms takes
/// up to 65 527).
pub const MAX_PAYLOAD: usize = 65_535 - 8;

/// Why a datagram was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UdpSendError {
    /// The socket was stopped (or its loop ended).
    #[error("udp socket stopped")]
    Stopped,
    /// The send queue is at its limit: the socket's send buffer has stayed full.
    #[error("udp send queue full ({limit} bytes)")]
    QueueFull {
        /// The queue's limit in bytes ([`UdpBuilder::send_queue_bytes`]).
        limit: usize,
    },
    /// No UDP datagram carries this many bytes.
    #[error("udp payload of {len} bytes is larger than {MAX_PAYLOAD}")]
    TooLarge {
        /// The payload's length.
        len: usize,
    },
}

/// What any thread may read of a socket.
pub(crate) struct Shared {
    name: String,
    local_addr: SocketAddr,
    peer: Option<SocketAddr>,
    lp: LoopHandle,
    /// Set once the loop registered the socket.
    token: OnceLock<Token>,
    counters: UdpCounters,
    queue_limit: usize,
    /// Sends are refused from now on.
    stopped: AtomicBool,
    /// The descriptor is closed.
    closed: AtomicBool,
}

/// A UDP socket served on an [`EventLoop`](duo_reactor::EventLoop): the `Send + Sync +
/// Clone` handle.
///
/// Every method is safe from any thread. [`send_to`](UdpSocket::send_to) copies the payload
/// and queues it onto the socket's loop, which sends it (batched with whatever else is
/// queued). Dropping the handles does not stop the socket: [`stop`](UdpSocket::stop) does,
/// or the end of its loop.
///
/// ```
/// use duo_net::UdpSocket;
/// use duo_reactor::EventLoopThread;
///
/// let io = EventLoopThread::spawn("udp", None)?;
/// let sender = UdpSocket::builder("sender", "127.0.0.1:0".parse()?).start(io.handle())?;
/// let peer = std::net::UdpSocket::bind("127.0.0.1:0")?;
/// peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
///
/// // From another thread: the datagram is queued onto the socket's loop.
/// let handle = sender.clone();
/// let to = peer.local_addr()?;
/// std::thread::spawn(move || handle.send_to(&b"hello"[..], to)).join().unwrap()?;
/// let mut buf = [0u8; 16];
/// let (n, from) = peer.recv_from(&mut buf)?;
/// assert_eq!((&buf[..n], from), (&b"hello"[..], sender.local_addr()));
///
/// sender.stop();
/// assert!(sender.send_to(&b"late"[..], to).is_err());
/// io.stop()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct UdpSocket {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpSocket")
            .field("name", &self.shared.name)
            .field("local_addr", &self.shared.local_addr)
            .field("peer", &self.shared.peer)
            .finish()
    }
}

impl UdpSocket {
    /// Settings for a socket named `name` (in logs) bound to `addr`.
    pub fn builder(name: &str, addr: SocketAddr) -> UdpBuilder {
        UdpBuilder::new(name, addr)
    }

    /// Settings for serving `socket`, a UDP socket bound already (inherited through socket
    /// activation, or bound by the caller, for instance on a port chosen to be free for
    /// TCP too). [`start`](UdpBuilder::start) makes it non-blocking and applies the
    /// buffer sizes and [`connect`](UdpBuilder::connect); options that act at binding
    /// ([`reuse_port`](UdpBuilder::reuse_port), [`only_v6`](UdpBuilder::only_v6)) were the
    /// binder's and are ignored.
    ///
    /// # Errors
    ///
    /// The socket's address cannot be read (it is not bound, or not an IP socket);
    /// `start` fails with `InvalidInput` if it is not a datagram socket.
    pub fn builder_on(name: &str, socket: std::net::UdpSocket) -> io::Result<UdpBuilder> {
        UdpBuilder::on(name, socket)
    }

    /// The socket's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The address the socket is bound to (with the real port if `0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The connected peer ([`UdpBuilder::connect`], or the peer of a socket connected
    /// before [`UdpSocket::builder_on`]), if any.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.shared.peer
    }

    /// Queues `data` for `to` on the socket's loop.
    ///
    /// # Errors
    ///
    /// [`UdpSendError::Stopped`] after [`stop`](UdpSocket::stop) or once the loop ended;
    /// [`UdpSendError::QueueFull`] when the bytes queued (on the loop and on their way to
    /// it) are at the limit; [`UdpSendError::TooLarge`] beyond [`MAX_PAYLOAD`]. A datagram
    /// accepted here may still fail in the kernel (over IPv4 anything above 65 507 bytes
    /// does): see [`UdpStats::send_errors`]. One accepted before the loop is asked to quit
    /// ([`LoopHandle::quit`](duo_reactor::LoopHandle::quit)) is sent before its `run`
    /// returns. One accepted just before the socket stops
    /// may reach the loop after it closed, and one accepted just before the loop ends may
    /// never run: either is then counted in [`UdpStats::dropped`].
    pub fn send_to(&self, data: impl Into<Vec<u8>>, to: SocketAddr) -> Result<(), UdpSendError> {
        self.queue(data.into(), Some(to))
    }

    /// Queues `data` for the connected peer ([`UdpBuilder::connect`]).
    ///
    /// # Errors
    ///
    /// As [`send_to`](UdpSocket::send_to).
    pub fn send(&self, data: impl Into<Vec<u8>>) -> Result<(), UdpSendError> {
        self.queue(data.into(), None)
    }

    fn queue(&self, data: Vec<u8>, to: Option<SocketAddr>) -> Result<(), UdpSendError> {
        check_len(data.len())?;
        let s = &self.shared;
        if s.stopped.load(Ordering::Acquire) {
            return Err(UdpSendError::Stopped);
        }
        let cost = (data.len() + ENTRY_COST) as u64;
        // Acquire: pairs with the loop's Release when it moves a datagram from in flight
        // into its queue (see the task below), so the gauge read next counts it.
        let before = s.counters.in_flight.fetch_add(cost, Ordering::AcqRel);
        let queued = s.counters.queued_bytes.load(Ordering::Acquire);
        if before + queued + cost > s.queue_limit as u64 && before + queued > 0 {
            s.counters.in_flight.fetch_sub(cost, Ordering::Relaxed);
            s.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(UdpSendError::QueueFull {
                limit: s.queue_limit,
            });
        }
        let mut pending = InFlight {
            shared: Arc::clone(s),
            cost,
            arrived: false,
        };
        let task = move |lp: &mut duo_reactor::EventLoop| {
            // Checked against the limit above, with this datagram counted in flight. It is
            // counted in the queue's gauge (`queue_unchecked` stores it) before it leaves
            // `in_flight`, so other threads' checks never miss it.
            let token = pending.shared.token.get().copied();
            let first = token.and_then(|token| {
                lp.with_handler(token, |_, _, h: &mut UdpHandler| {
                    h.queue_unchecked(&data, to)
                })
            });
            let (Some(token), Some(first)) = (token, first) else {
                // The socket was stopped (and its queue dropped) after this send was
                // accepted: `pending`, dropped here, counts the datagram as dropped.
                return;
            };
            pending.arrived();
            if lp.is_quitting() {
                // A quitting loop runs the functions queued before the quit (this one)
                // but leaves those queued from now on (a flush) for its next `run`: the
                // datagram would wait unsent after `run` returned. Send it now.
                lp.with_handler(token, |_, ch, h: &mut UdpHandler| h.scheduled_flush(ch));
            } else if first {
                // Sends queued by other threads in the same drain of the loop's queue go
                // out together, after it.
                lp.queue_in_loop(move |lp| {
                    lp.with_handler(token, |_, ch, h: &mut UdpHandler| h.scheduled_flush(ch));
                });
            }
        };
        s.lp.queue_in_loop(task).map_err(|_| {
            // The task was dropped unrun, and its `InFlight` counted the datagram dropped;
            // this one was refused (the caller has the error), not dropped.
            s.counters.dropped.fetch_sub(1, Ordering::Relaxed);
            UdpSendError::Stopped
        })
    }

    /// Stops the socket: sends are refused from now on, and the loop closes the
    /// descriptor when it runs the queued stop. What was queued before it (by the loop, or
    /// by [`send_to`](UdpSocket::send_to) calls that returned before this one began) is
    /// sent first, as far as the send buffer takes it; the rest is counted as dropped.
    /// [`is_closed`](UdpSocket::is_closed) tells when the descriptor was closed.
    pub fn stop(&self) {
        let s = &self.shared;
        s.stopped.store(true, Ordering::Release);
        let shared = Arc::clone(s);
        let _ = s.lp.queue_in_loop(move |lp| {
            if let Some(&token) = shared.token.get() {
                // Sends queued from other threads before this stop have reached the
                // socket's queue (queued functions run in order), but the flush they
                // scheduled runs after this function: flush now, or they would be dropped.
                lp.with_handler(token, |_, ch, h: &mut UdpHandler| h.flush(ch));
                lp.remove_channel(token);
            }
        });
    }

    /// Whether the socket was stopped ([`stop`](UdpSocket::stop), [`UdpCtx::stop`]).
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
    }

    /// Whether the socket's descriptor is closed (the address is free again).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// A snapshot of the socket's counters.
    pub fn stats(&self) -> UdpStats {
        self.shared.counters.snapshot()
    }
}

/// A datagram accepted by [`UdpSocket::send_to`] on its way to the loop, counted in
/// `in_flight` until it reaches the socket's queue ([`InFlight::arrived`]). Dropped on the
/// way (the socket stopped first, or the loop ended with the send still queued: the loop
/// drops queued functions unrun), it counts the datagram as dropped: the caller got `Ok`,
/// so the count is all that tells the datagram never left.
struct InFlight {
    shared: Arc<Shared>,
    cost: u64,
    arrived: bool,
}

impl InFlight {
    /// The datagram is in the socket's queue (and counted in its gauge).
    fn arrived(&mut self) {
        // Release: pairs with the Acquire of the senders' check (see `queue`).
        let c = &self.shared.counters;
        c.in_flight.fetch_sub(self.cost, Ordering::Release);
        self.arrived = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.arrived {
            let c = &self.shared.counters;
            c.in_flight.fetch_sub(self.cost, Ordering::Release);
            c.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
