//! TLS inside a connection: a rustls session on the connection's loop, between the
//! socket and the connection's buffers (feature `tls`).
//!
//! rustls does no I/O of its own, so it fits the state machine without a thread or a
//! runtime. The connection keeps its shape (`ReadSide`, `WriteSide`, one close); a TLS
//! connection's [`Machine`] holds one more thing, a boxed [`TlsState`] (`None` for plain
//! TCP: a plain connection pays one branch on its read and send paths).
//!
//! - **Reading.** One `recv` takes up to 64 KiB of ciphertext into a per-thread area
//!   (nothing per connection); it is all handed to rustls (`read_tls`, then
//!   `process_new_packets`), and the plaintext rustls then holds is moved into the
//!   connection's [`InputBuffer`] before the message callback
//!   runs: in pieces of at most `max_input`, the callback getting each full buffer
//!   before the next piece (a callback that leaves it full closes `InputTooLarge`). A
//!   delivery that pauses reading leaves the ciphertext not yet handed over in
//!   `wire_left` and the plaintext in rustls, taken up when reading resumes (the
//!   held-input path, as is a `close_notify` rustls already consumed). Otherwise rustls
//!   never keeps deliverable plaintext after an event: with edge triggering nothing can
//!   be stranded without a new edge; only a partial record waits in rustls for the rest
//!   of its bytes, which come with a new edge. The read budget and pauses work as for
//!   plain TCP. A server's early data (0-RTT, if its configuration accepts it) is the
//!   first input, delivered once the handshake completes (`tls/early.rs`).
//! - **Writing.** A send encrypts the plaintext (`writer()`), and the records rustls made
//!   are taken out at once (`write_tls`) into a per-thread vector, then go the plain
//!   way: straight to the socket when nothing is queued, the rest into the pooled
//!   [`OutputBuffer`](duo_buffer::OutputBuffer). rustls' own send buffer stays empty;
//!   flushing, the output limit, backpressure and write-complete work on the ciphertext
//!   unchanged (the limit checked before encrypting, on the most the records can take:
//!   `tls/records.rs`).
//! - **Handshake.** Its flights go out the same way after each read. The connection is
//!   `Connecting` (its handle refuses sends; a client does not publish it) and the "up"
//!   callback runs once the handshake completes (what came with the last flight waits
//!   for the functions it queued through the handle, as over plain TCP); a connection whose handshake fails (or does not
//!   finish within the handshake timeout, a loop timer) never was up: no callback sees
//!   it, it is counted (`CloseReason::Tls`) and logged, rate-limited, with the reason.
//!   So is one that closes before its "up" callback (the pool refused the plaintext that
//!   came with the last flight: `OutOfMemory`), counted with that reason.
//! - **Ending.** `shutdown` and `close_after_flush` queue `close_notify` after the
//!   ciphertext of what was sent before; no record follows it (rustls' answer to a
//!   renegotiation request is dropped, as is a fatal alert). The peer's `close_notify`
//!   is its end of stream (the half-close callback, as for TCP). A TCP end of stream
//!   without `close_notify` closes with [`TlsFailure::Truncated`] once the output is
//!   written (with the socket error instead, such as a reset, when one was seen first);
//!   a protocol error sends rustls' alert (best effort) and closes with
//!   [`TlsFailure::Protocol`].
//!
//! Statistics count bytes on the wire (ciphertext), as for plain TCP.

use std::cell::Cell;
use std::io::{self, IoSlice, IoSliceMut};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use duo_buffer::{BufferError, InputBuffer, ReadOutcome};
use duo_reactor::{Channel, EventLoop, LogLimiter, TimerId};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use super::handle::ConnState;
use super::machine::{LoopConn, Machine, ReadSide, WriteSide};
use crate::close_reason::{CloseReason, TlsFailure};

mod early;
mod pool_wait;
mod records;

use records::{drain_records, encrypt, put_out_vec, take_out_vec};

/// Failed handshakes: a peer (or a port scanner) can cause as many as it opens.
static HANDSHAKE_FAILED: LogLimiter = LogLimiter::new("TLS handshake failed");
/// TLS errors after the handshake.
static TLS_ERROR: LogLimiter = LogLimiter::new("TLS error");

/// Most ciphertext one read takes from the socket.
const CIPHER_READ: usize = 64 << 10;

type CipherArea = [u8; CIPHER_READ];

thread_local! {
    /// This thread's area for ciphertext read from a socket, taken for one read.
    static CIPHER_IN: Cell<Option<Box<CipherArea>>> = const { Cell::new(None) };
}

fn take_in_area() -> Box<CipherArea> {
    CIPHER_IN
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_else(|| Box::new([0u8; CIPHER_READ]))
}

fn put_in_area(area: Box<CipherArea>) {
    let _ = CIPHER_IN.try_with(move |c| c.set(Some(area)));
}

/// Which side of the handshake the connections of an owner take.
#[derive(Clone)]
pub(crate) enum TlsRole {
    /// A server's accepted connections.
    Server(Arc<ServerConfig>),
    /// A client's connection, verifying the server as `ServerName`.
    Client(Arc<ClientConfig>, ServerName<'static>),
}

/// TLS settings shared by every connection of a server or client.
#[derive(Clone)]
pub(crate) struct TlsSetup {
    pub(crate) role: TlsRole,
    /// A handshake not complete after this closes its connection.
    pub(crate) handshake_timeout: Duration,
}

impl TlsSetup {
    /// The configuration's bound on a record's size (with its header), if it sets one.
    fn max_fragment(&self) -> Option<usize> {
        match &self.role {
            TlsRole::Server(config) => config.max_fragment_size,
            TlsRole::Client(config, _) => config.max_fragment_size,
        }
    }

    /// A fresh session for one connection.
    fn session(&self) -> Result<Connection, rustls::Error> {
        Ok(match &self.role {
            TlsRole::Server(config) => ServerConnection::new(config.clone())?.into(),
            TlsRole::Client(config, name) => {
                ClientConnection::new(config.clone(), name.clone())?.into()
            }
        })
    }
}

/// The TLS side of one connection.
pub(crate) struct TlsState {
    conn: Connection,
    /// The handshake completed and the "up" callback ran.
    up: bool,
    /// The peer's `close_notify` arrived and all the plaintext before it was taken out.
    peer_closed: bool,
    /// Our `close_notify` went out: records rustls makes after it (an alert answering a
    /// renegotiation request) are dropped, not sent (the write side may be shut).
    notified: bool,
    /// The handshake timeout.
    timer: Option<TimerId>,
    /// Ciphertext read but not yet handed to rustls: the input buffer was full and the
    /// delivery that emptied it paused reading (usually empty, no allocation).
    wire_left: Vec<u8>,
    /// Plaintext came into the input since the last delivery: a read that decrypted none
    /// (a partial record, a handshake message, nothing left in rustls after a resumed
    /// delivery) does not call the message callback again with the bytes it left.
    fresh: bool,
    /// Early data (0-RTT) may still come or wait in rustls (a server's, until its
    /// handshake is over and the early data is all taken out).
    early_open: bool,
    /// Waiting for the pool (`tls/pool_wait.rs`): the held input was delivered already.
    pool_wait: bool,
}

impl TlsState {
    /// A session for a new connection of an owner with `setup`.
    pub(crate) fn new(setup: &TlsSetup) -> Result<Box<TlsState>, rustls::Error> {
        Ok(Box::new(TlsState {
            conn: setup.session()?,
            up: false,
            peer_closed: false,
            notified: false,
            timer: None,
            wire_left: Vec::new(),
            fresh: false,
            early_open: matches!(setup.role, TlsRole::Server(_)),
            pool_wait: false,
        }))
    }
}

/// What the negotiation of a TLS connection settled on
/// ([`ConnCtx::tls_info`](crate::ConnCtx::tls_info)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// The protocol version (`TLSv1_3`, `TLSv1_2`).
    pub protocol: Option<rustls::ProtocolVersion>,
    /// The cipher suite.
    pub cipher_suite: Option<rustls::CipherSuite>,
    /// The application protocol agreed through ALPN, if any.
    pub alpn: Option<Vec<u8>>,
    /// The peer's certificate chain (DER), end entity first, if it presented one.
    pub peer_certificates: Vec<Vec<u8>>,
}

impl Machine {
    /// The most bytes on the wire a send of `total` bytes of plaintext in `parts` makes
    /// (`total` for plain TCP): what the output limit is checked against, before
    /// encrypting (records once made must all be sent).
    pub(super) fn wire_len(&self, parts: &[&[u8]], total: usize) -> usize {
        match (&self.tls, &self.owner.tls) {
            (Some(tls), Some(setup)) => {
                records::wire_len(&tls.conn, setup.max_fragment(), parts, total)
            }
            _ => total,
        }
    }

    /// Whether a TLS handshake is still under way (never for plain TCP).
    pub(super) fn tls_pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| !t.up)
    }

    /// What the handshake negotiated (`None` for plain TCP or before the handshake
    /// completed).
    pub(super) fn tls_info(&self) -> Option<TlsInfo> {
        let tls = self.tls.as_ref().filter(|t| t.up)?;
        let c = &tls.conn;
        Some(TlsInfo {
            protocol: c.protocol_version(),
            cipher_suite: c.negotiated_cipher_suite().map(|s| s.suite()),
            alpn: c.alpn_protocol().map(<[u8]>::to_vec),
            peer_certificates: c
                .peer_certificates()
                .map(|certs| certs.iter().map(|c| c.as_ref().to_vec()).collect())
                .unwrap_or_default(),
        })
    }

    /// A new TLS connection is registered: start the handshake timer and send the first
    /// flight (a client's hello).
    pub(super) fn tls_start(&mut self, lp: &mut EventLoop, ch: &mut Channel, timeout: Duration) {
        let token = ch.token();
        let timer = lp.run_after(timeout, move |lp| {
            lp.with_handler::<LoopConn, _>(token, |lp, ch, conn| {
                if let Some(tls) = conn.m.tls.as_mut() {
                    tls.timer = None;
                }
                if conn.m.tls_pending() {
                    conn.m
                        .tls_fail(lp, ch, TlsFailure::HandshakeTimeout, &"no handshake");
                }
            });
        });
        if let Some(tls) = self.tls.as_mut() {
            tls.timer = Some(timer);
        }
        self.tls_flush(lp, ch);
    }

    /// Sends the records rustls made by itself (handshake flights, alerts,
    /// `close_notify`), after everything queued before.
    fn tls_flush(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        let Some(tls) = self.tls.as_mut() else { return };
        if !tls.conn.wants_write() {
            return;
        }
        let mut out = take_out_vec();
        drain_records(&mut tls.conn, &mut out);
        if !tls.notified {
            self.send_raw(lp, ch, &out);
        }
        put_out_vec(out);
    }

    /// Queues ciphertext that is no message of the application: not counted as one, no
    /// limit or high-water mark; written at once if nothing is queued.
    fn send_raw(&mut self, lp: &mut EventLoop, ch: &mut Channel, mut bytes: &[u8]) {
        if bytes.is_empty() || matches!(self.write, WriteSide::Gone { .. }) || self.closed() {
            return;
        }
        if self.output.is_empty() && !ch.is_writing() {
            match duo_sys::send_vectored(ch.fd(), &[IoSlice::new(bytes)]) {
                Ok(n) => {
                    self.owner.counters.add_out(n);
                    bytes = &bytes[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    self.write_failed(lp, ch, &e);
                    return;
                }
            }
            if bytes.is_empty() {
                return;
            }
        }
        if let Err(e) = self.output.append(bytes) {
            duo_reactor::log_limited!(
                log::Level::Error,
                "{}: cannot buffer TLS output: {e}; closing",
                self.handle.name()
            );
            self.close(lp, ch, CloseReason::OutOfMemory);
            return;
        }
        self.owner.counters.queued(bytes.len());
        ch.enable_writing();
    }

    /// Encrypts `parts` and sends the records as one message of the application.
    pub(super) fn send_tls(
        &mut self,
        lp: &mut EventLoop,
        ch: &mut Channel,
        parts: &[&[u8]],
    ) -> bool {
        // Before the handshake completes nothing is accepted: no callback has the
        // connection and its handle refuses sends (`Connecting`), and rustls could keep
        // only part of it.
        let Some(tls) = self.tls.as_mut().filter(|t| t.up) else {
            return false;
        };
        let mut out = take_out_vec();
        // After the handshake rustls encrypts everything (its buffer limit is drained
        // record by record).
        let accepted = encrypt(&mut tls.conn, parts, &mut out);
        let ok = if out.is_empty() && !accepted {
            false
        } else {
            // Records made are sent in any case: a gap would break the stream. An empty
            // message makes none, and goes the plain way too (its write-complete notice).
            let sent = self.send_wire(lp, ch, &[&out], None);
            sent && accepted
        };
        put_out_vec(out);
        ok
    }

    /// Queues `close_notify` after everything sent so far (once; nothing for plain TCP).
    pub(super) fn tls_close_notify(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        let Some(tls) = self.tls.as_mut() else { return };
        tls.conn.send_close_notify();
        self.tls_flush(lp, ch);
        if let Some(tls) = self.tls.as_mut() {
            tls.notified = true;
        }
    }

    /// Called by [`Machine::close`]: stops the handshake timer; false if the connection
    /// never was up (no callback may see it).
    pub(super) fn tls_closing(&mut self, lp: &mut EventLoop, reason: CloseReason) -> bool {
        let Some(tls) = self.tls.as_mut() else {
            return true;
        };
        if let Some(timer) = tls.timer.take() {
            lp.cancel(timer);
        }
        if !tls.up && !matches!(reason, CloseReason::Tls(_)) {
            duo_reactor::log_limited!(
                limiter: HANDSHAKE_FAILED,
                log::Level::Info,
                "{}: TLS handshake not completed: {reason}",
                self.handle.name()
            );
        }
        tls.up
    }

    /// The TLS session failed: send its alert (best effort), log, close.
    fn tls_fail(
        &mut self,
        lp: &mut EventLoop,
        ch: &mut Channel,
        failure: TlsFailure,
        why: &dyn std::fmt::Display,
    ) {
        let failure = match failure {
            TlsFailure::Protocol if self.tls_pending() => TlsFailure::Handshake,
            f => f,
        };
        let limiter = if failure == TlsFailure::Handshake || failure == TlsFailure::HandshakeTimeout
        {
            &HANDSHAKE_FAILED
        } else {
            &TLS_ERROR
        };
        duo_reactor::log_limited!(
            limiter: *limiter,
            log::Level::Info,
            "{}: TLS {failure}: {why}; closing",
            self.handle.name()
        );
        // The alert rustls queued goes out if the socket takes it now; nobody waits.
        if let Some(tls) = self.tls.as_mut() {
            let mut out = take_out_vec();
            drain_records(&mut tls.conn, &mut out);
            if self.output.is_empty() && !ch.is_writing() && !out.is_empty() && !tls.notified {
                if let Ok(n) = duo_sys::send_vectored(ch.fd(), &[IoSlice::new(&out)]) {
                    self.owner.counters.add_out(n);
                }
            }
            put_out_vec(out);
        }
        self.close(lp, ch, CloseReason::Tls(failure));
    }
}

/// A reader with nothing to read yet.
struct NothingYet;

impl io::Read for NothingYet {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

/// How one [`LoopConn::tls_pump`] round of decryption ended.
enum Step {
    /// The ciphertext is all handed over and rustls holds no more plaintext (or the peer
    /// sent `close_notify`).
    Done,
    /// The input buffer is full and rustls holds more plaintext.
    Full,
    /// The session failed (a protocol error).
    Failed(String),
    /// The input buffer could not grow.
    Buffer(BufferError),
}

/// What [`LoopConn::tls_pump`] left.
#[derive(PartialEq, Eq)]
enum Pump {
    /// Everything was decrypted; the input waits for delivery.
    Open,
    /// A delivery paused reading; the rest waits until reading resumes.
    Held,
    /// The connection closed.
    Closed,
}

/// `process_new_packets`, with a panic inside rustls taken as a failed session: rustls
/// 0.23 `debug_assert`s that it never sends a second fatal alert, and a bad record after
/// our `close_notify` (a half-closed connection still reads) trips it (rustls issue
/// 959). One peer must not take its loop down, whatever the build.
fn process_packets(conn: &mut Connection) -> Result<rustls::IoState, String> {
    match duo_reactor::catch_panic(AssertUnwindSafe(|| conn.process_new_packets())) {
        Ok(Ok(state)) => Ok(state),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("rustls failed on a record after our close_notify".to_owned()),
    }
}

/// Hands `wire` to rustls and moves the plaintext into `input`, until both are done or
/// the input is full.
fn decrypt(tls: &mut TlsState, input: &mut InputBuffer, wire: &mut &[u8]) -> Step {
    loop {
        let state = match process_packets(&mut tls.conn) {
            Ok(state) => state,
            Err(e) => return Step::Failed(e),
        };
        if tls.early_open {
            match early::take_early_data(tls, input) {
                Step::Done => {}
                step => return step,
            }
        }
        if state.plaintext_bytes_to_read() > 0 {
            match input.read_with(|iovs| io::Read::read_vectored(&mut tls.conn.reader(), iovs)) {
                Ok(ReadOutcome::Data { .. }) => {
                    tls.fresh = true;
                    continue;
                }
                Ok(ReadOutcome::WouldBlock | ReadOutcome::Eof) => {}
                Err(BufferError::Full { .. }) => return Step::Full,
                Err(e) => return Step::Buffer(e),
            }
        }
        if state.peer_has_closed() && state.plaintext_bytes_to_read() == 0 {
            tls.peer_closed = true;
            return Step::Done;
        }
        if wire.is_empty() {
            return Step::Done;
        }
        match tls.conn.read_tls(wire) {
            Ok(0) => return Step::Done, // after close_notify rustls takes nothing more
            Ok(_) => {}
            Err(e) => return Step::Failed(e.to_string()),
        }
    }
}

impl LoopConn {
    /// [`LoopConn::read_ready`] for a TLS connection.
    pub(super) fn tls_read_ready(
        &mut self,
        lp: &mut EventLoop,
        ch: &mut Channel,
        until_eagain: bool,
    ) {
        let mut budget = self.m.owner.config.read_budget;
        if !self.m.wants_reading() {
            self.m.sync_reading(ch);
            return;
        }
        if std::mem::take(&mut self.m.held_input) {
            if !self.pool_waited() && !self.input.is_empty() && !self.tls_deliver(lp, ch) {
                self.keep_pending();
                return;
            }
            // What was left in rustls and in `wire_left` when a delivery paused reading.
            let rest = self
                .m
                .tls
                .as_mut()
                .map(|t| std::mem::take(&mut t.wire_left))
                .unwrap_or_default();
            if self.tls_pump(lp, ch, &rest) != Pump::Open {
                return;
            }
            // Only plaintext that came since: the callback has just seen what it left.
            if self.tls_fresh() && !self.tls_deliver(lp, ch) {
                self.keep_pending();
                return;
            }
            if self.tls_peer_closed() {
                self.peer_finished(lp, ch);
                return;
            }
        }
        loop {
            if !self.m.wants_reading() {
                self.m.sync_reading(ch);
                return;
            }
            let mut area = take_in_area();
            let result = duo_sys::recv_vectored(ch.fd(), &mut [IoSliceMut::new(&mut area[..])]);
            let (len, drained) = match result {
                Ok(0) => {
                    put_in_area(area);
                    self.tls_eof(lp, ch);
                    return;
                }
                Ok(n) => {
                    self.m.owner.counters.add_in(n);
                    ch.progressed();
                    self.m.handle.touch(lp.poll_time_nanos());
                    if self.m.owner.config.idle_refresh_on_read {
                        self.m.idle_refresh(lp, ch.token());
                    }
                    let pump = self.tls_pump(lp, ch, &area[..n]);
                    put_in_area(area);
                    if pump != Pump::Open {
                        return;
                    }
                    (n, n < CIPHER_READ)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    put_in_area(area);
                    return;
                }
                Err(e) => {
                    put_in_area(area);
                    self.m.read_failed(lp, ch, &e);
                    return;
                }
            };
            if !self.m.tls_pending() {
                if self.tls_fresh() {
                    if self.m.user_paused() {
                        self.hold_input(lp, ch);
                        return;
                    }
                    if !self.tls_deliver(lp, ch) {
                        self.keep_pending();
                        return;
                    }
                }
                if self.tls_peer_closed() {
                    if self.m.wants_reading() {
                        self.peer_finished(lp, ch);
                    } else {
                        // Seen when reading resumes.
                        self.m.held_input = true;
                        self.m.sync_reading(ch);
                    }
                    return;
                }
            }
            if !self.m.owner.config.edge_triggered || (drained && !until_eagain) {
                return;
            }
            budget = budget.saturating_sub(len);
            if budget == 0 {
                self.queue_more_reading(lp, ch);
                return;
            }
        }
    }

    /// Whether plaintext came into the input since the last delivery.
    fn tls_fresh(&self) -> bool {
        self.m.tls.as_ref().is_some_and(|t| t.fresh)
    }

    /// [`LoopConn::deliver_and_settle`], after which the input holds nothing fresh.
    fn tls_deliver(&mut self, lp: &mut EventLoop, ch: &mut Channel) -> bool {
        if let Some(tls) = self.m.tls.as_mut() {
            tls.fresh = false;
        }
        self.deliver_and_settle(lp, ch)
    }

    /// A delivery paused reading (or closed the connection): if rustls already consumed
    /// the peer's `close_notify`, or holds plaintext not yet delivered, no new edge will
    /// announce it, so it must be seen when reading resumes (`reading_changed` re-runs
    /// the read for held input).
    fn keep_pending(&mut self) {
        if !self.m.closed() && (self.tls_peer_closed() || self.tls_more_pending()) {
            self.m.held_input = true;
        }
    }

    fn tls_peer_closed(&self) -> bool {
        self.m.tls.as_ref().is_some_and(|t| t.peer_closed) && self.m.read != ReadSide::Eof
    }

    /// Hands `wire` (ciphertext from the socket, or kept from an earlier read) to rustls,
    /// sends what the handshake answers, moves the plaintext into the input buffer, and
    /// runs the "up" callback when the handshake completes. When the input buffer fills
    /// up (`max_input`) while rustls still holds plaintext, the message callback gets
    /// what is there first (as plain TCP reads at most `max_input` before each
    /// delivery); only a callback that leaves the buffer full closes the connection
    /// (`InputTooLarge`). If a delivery pauses reading, the ciphertext not yet handed
    /// over is kept (with the plaintext in rustls) until reading resumes.
    fn tls_pump(&mut self, lp: &mut EventLoop, ch: &mut Channel, mut wire: &[u8]) -> Pump {
        loop {
            let LoopConn { input, m } = self;
            let Some(tls) = m.tls.as_mut() else {
                return Pump::Closed;
            };
            let step = decrypt(tls, input, &mut wire);
            if matches!(step, Step::Done) && !tls.peer_closed {
                // rustls gives its read buffer back down to 4 KiB when it holds no partial
                // record, but only when asked for the next read: ask now (a reader with
                // nothing yet), so that an idle connection does not keep a large one.
                let _ = tls.conn.read_tls(&mut NothingYet);
            }
            // Marked up only below, once the input took the plaintext that came with the
            // last flight and the handshake's answer is out: a connection that closes
            // before (the pool refused that plaintext, a failed write) never was up, and
            // no callback may see it go down.
            let failed = matches!(step, Step::Failed(_));
            let just_up = !failed && !tls.up && !tls.conn.is_handshaking();
            match step {
                // Plaintext decrypted before the error is dropped with the connection.
                Step::Failed(why) => {
                    m.tls_fail(lp, ch, TlsFailure::Protocol, &why);
                    return Pump::Closed;
                }
                Step::Buffer(e) => return self.tls_input_refused(lp, ch, e, wire),
                Step::Done | Step::Full => {}
            }
            m.tls_flush(lp, ch);
            if m.closed() {
                return Pump::Closed;
            }
            if just_up {
                if let Some(tls) = m.tls.as_mut() {
                    tls.up = true;
                    if let Some(timer) = tls.timer.take() {
                        lp.cancel(timer);
                    }
                }
                log::debug!("{}: TLS handshake complete; up", m.handle.name());
                m.handle.set_state(ConnState::Connected);
                m.handle.take_queued_on_loop();
                m.up(lp, ch);
                if m.closed() {
                    return Pump::Closed;
                }
                let tls = m.tls.as_ref().filter(|t| t.fresh || t.peer_closed);
                let pending = tls.is_some() || matches!(step, Step::Full);
                if pending && m.handle.take_queued_on_loop() {
                    return self.deliver_after_queued(lp, ch, wire);
                }
            }
            if matches!(step, Step::Done) {
                return Pump::Open;
            }
            // The input is full and rustls holds more plaintext: deliver, then go on.
            if m.tls_pending() {
                self.input_too_large(lp, ch);
                return Pump::Closed;
            }
            if !self.m.wants_reading() {
                self.keep_wire(wire);
                self.hold_input(lp, ch);
                return self.pump_paused();
            }
            if !self.tls_deliver(lp, ch) {
                if self.m.closed() {
                    return Pump::Closed;
                }
                self.keep_wire(wire);
                self.m.held_input = true;
                return Pump::Held;
            }
            // The buffer's own bound (what `max_input` asked for, within one block).
            if self.input.len() >= self.input.max_len() {
                self.input_too_large(lp, ch);
                return Pump::Closed;
            }
        }
    }

    /// The "up" callback queued functions through the handle (a greeting, a close): over
    /// plain TCP they run before the connection's first read, so the input that came
    /// with the handshake's last flight (and the rest of `wire`) waits for them, and is
    /// delivered from the loop's queue after them (as held input).
    fn deliver_after_queued(&mut self, lp: &mut EventLoop, ch: &mut Channel, wire: &[u8]) -> Pump {
        self.keep_wire(wire);
        self.hold_input(lp, ch);
        if self.m.closed() {
            return Pump::Closed;
        }
        let token = ch.token();
        // Through the handle's queue, behind those functions (a loop's own queue runs
        // after it, but may run before a backlog of the handles' queue).
        let _ = self.m.handle.loop_handle().queue_in_loop(move |lp| {
            lp.with_handler::<LoopConn, _>(token, |lp, ch, conn| {
                if conn.m.held_input {
                    conn.read_ready(lp, ch, true);
                }
            });
        });
        Pump::Held
    }

    fn pump_paused(&self) -> Pump {
        if self.m.closed() {
            Pump::Closed
        } else {
            Pump::Held
        }
    }

    /// Keeps ciphertext not yet handed to rustls for when reading resumes.
    fn keep_wire(&mut self, wire: &[u8]) {
        if let Some(tls) = self.m.tls.as_mut() {
            tls.wire_left.extend_from_slice(wire);
        }
    }

    /// Whether rustls holds plaintext not yet in the input, or ciphertext waits in
    /// `wire_left`.
    pub(super) fn tls_more_pending(&mut self) -> bool {
        self.m.tls.as_mut().is_some_and(|t| {
            !t.wire_left.is_empty()
                || process_packets(&mut t.conn).is_ok_and(|s| s.plaintext_bytes_to_read() > 0)
        })
    }

    fn input_too_large(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        duo_reactor::log_limited!(
            log::Level::Warn,
            "{}: {} bytes of input not consumed by the message callback; closing",
            self.m.handle.name(),
            self.input.max_len()
        );
        self.m.close(lp, ch, CloseReason::InputTooLarge);
    }

    /// The TCP stream ended.
    fn tls_eof(&mut self, lp: &mut EventLoop, ch: &mut Channel) {
        if self.m.tls_pending() {
            self.m.tls_fail(
                lp,
                ch,
                TlsFailure::Handshake,
                &"the peer closed the connection",
            );
            return;
        }
        if self.tls_peer_closed() {
            self.peer_finished(lp, ch);
            return;
        }
        duo_reactor::log_limited!(
            limiter: TLS_ERROR,
            log::Level::Debug,
            "{}: the peer ended the stream without close_notify",
            self.m.handle.name()
        );
        self.m.set_read(ReadSide::Eof);
        ch.disable_reading();
        // A reset seen first by a write or by `SO_ERROR` (the peer is gone with an
        // error) is the reason, as on plain TCP; a bare end of stream is a truncation.
        let reason = self
            .m
            .gone_error()
            .map_or(CloseReason::Tls(TlsFailure::Truncated), CloseReason::Error);
        if matches!(self.m.write, WriteSide::Shut | WriteSide::Gone { .. }) {
            self.m.close(lp, ch, reason);
        } else {
            self.m.close_after_flush(lp, ch, reason);
        }
    }
}
