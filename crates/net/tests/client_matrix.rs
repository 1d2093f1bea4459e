//! `TcpClient` and the codecs in combinations no other test file puts together: `stop` and
//! `disconnect` during a connect attempt, during the retry back-off, twice, from other
//! threads, from a failure callback and from the client's own loop; a server that appears
//! on a refusing port and then resets every connection (a bounded reconnect rate); sends
//! from several threads while the connection is torn down; the peer's FIN after its data;
//! the client's loop quitting with output pending; clients on the loops of a `LoopGroup`;
//! hostile framed and line input through real connections, beside a witness connection
//! on the same loop.
//!
//! What the tests check is what an application relies on: each connection gets exactly
//! one "up", one "down" and one close callback, in that order; no callback once a stop
//! has taken effect on the loop; no hang (every wait has a deadline); no panic; reconnects
//! at a bounded rate; a codec error closes only the offending connection.

mod util;

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use duo_net::codec::{CodecError, LengthHeaderCodec, LineCodec};
use duo_net::{
    ClientBuilder, CloseReason, ConnectionClosed, ServerBuilder, TcpClient, TcpConnection,
    TcpServer,
};
use duo_reactor::{EventLoopThread, LoopGroup};
use duo_testkit::{join_within, random_bytes, wait_until, RefusedPort, LIMIT};
use socket2::Socket;
use util::shared::{accept_within, settle, watch, Blackhole};
use util::{barrier, connect, init_log, localhost, read_until_closed, End, TestServer};

// ---------------------------------------------------------------------------------------
// What a client's callbacks saw
// ---------------------------------------------------------------------------------------

/// One callback of a client, in the order they ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    /// The "up" call of `on_connection`, with the connection's id.
    Up(u64),
    /// The "down" call of `on_connection`: id, close reason, bytes received by then.
    Down(u64, Option<CloseReason>, usize),
    /// `on_close`.
    Close(u64),
    /// `on_connect_failed`.
    Failed { attempts: u32, will_retry: bool },
}

/// Everything a logged client's callbacks record.
#[derive(Default)]
struct Seen {
    events: Mutex<Vec<Ev>>,
    /// Bytes the message callback received (all connections).
    bytes_in: AtomicUsize,
    /// The bytes themselves, when [`Seen::capturing`].
    data: Mutex<Vec<u8>>,
    capture: bool,
    /// Set once a stop has taken effect on the loop: any callback from then on is late.
    sealed: AtomicBool,
    late: AtomicUsize,
    /// Callbacks that ran on a thread that was not the connection's loop thread.
    off_loop: AtomicUsize,
}

type Log = Arc<Seen>;

impl Seen {
    fn new() -> Log {
        Arc::new(Seen::default())
    }

    fn capturing() -> Log {
        Arc::new(Seen {
            capture: true,
            ..Seen::default()
        })
    }

    fn callback_ran(&self) {
        if self.sealed.load(Ordering::SeqCst) {
            self.late.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn push(&self, e: Ev) {
        self.callback_ran();
        self.events.lock().unwrap().push(e);
    }

    fn message(&self, bytes: &[u8]) {
        self.callback_ran();
        if self.capture {
            self.data.lock().unwrap().extend_from_slice(bytes);
        }
        self.bytes_in.fetch_add(bytes.len(), Ordering::SeqCst);
    }

    fn events(&self) -> Vec<Ev> {
        self.events.lock().unwrap().clone()
    }

    fn ups(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| matches!(e, Ev::Up(_)))
            .count()
    }

    fn downs(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| matches!(e, Ev::Down(..)))
            .count()
    }

    fn closes(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| matches!(e, Ev::Close(_)))
            .count()
    }

    /// `(attempts, will_retry)` of every failure callback so far.
    fn failures(&self) -> Vec<(u32, bool)> {
        self.events()
            .iter()
            .filter_map(|e| match *e {
                Ev::Failed {
                    attempts,
                    will_retry,
                } => Some((attempts, will_retry)),
                _ => None,
            })
            .collect()
    }

    fn bytes(&self) -> usize {
        self.bytes_in.load(Ordering::SeqCst)
    }

    /// From now on every callback counts as late.
    fn seal(&self) {
        self.sealed.store(true, Ordering::SeqCst);
    }

    fn unseal(&self) {
        self.sealed.store(false, Ordering::SeqCst);
    }

    fn late(&self) -> usize {
        self.late.load(Ordering::SeqCst)
    }

    /// Every connection's callbacks came as Up, Down (with a reason), Close, each once and
    /// in that order, except for `still_open` connections that only came up (their loop
    /// ended under them, or they are open); every callback ran on the loop's thread.
    fn check_lifecycles(&self, still_open: usize, what: &str) {
        let events = self.events();
        let mut per_conn: HashMap<u64, Vec<Ev>> = HashMap::new();
        let mut order = Vec::new();
        for e in &events {
            let id = match *e {
                Ev::Up(id) | Ev::Down(id, ..) | Ev::Close(id) => id,
                Ev::Failed { .. } => continue,
            };
            if !per_conn.contains_key(&id) {
                order.push(id);
            }
            per_conn.entry(id).or_default().push(*e);
        }
        let mut open = 0;
        for id in order {
            let seq = &per_conn[&id];
            match seq.as_slice() {
                [Ev::Up(_)] => open += 1,
                [Ev::Up(_), Ev::Down(_, reason, _), Ev::Close(_)] => {
                    assert!(
                        reason.is_some(),
                        "{what}: connection {id} down without a reason"
                    );
                }
                other => panic!("{what}: connection {id} saw {other:?} (all: {events:?})"),
            }
        }
        assert_eq!(
            open, still_open,
            "{what}: connections never closed: {events:?}"
        );
        assert_eq!(
            self.off_loop.load(Ordering::SeqCst),
            0,
            "{what}: a callback ran off the connection's loop thread"
        );
    }
}

/// A client builder whose every callback records into `log` (the message callback
/// consumes everything).
fn logged_client(name: &str, addr: SocketAddr, log: &Log) -> ClientBuilder {
    let (l1, l2, l3, l4) = (log.clone(), log.clone(), log.clone(), log.clone());
    TcpClient::builder(name, addr)
        .on_connection(move |c| {
            if !c.loop_handle().is_in_loop_thread() {
                l1.off_loop.fetch_add(1, Ordering::SeqCst);
            }
            if c.is_connected() {
                l1.push(Ev::Up(c.id()));
            } else {
                l1.push(Ev::Down(c.id(), c.close_reason(), l1.bytes()));
            }
        })
        .on_close(move |c| l2.push(Ev::Close(c.id())))
        .on_message(move |_, input| {
            l3.message(input.peek());
            input.consume_all();
        })
        .on_connect_failed(move |f| {
            l4.push(Ev::Failed {
                attempts: f.attempts,
                will_retry: f.will_retry,
            })
        })
}

/// The connection of `client` once it is up.
fn wait_connection(client: &TcpClient) -> TcpConnection {
    let mut conn = None;
    wait_until("the client to connect", || {
        conn = client.connection();
        conn.is_some()
    });
    conn.unwrap()
}

/// Sends `msg` to an echo server and waits until the client has received as many bytes.
fn round_trip(conn: &TcpConnection, log: &Log, msg: &[u8]) {
    let before = log.bytes();
    conn.send(msg.to_vec()).expect("connected");
    wait_until("the echo", || log.bytes() >= before + msg.len());
}

/// Sends `msg` on `conn` until the connection refuses it; returns how many were accepted.
/// After every 32 sends it waits for the loop to have run them (a function queued behind
/// them), so the loop's queue stays short. (A thread that sends small messages faster
/// than the loop can write them grows the loop's queue without bound, and the loop then
/// polls for I/O only once per ever longer batch of queued sends: a connection's end of
/// stream then waits seconds to be read. That is the application's pace, not what these
/// tests look at.) Fails if sends are still accepted after [`LIMIT`].
fn send_until_refused(conn: &TcpConnection, msg: &[u8]) -> (usize, ConnectionClosed) {
    let deadline = Instant::now() + LIMIT;
    let mut sent = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "sends still accepted after {LIMIT:?}"
        );
        for _ in 0..32 {
            match conn.send(msg.to_vec()) {
                Ok(()) => sent += 1,
                Err(e) => return (sent, e),
            }
        }
        let (tx, rx) = mpsc::channel::<()>();
        if let Err(e) = conn.queue_in_loop(move |_| {
            let _ = tx.send(());
        }) {
            return (sent, e);
        }
        // Run, or dropped unrun because the connection closed meanwhile: both end the wait.
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(LIMIT) {
            panic!("the loop did not get through 32 sends in {LIMIT:?}");
        }
    }
}

/// Binds a std listener on `addr`, a port just freed (a client's ephemeral port may take
/// it for a moment: retried until [`LIMIT`]).
fn bind_retrying(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + LIMIT;
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return l,
            Err(e) if e.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

/// A server started on `addr`, a port just freed (retried as [`bind_retrying`]).
fn server_on(addr: SocketAddr, make: fn(SocketAddr) -> ServerBuilder) -> TestServer {
    let deadline = Instant::now() + LIMIT;
    loop {
        match TestServer::try_start(move || make(addr)) {
            Ok(s) => return s,
            Err(e) if e.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("server on {addr}: {e}"),
        }
    }
}

fn echo_server(addr: SocketAddr) -> ServerBuilder {
    util::echo_builder("matrix-echo", addr).io_threads(1)
}

/// Sends RST instead of FIN: `SO_LINGER` 0, then close.
fn reset(s: TcpStream) {
    let sock = Socket::from(s);
    let _ = sock.set_linger(Some(Duration::ZERO));
    drop(sock);
}

// ---------------------------------------------------------------------------------------
// Stop and disconnect at every stage of connecting
// ---------------------------------------------------------------------------------------

/// `stop()` (twice, from another thread) on one client and `disconnect()` (twice, then
/// `stop()`) on another, both while their connect attempt is in flight (the server's
/// accept queue is full, so it neither succeeds nor fails): no "up" ever, no further
/// attempt, at most one failure callback, with `will_retry == false`, and none once the
/// stop has run on the loop. When the server can accept again, `connect()` brings each
/// client up; `stop()` takes each down once.
#[test]
fn stop_or_disconnect_during_an_attempt_in_flight_is_final_until_connect() {
    init_log();
    let mut hole = Blackhole::new();
    let lp = EventLoopThread::spawn("cm-inflight", None).unwrap();
    let (log1, log2) = (Seen::new(), Seen::new());
    let c1 = logged_client("inflight-stop", hole.addr(), &log1).connect(lp.handle());
    let c2 = logged_client("inflight-disconnect", hole.addr(), &log2).connect(lp.handle());
    wait_until("both attempts to start", || {
        c1.attempts() >= 1 && c2.attempts() >= 1
    });
    // The attempts begin on the loop: the ends below are queued after them.
    barrier(lp.handle());
    let c1 = Arc::new(c1);
    let c2 = Arc::new(c2);
    let (a, b) = (c1.clone(), c2.clone());
    let ender = thread::spawn(move || {
        a.stop();
        b.disconnect();
        a.stop();
        b.disconnect();
        b.stop();
    });
    join_within("the ending thread", ender);
    settle(lp.handle());
    log1.seal();
    log2.seal();
    let watched = watch(Duration::from_millis(300));
    for (c, log) in [(&c1, &log1), (&c2, &log2)] {
        assert_eq!(c.attempts(), 1, "{}: attempts after {watched:?}", c.name());
        assert_eq!(log.ups(), 0, "{}: up although stopped", c.name());
        let failures = log.failures();
        assert!(
            failures.iter().all(|&(_, retry)| !retry) && failures.len() <= 1,
            "{}: failures {failures:?}",
            c.name()
        );
        assert_eq!(log.late(), 0, "{}: a callback after the stop", c.name());
        assert!(c.connection().is_none());
    }

    // The server can accept again: each client connects when asked to, and only then.
    hole.open_up();
    log1.unseal();
    log2.unseal();
    c2.connect();
    wait_until("the disconnected client to come up", || log2.ups() == 1);
    let _second = accept_within(&hole.listener);
    c1.connect();
    wait_until("the stopped client to come up", || log1.ups() == 1);
    for (c, log) in [(&c1, &log1), (&c2, &log2)] {
        c.stop();
        c.stop();
        wait_until("the down callback", || log.closes() == 1);
        settle(lp.handle());
        log.check_lifecycles(0, c.name());
        assert_eq!(c.attempts(), 2);
    }
    drop((c1, c2));
    lp.stop().unwrap();
}

/// On a refusing port with retry: one client calls `stop()` from inside its own
/// `on_connect_failed` (the retry the callback was told about must not happen); another
/// gets `disconnect()`, `disconnect()` and `stop()` from another thread while it waits in
/// its back-off. Neither makes another attempt or runs another callback. Then a server
/// appears on the port: `connect()` brings the second client up at once, an echo goes
/// through, and one `stop()` takes it down once.
#[test]
fn stop_from_the_failure_callback_and_during_the_backoff() {
    init_log();
    let refused = RefusedPort::new();
    let addr = refused.addr();
    let lp = EventLoopThread::spawn("cm-backoff", None).unwrap();

    // Client 1 stops itself from its failure callback.
    let log1 = Seen::new();
    let slot: Arc<Mutex<Option<TcpClient>>> = Arc::default();
    let stopped_at = Arc::new(AtomicU32::new(0));
    let (s2, at2, l1) = (slot.clone(), stopped_at.clone(), log1.clone());
    let c1 = logged_client("stops-itself", addr, &log1)
        .retry_backoff(Duration::from_millis(30), Duration::from_millis(30))
        .on_connect_failed(move |f| {
            l1.push(Ev::Failed {
                attempts: f.attempts,
                will_retry: f.will_retry,
            });
            if at2.load(Ordering::SeqCst) == 0 {
                if let Some(c) = s2.lock().unwrap().as_ref() {
                    c.stop();
                    at2.store(f.attempts, Ordering::SeqCst);
                }
            }
        })
        .connect(lp.handle());
    *slot.lock().unwrap() = Some(c1);

    // Client 2 is ended from another thread during its back-off.
    let log2 = Seen::new();
    let c2 = Arc::new(
        logged_client("ended-in-backoff", addr, &log2)
            .retry_backoff(Duration::from_millis(100), Duration::from_millis(100))
            .connect(lp.handle()),
    );
    wait_until("client 2's first failure", || !log2.failures().is_empty());
    assert_eq!(log2.failures()[0], (1, true));
    let c = c2.clone();
    let ender = thread::spawn(move || {
        c.disconnect();
        c.disconnect();
        c.stop();
    });
    join_within("the ending thread", ender);
    settle(lp.handle());
    log2.seal();
    let attempts2 = c2.attempts();

    wait_until("client 1 to stop itself", || {
        stopped_at.load(Ordering::SeqCst) != 0
    });
    settle(lp.handle());
    log1.seal();
    let watched = watch(Duration::from_millis(400));
    let at = stopped_at.load(Ordering::SeqCst);
    let c1 = slot.lock().unwrap().take().unwrap();
    assert_eq!(
        u64::from(at),
        c1.attempts(),
        "client 1 attempted again after stopping in its failure callback ({watched:?})"
    );
    assert_eq!(log1.failures().len(), at as usize);
    assert_eq!(log1.late(), 0);
    assert_eq!(
        c2.attempts(),
        attempts2,
        "client 2 attempted again ({watched:?})"
    );
    assert_eq!(log2.late(), 0, "client 2: a callback after the stop");
    assert_eq!(log1.ups() + log2.ups(), 0);
    drop(c1);

    // The server appears; the stopped client connects only when asked to.
    drop(refused);
    let server = server_on(addr, echo_server);
    log2.unseal();
    c2.connect();
    let conn = wait_connection(&c2);
    round_trip(&conn, &log2, b"after the back-off");
    c2.stop();
    wait_until("client 2 down", || log2.closes() == 1);
    settle(lp.handle());
    log2.check_lifecycles(0, "client 2");
    assert_eq!(conn.send(&b"late"[..]), Err(ConnectionClosed));
    drop(c2);
    lp.stop().unwrap();
    server.stop();
}

/// A client with retry and reconnect on a refusing port; after some failures a server
/// appears on the port that accepts each connection and resets it at once. The client
/// keeps reconnecting, no faster than its initial retry delay allows (counted over a
/// measured window, with slack: a busy loop would make hundreds), every connection seeing
/// up, down and close exactly once. `stop()` from another thread in the middle of this
/// ends it: no attempt and no callback after it took effect.
#[test]
fn reconnects_to_a_server_that_appears_and_resets_at_a_bounded_rate() {
    init_log();
    const INITIAL: Duration = Duration::from_millis(20);
    let refused = RefusedPort::new();
    let addr = refused.addr();
    let lp = EventLoopThread::spawn("cm-flapping", None).unwrap();
    let log = Seen::new();
    let client = Arc::new(
        logged_client("flapping", addr, &log)
            .reconnect(true)
            .retry_backoff(INITIAL, Duration::from_millis(80))
            .connect(lp.handle()),
    );
    wait_until("two refused attempts", || log.failures().len() >= 2);
    assert!(log.failures().iter().all(|&(_, retry)| retry));

    // The server appears: accept, then reset at once.
    drop(refused);
    let listener = bind_retrying(addr);
    listener.set_nonblocking(true).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let resetter = thread::spawn(move || {
        let mut accepted = 0usize;
        while !d.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((s, _)) => {
                    accepted += 1;
                    reset(s);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => log::debug!("accept: {e}"),
            }
        }
        accepted
    });
    wait_until("five connections up", || log.ups() >= 5);

    let before = client.attempts();
    let window = watch(Duration::from_millis(500));
    let made = client.attempts() - before;
    // One attempt per INITIAL (the shortest delay) at most, plus slack for the edges.
    let allowed = (window.as_millis() / INITIAL.as_millis()) as u64 + 5;
    assert!(
        made <= allowed,
        "{made} attempts in {window:?} (allowed {allowed})"
    );
    let now = client.attempts();
    wait_until("the client to go on reconnecting", || {
        client.attempts() > now
    });

    let c = client.clone();
    join_within("the stopping thread", thread::spawn(move || c.stop()));
    settle(lp.handle());
    log.seal();
    let attempts = client.attempts();
    let watched = watch(Duration::from_millis(200));
    assert_eq!(
        client.attempts(),
        attempts,
        "attempted after stop ({watched:?})"
    );
    assert_eq!(log.late(), 0, "a callback after the stop");
    log.check_lifecycles(0, "flapping client");
    assert!(client.connection().is_none());
    done.store(true, Ordering::SeqCst);
    let accepted = join_within("the resetting server", resetter);
    assert!(accepted >= 4, "{accepted} connections accepted");
    drop(client);
    lp.stop().unwrap();
}

/// Against a server that accepts and drops every connection at once, the reconnects slow
/// down: a connection that did not last resets no back-off, so the delay keeps doubling
/// (it used to start again at the initial delay after each connection: one reconnect
/// every initial delay, for ever).
#[test]
fn reconnects_to_a_server_that_drops_every_connection_back_off() {
    init_log();
    const INITIAL: Duration = Duration::from_millis(50);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let resetter = thread::spawn(move || {
        while !d.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((s, _)) => reset(s),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => log::debug!("accept: {e}"),
            }
        }
    });
    let lp = EventLoopThread::spawn("cm-backoff", None).unwrap();
    let log = Seen::new();
    let client = logged_client("backoff", addr, &log)
        .reconnect(true)
        .retry_backoff(INITIAL, Duration::from_secs(5))
        .connect(lp.handle());
    // After four dropped connections the delay is at least 8 x INITIAL (400 ms).
    wait_until("four connections up", || log.ups() >= 4);
    let before = client.attempts();
    let window = watch(Duration::from_millis(1200));
    let made = client.attempts() - before;
    // At the initial delay this window would hold about 24 attempts.
    assert!(made <= 6, "{made} attempts in {window:?}: no back-off");
    client.stop();
    done.store(true, Ordering::SeqCst);
    join_within("the resetting server", resetter);
    drop(client);
    lp.stop().unwrap();
}

// ---------------------------------------------------------------------------------------
// Tearing a connection down while other threads use it
// ---------------------------------------------------------------------------------------

/// Three threads send on a client's connection to an echo server while two others call
/// `stop()` (twice) and `disconnect()` at the same moment: every sender ends with
/// `ConnectionClosed` (never a panic), the connection goes down exactly once, and after
/// that nothing more arrives; the server's side closes too.
#[test]
fn sends_from_threads_while_stop_and_disconnect_race() {
    init_log();
    let server = TestServer::start(|| echo_server(localhost()));
    let lp = EventLoopThread::spawn("cm-race", None).unwrap();
    let log = Seen::new();
    let client = Arc::new(logged_client("racing", server.addr(), &log).connect(lp.handle()));
    let conn = wait_connection(&client);
    round_trip(&conn, &log, b"before the race");

    let (ready_tx, ready_rx) = mpsc::channel();
    let senders: Vec<JoinHandle<(usize, ConnectionClosed)>> = (0..3u8)
        .map(|t| {
            let conn = conn.clone();
            let ready = ready_tx.clone();
            thread::spawn(move || {
                let mut sent = 0;
                // A first burst, then small sends until the connection refuses them.
                for _ in 0..300 {
                    match conn.send(vec![t; 1000]) {
                        Ok(()) => sent += 1,
                        Err(e) => return (sent, e),
                    }
                }
                let _ = ready.send(());
                let (more, e) = send_until_refused(&conn, &[t; 16]);
                (sent + more, e)
            })
        })
        .collect();
    drop(ready_tx);
    for _ in 0..3 {
        ready_rx
            .recv_timeout(LIMIT)
            .expect("a sender's first burst");
    }
    let go = Arc::new(Barrier::new(2));
    let (c1, g1) = (client.clone(), go.clone());
    let (c2, g2) = (client.clone(), go.clone());
    let stopper = thread::spawn(move || {
        g1.wait();
        c1.stop();
        c1.stop();
    });
    let disconnecter = thread::spawn(move || {
        g2.wait();
        c2.disconnect();
    });
    join_within("the stopping thread", stopper);
    join_within("the disconnecting thread", disconnecter);
    for s in senders {
        let (sent, err) = join_within("a sender", s);
        assert_eq!(err, ConnectionClosed);
        assert!(sent >= 300, "a sender was refused during its first burst");
    }
    wait_until("the connection down", || log.closes() == 1);
    settle(lp.handle());
    log.seal();
    assert!(conn.is_closed());
    assert_eq!(conn.send(&b"late"[..]), Err(ConnectionClosed));
    assert!(client.connection().is_none());
    let handle = server.handle().clone();
    wait_until("the server's side to close", || handle.stats().active == 0);
    watch(Duration::from_millis(50));
    assert_eq!(log.late(), 0, "a callback after the stop");
    log.check_lifecycles(0, "racing client");
    drop(client);
    lp.stop().unwrap();
    server.stop();
}

/// Bytes the FIN test's server sends before half-closing.
const BEFORE_FIN: usize = 1 << 20;

/// A thread of the client keeps sending; once the server has the first of those bytes,
/// it answers with 1 MiB and half-closes right after it, so its FIN arrives while the
/// sender is still at work: the client receives the whole 1 MiB, intact, before its one
/// "down" call (its end of stream closes it), the sending thread ends with
/// `ConnectionClosed` (never a panic), and the server's side closes with
/// `CloseReason::Peer` once the client's last bytes arrived.
#[test]
fn data_before_the_peers_fin_arrives_whole_while_another_thread_sends() {
    init_log();
    let payload = Arc::new(random_bytes(0xF1F1, BEFORE_FIN));
    let (reason_tx, reasons) = mpsc::channel();
    let p = payload.clone();
    let answered = AtomicBool::new(false);
    let server = TestServer::start(move || {
        TcpServer::builder("fin-after-data", localhost())
            .io_threads(1)
            .on_message(move |ctx, input| {
                input.consume_all();
                if !answered.swap(true, Ordering::SeqCst) {
                    ctx.send(&p);
                    ctx.shutdown();
                }
            })
            .on_close(move |c| {
                let _ = reason_tx.send(c.close_reason());
            })
    });
    let lp = EventLoopThread::spawn("cm-fin", None).unwrap();
    let log = Seen::capturing();
    let client = logged_client("reader", server.addr(), &log).connect(lp.handle());
    let conn = wait_connection(&client);
    let sender = thread::spawn(move || send_until_refused(&conn, &[7u8; 512]));
    wait_until("the connection down", || log.closes() == 1);
    let (_, err) = join_within("the sender", sender);
    assert_eq!(err, ConnectionClosed);
    settle(lp.handle());
    log.check_lifecycles(0, "reader");
    let downs: Vec<Ev> = log
        .events()
        .into_iter()
        .filter(|e| matches!(e, Ev::Down(..)))
        .collect();
    assert!(
        matches!(downs[..], [Ev::Down(_, Some(_), n)] if n == BEFORE_FIN),
        "{downs:?}"
    );
    let data = log.data.lock().unwrap();
    assert!(data[..] == payload[..], "the data before the FIN differs");
    assert_eq!(
        reasons.recv_timeout(LIMIT).expect("the server's close"),
        Some(CloseReason::Peer)
    );
    drop(data);
    drop(client);
    lp.stop().unwrap();
    server.stop();
}

/// The client's loop quits (its thread stopped and joined) while the connection is up
/// with output still queued (the server is not reading): no hang, no panic; the handle
/// refuses sends with `ConnectionClosed`; `stop`, `disconnect`, `connect` and dropping
/// the client are harmless; at most one "down"; the server, reading again, sees the
/// connection end exactly once.
#[test]
fn the_clients_loop_quits_while_output_is_queued() {
    init_log();
    let (server_tx, server_conns) = mpsc::channel();
    let (reason_tx, reasons) = mpsc::channel();
    let server = TestServer::start(move || {
        TcpServer::builder("not-reading", localhost())
            .io_threads(1)
            .on_connection(move |c| {
                if c.is_connected() {
                    c.stop_reading().unwrap();
                    let _ = server_tx.send(c.clone());
                }
            })
            .on_message(|_, input| input.consume_all())
            .on_close(move |c| {
                let _ = reason_tx.send(c.close_reason());
            })
    });
    let lp = EventLoopThread::spawn("cm-quitting", None).unwrap();
    let handle = lp.handle().clone();
    let log = Seen::new();
    let client = logged_client("queued", server.addr(), &log).connect(&handle);
    let conn = wait_connection(&client);
    let server_conn = server_conns.recv_timeout(LIMIT).expect("the server's side");

    // Send until some output stays queued (the kernel's buffers are full), within a cap.
    let chunk = random_bytes(0xA11, 1 << 20);
    let mut queued = 0;
    for _ in 0..256 {
        conn.send(chunk.clone()).unwrap();
        let (tx, rx) = mpsc::channel();
        conn.queue_in_loop(move |ctx| {
            let _ = tx.send(ctx.output_len());
        })
        .unwrap();
        queued = rx.recv_timeout(LIMIT).expect("the output length");
        if queued > 0 {
            break;
        }
    }
    assert!(queued > 0, "256 MiB went into the kernel: nothing queued");

    join_within("the client's loop thread", thread::spawn(move || lp.stop()))
        .expect("the loop ended cleanly");
    assert!(handle.is_closed());
    assert_eq!(conn.send(&b"after the loop"[..]), Err(ConnectionClosed));
    assert_eq!(conn.force_close(), Err(ConnectionClosed));
    client.stop();
    client.disconnect();
    client.connect();
    drop(client);
    assert_eq!(log.ups(), 1);
    assert!(log.downs() <= 1 && log.closes() <= 1, "{:?}", log.events());

    server_conn.start_reading().unwrap();
    let reason = reasons
        .recv_timeout(LIMIT)
        .expect("the server's side to close");
    assert!(reason.is_some());
    assert!(
        reasons.recv_timeout(Duration::from_millis(100)).is_err(),
        "a second close"
    );
    server.stop();
}

/// Once the client's loop has ended (and with it the connection's socket: the server sees
/// the connection end), the connection's handle must say so: `is_closed()` (what a caller
/// waits on), not `is_connected()`, and the client has no connection any more.
#[test]
fn a_connection_dropped_with_its_loop_reports_closed() {
    init_log();
    let (reason_tx, reasons) = mpsc::channel();
    let server = TestServer::start(move || {
        util::echo_builder("loop-ends", localhost())
            .io_threads(1)
            .on_close(move |c| {
                let _ = reason_tx.send(c.close_reason());
            })
    });
    let lp = EventLoopThread::spawn("cm-loop-ends", None).unwrap();
    let log = Seen::new();
    let client = logged_client("orphaned", server.addr(), &log).connect(lp.handle());
    let conn = wait_connection(&client);
    round_trip(&conn, &log, b"alive");
    join_within("the client's loop thread", thread::spawn(move || lp.stop()))
        .expect("the loop ended cleanly");
    // The socket is gone: the server's side ends.
    assert!(reasons
        .recv_timeout(LIMIT)
        .expect("the server's close")
        .is_some());
    assert_eq!(conn.send(&b"x"[..]), Err(ConnectionClosed));
    let state = conn.state();
    let still_listed = client.connection().is_some();
    drop(client);
    server.stop();
    assert!(
        conn.is_closed() && !conn.is_connected(),
        "the handle of a connection whose loop and socket are gone says {state:?}"
    );
    assert!(!still_listed, "TcpClient::connection() still returns it");
}

// ---------------------------------------------------------------------------------------
// Clients on the loops of a loop group
// ---------------------------------------------------------------------------------------

/// Four clients, one on each loop of a `LoopGroup` of two threads: each connects, echoes,
/// is closed by the server ("bye"), reconnects by itself and echoes again, every callback
/// on its own loop's thread. Two are stopped (one "down" each); the group is then stopped
/// with the other two connected: no hang, no panic, dropping those clients afterwards is
/// harmless and the server sees every connection end.
#[test]
fn clients_on_a_loop_group_reconnect_and_survive_the_groups_stop() {
    init_log();
    let server = TestServer::start(|| {
        TcpServer::builder("bye-echo", localhost())
            .io_threads(2)
            .on_message(|ctx, input| {
                if input.peek().windows(3).any(|w| w == b"bye") {
                    ctx.force_close();
                } else {
                    ctx.send(input.peek());
                }
                input.consume_all();
            })
    });
    let group = LoopGroup::start("cm-group", 2, 4, None).unwrap();
    let mut clients = Vec::new();
    for (i, h) in group.handles().iter().enumerate() {
        let log = Seen::new();
        let c = logged_client(&format!("grouped-{i}"), server.addr(), &log)
            .reconnect(true)
            .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
            .connect(h);
        clients.push((c, log));
    }
    for (i, (c, log)) in clients.iter().enumerate() {
        let conn = wait_connection(c);
        assert!(conn.loop_handle().same_loop(&group.handles()[i]));
        round_trip(&conn, log, format!("first life {i}").as_bytes());
        conn.send(&b"bye"[..]).unwrap();
    }
    for (i, (c, log)) in clients.iter().enumerate() {
        wait_until("the reconnection", || log.ups() == 2 && log.closes() == 1);
        let conn = wait_connection(c);
        round_trip(&conn, log, format!("second life {i}").as_bytes());
    }
    for (c, log) in &clients[..2] {
        c.stop();
        c.stop();
        wait_until("the stopped client down", || log.closes() == 2);
    }
    join_within("the group's stop", thread::spawn(move || group.stop()))
        .expect("the group ended cleanly");
    for (i, (c, log)) in clients.into_iter().enumerate() {
        drop(c);
        log.check_lifecycles(usize::from(i >= 2), &format!("grouped-{i}"));
    }
    let handle = server.handle().clone();
    wait_until("the server to see every connection end", || {
        handle.stats().active == 0
    });
    server.stop();
}

// ---------------------------------------------------------------------------------------
// Stop on the client's own loop
// ---------------------------------------------------------------------------------------

/// `stop()` called on the client's own loop (from a callback of another connection of
/// that loop, as a relay does when its inbound side goes) closes the connection now: a
/// message callback of the stopped connection must not start after `stop()` returned,
/// even for bytes that were ready in the same batch of events. The batch is arranged:
/// the loop is held while the trigger's peer and then the victim's peer write, so one
/// poll reports both, the trigger first.
#[test]
fn stop_on_the_clients_own_loop_runs_no_later_callback() {
    init_log();
    let lp = EventLoopThread::spawn("cm-own-loop", None).unwrap();
    let victim_peer = TcpListener::bind(localhost()).unwrap();
    let trigger_peer = TcpListener::bind(localhost()).unwrap();
    let log = Seen::new();
    let stop_returned = Arc::new(AtomicBool::new(false));
    let late = Arc::new(AtomicUsize::new(0));
    let (sr, lt, l) = (stop_returned.clone(), late.clone(), log.clone());
    let victim = logged_client("victim", victim_peer.local_addr().unwrap(), &log)
        .on_message(move |_, input| {
            if sr.load(Ordering::SeqCst) {
                lt.fetch_add(1, Ordering::SeqCst);
            }
            l.message(input.peek());
            input.consume_all();
        })
        .connect(lp.handle());
    let slot: Arc<Mutex<Option<TcpClient>>> = Arc::new(Mutex::new(Some(victim)));
    let (s, sr) = (slot.clone(), stop_returned.clone());
    let trigger = TcpClient::builder("trigger", trigger_peer.local_addr().unwrap())
        .on_message(move |_, input| {
            input.consume_all();
            if let Some(v) = s.lock().unwrap().as_ref() {
                v.stop();
                sr.store(true, Ordering::SeqCst);
            }
        })
        .connect(lp.handle());
    let mut victim_stream = accept_within(&victim_peer);
    let mut trigger_stream = accept_within(&trigger_peer);
    wait_until("the victim up", || log.ups() == 1);
    wait_connection(&trigger);

    // Hold the loop while both peers write: the next poll reports both.
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    lp.handle()
        .queue_in_loop(move |_| {
            let _ = entered_tx.send(());
            let _ = release_rx.recv_timeout(LIMIT);
        })
        .unwrap();
    entered.recv_timeout(LIMIT).expect("the loop held");
    trigger_stream.write_all(b"stop the victim").unwrap();
    victim_stream.write_all(b"bytes for the victim").unwrap();
    release.send(()).unwrap();

    wait_until("the victim down", || log.closes() == 1);
    settle(lp.handle());
    let late = late.load(Ordering::SeqCst);
    let victim = slot.lock().unwrap().take().unwrap();
    drop((victim, trigger));
    lp.stop().unwrap();
    log.check_lifecycles(0, "victim");
    assert_eq!(
        late, 0,
        "a message callback of the stopped client's connection ran after stop() returned"
    );
}

// ---------------------------------------------------------------------------------------
// Hostile input through the codecs
// ---------------------------------------------------------------------------------------

/// What a codec server saw.
#[derive(Default)]
struct CodecSeen {
    /// Server-side connection id by the client's address.
    ids: Mutex<HashMap<SocketAddr, u64>>,
    /// Frames (or lines) decoded, per connection.
    frames: Mutex<HashMap<u64, usize>>,
    errors: Mutex<Vec<(u64, CodecError)>>,
    closes: Mutex<Vec<(u64, Option<CloseReason>)>>,
}

impl CodecSeen {
    /// The server's id of the connection `s` made.
    fn id_of(&self, s: &TcpStream) -> u64 {
        let addr = s.local_addr().unwrap();
        let mut id = None;
        wait_until("the server to see the connection", || {
            id = self.ids.lock().unwrap().get(&addr).copied();
            id.is_some()
        });
        id.unwrap()
    }

    fn frames_of(&self, id: u64) -> usize {
        self.frames.lock().unwrap().get(&id).copied().unwrap_or(0)
    }

    fn errors_of(&self, id: u64) -> Vec<CodecError> {
        let errors = self.errors.lock().unwrap();
        errors
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, e)| *e)
            .collect()
    }

    /// Waits for the connection's close and returns its reason; fails on a second close.
    fn closed(&self, id: u64) -> Option<CloseReason> {
        wait_until("the server to close the connection", || {
            self.closes.lock().unwrap().iter().any(|(i, _)| *i == id)
        });
        let closes = self.closes.lock().unwrap();
        let mine: Vec<_> = closes.iter().filter(|(i, _)| *i == id).collect();
        assert_eq!(mine.len(), 1, "closes of connection {id}: {mine:?}");
        mine[0].1
    }

    fn is_closed(&self, id: u64) -> bool {
        self.closes.lock().unwrap().iter().any(|(i, _)| *i == id)
    }
}

/// A server on one I/O thread (every connection on one loop) that decodes with `decode`
/// and echoes each message encoded by `encode`; a decoding error is recorded and closes
/// the connection after its replies so far are written.
fn codec_server<D, E>(seen: Arc<CodecSeen>, decode: D, encode: E, max_input: usize) -> TestServer
where
    D: Fn(&mut duo_net::InputBuffer, &mut dyn FnMut(&[u8])) -> Result<usize, CodecError>
        + Send
        + Sync
        + 'static,
    E: Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static,
{
    TestServer::start(move || {
        let (s1, s2, s3) = (seen.clone(), seen.clone(), seen);
        TcpServer::builder("codec", localhost())
            .io_threads(1)
            .max_input(max_input)
            .on_connection(move |c| {
                if c.is_connected() {
                    s1.ids.lock().unwrap().insert(c.peer_addr(), c.id());
                }
            })
            .on_message(move |ctx, input| {
                let id = ctx.connection().id();
                let mut replies = Vec::new();
                let result = decode(input, &mut |m| replies.push(encode(m)));
                if !replies.is_empty() {
                    *s2.frames.lock().unwrap().entry(id).or_default() += replies.len();
                }
                for r in &replies {
                    ctx.send(r);
                }
                if let Err(e) = result {
                    s2.errors.lock().unwrap().push((id, e));
                    ctx.close_after_flush();
                }
            })
            .on_close(move |c| {
                s3.closes.lock().unwrap().push((c.id(), c.close_reason()));
            })
    })
}

const MAX_FRAME: usize = 1024;

fn length_server(seen: Arc<CodecSeen>, codec: LengthHeaderCodec, max_input: usize) -> TestServer {
    codec_server(
        seen,
        move |input, f| codec.decode_all(input, |m| f(m)),
        move |m| {
            let mut out = Vec::new();
            codec.encode(m, &mut out).expect("an echo fits");
            out
        },
        max_input,
    )
}

fn framed(codec: &LengthHeaderCodec, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    codec.encode(payload, &mut out).unwrap();
    out
}

/// Reads exactly `n` bytes.
fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).expect("read the echo");
    buf
}

/// One framed round trip on the witness connection.
fn witness_echo(w: &mut TcpStream, codec: &LengthHeaderCodec, round: usize) {
    let msg = framed(codec, format!("witness round {round}").as_bytes());
    w.write_all(&msg).unwrap();
    assert_eq!(read_n(w, msg.len()), msg, "the witness's echo differs");
}

/// Half-closes and expects an orderly end with nothing more to read.
fn finish_clean(mut s: TcpStream) {
    s.shutdown(Shutdown::Write).unwrap();
    let (rest, end) = read_until_closed(&mut s);
    assert!(rest.is_empty(), "{} unexpected bytes", rest.len());
    assert_eq!(end, End::Eof);
}

/// Hostile and awkward input for a length-prefixed echo server, each on a connection of
/// its own beside a witness connection on the same loop: a header of `u32::MAX`; a frame
/// written one byte per segment; a header (and a half header) followed by a half-close;
/// 400 frames in one write; good frames followed by an oversized header in the same
/// write. Each error is a clear `FrameTooLarge` that closes that connection only, once,
/// after the replies owed; a header cut by the peer's FIN is a clean close, no frame and
/// no error; the witness echoes after every case.
#[test]
fn length_codec_hostile_input_closes_only_the_offender() {
    init_log();
    let codec = LengthHeaderCodec::new(MAX_FRAME);
    let seen = Arc::new(CodecSeen::default());
    let server = length_server(seen.clone(), codec, duo_net::defaults::MAX_INPUT);
    let mut witness = connect(server.addr());
    witness_echo(&mut witness, &codec, 0);
    let wid = seen.id_of(&witness);

    // 1. A header announcing u32::MAX bytes.
    let mut s = connect(server.addr());
    let id = seen.id_of(&s);
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let (got, end) = read_until_closed(&mut s);
    assert!(
        got.is_empty() && end == End::Eof,
        "{} bytes, {end:?}",
        got.len()
    );
    assert_eq!(seen.closed(id), Some(CloseReason::User));
    assert_eq!(
        seen.errors_of(id),
        [CodecError::FrameTooLarge {
            len: u64::from(u32::MAX),
            max: MAX_FRAME
        }]
    );
    witness_echo(&mut witness, &codec, 1);

    // 2. One frame, one byte per segment.
    let mut s = connect(server.addr());
    s.set_nodelay(true).unwrap();
    let id = seen.id_of(&s);
    let frame = framed(&codec, &random_bytes(2, 300));
    for b in &frame {
        s.write_all(std::slice::from_ref(b)).unwrap();
    }
    assert_eq!(read_n(&mut s, frame.len()), frame);
    finish_clean(s);
    assert_eq!(seen.closed(id), Some(CloseReason::Peer));
    assert_eq!(seen.frames_of(id), 1);
    witness_echo(&mut witness, &codec, 2);

    // 3. A whole header, or half of one, then the peer's FIN.
    for cut in [&256u32.to_be_bytes()[..], &[0, 0][..]] {
        let mut s = connect(server.addr());
        let id = seen.id_of(&s);
        s.write_all(cut).unwrap();
        finish_clean(s);
        assert_eq!(seen.closed(id), Some(CloseReason::Peer));
        assert_eq!(seen.frames_of(id), 0);
        assert!(seen.errors_of(id).is_empty());
    }
    witness_echo(&mut witness, &codec, 3);

    // 4. 400 frames (0 to 1024 bytes) in one write, read back concurrently.
    let s = connect(server.addr());
    let id = seen.id_of(&s);
    let mut wire = Vec::new();
    for i in 0..400usize {
        wire.extend(framed(
            &codec,
            &random_bytes(i as u64, (i * 37) % (MAX_FRAME + 1)),
        ));
    }
    let mut writer_side = s.try_clone().unwrap();
    let w = wire.clone();
    let writer = thread::spawn(move || writer_side.write_all(&w).unwrap());
    let mut reader = s;
    assert!(
        read_n(&mut reader, wire.len()) == wire,
        "the 400 echoes differ"
    );
    join_within("the writer", writer);
    finish_clean(reader);
    assert_eq!(seen.closed(id), Some(CloseReason::Peer));
    assert_eq!(seen.frames_of(id), 400);
    witness_echo(&mut witness, &codec, 4);

    // 5. Good frames and an oversized header in one write: the good ones are echoed,
    // then the connection closes.
    let mut s = connect(server.addr());
    let id = seen.id_of(&s);
    let good: Vec<u8> = (0..3)
        .flat_map(|i| framed(&codec, format!("good {i}").as_bytes()))
        .collect();
    let mut wire = good.clone();
    wire.extend_from_slice(&(MAX_FRAME as u32 + 1).to_be_bytes());
    s.write_all(&wire).unwrap();
    let (got, _) = read_until_closed(&mut s);
    assert!(got == good, "got {:?}", String::from_utf8_lossy(&got));
    assert_eq!(seen.closed(id), Some(CloseReason::User));
    assert_eq!(
        seen.errors_of(id),
        [CodecError::FrameTooLarge {
            len: MAX_FRAME as u64 + 1,
            max: MAX_FRAME
        }]
    );
    assert_eq!(seen.frames_of(id), 3);

    // Nothing else was disturbed.
    witness_echo(&mut witness, &codec, 5);
    assert!(!seen.is_closed(wid));
    assert!(seen.errors_of(wid).is_empty());
    finish_clean(witness);
    assert_eq!(seen.closed(wid), Some(CloseReason::Peer));
    server.stop();
}

/// A codec that accepts any length (`LengthHeaderCodec::new(usize::MAX)`, clamped to
/// `u32::MAX`) behind a 64 KiB `max_input`: a header of `u32::MAX` followed by a stream
/// of bytes is not waited for to the end; the connection is closed with
/// `CloseReason::InputTooLarge` after a bounded amount, the writer sees its connection
/// end, and a witness on the same loop keeps echoing.
#[test]
fn unbounded_frames_are_bounded_by_max_input() {
    init_log();
    const MAX_INPUT: usize = 64 << 10;
    let codec = LengthHeaderCodec::new(usize::MAX);
    let small = LengthHeaderCodec::new(MAX_FRAME);
    let seen = Arc::new(CodecSeen::default());
    let server = length_server(seen.clone(), codec, MAX_INPUT);
    let mut witness = connect(server.addr());
    witness_echo(&mut witness, &small, 0);

    let s = connect(server.addr());
    let id = seen.id_of(&s);
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || -> io::Result<usize> {
        w.write_all(&u32::MAX.to_be_bytes())?;
        let chunk = vec![0x42u8; 4096];
        let mut written = 4;
        // At most 64 MiB: far more than the limit plus any socket buffers.
        while written < 64 << 20 {
            w.write_all(&chunk)?;
            written += chunk.len();
        }
        Ok(written)
    });
    assert_eq!(seen.closed(id), Some(CloseReason::InputTooLarge));
    let result = join_within("the writer", writer);
    assert!(
        result.is_err(),
        "64 MiB accepted by a closed connection: {result:?}"
    );
    assert!(seen.errors_of(id).is_empty());
    witness_echo(&mut witness, &small, 1);
    drop(s);
    finish_clean(witness);
    server.stop();
}

/// Lines through a real connection: a `\r\n` written one byte per segment is one line;
/// 50 lines (`\n` and `\r\n` ends) in one write are 50 echoes in order; a line past the
/// maximum without an end closes that connection with `LineTooLong` after the replies
/// owed; a witness on the same loop is untouched.
#[test]
fn line_codec_hostile_input_closes_only_the_offender() {
    init_log();
    const MAX_LINE: usize = 64;
    let codec = LineCodec::new(MAX_LINE);
    let seen = Arc::new(CodecSeen::default());
    let server = codec_server(
        seen.clone(),
        move |input, f| codec.decode_all(input, |m| f(m)),
        move |m| {
            let mut out = Vec::new();
            codec.encode(m, &mut out).expect("an echo fits");
            out
        },
        duo_net::defaults::MAX_INPUT,
    );
    let mut witness = connect(server.addr());
    let wid = seen.id_of(&witness);
    let witness_line = |w: &mut TcpStream, round: usize| {
        let line = format!("witness {round}\n");
        w.write_all(line.as_bytes()).unwrap();
        assert_eq!(read_n(w, line.len()), line.as_bytes());
    };
    witness_line(&mut witness, 0);

    // A CRLF line, one byte per segment.
    let mut s = connect(server.addr());
    s.set_nodelay(true).unwrap();
    let id = seen.id_of(&s);
    for b in b"split line\r\n" {
        s.write_all(std::slice::from_ref(b)).unwrap();
    }
    assert_eq!(read_n(&mut s, 11), b"split line\n");
    finish_clean(s);
    assert_eq!(seen.closed(id), Some(CloseReason::Peer));
    witness_line(&mut witness, 1);

    // 50 lines in one write.
    let mut s = connect(server.addr());
    let id = seen.id_of(&s);
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for i in 0..50 {
        let line = format!("line {i}");
        wire.extend_from_slice(line.as_bytes());
        wire.extend_from_slice(if i % 2 == 0 { b"\r\n" } else { b"\n" });
        expected.extend_from_slice(line.as_bytes());
        expected.push(b'\n');
    }
    s.write_all(&wire).unwrap();
    assert!(
        read_n(&mut s, expected.len()) == expected,
        "the 50 echoes differ"
    );
    finish_clean(s);
    assert_eq!(seen.closed(id), Some(CloseReason::Peer));
    assert_eq!(seen.frames_of(id), 50);
    witness_line(&mut witness, 2);

    // A good line, then one past the maximum with no end.
    let mut s = connect(server.addr());
    let id = seen.id_of(&s);
    let mut wire = b"fine\n".to_vec();
    wire.extend_from_slice(&[b'x'; MAX_LINE + 1]);
    s.write_all(&wire).unwrap();
    let (got, _) = read_until_closed(&mut s);
    assert_eq!(got, b"fine\n");
    assert_eq!(seen.closed(id), Some(CloseReason::User));
    assert_eq!(
        seen.errors_of(id),
        [CodecError::LineTooLong { max: MAX_LINE }]
    );

    witness_line(&mut witness, 3);
    assert!(!seen.is_closed(wid));
    finish_clean(witness);
    assert_eq!(seen.closed(wid), Some(CloseReason::Peer));
    server.stop();
}
