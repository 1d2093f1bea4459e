//! Connection states combined, on every server topology: reading paused (by the
//! application or by backpressure) × the peer's half-close × the peer's reset × output
//! still queued × close requests from another thread × idle timeout × graceful stop, on a
//! single reactor, on two I/O threads (edge and level triggered, each accept mode) and on
//! eight loops shared by two threads.
//!
//! Every test checks what a user relies on: every byte sent before a graceful close
//! arrives, every byte the peer sent reaches the message callback before a close the
//! peer caused, each connection is up once and closed once (with a sensible reason) and
//! no callback runs after its close, the server's counters add up, nothing hangs, and the
//! server still serves new connections afterwards.

mod util;

use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use duo_net::{
    AcceptMode, CloseReason, ConnCtx, EventLoop, LoopHandle, ServerBuilder, ServerHandle,
    ServerStats, TcpConnection, TcpServer,
};
use duo_testkit::{join_within, wait_until, LIMIT};
use util::{echo_once, init_log, localhost, read_until_closed, End, TestServer};

/// What the server sends each connection when it comes up (with `Knobs::greeting` on):
/// 16 MiB, or twice the host's largest TCP send buffer if that is more (up to 128 MiB),
/// so that a client which does not read leaves output queued in the server (checked, not
/// assumed: the tests wait until the connection has output queued).
fn greeting_len() -> usize {
    static LEN: OnceLock<usize> = OnceLock::new();
    *LEN.get_or_init(|| {
        let wmem_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
            .ok()
            .and_then(|s| s.split_whitespace().nth(2)?.parse::<usize>().ok())
            .unwrap_or(0);
        (2 * wmem_max + (1 << 20)).clamp(16 << 20, 128 << 20)
    })
}
/// What a client sends before it half-closes or resets.
const REQUEST: usize = 100_000;
/// Water marks of the servers that also test backpressure.
const HIGH: usize = 256 << 10;
const LOW: usize = 128 << 10;
/// The receive buffer of the clients that do not read: keeps the kernel's share of the
/// greeting small, whatever the host's autotuning limits.
const CLIENT_RCVBUF: usize = 64 << 10;

/// Where and how a server runs its connections.
#[derive(Debug, Clone, Copy)]
struct Topology {
    name: &'static str,
    io_threads: usize,
    loops: usize,
    edge: bool,
    accept: AcceptMode,
}

const TOPOLOGIES: [Topology; 7] = [
    Topology {
        name: "single-reactor",
        io_threads: 0,
        loops: 0,
        edge: true,
        accept: AcceptMode::Shared,
    },
    Topology {
        name: "2-threads-shared-edge",
        io_threads: 2,
        loops: 0,
        edge: true,
        accept: AcceptMode::Shared,
    },
    Topology {
        name: "2-threads-shared-level",
        io_threads: 2,
        loops: 0,
        edge: false,
        accept: AcceptMode::Shared,
    },
    Topology {
        name: "2-threads-main-loop-accepts",
        io_threads: 2,
        loops: 0,
        edge: true,
        accept: AcceptMode::MainLoop,
    },
    Topology {
        name: "2-threads-reuse-port-level",
        io_threads: 2,
        loops: 0,
        edge: false,
        accept: AcceptMode::ReusePort,
    },
    Topology {
        name: "8-loops-on-2-threads",
        io_threads: 2,
        loops: 8,
        edge: true,
        accept: AcceptMode::Shared,
    },
    Topology {
        name: "8-loops-on-2-threads-main-loop-level",
        io_threads: 2,
        loops: 8,
        edge: false,
        accept: AcceptMode::MainLoop,
    },
];

/// A deterministic byte stream (a prime period, so a lost or repeated block shows).
fn stream(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 65_521) as u32 * 31 + u32::from(seed)) as u8)
        .collect()
}

fn greeting() -> &'static [u8] {
    static G: OnceLock<Vec<u8>> = OnceLock::new();
    G.get_or_init(|| stream(7, greeting_len()))
}

fn request() -> &'static [u8] {
    static R: OnceLock<Vec<u8>> = OnceLock::new();
    R.get_or_init(|| stream(99, REQUEST))
}

/// A callback the server ran, in the order it ran for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    Up,
    Message,
    WriteComplete,
    HighWater,
    HalfClose,
    Shutdown,
    Down,
    Close,
}

#[derive(Default)]
struct ConnLog {
    conn: Option<TcpConnection>,
    events: Vec<Ev>,
    received: Vec<u8>,
    reason: Option<CloseReason>,
}

/// Everything the server's callbacks saw, by connection id.
#[derive(Default)]
struct Probe {
    conns: Mutex<HashMap<u64, ConnLog>>,
}

impl Probe {
    fn record(&self, conn: &TcpConnection, ev: Ev) {
        let mut conns = self.conns.lock().unwrap();
        let log = conns.entry(conn.id()).or_default();
        if log.conn.is_none() {
            log.conn = Some(conn.clone());
        }
        if ev == Ev::Down {
            log.reason = conn.close_reason();
        }
        log.events.push(ev);
    }

    /// The server's side of `client`.
    fn conn_of(&self, client: &TcpStream) -> TcpConnection {
        let me = client.local_addr().unwrap();
        let mut found = None;
        wait_until("the server's side of the client", || {
            found = self
                .conns
                .lock()
                .unwrap()
                .values()
                .filter_map(|l| l.conn.clone())
                .find(|c| c.peer_addr() == me);
            found.is_some()
        });
        found.unwrap()
    }

    fn events(&self, id: u64) -> Vec<Ev> {
        self.conns.lock().unwrap()[&id].events.clone()
    }

    fn received(&self, id: u64) -> Vec<u8> {
        self.conns.lock().unwrap()[&id].received.clone()
    }

    fn received_len(&self, id: u64) -> usize {
        self.conns.lock().unwrap()[&id].received.len()
    }

    fn is_closed(&self, id: u64) -> bool {
        self.conns.lock().unwrap()[&id].events.contains(&Ev::Close)
    }

    /// Waits for the close callback of connection `id`; its reason.
    fn wait_closed(&self, id: u64) -> CloseReason {
        wait_until("the close callback", || self.is_closed(id));
        self.conns.lock().unwrap()[&id]
            .reason
            .expect("a close reason before the down callback")
    }

    /// Every connection was up once, went down once and closed once, in that order, and
    /// no callback ran after its close; returns the close reasons.
    fn check(&self, what: &str) -> Vec<CloseReason> {
        let conns = self.conns.lock().unwrap();
        let mut reasons = Vec::new();
        for (id, log) in conns.iter() {
            let ev = &log.events;
            let count = |e: Ev| ev.iter().filter(|&&x| x == e).count();
            assert_eq!(
                ev.first(),
                Some(&Ev::Up),
                "{what}: #{id} not up first: {ev:?}"
            );
            assert_eq!(count(Ev::Up), 1, "{what}: #{id}: {ev:?}");
            assert_eq!(count(Ev::Down), 1, "{what}: #{id} down once: {ev:?}");
            assert_eq!(count(Ev::Close), 1, "{what}: #{id} closed once: {ev:?}");
            assert_eq!(
                &ev[ev.len() - 2..],
                &[Ev::Down, Ev::Close],
                "{what}: #{id}: a callback after the close: {ev:?}"
            );
            let conn = log.conn.as_ref().unwrap();
            assert!(conn.is_closed(), "{what}: #{id}");
            reasons.push(log.reason.expect("a reason"));
        }
        reasons
    }
}

/// What the server does, changed by the test as it goes (read at each event).
#[derive(Default)]
struct Knobs {
    /// New connections start with reading paused.
    pause: AtomicBool,
    /// New connections are sent the first `greeting` bytes of [`greeting`].
    greeting: AtomicUsize,
    /// Received bytes are echoed (else only recorded).
    echo: AtomicBool,
}

impl Knobs {
    fn new(pause: bool, greeting: usize, echo: bool) -> Arc<Knobs> {
        Arc::new(Knobs {
            pause: AtomicBool::new(pause),
            greeting: AtomicUsize::new(greeting),
            echo: AtomicBool::new(echo),
        })
    }
    /// From now on: a plain echo server.
    fn plain_echo(&self) {
        self.pause.store(false, Ordering::SeqCst);
        self.greeting.store(0, Ordering::SeqCst);
        self.echo.store(true, Ordering::SeqCst);
    }
}

/// Options of [`serve`] beyond the topology.
#[derive(Clone, Copy, Default)]
struct Plan {
    water_marks: Option<(usize, usize)>,
    idle: Option<Duration>,
    /// An `on_peer_half_close` callback that only records (the connection stays open).
    keep_half_open: bool,
    /// An `on_shutdown` callback that resumes reading and half-closes.
    resume_on_shutdown: bool,
}

struct Served {
    server: TestServer,
    probe: Arc<Probe>,
    knobs: Arc<Knobs>,
    topo: Topology,
}

fn serve(topo: Topology, plan: Plan, knobs: Arc<Knobs>) -> Served {
    init_log();
    let probe = Arc::new(Probe::default());
    let (p, k) = (probe.clone(), knobs.clone());
    let server = TestServer::start(move || build(topo, plan, p, k));
    Served {
        server,
        probe,
        knobs,
        topo,
    }
}

/// A server on `topo` whose callbacks record into `p` and follow `k`.
fn build(topo: Topology, plan: Plan, p: Arc<Probe>, k: Arc<Knobs>) -> ServerBuilder {
    let mut b = TcpServer::builder(topo.name, localhost())
        .io_threads(topo.io_threads)
        .loops(topo.loops)
        .edge_triggered(topo.edge)
        .accept_mode(topo.accept);
    if let Some((high, low)) = plan.water_marks {
        b = b.water_marks(high, low);
    }
    if let Some(idle) = plan.idle {
        b = b.idle_timeout(idle);
    }
    let (p1, p2, p3, p4, p5, p6) = (
        p.clone(),
        p.clone(),
        p.clone(),
        p.clone(),
        p.clone(),
        p.clone(),
    );
    let k1 = k.clone();
    b = b
        .on_connection(move |conn| {
            if conn.is_connected() {
                p1.record(conn, Ev::Up);
                if k1.pause.load(Ordering::SeqCst) {
                    conn.stop_reading().unwrap();
                }
                let n = k1.greeting.load(Ordering::SeqCst);
                if n > 0 {
                    conn.send(&greeting()[..n]).unwrap();
                }
            } else {
                p1.record(conn, Ev::Down);
            }
        })
        .on_message(move |ctx, input| {
            p2.record(ctx.connection(), Ev::Message);
            let id = ctx.connection().id();
            p2.conns
                .lock()
                .unwrap()
                .get_mut(&id)
                .unwrap()
                .received
                .extend_from_slice(input.peek());
            if k.echo.load(Ordering::SeqCst) {
                ctx.send(input.peek());
            }
            input.consume_all();
        })
        .on_write_complete(move |ctx| p3.record(ctx.connection(), Ev::WriteComplete))
        .on_high_water_mark(move |ctx, _| p4.record(ctx.connection(), Ev::HighWater))
        .on_close(move |conn| p5.record(conn, Ev::Close));
    if plan.keep_half_open {
        let p = p6.clone();
        b = b.on_peer_half_close(move |ctx| p.record(ctx.connection(), Ev::HalfClose));
    }
    if plan.resume_on_shutdown {
        b = b.on_shutdown(move |ctx: &mut ConnCtx<'_>| {
            p6.record(ctx.connection(), Ev::Shutdown);
            ctx.start_reading();
            ctx.shutdown();
        });
    }
    b
}

fn queued(st: &ServerStats) -> u64 {
    st.output_queued()
}

fn backpressured(st: &ServerStats) -> u64 {
    st.per_loop.iter().map(|l| l.backpressured).sum()
}

/// The counters of a server all of whose connections have closed add up.
fn check_counters(what: &str, st: &ServerStats) {
    let opened: u64 = st.per_loop.iter().map(|l| l.opened).sum();
    assert_eq!(st.active, 0, "{what}: {st:?}");
    assert_eq!(st.accepted, st.closed, "{what}: {st:?}");
    assert_eq!(opened, st.accepted, "{what}: {st:?}");
    assert_eq!(st.closes().total(), st.closed, "{what}: {st:?}");
    assert_eq!(queued(st), 0, "{what}: output still counted queued: {st:?}");
    assert_eq!(
        backpressured(st),
        0,
        "{what}: still counted backpressured: {st:?}"
    );
}

impl Served {
    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    fn stats(&self) -> ServerStats {
        self.server.stats()
    }

    fn what(&self, step: &str) -> String {
        format!("{}: {step}", self.topo.name)
    }

    /// A new plain connection still gets its echo.
    fn still_serves(&self) {
        self.knobs.plain_echo();
        let mut c = client(self.addr());
        echo_once(&mut c, b"still serving");
        drop(c);
    }

    /// Stops the server gracefully, then checks every connection's callbacks and the
    /// counters; returns the close reasons.
    fn finish(self) -> Vec<CloseReason> {
        let what = self.what("at the end");
        let handle = self.server.handle().clone();
        self.server.stop();
        let reasons = self.probe.check(&what);
        let st = handle.stats();
        check_counters(&what, &st);
        assert_eq!(st.closed, reasons.len() as u64, "{what}: {st:?}");
        reasons
    }
}

/// A blocking client with deadlines.
fn client(addr: SocketAddr) -> TcpStream {
    util::connect(addr)
}

/// A client with a small receive buffer, for clients that do not read at first.
fn slow_client(addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(CLIENT_RCVBUF).unwrap();
    s.connect(&addr.into())
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let s = TcpStream::from(s);
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.set_write_timeout(Some(LIMIT)).unwrap();
    s
}

/// Waits until the kernel delivered everything `s` wrote (the peer's kernel holds it).
fn wait_acknowledged(s: &TcpStream) {
    wait_until("our bytes acknowledged", || {
        duo_sys::bytes_unacknowledged(s.as_fd()).unwrap_or(usize::MAX) == 0
    });
}

/// Resets the connection (`SO_LINGER` 0, then close).
fn reset(s: TcpStream) {
    let s = socket2::Socket::from(s);
    s.set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);
}

/// Asserts that `got` is a prefix of `expected`, naming the first difference.
fn assert_prefix(what: &str, got: &[u8], expected: &[u8]) {
    assert!(
        got.len() <= expected.len(),
        "{what}: {} bytes, only {} sent",
        got.len(),
        expected.len()
    );
    if got != &expected[..got.len()] {
        let at = (0..got.len()).find(|&i| got[i] != expected[i]).unwrap();
        panic!("{what}: byte {at} differs");
    }
}

/// Runs `f` for every topology, each on a thread of its own (for tests that mostly wait).
fn on_every_topology_at_once(f: fn(Topology)) {
    let threads: Vec<_> = TOPOLOGIES
        .iter()
        .map(|&t| {
            thread::Builder::new()
                .name(t.name.into())
                .spawn(move || f(t))
                .unwrap()
        })
        .collect();
    for t in threads {
        join_within("a topology's run", t);
    }
}

/// The connection's queued output, asked on its loop; `None` once it is closed.
fn output_len(conn: &TcpConnection) -> Option<usize> {
    let (tx, rx) = mpsc::channel();
    conn.queue_in_loop(move |ctx| {
        let _ = tx.send(ctx.output_len());
    })
    .ok()?;
    rx.recv_timeout(LIMIT).ok()
}

/// Waits until `conn` has output queued and (with `backpressure`) the server counts a
/// connection backpressured.
fn wait_queued(s: &Served, conn: &TcpConnection, backpressure: bool) {
    wait_until("output queued", || {
        output_len(conn).unwrap_or(0) > 0 && (!backpressure || backpressured(&s.stats()) == 1)
    });
}

// ---------------------------------------------------------------------------------------

/// Paused by the application and by backpressure, output queued, the peer sends a
/// request, half-closes, then resets: the queued output is dropped at once (the gauges go
/// to zero), but the connection stays open until reading resumes from another thread; it
/// then delivers the whole request and closes once, for the reset.
#[test]
fn paused_and_backpressured_then_half_close_then_reset_keeps_the_request() {
    for topo in TOPOLOGIES {
        let s = serve(
            topo,
            Plan {
                water_marks: Some((HIGH, LOW)),
                ..Plan::default()
            },
            Knobs::new(true, greeting_len(), false),
        );
        let mut c = slow_client(s.addr());
        let conn = s.probe.conn_of(&c);
        c.write_all(request()).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        wait_queued(&s, &conn, true);
        wait_acknowledged(&c);
        reset(c);
        wait_until("the queued output dropped", || {
            let st = s.stats();
            queued(&st) == 0 && backpressured(&st) == 0
        });
        assert!(
            !s.probe.is_closed(conn.id()),
            "{}: closed while paused: the request was discarded",
            topo.name
        );
        assert_eq!(s.probe.received_len(conn.id()), 0);
        conn.start_reading().unwrap();
        // A reset after the peer's FIN reads as a broken pipe (Linux: `EPIPE` in
        // `CLOSE_WAIT`), before it as a reset.
        let reason = s.probe.wait_closed(conn.id());
        assert!(
            matches!(
                reason,
                CloseReason::Error(ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
            ),
            "{}: {reason:?}",
            topo.name
        );
        assert!(
            s.probe.received(conn.id()) == request(),
            "{}: the request, whole",
            topo.name
        );
        assert_eq!(s.stats().closes().error, 1, "{}", topo.name);
        s.still_serves();
        s.finish();
    }
}

/// Paused by the application and by backpressure with output queued, the peer sends a
/// request and half-closes; reading resumes from another thread: the peer gets the whole
/// greeting, then the echo of its request, then the end of stream; the server closes
/// once, for the peer.
#[test]
fn paused_and_backpressured_half_closed_peer_gets_everything_after_resume() {
    for topo in TOPOLOGIES {
        let s = serve(
            topo,
            Plan {
                water_marks: Some((HIGH, LOW)),
                ..Plan::default()
            },
            Knobs::new(true, greeting_len(), true),
        );
        let mut c = slow_client(s.addr());
        let conn = s.probe.conn_of(&c);
        c.write_all(request()).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        wait_queued(&s, &conn, true);
        let resumer = {
            let conn = conn.clone();
            thread::spawn(move || conn.start_reading().unwrap())
        };
        let (got, end) = read_until_closed(&mut c);
        join_within("the resuming thread", resumer);
        let mut expected = greeting().to_vec();
        expected.extend_from_slice(request());
        assert_prefix(&s.what("greeting then echo"), &got, &expected);
        assert_eq!(got.len(), expected.len(), "{}", topo.name);
        assert_eq!(end, End::Eof, "{}", topo.name);
        assert_eq!(s.probe.wait_closed(conn.id()), CloseReason::Peer);
        assert!(s.probe.events(conn.id()).contains(&Ev::HighWater));
        s.still_serves();
        s.finish();
    }
}

/// What another thread asks of a connection.
#[derive(Debug, Clone, Copy)]
enum Action {
    ForceClose,
    CloseAfterFlush,
    Shutdown,
    ForceCloseAfter,
    /// shutdown, close_after_flush, force_close, one right after the other.
    All,
}

/// Asks `conn` for `action` from this thread. The first request must be accepted; a
/// repeated one may find the connection already closed (and then says so).
fn act(conn: &TcpConnection, action: Action, first: bool) {
    let result = match action {
        Action::ForceClose => conn.force_close(),
        Action::CloseAfterFlush => conn.close_after_flush(),
        Action::Shutdown => conn.shutdown(),
        Action::ForceCloseAfter => conn.force_close_after(Duration::from_millis(100)),
        Action::All => conn
            .shutdown()
            .and_then(|()| conn.close_after_flush())
            .and_then(|()| conn.force_close()),
    };
    if first {
        result.unwrap_or_else(|e| panic!("{action:?}: {e}"));
    } else if result.is_err() {
        assert!(conn.is_closed(), "{action:?} refused on an open connection");
    }
}

/// A connection paused with output queued whose peer half-closed (without data): each
/// close request, made twice from another thread, closes it exactly once with the
/// application's reason; a graceful one (close_after_flush, shutdown) delivers the whole
/// output first, the others a clean prefix of it.
#[test]
fn close_requests_from_another_thread_twice_on_a_paused_half_closed_connection() {
    let actions = [
        Action::ForceClose,
        Action::CloseAfterFlush,
        Action::Shutdown,
        Action::ForceCloseAfter,
        Action::All,
    ];
    for topo in TOPOLOGIES {
        let s = serve(
            topo,
            Plan::default(),
            Knobs::new(true, greeting_len(), false),
        );
        for action in actions {
            let what = s.what(&format!("{action:?}"));
            let mut c = slow_client(s.addr());
            let conn = s.probe.conn_of(&c);
            c.shutdown(Shutdown::Write).unwrap();
            wait_queued(&s, &conn, false);
            let started = Instant::now();
            let actor = {
                let conn = conn.clone();
                thread::spawn(move || {
                    act(&conn, action, true);
                    act(&conn, action, false);
                })
            };
            join_within("the acting thread", actor);
            let (got, end) = read_until_closed(&mut c);
            assert_prefix(&what, &got, greeting());
            match action {
                Action::CloseAfterFlush | Action::Shutdown => {
                    assert_eq!(got.len(), greeting_len(), "{what}: the whole output");
                    assert_eq!(end, End::Eof, "{what}");
                }
                _ => {}
            }
            if let Action::Shutdown = action {
                // Half-closed by us, its peer's end of stream waits behind the pause.
                assert!(!s.probe.is_closed(conn.id()), "{what}");
                conn.start_reading().unwrap();
                assert_eq!(s.probe.wait_closed(conn.id()), CloseReason::Peer, "{what}");
            } else {
                assert_eq!(s.probe.wait_closed(conn.id()), CloseReason::User, "{what}");
            }
            if let Action::ForceCloseAfter = action {
                assert!(started.elapsed() >= Duration::from_millis(100), "{what}");
            }
            wait_until("the output dropped or written", || queued(&s.stats()) == 0);
            // Too late now: every request says so, none runs.
            assert!(conn.send(&b"late"[..]).is_err(), "{what}");
            assert!(conn.force_close().is_err(), "{what}");
            assert!(conn.close_after_flush().is_err(), "{what}");
            assert!(conn.shutdown().is_err(), "{what}");
            assert!(conn.stop_reading().is_err(), "{what}");
            assert!(conn.start_reading().is_err(), "{what}");
        }
        s.still_serves();
        let reasons = s.finish();
        assert_eq!(reasons.len(), actions.len() + 1, "{}", topo.name);
    }
}

/// The application stops reading, replies and asks for close_after_flush (what the
/// `on_shutdown` documentation recommends) while the peer has sent more that will never be
/// read: the peer must still get the whole reply before the end of the stream.
#[test]
fn close_after_flush_with_unread_input_delivers_the_whole_output() {
    for topo in TOPOLOGIES {
        let s = serve(
            topo,
            Plan::default(),
            Knobs::new(true, greeting_len(), false),
        );
        let mut c = slow_client(s.addr());
        let conn = s.probe.conn_of(&c);
        c.write_all(request()).unwrap();
        wait_queued(&s, &conn, false);
        wait_acknowledged(&c);
        conn.close_after_flush().unwrap();
        let (got, end) = read_until_closed(&mut c);
        let what = s.what("close_after_flush with unread input");
        assert_prefix(&what, &got, greeting());
        assert_eq!(
            (got.len(), end),
            (greeting_len(), End::Eof),
            "{what}: the reply cut short"
        );
        // The server lingers for our end of stream (its unread input), which we send
        // as a peer does once it has read the end of the reply.
        drop(c);
        assert_eq!(s.probe.wait_closed(conn.id()), CloseReason::User);
        s.still_serves();
        s.finish();
    }
}

/// The peer is gone (reset) while nothing is paused: the connection closes once, for the
/// reset; every request made afterwards from another thread (twice each) reports it
/// closed and none calls back; done for two peers in a row on the same server.
#[test]
fn requests_after_the_peer_is_gone_are_refused_and_harmless() {
    for topo in TOPOLOGIES {
        let s = serve(topo, Plan::default(), Knobs::new(false, 0, true));
        for round in 0..2 {
            let what = s.what(&format!("round {round}"));
            let mut c = client(s.addr());
            echo_once(&mut c, b"hello");
            let conn = s.probe.conn_of(&c);
            reset(c);
            let reason = s.probe.wait_closed(conn.id());
            assert!(
                matches!(
                    reason,
                    CloseReason::Error(ErrorKind::ConnectionReset) | CloseReason::Peer
                ),
                "{what}: {reason:?}"
            );
            for _ in 0..2 {
                assert!(conn.force_close().is_err(), "{what}");
                assert!(conn.shutdown().is_err(), "{what}");
                assert!(conn.close_after_flush().is_err(), "{what}");
                assert!(conn.send(&b"x"[..]).is_err(), "{what}");
                assert!(conn.stop_reading().is_err(), "{what}");
                assert!(conn.start_reading().is_err(), "{what}");
                // A timer that finds the connection closed does nothing.
                let _ = conn.force_close_after(Duration::from_millis(1));
            }
        }
        s.still_serves();
        let reasons = s.finish();
        assert_eq!(reasons.len(), 3, "{}", topo.name);
    }
}

/// An echo connection backpressured by a peer that writes without reading, which then
/// resets: the queued output and the backpressure are released, the connection closes
/// once for the reset, and the server serves the next client.
#[test]
fn backpressured_echo_reset_by_the_peer_releases_everything() {
    for topo in TOPOLOGIES {
        let s = serve(
            topo,
            Plan {
                water_marks: Some((HIGH, LOW)),
                ..Plan::default()
            },
            Knobs::new(false, 0, true),
        );
        let c = slow_client(s.addr());
        let conn = s.probe.conn_of(&c);
        c.set_nonblocking(true).unwrap();
        let chunk = vec![5u8; 64 << 10];
        let deadline = Instant::now() + LIMIT;
        // Write until the server pushes back (its reading paused, its output queued).
        loop {
            assert!(Instant::now() < deadline, "{}: no backpressure", topo.name);
            match (&c).write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if backpressured(&s.stats()) == 1 {
                        break;
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("{}: write: {e}", topo.name),
            }
        }
        reset(c);
        let reason = s.probe.wait_closed(conn.id());
        assert!(
            matches!(
                reason,
                CloseReason::Error(ErrorKind::ConnectionReset) | CloseReason::Peer
            ),
            "{}: {reason:?}",
            topo.name
        );
        let st = s.stats();
        assert_eq!((queued(&st), backpressured(&st)), (0, 0), "{st:?}");
        s.still_serves();
        s.finish();
    }
}

/// A connection paused with output queued that the peer never reads, on a server with a
/// 1 s idle timeout: it closes for being idle (not before the timeout), the peer gets a
/// clean prefix of the output, the queued rest is released, and the server serves on.
#[test]
fn idle_timeout_closes_a_paused_connection_with_output_queued() {
    const IDLE: Duration = Duration::from_secs(1);
    on_every_topology_at_once(|topo| {
        let s = serve(
            topo,
            Plan {
                idle: Some(IDLE),
                ..Plan::default()
            },
            Knobs::new(true, greeting_len(), false),
        );
        let started = Instant::now();
        let mut c = slow_client(s.addr());
        let conn = s.probe.conn_of(&c);
        c.write_all(b"unread").unwrap();
        // Queued output (on a slow host the timeout may already have closed it: fine).
        wait_until("output queued", || output_len(&conn).is_none_or(|n| n > 0));
        assert_eq!(s.probe.wait_closed(conn.id()), CloseReason::Idle);
        assert!(
            started.elapsed() >= IDLE,
            "{}: idle after {:?}",
            topo.name,
            started.elapsed()
        );
        let (got, _) = read_until_closed(&mut c);
        assert_prefix(&s.what("idle"), &got, greeting());
        assert_eq!(queued(&s.stats()), 0);
        assert_eq!(s.stats().closes().idle, 1);
        s.still_serves();
        s.finish();
    });
}

/// A client of the graceful-stop test: what it does, what it should see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Connected, silent.
    Idle,
    /// Paused, greeting queued; reads it all.
    PausedReader,
    /// Sent a request and half-closed; the server keeps it open (`on_peer_half_close`).
    HalfClosed,
    /// Paused, greeting queued, half-closed without data; reads it all.
    PausedHalfClosed,
}

fn graceful_stop(topo: Topology, resume_on_shutdown: bool) {
    let s = serve(
        topo,
        Plan {
            keep_half_open: true,
            resume_on_shutdown,
            ..Plan::default()
        },
        Knobs::new(false, 0, false),
    );
    let kinds = [
        Kind::Idle,
        Kind::PausedReader,
        Kind::HalfClosed,
        Kind::PausedHalfClosed,
    ];
    let mut clients = Vec::new();
    for kind in kinds {
        let paused = matches!(kind, Kind::PausedReader | Kind::PausedHalfClosed);
        s.knobs.pause.store(paused, Ordering::SeqCst);
        s.knobs
            .greeting
            .store(if paused { greeting_len() } else { 0 }, Ordering::SeqCst);
        let c = slow_client(s.addr());
        let conn = s.probe.conn_of(&c);
        match kind {
            Kind::HalfClosed => {
                (&c).write_all(b"request").unwrap();
                c.shutdown(Shutdown::Write).unwrap();
                wait_until("the half-close seen", || {
                    s.probe.events(conn.id()).contains(&Ev::HalfClose)
                });
            }
            Kind::PausedHalfClosed => c.shutdown(Shutdown::Write).unwrap(),
            _ => {}
        }
        if paused {
            wait_queued(&s, &conn, false);
        }
        clients.push((kind, c, conn));
    }
    // Readers: each reads to the end, then closes its side.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|(kind, mut c, conn)| {
            thread::spawn(move || {
                let (got, end) = read_until_closed(&mut c);
                drop(c);
                (kind, got, end, conn)
            })
        })
        .collect();
    let grace = Duration::from_secs(5);
    let Served {
        mut server,
        probe,
        topo,
        ..
    } = s;
    let handle = server.handle().clone();
    let took = server.shutdown_and_join(grace);
    let what = format!(
        "{}: graceful stop (resume: {resume_on_shutdown})",
        topo.name
    );
    assert!(took < grace + LIMIT, "{what}: {took:?}");
    for r in readers {
        let (kind, got, end, conn) = join_within("a reader", r);
        let reason = conn.close_reason();
        match kind {
            Kind::Idle | Kind::HalfClosed => {
                assert!(
                    got.is_empty() || kind == Kind::HalfClosed,
                    "{what}: {kind:?}"
                );
            }
            Kind::PausedReader | Kind::PausedHalfClosed => {
                assert_prefix(&what, &got, greeting());
                assert_eq!(
                    got.len(),
                    greeting_len(),
                    "{what}: {kind:?}: the whole output"
                );
            }
        }
        assert_eq!(end, End::Eof, "{what}: {kind:?}");
        let expected = match kind {
            Kind::PausedReader | Kind::PausedHalfClosed if !resume_on_shutdown => {
                // Its peer's end of stream waits behind the pause: closed at the deadline.
                CloseReason::Shutdown
            }
            _ => CloseReason::Peer,
        };
        assert_eq!(reason, Some(expected), "{what}: {kind:?}");
    }
    probe.check(&what);
    let st = handle.stats();
    check_counters(&what, &st);
    assert_eq!(st.closed, 4, "{what}");
}

/// A graceful stop with connections idle, paused with output queued, half-closed by the
/// peer (kept open by the application) and both: every output is delivered whole before
/// the end of stream; the half-closed ones close for the peer, the paused ones (whose
/// peers' ends of stream wait behind the pause) at the deadline; the stop ends in time.
#[test]
fn graceful_stop_drains_paused_and_half_closed_connections() {
    on_every_topology_at_once(|topo| graceful_stop(topo, false));
}

/// As above with an `on_shutdown` callback that resumes reading and half-closes: every
/// connection closes for the peer, none waits for the deadline.
#[test]
fn graceful_stop_with_a_hook_that_resumes_closes_every_connection_for_the_peer() {
    on_every_topology_at_once(|topo| graceful_stop(topo, true));
}

/// Waits until `lp` has run everything queued on it before this call (and so finished
/// the iteration it was in).
fn round_trip(lp: &LoopHandle) {
    let (tx, rx) = mpsc::channel();
    lp.queue_in_loop(move |_| {
        let _ = tx.send(());
    })
    .unwrap();
    rx.recv_timeout(LIMIT).expect("the loop runs");
}

fn messages(probe: &Probe, id: u64) -> usize {
    probe
        .events(id)
        .iter()
        .filter(|&&e| e == Ev::Message)
        .count()
}

/// Reading paused from another thread in the middle of an 8 MiB upload: at most the one
/// delivery the loop had already begun follows (even after two full turns of the loop),
/// and once the peer finishes (half-closes, while paused or just after) and reading
/// resumes from another thread, every byte arrives in order, then the connection closes
/// once, for the peer.
#[test]
fn stop_reading_mid_upload_then_half_close_then_resume_loses_nothing() {
    const UPLOAD: usize = 8 << 20;
    for topo in TOPOLOGIES {
        let s = serve(topo, Plan::default(), Knobs::new(false, 0, false));
        let c = client(s.addr());
        let conn = s.probe.conn_of(&c);
        // Half-closes only once told (after the pause), so the upload cannot end first.
        let (go, told) = mpsc::channel::<()>();
        let writer = thread::spawn(move || {
            let mut c = c;
            c.write_all(&greeting()[..UPLOAD]).unwrap();
            told.recv_timeout(LIMIT).expect("told to finish");
            c.shutdown(Shutdown::Write).unwrap();
            c
        });
        wait_until("a first megabyte received", || {
            s.probe.received_len(conn.id()) >= 1 << 20
        });
        conn.stop_reading().unwrap();
        let delivered = messages(&s.probe, conn.id());
        round_trip(conn.loop_handle());
        round_trip(conn.loop_handle());
        let after = messages(&s.probe, conn.id());
        assert!(
            after <= delivered + 1,
            "{}: {} deliveries after stop_reading returned",
            topo.name,
            after - delivered
        );
        go.send(()).unwrap();
        let resumer = {
            let conn = conn.clone();
            thread::spawn(move || conn.start_reading().unwrap())
        };
        join_within("the resuming thread", resumer);
        let mut c = join_within("the writer", writer);
        assert_eq!(s.probe.wait_closed(conn.id()), CloseReason::Peer);
        let got = s.probe.received(conn.id());
        assert_prefix(&s.what("upload"), &got, &greeting()[..UPLOAD]);
        assert_eq!(got.len(), UPLOAD, "{}", topo.name);
        let (rest, end) = read_until_closed(&mut c);
        assert_eq!((rest.len(), end), (0, End::Eof), "{}", topo.name);
        s.still_serves();
        s.finish();
    }
}

/// The peer resets while another thread asks for force_close, close_after_flush and
/// shutdown of the same connection, many times over: each connection closes exactly once,
/// for one of those causes, and the counters add up.
#[test]
fn a_reset_racing_close_requests_closes_each_connection_once() {
    const ROUNDS: usize = 20;
    for topo in TOPOLOGIES {
        let s = serve(topo, Plan::default(), Knobs::new(false, 4 << 10, true));
        for round in 0..ROUNDS {
            let mut c = client(s.addr());
            let conn = s.probe.conn_of(&c);
            c.write_all(b"ping").unwrap();
            let closer = {
                let conn = conn.clone();
                thread::spawn(move || {
                    let _ = conn.close_after_flush();
                    let _ = conn.force_close();
                    let _ = conn.shutdown();
                })
            };
            if round % 2 == 0 {
                reset(c);
            } else {
                drop(c);
            }
            join_within("the closing thread", closer);
            let reason = s.probe.wait_closed(conn.id());
            assert!(
                matches!(
                    reason,
                    CloseReason::User
                        | CloseReason::Peer
                        | CloseReason::Error(ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
                ),
                "{}: {reason:?}",
                topo.name
            );
        }
        s.still_serves();
        let reasons = s.finish();
        assert_eq!(reasons.len(), ROUNDS + 1, "{}", topo.name);
    }
}

/// Topologies whose I/O loops accept for themselves, and one where the main loop accepts.
fn busy_loop_topologies() -> [Topology; 4] {
    let one = |name, loops, accept| Topology {
        name,
        io_threads: 1,
        loops,
        edge: true,
        accept,
    };
    [
        one("1-thread-shared", 0, AcceptMode::Shared),
        one("1-thread-reuse-port", 0, AcceptMode::ReusePort),
        one("2-loops-on-1-thread", 2, AcceptMode::Shared),
        one("1-thread-main-loop-accepts", 0, AcceptMode::MainLoop),
    ]
}

/// A graceful stop begun while an I/O loop is busy (here: a long queued function) and a
/// client waits in its listen queue: the loop accepts that client before it gets to the
/// removal of its listener, so the shutdown tells it (it gets its end of stream); the
/// shutdown's continuation, "no connection left", must not run before that connection
/// has closed.
#[test]
fn graceful_stop_waits_for_connections_a_busy_loop_accepts_before_its_listener_goes() {
    let mut early = Vec::new();
    for topo in busy_loop_topologies() {
        init_log();
        let probe = Arc::new(Probe::default());
        let knobs = Knobs::new(false, 0, true);
        let (tx, rx) = mpsc::channel::<(SocketAddr, ServerHandle, LoopHandle)>();
        let (p, k) = (probe.clone(), knobs.clone());
        let main = thread::spawn(move || {
            let mut lp = EventLoop::new().unwrap();
            let server = build(topo, Plan::default(), p, k).start(&mut lp).unwrap();
            tx.send((server.local_addr(), server.clone_handle(), lp.handle()))
                .unwrap();
            lp.run().unwrap();
            server.stop(&mut lp);
        });
        let (addr, handle, main_loop) = rx.recv_timeout(LIMIT).unwrap();
        let what = format!("{}: shutdown while a loop is busy", topo.name);
        // The I/O loop (found through a first connection, closed again).
        let mut c0 = client(addr);
        echo_once(&mut c0, b"first");
        let io_loop = probe.conn_of(&c0).loop_handle().clone();
        drop(c0);
        wait_until("the first connection closed", || handle.stats().active == 0);
        // Keep the I/O loop busy; a client arrives meanwhile.
        let (started_tx, started) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        io_loop
            .queue_in_loop(move |_| {
                let _ = started_tx.send(());
                let _ = released.recv_timeout(LIMIT);
            })
            .unwrap();
        started.recv_timeout(LIMIT).expect("the loop busy");
        let mut c1 = client(addr);
        let (then_tx, then_rx) = mpsc::channel();
        let h = handle.clone();
        handle.shutdown(Duration::from_secs(5), move |_| {
            let _ = then_tx.send(h.stats());
        });
        round_trip(&main_loop);
        release.send(()).unwrap();
        // The client is told (end of stream) or refused (reset): no hang either way.
        let (_, _) = read_until_closed(&mut c1);
        drop(c1);
        let at_then = then_rx.recv_timeout(LIMIT).expect("the shutdown completes");
        wait_until("every close counted", || {
            let st = handle.stats();
            st.closed == st.accepted
        });
        let end = handle.stats();
        main_loop.queue_in_loop(|lp| lp.quit()).unwrap();
        join_within("the main loop", main);
        if (at_then.active, at_then.accepted) != (0, end.accepted) {
            early.push(format!(
                "{}: {} accepted when the continuation ran, {} in the end",
                topo.name, at_then.accepted, end.accepted
            ));
        }
        probe.check(&what);
    }
    assert!(
        early.is_empty(),
        "the shutdown's continuation ran before a connection was accepted and closed: {early:?}"
    );
}
