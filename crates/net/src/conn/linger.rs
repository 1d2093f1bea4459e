//! The lingering close: how a graceful close keeps its last output when the peer sent
//! bytes nobody will read.
//!
//! Closing a TCP socket whose receive queue still holds data makes the kernel abort the
//! connection: it sends a reset instead of a FIN and throws away what is still in the
//! send queue, the tail of the output the application was promised would be delivered
//! ([`ConnCtx::close_after_flush`](super::ConnCtx::close_after_flush), a graceful
//! server shutdown's hook). The same happens when input arrives at a socket closed
//! already. So a graceful close (the output written, or nothing to write) first reads
//! and drops what the peer sent:
//!
//! - nothing was waiting, or its end of stream came with it: close at once (the common
//!   case: no more system calls than one `recv`). Asked from the message callback, that
//!   waits for the callback to return, and holds only if it left none of the input
//!   unread (over TLS, plaintext rustls still holds past `max_input` is unread input
//!   too): input left behind the close (frames pipelined after a `QUIT`) says the peer
//!   may be sending still, and the close lingers as below;
//! - bytes were waiting: the peer may be sending still (pipelined requests, an upload the
//!   application refused), so half-close (`shutdown(SHUT_WR)`, the FIN after the last
//!   output) and go on reading and dropping until the peer's end of stream, an error, or
//!   the `close_linger` bound (default [`CLOSE_LINGER`](crate::defaults::CLOSE_LINGER)),
//!   then close. A well-behaved peer closes once it has read our FIN, that is after the
//!   whole output; a peer that never does is cut off at the bound. The bound is extended
//!   by another period each time it finds the peer still taking our output (fewer bytes
//!   unacknowledged in the send queue than when it was set: `ioctl(SIOCOUTQ)`), so a slow
//!   reader of a large last reply is not cut off while it reads.
//!
//! Meanwhile the connection is `Disconnecting` ([`WriteSide::Lingering`]): sends are
//! refused, no callback sees the dropped input, and the close callbacks run once, at the
//! end, with the reason the close was asked for (or the socket error that ended it).
//! This is what Apache and nginx call a lingering close. `close_linger(Duration::ZERO)`
//! turns it off; [`ConnCtx::force_close`](super::ConnCtx::force_close) never lingers.

use std::io::{self, IoSliceMut};

use duo_reactor::{Channel, EventLoop};

use super::callbacks::Told;
use super::machine::{LoopConn, Machine, ReadSide, WriteSide};
use super::{ConnState, TcpConnection};
use crate::close_reason::CloseReason;
use crate::per_loop::NetLoop;

/// Bytes dropped per `recv` while lingering.
const DISCARD_CHUNK: usize = 16 << 10;

/// What reading and dropping the peer's input found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Discarded {
    /// The receive queue was empty: nothing had to be dropped.
    Nothing,
    /// Bytes were dropped, then the queue was empty.
    Some,
    /// The read budget ran out with bytes still coming.
    Budget,
    /// The peer's end of stream (`None`) or a socket error ended the reading.
    End(Option<io::ErrorKind>),
}

impl Machine {
    /// Closes with `reason` once the output is written (or there was none), without
    /// letting input nobody read turn the close into a reset: see the module
    /// documentation.
    pub(super) fn close_gracefully(
        &mut self,
        lp: &mut EventLoop,
        ch: &mut Channel,
        reason: CloseReason,
    ) {
        let linger = self.owner.config.close_linger;
        if linger.is_zero()
            || self.read == ReadSide::Eof
            || matches!(self.write, WriteSide::Gone { .. })
        {
            self.close(lp, ch, reason);
            return;
        }
        match self.discard_input(ch) {
            Discarded::Nothing if !self.told.has(Told::DELIVERING) => self.close(lp, ch, reason),
            Discarded::End(error) => self.close(lp, ch, error.map_or(reason, CloseReason::Error)),
            more => {
                // Asked from the message callback with nothing waiting in the socket: the
                // peer may be sending still what follows the input being handled (a
                // client pipelining behind a QUIT). It lingers; once the callback returns,
                // it closes at once if the callback left none of the input unread.

                if self.write != WriteSide::Shut {
                    if let Err(e) = duo_sys::shutdown_write(ch.fd()) {
                        duo_reactor::log_limited!(
                            log::Level::Debug,
                            "{}: shutdown: {e}",
                            self.handle.name()
                        );
                    }
                }
                log::debug!(
                    "{}: closing with unread input; lingering up to {linger:?} for the peer's end of stream",
                    self.handle.name()
                );
                self.write = WriteSide::Lingering {
                    reason,
                    unless_drained: more == Discarded::Nothing,
                };
                if self.handle.state() == ConnState::Connected {
                    // (Nothing was queued, so no drain made it `Disconnecting` yet.)
                    self.handle.set_state(ConnState::Disconnecting);
                }
                // The linger has its own bound: no idle timeout ends it with another
                // reason.
                if let Some(key) = self.owner.idle_key {
                    NetLoop::idle_forget(lp, key, ch.token());
                }
                self.arm_linger(lp, ch);
                if self.read != ReadSide::Open {
                    // Backpressure is moot with the output written; a parked hang-up is
                    // read (and dropped) now like any input.
                    self.set_read(ReadSide::Open);
                    ch.set_edge_triggered(self.owner.config.edge_triggered);
                }
                ch.enable_reading();
                if more == Discarded::Budget {
                    self.queue_linger_read(lp, ch);
                }
            }
        }
    }

    /// Sets the linger timer for one `close_linger` period, noting how much of our output
    /// the peer has not acknowledged yet. The timer holds the connection weakly: one that
    /// closed meanwhile is not kept alive by it (nor its context).
    fn arm_linger(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        let unacked = duo_sys::bytes_unacknowledged(ch.fd()).unwrap_or(0);
        let conn = self.handle.downgrade();
        lp.run_after(self.owner.config.close_linger, move |lp| {
            if let Some(handle) = conn.upgrade() {
                linger_expired(lp, &handle, unacked);
            }
        });
    }

    /// Reads and drops what the socket has, within the read budget.
    fn discard_input(&mut self, ch: &mut Channel) -> Discarded {
        let mut chunk = [0u8; DISCARD_CHUNK];
        let mut dropped = 0usize;
        loop {
            if dropped >= self.owner.config.read_budget {
                return Discarded::Budget;
            }
            match duo_sys::recv_vectored(ch.fd(), &mut [IoSliceMut::new(&mut chunk)]) {
                Ok(0) => return Discarded::End(None),
                Ok(n) => {
                    dropped += n;
                    self.owner.counters.add_in(n);
                    ch.progressed();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return if dropped == 0 {
                        Discarded::Nothing
                    } else {
                        Discarded::Some
                    };
                }
                Err(e) => return Discarded::End(Some(self.gone_error().unwrap_or(e.kind()))),
            }
        }
    }

    /// Reading (and dropping) goes on after the other events of this iteration.
    fn queue_linger_read(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        let token = ch.token();
        lp.queue_in_loop(move |lp| {
            lp.with_handler::<LoopConn, _>(token, |lp, ch, conn| conn.m.linger_read(lp, ch));
        });
    }

    /// The socket of a lingering connection is readable: drop what came, close at the
    /// peer's end of stream or an error.
    pub(super) fn linger_read(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        let WriteSide::Lingering { reason, .. } = self.write else {
            return;
        };
        if self.closed() {
            return;
        }
        match self.discard_input(ch) {
            Discarded::Nothing | Discarded::Some => {}
            Discarded::Budget => self.queue_linger_read(lp, ch),
            Discarded::End(error) => self.close(lp, ch, error.map_or(reason, CloseReason::Error)),
        }
    }
}

/// A `close_linger` period passed before the peer ended its stream: another period if
/// the peer took some of our output during this one (`unacked`: what it had not
/// acknowledged when the period began), else close anyway.
fn linger_expired(lp: &mut EventLoop, handle: &TcpConnection, unacked: usize) {
    LoopConn::with_machine(lp, handle, |lp, ch, m| {
        let WriteSide::Lingering { reason, .. } = m.write else {
            return;
        };
        if m.closed() {
            return;
        }
        let now = duo_sys::bytes_unacknowledged(ch.fd()).unwrap_or(0);
        if now > 0 && now < unacked {
            m.arm_linger(lp, ch);
            return;
        }
        duo_reactor::log_limited!(
            log::Level::Debug,
            "{}: the peer did not end its stream within the close linger; closing",
            m.handle.name()
        );
        m.close(lp, ch, reason);
    });
}
