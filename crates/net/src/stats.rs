//! Counters: [`ServerStats`], and the per-loop counters behind it ([`LoopStats`]: bytes
//! moved and connections closed, by [`CloseReason`]).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::close_reason::CloseReason;

/// The number of [`CloseReason`] kinds counted apart (every `Error` counts as one).
const REASONS: usize = 10;

/// Where `reason` is counted: its index in [`IoCounters::closes`] and
/// [`CloseCounts::as_array`].
fn slot(reason: CloseReason) -> usize {
    match reason {
        CloseReason::Peer => 0,
        CloseReason::Error(_) => 1,
        CloseReason::Idle => 2,
        CloseReason::User => 3,
        CloseReason::Shutdown => 4,
        CloseReason::InputTooLarge => 5,
        CloseReason::OutputLimit => 6,
        CloseReason::OutOfMemory => 7,
        CloseReason::Panic => 8,
        CloseReason::Tls(_) => 9,
    }
}

/// What one server's (or client's) connections did on one loop. Written only by that
/// loop's thread (plain load + store, no locked instruction on the hot path), read by
/// anyone.
#[derive(Debug, Default)]
pub(crate) struct IoCounters {
    /// The loop's name ([`duo_reactor::LoopHandle::name`]); empty for a client's.
    loop_name: String,
    opened: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    /// Bytes in output buffers (a gauge: added as they are queued, taken as they are
    /// written or dropped).
    output_queued: AtomicU64,
    /// Connections whose reading is paused by backpressure (a gauge).
    backpressured: AtomicU64,
    closes: [AtomicU64; REASONS],
}

impl IoCounters {
    /// Counters of the loop named `loop_name`.
    pub(crate) fn named(loop_name: &str) -> IoCounters {
        IoCounters {
            loop_name: loop_name.to_owned(),
            ..IoCounters::default()
        }
    }
    fn add(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
    fn sub(counter: &AtomicU64, n: u64) {
        let v = counter.load(Ordering::Relaxed);
        debug_assert!(v >= n, "gauge below zero");
        counter.store(v.saturating_sub(n), Ordering::Relaxed);
    }
    pub(crate) fn add_opened(&self) {
        Self::add(&self.opened, 1);
    }
    pub(crate) fn add_message_in(&self) {
        Self::add(&self.messages_in, 1);
    }
    pub(crate) fn add_message_out(&self) {
        Self::add(&self.messages_out, 1);
    }
    pub(crate) fn queued(&self, n: usize) {
        Self::add(&self.output_queued, n as u64);
    }
    pub(crate) fn unqueued(&self, n: usize) {
        Self::sub(&self.output_queued, n as u64);
    }
    pub(crate) fn backpressure(&self, paused: bool) {
        if paused {
            Self::add(&self.backpressured, 1);
        } else {
            Self::sub(&self.backpressured, 1);
        }
    }
    pub(crate) fn add_in(&self, n: usize) {
        Self::add(&self.bytes_in, n as u64);
    }
    pub(crate) fn add_out(&self, n: usize) {
        Self::add(&self.bytes_out, n as u64);
    }
    pub(crate) fn add_close(&self, reason: CloseReason) {
        Self::add(&self.closes[slot(reason)], 1);
    }
    /// Connections open on this loop now (established, not yet closed), read from any
    /// thread: what an acceptor balancing its loops compares. A close counted between the
    /// two reads can make it one low.
    pub(crate) fn open_now(&self) -> u64 {
        let opened = self.opened.load(Ordering::Relaxed);
        let closed: u64 = self.closes.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        opened.saturating_sub(closed)
    }
    pub(crate) fn snapshot(&self) -> LoopStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LoopStats {
            loop_name: self.loop_name.clone(),
            opened: load(&self.opened),
            messages_in: load(&self.messages_in),
            messages_out: load(&self.messages_out),
            output_queued: load(&self.output_queued),
            backpressured: load(&self.backpressured),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            closes: CloseCounts::from_array(
                self.closes.each_ref().map(|c| c.load(Ordering::Relaxed)),
            ),
        }
    }
}

/// Connections closed, by [`CloseReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloseCounts {
    /// [`CloseReason::Peer`].
    pub peer: u64,
    /// [`CloseReason::Error`], whatever the error.
    pub error: u64,
    /// [`CloseReason::Idle`].
    pub idle: u64,
    /// [`CloseReason::User`].
    pub user: u64,
    /// [`CloseReason::Shutdown`].
    pub shutdown: u64,
    /// [`CloseReason::InputTooLarge`].
    pub input_too_large: u64,
    /// [`CloseReason::OutputLimit`].
    pub output_limit: u64,
    /// [`CloseReason::OutOfMemory`].
    pub out_of_memory: u64,
    /// [`CloseReason::Panic`].
    pub panic: u64,
    /// [`CloseReason::Tls`], whatever the failure.
    pub tls: u64,
}

impl CloseCounts {
    /// Closes counted for `reason` (for [`CloseReason::Error`], every error).
    pub fn of(&self, reason: CloseReason) -> u64 {
        self.as_array()[slot(reason)]
    }

    /// All closes.
    pub fn total(&self) -> u64 {
        self.as_array().iter().sum()
    }

    /// The counts in the order of [`slot`].
    fn as_array(&self) -> [u64; REASONS] {
        [
            self.peer,
            self.error,
            self.idle,
            self.user,
            self.shutdown,
            self.input_too_large,
            self.output_limit,
            self.out_of_memory,
            self.panic,
            self.tls,
        ]
    }

    fn from_array(c: [u64; REASONS]) -> CloseCounts {
        let [peer, error, idle, user, shutdown, input_too_large, output_limit, out_of_memory, panic, tls] =
            c;
        CloseCounts {
            peer,
            error,
            idle,
            user,
            shutdown,
            input_too_large,
            output_limit,
            out_of_memory,
            panic,
            tls,
        }
    }

    fn sum(&self, other: &CloseCounts) -> CloseCounts {
        let (a, b) = (self.as_array(), other.as_array());
        CloseCounts::from_array(std::array::from_fn(|i| a[i] + b[i]))
    }
}

/// Connection counters of a server: `accepted`, `handed_over`, `rejected`, `emfile`,
/// `accept_errors` and `full_pauses` are written by whichever loop accepts (every I/O loop in the shared and
/// reuse-port modes, hence `fetch_add`), `closed` and `active` by the loop each connection
/// closes on.
#[derive(Debug, Default)]
pub(crate) struct AcceptCounters {
    pub(crate) accepted: AtomicU64,
    pub(crate) handed_over: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) emfile: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
    pub(crate) full_pauses: AtomicU64,
    pub(crate) active: AtomicU64,
}

impl AcceptCounters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the connections of one server (or client) did on one loop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoopStats {
    /// The loop's name ([`duo_reactor::LoopHandle::name`], the label of its own
    /// figures); empty for a client.
    pub loop_name: String,
    /// Connections established on this loop.
    pub opened: u64,
    /// Bytes read from connections (as on the wire: ciphertext for TLS).
    pub bytes_in: u64,
    /// Bytes written to connections (as on the wire: ciphertext for TLS).
    pub bytes_out: u64,
    /// Input deliveries: calls of the message callback (each with whatever a read brought:
    /// a stream has no message boundaries of its own; a codec counts frames itself).
    pub messages_in: u64,
    /// Sends: calls of `send` (and its variants) that were accepted.
    pub messages_out: u64,
    /// Bytes queued in output buffers now, waiting for the peers to take them.
    pub output_queued: u64,
    /// Connections whose reading is paused now because their output passed the
    /// high-water mark (backpressure).
    pub backpressured: u64,
    /// Connections closed, by reason.
    pub closes: CloseCounts,
}

/// A snapshot of a server's counters ([`TcpServer::stats`](crate::TcpServer::stats)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections accepted on one loop and handed to another to be served: every one
    /// when the main loop accepts ([`AcceptMode::MainLoop`](crate::AcceptMode::MainLoop)),
    /// those accepted while the accepting loop held clearly more than the least loaded
    /// one in the default [`AcceptMode::Shared`](crate::AcceptMode::Shared), none with
    /// [`AcceptMode::ReusePort`](crate::AcceptMode::ReusePort).
    pub handed_over: u64,
    /// Connections open now.
    pub active: u64,
    /// Connections closed.
    pub closed: u64,
    /// Connections accepted and closed at once because `max_connections` was reached.
    pub rejected: u64,
    /// Times `accept` failed for lack of descriptors (`EMFILE`/`ENFILE`): each time one
    /// pending connection was accepted and closed so the loop would not spin, or, when no
    /// spare descriptor could be freed for that, accepting paused on that loop briefly
    /// (the connection waits in the queue).
    pub fd_exhausted: u64,
    /// `accept` errors other than running out of descriptors: a connection lost before
    /// it was accepted (`ECONNABORTED`, `EPROTO`, ...: accepting goes on at once), or a
    /// failure of the listener (accepting pauses on that loop briefly).
    pub accept_errors: u64,
    /// Times the server stopped accepting because it was full
    /// ([`WhenFull::Pause`](crate::WhenFull::Pause)).
    pub full_pauses: u64,
    /// Bytes per I/O loop, in the order of the loops.
    pub per_loop: Vec<LoopStats>,
}

impl LoopStats {
    /// Connections open on this loop now (established and not yet closed).
    pub fn open(&self) -> u64 {
        self.opened.saturating_sub(self.closes.total())
    }
}

impl ServerStats {
    /// Bytes read over all loops.
    pub fn bytes_in(&self) -> u64 {
        self.per_loop.iter().map(|l| l.bytes_in).sum()
    }
    /// Bytes written over all loops.
    pub fn bytes_out(&self) -> u64 {
        self.per_loop.iter().map(|l| l.bytes_out).sum()
    }
    /// Bytes queued in output buffers over all loops, waiting for the peers to take them.
    pub fn output_queued(&self) -> u64 {
        self.per_loop.iter().map(|l| l.output_queued).sum()
    }
    /// Connections closed over all loops, by reason (their total is [`closed`](Self::closed)
    /// once every close has been counted: both are updated as each connection closes).
    pub fn closes(&self) -> CloseCounts {
        self.per_loop
            .iter()
            .fold(CloseCounts::default(), |acc, l| acc.sum(&l.closes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_is_counted_in_its_own_field() {
        let reasons = [
            CloseReason::Peer,
            CloseReason::Error(std::io::ErrorKind::ConnectionReset),
            CloseReason::Idle,
            CloseReason::User,
            CloseReason::Shutdown,
            CloseReason::InputTooLarge,
            CloseReason::OutputLimit,
            CloseReason::OutOfMemory,
            CloseReason::Panic,
            CloseReason::Tls(crate::TlsFailure::Truncated),
        ];
        let counters = IoCounters::default();
        for (i, &reason) in reasons.iter().enumerate() {
            for _ in 0..=i {
                counters.add_close(reason);
            }
        }
        counters.add_close(CloseReason::Error(std::io::ErrorKind::TimedOut));
        let closes = counters.snapshot().closes;
        assert_eq!(closes.peer, 1);
        assert_eq!(closes.error, 3, "every error kind counts as an error");
        assert_eq!(closes.panic, 9);
        for (i, &reason) in reasons.iter().enumerate().skip(2) {
            assert_eq!(closes.of(reason), i as u64 + 1, "{reason:?}");
        }
        assert_eq!(closes.tls, 10);
        assert_eq!(closes.total(), 56);
        let both = ServerStats {
            per_loop: vec![counters.snapshot(), counters.snapshot()],
            ..ServerStats::default()
        };
        assert_eq!(both.closes().total(), 112);
        assert_eq!(both.closes().idle, 6);
    }
}
