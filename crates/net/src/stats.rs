//! Server counters: [`ServerStats`] and the per-loop byte counters behind it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes moved by one server's connections on one loop. Written only by that loop's
/// thread (plain load + store, no locked instruction on the hot path), read by anyone.
#[derive(Debug, Default)]
pub(crate) struct IoCounters {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl IoCounters {
    fn add(counter: &AtomicU64, n: usize) {
        counter.store(
            counter.load(Ordering::Relaxed) + n as u64,
            Ordering::Relaxed,
        );
    }
    pub(crate) fn add_in(&self, n: usize) {
        Self::add(&self.bytes_in, n);
    }
    pub(crate) fn add_out(&self, n: usize) {
        Self::add(&self.bytes_out, n);
    }
    pub(crate) fn snapshot(&self) -> LoopStats {
        LoopStats {
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }
}

/// Connection counters of the acceptor, written only by the main loop.
#[derive(Debug, Default)]
pub(crate) struct AcceptCounters {
    pub(crate) accepted: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) emfile: AtomicU64,
    pub(crate) active: AtomicU64,
}

impl AcceptCounters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Bytes moved on one loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopStats {
    /// Bytes read from connections.
    pub bytes_in: u64,
    /// Bytes written to connections.
    pub bytes_out: u64,
}

/// A snapshot of a server's counters ([`TcpServer::stats`](crate::TcpServer::stats)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections open now.
    pub active: u64,
    /// Connections closed.
    pub closed: u64,
    /// Connections accepted and closed at once because `max_connections` was reached.
    pub rejected: u64,
    /// Times `accept` failed for lack of descriptors (`EMFILE`/`ENFILE`); each time one
    /// pending connection was accepted and closed so the loop would not spin.
    pub fd_exhausted: u64,
    /// Bytes per I/O loop, in the order of the loops.
    pub per_loop: Vec<LoopStats>,
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
}
