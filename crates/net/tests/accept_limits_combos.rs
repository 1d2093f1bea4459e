//! Accept-side states combined: the connection limit (`max_connections`, `WhenFull`) with
//! accept errors, graceful shutdown, the accept modes, restarts and the other transports.
//!
//! One test here lowers this process's open-file limit (`duo_sys::set_fd_limit`) for a
//! moment, so that an acceptor meets `EMFILE`: it holds [`FD_LIMIT`] for writing while
//! every other test of this binary holds it for reading, and restores the limit in a drop
//! guard.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;
use std::time::{Duration, Instant};

use duo_net::{AcceptMode, Endpoint, LoopHandle, ServerBuilder, TcpServer, WhenFull};
use duo_testkit::{join_within, wait_until, LIMIT};
use util::{barrier, connect, echo_builder, echo_once, hold_loop, init_log, localhost, TestServer};

/// The accept modes of a server with I/O threads.
const MODES: [AcceptMode; 3] = [
    AcceptMode::MainLoop,
    AcceptMode::Shared,
    AcceptMode::ReusePort,
];

/// Held for writing by the test that lowers the open-file limit, for reading by the others.
static FD_LIMIT: RwLock<()> = RwLock::new(());

/// For a test that opens descriptors freely.
fn fds_shared() -> RwLockReadGuard<'static, ()> {
    FD_LIMIT.read().unwrap_or_else(PoisonError::into_inner)
}

/// For the test that lowers the open-file limit: no other test of this binary runs.
fn fds_exclusive() -> RwLockWriteGuard<'static, ()> {
    FD_LIMIT.write().unwrap_or_else(PoisonError::into_inner)
}

/// The open-file limit lowered to `soft` until dropped (then set back).
struct LowFdLimit(u64);

impl LowFdLimit {
    fn set(soft: u64) -> LowFdLimit {
        let (was, _) = duo_sys::fd_limit().expect("getrlimit");
        duo_sys::set_fd_limit(soft).expect("lower RLIMIT_NOFILE");
        LowFdLimit(was)
    }
}

impl Drop for LowFdLimit {
    fn drop(&mut self) {
        duo_sys::set_fd_limit(self.0).expect("restore RLIMIT_NOFILE");
    }
}

/// How long an acceptor stops accepting after an accept error it could not shed
/// (`ACCEPT_PAUSE` in `server/accept.rs`).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The server's I/O loops, as `thread_init` saw them (in no particular order).
fn io_loops(rx: &mpsc::Receiver<LoopHandle>, n: usize) -> Vec<LoopHandle> {
    (0..n)
        .map(|_| rx.recv_timeout(LIMIT).expect("an I/O loop's thread_init"))
        .collect()
}

/// Waits until `lp`'s timers due within `after` have run and the loop has polled again
/// (a listener they enabled has then been accepted from).
fn after_timers(lp: &LoopHandle, after: Duration) {
    let (tx, rx) = mpsc::channel();
    lp.queue_in_loop(move |lp| {
        lp.run_after(after, move |_| {
            let _ = tx.send(());
        });
    })
    .expect("the loop is alive");
    rx.recv_timeout(LIMIT).expect("the timer ran");
    barrier(lp);
    barrier(lp);
}

/// One run of [`an_accept_retry_does_not_reopen_a_server_paused_full`]; returns whether
/// the run showed what it is after: the retry timer of one loop came due after the
/// server's full pause had reached that loop.
fn accept_retry_while_full_once() -> bool {
    const MAX: u64 = 2;
    let (loops_tx, loops_rx) = mpsc::channel();
    let server = TestServer::start(move || {
        echo_builder("retry-full", localhost())
            .io_threads(2)
            .accept_mode(AcceptMode::Shared)
            .max_connections(MAX as usize)
            .when_full(WhenFull::Pause)
            .thread_init(move |lp| {
                let _ = loops_tx.send(lp.handle());
            })
    });
    let addr = server.addr();
    let loops = io_loops(&loops_rx, 2);
    let (a, b) = (&loops[0], &loops[1]);
    // Loop `b` is held, so loop `a` alone is woken for the first connection, and meets
    // EMFILE (no descriptor below the limit, its spare included): it stops accepting and
    // arms its retry timer.
    let first = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .expect("a client socket");
    let release_b = hold_loop(b);
    let lowered = Instant::now();
    {
        let _low = LowFdLimit::set(3);
        first
            .connect(&socket2::SockAddr::from(addr))
            .expect("connect the first client");
        wait_until("the first accept to meet EMFILE", || {
            server.stats().fd_exhausted >= 1
        });
    }
    drop(release_b);
    // Loop `b` accepts the first and a second connection: the server is full and every
    // acceptor is paused. A third waits in the listen queue.
    let mut first = TcpStream::from(first);
    first.set_read_timeout(Some(LIMIT)).unwrap();
    let mut second = connect(addr);
    echo_once(&mut first, b"one");
    echo_once(&mut second, b"two");
    wait_until("the server to pause, full", || {
        let s = server.stats();
        s.accepted == MAX && s.full_pauses == 1
    });
    let mut third = connect(addr);
    third.write_all(b"three").unwrap();
    // Loop `a` has run the pause (queued to it) ...
    barrier(a);
    let conclusive = lowered.elapsed() < ACCEPT_RETRY;
    // ... and then its retry timer.
    after_timers(a, ACCEPT_RETRY + Duration::from_millis(20));
    let s = server.stats();
    assert_eq!(
        (s.accepted, s.active),
        (MAX, MAX),
        "a full server accepted a connection when its accept retry came due: {s:?}"
    );
    // A close makes room: the third is accepted and served.
    drop(first);
    let mut back = [0u8; 5];
    third.read_exact(&mut back).expect("the third served");
    assert_eq!(&back, b"three");
    assert_eq!(server.stats().accepted, MAX + 1);
    drop((second, third));
    server.stop();
    conclusive
}

/// A server that pauses when full, with two I/O loops on one listener: one loop meets
/// `EMFILE` and arms its retry timer; the other then fills the server and pauses every
/// acceptor. The retry timer coming due afterwards must not enable the first loop's
/// listener again while the server is full (it did: a connection over the maximum, not
/// a race between loops but the retry undoing the pause).
#[test]
fn an_accept_retry_does_not_reopen_a_server_paused_full() {
    let _fds = fds_exclusive();
    init_log();
    // A run is conclusive when the pause reached the first loop before its retry came
    // due (within 100 ms); on a loaded machine it may not, and the run is repeated.
    for _ in 0..3 {
        if accept_retry_while_full_once() {
            return;
        }
    }
    eprintln!("note: no run had the pause before the retry; the machine is slow");
}

/// An echo server for the tests below: `loops` I/O threads, accepting as `mode` says, at
/// most `max` connections with `policy`.
fn limited(
    at: Endpoint,
    loops: usize,
    mode: AcceptMode,
    max: usize,
    policy: WhenFull,
) -> ServerBuilder {
    TcpServer::builder("limited", at)
        .on_message(|ctx, input| {
            ctx.send(input.peek());
            input.consume_all();
        })
        .io_threads(loops)
        .accept_mode(mode)
        .max_connections(max)
        .when_full(policy)
}

/// A stream a test talks through: TCP or Unix-domain.
trait Stream: Read + Write + Send + 'static {}
impl Stream for TcpStream {}
impl Stream for UnixStream {}

/// Sends `msg` and expects it back within [`LIMIT`].
fn echo<S: Stream>(s: &mut S, msg: &[u8]) {
    s.write_all(msg).expect("write");
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("the echo");
    assert_eq!(back, msg);
}

/// Reads until the server ends the stream (EOF or reset) and returns what came first.
fn read_to_end<S: Stream>(s: &mut S) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if util::is_peer_close(&e) => return got,
            Err(e) => panic!("the stream was not ended within {LIMIT:?}: {e}"),
        }
    }
}

/// Starts a server and collects its I/O loops (through `thread_init`, which runs before
/// the server starts).
fn start_with_loops(
    make: impl FnOnce() -> ServerBuilder + Send + 'static,
) -> (TestServer, Vec<LoopHandle>) {
    let (tx, rx) = mpsc::channel();
    let server = TestServer::start(move || {
        make().thread_init(move |lp| {
            let _ = tx.send(lp.handle());
        })
    });
    let loops = rx.try_iter().collect();
    (server, loops)
}

/// Waits until the server has paused, full, and every I/O loop has run the pause queued
/// to it (until then a loop may take one connection over the maximum: the documented
/// race of `WhenFull::Pause`).
fn paused_everywhere(server: &TestServer, loops: &[LoopHandle]) {
    wait_until("the server to pause, full", || {
        server.stats().full_pauses >= 1
    });
    for lp in loops {
        barrier(lp);
    }
}

/// A server full under `WhenFull::Pause`, one more connection waiting in the listen
/// queue, then a graceful shutdown: the shutdown completes as soon as the served
/// connections close (not at its deadline), the waiting connection is ended rather than
/// left hanging or served, and the server never held more than its maximum.
fn full_then_shutdown<S: Stream>(
    what: &str,
    make: impl FnOnce() -> ServerBuilder + Send + 'static,
    dial: impl Fn(SocketAddr) -> S,
) {
    const MAX: u64 = 2;
    let (mut server, loops) = start_with_loops(make);
    let addr = server.addr();
    let mut served: Vec<S> = (0..MAX).map(|_| dial(addr)).collect();
    for s in &mut served {
        echo(s, b"in");
    }
    paused_everywhere(&server, &loops);
    let mut waiting = dial(addr);
    waiting.write_all(b"queued").unwrap();
    for s in &mut served {
        echo(s, b"still");
    }
    // The served connections close once the server half-closes them.
    let closers: Vec<_> = served
        .into_iter()
        .map(|mut s| thread::spawn(move || read_to_end(&mut s)))
        .collect();
    let grace = Duration::from_secs(5);
    let took = server.shutdown_and_join(grace);
    for t in closers {
        assert!(join_within("a served client", t).is_empty(), "{what}");
    }
    assert!(
        took < grace,
        "{what}: the shutdown waited for its deadline ({took:?})"
    );
    assert!(
        read_to_end(&mut waiting).is_empty(),
        "{what}: the connection left in the queue was served after the shutdown"
    );
    let s = server.stats();
    assert_eq!(
        (s.accepted, s.active, s.closed),
        (MAX, 0, MAX),
        "{what}: {s:?}"
    );
}

#[test]
fn a_full_paused_server_shuts_down_gracefully_in_every_mode() {
    let _fds = fds_shared();
    init_log();
    for mode in MODES {
        full_then_shutdown(
            &format!("{mode:?}"),
            move || limited(localhost().into(), 2, mode, 2, WhenFull::Pause),
            connect,
        );
    }
}

/// A socket path unique to this process and call, removed when dropped.
struct TempPath(std::path::PathBuf);

impl TempPath {
    fn new(what: &str) -> TempPath {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("duo-limits-{}-{n}-{what}.sock", std::process::id());
        TempPath(std::env::temp_dir().join(name))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn unix_connect(path: &std::path::Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect to the Unix-domain server");
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.set_write_timeout(Some(LIMIT)).unwrap();
    s
}

#[test]
fn a_full_paused_unix_server_shuts_down_gracefully() {
    let _fds = fds_shared();
    init_log();
    for (loops, mode) in [(0, AcceptMode::MainLoop), (2, AcceptMode::Shared)] {
        let path = TempPath::new("full");
        let at = Endpoint::unix(&path.0).unwrap();
        let dial = {
            let p = path.0.clone();
            move |_| unix_connect(&p)
        };
        full_then_shutdown(
            &format!("unix {loops} loops {mode:?}"),
            move || limited(at, loops, mode, 2, WhenFull::Pause),
            dial,
        );
    }
}

/// A full server (`WhenFull::Pause`, one connection waiting in its queue) shut down
/// gracefully, and a new server started on the same port by the shutdown's continuation,
/// on the same main loop: the port is free by then in every mode (every loop's listener
/// is closed before the continuation runs), the new server serves, and the connection
/// that waited in the old server's queue is ended, not handed to the new one.
#[test]
fn a_server_started_again_on_its_port_by_the_shutdown_continuation_serves() {
    let _fds = fds_shared();
    init_log();
    type Slot = Arc<parking_lot::Mutex<Option<std::io::Result<TcpServer>>>>;
    for mode in MODES {
        let (old, loops) =
            start_with_loops(move || limited(localhost().into(), 2, mode, 1, WhenFull::Pause));
        let addr = old.addr();
        let mut served = connect(addr);
        echo_once(&mut served, b"old");
        paused_everywhere(&old, &loops);
        let mut waiting = connect(addr);
        waiting.write_all(b"queued").unwrap();
        let closer = thread::spawn(move || read_to_end(&mut served));
        let slot: Slot = Arc::default();
        let new = slot.clone();
        old.handle().shutdown(LIMIT, move |lp| {
            let started = limited(addr.into(), 2, mode, 1, WhenFull::Pause).start(lp);
            *new.lock() = Some(started);
        });
        wait_until("the shutdown's continuation", || slot.lock().is_some());
        let new = slot.lock().take().unwrap();
        let new = new.unwrap_or_else(|e| panic!("{mode:?}: start again on {addr}: {e}"));
        assert!(join_within("the old server's client", closer).is_empty());
        assert!(
            read_to_end(&mut waiting).is_empty(),
            "{mode:?}: the connection queued on the old server was served"
        );
        let mut fresh = connect(addr);
        echo_once(&mut fresh, b"new");
        assert_eq!(new.stats().accepted, 1, "{mode:?}");
        drop(fresh);
        // Dropped off the main loop: its stop is queued there, which still runs.
        drop(new);
        old.stop();
    }
}

/// How a churn against a limited server went.
struct Churn {
    stats: duo_net::ServerStats,
    /// Attempts served (echoed).
    served: u64,
    /// The most connections the server counted open, read by each one as it came up.
    most: u64,
}

/// `clients` threads each connect, echo and close `rounds` times against an echo server
/// at most `max` connections with `policy`, on `loops` loops accepting as `mode` says;
/// stops early after `budget`, or once the server is seen holding more than `stop_over`
/// connections.
fn churn(
    policy: WhenFull,
    mode: AcceptMode,
    (loops, max): (usize, usize),
    (clients, rounds, budget): (usize, usize, Duration),
    stop_over: u64,
) -> Churn {
    let deadline = Instant::now() + budget;
    // The server's own open count, read by every connection as it comes up (a count of
    // up and down callbacks would not do: a close lowers the open count before its "down"
    // callback runs, so another loop's next connection may come up in between).
    let handle = Arc::new(std::sync::OnceLock::<duo_net::ServerHandle>::new());
    let most = Arc::new(AtomicU64::new(0));
    let (h, m) = (handle.clone(), most.clone());
    let server = TestServer::start(move || {
        limited(localhost().into(), loops, mode, max, policy).on_connection(move |c| {
            if let (true, Some(h)) = (c.is_connected(), h.get()) {
                m.fetch_max(h.stats().active, Ordering::SeqCst);
            }
        })
    });
    handle.set(server.handle().clone()).unwrap();
    let addr = server.addr();
    let served = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (served, most) = (served.clone(), most.clone());
            thread::spawn(move || {
                for _ in 0..rounds {
                    if most.load(Ordering::SeqCst) > stop_over || Instant::now() > deadline {
                        return;
                    }
                    let mut s = connect(addr);
                    let _ = s.write_all(b"ping");
                    let mut back = [0u8; 4];
                    match s.read_exact(&mut back) {
                        Ok(()) => {
                            assert_eq!(&back, b"ping");
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => assert!(
                            util::is_peer_close(&e) || e.kind() == ErrorKind::UnexpectedEof,
                            "neither served nor refused: {e}"
                        ),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        join_within("a churning client", t);
    }
    wait_until("every connection closed", || server.stats().active == 0);
    let stats = server.stats();
    server.stop();
    Churn {
        stats,
        served: served.load(Ordering::SeqCst),
        most: most.load(Ordering::SeqCst),
    }
}

/// Clients connect, echo and close over and over from several threads against a server
/// at its limit, whose connections close on two loops while others are accepted: at the
/// end the open count is back to zero, every accepted connection is counted closed,
/// every attempt was either served or (`Reject`) refused, and the server never held more
/// than its maximum (plus, under `Pause`, one per accepting loop: the documented race).
#[test]
fn counts_stay_exact_under_churn_at_the_limit_for_both_policies() {
    let _fds = fds_shared();
    init_log();
    const MAX: usize = 4;
    const LOOPS: usize = 2;
    const CLIENTS: usize = 6;
    const ROUNDS: usize = 40;
    for policy in [WhenFull::Reject, WhenFull::Pause] {
        for mode in MODES {
            let what = format!("{policy:?} {mode:?}");
            let bound = match policy {
                WhenFull::Reject => MAX,
                WhenFull::Pause => MAX + LOOPS - 1,
            } as u64;
            let run = churn(
                policy,
                mode,
                (LOOPS, MAX),
                (CLIENTS, ROUNDS, LIMIT),
                u64::MAX,
            );
            let s = &run.stats;
            assert_eq!(s.accepted, s.closed, "{what}: {s:?}");
            assert_eq!(s.accepted, run.served, "{what}: {s:?}");
            assert_eq!(
                run.served + s.rejected,
                (CLIENTS * ROUNDS) as u64,
                "{what}: {s:?}"
            );
            assert!(
                run.most <= bound,
                "{what}: {} open at once, over {bound}",
                run.most
            );
        }
    }
}

/// `WhenFull::Reject` with several loops accepting at once (one shared listener, or one
/// listener each): the server never holds more than its maximum. It did: two loops could
/// both read the open count one under the maximum before either raised it, and both
/// admit a connection. The race is narrow (a few microseconds): each mode churns for up
/// to three seconds, and stops at the first connection over the maximum (with the race,
/// within a second or so on this project's 2-core machine).
#[test]
fn reject_holds_to_the_maximum_when_loops_accept_at_once() {
    let _fds = fds_shared();
    init_log();
    const MAX: usize = 1;
    let budget = Duration::from_secs(3);
    for mode in [AcceptMode::Shared, AcceptMode::ReusePort] {
        let run = churn(
            WhenFull::Reject,
            mode,
            (2, MAX),
            (8, usize::MAX, budget),
            MAX as u64,
        );
        assert!(
            run.most <= MAX as u64,
            "{mode:?}: {} connections open at once, over the maximum of {MAX}: {:?}",
            run.most,
            run.stats
        );
        let s = &run.stats;
        assert_eq!((s.accepted, s.active), (s.closed, 0), "{mode:?}: {s:?}");
        assert!(s.rejected > 0, "{mode:?}: the server was never full: {s:?}");
    }
}
