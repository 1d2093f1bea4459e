//! [`UdpStats`]: what one UDP socket did, and the counters behind it.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of one UDP socket's counters ([`UdpSocket::stats`](super::UdpSocket::stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpStats {
    /// Datagrams received and delivered to `on_datagram`.
    pub datagrams_in: u64,
    /// Payload bytes of those datagrams.
    pub bytes_in: u64,
    /// Datagrams the kernel accepted for sending.
    pub datagrams_out: u64,
    /// Payload bytes of those datagrams.
    pub bytes_out: u64,
    /// Datagrams larger than the receive slot ([`max_datagram`](super::UdpBuilder::max_datagram)):
    /// cut by the kernel, counted here and **not** delivered.
    pub truncated: u64,
    /// Datagrams the kernel refused to send (`EMSGSIZE`, `ENETUNREACH`, ...): dropped and
    /// counted here.
    pub send_errors: u64,
    /// Datagrams not sent for want of room or of a socket: refused at
    /// [`UdpSocket::send_to`](super::UdpSocket::send_to) or
    /// [`UdpCtx::send_to`](super::UdpCtx::send_to) because the send queue was at its limit
    /// ([`send_queue_bytes`](super::UdpBuilder::send_queue_bytes); the caller got
    /// [`UdpSendError::QueueFull`](super::UdpSendError::QueueFull)), still queued when the
    /// socket stopped, or accepted by `UdpSocket::send_to` just before the stop (or the
    /// end of the socket's loop) and reaching the loop after it, or never (the caller got
    /// `Ok`).
    pub dropped: u64,
    /// Times the socket's send buffer was found full (`EAGAIN`) and the rest of the queue
    /// began to wait for writability: once per wait, however many flushes meet it full
    /// before the socket is writable again.
    pub send_buffer_full: u64,
    /// ICMP errors the kernel reported (`ECONNREFUSED`: "port unreachable" for an earlier
    /// datagram of a connected socket). The socket goes on. A lower bound: the kernel
    /// keeps one pending error at a time, and a `sendmmsg` that meets one after its first
    /// datagram returns the count sent so far and discards the error.
    pub refused: u64,
    /// Other receive errors (logged; the socket goes on).
    pub recv_errors: u64,
    /// Receive calls that returned datagrams: `recvmmsg` calls, or under
    /// [`unbatched_receive`](super::UdpBuilder::unbatched_receive) `recvfrom` calls
    /// (`datagrams_in / recv_calls` is the mean batch).
    pub recv_calls: u64,
    /// `sendto`/`sendmmsg` calls that sent datagrams.
    pub send_calls: u64,
    /// The send queue's size now (a gauge), as counted against
    /// [`send_queue_bytes`](super::UdpBuilder::send_queue_bytes): payload bytes plus 64 per
    /// datagram queued. Datagrams other threads sent that have not reached the loop yet
    /// are not in it.
    pub queued_bytes: u64,
}

/// The live counters. Written by the socket's loop (plain load + store: one writer), except
/// `dropped` and `in_flight`, which other threads' sends touch too.
#[derive(Debug, Default)]
pub(crate) struct UdpCounters {
    pub(crate) datagrams_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) datagrams_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) truncated: AtomicU64,
    pub(crate) send_errors: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) send_buffer_full: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) recv_errors: AtomicU64,
    pub(crate) recv_calls: AtomicU64,
    pub(crate) send_calls: AtomicU64,
    /// Bytes in the loop's send queue (a gauge the loop stores).
    pub(crate) queued_bytes: AtomicU64,
    /// Bytes sent from other threads, accepted but not yet in the loop's queue.
    pub(crate) in_flight: AtomicU64,
}

impl UdpCounters {
    /// Adds `n` to a counter only the loop writes.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> UdpStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        UdpStats {
            datagrams_in: get(&self.datagrams_in),
            bytes_in: get(&self.bytes_in),
            datagrams_out: get(&self.datagrams_out),
            bytes_out: get(&self.bytes_out),
            truncated: get(&self.truncated),
            send_errors: get(&self.send_errors),
            dropped: get(&self.dropped),
            send_buffer_full: get(&self.send_buffer_full),
            refused: get(&self.refused),
            recv_errors: get(&self.recv_errors),
            recv_calls: get(&self.recv_calls),
            send_calls: get(&self.send_calls),
            queued_bytes: get(&self.queued_bytes),
        }
    }
}
