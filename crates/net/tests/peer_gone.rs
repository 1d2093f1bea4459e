//! A peer that goes away (a reset, a failed write) while the application has paused
//! reading: the connection is `Disconnecting` (no longer `is_connected()`, sends
//! refused), stays open until reading resumes, then delivers the peer's last bytes and
//! closes with the peer's reason. What that touches: the
//! graceful shutdown's `on_shutdown` hook, sends from other threads, close_after_flush,
//! the idle timeout, a failed write with reading active, and TLS, whose handshake sets
//! `Connected` itself.

mod util;

#[cfg(feature = "tls")]
use std::io::Read;
use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
#[cfg(feature = "tls")]
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duo_net::{CloseReason, ConnState, ServerBuilder, TcpConnection, TcpServer};
use duo_reactor::LoopHandle;
#[cfg(feature = "tls")]
use duo_testkit::tcp_queues;
use duo_testkit::{wait_until, LIMIT};
use util::{connect, init_log, localhost, TestServer};

/// What the server saw, for every connection.
#[derive(Default)]
struct Probe {
    handles: Mutex<Vec<TcpConnection>>,
    ups: AtomicUsize,
    /// (id, is_connected() in the "down" call, close reason) of every "down" call.
    downs: Mutex<Vec<(u64, bool, Option<CloseReason>)>>,
    closes: AtomicUsize,
    /// Bytes delivered to the message callback, with the close state seen then.
    input: Mutex<Vec<u8>>,
    /// Messages delivered after the connection was closed (never expected).
    late: AtomicUsize,
    /// The `on_shutdown` hook ran.
    hooked: AtomicUsize,
    /// The I/O loop (`thread_init`), to block it or run on it.
    io_loop: Mutex<Option<LoopHandle>>,
}

impl Probe {
    fn handle(&self, i: usize) -> TcpConnection {
        wait_until("the connection is up", || {
            self.handles.lock().unwrap().len() > i
        });
        self.handles.lock().unwrap()[i].clone()
    }

    fn input(&self) -> Vec<u8> {
        self.input.lock().unwrap().clone()
    }

    #[cfg(feature = "tls")]
    fn io_loop(&self) -> LoopHandle {
        self.io_loop.lock().unwrap().clone().expect("I/O loop")
    }

    /// Exactly one up, one down (not connected, with a reason), one close.
    fn check_one(&self, reason: CloseReason) {
        wait_until("the close callback", || {
            self.closes.load(Ordering::SeqCst) == 1
        });
        assert_eq!(self.ups.load(Ordering::SeqCst), 1, "ups");
        let downs = self.downs.lock().unwrap().clone();
        assert_eq!(downs.len(), 1, "downs: {downs:?}");
        assert!(!downs[0].1, "the down call saw is_connected()");
        assert_eq!(downs[0].2, Some(reason), "close reason");
        assert_eq!(
            self.late.load(Ordering::SeqCst),
            0,
            "messages after the close"
        );
    }
}

/// How the test server behaves.
#[derive(Clone, Copy, Default)]
struct Plan {
    /// Stop reading in the "up" callback.
    pause: bool,
    /// An `on_shutdown` hook that resumes reading and half-closes (the state matrix's
    /// `resume_on_shutdown`).
    resume_on_shutdown: bool,
    /// Answer each message with this many bytes.
    reply: usize,
    idle: Option<Duration>,
}

fn build(b: ServerBuilder, plan: Plan, p: Arc<Probe>) -> ServerBuilder {
    let (p1, p2, p3, p4, p5) = (p.clone(), p.clone(), p.clone(), p.clone(), p.clone());
    let mut b = b
        .io_threads(1)
        .thread_init(move |lp| *p5.io_loop.lock().unwrap() = Some(lp.handle()))
        .on_connection(move |conn| {
            if conn.is_connected() {
                p1.ups.fetch_add(1, Ordering::SeqCst);
                if plan.pause {
                    conn.stop_reading().unwrap();
                }
                p1.handles.lock().unwrap().push(conn.clone());
            } else {
                p1.downs.lock().unwrap().push((
                    conn.id(),
                    conn.is_connected(),
                    conn.close_reason(),
                ));
            }
        })
        .on_message(move |ctx, input| {
            if ctx.connection().is_closed() {
                p2.late.fetch_add(1, Ordering::SeqCst);
            }
            p2.input.lock().unwrap().extend_from_slice(input.peek());
            input.consume_all();
            if plan.reply > 0 {
                ctx.send(&vec![b'r'; plan.reply]);
            }
        })
        .on_close(move |_| {
            p3.closes.fetch_add(1, Ordering::SeqCst);
        });
    if plan.resume_on_shutdown {
        b = b.on_shutdown(move |ctx| {
            p4.hooked.fetch_add(1, Ordering::SeqCst);
            ctx.start_reading();
            ctx.shutdown();
        });
    }
    if let Some(idle) = plan.idle {
        b = b.idle_timeout(idle);
    }
    b
}

fn serve(plan: Plan) -> (TestServer, Arc<Probe>) {
    init_log();
    let probe = Arc::new(Probe::default());
    let p = probe.clone();
    let server =
        TestServer::start(move || build(TcpServer::builder("peer-gone", localhost()), plan, p));
    (server, probe)
}

/// Closes `s` with a reset (SO_LINGER 0).
fn reset(s: TcpStream) {
    duo_sys::socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// Waits until `lp` has run everything queued on it before this call.
#[cfg(feature = "tls")]
fn round_trip(lp: &LoopHandle) {
    let (tx, rx) = mpsc::channel();
    lp.queue_in_loop(move |_| {
        let _ = tx.send(());
    })
    .unwrap();
    rx.recv_timeout(LIMIT).expect("the loop runs");
}

/// A connection paused by its "up" callback whose peer sent `last words` and reset.
fn parked(plan: Plan) -> (TestServer, Arc<Probe>, TcpConnection) {
    let (server, probe) = serve(Plan {
        pause: true,
        ..plan
    });
    let mut c = connect(server.addr());
    let conn = probe.handle(0);
    assert!(conn.is_reading_stopped());
    c.write_all(b"last words").unwrap();
    reset(c);
    wait_until("the reset is seen (Disconnecting)", || {
        conn.state() == ConnState::Disconnecting
    });
    (server, probe, conn)
}

/// Pins the new state: gone peer, paused reading: Disconnecting, sends refused (no
/// error, nothing counted), still open; `start_reading` delivers then closes with the
/// reset.
#[test]
fn a_reset_while_paused_is_disconnecting_then_resuming_delivers_and_closes() {
    let (server, probe, conn) = parked(Plan::default());
    assert!(!conn.is_connected());
    assert!(!conn.is_closed());
    assert_eq!(
        conn.send(&b"nobody listens"[..]),
        Err(duo_net::ConnectionClosed)
    );
    assert_eq!(
        conn.send_shared(Arc::from(&b"nor here"[..])),
        Err(duo_net::ConnectionClosed)
    );
    assert!(probe.input().is_empty(), "delivered while paused");
    let st = server.stats();
    assert_eq!(st.active, 1);
    assert_eq!(st.output_queued(), 0);
    conn.start_reading().unwrap();
    probe.check_one(CloseReason::Error(ErrorKind::ConnectionReset));
    assert_eq!(probe.input(), b"last words");
    let st = server.stats();
    assert_eq!(st.active, 0);
    assert_eq!(st.closes().total(), 1);
    server.stop();
}

/// A graceful shutdown with an `on_shutdown` hook that resumes reading (what the state
/// matrix's `graceful_stop_with_a_hook_that_resumes_closes_every_connection_for_the_peer`
/// relies on): the hook must see the parked connection too, which then delivers the
/// peer's last words and closes for the peer's reset at once, not at the deadline.
#[test]
fn a_shutdown_hook_still_sees_a_paused_connection_whose_peer_reset() {
    let (mut server, probe, conn) = parked(Plan {
        resume_on_shutdown: true,
        ..Plan::default()
    });
    let grace = Duration::from_secs(3);
    let took = server.shutdown_and_join(grace);
    let hooked = probe.hooked.load(Ordering::SeqCst);
    let reason = conn.close_reason();
    let input = probe.input();
    assert_eq!(
        (hooked, reason, &input[..], took < grace),
        (
            1,
            Some(CloseReason::Error(ErrorKind::ConnectionReset)),
            &b"last words"[..],
            true
        ),
        "(hook calls, close reason, input delivered, before the deadline); took {took:?}"
    );
    probe.check_one(CloseReason::Error(ErrorKind::ConnectionReset));
}

/// Without a hook: the parked connection waits behind its pause and is closed at the
/// deadline (as before the change), exactly once.
#[test]
fn a_graceful_shutdown_without_a_hook_closes_a_parked_connection_at_the_deadline() {
    let (mut server, probe, conn) = parked(Plan::default());
    let grace = Duration::from_millis(300);
    let took = server.shutdown_and_join(grace);
    assert!(took >= grace, "{took:?}");
    assert_eq!(conn.close_reason(), Some(CloseReason::Shutdown));
    probe.check_one(CloseReason::Shutdown);
    assert!(probe.input().is_empty());
}

/// close_after_flush and force_close still reach a parked connection.
#[test]
fn close_after_flush_closes_a_parked_connection_at_once() {
    let (server, probe, conn) = parked(Plan::default());
    conn.close_after_flush().unwrap();
    probe.check_one(CloseReason::User);
    server.stop();
}

/// The idle timeout still ends a parked connection.
#[test]
fn the_idle_timeout_closes_a_parked_connection() {
    let (server, probe, _conn) = parked(Plan {
        idle: Some(Duration::from_millis(300)),
        ..Plan::default()
    });
    probe.check_one(CloseReason::Idle);
    server.stop();
}

/// A failed write with reading active: output queued for a peer that resets; the
/// connection closes promptly with the socket error and what the peer sent before is
/// delivered.
#[test]
fn a_failed_write_with_reading_active_closes_promptly() {
    let (server, probe) = serve(Plan {
        reply: 8 << 20,
        ..Plan::default()
    });
    let mut c = connect(server.addr());
    let conn = probe.handle(0);
    c.write_all(b"give me 8 MiB").unwrap();
    wait_until("the reply is queued", || server.stats().output_queued() > 0);
    reset(c);
    probe.wait_reason(&conn);
    let reason = conn.close_reason().unwrap();
    assert!(
        matches!(
            reason,
            CloseReason::Error(ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
        ),
        "{reason:?}"
    );
    assert_eq!(probe.input(), b"give me 8 MiB");
    let st = server.stats();
    assert_eq!(st.output_queued(), 0);
    server.stop();
}

impl Probe {
    fn wait_reason(&self, conn: &TcpConnection) {
        let start = Instant::now();
        wait_until("the connection closes", || conn.is_closed());
        assert!(start.elapsed() < LIMIT);
        wait_until("the close callback", || {
            self.closes.load(Ordering::SeqCst) == 1
        });
    }
}

#[cfg(feature = "tls")]
mod tls {
    use super::*;
    use crate::util::pki::{pki, records, Pki};

    /// A TLS server whose "up" callback pauses reading, with its certificates and probe.
    fn paused_tls_server(name: &'static str) -> (Pki, Arc<Probe>, TestServer) {
        init_log();
        let pki = pki();
        let probe = Arc::new(Probe::default());
        let p = probe.clone();
        let config = pki.server_config();
        let server = TestServer::start(move || {
            let plan = Plan {
                pause: true,
                ..Plan::default()
            };
            build(TcpServer::builder(name, localhost()).tls(config), plan, p)
        });
        (pki, probe, server)
    }

    /// Blocks `lp` until the returned sender is dropped (or sends).
    fn block(lp: &LoopHandle) -> mpsc::Sender<()> {
        let (tx, rx) = mpsc::channel::<()>();
        let (in_tx, in_rx) = mpsc::channel();
        lp.queue_in_loop(move |_| {
            let _ = in_tx.send(());
            let _ = rx.recv_timeout(LIMIT);
        })
        .unwrap();
        in_rx.recv_timeout(LIMIT).expect("the loop blocks");
        tx
    }

    /// A TLS client whose Finished, first data and reset all reach the server before it
    /// reads any of them (its I/O loop is held meanwhile): the handshake completes on the
    /// server with the peer already gone (the session tickets it then writes meet the
    /// reset), and the "up" callback pauses reading. The connection must not stay
    /// `Connected`: nothing can be sent on it.
    #[test]
    fn tls_handshake_completed_after_the_reset_is_not_connected() {
        let (pki, probe, server) = paused_tls_server("tls-peer-gone");
        let mut sock = connect(server.addr());
        let mut tls = pki.client_conn();
        sock.write_all(&records(&mut tls)).unwrap();
        let mut buf = vec![0u8; 64 << 10];
        while tls.is_handshaking() {
            let n = sock.read(&mut buf).unwrap();
            assert!(n > 0, "server closed during the handshake");
            tls.read_tls(&mut &buf[..n]).unwrap();
            tls.process_new_packets().unwrap();
        }
        let lp = probe.io_loop();
        let release = block(&lp);
        tls.writer().write_all(b"last words").unwrap();
        sock.write_all(&records(&mut tls)).unwrap();
        let (client, srv) = (sock.local_addr().unwrap().port(), server.addr().port());
        reset(sock);
        // The segments and the reset reach the server's socket before the loop reads
        // them: a socket that has processed a reset is no longer listed.
        wait_until("the reset reaches the server's socket", || {
            tcp_queues(srv, client).is_none()
        });
        drop(release);
        let conn = probe.handle(0);
        round_trip(&lp);
        round_trip(&lp);
        let state = conn.state();
        let sent = conn.send(&b"nobody listens"[..]);
        assert!(!conn.is_closed(), "closed while paused");
        assert!(conn.is_reading_stopped());
        conn.start_reading().unwrap();
        wait_until("the close", || conn.is_closed());
        let reason = conn.close_reason();
        let input = probe.input();
        server.stop();
        assert_eq!(
            (state, sent.is_err()),
            (ConnState::Disconnecting, true),
            "a TLS connection whose peer was gone when its handshake completed: \
             state and send refused (close reason then {reason:?}, input {input:?})"
        );
    }

    /// The same reset after a completed handshake, while paused: Disconnecting, resumed
    /// delivers then closes with the reset.
    #[test]
    fn tls_reset_while_paused_is_disconnecting_then_delivers() {
        let (pki, probe, server) = paused_tls_server("tls-paused-reset");
        let mut sock = connect(server.addr());
        let mut tls = pki.client_conn();
        while tls.is_handshaking() {
            tls.complete_io(&mut sock).unwrap();
        }
        let conn = probe.handle(0);
        // The handshake is done on the server (its "up" ran); now the data and a reset.
        tls.writer().write_all(b"last words").unwrap();
        sock.write_all(&records(&mut tls)).unwrap();
        reset(sock);
        wait_until("the reset is seen", || {
            conn.state() == ConnState::Disconnecting
        });
        assert!(conn.send(&b"x"[..]).is_err());
        assert!(!conn.is_closed());
        assert!(probe.input().is_empty());
        conn.start_reading().unwrap();
        wait_until("the close", || conn.is_closed());
        assert_eq!(probe.input(), b"last words");
        let reason = conn.close_reason();
        assert!(
            matches!(
                reason,
                Some(CloseReason::Error(
                    ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
                ))
            ),
            "{reason:?}"
        );
        wait_until("the close callback", || {
            probe.closes.load(Ordering::SeqCst) == 1
        });
        assert_eq!(probe.downs.lock().unwrap().len(), 1);
        server.stop();
    }
}
