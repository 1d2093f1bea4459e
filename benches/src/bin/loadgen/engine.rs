//! The per-thread event loop: many non-blocking client connections on one [`Epoll`].
//!
//! An [`Engine`] owns a fixed set of *slots*. Each slot holds a [`Session`] (the protocol
//! logic of one mode: what to send, how to check what comes back) and, while connected,
//! a socket with its input and output bytes. The engine does everything the sessions have
//! in common:
//!
//! - it opens connections with a non-blocking `connect`, at most
//!   [`Options::max_connecting`] at a time (so 10 000 connections open in batches the
//!   server's backlog can absorb), and reopens a slot when its session asks to;
//! - it registers each socket once, edge-triggered for reading and writing, reads until a
//!   short read or `EAGAIN`, and writes queued output until done or `EAGAIN`;
//! - it counts every failure ([`Fault`]) and closes the connection, then lets the session
//!   decide whether to connect again;
//! - it times out connects and replies that take longer than [`Options::timeout`].
//!
//! Epoll tokens are `generation << 32 | slot`: a slot's generation changes with each new
//! socket, so an event still queued for a closed socket never reaches its successor.
//!
//! Every connection is closed abortively (RST, see [`net::close_abortively`]).

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use duo_sys::{Epoll, Events, Interest, Ready};

use crate::conn::Conn;
use crate::fault::{Fault, Faults};
use crate::net::{self, Target};
use crate::tls::TlsConn;

/// How often connects and outstanding replies are checked against the timeout.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// The epoll token of [`Engine::add_waker`]'s descriptor: its slot index (the low 32 bits)
/// is larger than any slot's.
const WAKER_TOKEN: u64 = u64::MAX;
/// Bytes one `read` asks for.
const READ_CHUNK: usize = 64 * 1024;

/// What a session wants after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Keep the connection; send whatever was queued in [`Ctx::out`].
    Continue,
    /// Close this connection (output still queued is dropped) and open a new one for the
    /// same session.
    Reconnect,
    /// Close this connection; the session is finished.
    Done,
}

/// What a session callback may touch.
#[derive(Debug)]
pub(crate) struct Ctx<'a, T> {
    /// The time of the callback.
    pub(crate) now: Instant,
    /// Bytes to send: append to it; the engine writes it after the callback.
    pub(crate) out: &'a mut Vec<u8>,
    /// State shared by all sessions of this thread (counters, latency histogram).
    pub(crate) shared: &'a mut T,
    /// Failures of this thread, for a session that counts one and carries on.
    pub(crate) faults: &'a mut Faults,
}

/// The protocol logic of one connection.
pub(crate) trait Session {
    /// State shared by the sessions of one engine.
    type Shared;

    /// The connection is established.
    fn on_open(&mut self, ctx: &mut Ctx<'_, Self::Shared>) -> Step;

    /// Bytes arrived. `input` holds every byte received and not consumed yet; return how
    /// many were consumed (the rest is offered again with the next bytes), or the failure
    /// that ends this connection.
    fn on_data(
        &mut self,
        input: &[u8],
        ctx: &mut Ctx<'_, Self::Shared>,
    ) -> Result<(usize, Step), Fault>;

    /// Since when a reply has been awaited, if one is: the engine fails the connection
    /// with [`Fault::Timeout`] when that is longer ago than the timeout.
    fn waiting_since(&self) -> Option<Instant>;

    /// The connection failed with `fault` (already counted and closed): return `true` to
    /// connect again after [`Options::retry_delay`], `false` to finish the session.
    fn retry_after(&mut self, fault: Fault, shared: &mut Self::Shared) -> bool {
        let _ = (fault, shared);
        false
    }

    /// The server ended the stream (an orderly close: FIN) and the run reconnects on that
    /// ([`Options::reconnect`]): forget this connection's state and return how many
    /// requests were outstanding on it. The engine then opens a new connection for the
    /// session at once.
    fn on_server_close(&mut self, shared: &mut Self::Shared) -> u64 {
        let _ = shared;
        u64::from(self.waiting_since().is_some())
    }
}

/// Engine settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// Connects in progress at most at once.
    pub(crate) max_connecting: usize,
    /// How long a connect or an awaited reply may take.
    pub(crate) timeout: Duration,
    /// Pause before a failed session connects again (so a refused connect does not spin).
    pub(crate) retry_delay: Duration,
    /// An orderly close by the server (end of stream) is not a failure: it is counted
    /// apart ([`Engine::closed_by_server`]) and the session gets a new connection
    /// (`--reconnect`, for a server that drains its connections on a reload).
    pub(crate) reconnect: bool,
    /// A new connection counts against [`Options::max_connecting`] until its session
    /// first awaits no reply ([`Session::waiting_since`] is `None`: `idle`'s probe came
    /// back), not only until the connect completes. The kernel completes handshakes
    /// whether or not the server accepts, so without this a slow server's accept queue
    /// fills with connections whose probes then time out; with it, connections are opened
    /// as fast as the server confirms them.
    pub(crate) budget_until_reply: bool,
}

/// Where a slot is in its life.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Waiting to (re)connect.
    Pending,
    /// Connect started at that time.
    Connecting(Instant),
    /// Connected.
    Open,
    /// Finished: its session wants no more connections.
    Done,
}

/// One session and its connection.
#[derive(Debug)]
struct Slot<S> {
    session: S,
    /// Local address to bind before connecting.
    source: Option<IpAddr>,
    generation: u32,
    state: State,
    conn: Option<Conn>,
    /// Open, counted in [`Engine::awaiting`] until its first reply.
    awaiting_first: bool,
}

/// Client connections driven by one epoll instance on the calling thread.
#[derive(Debug)]
pub(crate) struct Engine<S: Session> {
    epoll: Epoll,
    events: Events,
    target: Target,
    opts: Options,
    slots: Vec<Slot<S>>,
    shared: S::Shared,
    faults: Faults,
    /// Slots to connect as soon as the connect budget allows.
    queue: VecDeque<usize>,
    /// Slots to connect again once the time has come.
    delayed: Vec<(Instant, usize)>,
    connecting: usize,
    /// Open connections still awaiting their first reply, with
    /// [`Options::budget_until_reply`].
    awaiting: usize,
    open: usize,
    done: usize,
    /// The open-file limit was hit: open no more connections.
    fd_exhausted: bool,
    /// Connections the server closed in an orderly way, with [`Options::reconnect`].
    server_closed: u64,
    /// Requests outstanding on those when they closed.
    unanswered_on_close: u64,
    scratch: Vec<u8>,
    /// Plaintext of one read, with TLS.
    plain: Vec<u8>,
    /// Connections whose TLS handshake is under way.
    handshaking: usize,
    /// Sessions opened so far (connections established, with TLS past the handshake).
    opened: u64,
    next_sweep: Instant,
}

impl<S: Session> Engine<S> {
    /// An engine for `sessions`, each with the source address to bind to (if any), all
    /// waiting to connect to `target`. Nothing happens before the first [`Engine::poll`].
    pub(crate) fn new(
        target: Target,
        sessions: Vec<(S, Option<IpAddr>)>,
        shared: S::Shared,
        opts: Options,
    ) -> io::Result<Engine<S>> {
        let slots: Vec<Slot<S>> = sessions
            .into_iter()
            .map(|(session, source)| Slot {
                session,
                source,
                generation: 0,
                state: State::Pending,
                conn: None,
                awaiting_first: false,
            })
            .collect();
        Ok(Engine {
            epoll: Epoll::new()?,
            events: Events::with_capacity(slots.len().clamp(16, 1024)),
            target,
            opts: Options {
                max_connecting: opts.max_connecting.max(1),
                ..opts
            },
            queue: (0..slots.len()).collect(),
            slots,
            shared,
            faults: Faults::default(),
            delayed: Vec::new(),
            connecting: 0,
            awaiting: 0,
            open: 0,
            done: 0,
            fd_exhausted: false,
            server_closed: 0,
            unanswered_on_close: 0,
            scratch: vec![0; READ_CHUNK],
            plain: Vec::new(),
            handshaking: 0,
            opened: 0,
            next_sweep: Instant::now() + SWEEP_INTERVAL,
        })
    }

    /// The state shared by the sessions.
    pub(crate) fn shared(&self) -> &S::Shared {
        &self.shared
    }

    /// The state shared by the sessions, to change.
    pub(crate) fn shared_mut(&mut self) -> &mut S::Shared {
        &mut self.shared
    }

    /// The sessions.
    pub(crate) fn sessions(&self) -> impl Iterator<Item = &S> {
        self.slots.iter().map(|s| &s.session)
    }

    /// The sessions whose connection is open now (one whose connection failed may still
    /// hold the request lost with it: a fault, already counted, with no reply to come).
    pub(crate) fn open_sessions(&self) -> impl Iterator<Item = &S> {
        let open = self.slots.iter().filter(|s| matches!(s.state, State::Open));
        open.map(|s| &s.session)
    }

    /// Connections established now: connected and, with TLS, past the handshake (a
    /// connection whose handshake is still under way is not, and its session has not
    /// opened).
    pub(crate) fn open_count(&self) -> usize {
        self.open - self.handshaking
    }

    /// Connections established since the engine started (with TLS, past the handshake),
    /// open now or not: 0 when the server was never reached.
    pub(crate) fn opened_total(&self) -> u64 {
        self.opened
    }

    /// Sessions that are finished.
    pub(crate) fn done_count(&self) -> usize {
        self.done
    }

    /// Whether every slot is either open or finished: no connect under way or to come.
    pub(crate) fn is_settled(&self) -> bool {
        self.queue.is_empty()
            && self.delayed.is_empty()
            && self.connecting == 0
            && self.handshaking == 0
    }

    /// With [`Options::reconnect`]: connections the server closed in an orderly way, and
    /// the requests that were outstanding on them then.
    pub(crate) fn closed_by_server(&self) -> (u64, u64) {
        (self.server_closed, self.unanswered_on_close)
    }

    /// Calls `f` on the session of slot `idx` if its connection is open (with TLS: past the
    /// handshake, its session opened), then acts on its [`Step`]; returns whether it was.
    pub(crate) fn poke(
        &mut self,
        idx: usize,
        f: impl FnOnce(&mut S, &mut Ctx<'_, S::Shared>) -> Step,
    ) -> bool {
        let open = matches!(self.slots.get(idx).map(|s| s.state), Some(State::Open));
        if !open || self.is_handshaking(idx) {
            return false;
        }
        let step = self.with_session(idx, |session, _, ctx| f(session, ctx));
        self.apply(idx, step);
        true
    }

    /// Slots (sessions), open or not.
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Whether the open-file limit stopped the engine from opening connections.
    pub(crate) fn fd_exhausted(&self) -> bool {
        self.fd_exhausted
    }

    /// Registers `fd` (for example a [`duo_sys::TimerFd`]), level-triggered for reading,
    /// so that [`Engine::poll`] returns when it becomes readable. The engine ignores its
    /// events (its token names no slot): the caller clears the readiness after each poll.
    pub(crate) fn add_waker(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.epoll.add(fd, Interest::READABLE, WAKER_TOKEN)
    }

    /// One round: starts due connects, waits for readiness until `until` at the latest
    /// (less if a timeout check or a retry is due), and handles what is ready.
    pub(crate) fn poll(&mut self, until: Instant) -> io::Result<()> {
        let now = Instant::now();
        self.start_connects(now);
        let mut wake = until.min(self.next_sweep);
        if let Some(&(at, _)) = self.delayed.iter().min_by_key(|(at, _)| *at) {
            wake = wake.min(at);
        }
        self.epoll
            .wait(&mut self.events, Some(wake.saturating_duration_since(now)))?;
        for i in 0..self.events.len() {
            if let Some((token, ready)) = self.events.get(i) {
                self.dispatch(token, ready);
            }
        }
        let now = Instant::now();
        if now >= self.next_sweep {
            self.sweep(now);
            self.next_sweep = now + SWEEP_INTERVAL;
        }
        Ok(())
    }

    /// Calls `f` on every session with an open connection, then acts on its [`Step`]
    /// (sending what it queued). Used to start a measured phase on every connection at once.
    pub(crate) fn each(&mut self, mut f: impl FnMut(&mut S, &mut Ctx<'_, S::Shared>) -> Step) {
        for idx in 0..self.slots.len() {
            if !matches!(self.slots[idx].state, State::Open) || self.is_handshaking(idx) {
                continue;
            }
            let step = self.with_session(idx, |session, _, ctx| f(session, ctx));
            self.apply(idx, step);
        }
    }

    /// Gives up on every connect not started yet, counting `fault` for each (for example
    /// when a set-up phase ran out of time).
    pub(crate) fn cancel_pending(&mut self, fault: Fault) {
        let pending: Vec<usize> = self
            .queue
            .drain(..)
            .chain(self.delayed.drain(..).map(|(_, idx)| idx))
            .collect();
        for idx in pending {
            self.faults.count(fault);
            self.slots[idx].state = State::Done;
            self.done += 1;
        }
    }

    /// Closes every connection (abortively) and returns the shared state and the failures.
    pub(crate) fn finish(self) -> (S::Shared, Faults) {
        (self.shared, self.faults)
    }

    fn token(idx: usize, generation: u32) -> u64 {
        (u64::from(generation) << 32) | idx as u64
    }

    fn start_connects(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.delayed.len() {
            if self.delayed[i].0 <= now {
                let (_, idx) = self.delayed.swap_remove(i);
                self.queue.push_back(idx);
            } else {
                i += 1;
            }
        }
        while self.connecting + self.awaiting < self.opts.max_connecting {
            let Some(idx) = self.queue.pop_front() else {
                break;
            };
            if self.fd_exhausted {
                // Counted per connection that could not be opened.
                self.fail(idx, Fault::FdLimit);
            } else {
                self.connect(idx, now);
            }
        }
    }

    fn connect(&mut self, idx: usize, now: Instant) {
        let slot = &mut self.slots[idx];
        slot.generation = slot.generation.wrapping_add(1);
        let token = Self::token(idx, slot.generation);
        let stream = net::start_connect(&self.target, slot.source).and_then(|stream| {
            // Registered once for both directions, edge-triggered: no `epoll_ctl` per
            // message. The first writable edge says the connect is done.
            let interest = Interest::READABLE | Interest::WRITABLE | Interest::EDGE;
            self.epoll.add(stream.as_fd(), interest, token)?;
            Ok(stream)
        });
        match stream {
            Ok(stream) => {
                slot.conn = Some(Conn::new(stream));
                slot.state = State::Connecting(now);
                self.connecting += 1;
            }
            Err(e) => {
                let fault = Fault::of(&e);
                if fault == Fault::FdLimit {
                    self.fd_exhausted = true;
                }
                self.fail(idx, fault);
            }
        }
    }

    fn dispatch(&mut self, token: u64, ready: Ready) {
        let idx = (token & 0xFFFF_FFFF) as usize;
        let Some(slot) = self.slots.get(idx) else {
            return;
        };
        if u64::from(slot.generation) != token >> 32 {
            return; // a socket of this slot that has been closed since
        }
        match slot.state {
            State::Connecting(_) => self.on_connect_event(idx, ready),
            State::Open => {
                if ready.is_writable() {
                    let conn = self.slots[idx].conn.as_mut().expect("open");
                    if let Err(fault) = conn.flush() {
                        self.fail(idx, fault);
                        return;
                    }
                }
                if ready.is_readable() || ready.is_hup() || ready.is_error() {
                    self.read(idx, ready);
                }
            }
            State::Pending | State::Done => {}
        }
    }

    fn on_connect_event(&mut self, idx: usize, ready: Ready) {
        let conn = self.slots[idx].conn.as_mut().expect("connecting");
        match conn.stream().take_error() {
            Ok(Some(e)) | Err(e) => return self.fail(idx, Fault::of(&e)),
            Ok(None) if ready.is_error() || ready.is_hup() => return self.fail(idx, Fault::Closed),
            Ok(None) if !ready.is_writable() => return,
            Ok(None) => {}
        }
        self.connecting -= 1;
        self.open += 1;
        self.slots[idx].state = State::Open;
        if self.opts.budget_until_reply {
            self.slots[idx].awaiting_first = true;
            self.awaiting += 1;
        }
        if let Some(tls) = TlsConn::start() {
            // The session opens once the handshake completes (in `read`).
            let conn = self.slots[idx].conn.as_mut().expect("open");
            match tls {
                Ok(tls) => conn.tls = Some(tls),
                Err(fault) => return self.fail(idx, fault),
            }
            self.handshaking += 1;
            if let Err(fault) = conn.flush() {
                return self.fail(idx, fault);
            }
            if ready.is_readable() {
                self.read(idx, ready);
            }
            return;
        }
        self.opened += 1;
        let step = self.with_session(idx, |session, _, ctx| session.on_open(ctx));
        // Edge-triggered: bytes that came with the connect edge must be read now.
        if self.apply(idx, step) && ready.is_readable() {
            self.read(idx, ready);
        }
    }

    /// Reads until the socket is drained, handing the bytes to the session. `ready` is the
    /// event that said there is something to read.
    fn read(&mut self, idx: usize, ready: Ready) {
        let mut scratch = std::mem::take(&mut self.scratch);
        loop {
            let conn = self.slots[idx].conn.as_mut().expect("open");
            match conn.stream().read(&mut scratch) {
                Ok(0) => {
                    if self.opts.reconnect {
                        self.closed_by_peer(idx);
                    } else {
                        self.fail(idx, Fault::Closed);
                    }
                    break;
                }
                Ok(n) => {
                    if !self.deliver_wire(idx, &scratch[..n]) {
                        break;
                    }
                    // A short read proves the receive queue empty (no extra read for EAGAIN),
                    // unless the peer's FIN came with the data: the end of the stream is then
                    // still to be read, and being edge-triggered, no new event would say so.
                    if n < scratch.len() && !ready.is_read_hup() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(idx, Fault::of(&e));
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    /// Runs `f` with the session of the open slot `idx`, its connection's unconsumed input
    /// and a callback context: the one split borrow of the engine every session callback
    /// goes through.
    fn with_session<R>(
        &mut self,
        idx: usize,
        f: impl FnOnce(&mut S, &mut Vec<u8>, &mut Ctx<'_, S::Shared>) -> R,
    ) -> R {
        let Engine {
            slots,
            shared,
            faults,
            ..
        } = self;
        let slot = &mut slots[idx];
        let conn = slot.conn.as_mut().expect("an open slot has a connection");
        let mut ctx = Ctx {
            now: Instant::now(),
            out: &mut conn.out,
            shared,
            faults,
        };
        f(&mut slot.session, &mut conn.input, &mut ctx)
    }

    /// Gives bytes read from the socket to the session (through TLS, with `--tls-ca`);
    /// returns whether the connection is still open.
    fn deliver_wire(&mut self, idx: usize, data: &[u8]) -> bool {
        let conn = self.slots[idx].conn.as_mut().expect("open");
        let Some(tls) = &mut conn.tls else {
            return self.deliver(idx, data);
        };
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        let result = tls.take_in(data, &mut plain);
        let open = match result {
            Err(fault) => {
                self.fail(idx, fault);
                false
            }
            Ok(just_up) => {
                if just_up {
                    self.handshaking -= 1;
                }
                // Handshake answers (and nothing else yet) go out now.
                let mut open = match conn.flush() {
                    Ok(()) => true,
                    Err(fault) => {
                        self.fail(idx, fault);
                        false
                    }
                };
                if open && just_up {
                    self.opened += 1;
                    let step = self.with_session(idx, |session, _, ctx| session.on_open(ctx));
                    open = self.apply(idx, step);
                }
                if open && !plain.is_empty() {
                    open = self.deliver(idx, &plain);
                }
                open
            }
        };
        self.plain = plain;
        open
    }

    /// Gives `data` to the session; returns whether the connection is still open.
    fn deliver(&mut self, idx: usize, data: &[u8]) -> bool {
        let result = self.with_session(idx, |session, input, ctx| {
            if input.is_empty() {
                // The common case: the session reads straight from the read buffer.
                let result = session.on_data(data, ctx);
                if let Ok((used, _)) = result {
                    input.extend_from_slice(&data[used.min(data.len())..]);
                }
                result
            } else {
                input.extend_from_slice(data);
                let result = session.on_data(input, ctx);
                if let Ok((used, _)) = result {
                    input.drain(..used.min(input.len()));
                }
                result
            }
        });
        match result {
            Ok((_, step)) => {
                let slot = &mut self.slots[idx];
                if slot.awaiting_first && slot.session.waiting_since().is_none() {
                    slot.awaiting_first = false;
                    self.awaiting -= 1;
                }
                self.apply(idx, step)
            }
            Err(fault) => {
                self.fail(idx, fault);
                false
            }
        }
    }

    /// Acts on a session's step; returns whether the connection is still open.
    fn apply(&mut self, idx: usize, step: Step) -> bool {
        match step {
            Step::Continue => {
                let conn = self.slots[idx].conn.as_mut().expect("open");
                match conn.flush() {
                    Ok(()) => true,
                    Err(fault) => {
                        self.fail(idx, fault);
                        false
                    }
                }
            }
            Step::Reconnect => {
                self.close(idx);
                self.queue.push_back(idx);
                false
            }
            Step::Done => {
                self.close(idx);
                self.slots[idx].state = State::Done;
                self.done += 1;
                false
            }
        }
    }

    /// Whether slot `idx` is connected and its TLS handshake still under way (its session
    /// not opened yet).
    fn is_handshaking(&self, idx: usize) -> bool {
        let conn = self.slots[idx].conn.as_ref();
        conn.and_then(|c| c.tls.as_ref()).is_some_and(|t| !t.up)
    }

    /// Closes the slot's connection, if any, and leaves it pending.
    fn close(&mut self, idx: usize) {
        if self.is_handshaking(idx) {
            self.handshaking -= 1;
        }
        let slot = &mut self.slots[idx];
        match slot.state {
            State::Connecting(_) => self.connecting -= 1,
            State::Open => self.open -= 1,
            State::Pending | State::Done => {}
        }
        if slot.awaiting_first {
            slot.awaiting_first = false;
            self.awaiting -= 1;
        }
        slot.conn = None;
        slot.state = State::Pending;
    }

    /// The server closed slot `idx`'s connection in an orderly way and the run reconnects
    /// on that: counts it, closes this side and queues a new connect.
    fn closed_by_peer(&mut self, idx: usize) {
        let unanswered = self.slots[idx].session.on_server_close(&mut self.shared);
        self.server_closed += 1;
        self.unanswered_on_close += unanswered;
        self.close(idx);
        self.queue.push_back(idx);
    }

    /// Counts `fault`, closes the connection and asks the session whether to retry.
    fn fail(&mut self, idx: usize, fault: Fault) {
        self.faults.count(fault);
        self.close(idx);
        let slot = &mut self.slots[idx];
        if fault != Fault::FdLimit && slot.session.retry_after(fault, &mut self.shared) {
            self.delayed
                .push((Instant::now() + self.opts.retry_delay, idx));
        } else {
            slot.state = State::Done;
            self.done += 1;
        }
    }

    /// Since when slot `idx` has waited for the server (connect, TLS handshake, reply).
    fn waiting_since(&self, idx: usize) -> Option<Instant> {
        let slot = &self.slots[idx];
        match slot.state {
            State::Connecting(since) => Some(since),
            // A TLS handshake under way waits for the server as much as a request.
            State::Open => match slot.conn.as_ref().and_then(|c| c.tls.as_deref()) {
                Some(tls) if !tls.up => Some(tls.started),
                _ => slot.session.waiting_since(),
            },
            State::Pending | State::Done => None,
        }
    }

    /// Connections waiting for the server (a connect, a TLS handshake or a reply) now: at
    /// the end of a measured phase that did no work, each is [`Fault::Unanswered`].
    pub(crate) fn waiting(&self) -> u64 {
        self.waiting_sessions().count() as u64
    }

    /// The sessions of the connections waiting for the server now (a connect, a TLS
    /// handshake or a reply), as [`Engine::waiting`] counts them.
    pub(crate) fn waiting_sessions(&self) -> impl Iterator<Item = &S> {
        let waiting = (0..self.slots.len()).filter(|&i| self.waiting_since(i).is_some());
        waiting.map(|i| &self.slots[i].session)
    }

    /// Fails connects, TLS handshakes and awaited replies older than the timeout.
    fn sweep(&mut self, now: Instant) {
        let timeout = self.opts.timeout;
        for idx in 0..self.slots.len() {
            let since = self.waiting_since(idx);
            if since.is_some_and(|t| now.saturating_duration_since(t) > timeout) {
                self.fail(idx, Fault::Timeout);
            }
        }
    }
}
