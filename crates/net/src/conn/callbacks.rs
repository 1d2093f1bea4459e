//! The application's callbacks, shared by every connection of one server or client, and
//! the builder methods that set them (written once for
//! [`ServerBuilder`](crate::ServerBuilder) and [`ClientBuilder`](crate::ClientBuilder)).
//!
//! Callbacks are set once on a builder and shared by every connection and every loop, so
//! they are `Arc<dyn Fn .. + Send + Sync>`. They run on the connection's loop thread.
//! Per-connection state belongs in the connection's context
//! ([`TcpConnection::set_context`]). A callback that panics closes its connection
//! (logged); the loop and every other connection go on.

use std::fmt;
use std::sync::Arc;

use duo_buffer::InputBuffer;

use super::ctx::ConnCtx;
use super::handle::TcpConnection;

type HandleFn = Arc<dyn Fn(&TcpConnection) + Send + Sync>;
type CtxFn = Arc<dyn Fn(&mut ConnCtx<'_>) + Send + Sync>;
type MessageFn = Arc<dyn Fn(&mut ConnCtx<'_>, &mut InputBuffer) + Send + Sync>;
type HighWaterFn = Arc<dyn Fn(&mut ConnCtx<'_>, usize) + Send + Sync>;

/// The callbacks of one server or client.
#[derive(Clone, Default)]
pub(crate) struct Callbacks {
    pub(crate) connection: Option<HandleFn>,
    pub(crate) message: Option<MessageFn>,
    pub(crate) write_complete: Option<CtxFn>,
    pub(crate) high_water_mark: Option<HighWaterFn>,
    pub(crate) half_close: Option<CtxFn>,
    pub(crate) paused_half_close: Option<CtxFn>,
    /// Servers only.
    pub(crate) shutdown: Option<CtxFn>,
    pub(crate) close: Option<HandleFn>,
}

impl fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Callbacks")
            .field("connection", &self.connection.is_some())
            .field("message", &self.message.is_some())
            .field("write_complete", &self.write_complete.is_some())
            .field("high_water_mark", &self.high_water_mark.is_some())
            .field("half_close", &self.half_close.is_some())
            .field("paused_half_close", &self.paused_half_close.is_some())
            .field("shutdown", &self.shutdown.is_some())
            .field("close", &self.close.is_some())
            .finish()
    }
}

/// Writes the callback-setting methods of a builder whose `callbacks` field is a
/// [`Callbacks`].
macro_rules! callback_setters {
    () => {
        /// Called when a connection comes up and when it goes down: check
        /// [`TcpConnection::is_connected`](crate::TcpConnection::is_connected) (and, when
        /// down, [`close_reason`](crate::TcpConnection::close_reason)). It gets the handle
        /// only, not a [`ConnCtx`](crate::ConnCtx): act on the connection through the
        /// handle's queued methods.
        pub fn on_connection(
            mut self,
            f: impl Fn(&$crate::TcpConnection) + Send + Sync + 'static,
        ) -> Self {
            self.callbacks.connection = Some(std::sync::Arc::new(f));
            self
        }
        /// Called when bytes arrive. The callback parses them in place from the
        /// [`InputBuffer`](crate::InputBuffer) and consumes what it used; what it leaves
        /// stays for the next call, which comes when more bytes arrive or, if reading was
        /// paused meanwhile (by the callback, a handle or backpressure), when reading
        /// resumes: a callback may take one message at a time and pause. Replies sent
        /// through the [`ConnCtx`](crate::ConnCtx) are written at once when the output
        /// buffer is empty. After the callback asked for a close
        /// ([`ConnCtx::close_after_flush`](crate::ConnCtx::close_after_flush)) it is not
        /// called again.
        pub fn on_message(
            mut self,
            f: impl Fn(&mut $crate::ConnCtx<'_>, &mut $crate::InputBuffer) + Send + Sync + 'static,
        ) -> Self {
            self.callbacks.message = Some(std::sync::Arc::new(f));
            self
        }
        /// Called when a connection's output buffer has been fully written to the kernel:
        /// only when nothing is left queued (after a send that went out whole, or when a
        /// flush drains the buffer), so a relay can resume its source here. Sends that
        /// go out whole share one call, made after the callback that sent them.
        pub fn on_write_complete(
            mut self,
            f: impl Fn(&mut $crate::ConnCtx<'_>) + Send + Sync + 'static,
        ) -> Self {
            self.callbacks.write_complete = Some(std::sync::Arc::new(f));
            self
        }
        /// Called when a connection's output buffer grows past the high-water mark, with
        /// its size. With the default
        /// [`Backpressure::PauseReading`](crate::Backpressure::PauseReading), reading from
        /// the connection is paused at the same moment until the buffer drains below the
        /// low-water mark; with [`Backpressure::Notify`](crate::Backpressure::Notify)
        /// nothing else happens and the callback decides (a relay pauses the connection
        /// its bytes come from).
        pub fn on_high_water_mark(
            mut self,
            f: impl Fn(&mut $crate::ConnCtx<'_>, usize) + Send + Sync + 'static,
        ) -> Self {
            self.callbacks.high_water_mark = Some(std::sync::Arc::new(f));
            self
        }
        /// Called when the peer half-closes (sends EOF) after its last bytes, which the
        /// message callback has already seen (what it left unconsumed, a partial message,
        /// is dropped at the end of stream: no message callback runs after it, so a
        /// protocol whose last message ends at the EOF keeps its bytes itself). Without
        /// this callback the connection closes
        /// as soon as its output is written. With it, the connection stays open for
        /// sending and the callback decides: an application with replies still being
        /// computed (on a worker pool, say) calls
        /// [`TcpConnection::close_after_flush`](crate::TcpConnection::close_after_flush)
        /// once it has sent them (queued behind replies other threads sent that have not
        /// reached the loop yet, which
        /// [`ConnCtx::close_after_flush`](crate::ConnCtx::close_after_flush) would not
        /// wait for).
        ///
        /// It does not run when our own side is already shut (after
        /// [`ConnCtx::shutdown`](crate::ConnCtx::shutdown), also while that shutdown's
        /// output is still being written) or the peer can no longer receive: both
        /// directions are then done and the connection closes (at once, or once that
        /// output is written), with [`CloseReason::Peer`](crate::CloseReason::Peer) (or the
        /// socket error).
        pub fn on_peer_half_close(
            mut self,
            f: impl Fn(&mut $crate::ConnCtx<'_>) + Send + Sync + 'static,
        ) -> Self {
            self.callbacks.half_close = Some(std::sync::Arc::new(f));
            self
        }
        /// Called when the peer finishes sending (half-closes, or hangs up) while reading is
        /// paused ([`stop_reading`](crate::TcpConnection::stop_reading), or backpressure),
        /// before its last bytes are read: they stay in the kernel (over TLS, some may
        /// already be in the TLS layer), and once reading resumes they are delivered, then
        /// the end of stream as usual (`on_peer_half_close`, or the close, if our side is
        /// shut too). It is the TCP end that is reported: a TLS `close_notify` already
        /// decrypted while paused is not. An application that paused while it computes a
        /// reply (a deferred HTTP answer, a request handed to a worker pool) learns here
        /// that its client has probably left, and can give up the work and
        /// [`force_close`](crate::ConnCtx::force_close). A peer may also half-close after
        /// its request and still read the reply; an application that serves such peers
        /// does nothing here.
        ///
        /// Called only while reading is paused (a connection that is reading learns of
        /// the end of stream in order, after the bytes before it), and at most twice per
        /// connection: when the peer finishes sending, and again if it is then gone
        /// altogether (a reset: [`TcpConnection::is_connected`](crate::TcpConnection::is_connected)
        /// is false), since a peer that only half-closed may still read the answer but
        /// one that is gone cannot. A peer gone at once is told of once; the hang-up
        /// that follows the application's own [`shutdown`](crate::ConnCtx::shutdown)
        /// is not told of (both directions ended in order). Without this
        /// callback a paused connection does not watch for the peer's FIN at all.
        pub fn on_peer_half_close_while_paused(
            mut self,
            f: impl Fn(&mut $crate::ConnCtx<'_>) + Send + Sync + 'static,
        ) -> Self {
            self.callbacks.paused_half_close = Some(std::sync::Arc::new(f));
            self
        }
        /// Called when a connection has closed and is about to be dropped by its loop
        /// (after the "down" call of `on_connection`).
        pub fn on_close(
            mut self,
            f: impl Fn(&$crate::TcpConnection) + Send + Sync + 'static,
        ) -> Self {
            self.callbacks.close = Some(std::sync::Arc::new(f));
            self
        }
    };
}
pub(crate) use callback_setters;

/// What a connection's application was told, each at most once (one byte of flags: a
/// connection's state stays small).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Told(u8);

impl Told {
    /// The peer finished sending while reading was paused
    /// (`on_peer_half_close_while_paused`): its FIN is no longer watched for.
    pub(crate) const PAUSED_HALF_CLOSE: u8 = 1;
    /// The server's graceful shutdown reached the connection (`Machine::begin_shutdown`),
    /// by its visit or as the connection was registered.
    pub(crate) const SHUTDOWN: u8 = 2;
    /// Not a telling, a state kept in the same byte: the message callback is running (set
    /// and cleared around each delivery), so a graceful close it asks for waits for it to
    /// return before it may be made at once (`close_gracefully`).
    pub(crate) const DELIVERING: u8 = 4;
    /// The peer, told of as finished while reading was paused, was then told of as gone
    /// altogether (a reset or a hang-up: it can no longer receive).
    pub(crate) const PAUSED_GONE: u8 = 8;

    /// Whether `what` was told.
    pub(crate) fn has(self, what: u8) -> bool {
        self.0 & what != 0
    }

    /// Marks `what` told; returns whether it was already.
    pub(crate) fn mark(&mut self, what: u8) -> bool {
        let was = self.has(what);
        self.0 |= what;
        was
    }

    /// Clears `what` (only [`Told::DELIVERING`] is ever cleared).
    pub(crate) fn clear(&mut self, what: u8) {
        self.0 &= !what;
    }
}
