//! [`ConnCtx`]: what a callback may do to its connection, at once, on the loop thread.

use std::fmt;
use std::io;
use std::sync::Arc;

use duo_reactor::{Channel, EventLoop};

use super::group::ServerConnections;
use super::handle::TcpConnection;
use super::machine::{Machine, ReadSide};
use crate::close_reason::CloseReason;

/// A connection's loop-side context, given to callbacks (and to
/// [`TcpConnection::queue_in_loop`] and [`TcpConnection::with_ctx`]). Its methods act at
/// once, on the loop thread.
pub struct ConnCtx<'a> {
    m: &'a mut Machine,
    ch: &'a mut Channel,
    lp: &'a mut EventLoop,
}

impl<'a> ConnCtx<'a> {
    pub(super) fn new(
        m: &'a mut Machine,
        ch: &'a mut Channel,
        lp: &'a mut EventLoop,
    ) -> ConnCtx<'a> {
        ConnCtx { m, ch, lp }
    }

    /// The connection's handle (clone it to keep it, for instance for a worker thread).
    pub fn connection(&self) -> &TcpConnection {
        &self.m.handle
    }

    /// Sends `data`: written straight to the socket if nothing is queued, the rest
    /// buffered and written when the socket is writable. False if the data was not
    /// accepted: the connection is closed, half-closed by us, its peer is gone, or the
    /// [`OutputLimit`](crate::OutputLimit) refused it.
    pub fn send(&mut self, data: &[u8]) -> bool {
        self.m.send(self.lp, self.ch, &[data], None)
    }

    /// Sends several pieces as one message (a header and a payload, say) with one
    /// vectored write and no copy into a joined buffer.
    pub fn send_parts(&mut self, parts: &[&[u8]]) -> bool {
        self.m.send(self.lp, self.ch, parts, None)
    }

    /// Sends a shared message without copying it: what the socket does not take at once
    /// stays queued as a reference to `data` (one allocation for all the connections a
    /// message is broadcast to). Otherwise as [`send`](ConnCtx::send). A rest shorter than
    /// 512 bytes is copied instead: a reference costs more bookkeeping than that, so a
    /// peer that never reads would hold far more memory than its output limit counts.
    /// Over TLS each connection encrypts the message with its own keys: what is queued is
    /// that connection's ciphertext, a copy.
    pub fn send_shared(&mut self, data: Arc<[u8]>) -> bool {
        let view = data.clone();
        self.m.send(self.lp, self.ch, &[&view[..]], Some(data))
    }

    /// Bytes waiting in the output buffer.
    pub fn output_len(&self) -> usize {
        self.m.output.len()
    }

    /// What the peer has not received yet of what was sent: the output buffer
    /// ([`output_len`](Self::output_len)) plus what the kernel still holds
    /// unacknowledged in the socket's send queue (`ioctl(SIOCOUTQ)`; on a Unix-domain
    /// socket, the memory of what the peer has not read). It shrinks while the peer reads,
    /// also while the output buffer waits for room in the kernel's, so a timer can tell a
    /// slow reader from one that stopped. A system call: for timers, not every message.
    pub fn output_undelivered(&self) -> usize {
        let kernel = duo_sys::bytes_unacknowledged(self.ch.fd()).unwrap_or(0);
        self.m.output.len() + kernel
    }

    /// Half-closes after the output drains (see [`TcpConnection::shutdown`]).
    pub fn shutdown(&mut self) {
        self.m.shutdown(self.lp, self.ch);
    }

    /// Closes now, dropping unsent output (reason [`CloseReason::User`]).
    pub fn force_close(&mut self) {
        self.m.close(self.lp, self.ch, CloseReason::User);
    }

    /// Stops reading and closes as soon as the output buffer is written: for ending a
    /// connection after a final reply (an error to a hostile peer, say) without losing
    /// the replies before it, and without waiting for the peer as
    /// [`shutdown`](ConnCtx::shutdown) does. If the peer has sent input that was not
    /// read, closing would make the kernel reset the connection and drop the reply's
    /// unsent tail: then the connection half-closes instead and reads and drops the
    /// peer's input until its end of stream (at most
    /// [`close_linger`](crate::ServerBuilder::close_linger)) before it closes. Input the
    /// message callback leaves unconsumed in its [`InputBuffer`](crate::InputBuffer)
    /// counts as unread too (the peer may be sending what follows it): a callback that
    /// rejects a request and wants the connection closed at once consumes the request
    /// first.
    ///
    /// What is written is what this loop holds now: messages another thread sent through
    /// [`TcpConnection::send`] (or a broadcast) that have not reached the loop yet are not
    /// in the output buffer, and are dropped when they arrive. To close after those too,
    /// call [`TcpConnection::close_after_flush`], which is queued behind them.
    pub fn close_after_flush(&mut self) {
        self.m
            .close_after_flush(self.lp, self.ch, CloseReason::User);
    }

    /// Stops reading from the socket; see [`TcpConnection::stop_reading`] (nothing the
    /// peer sends is lost while paused).
    pub fn stop_reading(&mut self) {
        self.m.handle.set_read_paused(true);
        self.m.sync_reading(self.ch);
    }

    /// Resumes reading (unless backpressure still holds it).
    pub fn start_reading(&mut self) {
        self.m.handle.set_read_paused(false);
        self.resume_reading();
    }

    /// Applies the read state to the channel (see [`Machine::reading_changed`]).
    pub(super) fn resume_reading(&mut self) {
        self.m.reading_changed(self.lp, self.ch);
    }

    /// Applies a pause or resume set through the handle.
    pub(super) fn sync_reading(&mut self) {
        self.m.sync_reading(self.ch);
    }

    /// Closes now with `reason`.
    pub(crate) fn close(&mut self, reason: CloseReason) {
        self.m.close(self.lp, self.ch, reason);
    }

    /// The start of a graceful server shutdown for this connection.
    pub(crate) fn begin_shutdown(&mut self) {
        self.m.begin_shutdown(self.lp, self.ch);
    }

    /// Marks the connection active now for the idle timeout. Servers built with
    /// [`ServerBuilder::idle_refresh_on_read(false)`](crate::ServerBuilder::idle_refresh_on_read)
    /// call it when a complete request arrives, so a peer that trickles bytes without
    /// ever finishing one (slowloris) is still evicted.
    pub fn refresh_idle(&mut self) {
        self.m.idle_refresh(self.lp, self.ch.token());
    }

    /// What the TLS handshake negotiated (protocol, cipher suite, ALPN, the peer's
    /// certificates); `None` for a plain TCP connection. Needs the feature `tls`.
    #[cfg(feature = "tls")]
    pub fn tls_info(&self) -> Option<crate::TlsInfo> {
        self.m.tls_info()
    }

    /// Whether the peer has half-closed (sent EOF); see
    /// [`on_peer_half_close`](crate::ServerBuilder::on_peer_half_close).
    pub fn peer_half_closed(&self) -> bool {
        self.m.read == ReadSide::Eof
    }

    /// Whether reading is paused (by the application or by backpressure).
    pub fn is_reading_paused(&self) -> bool {
        self.m.user_paused() || self.m.read == ReadSide::Backpressured
    }

    /// The connections of the server this connection belongs to (`None` for a client's
    /// connection): for a broadcast from inside a callback.
    pub fn server_connections(&self) -> Option<ServerConnections> {
        self.m.owner.server.clone().map(ServerConnections::new)
    }

    /// Sets `TCP_NODELAY`. On a Unix-domain connection, which has no Nagle delay, it
    /// does nothing and returns `Ok`.
    pub fn set_tcp_nodelay(&self, on: bool) -> io::Result<()> {
        if self.m.handle.is_unix() {
            return Ok(());
        }
        socket2::SockRef::from(&self.ch.fd()).set_nodelay(on)
    }

    /// Sets `SO_KEEPALIVE`. On a Unix-domain connection, whose peer's end is known at
    /// once, it does nothing and returns `Ok`.
    pub fn set_keepalive(&self, on: bool) -> io::Result<()> {
        if self.m.handle.is_unix() {
            return Ok(());
        }
        socket2::SockRef::from(&self.ch.fd()).set_keepalive(on)
    }

    /// The connection's loop: schedule timers, queue work, reach another connection of
    /// the same loop at once ([`TcpConnection::with_ctx`]).
    pub fn event_loop(&mut self) -> &mut EventLoop {
        self.lp
    }
}

impl fmt::Debug for ConnCtx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnCtx")
            .field("connection", &self.m.handle)
            .field("output_len", &self.m.output.len())
            .finish()
    }
}
