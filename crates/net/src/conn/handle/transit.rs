//! The output limit as sends from other threads see it: what they have sent and the loop
//! has not taken yet is counted against it (see [`TcpConnection::send`]).

use std::sync::atomic::Ordering;

use super::{ConnCtx, ConnectionClosed, TcpConnection, NO_SEND_LIMIT};
use crate::close_reason::CloseReason;

/// Flag bit of `send_limit`: past the limit the connection closes
/// ([`OutputLimit::Close`](crate::OutputLimit::Close)); without it the send is discarded.
const LIMIT_CLOSES: usize = 1 << (usize::BITS - 1);
/// `in_transit` once a send from another thread passed a closing limit: the close is
/// queued, and every later send is refused (values near it, after the releases of sends
/// queued before, mean the same).
const TRANSIT_CLOSING: usize = usize::MAX;

/// What [`TcpConnection::admit`] decided for a send from another thread.
enum Admission {
    /// Queue it; `counted`: its bytes are in transit until the loop takes them.
    Queue { counted: bool },
    /// Past a discarding limit: dropped here.
    Discard,
    /// Past a closing limit: the close was queued (by this send or an earlier one).
    Closing,
}

impl TcpConnection {
    /// Queues `send`, which sends `n` bytes on the loop, if the output limit admits them
    /// (see [`send`](TcpConnection::send)).
    pub(super) fn queue_send(
        &self,
        n: usize,
        send: impl FnOnce(&mut ConnCtx<'_>) + Send + 'static,
    ) -> Result<(), ConnectionClosed> {
        match self.admit(n) {
            Admission::Queue { counted } => self.queue_in_loop(move |ctx| {
                if counted {
                    ctx.connection().release_in_transit(n);
                }
                send(ctx);
            }),
            Admission::Discard => Ok(()),
            Admission::Closing => Err(ConnectionClosed),
        }
    }

    /// Counts `n` bytes sent from another thread against the output limit (see
    /// [`send`](TcpConnection::send)). As on the loop, one message is taken whatever its
    /// size when nothing else is in transit.
    fn admit(&self, n: usize) -> Admission {
        let limit = self.shared.send_limit.load(Ordering::Relaxed);
        if limit == NO_SEND_LIMIT {
            return Admission::Queue { counted: false };
        }
        let closes = limit & LIMIT_CLOSES != 0;
        let limit = limit & !LIMIT_CLOSES;
        let transit = &self.shared.in_transit;
        let before = transit.fetch_add(n, Ordering::AcqRel);
        if before >= TRANSIT_CLOSING / 2 {
            transit.fetch_sub(n, Ordering::AcqRel);
            return Admission::Closing;
        }
        if before == 0 || before.saturating_add(n) <= limit {
            return Admission::Queue { counted: true };
        }
        transit.fetch_sub(n, Ordering::AcqRel);
        if !closes {
            duo_reactor::log_limited!(
                log::Level::Trace,
                "{}: output limit {limit}: {n} bytes sent from another thread discarded",
                self.name()
            );
            return Admission::Discard;
        }
        if transit.swap(TRANSIT_CLOSING, Ordering::AcqRel) < TRANSIT_CLOSING / 2 {
            duo_reactor::log_limited!(
                log::Level::Info,
                "{}: {before} bytes sent from other threads not yet queued (limit {limit}); closing",
                self.name()
            );
            let _ = self.queue_in_loop(|ctx| ctx.close(CloseReason::OutputLimit));
        }
        Admission::Closing
    }

    /// The loop took `n` bytes sent from another thread.
    fn release_in_transit(&self, n: usize) {
        self.shared.in_transit.fetch_sub(n, Ordering::AcqRel);
    }

    /// Sets the output limit sends from other threads are held to (when the connection
    /// is registered, before any of them).
    pub(crate) fn set_output_limit(&self, limit: Option<(usize, crate::OutputLimit)>) {
        let value = match limit {
            None => NO_SEND_LIMIT,
            Some((bytes, policy)) => {
                let bytes = bytes.min(!LIMIT_CLOSES - 1);
                match policy {
                    crate::OutputLimit::Close => bytes | LIMIT_CLOSES,
                    crate::OutputLimit::Discard => bytes,
                }
            }
        };
        self.shared.send_limit.store(value, Ordering::Relaxed);
    }
}
