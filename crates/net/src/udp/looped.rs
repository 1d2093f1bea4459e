//! The loop side of a UDP socket: its [`Handler`] (receive in batches, flush the send
//! queue), the send queue, and [`UdpCtx`], what `on_datagram` gets.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use duo_buffer::BufPool;
use duo_reactor::{Channel, EventLoop, Handler, LogLimiter};
use duo_sys::{MmsgScratch, RecvMeta};

use super::stats::UdpCounters;
use super::{Shared, UdpSendError, UdpSocket};

/// The datagram callback, shared by every socket started from one builder.
pub(crate) type OnDatagram = Arc<dyn Fn(&mut UdpCtx<'_>, &[u8], SocketAddr) + Send + Sync>;

/// How many receive batches one readable event reads at most before the loop serves its
/// other channels (the socket is level-triggered: what is left is reported again).
const ROUNDS_PER_EVENT: usize = 4;

/// What a queued datagram counts against the send queue's limit beyond its payload (its
/// entry), so that a flood of empty datagrams is bounded too.
pub(crate) const ENTRY_COST: usize = std::mem::size_of::<Pending>();

/// A send queue that drained keeps its byte arena up to this capacity (one UDP socket per
/// loop, so this is per loop, not per peer); a larger one is freed.
const KEPT_ARENA: usize = 64 * 1024;

static TRUNCATED: LogLimiter = LogLimiter::new("udp truncated datagrams");
static SEND_ERRORS: LogLimiter = LogLimiter::new("udp send errors");
static RECV_ERRORS: LogLimiter = LogLimiter::new("udp receive errors");
static PANICS: LogLimiter = LogLimiter::new("udp callback panics");

/// One datagram waiting in the send queue (its bytes are next in the arena).
#[derive(Debug, Clone, Copy)]
struct Pending {
    len: usize,
    to: Option<SocketAddr>,
    /// The local address to send from (a reply on a wildcard-bound socket), if any.
    src: Option<IpAddr>,
}

/// Datagrams waiting to be sent, in order: payloads back to back in one arena.
#[derive(Debug, Default)]
pub(crate) struct SendQueue {
    bytes: Vec<u8>,
    /// Start of the first pending payload in `bytes`.
    head: usize,
    entries: VecDeque<Pending>,
    /// Payloads plus [`ENTRY_COST`] per entry, compared with the limit.
    cost: usize,
}

impl SendQueue {
    fn push(&mut self, data: &[u8], to: Option<SocketAddr>, src: Option<IpAddr>) {
        self.bytes.extend_from_slice(data);
        self.entries.push_back(Pending {
            len: data.len(),
            to,
            src,
        });
        self.cost += data.len() + ENTRY_COST;
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first `n` entries, with their payloads.
    fn front(&self, n: usize) -> impl Iterator<Item = (&[u8], Option<SocketAddr>, Option<IpAddr>)> {
        let mut at = self.head;
        self.entries.iter().take(n).map(move |p| {
            let data = &self.bytes[at..at + p.len];
            at += p.len;
            (data, p.to, p.src)
        })
    }

    /// Takes the first `n` entries off; returns their payload bytes.
    fn pop(&mut self, n: usize) -> usize {
        let mut bytes = 0;
        for p in self.entries.drain(..n) {
            bytes += p.len;
            self.cost -= p.len + ENTRY_COST;
        }
        self.head += bytes;
        if self.entries.is_empty() {
            self.head = 0;
            if self.bytes.capacity() > KEPT_ARENA {
                self.bytes = Vec::new();
            } else {
                self.bytes.clear();
            }
        } else if self.head > KEPT_ARENA && self.head >= self.bytes.len() - self.head {
            // A queue that never drains (the send buffer stays full while replies keep
            // coming) would otherwise keep every byte it ever sent: move the pending
            // payloads to the front once the sent prefix outweighs them (a move copies no
            // more bytes than were popped since the last one: amortised O(1) per byte).
            self.bytes.drain(..self.head);
            self.head = 0;
        }
        bytes
    }
}

/// A UDP socket's state on its loop.
pub(crate) struct UdpHandler {
    pub(crate) shared: Arc<Shared>,
    pub(crate) on_datagram: OnDatagram,
    pub(crate) pool: BufPool,
    /// Bytes per receive slot (the largest datagram delivered whole).
    pub(crate) slot: usize,
    pub(crate) scratch: MmsgScratch,
    pub(crate) meta: Vec<RecvMeta>,
    pub(crate) queue: SendQueue,
    /// One `recvfrom` per datagram instead of `recvmmsg` (for the benchmark's comparison).
    pub(crate) single_recv: bool,
    /// The socket is bound to a wildcard address and reports each datagram's local
    /// address (`duo_sys::set_recv_pktinfo`): replies are sent from it.
    pub(crate) pktinfo: bool,
    /// A flush of other threads' sends is queued on the loop.
    pub(crate) flush_scheduled: bool,
}

impl Drop for UdpHandler {
    fn drop(&mut self) {
        // The channel's descriptor is closed before its handler is dropped.
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.closed.store(true, Ordering::Release);
        let unsent = self.queue.entries.len() as u64;
        self.shared
            .counters
            .dropped
            .fetch_add(unsent, Ordering::Relaxed);
        self.shared
            .counters
            .queued_bytes
            .store(0, Ordering::Relaxed);
    }
}

impl Handler for UdpHandler {
    fn handle_read(&mut self, _lp: &mut EventLoop, ch: &mut Channel) {
        let mut stop = false;
        match self.pool.alloc(self.slot * self.scratch.capacity()) {
            Ok(mut block) => {
                let len = self.slot * self.scratch.capacity();
                let buf = &mut block.writable()[..len];
                self.receive(ch, buf, &mut stop);
            }
            Err(e) => {
                duo_reactor::log_limited!(
                    limiter: RECV_ERRORS,
                    log::Level::Warn,
                    "udp {}: no receive buffer ({e}); reading one datagram into the heap",
                    self.shared.name
                );
                let mut buf = vec![0u8; self.slot];
                let single = std::mem::replace(&mut self.single_recv, true);
                self.receive(ch, &mut buf, &mut stop);
                self.single_recv = single;
            }
        }
        self.flush(ch);
        if stop {
            // Queued as `UdpSocket::stop` queues it, not made now: sends other threads
            // had accepted may still be on their way in the loop's queue, and they go
            // first. (New sends are refused already.)
            let socket = super::UdpSocket {
                shared: Arc::clone(&self.shared),
            };
            socket.stop();
        }
    }

    fn handle_write(&mut self, _lp: &mut EventLoop, ch: &mut Channel) {
        self.flush(ch);
    }

    fn handle_error(&mut self, _lp: &mut EventLoop, ch: &mut Channel) {
        match duo_sys::take_socket_error(ch.fd()) {
            Ok(Some(e)) => self.recv_error(&e),
            Ok(None) => {}
            Err(e) => self.recv_error(&e),
        }
        ch.progressed();
    }

    fn label(&self) -> Option<String> {
        Some(format!("udp {}", self.shared.name))
    }
}

impl UdpHandler {
    /// Reads up to [`ROUNDS_PER_EVENT`] batches into `buf` and hands each datagram to the
    /// callback.
    fn receive(&mut self, ch: &mut Channel, buf: &mut [u8], stop: &mut bool) {
        let batch = (buf.len() / self.slot).max(1);
        for _ in 0..ROUNDS_PER_EVENT {
            let got = if self.single_recv {
                self.recv_each(ch, buf, batch)
            } else {
                duo_sys::recv_mmsg(ch.fd(), &mut self.scratch, buf, self.slot, &mut self.meta)
            };
            let n = match got {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.recv_error(&e);
                    ch.progressed();
                    continue;
                }
            };
            ch.progressed();
            // Unbatched, each of the `n` datagrams took a call of its own.
            let calls = if self.single_recv { n } else { 1 };
            UdpCounters::add(&self.shared.counters.recv_calls, calls as u64);
            self.deliver(ch, buf, n, stop);
            if n < batch || *stop {
                return;
            }
        }
    }

    /// Receives up to `batch` datagrams with one `recvfrom` each, into successive slots of
    /// `buf` (the unbatched receive: what `recvmmsg` saves is measured against it).
    fn recv_each(&mut self, ch: &Channel, buf: &mut [u8], batch: usize) -> io::Result<usize> {
        let mut n = 0;
        while n < batch {
            let slot = &mut buf[n * self.slot..(n + 1) * self.slot];
            let got = if self.pktinfo {
                // Only `recvmmsg` brings the local address: a batch of one.
                let meta = &mut self.meta[n..=n];
                duo_sys::recv_mmsg(ch.fd(), &mut self.scratch, slot, self.slot, meta)
                    .map(|_| meta[0])
            } else {
                duo_sys::recv_from(ch.fd(), slot)
            };
            match got {
                Ok(m) => {
                    self.meta[n] = m;
                    n += 1;
                }
                Err(e) if n == 0 => return Err(e),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.recv_error(&e);
                    break;
                }
            }
        }
        Ok(n)
    }

    /// Hands the first `n` received datagrams to the callback (truncated ones are counted
    /// and logged instead).
    fn deliver(&mut self, ch: &mut Channel, buf: &[u8], n: usize, stop: &mut bool) {
        let (mut count, mut bytes, mut cut) = (0u64, 0u64, 0u64);
        let cb = Arc::clone(&self.on_datagram);
        for i in 0..n {
            let m = self.meta[i];
            let Some(from) = m.from else { continue };
            if m.truncated {
                cut += 1;
                duo_reactor::log_limited!(
                    limiter: TRUNCATED,
                    log::Level::Warn,
                    "udp {}: datagram from {from} larger than {} bytes: dropped",
                    self.shared.name,
                    self.slot
                );
                continue;
            }
            count += 1;
            bytes += m.len as u64;
            let payload = &buf[i * self.slot..i * self.slot + m.len];
            let mut ctx = UdpCtx {
                handler: self,
                stop,
                fd: ch,
                reply: m.local.map(|local| (from, local)),
            };
            let caught = duo_reactor::catch_panic(std::panic::AssertUnwindSafe(|| {
                cb(&mut ctx, payload, from)
            }));
            if caught.is_err() {
                duo_reactor::log_limited!(
                    limiter: PANICS,
                    log::Level::Error,
                    "udp {}: on_datagram panicked (datagram from {from}); the socket goes on",
                    self.shared.name
                );
            }
        }
        let c = &self.shared.counters;
        UdpCounters::add(&c.datagrams_in, count);
        UdpCounters::add(&c.bytes_in, bytes);
        UdpCounters::add(&c.truncated, cut);
    }

    /// Counts and logs a receive-side error (the socket goes on).
    fn recv_error(&mut self, e: &io::Error) {
        let c = &self.shared.counters;
        if e.kind() == io::ErrorKind::ConnectionRefused {
            UdpCounters::add(&c.refused, 1);
        } else {
            UdpCounters::add(&c.recv_errors, 1);
        }
        duo_reactor::log_limited!(
            limiter: RECV_ERRORS,
            log::Level::Warn,
            "udp {}: {e} (an ICMP error for an earlier datagram, or a receive error); going on",
            self.shared.name
        );
    }

    /// Queues one datagram on the loop, refused beyond the limit.
    pub(crate) fn enqueue(
        &mut self,
        data: &[u8],
        to: Option<SocketAddr>,
        src: Option<IpAddr>,
    ) -> Result<(), UdpSendError> {
        let s = &self.shared;
        let cost = data.len() + ENTRY_COST;
        let in_flight = s.counters.in_flight.load(Ordering::Relaxed) as usize;
        if self.queue.cost + in_flight + cost > s.queue_limit && !self.queue.is_empty() {
            s.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(UdpSendError::QueueFull {
                limit: s.queue_limit,
            });
        }
        self.queue.push(data, to, src);
        self.store_queued();
        Ok(())
    }

    /// Publishes the queue's cost to the gauge other threads' sends check against the
    /// limit (Release: pairs with their Acquire of `in_flight`, see `UdpSocket::send_to`).
    fn store_queued(&self) {
        self.shared
            .counters
            .queued_bytes
            .store(self.queue.cost as u64, Ordering::Release);
    }

    /// Queues a datagram from another thread's send, already checked against the limit.
    /// Returns true if a flush must be scheduled (none is yet).
    pub(crate) fn queue_unchecked(&mut self, data: &[u8], to: Option<SocketAddr>) -> bool {
        self.queue.push(data, to, None);
        self.store_queued();
        !std::mem::replace(&mut self.flush_scheduled, true)
    }

    /// The flush scheduled by [`queue_unchecked`](UdpHandler::queue_unchecked).
    pub(crate) fn scheduled_flush(&mut self, ch: &mut Channel) {
        self.flush_scheduled = false;
        self.flush(ch);
    }

    /// Sends what is queued: one `sendto` for a single datagram, `sendmmsg` batches for
    /// more, until the queue is empty or the send buffer is full (then waits for
    /// writability).
    pub(crate) fn flush(&mut self, ch: &mut Channel) {
        // An `ECONNREFUSED` is an earlier datagram's ICMP error, reported (and cleared) by
        // this call, which sent nothing: the datagram is tried again. Each datagram sent
        // can bring one more (with one `sendto` per datagram, every other call meets
        // one), so the retry is allowed again after every call that sent: never twice in
        // a row, so the loop always progresses.
        let mut may_retry_refused = true;
        let (mut count, mut bytes, mut calls) = (0u64, 0u64, 0u64);
        while !self.queue.is_empty() {
            let n = self.queue.entries.len().min(self.scratch.capacity());
            let sent = match self.queue.front(n).next() {
                Some((data, to, None)) if n == 1 => duo_sys::send_to(ch.fd(), data, to).map(|_| 1),
                _ => duo_sys::send_mmsg_from(ch.fd(), &mut self.scratch, self.queue.front(n)),
            };
            match sent {
                Ok(k) => {
                    may_retry_refused = true;
                    calls += 1;
                    count += k as u64;
                    bytes += self.queue.pop(k) as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Counted once per wait for writability, not again by the flushes of
                    // read events (or `UdpCtx::flush`) that meet it still full meanwhile.
                    if !ch.is_writing() {
                        UdpCounters::add(&self.shared.counters.send_buffer_full, 1);
                        ch.enable_writing();
                    }
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && may_retry_refused => {
                    may_retry_refused = false;
                    self.recv_error(&e);
                }
                Err(e) => {
                    let to = self.queue.entries[0].to;
                    let len = self.queue.entries[0].len;
                    self.queue.pop(1);
                    UdpCounters::add(&self.shared.counters.send_errors, 1);
                    duo_reactor::log_limited!(
                        limiter: SEND_ERRORS,
                        log::Level::Warn,
                        "udp {}: sending {len} bytes to {}: {e}; datagram dropped",
                        self.shared.name,
                        to.map_or_else(|| "the connected peer".to_owned(), |a| a.to_string())
                    );
                }
            }
        }
        if self.queue.is_empty() && ch.is_writing() {
            ch.disable_writing();
        }
        if calls > 0 {
            ch.progressed();
        }
        let c = &self.shared.counters;
        UdpCounters::add(&c.datagrams_out, count);
        UdpCounters::add(&c.bytes_out, bytes);
        UdpCounters::add(&c.send_calls, calls);
        // Popping only lowers the gauge: storing it once here leaves it high meanwhile,
        // which errs on the refusing side.
        self.store_queued();
    }
}

/// What `on_datagram` gets besides the payload and its source: replies, the socket's
/// handle, stop.
///
/// Replies are queued and sent together when the callback of the last datagram of the
/// batch returns (with one `sendmmsg` when there are several), so an echo of a batch of
/// 32 datagrams costs one receive and one send system call.
pub struct UdpCtx<'a> {
    handler: &'a mut UdpHandler,
    stop: &'a mut bool,
    fd: &'a mut Channel,
    /// The datagram's source and the local address it came in on (wildcard-bound
    /// sockets only): a reply to that source is sent from that address.
    reply: Option<(SocketAddr, IpAddr)>,
}

impl std::fmt::Debug for UdpCtx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpCtx")
            .field("name", &self.handler.shared.name)
            .finish()
    }
}

impl UdpCtx<'_> {
    /// Queues `data` for `to`; it is sent when this batch of callbacks ends.
    ///
    /// A reply (`to` is the datagram's source) leaves from the address the datagram was
    /// sent to, also on a socket bound to a wildcard address (`0.0.0.0`, `::`), where the
    /// kernel would otherwise pick one by route, which a peer that sent to another of the
    /// host's addresses would not recognise.
    ///
    /// # Errors
    ///
    /// [`UdpSendError::QueueFull`] if the send queue is at its limit (the socket's send
    /// buffer has been full for a while: the peer or the network is slower than the
    /// sender); [`UdpSendError::TooLarge`] beyond [`MAX_PAYLOAD`](super::MAX_PAYLOAD)
    /// bytes (over IPv4 the kernel refuses more than 65 507: see
    /// [`MAX_PAYLOAD`](super::MAX_PAYLOAD)).
    pub fn send_to(&mut self, data: &[u8], to: SocketAddr) -> Result<(), UdpSendError> {
        check_len(data.len())?;
        let src = self
            .reply
            .and_then(|(from, local)| (from == to).then_some(local));
        self.handler.enqueue(data, Some(to), src)
    }

    /// Queues `data` for the connected peer ([`UdpBuilder::connect`](super::UdpBuilder::connect)).
    ///
    /// # Errors
    ///
    /// As [`send_to`](UdpCtx::send_to).
    pub fn send(&mut self, data: &[u8]) -> Result<(), UdpSendError> {
        check_len(data.len())?;
        self.handler.enqueue(data, None, None)
    }

    /// The socket's handle, to keep for sending from another thread later.
    pub fn socket(&self) -> UdpSocket {
        UdpSocket {
            shared: Arc::clone(&self.handler.shared),
        }
    }

    /// The local address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.handler.shared.local_addr
    }

    /// Stops the socket once this batch is handled, as [`UdpSocket::stop`] does: sends
    /// from other threads ([`UdpSocket::send_to`]) are refused from now on, and what is
    /// queued (also sends those accepted before, still on their way to the loop) is sent
    /// first, as far as the send buffer takes it. Sends from this batch's callbacks
    /// ([`UdpCtx::send_to`], also after this call) are queued and sent with it: the batch
    /// is still being handled, and a reply to a datagram it delivers is not lost.
    pub fn stop(&mut self) {
        self.handler.shared.stopped.store(true, Ordering::Release);
        *self.stop = true;
    }

    /// Sends what is queued now rather than at the end of the batch.
    pub fn flush(&mut self) {
        self.handler.flush(self.fd);
    }
}

/// Refuses a payload no UDP datagram can carry.
pub(crate) fn check_len(len: usize) -> Result<(), UdpSendError> {
    if len > super::MAX_PAYLOAD {
        return Err(UdpSendError::TooLarge { len });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::net::SocketAddr;

    use proptest::prelude::*;

    use super::{SendQueue, ENTRY_COST};

    /// A push (payload length and a port) or a pop of up to n entries.
    #[derive(Debug, Clone)]
    enum Op {
        Push(usize, u16),
        Pop(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..300, any::<u16>()).prop_map(|(n, p)| Op::Push(n, p)),
            (1usize..5).prop_map(Op::Pop),
        ]
    }

    /// A queue that never drains (the send buffer stays full while replies keep coming,
    /// each flush sending a few) keeps an arena the size of what is pending, not of
    /// everything it ever sent.
    #[test]
    fn a_queue_that_never_drains_does_not_grow_without_bound() {
        let mut q = SendQueue::default();
        let to = Some(SocketAddr::from(([127, 0, 0, 1], 9)));
        q.push(&[0u8; 1000], to, None);
        for i in 0..20_000u32 {
            q.push(&[i as u8; 1000], to, None);
            // The oldest pending payload: the previous one pushed (the first is zeros).
            let want = if i == 0 { 0 } else { (i - 1) as u8 };
            assert_eq!(q.front(1).next().unwrap().0, &[want; 1000][..]);
            assert_eq!(q.pop(1), 1000);
        }
        assert_eq!(q.entries.len(), 1);
        assert_eq!(q.front(1).next().unwrap().0, &[19_999u32 as u8; 1000][..]);
        assert!(
            q.bytes.capacity() <= 4 * super::KEPT_ARENA,
            "an arena of {} bytes for 1 000 pending",
            q.bytes.capacity()
        );
    }

    proptest! {
        /// The queue against a `VecDeque` of owned datagrams: same datagrams, same order,
        /// same addresses, and the cost it reports is payloads plus the entry cost.
        #[test]
        fn behaves_like_a_deque_of_datagrams(ops in proptest::collection::vec(op(), 0..200)) {
            let mut q = SendQueue::default();
            let mut model: VecDeque<(Vec<u8>, Option<SocketAddr>)> = VecDeque::new();
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Push(len, port) => {
                        let data = vec![i as u8; len];
                        let to = (port % 2 == 0).then(|| SocketAddr::from(([127, 0, 0, 1], port)));
                        q.push(&data, to, None);
                        model.push_back((data, to));
                    }
                    Op::Pop(n) => {
                        let n = n.min(model.len());
                        let front: Vec<(Vec<u8>, Option<SocketAddr>)> =
                            q.front(n).map(|(d, t, _)| (d.to_vec(), t)).collect();
                        let want: Vec<_> = model.drain(..n).collect();
                        prop_assert_eq!(&front, &want);
                        let bytes: usize = want.iter().map(|(d, _)| d.len()).sum();
                        prop_assert_eq!(q.pop(n), bytes);
                    }
                }
                let cost: usize = model.iter().map(|(d, _)| d.len() + ENTRY_COST).sum();
                prop_assert_eq!(q.cost, cost);
                prop_assert_eq!(q.is_empty(), model.is_empty());
                let all: Vec<_> = q.front(usize::MAX).map(|(d, t, _)| (d.to_vec(), t)).collect();
                prop_assert_eq!(all, model.iter().cloned().collect::<Vec<_>>());
            }
        }
    }
}
