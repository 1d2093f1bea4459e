//! Unit tests of the connection state machine ([`Machine`](super::machine::Machine)): each
//! connection is one end of a Unix socketpair registered with a real [`EventLoop`] run on
//! the test thread in short slices; the test plays the peer on the other end. Every
//! transition is checked twice: by what the peer and the callbacks see, and by the
//! machine's own `ReadSide` / `WriteSide`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duo_reactor::EventLoop;
use duo_testkit::{nonblocking_pair, LIMIT};
use parking_lot::Mutex;

use super::callbacks::Callbacks;
use super::ctx::ConnCtx;
use super::handle::{ConnState, TcpConnection};
use super::machine::{AfterDrain, LoopConn, Owner, ReadSide, WriteSide};
use crate::close_reason::CloseReason;
use crate::config::{Backpressure, ConnConfig, OutputLimit};
use crate::stats::{CloseCounts, IoCounters};

/// More than a socketpair's kernel buffers hold: a send of this size leaves output queued.
const BIG: usize = 1 << 20;
const HIGH: usize = 64 << 10;
const LOW: usize = 16 << 10;

/// What the callbacks saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Up,
    Down(Option<CloseReason>),
    /// The bytes delivered, and the output queued at that moment.
    Message(Vec<u8>, usize),
    HalfClose,
    WriteComplete,
    HighWater(usize),
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Ev>>>);

impl Log {
    fn push(&self, ev: Ev) {
        self.0.lock().push(ev);
    }
    fn count(&self, f: impl Fn(&Ev) -> bool) -> usize {
        self.0.lock().iter().filter(|e| f(e)).count()
    }
    /// Every byte delivered to the message callback, in order.
    fn received(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for ev in self.0.lock().iter() {
            if let Ev::Message(bytes, _) = ev {
                all.extend_from_slice(bytes);
            }
        }
        all
    }
    fn messages(&self) -> Vec<(Vec<u8>, usize)> {
        let log = self.0.lock();
        let each = log.iter().filter_map(|e| match e {
            Ev::Message(b, out) => Some((b.clone(), *out)),
            _ => None,
        });
        each.collect()
    }
    fn downs(&self) -> Vec<Option<CloseReason>> {
        let log = self.0.lock();
        let each = log.iter().filter_map(|e| match e {
            Ev::Down(r) => Some(*r),
            _ => None,
        });
        each.collect()
    }
}

/// Callbacks that record up/down, messages (consuming them), write-complete and
/// high-water; no half-close callback.
fn recording(log: &Log) -> Callbacks {
    let (l1, l2, l3, l4) = (log.clone(), log.clone(), log.clone(), log.clone());
    Callbacks {
        connection: Some(Arc::new(move |c: &TcpConnection| {
            l1.push(if c.is_closed() {
                Ev::Down(c.close_reason())
            } else {
                Ev::Up
            })
        })),
        message: Some(Arc::new(move |ctx: &mut ConnCtx<'_>, input| {
            l2.push(Ev::Message(input.peek().to_vec(), ctx.output_len()));
            input.consume_all();
        })),
        write_complete: Some(Arc::new(move |_: &mut ConnCtx<'_>| {
            l3.push(Ev::WriteComplete)
        })),
        high_water_mark: Some(Arc::new(move |_: &mut ConnCtx<'_>, n| {
            l4.push(Ev::HighWater(n))
        })),
        ..Callbacks::default()
    }
}

fn owner(callbacks: Callbacks, config: ConnConfig) -> Arc<Owner> {
    Arc::new(Owner {
        callbacks: Arc::new(callbacks),
        config,
        idle_key: None,
        on_close: None,
        counters: Arc::new(IoCounters::default()),
        server: None,
        #[cfg(feature = "tls")]
        tls: None,
    })
}

fn small_marks() -> ConnConfig {
    ConnConfig {
        high_water: HIGH,
        low_water: LOW,
        ..ConnConfig::default()
    }
}

/// One connection under test (the peer's end of its socketpair is kept apart, so that a
/// test can drop it).
struct Conn {
    handle: TcpConnection,
    owner: Arc<Owner>,
}

impl Conn {
    fn closes(&self) -> CloseCounts {
        self.owner.counters.snapshot().closes
    }
    fn bytes_out(&self) -> u64 {
        self.owner.counters.snapshot().bytes_out
    }
    /// Runs `f` with the connection's `ConnCtx`, now.
    fn ctx<R>(&self, lp: &mut EventLoop, f: impl FnOnce(&mut ConnCtx<'_>) -> R) -> R {
        self.handle
            .with_ctx(lp, f)
            .expect("connection not reachable")
    }
    /// The machine's state: read side, write side, queued output, channel reading.
    fn sides(&self, lp: &mut EventLoop) -> (ReadSide, WriteSide, usize, bool) {
        LoopConn::with_machine(lp, &self.handle, |_, ch, m| {
            (m.read, m.write, m.output.len(), ch.is_reading())
        })
        .expect("connection not on the loop")
    }
    fn read_side(&self, lp: &mut EventLoop) -> ReadSide {
        self.sides(lp).0
    }
    fn write_side(&self, lp: &mut EventLoop) -> WriteSide {
        self.sides(lp).1
    }
    /// Asserts the connection closed with `reason`, counted once.
    fn assert_closed(&self, log: &Log, reason: CloseReason) {
        assert_eq!(self.handle.state(), ConnState::Disconnected);
        assert_eq!(self.handle.close_reason(), Some(reason));
        assert_eq!(log.downs(), vec![Some(reason)], "one down callback");
        let closes = self.closes();
        assert_eq!((closes.of(reason), closes.total()), (1, 1), "{closes:?}");
    }
}

/// Registers one end of a fresh socketpair with `lp` as a connection of `owner`; returns
/// it and the peer's end.
fn open(lp: &mut EventLoop, owner: &Arc<Owner>, id: u64) -> (Conn, UnixStream) {
    let (ours, peer) = nonblocking_pair();
    let socket = socket2::Socket::from(OwnedFd::from(ours));
    let peer_addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let handle = TcpConnection::new(
        id,
        Arc::new("test".to_owned()),
        peer_addr.into(),
        local.into(),
        None,
        lp.handle(),
    );
    LoopConn::establish(lp, socket, handle.clone(), owner.clone()).expect("establish");
    assert_eq!(handle.state(), ConnState::Connected);
    let conn = Conn {
        handle,
        owner: owner.clone(),
    };
    (conn, peer)
}

/// A loop and one connection with the recording callbacks (changed by `tweak`, which may
/// record into the log too).
fn setup(
    config: ConnConfig,
    tweak: impl FnOnce(&mut Callbacks, &Log),
) -> (EventLoop, Log, Conn, UnixStream) {
    let mut lp = EventLoop::new().expect("event loop");
    let log = Log::default();
    let mut callbacks = recording(&log);
    tweak(&mut callbacks, &log);
    let (conn, peer) = open(&mut lp, &owner(callbacks, config), 1);
    assert_eq!(log.count(|e| *e == Ev::Up), 1);
    (lp, log, conn, peer)
}

/// Runs the loop for a short slice: until a one-millisecond timer fires.
fn step(lp: &mut EventLoop) {
    lp.run_after(Duration::from_millis(1), |lp| lp.quit());
    lp.run().expect("event loop failed");
}

/// Runs the loop until `cond` holds; fails after [`LIMIT`].
fn run_until(lp: &mut EventLoop, what: &str, mut cond: impl FnMut(&mut EventLoop) -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !cond(lp) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        step(lp);
    }
}

/// Runs the loop for `d`: to show that something does *not* happen meanwhile. It steps at
/// least once, however late this thread gets its core back: work already queued runs.
fn run_for(lp: &mut EventLoop, d: Duration) {
    let end = Instant::now() + d;
    loop {
        step(lp);
        if Instant::now() >= end {
            return;
        }
    }
}

/// How the peer's reading ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Eof,
    Error(io::ErrorKind),
}

/// The peer reads until its end of stream (or a read error), running the loop meanwhile.
fn peer_read_to_end(lp: &mut EventLoop, peer: &mut UnixStream) -> (Vec<u8>, End) {
    let mut got = Vec::new();
    let mut buf = vec![0; 64 << 10];
    let deadline = Instant::now() + LIMIT;
    loop {
        match peer.read(&mut buf) {
            Ok(0) => return (got, End::Eof),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "timed out reading to the end ({} bytes so far)",
                    got.len()
                );
                step(lp);
            }
            Err(e) => return (got, End::Error(e.kind())),
        }
    }
}

/// The peer reads exactly `n` bytes, running the loop meanwhile.
fn peer_read_exact(lp: &mut EventLoop, peer: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut got = vec![0; n];
    let mut filled = 0;
    let deadline = Instant::now() + LIMIT;
    while filled < n {
        match peer.read(&mut got[filled..]) {
            Ok(0) => panic!("end of stream after {filled} of {n} bytes"),
            Ok(k) => filled += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "timed out: {filled} of {n} bytes"
                );
                step(lp);
            }
            Err(e) => panic!("peer read: {e}"),
        }
    }
    got
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Sends [`BIG`] bytes from the connection; returns the output left queued (never 0).
fn send_big(lp: &mut EventLoop, c: &Conn) -> usize {
    assert!(c.ctx(lp, |ctx| ctx.send(&pattern(BIG))));
    let queued = c.sides(lp).2;
    assert!(queued > 0, "the socketpair took all {BIG} bytes at once");
    queued
}

fn as_recorded(_: &mut Callbacks, _: &Log) {}

// 1. Half-close, both ways.

#[test]
fn peer_half_close_reaches_the_callback_and_the_connection_still_sends() {
    let (mut lp, log, c, mut peer) = setup(ConnConfig::default(), |cb, log| {
        let log = log.clone();
        cb.half_close = Some(Arc::new(move |_: &mut ConnCtx<'_>| log.push(Ev::HalfClose)));
    });
    peer.write_all(b"last").unwrap();
    peer.shutdown(Shutdown::Write).unwrap();
    run_until(&mut lp, "the half-close callback", |_| {
        log.count(|e| *e == Ev::HalfClose) == 1
    });
    assert_eq!(
        log.received(),
        b"last",
        "the bytes before the EOF came first"
    );
    assert_eq!(c.sides(&mut lp), (ReadSide::Eof, WriteSide::Open, 0, false));
    assert_eq!(c.handle.state(), ConnState::Connected);
    assert!(c.ctx(&mut lp, |ctx| ctx.peer_half_closed()));

    // The application still sends (through the handle: queued), then closes.
    c.handle.send(&b"late reply"[..]).unwrap();
    assert_eq!(peer_read_exact(&mut lp, &mut peer, 10), b"late reply");
    c.ctx(&mut lp, |ctx| ctx.close_after_flush());
    assert_eq!(peer_read_to_end(&mut lp, &mut peer), (vec![], End::Eof));
    c.assert_closed(&log, CloseReason::User);
    assert_eq!(log.count(|e| *e == Ev::HalfClose), 1);
}

#[test]
fn peer_half_close_without_callback_flushes_then_closes_with_peer() {
    let (mut lp, log, c, mut peer) = setup(ConnConfig::default(), as_recorded);
    send_big(&mut lp, &c);
    peer.shutdown(Shutdown::Write).unwrap();
    run_until(&mut lp, "the peer's EOF", |lp| {
        c.read_side(lp) == ReadSide::Eof
    });
    let (_, write, queued, reading) = c.sides(&mut lp);
    assert_eq!(
        write,
        WriteSide::Draining(AfterDrain::Close(CloseReason::Peer))
    );
    assert!(queued > 0 && !reading);
    assert_eq!(c.handle.state(), ConnState::Disconnecting);

    let (got, end) = peer_read_to_end(&mut lp, &mut peer);
    assert_eq!(end, End::Eof);
    assert!(
        got == pattern(BIG),
        "the peer got {} of {BIG} bytes",
        got.len()
    );
    c.assert_closed(&log, CloseReason::Peer);
}

#[test]
fn shutdown_drains_then_half_closes_and_the_peers_eof_closes_with_peer() {
    let (mut lp, log, c, mut peer) = setup(ConnConfig::default(), as_recorded);
    send_big(&mut lp, &c);
    c.ctx(&mut lp, |ctx| ctx.shutdown());
    assert_eq!(
        c.write_side(&mut lp),
        WriteSide::Draining(AfterDrain::HalfClose)
    );
    assert_eq!(c.handle.state(), ConnState::Disconnecting);
    assert!(
        !c.ctx(&mut lp, |ctx| ctx.send(b"too late")),
        "send after shutdown"
    );

    // The peer gets every byte, then our EOF; we still read.
    let (got, end) = peer_read_to_end(&mut lp, &mut peer);
    assert_eq!(end, End::Eof);
    assert!(
        got == pattern(BIG),
        "the peer got {} of {BIG} bytes",
        got.len()
    );
    assert_eq!(c.sides(&mut lp), (ReadSide::Open, WriteSide::Shut, 0, true));
    peer.write_all(b"bye").unwrap();
    run_until(&mut lp, "the peer's bytes", |_| log.received() == b"bye");
    assert!(!c.handle.is_closed());

    // The peer's EOF ends the connection: both directions are done.
    peer.shutdown(Shutdown::Write).unwrap();
    run_until(&mut lp, "the close", |_| c.handle.is_closed());
    c.assert_closed(&log, CloseReason::Peer);
}

// 2. Backpressure.

#[test]
fn backpressure_pauses_reading_above_high_water_and_resumes_below_low() {
    let (mut lp, log, c, mut peer) = setup(small_marks(), as_recorded);
    let queued = send_big(&mut lp, &c);
    assert!(queued > HIGH);
    let (read, _, _, reading) = c.sides(&mut lp);
    assert_eq!((read, reading), (ReadSide::Backpressured, false));
    assert_eq!(log.count(|e| matches!(e, Ev::HighWater(n) if *n > HIGH)), 1);
    assert!(c.ctx(&mut lp, |ctx| ctx.is_reading_paused()));

    // What the peer sends meanwhile waits in the kernel.
    peer.write_all(b"ping").unwrap();
    run_for(&mut lp, Duration::from_millis(30));
    assert!(log.messages().is_empty(), "delivered while backpressured");
    assert_eq!(c.read_side(&mut lp), ReadSide::Backpressured);

    // The peer reads: below the low-water mark reading resumes and "ping" arrives.
    let got = peer_read_exact(&mut lp, &mut peer, BIG);
    assert!(got == pattern(BIG));
    run_until(&mut lp, "the held bytes", |_| log.received() == b"ping");
    let output_then = log.messages()[0].1;
    assert!(
        output_then <= LOW,
        "resumed with {output_then} bytes queued"
    );
    assert_eq!(c.sides(&mut lp), (ReadSide::Open, WriteSide::Open, 0, true));
    assert_eq!(log.count(|e| matches!(e, Ev::HighWater(_))), 1);
    assert_eq!(log.count(|e| *e == Ev::WriteComplete), 1);
}

#[test]
fn notify_backpressure_only_calls_back_and_keeps_reading() {
    let config = ConnConfig {
        backpressure: Backpressure::Notify,
        ..small_marks()
    };
    let (mut lp, log, c, mut peer) = setup(config, as_recorded);
    assert!(send_big(&mut lp, &c) > HIGH);
    assert_eq!(log.count(|e| matches!(e, Ev::HighWater(n) if *n > HIGH)), 1);
    let (read, _, _, reading) = c.sides(&mut lp);
    assert_eq!((read, reading), (ReadSide::Open, true));

    peer.write_all(b"ping").unwrap();
    run_until(&mut lp, "the peer's bytes", |_| log.received() == b"ping");
    let output_then = log.messages()[0].1;
    assert!(output_then > HIGH, "delivered with {output_then} queued");
    assert_eq!(c.read_side(&mut lp), ReadSide::Open);
}

/// Sends that each go out whole in one callback make one write-complete call, once the
/// output is empty: a notice per send would tell a relay twice that the same output
/// drained (and with a fast reader, a big second send can go out whole too).
#[test]
fn sends_written_whole_in_one_callback_complete_once() {
    let (mut lp, log, c, mut peer) = setup(ConnConfig::default(), as_recorded);
    c.ctx(&mut lp, |ctx| {
        assert!(ctx.send(b"one"));
        assert!(ctx.send(b"two"));
        assert!(ctx.send(b"three"));
    });
    let got = peer_read_exact(&mut lp, &mut peer, 11);
    assert_eq!(got, b"onetwothree");
    let completions = |log: &Log| log.count(|e| *e == Ev::WriteComplete);
    run_until(&mut lp, "the write-complete call", |_| {
        completions(&log) > 0
    });
    run_for(&mut lp, Duration::from_millis(20));
    assert_eq!(completions(&log), 1);
    // A later send is a new round: it is reported again.
    c.ctx(&mut lp, |ctx| assert!(ctx.send(b"four")));
    assert_eq!(peer_read_exact(&mut lp, &mut peer, 4), b"four");
    run_until(&mut lp, "the second write-complete call", |_| {
        completions(&log) > 1
    });
    run_for(&mut lp, Duration::from_millis(20));
    assert_eq!(completions(&log), 2);
}

// 3. The application's pause.

/// Pauses with `pause`, shows the peer's bytes wait, resumes with `resume`.
fn paused_bytes_wait_for_resume(
    pause: impl Fn(&mut EventLoop, &Conn),
    resume: impl Fn(&mut EventLoop, &Conn),
) {
    let (mut lp, log, c, mut peer) = setup(ConnConfig::default(), as_recorded);
    pause(&mut lp, &c);
    run_until(&mut lp, "reading off", |lp| !c.sides(lp).3);
    assert!(c.handle.is_reading_stopped());
    peer.write_all(b"abc").unwrap();
    run_for(&mut lp, Duration::from_millis(30));
    assert!(log.messages().is_empty(), "delivered while paused");
    assert_eq!(
        c.read_side(&mut lp),
        ReadSide::Open,
        "a user pause is not a ReadSide"
    );

    resume(&mut lp, &c);
    run_until(&mut lp, "the held bytes", |_| log.received() == b"abc");
    assert!(c.sides(&mut lp).3);
    assert!(!c.handle.is_closed());
}

#[test]
fn stop_reading_through_the_handle_holds_bytes_until_start_reading() {
    paused_bytes_wait_for_resume(
        |_, c| c.handle.stop_reading().unwrap(),
        |_, c| c.handle.start_reading().unwrap(),
    );
}

#[test]
fn stop_reading_through_the_ctx_holds_bytes_until_start_reading() {
    paused_bytes_wait_for_resume(
        |lp, c| c.ctx(lp, |ctx| ctx.stop_reading()),
        |lp, c| c.ctx(lp, |ctx| ctx.start_reading()),
    );
}

#[test]
fn hang_up_while_paused_parks_then_delivers_then_closes_with_peer() {
    let (mut lp, log, c, peer) = setup(ConnConfig::default(), as_recorded);
    c.handle.stop_reading().unwrap();
    run_until(&mut lp, "reading off", |lp| !c.sides(lp).3);
    (&peer).write_all(b"last words").unwrap();
    drop(peer);

    run_until(&mut lp, "the parked state", |lp| {
        c.read_side(lp) == ReadSide::Parked
    });
    assert_eq!(
        c.write_side(&mut lp),
        WriteSide::Gone {
            error: None,
            open: true
        }
    );
    assert!(log.messages().is_empty(), "delivered while paused");
    assert!(!c.handle.is_closed(), "closed with the peer's bytes unread");
    // Not open in both directions any more: nothing can be sent.
    assert_eq!(c.handle.state(), ConnState::Disconnecting);
    assert!(!c.handle.is_connected());

    c.handle.start_reading().unwrap();
    run_until(&mut lp, "the close", |_| c.handle.is_closed());
    assert_eq!(log.received(), b"last words");
    c.assert_closed(&log, CloseReason::Peer);
}

// 4. Close while draining.

#[test]
fn close_after_flush_stops_reading_delivers_the_output_then_closes_with_user() {
    let (mut lp, log, c, mut peer) = setup(ConnConfig::default(), as_recorded);
    send_big(&mut lp, &c);
    c.ctx(&mut lp, |ctx| ctx.close_after_flush());
    let (read, write, _, reading) = c.sides(&mut lp);
    assert_eq!(
        write,
        WriteSide::Draining(AfterDrain::Close(CloseReason::User))
    );
    assert_eq!((read, reading), (ReadSide::Open, false));
    assert_eq!(c.handle.state(), ConnState::Disconnecting);

    // Sent after the close was asked for: never delivered.
    peer.write_all(b"ignored").unwrap();
    let (got, end) = peer_read_to_end(&mut lp, &mut peer);
    assert!(
        got == pattern(BIG),
        "the peer got {} of {BIG} bytes",
        got.len()
    );
    // "ignored" was never read: closing then would reset the connection, so the
    // connection half-closed (our end of stream after the data) and lingers, dropping
    // input, until the peer's end of stream.
    assert_eq!(end, End::Eof);
    assert!(matches!(
        c.write_side(&mut lp),
        WriteSide::Lingering {
            reason: CloseReason::User,
            ..
        }
    ));
    assert_eq!(c.handle.state(), ConnState::Disconnecting);
    peer.write_all(b"dropped too").unwrap();
    drop(peer);
    run_until(&mut lp, "the close at the peer's end of stream", |_| {
        c.handle.is_closed()
    });
    assert!(log.messages().is_empty());
    c.assert_closed(&log, CloseReason::User);
}

#[test]
fn close_after_flush_with_nothing_queued_but_input_unread_lingers_disconnecting() {
    let (mut lp, log, c, mut peer) = setup(ConnConfig::default(), as_recorded);
    c.ctx(&mut lp, |ctx| ctx.stop_reading());
    peer.write_all(b"pipelined, never read").unwrap();
    c.ctx(&mut lp, |ctx| ctx.close_after_flush());
    assert!(matches!(
        c.write_side(&mut lp),
        WriteSide::Lingering {
            reason: CloseReason::User,
            ..
        }
    ));
    // Closing, though no output was queued to drain: sends are refused at once.
    assert_eq!(c.handle.state(), ConnState::Disconnecting);
    assert!(c.handle.send(&b"late"[..]).is_err());
    let (got, end) = peer_read_to_end(&mut lp, &mut peer);
    assert_eq!((got.len(), end), (0, End::Eof));
    drop(peer);
    run_until(&mut lp, "the close at the peer's end of stream", |_| {
        c.handle.is_closed()
    });
    c.assert_closed(&log, CloseReason::User);
}

#[test]
fn close_after_flush_with_nothing_unread_closes_at_once() {
    let (mut lp, log, c, mut peer) = setup(ConnConfig::default(), as_recorded);
    send_big(&mut lp, &c);
    c.ctx(&mut lp, |ctx| ctx.close_after_flush());
    let (got, end) = peer_read_to_end(&mut lp, &mut peer);
    assert!(got == pattern(BIG));
    assert_eq!(end, End::Eof);
    // The peer still holds its socket open: the close did not wait for it.
    c.assert_closed(&log, CloseReason::User);
    drop(peer);
}

#[test]
fn peer_reset_while_draining_closes_at_once_and_drops_the_output() {
    let (mut lp, log, c, peer) = setup(ConnConfig::default(), as_recorded);
    send_big(&mut lp, &c);
    c.ctx(&mut lp, |ctx| ctx.close_after_flush());
    // Closing with our bytes unread in its receive queue resets the pair.
    drop(peer);
    run_until(&mut lp, "the close", |_| c.handle.is_closed());
    c.assert_closed(&log, CloseReason::Error(io::ErrorKind::ConnectionReset));
    assert!(c.bytes_out() < BIG as u64, "all the output went out");
    assert_eq!(log.count(|e| *e == Ev::WriteComplete), 0);
}

// 5. Close reasons.

#[test]
fn force_close_closes_at_once_with_user_and_drops_the_output() {
    let (mut lp, log, c, mut peer) = setup(ConnConfig::default(), as_recorded);
    send_big(&mut lp, &c);
    c.ctx(&mut lp, |ctx| ctx.force_close());
    c.assert_closed(&log, CloseReason::User);
    assert!(LoopConn::with_machine(&mut lp, &c.handle, |_, _, _| ()).is_none());
    let (got, end) = peer_read_to_end(&mut lp, &mut peer);
    assert_eq!(end, End::Eof);
    assert!(got.len() < BIG && got == pattern(got.len()));
}

#[test]
fn unconsumed_input_over_max_input_closes_with_input_too_large() {
    let config = ConnConfig {
        max_input: 1024,
        ..ConnConfig::default()
    };
    let (mut lp, log, c, mut peer) = setup(config, |cb, log| {
        let log = log.clone();
        cb.message = Some(Arc::new(move |ctx: &mut ConnCtx<'_>, input| {
            // Consumes nothing.
            log.push(Ev::Message(input.peek().to_vec(), ctx.output_len()));
        }));
    });
    peer.write_all(&pattern(4096)).unwrap();
    run_until(&mut lp, "the close", |_| c.handle.is_closed());
    c.assert_closed(&log, CloseReason::InputTooLarge);
    let largest = log.messages().iter().map(|m| m.0.len()).max();
    assert_eq!(largest, Some(1024));
}

#[test]
fn send_past_the_output_limit_closes_with_output_limit() {
    let config = ConnConfig {
        output_limit: Some((HIGH, OutputLimit::Close)),
        ..ConnConfig::default()
    };
    let (mut lp, log, c, _peer) = setup(config, as_recorded);
    // Into an empty buffer a send is taken whole, whatever its size.
    assert!(send_big(&mut lp, &c) > HIGH);
    assert!(!c.handle.is_closed());
    assert!(!c.ctx(&mut lp, |ctx| ctx.send(b"x")));
    c.assert_closed(&log, CloseReason::OutputLimit);
}

#[test]
fn panic_in_the_message_callback_closes_only_that_connection() {
    let mut lp = EventLoop::new().expect("event loop");
    let log = Log::default();
    let callbacks = Callbacks {
        message: Some(Arc::new(|ctx: &mut ConnCtx<'_>, input| {
            if input.peek() == b"boom" {
                panic!("boom (a test of the panic close)");
            }
            ctx.send(input.peek());
            input.consume_all();
        })),
        ..recording(&log)
    };
    let owner = owner(callbacks, ConnConfig::default());
    let (bad, mut bad_peer) = open(&mut lp, &owner, 1);
    let (good, mut good_peer) = open(&mut lp, &owner, 2);
    bad_peer.write_all(b"boom").unwrap();
    good_peer.write_all(b"hi").unwrap();
    run_until(&mut lp, "the close", |_| bad.handle.is_closed());
    bad.assert_closed(&log, CloseReason::Panic);

    // The loop goes on serving the other connection.
    assert_eq!(peer_read_exact(&mut lp, &mut good_peer, 2), b"hi");
    good_peer.write_all(b"again").unwrap();
    assert_eq!(peer_read_exact(&mut lp, &mut good_peer, 5), b"again");
    assert!(good.handle.is_connected());
    assert_eq!(
        good.closes().total(),
        1,
        "only the panicking connection closed"
    );
}

#[test]
fn a_failed_registration_is_a_close_with_its_error_and_is_counted() {
    let mut lp = EventLoop::new().expect("event loop");
    let log = Log::default();
    let owner = owner(recording(&log), ConnConfig::default());
    // epoll refuses a regular file (`EPERM`): registering it fails like a full epoll set.
    let file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
    let socket = socket2::Socket::from(OwnedFd::from(file));
    let addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let handle = TcpConnection::new(
        9,
        Arc::new("test".to_owned()),
        addr.into(),
        addr.into(),
        None,
        lp.handle(),
    );
    assert!(LoopConn::establish(&mut lp, socket, handle.clone(), owner.clone()).is_err());
    assert_eq!(handle.state(), ConnState::Disconnected);
    assert_eq!(
        handle.close_reason(),
        Some(CloseReason::Error(io::ErrorKind::PermissionDenied))
    );
    let closes = owner.counters.snapshot().closes;
    assert_eq!((closes.error, closes.total()), (1, 1), "{closes:?}");
    assert_eq!(
        log.count(|e| *e == Ev::Up),
        0,
        "never up, so no up/down callbacks"
    );
}
