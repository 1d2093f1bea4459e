//! Review round 9 of the connection state machine (`crates/net/src/conn/`: machine,
//! reading, writing, linger, handle, ctx): combinations of states no other test
//! combines.
//!
//! - the peer's end of stream arriving while our own `shutdown` is still draining a large
//!   output: both directions are done, so `on_peer_half_close` must not run (its
//!   documentation says so) and the connection closes with `Peer` once the output is
//!   written, as it does when the drain finished first;
//! - a paused connection told of its peer's FIN and then of its reset, in either trigger
//!   mode and paused by the application and by backpressure at once;
//! - a panic in `on_peer_half_close_while_paused`: one "down", the loop goes on.

mod util;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duo_net::{CloseReason, ServerBuilder, TcpConnection, TcpServer};
use duo_testkit::{wait_until, LIMIT};
use util::{connect, init_log, localhost, TestServer};

/// Asks the connection's loop whether the peer's end of stream has been read.
fn peer_half_closed(conn: &TcpConnection) -> bool {
    let (tx, rx) = mpsc::channel();
    if conn
        .queue_in_loop(move |ctx| {
            let _ = tx.send(ctx.peer_half_closed());
        })
        .is_err()
    {
        return false;
    }
    rx.recv_timeout(LIMIT).unwrap_or(false)
}

fn queued(server: &TestServer) -> u64 {
    server.stats().output_queued()
}

/// The server answers a request with a reply too large for the socket and shuts down
/// at once (`ConnCtx::shutdown`); the peer sends its FIN while that output still drains.
/// Both directions are then done: the half-close callback is not for this connection
/// (it could no longer send anything anyway), and the connection closes with `Peer`
/// after the whole reply, as it does when the drain ends before the peer's FIN.
#[test]
fn the_peers_end_of_stream_during_our_shutdown_drain_is_not_a_half_close() {
    const REPLY: usize = 8 << 20;
    init_log();
    let half_closes = Arc::new(AtomicUsize::new(0));
    let (conn_tx, conn_rx) = mpsc::channel::<TcpConnection>();
    let (close_tx, closed) = mpsc::channel::<CloseReason>();
    let (conn_tx, close_tx) = (Mutex::new(conn_tx), Mutex::new(close_tx));
    let told = half_closes.clone();
    let server = TestServer::start(move || -> ServerBuilder {
        TcpServer::builder("round9-drain-eof", localhost())
            .io_threads(1)
            // Reading goes on while the reply drains (no backpressure below 64 MiB).
            .water_marks(64 << 20, 32 << 20)
            .on_message(move |ctx, input| {
                input.consume_all();
                ctx.send(&vec![7u8; REPLY]);
                ctx.shutdown();
                let _ = conn_tx.lock().unwrap().send(ctx.connection().clone());
            })
            .on_peer_half_close(move |ctx| {
                told.fetch_add(1, Ordering::SeqCst);
                ctx.close_after_flush();
            })
            .on_close(move |conn| {
                let _ = close_tx.lock().unwrap().send(conn.close_reason().unwrap());
            })
    });
    let mut client = connect(server.addr());
    client.write_all(b"go").unwrap();
    let conn = conn_rx.recv_timeout(LIMIT).unwrap();
    wait_until("the reply to be queued", || queued(&server) > 0);
    client.shutdown(Shutdown::Write).unwrap();
    wait_until("the server to read the end of stream", || {
        peer_half_closed(&conn)
    });
    assert!(!conn.is_closed(), "the reply is still being written");
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), REPLY, "the whole reply before the end of stream");
    assert_eq!(closed.recv_timeout(LIMIT).unwrap(), CloseReason::Peer);
    assert_eq!(
        half_closes.load(Ordering::SeqCst),
        0,
        "on_peer_half_close ran after our own shutdown"
    );
    server.stop();
}

/// What the paused server saw.
#[derive(Default)]
struct Seen {
    conn: Option<TcpConnection>,
    bytes: Vec<u8>,
    connected_when_told: Vec<bool>,
    downs: usize,
}

struct Paused {
    server: TestServer,
    seen: Arc<Mutex<Seen>>,
    closed: mpsc::Receiver<CloseReason>,
}

/// A server whose connections pause reading when they come up; `greeting` bytes (past
/// the high-water mark of 64 KiB when large) are sent at once, so that a client that
/// does not read them holds the connection backpressured too. `panic_when_told`: the
/// paused half-close callback panics.
fn paused_server(edge: bool, greeting: usize, panic_when_told: bool) -> Paused {
    init_log();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (tx, closed) = mpsc::channel();
    let tx = Mutex::new(tx);
    let (s1, s2, s3) = (seen.clone(), seen.clone(), seen.clone());
    let server = TestServer::start(move || -> ServerBuilder {
        TcpServer::builder("round9-paused", localhost())
            .io_threads(1)
            .edge_triggered(edge)
            .water_marks(64 << 10, 32 << 10)
            .on_connection(move |conn| {
                let mut seen = s1.lock().unwrap();
                if conn.is_connected() {
                    conn.stop_reading().unwrap();
                    if greeting > 0 {
                        conn.send(vec![b'g'; greeting]).unwrap();
                    }
                    seen.conn = Some(conn.clone());
                } else {
                    seen.downs += 1;
                }
            })
            .on_message(move |_, input| {
                s2.lock().unwrap().bytes.extend_from_slice(input.peek());
                input.consume_all();
            })
            .on_peer_half_close_while_paused(move |ctx| {
                s3.lock()
                    .unwrap()
                    .connected_when_told
                    .push(ctx.connection().is_connected());
                assert!(!panic_when_told, "a paused half-close callback that panics");
            })
            .on_peer_half_close(|ctx| ctx.close_after_flush())
            .on_close(move |conn| {
                let _ = tx.lock().unwrap().send(conn.close_reason().unwrap());
            })
    });
    Paused {
        server,
        seen,
        closed,
    }
}

impl Paused {
    fn conn(&self) -> TcpConnection {
        wait_until("the server's connection", || {
            self.seen.lock().unwrap().conn.is_some()
        });
        self.seen.lock().unwrap().conn.clone().unwrap()
    }

    fn told(&self) -> usize {
        self.seen.lock().unwrap().connected_when_told.len()
    }
}

fn reset(client: std::net::TcpStream) {
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
}

/// Paused by the application (and, with `greeting`, by backpressure too): the peer's FIN
/// is told of, then its reset; the loop does not spin in between or after; resuming
/// delivers the request and closes with the reset's error, the "down" callback once.
fn told_of_fin_then_reset(edge: bool, greeting: usize) {
    let run = paused_server(edge, greeting, false);
    let mut client = connect(run.server.addr());
    let conn = run.conn();
    if greeting > 0 {
        wait_until("backpressure", || {
            run.server.stats().per_loop[0].backpressured == 1
        });
    }
    client.write_all(b"a request").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    wait_until("the first telling", || run.told() == 1);
    reset(client);
    wait_until("the second telling", || run.told() == 2);
    assert_eq!(run.seen.lock().unwrap().connected_when_told, [true, false]);
    assert_eq!(
        run.server.stats().per_loop[0].backpressured,
        0,
        "the reset dropped the output that held reading back"
    );
    // Parked: no event for it until reading resumes (a level-triggered registration
    // would report the hang-up on every wait).
    let before = conn.loop_handle().metrics().iterations;
    std::thread::sleep(Duration::from_millis(200));
    let spins = conn.loop_handle().metrics().iterations - before;
    assert!(spins < 20, "the loop woke {spins} times in 200 ms");
    assert!(run.closed.try_recv().is_err(), "closed while paused");
    conn.start_reading().unwrap();
    let reason = run.closed.recv_timeout(LIMIT).unwrap();
    assert!(util::closed_by_reset(&reason), "{reason:?}");
    let seen = run.seen.lock().unwrap();
    assert_eq!(seen.bytes, b"a request");
    assert_eq!(seen.connected_when_told.len(), 2, "told no more");
    assert_eq!(seen.downs, 1);
    drop(seen);
    run.server.stop();
}

#[test]
fn paused_told_of_fin_then_reset_edge() {
    told_of_fin_then_reset(true, 0);
}

#[test]
fn paused_told_of_fin_then_reset_level() {
    told_of_fin_then_reset(false, 0);
}

#[test]
fn paused_and_backpressured_told_of_fin_then_reset_edge() {
    told_of_fin_then_reset(true, 32 << 20);
}

#[test]
fn paused_and_backpressured_told_of_fin_then_reset_level() {
    told_of_fin_then_reset(false, 32 << 20);
}

/// A paused half-close callback that panics closes its connection (reason `Panic`, one
/// "down"), and the loop serves the next connection.
#[test]
fn a_panic_in_the_paused_half_close_callback_closes_once() {
    for edge in [true, false] {
        let run = paused_server(edge, 0, true);
        let mut client = connect(run.server.addr());
        run.conn();
        client.write_all(b"bye").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(run.closed.recv_timeout(LIMIT).unwrap(), CloseReason::Panic);
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest);
        run.seen.lock().unwrap().conn = None;
        let _next = connect(run.server.addr());
        run.conn();
        let seen = run.seen.lock().unwrap();
        assert_eq!((seen.downs, seen.connected_when_told.len()), (1, 1));
        assert!(seen.bytes.is_empty(), "nothing delivered after the close");
        drop(seen);
        run.server.stop();
    }
}
