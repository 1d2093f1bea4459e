//! Review round 12 of the connection state machine (`crates/net/src/conn/`): a
//! model-based state test of one server connection, plain TCP or TLS.
//!
//! A proptest drives a real server connection over loopback with a random sequence of
//! actions from both sides: the peer sends (a pattern that encodes the offset), half-closes,
//! resets, stops or resumes reading; the server pauses and resumes reading, sends,
//! half-closes, closes after flushing or at once, from another thread (the handle), from a
//! function queued on the loop, or from its message callback, and the server's graceful
//! shutdown begins; on edge- or level-triggered servers, with or without an output limit,
//! low water marks and the half-close callbacks. Each case then ends the conversation the
//! ordinary way (the server resumes reading, the peer reads to the end and half-closes)
//! and checks what the documentation promises:
//! - the bytes delivered to the message callback are a prefix of what the peer sent, in
//!   order, and all of it unless the application or a limit closed the connection or the
//!   peer reset it (and after a reset, at least what the server's kernel had
//!   acknowledged);
//! - the peer receives a prefix of what the server's sends accepted, and all of it unless
//!   the connection was closed at once (by the application or a limit), the peer reset,
//!   or the peer sent into a socket closed already (TCP answers that with a reset);
//! - "up" comes before any message, "down" and the close callback exactly once, the close
//!   last; no message after a close was asked for, none after a pause made on the loop,
//!   at most one after the handle's `stop_reading` returned; write-complete only with
//!   the output empty; the paused half-close callback only while paused, at most twice;
//! - the connection closes within a bound (one the application closes, by itself) and is
//!   gone from the server's counters; no callback panicked.
//!
//! Round 12 found no disagreement between these promises and the behaviour. Two things
//! the model had to learn, both as documented: the functions the handle queues run in call
//! order but the loop's I/O events may come between two of them (a peer's FIN can close
//! the connection between a `send` and a later `close_after_flush`); and the handle's
//! `stop_reading`/`start_reading` act at once, so a `ConnCtx::stop_reading` queued earlier
//! that runs later wins over a `start_reading` called in between.
//!
//! `R12_CASES=N` runs more cases; `R12_VERBOSE=1` prints each case's outcome. (Built
//! with the `tls` feature, on by default: its peer speaks TLS in half of the cases.)

#![cfg(feature = "tls")]

#[path = "review_round12_model/peer.rs"]
mod peer;
mod util;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duo_net::{CloseReason, ConnCtx, OutputLimit, ServerBuilder, TcpConnection, TcpServer};
use peer::{peer_byte, Peer};
use proptest::prelude::*;
use util::{init_log, localhost, TestServer};

/// How long a case may take to end once its actions are done.
const END_BOUND: Duration = Duration::from_secs(8);

/// The byte the server sends at `offset`.
fn server_byte(offset: usize) -> u8 {
    ((offset * 7 + 3) % 253) as u8
}

/// What the server's side did, in the order the loop did it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    Up,
    Msg,
    Down,
    Close,
    /// Reading paused on the loop (a `ConnCtx`).
    PauseOnLoop,
    /// Reading paused through the handle (logged once `stop_reading` returned).
    PauseByHandle,
    /// Reading resumed on the loop (logged before the call).
    Resume,
    /// Reading resumed through the handle (logged before the call).
    ResumeByHandle,
    /// `close_after_flush` asked for.
    Caf,
    /// `force_close` asked for.
    Force,
}

/// A server action performed with a `ConnCtx` (queued on the loop, or from the message
/// callback).
#[derive(Debug, Clone, Copy)]
enum CtxAct {
    Pause,
    Resume,
    Send(usize),
    CloseAfterFlush,
    Shutdown,
    ForceClose,
}

/// What the server side recorded.
#[derive(Default)]
struct Side {
    events: Vec<Ev>,
    received: Vec<u8>,
    /// What the server's sends accepted (in order).
    sent: usize,
    conn: Option<TcpConnection>,
    reason: Option<CloseReason>,
    /// An action for the next message callback to perform.
    armed: Option<CtxAct>,
    /// A `close_after_flush` was asked for: the peer's bytes written at that moment.
    caf_peer_sent: Option<usize>,
    /// A `force_close` was asked for.
    forced: bool,
    /// The connection closed because a callback panicked.
    panicked: bool,
    /// Promises of the other callbacks that did not hold (write-complete with output
    /// left, the paused half-close while reading, ...).
    broken: Vec<String>,
    /// `on_peer_half_close_while_paused` calls.
    paused_half_closes: usize,
}

/// The state shared by the test thread and the server's callbacks.
#[derive(Clone, Default)]
struct Model {
    side: Arc<Mutex<Side>>,
    /// Bytes the peer has written (updated after each write).
    peer_sent: Arc<AtomicUsize>,
}

impl Model {
    /// The server side's record (also after a failed assertion elsewhere).
    fn side(&self) -> std::sync::MutexGuard<'_, Side> {
        self.side
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn log(&self, ev: Ev) {
        self.side().events.push(ev);
    }

    /// Notes a `close_after_flush` about to be asked for, and how much the peer had
    /// written then.
    fn record_caf(&self) {
        let mut s = self.side();
        s.events.push(Ev::Caf);
        s.caf_peer_sent
            .get_or_insert(self.peer_sent.load(Ordering::SeqCst));
    }

    /// Notes a `force_close` about to be asked for.
    fn record_force(&self) {
        let mut s = self.side();
        s.events.push(Ev::Force);
        s.forced = true;
    }

    /// Performs `act` on the loop and records it.
    fn act(&self, ctx: &mut ConnCtx<'_>, act: CtxAct) {
        match act {
            CtxAct::Pause => {
                ctx.stop_reading();
                self.log(Ev::PauseOnLoop);
            }
            CtxAct::Resume => {
                self.log(Ev::Resume);
                ctx.start_reading();
            }
            CtxAct::Send(n) => {
                let start = self.side().sent;
                let data: Vec<u8> = (start..start + n).map(server_byte).collect();
                if ctx.send(&data) {
                    self.side().sent += n;
                }
            }
            CtxAct::CloseAfterFlush => {
                self.record_caf();
                ctx.close_after_flush();
            }
            CtxAct::Shutdown => ctx.shutdown(),
            CtxAct::ForceClose => {
                self.record_force();
                ctx.force_close();
            }
        }
    }
}

/// One step of a case.
#[derive(Debug, Clone, Copy)]
enum Op {
    PeerSend(usize),
    PeerFin,
    PeerReset,
    /// The peer reads (true) or stops reading (false).
    PeerRead(bool),
    /// Through the handle, from the test thread.
    HandlePause,
    HandleResume,
    HandleCloseAfterFlush,
    HandleShutdown,
    HandleForceClose,
    /// A function queued on the loop.
    Queued(CtxAct),
    /// Armed for the next message callback.
    InCallback(CtxAct),
    /// The server's graceful shutdown begins (its grace outlasts the case).
    ServerShutdown,
    /// Wait until the loop ran what was queued before, and let the server catch up with
    /// the peer's bytes (a bounded poll; not a check).
    Settle,
}

fn ctx_act() -> impl Strategy<Value = CtxAct> {
    prop_oneof![
        2 => Just(CtxAct::Pause),
        2 => Just(CtxAct::Resume),
        5 => (1usize..64_000).prop_map(CtxAct::Send),
        3 => (1usize..4_000_000).prop_map(CtxAct::Send),
        // The closes that cut the conversation short are rarer: cases without them check
        // that nothing is lost.
        1 => prop_oneof![Just(CtxAct::CloseAfterFlush), Just(CtxAct::ForceClose)],
        1 => Just(CtxAct::Shutdown),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1usize..100_000).prop_map(Op::PeerSend),
        1 => Just(Op::PeerFin),
        1 => Just(Op::PeerReset),
        2 => any::<bool>().prop_map(Op::PeerRead),
        1 => Just(Op::HandlePause),
        1 => Just(Op::HandleResume),
        1 => prop_oneof![Just(Op::HandleCloseAfterFlush), Just(Op::HandleForceClose)],
        1 => Just(Op::HandleShutdown),
        6 => ctx_act().prop_map(Op::Queued),
        4 => ctx_act().prop_map(Op::InCallback),
        5 => Just(Op::Settle),
        1 => Just(Op::ServerShutdown),
    ]
}

/// How the server is built.
#[derive(Debug, Clone, Copy)]
struct Config {
    edge: bool,
    limit: Option<OutputLimit>,
    low_marks: bool,
    /// Whether the peer reads from the start.
    peer_reads: bool,
    /// With `on_peer_half_close` (it closes after flush) and
    /// `on_peer_half_close_while_paused` (it only notes the call).
    half_close_cbs: bool,
    /// Over TLS.
    tls: bool,
}

fn config() -> impl Strategy<Value = Config> {
    (
        any::<bool>(),
        prop_oneof![
            Just(None),
            Just(Some(OutputLimit::Discard)),
            Just(Some(OutputLimit::Close))
        ],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(edge, limit, low_marks, peer_reads, half_close_cbs, tls)| Config {
                edge,
                limit,
                low_marks,
                peer_reads,
                half_close_cbs,
                tls,
            },
        )
}

/// The certificates of the TLS cases (made once).
fn pki() -> &'static util::pki::Pki {
    static PKI: std::sync::OnceLock<util::pki::Pki> = std::sync::OnceLock::new();
    PKI.get_or_init(util::pki::pki)
}

fn start_server(cfg: Config, model: Model) -> TestServer {
    TestServer::start(move || -> ServerBuilder {
        let (m1, m2, m3) = (model.clone(), model.clone(), model.clone());
        let (m4, m5, m6) = (model.clone(), model.clone(), model.clone());
        let mut b = TcpServer::builder("r12-model", localhost())
            .io_threads(1)
            .edge_triggered(cfg.edge)
            .close_linger(Duration::from_secs(3))
            .on_connection(move |conn| {
                let mut s = m1.side();
                if conn.is_connected() {
                    s.events.push(Ev::Up);
                    s.conn = Some(conn.clone());
                } else {
                    s.events.push(Ev::Down);
                    s.reason = conn.close_reason();
                }
            })
            .on_message(move |ctx, input| {
                let armed = {
                    let mut s = m2.side();
                    s.events.push(Ev::Msg);
                    s.received.extend_from_slice(input.peek());
                    s.armed.take()
                };
                input.consume_all();
                if let Some(act) = armed {
                    m2.act(ctx, act);
                }
            })
            .on_close(move |conn| {
                let mut s = m3.side();
                s.events.push(Ev::Close);
                if conn.close_reason() == Some(CloseReason::Panic) {
                    s.panicked = true;
                }
            });
        b = b.on_write_complete(move |ctx| {
            if ctx.output_len() != 0 {
                let left = ctx.output_len();
                m4.side()
                    .broken
                    .push(format!("write-complete with {left} bytes queued"));
            }
        });
        if cfg.half_close_cbs {
            b = b
                .on_peer_half_close(move |ctx| {
                    // The peer has finished: nothing it sends can come after this close.
                    m5.log(Ev::Caf);
                    ctx.close_after_flush();
                })
                .on_peer_half_close_while_paused(move |ctx| {
                    let mut s = m6.side();
                    s.paused_half_closes += 1;
                    if !ctx.is_reading_paused() {
                        s.broken.push("paused half-close while reading".into());
                    }
                });
        }
        if let Some(policy) = cfg.limit {
            b = b.output_limit(64 << 10, policy);
        }
        if cfg.tls {
            b = b.tls(pki().server_config());
        }
        if cfg.low_marks {
            b = b.water_marks(128 << 10, 32 << 10);
        }
        b
    })
}

/// Waits until the loop has run every function queued on it before (the peer reads
/// meanwhile, if it reads).
fn sync_loop(conn: &TcpConnection, peer: &mut Peer) {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = done.clone();
    let _ = conn
        .loop_handle()
        .queue_in_loop(move |_| d.store(true, Ordering::SeqCst));
    duo_testkit::wait_until("the loop ran what was queued", || {
        peer.drain();
        done.load(Ordering::SeqCst)
    });
}

fn handle(model: &Model) -> Option<TcpConnection> {
    model.side().conn.clone()
}

/// Runs one case; panics on a broken invariant.
fn run_case(cfg: Config, ops: &[Op]) {
    init_log();
    let model = Model::default();
    let server = start_server(cfg, model.clone());
    let mut peer = Peer::connect(server.addr(), cfg.tls.then(pki));
    peer.reading = cfg.peer_reads;
    duo_testkit::wait_until("the connection is up", || handle(&model).is_some());
    let conn = handle(&model).expect("up");

    for &op in ops {
        match op {
            Op::PeerSend(n) => peer.send(n, &model.peer_sent),
            Op::PeerFin => peer.fin(&model.peer_sent),
            Op::PeerReset => peer.reset(),
            Op::PeerRead(on) => peer.reading = on,
            Op::HandlePause => {
                if conn.stop_reading().is_ok() {
                    model.log(Ev::PauseByHandle);
                }
            }
            Op::HandleResume => {
                model.log(Ev::ResumeByHandle);
                let _ = conn.start_reading();
            }
            Op::HandleCloseAfterFlush => {
                // The handle's function may run later, between the loop's events: what
                // the peer sends from now on counts as sent after it, and the event is
                // logged by a function queued behind it (no message may follow that).
                model.side().caf_peer_sent.get_or_insert(peer.wire());
                let _ = conn.close_after_flush();
                let m = model.clone();
                let _ = conn.queue_in_loop(move |_| m.log(Ev::Caf));
            }
            Op::HandleShutdown => {
                let _ = conn.shutdown();
            }
            Op::HandleForceClose => {
                // Noted before it runs (nothing can be queued behind a close).
                model.side().forced = true;
                let _ = conn.force_close();
            }
            Op::Queued(act) => {
                let m = model.clone();
                let _ = conn.queue_in_loop(move |ctx| m.act(ctx, act));
            }
            Op::ServerShutdown => server.handle().shutdown(END_BOUND * 2, |_| {}),
            Op::InCallback(act) => model.side().armed = Some(act),
            Op::Settle => {
                // Everything queued before has run on the loop...
                sync_loop(&conn, &mut peer);
                // ... and the server had a moment to read what the peer sent.
                let deadline = Instant::now() + Duration::from_millis(30);
                while Instant::now() < deadline && model.side().received.len() < peer.sent {
                    peer.drain();
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        peer.drain();
    }

    // The ordinary end: the server resumes reading, the peer half-closes and reads all.
    // (A function queued before may pause again on the loop after `start_reading` took
    // effect, as the handle's pause and resume act at once: resume on the loop too, after
    // every function queued before.)
    model.side().armed = None;
    model.log(Ev::ResumeByHandle);
    let _ = conn.start_reading();
    let m = model.clone();
    let _ = conn.queue_in_loop(move |ctx| m.act(ctx, CtxAct::Resume));
    peer.reading = true;
    sync_loop(&conn, &mut peer);
    let wire_before_end = peer.wire();
    let closing = {
        let s = model.side();
        s.caf_peer_sent.is_some() || s.forced
    };
    if closing {
        // A connection the application closes ends by itself: the peer does not send
        // (over TLS, its close_notify) into a socket closed already.
        let deadline = Instant::now() + END_BOUND;
        while !peer.ended {
            assert!(
                Instant::now() < deadline,
                "a closing connection did not end within {END_BOUND:?}: {cfg:?} {ops:?}; events {:?}",
                model.side().events
            );
            peer.drain();
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    peer.fin(&model.peer_sent);
    let deadline = Instant::now() + END_BOUND;
    loop {
        peer.drain();
        let closed = model.side().events.contains(&Ev::Close);
        if closed && peer.ended {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no end within {END_BOUND:?} (closed: {closed}, peer saw the end: {}); {cfg:?} {ops:?}; events {:?}",
            peer.ended,
            model.side().events
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    server.wait_for_stats("the connection is gone from the counters", |s| {
        s.active == 0 && s.closed == 1
    });

    let s = model.side();
    let what = format!(
        "{cfg:?} {ops:?}; events {:?}; reason {:?}",
        s.events, s.reason
    );
    let reason = s.reason.expect("a close reason");
    assert!(!s.panicked, "a callback panicked: {what}");
    assert!(s.broken.is_empty(), "{:?}: {what}", s.broken);
    assert!(
        s.paused_half_closes <= 2,
        "told of a paused half-close {} times: {what}",
        s.paused_half_closes
    );

    // Events: up first, down and close once each, close last, no message after the end
    // was asked for or while a pause made on the loop holds. (What the test thread did
    // through the handle is logged too, in no fixed order with the loop's events.)
    let on_loop: Vec<Ev> = (s.events.iter().copied())
        .filter(|e| !matches!(e, Ev::PauseByHandle | Ev::ResumeByHandle))
        .collect();
    assert_eq!(on_loop.first(), Some(&Ev::Up), "{what}");
    assert_eq!(
        on_loop.iter().filter(|e| **e == Ev::Up).count(),
        1,
        "{what}"
    );
    assert_eq!(
        on_loop.iter().filter(|e| **e == Ev::Down).count(),
        1,
        "{what}"
    );
    assert_eq!(
        on_loop.iter().filter(|e| **e == Ev::Close).count(),
        1,
        "{what}"
    );
    assert_eq!(on_loop.last(), Some(&Ev::Close), "{what}");
    let down = on_loop.iter().position(|e| *e == Ev::Down).unwrap();
    assert_eq!(on_loop.get(down + 1), Some(&Ev::Close), "{what}");
    let mut ended = false;
    let mut paused_on_loop = false;
    let mut since_handle_pause: Option<usize> = None;
    for ev in &s.events {
        match ev {
            Ev::Caf | Ev::Force => ended = true,
            Ev::PauseOnLoop => paused_on_loop = true,
            Ev::PauseByHandle => {
                since_handle_pause.get_or_insert(0);
            }
            Ev::Resume | Ev::ResumeByHandle => {
                paused_on_loop = false;
                since_handle_pause = None;
            }
            Ev::Msg => {
                assert!(!ended, "a message after a close was asked for: {what}");
                assert!(!paused_on_loop, "a message while paused: {what}");
                if let Some(n) = since_handle_pause.as_mut() {
                    *n += 1;
                    assert!(*n <= 1, "messages after stop_reading returned: {what}");
                }
            }
            _ => {}
        }
    }

    // Input: a prefix of what the peer sent, all of it unless cut short.
    let n = s.received.len();
    assert!(
        n <= peer.sent,
        "more delivered than sent: {n} > {}; {what}",
        peer.sent
    );
    if let Some(bad) = (0..n).find(|&i| s.received[i] != peer_byte(i)) {
        panic!("delivered input differs at {bad}: {what}");
    }
    let cut_short =
        s.forced || s.caf_peer_sent.is_some() || peer.reset || reason == CloseReason::OutputLimit;
    if !cut_short {
        assert_eq!(n, peer.sent, "input lost: {what}");
    }
    // A reset loses only what the server's kernel had not taken yet.
    let app_cut = s.forced || s.caf_peer_sent.is_some() || reason == CloseReason::OutputLimit;
    if peer.reset && !app_cut {
        assert!(
            n >= peer.acked_at_reset,
            "input the kernel took lost to a reset: {n} < {}; {what}",
            peer.acked_at_reset
        );
    }

    // Output: a prefix of what the server's sends accepted, all of it unless cut short.
    let got = peer.got.len();
    assert!(
        got <= s.sent,
        "more received than sent: {got} > {}; {what}",
        s.sent
    );
    if let Some(bad) = (0..got).find(|&i| peer.got[i] != server_byte(i)) {
        panic!("received output differs at {bad}: {what}");
    }
    // After a close, bytes the peer sends are answered with a reset that may cut the
    // server's last output short: TCP, not the library.
    let peer_sent_after_caf = s.caf_peer_sent.is_some_and(|at| wire_before_end > at);
    let out_cut = s.forced || peer.reset || reason == CloseReason::OutputLimit;
    if !out_cut && !peer_sent_after_caf {
        assert_eq!(got, s.sent, "output lost: {what}");
    }
    if std::env::var_os("R12_VERBOSE").is_some() {
        eprintln!(
            "reason {reason:?}: in {n}/{} out {got}/{}; {cfg:?} {ops:?}",
            peer.sent, s.sent
        );
    }
    drop(s);
    server.stop();
}

proptest! {
    #![proptest_config(ProptestConfig {
        // `R12_CASES` searches longer (the default keeps the test under a few seconds).
        cases: std::env::var("R12_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    })]

    /// Random sequences of both sides' actions keep every promise of the model.
    #[test]
    fn a_connection_keeps_its_promises_whatever_both_sides_do(
        cfg in config(),
        ops in prop::collection::vec(op(), 1..20),
    ) {
        run_case(cfg, &ops);
    }
}
