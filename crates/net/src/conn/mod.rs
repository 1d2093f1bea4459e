//! A TCP connection: its thread-safe handle, the context its callbacks get, and its
//! loop-side state machine.
//!
//! A connection lives in two halves:
//! - the **loop side** ([`machine`]: `LoopConn`, the handler registered with the
//!   connection's loop, and its `Machine`; the read path in `reading.rs`, the write path in
//!   `writing.rs`) owns the socket, the input and output buffers
//!   and the read/write state; only the loop thread touches it, so the hot path takes no
//!   lock. Callbacks reach it through a [`ConnCtx`] ([`ctx`]), which acts at once;
//! - the **handle** ([`TcpConnection`], [`handle`]; `Send + Sync + Clone`) holds what any
//!   thread may read (id, addresses, atomic state, user context) plus the loop's handle
//!   and the channel's token. Its methods queue a function onto the loop that looks the
//!   token up again, so a handle that outlives its connection only ever finds nothing:
//!   sending on it is a no-op that reports the connection closed, never a write to a
//!   reused descriptor.
//!
//! The application's callbacks ([`callbacks`]) and every open connection of a server
//! ([`ServerConnections`], [`group`]) complete the module.
//!
//! # What a close keeps
//!
//! Every byte the kernel accepted from the peer reaches the message callback before the
//! connection closes because of the peer (its EOF, a hang-up, a reset or another socket
//! error), whether reading was active or paused at the time: a connection whose reading is
//! paused when the peer goes away keeps the unread input in the kernel until reading
//! resumes, then delivers it, then closes. Output is delivered up to the peer's end: once
//! the peer is gone (hang-up, reset, failed write) nothing more can be sent and what is
//! still queued is dropped. Closes the application or a limit decides
//! ([`CloseReason`](crate::CloseReason)) drop what is unread and unsent at that moment, by
//! design.

pub(crate) mod callbacks;
pub(crate) mod ctx;
pub(crate) mod group;
pub(crate) mod handle;
mod linger;
pub(crate) mod machine;
mod reading;
#[cfg(test)]
mod tests;
#[cfg(feature = "tls")]
mod tls;
mod writing;

pub use ctx::ConnCtx;
pub use group::ServerConnections;
pub use handle::{
    ConnName, ConnState, ConnectionClosed, ContextError, CtxUnavailable, TcpConnection,
};
#[cfg(feature = "tls")]
pub use tls::TlsInfo;
#[cfg(feature = "tls")]
pub(crate) use tls::{TlsRole, TlsSetup};
