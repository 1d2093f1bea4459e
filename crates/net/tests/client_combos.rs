//! `TcpClient` in combinations the call-order and matrix tests leave out: a retry delay
//! too long for the clock; connect timeouts against a listener whose accept queue is full,
//! with `max_attempts`; the client's loop ending while an attempt is in flight or a retry
//! waits (no callback, no socket and no client state left behind); a server that comes up
//! exactly at the last allowed attempt; the client dropped from its own connection
//! callback; TLS handshake failures against refused connects in the back-off; the server
//! resetting a connection whose output is queued.
//!
//! Every wait has a deadline; what cannot be waited on (no further attempt, no callback)
//! is watched over a measured window.

mod util;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use duo_net::{ClientBuilder, CloseReason, ConnectionClosed, TcpClient, TcpConnection};
use duo_reactor::EventLoopThread;
use duo_testkit::{join_within, wait_until, RefusedPort, LIMIT};
use socket2::Socket;
use util::shared::{settle, syn_sent_to, watch, Blackhole};
use util::{barrier, init_log, localhost, TestServer};

// ---------------------------------------------------------------------------------------
// What a client's callbacks saw
// ---------------------------------------------------------------------------------------

/// One callback of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Up(u64),
    Down(u64, Option<CloseReason>),
    Close(u64),
    Failed {
        kind: ErrorKind,
        attempts: u32,
        will_retry: bool,
    },
}

/// The callbacks' record, and a token every callback closure holds: while the client's
/// state lives, so do its callbacks, so `Arc::strong_count(&log) == 1` once the test
/// drops its own clones says the client's state is gone (nothing leaked it).
#[derive(Default)]
struct Seen {
    events: Mutex<Vec<Ev>>,
}

type Log = Arc<Seen>;

impl Seen {
    fn push(&self, e: Ev) {
        self.events.lock().unwrap().push(e);
    }
    fn events(&self) -> Vec<Ev> {
        self.events.lock().unwrap().clone()
    }
    fn ups(&self) -> usize {
        self.count(|e| matches!(e, Ev::Up(_)))
    }
    fn closes(&self) -> usize {
        self.count(|e| matches!(e, Ev::Close(_)))
    }
    fn count(&self, f: impl Fn(&Ev) -> bool) -> usize {
        self.events().iter().filter(|e| f(e)).count()
    }
    /// `(kind, attempts, will_retry)` of every failure callback so far.
    fn failures(&self) -> Vec<(ErrorKind, u32, bool)> {
        self.events()
            .iter()
            .filter_map(|e| match *e {
                Ev::Failed {
                    kind,
                    attempts,
                    will_retry,
                } => Some((kind, attempts, will_retry)),
                _ => None,
            })
            .collect()
    }
}

/// A client builder whose every callback records into `log`.
fn logged(name: &str, addr: SocketAddr, log: &Log) -> ClientBuilder {
    let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
    TcpClient::builder(name, addr)
        .on_connection(move |c| {
            if c.is_connected() {
                l1.push(Ev::Up(c.id()));
            } else {
                l1.push(Ev::Down(c.id(), c.close_reason()));
            }
        })
        .on_close(move |c| l2.push(Ev::Close(c.id())))
        .on_message(|_, input| input.consume_all())
        .on_connect_failed(move |f| {
            l3.push(Ev::Failed {
                kind: f.error.kind(),
                attempts: f.attempts,
                will_retry: f.will_retry,
            })
        })
}

/// Waits until only the test holds `log`: the client's state (which holds every callback)
/// is gone.
fn wait_released(log: &Log, what: &str) {
    wait_until(what, || Arc::strong_count(log) == 1);
}

// ---------------------------------------------------------------------------------------
// Retry delays and connect timeouts
// ---------------------------------------------------------------------------------------

/// `retry_backoff(Duration::MAX, Duration::MAX)` (a value read from a user's file, say)
/// means "retry after a very long time": the first failure must not panic the loop while
/// doubling the delay. The loop goes on serving, the client makes no second attempt on its
/// own, and `connect()` still starts one at once.
#[test]
fn a_retry_delay_too_long_for_the_clock_does_not_panic_the_loop() {
    init_log();
    let refused = RefusedPort::new();
    let lp = EventLoopThread::spawn("cc-huge-delay", None).unwrap();
    let log: Log = Arc::default();
    let client = logged("huge-delay", refused.addr(), &log)
        .retry_backoff(Duration::MAX, Duration::MAX)
        .connect(lp.handle());
    wait_until("the first failure", || !log.failures().is_empty());
    // The loop is alive and has finished handling that failure.
    settle(lp.handle());
    assert_eq!(
        log.failures(),
        [(ErrorKind::ConnectionRefused, 1, true)],
        "the failure reported"
    );
    assert_eq!(client.attempts(), 1);
    client.connect();
    wait_until("the attempt connect() asked for", || {
        log.failures().len() == 2
    });
    settle(lp.handle());
    assert_eq!(client.attempts(), 2);
    drop(client);
    settle(lp.handle());
    wait_released(&log, "the client's state to go");
    lp.stop().unwrap();
}

/// With `connect_timeout` and `max_attempts(3)` against a listener that never answers the
/// SYN: three failures with `TimedOut`, the last with `will_retry == false`, exactly three
/// attempts, and no connect left in flight in the kernel (each timed-out attempt's socket
/// is closed), also after a second round asked for with `connect()`.
#[test]
fn connect_timeouts_count_towards_max_attempts_and_leave_no_socket() {
    init_log();
    let hole = Blackhole::new();
    let port = hole.addr().port();
    let lp = EventLoopThread::spawn("cc-timeouts", None).unwrap();
    let log: Log = Arc::default();
    let client = logged("timeouts", hole.addr(), &log)
        .connect_timeout(Duration::from_millis(60))
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(10))
        .max_attempts(3)
        .connect(lp.handle());
    let timed_out = |n: u32, retry: bool| (ErrorKind::TimedOut, n, retry);
    wait_until("the third failure", || log.failures().len() >= 3);
    settle(lp.handle());
    assert_eq!(
        log.failures(),
        [timed_out(1, true), timed_out(2, true), timed_out(3, false)]
    );
    assert_eq!(
        syn_sent_to(port),
        0,
        "a timed-out connect is still in flight"
    );
    let watched = watch(Duration::from_millis(150));
    assert_eq!(client.attempts(), 3, "attempted again within {watched:?}");
    assert_eq!(log.failures().len(), 3);

    client.connect();
    wait_until("the second round", || log.failures().len() >= 6);
    settle(lp.handle());
    assert_eq!(
        log.failures()[3..],
        [timed_out(1, true), timed_out(2, true), timed_out(3, false)]
    );
    assert_eq!(client.attempts(), 6);
    assert_eq!(syn_sent_to(port), 0);
    assert_eq!(log.ups(), 0);
    drop(client);
    settle(lp.handle());
    wait_released(&log, "the client's state to go");
    lp.stop().unwrap();
}

// ---------------------------------------------------------------------------------------
// The loop ends under the client
// ---------------------------------------------------------------------------------------

/// The client's loop ends (its thread stopped and joined) while a connect is in flight
/// (towards a full accept queue, with a connect timeout pending): no callback for that
/// attempt, the socket is closed (no connect left in flight), and once the client is
/// dropped nothing of it is left. `stop`, `disconnect`, `connect` on the orphaned client
/// are harmless; the `connect` is a failed attempt reported to `on_connect_failed`
/// (`NotConnected`, not retried: review round 12).
#[test]
fn the_loop_ends_while_a_connect_is_in_flight() {
    init_log();
    let hole = Blackhole::new();
    let port = hole.addr().port();
    let lp = EventLoopThread::spawn("cc-end-inflight", None).unwrap();
    let log: Log = Arc::default();
    let client = logged("end-inflight", hole.addr(), &log)
        .connect_timeout(Duration::from_secs(5))
        .connect(lp.handle());
    wait_until("the connect in flight", || syn_sent_to(port) == 1);
    join_within("the loop thread", thread::spawn(move || lp.stop())).expect("a clean end");
    assert_eq!(
        syn_sent_to(port),
        0,
        "the in-flight connect's socket is open"
    );
    client.stop();
    client.disconnect();
    client.connect();
    assert!(client.connection().is_none());
    drop(client);
    assert_eq!(
        log.events(),
        [Ev::Failed {
            kind: ErrorKind::NotConnected,
            attempts: 1,
            will_retry: false
        }],
        "only the connect() on the gone loop is reported"
    );
    wait_released(&log, "the client's state to go");
}

/// The client's loop ends while a retry waits (a refused connect, a long back-off): no
/// further attempt (the `connect` after it is reported as a failure, `NotConnected`),
/// and dropping the client frees everything (the retry
/// timer, gone with the loop, held the client's state).
#[test]
fn the_loop_ends_while_a_retry_waits() {
    init_log();
    let refused = RefusedPort::new();
    let lp = EventLoopThread::spawn("cc-end-waiting", None).unwrap();
    let log: Log = Arc::default();
    let client = logged("end-waiting", refused.addr(), &log)
        .retry_backoff(Duration::from_secs(5), Duration::from_secs(5))
        .connect(lp.handle());
    wait_until("the first failure", || log.failures().len() == 1);
    settle(lp.handle());
    join_within("the loop thread", thread::spawn(move || lp.stop())).expect("a clean end");
    client.connect();
    client.stop();
    assert_eq!(client.attempts(), 1);
    drop(client);
    assert_eq!(
        log.failures(),
        [
            (ErrorKind::ConnectionRefused, 1, true),
            (ErrorKind::NotConnected, 1, false)
        ]
    );
    wait_released(&log, "the client's state to go");
}

// ---------------------------------------------------------------------------------------
// The last attempt
// ---------------------------------------------------------------------------------------

/// `max_attempts(3)`; the port refuses twice and a server is listening there just before
/// the third (last) attempt: that attempt connects. The failures reported are
/// `(1, retry)` and `(2, retry)`, never a "giving up"; the connection comes up once and
/// stays the client's.
#[test]
fn a_server_that_comes_up_at_the_last_attempt_is_connected() {
    init_log();
    let refused = RefusedPort::new();
    let addr = refused.addr();
    let lp = EventLoopThread::spawn("cc-last", None).unwrap();
    let log: Log = Arc::default();
    let refused = Arc::new(Mutex::new(Some(refused)));
    let listener: Arc<Mutex<Option<TcpListener>>> = Arc::default();
    let (r, l, l3) = (refused.clone(), listener.clone(), log.clone());
    let client = logged("last", addr, &log)
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(20))
        .max_attempts(3)
        .on_connect_failed(move |f| {
            l3.push(Ev::Failed {
                kind: f.error.kind(),
                attempts: f.attempts,
                will_retry: f.will_retry,
            });
            if f.attempts == 2 {
                // The port is ours: freed and bound again at once (no other test binds
                // a fixed port).
                drop(r.lock().unwrap().take());
                *l.lock().unwrap() = Some(TcpListener::bind(addr).expect("bind the port"));
            }
        })
        .connect(lp.handle());
    wait_until("the connection", || log.ups() == 1);
    let conn = client.connection().expect("the client's connection");
    assert!(conn.is_connected());
    assert_eq!(
        log.failures(),
        [
            (ErrorKind::ConnectionRefused, 1, true),
            (ErrorKind::ConnectionRefused, 2, true)
        ]
    );
    assert_eq!(client.attempts(), 3);
    let accepted = listener.lock().unwrap().as_ref().unwrap().accept().unwrap();
    client.stop();
    wait_until("the close", || log.closes() == 1);
    drop((client, accepted, listener, refused));
    settle(lp.handle());
    wait_released(&log, "the client's state to go");
    lp.stop().unwrap();
}

// ---------------------------------------------------------------------------------------
// Dropped from its own callback
// ---------------------------------------------------------------------------------------

/// The application drops the `TcpClient` from its own connection callback, on the "up"
/// call (a one-shot client): the connection closes (down and close once each, reason
/// `User`), nothing panics, the server sees the end, and the client's state is freed.
#[test]
fn the_client_dropped_from_its_own_up_callback_closes_once() {
    init_log();
    let (reason_tx, reasons) = mpsc::channel();
    let server = TestServer::start(move || {
        util::echo_builder("cc-drop-self", localhost())
            .io_threads(1)
            .on_close(move |c| {
                let _ = reason_tx.send(c.close_reason());
            })
    });
    let lp = EventLoopThread::spawn("cc-drop-self", None).unwrap();
    let log: Log = Arc::default();
    let slot: Arc<Mutex<Option<TcpClient>>> = Arc::default();
    let dropped = Arc::new(AtomicUsize::new(0));
    let (s, d, l) = (slot.clone(), dropped.clone(), log.clone());
    let client = logged("drop-self", server.addr(), &log)
        .on_connection(move |c| {
            if c.is_connected() {
                l.push(Ev::Up(c.id()));
                // May run before the test has stored the client: then wait for it here
                // (the loop is ours alone).
                let deadline = Instant::now() + LIMIT;
                loop {
                    if let Some(me) = s.lock().unwrap().take() {
                        drop(me);
                        d.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    assert!(Instant::now() < deadline, "the client was never stored");
                    thread::yield_now();
                }
            } else {
                l.push(Ev::Down(c.id(), c.close_reason()));
            }
        })
        .connect(lp.handle());
    *slot.lock().unwrap() = Some(client);
    wait_until("the close", || log.closes() == 1);
    settle(lp.handle());
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    let events = log.events();
    assert!(
        matches!(
            events[..],
            [Ev::Up(a), Ev::Down(b, Some(CloseReason::User)), Ev::Close(c)] if a == b && b == c
        ),
        "{events:?}"
    );
    assert!(reasons
        .recv_timeout(LIMIT)
        .expect("the server's close")
        .is_some());
    drop(slot);
    wait_released(&log, "the client's state to go");
    lp.stop().unwrap();
    server.stop();
}

// ---------------------------------------------------------------------------------------
// The server resets a connection with output queued
// ---------------------------------------------------------------------------------------

/// The server stops reading, the client queues output past what the kernel holds, then
/// the server resets the connection: one down (a reason given) and one close, the queued
/// output is dropped and uncounted (`output_queued` back to 0), the old handle refuses
/// sends, and with `reconnect` the client comes up again on a new connection.
#[test]
fn a_reset_with_output_queued_closes_once_and_reconnects() {
    init_log();
    let listener = TcpListener::bind(localhost()).unwrap();
    let lp = EventLoopThread::spawn("cc-reset-queued", None).unwrap();
    let log: Log = Arc::default();
    let client = logged("reset-queued", listener.local_addr().unwrap(), &log)
        .reconnect(true)
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(10))
        .connect(lp.handle());
    let (peer, _) = listener.accept().unwrap();
    wait_until("the client up", || log.ups() == 1);
    let conn = client.connection().unwrap();
    let chunk = vec![7u8; 1 << 20];
    let mut queued = 0;
    for _ in 0..256 {
        conn.send(chunk.clone()).unwrap();
        barrier(lp.handle());
        queued = client.stats().output_queued;
        if queued > 0 {
            break;
        }
    }
    assert!(queued > 0, "nothing stayed queued");
    let sock = Socket::from(peer);
    sock.set_linger(Some(Duration::ZERO)).unwrap();
    drop(sock);
    wait_until("the close", || log.closes() == 1);
    assert_eq!(conn.send(&b"late"[..]), Err(ConnectionClosed));
    let (again, _) = listener.accept().unwrap();
    wait_until("the second connection up", || log.ups() == 2);
    settle(lp.handle());
    let events = log.events();
    let first = conn.id();
    assert!(
        matches!(events[..3], [Ev::Up(a), Ev::Down(b, Some(_)), Ev::Close(c)] if a == first && b == first && c == first),
        "{events:?}"
    );
    assert_eq!(
        client.stats().output_queued,
        0,
        "dropped output still counted"
    );
    let second: TcpConnection = client.connection().unwrap();
    assert_ne!(second.id(), first);
    client.stop();
    wait_until("the second close", || log.closes() == 2);
    drop((client, again));
    settle(lp.handle());
    wait_released(&log, "the client's state to go");
    lp.stop().unwrap();
}

// ---------------------------------------------------------------------------------------
// TLS handshake failures in the back-off
// ---------------------------------------------------------------------------------------

/// Accepts every connection on `listener` and holds it open without a word until `done`;
/// returns how many it accepted.
#[cfg(feature = "tls")]
fn silent_server(
    listener: TcpListener,
    done: Arc<std::sync::atomic::AtomicBool>,
) -> thread::JoinHandle<usize> {
    listener.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        while !done.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((s, _)) => held.push(s),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        held.len()
    })
}

/// A reconnecting TLS client against a server that fails every handshake: at once (its
/// certificate is from another CA) or by never answering (the handshake timeout). Neither
/// connection ever was up (no connection callback; each is a failed attempt, reported to
/// `on_connect_failed`), so neither may reset the retry delay: the reconnects slow down as
/// after refused connects. (A handshake that timed out used to count as a connection
/// that "stayed up" as long as the delay: the delay started over after each, one
/// reconnect per handshake timeout for ever.)
#[cfg(feature = "tls")]
#[test]
fn tls_handshake_failures_back_off_like_refused_connects() {
    use duo_net::tls;
    use duo_net::TlsFailure;
    init_log();
    const INITIAL: Duration = Duration::from_millis(20);
    let (theirs, ours) = (util::pki::pki(), util::pki::pki());
    let config = theirs.server_config();
    let server = TestServer::start(move || {
        util::echo_builder("cc-tls-bad-ca", localhost())
            .io_threads(1)
            .tls(config)
    });
    let silent = TcpListener::bind(localhost()).unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let holder = silent_server(silent, done.clone());

    let lp = EventLoopThread::spawn("cc-tls-backoff", None).unwrap();
    let cases = [
        ("bad-ca", server.addr(), TlsFailure::Handshake),
        ("silent", silent_addr, TlsFailure::HandshakeTimeout),
    ];
    let clients: Vec<_> = cases
        .iter()
        .map(|&(name, addr, _)| {
            let log: Log = Arc::default();
            let client = logged(name, addr, &log)
                .tls(ours.client_config(), tls::server_name("localhost").unwrap())
                .tls_handshake_timeout(Duration::from_millis(40))
                .reconnect(true)
                .retry_backoff(INITIAL, Duration::from_secs(5))
                .connect(lp.handle());
            (client, log)
        })
        .collect();
    for ((client, _), &(_, _, failure)) in clients.iter().zip(&cases) {
        wait_until("four failed handshakes", || {
            client.stats().closes.of(CloseReason::Tls(failure)) >= 4
        });
    }
    // After four failures the delay is at least 8 x INITIAL (160 ms), then 320, 640 ms:
    // at most about four attempts in the window. At a constant delay (INITIAL, plus the
    // silent server's 40 ms) it would be some twenty.
    let before: Vec<u64> = clients.iter().map(|(c, _)| c.attempts()).collect();
    let window = watch(Duration::from_millis(1000));
    for (((client, log), &(name, _, _)), before) in clients.iter().zip(&cases).zip(before) {
        let made = client.attempts() - before;
        assert!(
            made <= 6,
            "{name}: {made} attempts in {window:?}: no back-off"
        );
        let failures = log.failures();
        assert_eq!(failures.len(), log.events().len(), "{name}: a callback ran");
        assert!(
            failures.iter().all(|&(_, _, will_retry)| will_retry),
            "{name}: gave up: {failures:?}"
        );
    }
    for (client, _) in &clients {
        client.stop();
    }
    drop(clients);
    settle(lp.handle());
    lp.stop().unwrap();
    done.store(true, Ordering::SeqCst);
    join_within("the silent server", holder);
    server.stop();
}
