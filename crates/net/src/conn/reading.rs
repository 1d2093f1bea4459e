//! The receiving half of a connection's loop side: reading within a budget, delivering to
//! the message callback, holding input a pause caught, and the peer's end of stream.
//! (State and transitions: [`super::machine`].)

use std::cell::Cell;
use std::io;
use std::time::Duration;

use duo_buffer::{BufferError, InputBuffer, PoolError, ReadOutcome};
use duo_reactor::{Channel, EventLoop, LogLimiter};

use super::callbacks::Told;
use super::machine::{AfterDrain, LoopConn, Machine, ReadSide, WriteSide};
use crate::close_reason::CloseReason;

/// Connections closed for input their message callback did not consume: a peer can
/// cause as many as it opens.
static INPUT_TOO_LARGE: LogLimiter = LogLimiter::new("input too large");

/// Reads the buffer pool refused for now: every connection of a loop may wait at once.
static POOL_FULL: LogLimiter = LogLimiter::new("buffer pool full");

/// How long a connection whose read the buffer pool refused (it is capped, and full for
/// now) waits before reading again.
pub(crate) const POOL_RETRY: Duration = Duration::from_millis(20);

/// How long (counted in [`POOL_RETRY`]s) a connection waits for the pool with nothing
/// delivered meanwhile before it gives up (`OutOfMemory`): connections that each hold a
/// block while waiting for a bigger one can wait for each other's memory for ever, and
/// one giving up frees memory for the others.
pub(crate) const POOL_WAIT_LIMIT: Duration = Duration::from_secs(2);

thread_local! {
    /// While a retry of a read the pool refused runs (on this loop's thread), how many
    /// retries of that connection came before it with nothing delivered: the count rides
    /// with the retry timers, not in the connection, which must stay small
    /// (`handle::size_tests`).
    static RETRY_OF: Cell<u8> = const { Cell::new(0) };
}

/// Whether the pool's refusal is final: the block asked for, beside the block of the
/// input buffer (`input`, which holds it while its contents move), is larger than the
/// whole cap, so the unconsumed input can never be kept, whatever the other connections
/// give back (the connection closes `OutOfMemory`). Unsettled bytes sit in the thread's
/// spill area, which is not the pool's.
pub(super) fn never_fits(e: &PoolError, input: &InputBuffer) -> bool {
    let held = if input.is_unsettled() {
        0
    } else {
        input.capacity()
    };
    match *e {
        PoolError::Exhausted { requested, cap, .. } => requested.saturating_add(held) > cap,
        PoolError::TooLarge { .. } => true,
    }
}

impl LoopConn {
    /// Reads what the socket has, delivering it to the message callback, within the read
    /// budget of one event. `until_eagain`: a short read does not prove the socket drained
    /// (the peer's FIN may have come with the data, or this is a continuation run outside
    /// an event), so read on until `EAGAIN` or end of stream.
    pub(super) fn read_ready(&mut self, lp: &mut EventLoop, ch: &mut Channel, until_eagain: bool) {
        if matches!(self.m.write, WriteSide::Lingering { .. }) {
            // Closing: what comes now is dropped (see `linger.rs`), TLS records included.
            self.m.linger_read(lp, ch);
            return;
        }
        #[cfg(feature = "tls")]
        if self.m.tls.is_some() {
            return self.tls_read_ready(lp, ch, until_eagain);
        }
        let mut budget = self.m.owner.config.read_budget;
        if !self.m.wants_reading() {
            self.m.sync_reading(ch);
            return;
        }
        if std::mem::take(&mut self.m.held_input) && !self.deliver_and_settle(lp, ch) {
            return;
        }
        loop {
            if !self.m.wants_reading() {
                self.m.sync_reading(ch);
                return;
            }
            match self.input.recv_from(ch.fd()) {
                Ok(ReadOutcome::Data { len, drained }) => {
                    self.m.owner.counters.add_in(len);
                    ch.progressed();
                    self.m.handle.touch(lp.poll_time_nanos());
                    if self.m.owner.config.idle_refresh_on_read {
                        self.m.idle_refresh(lp, ch.token());
                    }
                    if self.m.user_paused() {
                        // Paused (from another thread) while we were reading: no callback
                        // starts after `stop_reading` returned. Keep the bytes for later.
                        self.hold_input(lp, ch);
                        return;
                    }
                    if !self.deliver_and_settle(lp, ch) || !self.m.owner.config.edge_triggered {
                        return;
                    }
                    // A short read means the socket is drained, and saves the read that
                    // would return EAGAIN, unless the peer's FIN came with the data: then
                    // no new edge will report it, so read on to see the EOF now.
                    if drained && !until_eagain {
                        return;
                    }
                    budget = budget.saturating_sub(len);
                    if budget == 0 {
                        // Enough for one event: serve the others, then read on.
                        self.queue_more_reading(lp, ch);
                        return;
                    }
                }
                Ok(ReadOutcome::WouldBlock) => return,
                Ok(ReadOutcome::Eof) => {
                    self.peer_finished(lp, ch);
                    return;
                }
                Err(BufferError::Full { limit }) => {
                    duo_reactor::log_limited!(
                        limiter: INPUT_TOO_LARGE,
                        log::Level::Warn,
                        "{}: {limit} bytes of input not consumed by the message callback; closing",
                        self.m.handle.name()
                    );
                    self.m.close(lp, ch, CloseReason::InputTooLarge);
                    return;
                }
                Err(BufferError::Io(e)) => {
                    self.m.read_failed(lp, ch, &e);
                    return;
                }
                Err(BufferError::Pool(e)) if !never_fits(&e, &self.input) => {
                    // Nothing was read: the bytes wait in the kernel (TCP flow control
                    // slows the peer) until the pool has room again.
                    let _ = self.read_when_pool_has_room(lp, ch);
                    return;
                }
                Err(e) => {
                    duo_reactor::log_limited!(
                        log::Level::Error,
                        "{}: read: {e}; closing",
                        self.m.handle.name()
                    );
                    self.m.close(lp, ch, CloseReason::OutOfMemory);
                    return;
                }
            }
        }
    }

    /// The pool refused the block a read needed (nothing was read): stops reading and
    /// tries again after [`POOL_RETRY`], when other connections may have given memory
    /// back. A retry already pending covers this one. After [`POOL_WAIT_LIMIT`] of
    /// refusals with no delivery, closes `OutOfMemory` instead (false).
    pub(super) fn read_when_pool_has_room(&mut self, lp: &mut EventLoop, ch: &mut Channel) -> bool {
        // The retries so far with nothing delivered: 0 unless a retry is running now.
        let tries = RETRY_OF.with(|r| r.replace(0));
        if u128::from(tries) * POOL_RETRY.as_nanos() >= POOL_WAIT_LIMIT.as_nanos() {
            duo_reactor::log_limited!(
                log::Level::Error,
                "{}: buffer pool full for {POOL_WAIT_LIMIT:?}; closing",
                self.m.handle.name()
            );
            self.m.close(lp, ch, CloseReason::OutOfMemory);
            return false;
        }
        duo_reactor::log_limited!(
            limiter: POOL_FULL,
            log::Level::Warn,
            "{}: buffer pool full; reading again in {POOL_RETRY:?}",
            self.m.handle.name()
        );
        // Level-triggered, the ready socket would wake the loop at once, again and again.
        ch.disable_reading();
        // `read_queued` also keeps an edge-triggered read's continuation from being queued
        // meanwhile: the retry reads on.
        if std::mem::replace(&mut self.m.read_queued, true) {
            return true;
        }
        let next = tries.saturating_add(1);
        let token = ch.token();
        lp.run_after(POOL_RETRY, move |lp| {
            lp.with_handler::<LoopConn, _>(token, |lp, ch, conn| {
                conn.m.read_queued = false;
                // Paused, the chain ends: the time until reading resumes is no wait for
                // the pool.
                if conn.m.wants_reading() {
                    conn.m.sync_reading(ch);
                    RETRY_OF.with(|r| r.set(next));
                    conn.read_ready(lp, ch, true);
                    RETRY_OF.with(|r| r.set(0));
                }
            });
        });
        true
    }

    /// Keeps what was just read in the input buffer, undelivered, until reading resumes.
    pub(super) fn hold_input(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        self.m.held_input = true;
        if self.settle_input(lp, ch) {
            self.m.sync_reading(ch);
        }
    }

    /// Hands the input to the message callback, keeps what it left (drops it if the
    /// callback ended the connection: closed, or closing after its output), and applies a
    /// pause it asked for (through its `ConnCtx` or a handle). True if the connection is
    /// still open and reading for the application.
    ///
    /// A callback that closed gracefully (`close_after_flush` with its output written)
    /// may have left the connection lingering: the socket is read again, but only to drop
    /// what comes (`linger.rs`), never for this callback, so the caller's read loop ends.
    ///
    /// Input left in the buffer while reading is paused (by the callback, a handle or
    /// backpressure) is held: no new byte may ever come to trigger the next call (a peer
    /// that sent its requests in one write waits for their answers), so the callback gets
    /// it again when reading resumes.
    ///
    /// That holds also when reading was paused during the callback and resumed (from
    /// another thread) before it returned: the callback that paused expects what it left
    /// again, and the resumption found nothing held yet to deliver. No new byte (only the
    /// peer's end of stream, which would drop it) may come to deliver it otherwise.
    pub(super) fn deliver_and_settle(&mut self, lp: &mut EventLoop, ch: &mut Channel) -> bool {
        // Progress: a wait for the pool, if any, begins anew.
        RETRY_OF.with(|r| r.set(0));
        self.m.handle.take_paused_since();
        self.deliver(lp, ch);
        let paused_meanwhile = self.m.handle.take_paused_since();
        if self.m.closed()
            || matches!(
                self.m.write,
                WriteSide::Lingering { .. } | WriteSide::Draining(AfterDrain::Close(_))
            )
        {
            // The callback ended the connection: reading stopped for good, so what it left
            // will never be delivered. Settling it would ask the pool for a block it does
            // not need, and a refusal would close at once, dropping the reply the close
            // promised to write (or the lingering close's reason).
            self.input.consume_all();
        }
        if !self.settle_input(lp, ch) || ch.is_removed() || self.m.closed() {
            return false;
        }
        self.m.sync_reading(ch);
        if matches!(
            self.m.write,
            WriteSide::Lingering { .. } | WriteSide::Draining(AfterDrain::Close(_))
        ) {
            return false;
        }
        let left = !self.input.is_empty();
        if ch.is_reading() && !(paused_meanwhile && left) {
            return true;
        }
        if left {
            self.m.held_input = true;
            // Resumed already (its queued resumption may have found nothing held): the
            // delivery is queued here, once.
            self.m.reading_changed(lp, ch);
        }
        false
    }

    /// Moves bytes a callback left in the thread's read area to a block of their own
    /// (usually there are none: nothing is copied); false if that failed and the
    /// connection was closed.
    fn settle_input(&mut self, lp: &mut EventLoop, ch: &mut Channel) -> bool {
        match self.input.settle() {
            Ok(()) => true,
            Err(e) => {
                duo_reactor::log_limited!(
                    log::Level::Error,
                    "{}: cannot keep unparsed input: {e}; closing",
                    self.m.handle.name()
                );
                self.m.close(lp, ch, CloseReason::OutOfMemory);
                false
            }
        }
    }

    /// Queues the rest of an edge-triggered read for after the other events of this
    /// iteration (no further edge would report what is left).
    pub(super) fn queue_more_reading(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        if std::mem::replace(&mut self.m.read_queued, true) {
            return;
        }
        let token = ch.token();
        lp.queue_in_loop(move |lp| {
            lp.with_handler::<LoopConn, _>(token, |lp, ch, conn| {
                conn.m.read_queued = false;
                conn.read_ready(lp, ch, true);
            });
        });
    }

    /// The peer sent EOF, after everything it sent has been delivered.
    pub(super) fn peer_finished(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        self.m.set_read(ReadSide::Eof);
        ch.disable_reading();
        // No message callback runs after the end of stream: what the last one left (a
        // partial message) is dead, and its block goes back to the pool now rather than
        // when a half-closed connection finally closes.
        self.input.consume_all();
        if matches!(self.m.write, WriteSide::Shut | WriteSide::Gone { .. }) {
            // Both directions are done.
            let reason = self.m.peer_reason();
            self.m.close(lp, ch, reason);
            return;
        }
        if self.m.write == WriteSide::Draining(AfterDrain::HalfClose) {
            // Our own shutdown is still writing its output: both directions are done
            // once it is written (`drained` then closes, with `Peer`), as after `Shut`.
            // Nothing more can be sent, so there is no half-close to decide on.
            return;
        }
        let owner = self.m.owner.clone();
        match owner.callbacks.half_close.as_deref() {
            // The application finishes its work and closes when it is done.
            Some(cb) => {
                self.m
                    .run_guarded(lp, ch, "half-close callback", |ctx| cb(ctx));
            }
            None => self.m.close_after_flush(lp, ch, CloseReason::Peer),
        }
    }

    /// Hands the input to the message callback.
    fn deliver(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        // A clone of this loop's `Owner` pointer (a cache line only this thread touches),
        // not of the callback's, whose count every I/O thread would bounce.
        let owner = self.m.owner.clone();
        let Some(cb) = owner.callbacks.message.as_deref() else {
            // Nobody wants the bytes: drop them rather than let the buffer fill.
            self.input.consume_all();
            return;
        };
        let input = &mut self.input;
        owner.counters.add_message_in();
        self.m.told.mark(Told::DELIVERING);
        self.m
            .run_guarded(lp, ch, "message callback", |ctx| cb(ctx, input));
        self.m.told.clear(Told::DELIVERING);
        if let WriteSide::Lingering {
            reason,
            unless_drained: true,
        } = self.m.write
        {
            // Over TLS, plaintext rustls still holds (decrypted from the same read, past
            // `max_input`) is input left unread too.
            #[cfg(feature = "tls")]
            let more = self.tls_more_pending();
            #[cfg(not(feature = "tls"))]
            let more = false;
            if self.input.is_empty() && !more && !self.m.closed() {
                // A graceful close asked by the callback, with nothing waiting in the
                // socket then and nothing left unread now: the peer sent no more than
                // was handled.
                self.m.close(lp, ch, reason);
            }
        }
    }
}

impl Machine {
    /// Whether a paused connection asks the kernel for the peer's half-close: only for an
    /// application that wants to know (`on_peer_half_close_while_paused`), until it was
    /// told, and not while the connection is closing anyway.
    pub(super) fn watches_paused_half_close(&self) -> bool {
        self.owner.callbacks.paused_half_close.is_some()
            && !self.told.has(Told::PAUSED_HALF_CLOSE)
            && matches!(self.read, ReadSide::Open | ReadSide::Backpressured)
            && matches!(
                self.write,
                WriteSide::Open | WriteSide::Draining(AfterDrain::HalfClose) | WriteSide::Shut
            )
            && self.is_up()
            && !self.closed()
    }

    /// The peer finished sending (half-close or hang-up) while reading is paused: tells
    /// the application and stops watching for it. What the peer sent before stays in the
    /// kernel until reading resumes. Told once that the peer finished, and once more if
    /// it is gone afterwards (a reset after its FIN): the application that let a
    /// half-closed peer be, since it may still read, must hear that it no longer can.
    pub(super) fn paused_half_close(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        let finished_before = self.told.mark(Told::PAUSED_HALF_CLOSE);
        let gone = matches!(self.write, WriteSide::Gone { .. });
        let gone_before = gone && self.told.mark(Told::PAUSED_GONE);
        if finished_before && (!gone || gone_before) {
            return;
        }
        let owner = self.owner.clone();
        if let Some(cb) = owner.callbacks.paused_half_close.as_deref() {
            self.run_guarded(lp, ch, "paused half-close callback", |ctx| cb(ctx));
        }
        if !self.closed() {
            self.sync_reading(ch);
        }
    }

    /// A read from the socket failed: the connection ends with the socket's error (or
    /// the error that already made the peer gone). The kernel reports an error only once
    /// the receive queue is empty: nothing the peer sent is left behind.
    pub(super) fn read_failed(&mut self, lp: &mut EventLoop, ch: &mut Channel, e: &io::Error) {
        duo_reactor::log_limited!(log::Level::Debug, "{}: read: {e}", self.handle.name());
        let kind = self.gone_error().unwrap_or(e.kind());
        self.close(lp, ch, CloseReason::Error(kind));
    }
}
