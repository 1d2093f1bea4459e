//! Every user-visible callback of `duo-net`, in one place (muduo's `Callbacks.h`).
//!
//! Callbacks are set once on a [`ServerBuilder`](crate::ServerBuilder) or
//! [`TcpClient`](crate::TcpClient) and shared by every connection and every loop, so they
//! are `Arc<dyn Fn .. + Send + Sync>`. They run on the connection's loop thread. Per-connection
//! state belongs in the connection's context ([`TcpConnection::set_context`]).
//!
//! A callback that panics closes its connection (logged); the loop and every other
//! connection go on.

use std::io;
use std::sync::Arc;

use duo_buffer::InputBuffer;

use crate::{ConnCtx, TcpConnection};

/// Connection up or down: check [`TcpConnection::is_connected`] (and, when down,
/// [`TcpConnection::close_reason`]). It gets the handle only, not a [`ConnCtx`]: act on the
/// connection through the handle's queued methods, or on another connection of the same
/// loop later, from a callback that has the loop.
pub type ConnectionCallback = Arc<dyn Fn(&TcpConnection) + Send + Sync>;

/// Bytes arrived. The callback parses them in place from the [`InputBuffer`] and consumes
/// what it used; what it leaves stays for the next call. Replies sent through the
/// [`ConnCtx`] are written at once when the output buffer is empty.
pub type MessageCallback = Arc<dyn Fn(&mut ConnCtx<'_>, &mut InputBuffer) + Send + Sync>;

/// The output buffer was fully written to the kernel: it runs only when nothing is left
/// queued (after a send that went out whole, or when a flush drains the buffer), so a
/// relay can resume its source here.
pub type WriteCompleteCallback = Arc<dyn Fn(&mut ConnCtx<'_>) + Send + Sync>;

/// The output buffer grew past the high-water mark; the argument is its size. With the
/// default [`Backpressure::PauseReading`](crate::Backpressure::PauseReading), reading from
/// the connection is paused at the same moment until the buffer drains below the low-water
/// mark; with [`Backpressure::Notify`](crate::Backpressure::Notify) nothing else happens and
/// the callback decides (a relay pauses the connection its bytes come from).
pub type HighWaterMarkCallback = Arc<dyn Fn(&mut ConnCtx<'_>, usize) + Send + Sync>;

/// The peer half-closed (sent EOF) after its last bytes, which the message callback has
/// already seen. Without this callback the connection closes as soon as its output is
/// written. With it, the connection stays open for sending and the callback decides: an
/// application with replies still being computed (on a worker pool, say) calls
/// [`ConnCtx::close_after_flush`] (or [`TcpConnection::close_after_flush`]) once it has
/// sent them.
///
/// It does not run when our own side is already shut (after [`ConnCtx::shutdown`]) or the
/// peer can no longer receive: both directions are then done and the connection closes at
/// once, with [`CloseReason::Peer`](crate::CloseReason::Peer) (or the socket error).
pub type HalfCloseCallback = Arc<dyn Fn(&mut ConnCtx<'_>) + Send + Sync>;

/// A graceful shutdown ([`ServerHandle::shutdown`](crate::ServerHandle::shutdown)) has
/// begun. Without this callback each connection half-closes once its output is written.
/// With it, the callback decides: an application with replies still being computed for
/// the connection (on a worker pool, say) stops reading new requests
/// ([`ConnCtx::stop_reading`]), sends what it owes, then calls
/// [`ConnCtx::close_after_flush`] or [`ConnCtx::shutdown`]. Connections still open when
/// the shutdown's grace period ends are closed regardless.
pub type ShutdownCallback = Arc<dyn Fn(&mut ConnCtx<'_>) + Send + Sync>;

/// The connection is closed and about to be dropped by its loop (after the "down" call of
/// the connection callback).
pub type CloseCallback = Arc<dyn Fn(&TcpConnection) + Send + Sync>;

/// A failed connect attempt, as the [`on_connect_failed`](crate::ClientBuilder::on_connect_failed)
/// callback sees it.
#[derive(Debug)]
pub struct ConnectFailure {
    /// Why the attempt failed (`ConnectionRefused`, `TimedOut` after
    /// [`connect_timeout`](crate::ClientBuilder::connect_timeout), ...).
    pub error: io::Error,
    /// Failed attempts in a row so far, this one included.
    pub attempts: u32,
    /// Whether the client tries again (after the retry delay). `false` when
    /// [`max_attempts`](crate::ClientBuilder::max_attempts) is reached, the error cannot be fixed
    /// by retrying (bad address family, permission), or the client was stopped: the
    /// client then stays idle until [`TcpClient::connect`](crate::TcpClient::connect) is called again.
    pub will_retry: bool,
}

/// Called on the client's loop after each failed connect attempt.
pub type ConnectFailedCallback = Arc<dyn Fn(&ConnectFailure) + Send + Sync>;

/// The callbacks shared by all connections of one server or client.
#[derive(Clone, Default)]
pub(crate) struct Callbacks {
    pub(crate) connection: Option<ConnectionCallback>,
    pub(crate) message: Option<MessageCallback>,
    pub(crate) write_complete: Option<WriteCompleteCallback>,
    pub(crate) high_water_mark: Option<HighWaterMarkCallback>,
    pub(crate) half_close: Option<HalfCloseCallback>,
    pub(crate) shutdown: Option<ShutdownCallback>,
    pub(crate) close: Option<CloseCallback>,
}

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callbacks")
            .field("connection", &self.connection.is_some())
            .field("message", &self.message.is_some())
            .field("write_complete", &self.write_complete.is_some())
            .field("high_water_mark", &self.high_water_mark.is_some())
            .field("half_close", &self.half_close.is_some())
            .field("shutdown", &self.shutdown.is_some())
            .field("close", &self.close.is_some())
            .finish()
    }
}
