//! [`CloseReason`]: why a connection closed.

use std::fmt;
use std::io;

/// Why a connection closed ([`TcpConnection::close_reason`](crate::TcpConnection::close_reason),
/// visible to the "down" and close callbacks); logged with each connection's "down" line at
/// `debug` level and counted in the owner's statistics
/// ([`CloseCounts`](crate::CloseCounts)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer ended the connection (end of stream), after everything it sent was
    /// delivered to the message callback.
    Peer,
    /// A socket error ended it (`ConnectionReset` when the peer reset it, `TimedOut`, a
    /// failed write, ...). What the peer sent before the error was still delivered.
    Error(io::ErrorKind),
    /// Nothing arrived within the idle timeout.
    Idle,
    /// The application closed it ([`force_close`](crate::TcpConnection::force_close), a
    /// completed [`close_after_flush`](crate::TcpConnection::close_after_flush), a client's
    /// `stop`).
    User,
    /// The server stopped, or its graceful shutdown's grace period ended.
    Shutdown,
    /// The peer sent more than the input limit without the message callback consuming it.
    InputTooLarge,
    /// The output buffer passed the connection's [`OutputLimit`](crate::OutputLimit) (policy `Close`).
    OutputLimit,
    /// The buffer pool could not provide memory for input or output: output that cannot be
    /// buffered, input a callback left that cannot be kept, or unconsumed input that needs
    /// a block that, beside the one it holds, exceeds the pool's whole cap. (A read the
    /// pool refuses for now waits for room instead, with the bytes in the kernel, and
    /// closes with this reason only after 2 s of waiting with nothing delivered.)
    OutOfMemory,
    /// A callback of the application panicked.
    Panic,
    /// A TLS connection failed: its handshake, the protocol, or the peer ended the
    /// stream without `close_notify` ([`TlsFailure`] says which).
    Tls(TlsFailure),
}

/// How a TLS connection failed ([`CloseReason::Tls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The handshake failed (a bad certificate, no common protocol or cipher suite,
    /// plaintext sent to a TLS port, the peer closed mid-handshake, ...): the connection
    /// never was up, so the application saw no connection callback for it (a client
    /// reports it as a failed connect attempt).
    Handshake,
    /// The handshake did not complete within the handshake timeout.
    HandshakeTimeout,
    /// A protocol error after the handshake (a bad record, a fatal alert from the peer).
    Protocol,
    /// The peer ended the TCP stream without `close_notify`: what it sent may have been
    /// cut short (a truncation attack, or a peer that does not bother to close cleanly).
    Truncated,
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsFailure::Handshake => "handshake failed",
            TlsFailure::HandshakeTimeout => "handshake timed out",
            TlsFailure::Protocol => "protocol error",
            TlsFailure::Truncated => "stream ended without close_notify",
        })
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Peer => f.write_str("closed by the peer"),
            CloseReason::Error(kind) => write!(f, "socket error: {kind}"),
            CloseReason::Idle => f.write_str("idle timeout"),
            CloseReason::User => f.write_str("closed by the application"),
            CloseReason::Shutdown => f.write_str("server shutdown"),
            CloseReason::InputTooLarge => f.write_str("input limit exceeded"),
            CloseReason::OutputLimit => f.write_str("output limit exceeded"),
            CloseReason::OutOfMemory => f.write_str("buffer memory exhausted"),
            CloseReason::Panic => f.write_str("a callback panicked"),
            CloseReason::Tls(failure) => write!(f, "TLS: {failure}"),
        }
    }
}
