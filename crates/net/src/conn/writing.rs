//! The sending half of a connection's loop side: direct writes, the output buffer, the
//! output limit, backpressure, write-complete notices. (State and transitions:
//! [`super::machine`].)

use std::io::{self, IoSlice};
use std::sync::Arc;

use duo_reactor::{Channel, EventLoop};

use super::machine::{LoopConn, Machine, ReadSide, WriteSide};
use crate::close_reason::CloseReason;
use crate::config::{Backpressure, OutputLimit};

/// The shortest unsent rest of a shared message ([`ConnCtx::send_shared`], a broadcast)
/// that is queued by reference; a shorter one is copied into the output blocks.
///
/// [`ConnCtx::send_shared`]: crate::ConnCtx::send_shared
pub(crate) const SHARE_MIN: usize = 512;

impl Machine {
    /// A write failed: the peer is gone (reset, or closed for reading). The input it sent
    /// before is still read; the close follows its end of stream (or the hang-up's event).
    pub(super) fn write_failed(&mut self, lp: &mut EventLoop, ch: &mut Channel, e: &io::Error) {
        duo_reactor::log_limited!(log::Level::Debug, "{}: write: {e}", self.handle.name());
        self.peer_gone(lp, ch, Some(e.kind()));
        if self.read == ReadSide::Eof && !self.closed() {
            let reason = self.peer_reason();
            self.close(lp, ch, reason);
        }
    }

    /// Queues `parts` for sending (or, with `shared`, the one shared message `parts`
    /// views), writing directly when nothing is queued.
    pub(super) fn send(
        &mut self,
        lp: &mut EventLoop,
        ch: &mut Channel,
        parts: &[&[u8]],
        shared: Option<Arc<[u8]>>,
    ) -> bool {
        if self.write != WriteSide::Open || self.closed() {
            return false;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if self.refused_by_limit(lp, ch, parts, total) {
            return false;
        }
        // TLS: the limit was checked on the most the records can take, before
        // encrypting (records once made must all be sent, or the stream breaks).
        #[cfg(feature = "tls")]
        if self.tls.is_some() {
            return self.send_tls(lp, ch, parts);
        }
        self.send_wire(lp, ch, parts, shared)
    }

    /// Whether the [`OutputLimit`] refuses `parts` (`total` bytes, over TLS the most
    /// bytes their records take) more (and the connection is closed if its policy says
    /// so).
    fn refused_by_limit(
        &mut self,
        lp: &mut EventLoop,
        ch: &mut Channel,
        parts: &[&[u8]],
        total: usize,
    ) -> bool {
        if let Some((limit, policy)) = self.owner.config.output_limit {
            #[cfg(feature = "tls")]
            let wire = |m: &Machine| m.wire_len(parts, total);
            #[cfg(not(feature = "tls"))]
            let wire = |_: &Machine| {
                let _ = parts;
                total
            };
            if !self.output.is_empty() && self.output.len() + wire(self) > limit {
                match policy {
                    OutputLimit::Close => {
                        duo_reactor::log_limited!(
                            log::Level::Info,
                            "{}: {} bytes of output queued (limit {limit}); closing",
                            self.handle.name(),
                            self.output.len()
                        );
                        self.close(lp, ch, CloseReason::OutputLimit);
                    }
                    OutputLimit::Discard => duo_reactor::log_limited!(
                        log::Level::Trace,
                        "{}: output limit {limit}: {total} bytes discarded",
                        self.handle.name()
                    ),
                }
                return true;
            }
        }
        false
    }

    /// [`send`](Machine::send) of bytes as they go on the wire (for TLS: the records),
    /// after the checks.
    pub(super) fn send_wire(
        &mut self,
        lp: &mut EventLoop,
        ch: &mut Channel,
        parts: &[&[u8]],
        shared: Option<Arc<[u8]>>,
    ) -> bool {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut written = 0;
        if self.output.is_empty() && !ch.is_writing() {
            // No allocation: up to 8 pieces go out in one call; any further pieces are
            // buffered below like any unwritten rest.
            let mut slices = [IoSlice::new(&[]); 8];
            let count = parts.len().min(slices.len());
            for (slot, part) in slices.iter_mut().zip(parts) {
                *slot = IoSlice::new(part);
            }
            match duo_sys::send_vectored(ch.fd(), &slices[..count]) {
                Ok(n) => {
                    written = n;
                    self.owner.counters.add_out(n);
                    ch.progressed();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    self.write_failed(lp, ch, &e);
                    return false;
                }
            }
        }
        if written == total {
            self.owner.counters.add_message_out();
            if self.owner.callbacks.write_complete.is_some() && !self.complete_queued {
                // Queued, not called: a callback that sends again from write-complete
                // would otherwise recurse without bound. One notice covers every send
                // made before it runs.
                self.complete_queued = true;
                let token = ch.token();
                lp.queue_in_loop(move |lp| {
                    lp.with_handler::<LoopConn, _>(token, |lp, ch, conn| {
                        // A later send may have left output queued meanwhile (which
                        // cancelled this notice): then the flush that drains it reports
                        // completion, not this notice.
                        if std::mem::take(&mut conn.m.complete_queued) && conn.m.output.is_empty() {
                            conn.m.write_complete(lp, ch)
                        }
                    });
                });
            }
            return true;
        }
        let before = self.output.len();
        // A short shared message is copied: queued by reference, each costs a chunk (its
        // slot, and the sender's `Arc` kept alive) for a few bytes counted against the
        // output limit and high-water mark, so a peer that never reads held several
        // times what they count when the messages were small (16 bytes: six times).
        let by_reference = shared.filter(|data| data.len() - written >= SHARE_MIN);
        if let Some(data) = by_reference {
            self.output.push_shared(data, written);
        } else {
            let mut skip = written;
            for part in parts {
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                if let Err(e) = self.output.append(&part[skip..]) {
                    // What did fit is counted, so that the close takes it off again.
                    self.owner.counters.queued(self.output.len() - before);
                    duo_reactor::log_limited!(
                        log::Level::Error,
                        "{}: cannot buffer output: {e}; closing",
                        self.handle.name()
                    );
                    self.close(lp, ch, CloseReason::OutOfMemory);
                    return false;
                }
                skip = 0;
            }
        }
        ch.enable_writing();
        // The flush that empties the output reports completion; a queued notice of an
        // earlier whole send would report it too early or twice.
        self.complete_queued = false;
        let after = self.output.len();
        self.owner.counters.add_message_out();
        self.owner.counters.queued(after - before);
        let hwm = self.owner.config.high_water;
        if after > hwm
            && self.read == ReadSide::Open
            && self.owner.config.backpressure == Backpressure::PauseReading
        {
            // Backpressure: stop reading until the peer drains what we owe it.
            self.set_read(ReadSide::Backpressured);
            self.sync_reading(ch);
        }
        if before <= hwm && after > hwm {
            let owner = self.owner.clone();
            if let Some(cb) = owner.callbacks.high_water_mark.as_deref() {
                if self
                    .run_guarded(lp, ch, "high-water-mark callback", |ctx| cb(ctx, after))
                    .is_none()
                {
                    return false;
                }
            }
        }
        true
    }

    /// Writes as much of the output buffer as the socket takes.
    pub(super) fn flush(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        if !ch.is_writing() || matches!(self.write, WriteSide::Gone { .. }) {
            return;
        }
        loop {
            match self.output.send_to(ch.fd()) {
                Ok(n) => {
                    self.owner.counters.add_out(n);
                    self.owner.counters.unqueued(n);
                    ch.progressed();
                    if self.owner.config.idle_refresh_on_read {
                        // A peer still taking queued output (a slow download) is not
                        // idle, even if it sends nothing.
                        self.idle_refresh(lp, ch.token());
                    }
                    if self.output.is_empty() {
                        ch.disable_writing();
                        self.resume_if_drained(lp, ch);
                        self.write_complete(lp, ch);
                        if self.closed() {
                            // The callback closed the connection (`force_close`, or a
                            // panic): that ends it; no drain goes on to read and drop
                            // input, half-close or linger on a closed connection.
                            return;
                        }
                        // The callback may have sent more (and asked for a shutdown or a
                        // close after it): then the drain is not over yet; the flush that
                        // empties the output again finishes it.
                        if let (WriteSide::Draining(then), true) =
                            (self.write, self.output.is_empty())
                        {
                            self.drained(lp, ch, then);
                        }
                        return;
                    }
                    self.resume_if_drained(lp, ch);
                    if !self.owner.config.edge_triggered {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.write_failed(lp, ch, &e);
                    return;
                }
            }
        }
    }

    fn resume_if_drained(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        if self.read == ReadSide::Backpressured && self.output.len() <= self.owner.config.low_water
        {
            self.set_read(ReadSide::Open);
            self.reading_changed(lp, ch);
        }
    }

    fn write_complete(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        // (A TLS connection's handshake flights are no output of the application.)
        if self.closed() || !self.is_up() {
            return;
        }
        let owner = self.owner.clone();
        if let Some(cb) = owner.callbacks.write_complete.as_deref() {
            self.run_guarded(lp, ch, "write-complete callback", |ctx| cb(ctx));
        }
    }
}
