//! The loop side of a connection: [`LoopConn`], the handler its loop calls, and
//! [`Machine`], the state machine behind it.
//!
//! The whole state of a connection is two small enums and the public [`ConnState`]:
//!
//! - [`ReadSide`]: `Open` → (`Backpressured` ⇄ `Open`) → `Eof`; or, after a hang-up while
//!   the application had paused reading, `Parked` until reading resumes. (The
//!   application's own pause is an atomic flag of the handle, so that any thread can set
//!   it and have it take effect at once.)
//! - [`WriteSide`]: `Open` → `Draining { then }` (after [`ConnCtx::shutdown`] or
//!   [`ConnCtx::close_after_flush`], until the output is written) → `Shut` (half-closed)
//!   or closed, or `Lingering` (closing, half-closed, dropping input the peer still sends:
//!   `linger.rs`); or `Gone` once the peer cannot receive any more (hang-up, reset,
//!   failed write), its queued output dropped.
//!
//! Every close goes through [`Machine::close`] with a [`CloseReason`]; the other
//! transitions only decide *when*. `docs/architecture.md` draws the diagram. (The one
//! exception: [`TcpServer::stop`](crate::TcpServer::stop) drops the connections still
//! open on its I/O loops together with those loops, without callbacks; so does a client's
//! loop that ends. Such a connection is still marked closed, counted and forgotten by its
//! owner, with reason `Shutdown`: `impl Drop for LoopConn`.)
//!
//! # Reading and writing
//!
//! (`reading.rs` and `writing.rs` hold the two halves' code.)
//!
//! An edge-triggered connection reads until `EAGAIN` or a short read (a short read proves
//! the receive queue empty, unless the same event reported the peer's half-close), within
//! a read budget per event (`read_budget`, default 256 KiB); the rest is read by a
//! function queued on the loop, which runs after the iteration's other events, so one
//! fast sender cannot hold its loop and a pause requested from elsewhere lands between
//! two reads at most a budget apart. A level-triggered connection reads once per event.
//! The input is delivered after each read; bytes read while the application paused
//! reading from another thread are held until it resumes, and so is input the message
//! callback left in the buffer when reading paused (it is delivered again on resuming).
//!
//! A send writes straight to the socket while nothing is queued (one `sendmsg` of up to
//! eight pieces, no copy) and buffers only the rest, then asks for writability until the
//! buffer drains. Write-complete after a direct write is queued, not called, so a callback
//! that sends again cannot recurse; it runs only with the output empty.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use duo_buffer::{InputBuffer, OutputBuffer};
use duo_reactor::{Channel, EventLoop, Handler, Interest, Token};

use super::callbacks::{Callbacks, Told};
use super::ctx::ConnCtx;
use super::group::ServerLink;
use super::handle::{ConnState, TcpConnection};
use crate::close_reason::CloseReason;
use crate::config::ConnConfig;
use crate::guard::catch_user_panic;
use crate::per_loop::NetLoop;
use crate::stats::IoCounters;

/// Run when a connection closes, before its "down" callbacks: the owner's bookkeeping
/// (a server's connection count, a client's phase and retry delay), with whether the
/// connection was up (a TLS connection is up once its handshake completed).
pub(crate) type CloseHook = Arc<dyn Fn(&TcpConnection, bool) + Send + Sync>;

/// The server or client a connection belongs to, as the connections of one loop see it:
/// one allocation for all of them, one pointer in each.
pub(crate) struct Owner {
    pub(crate) callbacks: Arc<Callbacks>,
    pub(crate) config: ConnConfig,
    /// Key of the owner's idle wheel on each loop (see [`NetLoop`]), if idle timeouts are
    /// on.
    pub(crate) idle_key: Option<u64>,
    pub(crate) on_close: Option<CloseHook>,
    pub(crate) counters: Arc<IoCounters>,
    /// The owning server (none for a client's connection).
    pub(crate) server: Option<Arc<ServerLink>>,
    /// TLS on every connection of this owner (`None`: plain TCP).
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<super::tls::TlsSetup>,
}

/// The receiving direction, as far as the loop decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadSide {
    /// Reading, unless the application paused it (the handle's flag).
    Open,
    /// Paused by the connection itself: its output passed the high-water mark
    /// ([`Backpressure::PauseReading`](crate::Backpressure::PauseReading)); reading resumes below the low-water mark.
    Backpressured,
    /// The peer hung up while the application had reading paused: its last bytes wait in
    /// the kernel until reading resumes. Registered edge-triggered meanwhile, so that a
    /// level-triggered loop is not woken by the hang-up again and again.
    Parked,
    /// The peer sent its end of stream: reading is over.
    Eof,
}

/// What happens once the output is written, for [`WriteSide::Draining`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterDrain {
    /// Half-close (`shutdown(SHUT_WR)`) and wait for the peer's end of stream.
    HalfClose,
    /// Close, for this reason; reading has stopped.
    Close(CloseReason),
}

/// The sending direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteSide {
    /// Sends are accepted.
    Open,
    /// No more sends; the queued output is being written, then `then`.
    Draining(AfterDrain),
    /// We half-closed, after the output was written.
    Shut,
    /// The peer can no longer receive (hang-up, socket error, failed write); what was
    /// queued was dropped. `error` is the socket error, reported as the close reason once
    /// the peer's last bytes have been read. `open`: the write side was open then (the
    /// application had not begun closing), so the connection is still the application's
    /// to shut down (its `on_shutdown` hook runs for it).
    Gone {
        error: Option<io::ErrorKind>,
        open: bool,
    },
    /// A graceful close found input nobody will read: the output is written and we
    /// half-closed; what the peer still sends is read and dropped until its end of stream
    /// (or the `close_linger` bound, a loop timer, extended while the peer still takes
    /// our output), then the connection closes with `reason`. See
    /// [`Machine::close_gracefully`]. (The timer is not kept here: a connection's state
    /// stays a few bytes; a timer that finds the connection closed does nothing.)
    Lingering {
        reason: CloseReason,
        /// Begun from the message callback with nothing waiting in the socket: once the
        /// callback returns, the close is made at once if it left none of the input
        /// unread (see `close_gracefully`).
        unless_drained: bool,
    },
}

/// The handler registered with the connection's loop.
pub(crate) struct LoopConn {
    pub(super) input: InputBuffer,
    pub(super) m: Machine,
}

/// Everything of the loop side but the input buffer, so that a message callback can hold
/// the input buffer and a [`ConnCtx`] at once.
pub(crate) struct Machine {
    pub(super) handle: TcpConnection,
    pub(super) output: OutputBuffer,
    pub(super) owner: Arc<Owner>,
    pub(super) read: ReadSide,
    pub(super) write: WriteSide,
    /// Input waits for the message callback until reading resumes: bytes read while the
    /// application paused reading (from another thread), or input the callback left in
    /// the buffer when reading paused (it gets it again: no new byte may come to call it).
    pub(super) held_input: bool,
    /// A continuation of reading (the read budget of one event was used up) is queued.
    pub(super) read_queued: bool,
    /// What the application was told, each once only ([`Told`]).
    pub(super) told: Told,
    /// A write-complete notice is queued (a send went out whole): further whole sends
    /// before it runs share it, and output queued meanwhile cancels it (the flush that
    /// drains that output reports completion instead).
    pub(super) complete_queued: bool,
    /// The TLS session (`None` for plain TCP); see `tls.rs`.
    #[cfg(feature = "tls")]
    pub(super) tls: Option<Box<super::tls::TlsState>>,
}

impl LoopConn {
    /// Registers an accepted (or connected) socket with `lp` and runs the "up" callback.
    pub(crate) fn establish(
        lp: &mut EventLoop,
        socket: socket2::Socket,
        handle: TcpConnection,
        owner: Arc<Owner>,
    ) -> io::Result<Token> {
        let mut interest = Interest::READABLE;
        if owner.config.edge_triggered {
            interest |= Interest::EDGE;
        }
        let pool = owner.config.pool;
        #[cfg(feature = "tls")]
        let tls = match owner
            .tls
            .as_ref()
            .map(super::tls::TlsState::new)
            .transpose()
        {
            Ok(tls) => tls,
            Err(e) => {
                // Never up; counted like a failed registration.
                let reason = CloseReason::Tls(crate::TlsFailure::Handshake);
                owner.counters.add_opened();
                handle.mark_closed(reason);
                owner.counters.add_close(reason);
                if let Some(hook) = &owner.on_close {
                    hook(&handle, false);
                }
                return Err(io::Error::other(format!("TLS session: {e}")));
            }
        };
        let conn = LoopConn {
            input: InputBuffer::with_pool(pool, owner.config.max_input),
            m: Machine {
                handle: handle.clone(),
                output: OutputBuffer::with_pool(pool),
                owner,
                read: ReadSide::Open,
                write: WriteSide::Open,
                held_input: false,
                read_queued: false,
                told: Told::default(),
                complete_queued: false,
                #[cfg(feature = "tls")]
                tls,
            },
        };
        let owner = conn.m.owner.clone();
        handle.set_output_limit(owner.config.output_limit);
        // Counted before registering: a registration that fails counts as a close.
        owner.counters.add_opened();
        let token = match lp.add_channel(socket, interest, conn) {
            Ok(t) => t,
            Err(e) => {
                // Never up, so no callbacks; closed and counted like any other close.
                let reason = CloseReason::Error(e.error.kind());
                handle.mark_closed(reason);
                owner.counters.add_close(reason);
                if let Some(hook) = &owner.on_close {
                    hook(&handle, false);
                }
                return Err(e.error);
            }
        };
        handle.set_token(token);
        // A TLS connection stays `Connecting` (its handle refuses sends) until its
        // handshake completes.
        #[cfg(feature = "tls")]
        let plain = owner.tls.is_none();
        #[cfg(not(feature = "tls"))]
        let plain = true;
        if plain {
            handle.set_state(ConnState::Connected);
            log::debug!("{}: up", handle.name());
        }
        lp.with_handler::<LoopConn, _>(token, |lp, ch, conn| {
            // The socket is never duplicated (duo-net does not hand out its descriptor):
            // its close alone takes it out of epoll.
            ch.set_sole_descriptor();
            conn.m.idle_refresh(lp, ch.token());
            conn.m.start(lp, ch);
            // Handed over from another loop after the shutdown's visit of this one (or its
            // deadline's), or accepted as the shutdown began: told now, or closed if the
            // deadline has passed (a visit still to come skips it).
            let server = conn.m.owner.server.as_ref();
            if server.is_some_and(|s| s.deadline_passed.load(Ordering::Acquire)) {
                conn.m.close(lp, ch, CloseReason::Shutdown);
            } else if server.is_some_and(|s| s.shutdown_begun.load(Ordering::Acquire)) {
                conn.m.begin_shutdown(lp, ch);
            }
        });
        Ok(token)
    }

    /// Runs `f` on the machine of the connection behind `handle`, if it lives on `lp`, is
    /// open and none of its callbacks is running further up the stack.
    pub(crate) fn with_machine<R>(
        lp: &mut EventLoop,
        handle: &TcpConnection,
        f: impl FnOnce(&mut EventLoop, &mut Channel, &mut Machine) -> R,
    ) -> Option<R> {
        let token = handle.token()?;
        lp.with_handler::<LoopConn, _>(token, |lp, ch, conn| f(lp, ch, &mut conn.m))
    }

    /// Runs `f` with the [`ConnCtx`] of the connection at `token`, catching a panic (see
    /// [`Machine::run_guarded`]): `None` if no connection is at `token` on this loop (or
    /// its handler is taken: one of its callbacks is running further up the stack),
    /// `Some(None)` if `f` panicked (the connection is then closed).
    pub(crate) fn with_ctx_at<R>(
        lp: &mut EventLoop,
        token: Token,
        what: &str,
        f: impl FnOnce(&mut ConnCtx<'_>) -> R,
    ) -> Option<Option<R>> {
        lp.with_handler::<LoopConn, _>(token, |lp, ch, conn| conn.m.run_guarded(lp, ch, what, f))
    }

    /// The idle wheel of this loop found no traffic on the connection at `token` for the
    /// timeout.
    pub(crate) fn idle_expired(lp: &mut EventLoop, token: Token) {
        lp.with_handler::<LoopConn, _>(token, |lp, ch, conn| {
            duo_reactor::log_limited!(
                log::Level::Info,
                "{}: idle timeout; closing",
                conn.m.handle.name()
            );
            conn.m.close(lp, ch, CloseReason::Idle);
        });
    }
}

/// A connection dropped still open, with its loop (a client's loop that ended, the I/O
/// loops `TcpServer::stop` drops): no callback can run any more, but the handle must say
/// closed (`is_closed`, whoever waits on it), the close must be counted, and the owner
/// must forget it (a server's open count, a client's current connection), as for any
/// close: reason [`CloseReason::Shutdown`].
impl Drop for LoopConn {
    fn drop(&mut self) {
        let m = &mut self.m;
        if m.closed() {
            return;
        }
        let reason = CloseReason::Shutdown;
        m.handle.mark_closed(reason);
        m.owner.counters.add_close(reason);
        m.owner.counters.unqueued(m.output.len());
        if m.read == ReadSide::Backpressured {
            m.owner.counters.backpressure(false);
        }
        log::debug!("{}: dropped with its loop", m.handle.name());
        if let Some(hook) = &m.owner.on_close {
            hook(&m.handle, m.is_up());
        }
    }
}

impl Handler for LoopConn {
    fn label(&self) -> Option<String> {
        Some(format!("connection {}", self.m.handle.name()))
    }

    fn handle_read(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        let ready = ch.ready();
        if ready.is_read_hup()
            && !ready.is_readable()
            && !self.m.wants_reading()
            && self.m.watches_paused_half_close()
        {
            // Only the half-close, asked for while paused: the last bytes stay unread.
            self.m.paused_half_close(lp, ch);
            return;
        }
        let until_eagain = ch.ready().is_read_hup() || ch.ready().is_hup();
        self.read_ready(lp, ch, until_eagain);
    }

    fn handle_write(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        self.m.flush(lp, ch);
    }

    /// A hang-up without "readable": for TCP this happens only while readable is not
    /// asked for (reading paused), so the receive queue may still hold the peer's last
    /// bytes. Nothing more can be sent; what is left to read is kept until reading resumes.
    fn handle_close(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        // After our own half-close, a hang-up with no socket error (`handle_error` runs
        // first) is the peer's FIN meeting ours: both directions ended, no one is gone.
        if self.m.write != WriteSide::Shut {
            self.m.peer_gone(lp, ch, None);
        }
        if self.m.closed() {
            return;
        }
        if self.m.read == ReadSide::Eof {
            let reason = self.m.peer_reason();
            self.m.close(lp, ch, reason);
        } else if self.m.wants_reading() {
            self.read_ready(lp, ch, true);
        } else if self.m.read != ReadSide::Parked {
            duo_reactor::log_limited!(
                log::Level::Debug,
                "{}: peer gone while reading is paused; its last bytes wait for start_reading",
                self.m.handle.name()
            );
            self.m.set_read(ReadSide::Parked);
            ch.set_edge_triggered(true);
            self.m.paused_half_close(lp, ch);
        }
    }

    fn handle_error(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        if ch.ready().is_readable() && self.m.wants_reading() {
            // The read reports the error (after whatever the peer sent before it) and
            // closes with it: no `SO_ERROR` system call needed.
            self.read_ready(lp, ch, true);
            return;
        }
        let kind = match duo_sys::take_socket_error(ch.fd()) {
            Ok(Some(e)) => {
                duo_reactor::log_limited!(
                    log::Level::Debug,
                    "{}: socket error: {e}",
                    self.m.handle.name()
                );
                e.kind()
            }
            Ok(None) => return,
            Err(e) => {
                duo_reactor::log_limited!(
                    log::Level::Debug,
                    "{}: SO_ERROR: {e}",
                    self.m.handle.name()
                );
                e.kind()
            }
        };
        // A pending socket error ends a TCP connection (a reset, a retransmission or
        // keepalive timeout); the hang-up may be reported with it or just after it (the
        // kernel sets the error first). Nothing more can be sent; the peer's last bytes are
        // read next (readable) or kept until reading resumes (`handle_close`, on the
        // hang-up).
        self.m.peer_gone(lp, ch, Some(kind));
    }
}

impl Machine {
    /// Runs the "up" callback (the connection callback of a new connection).
    pub(super) fn up(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        let up = catch_user_panic(
            self,
            |m| {
                if let Some(cb) = &m.owner.callbacks.connection {
                    cb(&m.handle);
                }
            },
            |m| m.handle.name().to_string(),
            "connection callback",
        );
        if up.is_none() {
            self.close(lp, ch, CloseReason::Panic);
            return;
        }
        // The "up" callback may have paused reading through the handle.
        self.sync_reading(ch);
        // A TLS handshake can complete after the peer is gone (its last flight arrived
        // with the reset): up for the callback, which tells up from down by
        // `is_connected`, but nothing can be sent any more.
        if matches!(self.write, WriteSide::Gone { .. })
            && self.handle.state() == ConnState::Connected
        {
            self.handle.set_state(ConnState::Disconnecting);
        }
    }

    /// Runs `f` with this connection's [`ConnCtx`], catching a panic: a panicking `f`
    /// closes the connection (reason [`CloseReason::Panic`]) and gives `None`.
    pub(super) fn run_guarded<R>(
        &mut self,
        lp: &mut EventLoop,
        ch: &mut Channel,
        what: &str,
        f: impl FnOnce(&mut ConnCtx<'_>) -> R,
    ) -> Option<R> {
        let result = catch_user_panic(
            self,
            |m| f(&mut ConnCtx::new(m, ch, lp)),
            |m| m.handle.name().to_string(),
            what,
        );
        if result.is_none() {
            self.close(lp, ch, CloseReason::Panic);
        }
        result
    }

    pub(super) fn idle_refresh(&self, lp: &mut EventLoop, token: Token) {
        if let Some(key) = self.owner.idle_key {
            NetLoop::idle_refresh(lp, key, token);
        }
    }

    /// Changes the read state, keeping the server's count of backpressured connections
    /// (a closed connection was taken off it by [`Machine::close`]).
    pub(super) fn set_read(&mut self, read: ReadSide) {
        let was = std::mem::replace(&mut self.read, read) == ReadSide::Backpressured;
        let is = read == ReadSide::Backpressured;
        if was != is && !self.closed() {
            self.owner.counters.backpressure(is);
        }
    }

    /// Whether the application has seen the connection: always for plain TCP; for TLS
    /// once the handshake completed.
    pub(super) fn is_up(&self) -> bool {
        #[cfg(feature = "tls")]
        return !self.tls_pending();
        #[cfg(not(feature = "tls"))]
        true
    }

    pub(super) fn closed(&self) -> bool {
        self.handle.state() == ConnState::Disconnected
    }

    /// The socket error that ended the connection, if the peer is gone because of one.
    pub(super) fn gone_error(&self) -> Option<io::ErrorKind> {
        match self.write {
            WriteSide::Gone { error, .. } => error,
            _ => None,
        }
    }

    /// The reason for a close the peer caused: its error if there was one.
    pub(super) fn peer_reason(&self) -> CloseReason {
        self.gone_error()
            .map_or(CloseReason::Peer, CloseReason::Error)
    }

    pub(super) fn user_paused(&self) -> bool {
        self.handle.is_reading_stopped()
    }

    /// Whether the connection should be reading now (while lingering it reads to drop
    /// the input, whatever the application's pause).
    pub(super) fn wants_reading(&self) -> bool {
        if matches!(self.write, WriteSide::Lingering { .. }) {
            return !self.closed();
        }
        matches!(self.read, ReadSide::Open | ReadSide::Parked)
            && !self.user_paused()
            && !matches!(self.write, WriteSide::Draining(AfterDrain::Close(_)))
            && !self.closed()
    }

    /// Makes the channel's read interest match the state (applied by the loop when the
    /// handler returns).
    pub(super) fn sync_reading(&mut self, ch: &mut Channel) {
        if self.wants_reading() {
            if self.read == ReadSide::Parked {
                self.set_read(ReadSide::Open);
                ch.set_edge_triggered(self.owner.config.edge_triggered);
            }
            // Re-enabling makes epoll re-check readiness, so data (or a hang-up) that
            // arrived while paused is reported even with edge triggering.
            ch.enable_reading();
        } else {
            ch.disable_reading();
            if self.watches_paused_half_close() {
                // Not the bytes, only the peer's FIN (reported once: see `paused_half_close`).
                ch.set_interest(ch.interest().add(Interest::READ_HUP));
            }
        }
    }

    /// The peer can no longer receive (`error`: the socket error that says why, if any):
    /// drop the output, stop asking for writability. If the application was only waiting
    /// for the output to drain before closing, close now.
    pub(super) fn peer_gone(
        &mut self,
        lp: &mut EventLoop,
        ch: &mut Channel,
        error: Option<io::ErrorKind>,
    ) {
        let open = self.write == WriteSide::Open;
        let before = std::mem::replace(&mut self.write, WriteSide::Gone { error, open });
        if let WriteSide::Gone {
            error: earlier,
            open,
        } = before
        {
            // Already gone; keep the first error seen.
            self.write = WriteSide::Gone {
                error: earlier.or(error),
                open,
            };
            return;
        }
        // No longer open in both directions: nothing more can be sent. (The close itself
        // waits, if reading is paused, until the peer's last bytes have been delivered.)
        if self.handle.state() == ConnState::Connected {
            self.handle.set_state(ConnState::Disconnecting);
        }
        let unsent = self.output.len();
        if unsent > 0 {
            duo_reactor::log_limited!(
                log::Level::Debug,
                "{}: peer gone with {unsent} bytes unsent; dropped",
                self.handle.name()
            );
            self.output.clear();
            self.owner.counters.unqueued(unsent);
        }
        ch.disable_writing();
        if let WriteSide::Draining(AfterDrain::Close(reason))
        | WriteSide::Lingering { reason, .. } = before
        {
            self.close(lp, ch, error.map_or(reason, CloseReason::Error));
            return;
        }
        if self.read == ReadSide::Backpressured {
            self.set_read(ReadSide::Open);
        }
        self.reading_changed(lp, ch);
    }

    /// Applies the read state to the channel after something may have lifted a pause;
    /// input held back by the pause is delivered right after the current callback (not
    /// from inside it). No epoll event would announce it: those bytes already left the
    /// kernel. Every path that can turn reading back on goes through here.
    pub(super) fn reading_changed(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        self.sync_reading(ch);
        if self.held_input && self.wants_reading() {
            let token = ch.token();
            lp.queue_in_loop(move |lp| {
                lp.with_handler::<LoopConn, _>(token, |lp, ch, conn| {
                    if conn.m.held_input {
                        conn.read_ready(lp, ch, true);
                    }
                });
            });
        }
    }
    /// Half-close once the output is written ([`ConnCtx::shutdown`]).
    pub(super) fn shutdown(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        if self.closed() {
            return;
        }
        if !self.is_up() {
            // A TLS handshake still under way (only the client's `disconnect` gets here):
            // nothing was accepted for sending yet, and close_notify cannot go out before
            // the handshake; the connection never was up, so it just ends.
            self.close(lp, ch, CloseReason::User);
            return;
        }
        if self.handle.state() != ConnState::Connected {
            return;
        }
        self.handle.set_state(ConnState::Disconnecting);
        if self.write == WriteSide::Open {
            self.write = WriteSide::Draining(AfterDrain::HalfClose);
            #[cfg(feature = "tls")]
            self.tls_close_notify(lp, ch);
            // Writing close_notify may have found the peer gone (its error is kept for
            // the close reason) or closed the connection.
            if self.closed() || matches!(self.write, WriteSide::Gone { .. }) {
                return;
            }
            if self.output.is_empty() {
                self.drained(lp, ch, AfterDrain::HalfClose);
            }
        }
    }

    /// Stop reading, deliver what we still owe the peer, then close with `reason` (an
    /// earlier request's reason stands).
    pub(super) fn close_after_flush(
        &mut self,
        lp: &mut EventLoop,
        ch: &mut Channel,
        reason: CloseReason,
    ) {
        if self.closed() || matches!(self.write, WriteSide::Lingering { .. }) {
            return;
        }
        ch.disable_reading();
        let reason = match self.write {
            WriteSide::Draining(AfterDrain::Close(earlier)) => earlier,
            _ => reason,
        };
        let sending = matches!(self.write, WriteSide::Open | WriteSide::Draining(_));
        #[cfg(feature = "tls")]
        if sending {
            self.tls_close_notify(lp, ch);
            if self.closed() {
                return;
            }
        }
        if sending && !self.output.is_empty() {
            self.write = WriteSide::Draining(AfterDrain::Close(reason));
            if self.handle.state() == ConnState::Connected {
                self.handle.set_state(ConnState::Disconnecting);
            }
        } else if matches!(self.write, WriteSide::Gone { .. }) {
            self.close(lp, ch, reason);
        } else {
            self.close_gracefully(lp, ch, reason);
        }
    }

    /// The output is written while draining: half-close (or close, if the peer is done
    /// too), or close.
    pub(super) fn drained(&mut self, lp: &mut EventLoop, ch: &mut Channel, then: AfterDrain) {
        match then {
            AfterDrain::Close(reason) => self.close_gracefully(lp, ch, reason),
            // Nothing more can come from the peer either: both directions are done.
            AfterDrain::HalfClose if self.read == ReadSide::Eof => {
                let reason = self.peer_reason();
                self.close(lp, ch, reason);
            }
            AfterDrain::HalfClose => {
                self.write = WriteSide::Shut;
                if let Err(e) = duo_sys::shutdown_write(ch.fd()) {
                    duo_reactor::log_limited!(
                        log::Level::Debug,
                        "{}: shutdown: {e}",
                        self.handle.name()
                    );
                }
            }
        }
    }

    /// Starts a connection just registered: up at once, or once its TLS handshake
    /// completes.
    fn start(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        #[cfg(feature = "tls")]
        if let Some(setup) = &self.owner.tls {
            let timeout = setup.handshake_timeout;
            self.tls_start(lp, ch, timeout);
            return;
        }
        self.up(lp, ch);
    }

    /// The server's graceful shutdown reaches the connection (once): the application's
    /// `on_shutdown` callback, or a half-close once the output is written; a TLS
    /// handshake still under way is closed.
    pub(super) fn begin_shutdown(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        if self.closed() || self.told.mark(Told::SHUTDOWN) {
            return;
        }
        if !self.is_up() {
            // A TLS handshake still under way: no callback has seen the connection.
            self.close(lp, ch, CloseReason::Shutdown);
            return;
        }
        // Open, or gone from under an application that had not begun closing it (reading
        // paused, the peer's last bytes waiting): the hook is how it learns to resume.
        let open = self.handle.state() == ConnState::Connected
            || matches!(self.write, WriteSide::Gone { open: true, .. });
        if !open {
            return;
        }
        let owner = self.owner.clone();
        match owner.callbacks.shutdown.as_deref() {
            Some(cb) => {
                self.run_guarded(lp, ch, "shutdown callback", |ctx| cb(ctx));
            }
            None => self.shutdown(lp, ch),
        }
    }

    /// Closes now, with `reason`: the one way every connection ends. Deregisters (when
    /// the handler returns), counts the reason, runs the owner's hook, then the "down"
    /// and close callbacks. Unread input and unsent output are dropped.
    pub(crate) fn close(&mut self, lp: &mut EventLoop, ch: &mut Channel, reason: CloseReason) {
        if self.closed() {
            return;
        }
        self.handle.mark_closed(reason);
        ch.disable_all();
        ch.remove();
        let token = ch.token();
        if let Some(key) = self.owner.idle_key {
            NetLoop::idle_forget(lp, key, token);
        }
        self.owner.counters.add_close(reason);
        let dropped = self.output.len();
        self.owner.counters.unqueued(dropped);
        if self.read == ReadSide::Backpressured {
            self.owner.counters.backpressure(false);
        }
        if dropped > 0 {
            log::debug!(
                "{}: down ({reason}), {dropped} bytes unsent",
                self.handle.name()
            );
        } else {
            log::debug!("{}: down ({reason})", self.handle.name());
        }
        // The owner forgets the connection first, so that the "down" callbacks see a
        // consistent owner (a client with no connection, say).
        if let Some(hook) = &self.owner.on_close {
            hook(&self.handle, self.is_up());
        }
        // A TLS connection whose handshake did not complete never was up: no callbacks.
        #[cfg(feature = "tls")]
        if !self.tls_closing(lp, reason) {
            return;
        }
        let callbacks = [
            (&self.owner.callbacks.connection, "connection callback"),
            (&self.owner.callbacks.close, "close callback"),
        ];
        for (cb, what) in callbacks {
            if let Some(cb) = cb {
                // Already closing: a panic here is only logged.
                catch_user_panic(&mut self.handle, |h| cb(h), |h| h.name().to_string(), what);
            }
        }
    }
}
