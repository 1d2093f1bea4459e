//! A connection whose reading is paused is told when its peer finishes sending
//! (`on_peer_half_close_while_paused`), while the peer's last bytes stay unread: an
//! application that paused to compute a reply learns that its client left, and can give
//! up. Told once, in either trigger mode, for a FIN and for a hang-up; the loop does not
//! spin meanwhile; resuming still delivers every byte, then the end of the stream. Also for a
//! paused `TcpClient`.

mod util;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duo_net::{CloseReason, ServerBuilder, TcpConnection, TcpServer};
use duo_testkit::{wait_until, LIMIT};
use util::{connect, init_log, localhost, TestServer};

/// What the server saw of its one connection.
#[derive(Default)]
struct Seen {
    conn: Option<TcpConnection>,
    bytes: Vec<u8>,
    /// Calls of the paused half-close callback.
    told: usize,
    /// Whether the connection was still connected at each of those calls.
    connected_when_told: Vec<bool>,
    /// Calls of the ordinary half-close callback.
    half_closes: usize,
}

/// How the test server's connections start, and what the paused half-close callback does.
#[derive(Clone, Copy)]
struct Setup {
    edge: bool,
    /// Pause reading when the connection comes up.
    paused: bool,
    /// Shut our writing side at once, so that the peer's FIN makes a full hang-up.
    half_close: bool,
    /// The callback closes the connection.
    close_when_told: bool,
    /// Bytes sent when the connection comes up, past a high-water mark of 64 KiB: a
    /// client that does not read them pauses the connection by backpressure.
    greeting: usize,
}

const PAUSED: Setup = Setup {
    edge: true,
    paused: true,
    half_close: false,
    close_when_told: false,
    greeting: 0,
};

struct Run {
    server: TestServer,
    seen: Arc<Mutex<Seen>>,
    closed: mpsc::Receiver<CloseReason>,
}

fn start(setup: Setup) -> Run {
    init_log();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (tx, closed) = mpsc::channel();
    let tx = Mutex::new(tx);
    let (s1, s2, s3, s4) = (seen.clone(), seen.clone(), seen.clone(), seen.clone());
    let server = TestServer::start(move || -> ServerBuilder {
        TcpServer::builder("paused-hang-up", localhost())
            .io_threads(1)
            .edge_triggered(setup.edge)
            .water_marks(64 << 10, 32 << 10)
            .on_connection(move |conn| {
                if conn.is_connected() {
                    if setup.paused {
                        conn.stop_reading().unwrap();
                    }
                    if setup.greeting > 0 {
                        conn.send(vec![b'g'; setup.greeting]).unwrap();
                    }
                    if setup.half_close {
                        conn.shutdown().unwrap();
                    }
                    s1.lock().unwrap().conn = Some(conn.clone());
                }
            })
            .on_message(move |_, input| {
                s2.lock().unwrap().bytes.extend_from_slice(input.peek());
                input.consume_all();
            })
            .on_peer_half_close_while_paused(move |ctx| {
                let mut seen = s3.lock().unwrap();
                seen.told += 1;
                seen.connected_when_told
                    .push(ctx.connection().is_connected());
                drop(seen);
                assert!(ctx.is_reading_paused(), "told only while paused");
                if setup.close_when_told {
                    ctx.force_close();
                }
            })
            .on_peer_half_close(move |ctx| {
                s4.lock().unwrap().half_closes += 1;
                ctx.close_after_flush();
            })
            .on_close(move |conn| {
                let _ = tx.lock().unwrap().send(conn.close_reason().unwrap());
            })
    });
    Run {
        server,
        seen,
        closed,
    }
}

impl Run {
    fn conn(&self) -> TcpConnection {
        wait_until("the server's connection", || {
            self.seen.lock().unwrap().conn.is_some()
        });
        self.seen.lock().unwrap().conn.clone().unwrap()
    }

    fn told(&self) -> usize {
        self.seen.lock().unwrap().told
    }

    fn wait_told(&self) {
        wait_until("the paused half-close callback", || self.told() > 0);
    }

    /// Resumes reading and checks that every byte arrives, then the end of the stream
    /// (the ordinary half-close callback, which closes; or, after our own half-close, a
    /// close with reason `Peer`).
    fn resume_and_finish(self, conn: &TcpConnection, sent: &[u8], reason: CloseReason) {
        assert!(
            self.closed.try_recv().is_err(),
            "closed while paused: the peer's bytes were discarded"
        );
        conn.start_reading().unwrap();
        assert_eq!(self.closed.recv_timeout(LIMIT).unwrap(), reason);
        let seen = self.seen.lock().unwrap();
        assert_eq!(seen.bytes, sent, "every byte delivered after resuming");
        assert_eq!(seen.told, 1, "told once");
        let half_closes = usize::from(reason == CloseReason::User);
        assert_eq!(seen.half_closes, half_closes);
        drop(seen);
        self.server.stop();
    }
}

fn pattern() -> Vec<u8> {
    (0..100_000).map(|i| (i % 251) as u8).collect()
}

/// The peer's bytes and FIN while paused: told once, the loop stays quiet, and resuming
/// delivers everything.
fn told_once_then_resumed(edge: bool) {
    let run = start(Setup { edge, ..PAUSED });
    let mut client = connect(run.server.addr());
    let conn = run.conn();
    client.write_all(&pattern()).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    run.wait_told();
    // No more events for it: a level-triggered registration would report the half-close
    // on every wait if it were still asked for.
    let before = conn.loop_handle().metrics().iterations;
    std::thread::sleep(Duration::from_millis(200));
    let spins = conn.loop_handle().metrics().iterations - before;
    assert!(spins < 20, "the loop woke {spins} times in 200 ms");
    assert_eq!(run.seen.lock().unwrap().half_closes, 0);
    run.resume_and_finish(&conn, &pattern(), CloseReason::User);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
}

#[test]
fn a_paused_connection_is_told_of_the_peers_fin_once_edge() {
    told_once_then_resumed(true);
}

#[test]
fn a_paused_connection_is_told_of_the_peers_fin_once_level() {
    told_once_then_resumed(false);
}

/// After our own half-close the peer's FIN is a full hang-up (reported whatever the
/// interest): told too, once, and the last bytes still wait for resuming.
fn told_of_a_hang_up(edge: bool) {
    let run = start(Setup {
        edge,
        half_close: true,
        ..PAUSED
    });
    let mut client = connect(run.server.addr());
    let mut buf = [0u8; 16];
    assert_eq!(client.read(&mut buf).unwrap(), 0, "the server half-closes");
    let conn = run.conn();
    client.write_all(b"last words").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    run.wait_told();
    run.resume_and_finish(&conn, b"last words", CloseReason::Peer);
}

#[test]
fn a_paused_connection_is_told_of_a_hang_up_edge() {
    told_of_a_hang_up(true);
}

#[test]
fn a_paused_connection_is_told_of_a_hang_up_level() {
    told_of_a_hang_up(false);
}

/// Paused by backpressure (the client does not read what the server sends): told too.
/// Once the client reads everything, reading resumes by itself and the end of the stream
/// comes after the client's last bytes.
#[test]
fn a_connection_paused_by_backpressure_is_told_too() {
    const GREETING: usize = 32 << 20;
    let run = start(Setup {
        paused: false,
        greeting: GREETING,
        ..PAUSED
    });
    let mut client = connect(run.server.addr());
    run.conn();
    wait_until("backpressure", || {
        run.server.stats().per_loop[0].backpressured == 1
    });
    client.write_all(b"bye").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    run.wait_told();
    assert!(
        run.seen.lock().unwrap().bytes.is_empty(),
        "nothing read while paused"
    );
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), GREETING);
    assert_eq!(run.closed.recv_timeout(LIMIT).unwrap(), CloseReason::User);
    let seen = run.seen.lock().unwrap();
    assert_eq!((seen.told, seen.half_closes), (1, 1));
    assert_eq!(seen.bytes, b"bye");
    drop(seen);
    run.server.stop();
}

/// What the callback is for: a client that sent its request and left is closed at once,
/// not when an answer is finally written to nobody.
#[test]
fn the_callback_can_close_a_connection_whose_peer_left() {
    let run = start(Setup {
        close_when_told: true,
        ..PAUSED
    });
    let mut client = connect(run.server.addr());
    let conn = run.conn();
    client.write_all(b"a request").unwrap();
    drop(client);
    assert_eq!(run.closed.recv_timeout(LIMIT).unwrap(), CloseReason::User);
    assert!(!conn.is_connected());
    assert_eq!(run.told(), 1);
    assert!(run.seen.lock().unwrap().bytes.is_empty());
    run.server.stop();
}

/// A peer that half-closes while the connection is paused, and then resets it (killed
/// with unread data, say), is told of twice: the FIN says only that it finished sending
/// (it may still read the answer), the reset that it is gone. The application that waits
/// on the FIN's telling for a reset it never heard of used to keep the connection (HTTP:
/// until its response timeout).
#[test]
fn a_paused_connection_is_told_again_when_its_half_closed_peer_resets() {
    let run = start(PAUSED);
    let mut client = connect(run.server.addr());
    let conn = run.conn();
    client.write_all(b"a request").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    run.wait_told();
    assert!(conn.is_connected(), "a FIN alone leaves the peer reading");
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    wait_until("the second telling", || run.told() == 2);
    assert_eq!(
        run.seen.lock().unwrap().connected_when_told,
        [true, false],
        "the second telling sees the peer gone"
    );
    // Resuming still delivers the request, then the close with the reset's error (the
    // kernel says `EPIPE` for a reset that follows the peer's FIN, `ECONNRESET` before it).
    conn.start_reading().unwrap();
    let reason = run.closed.recv_timeout(LIMIT).unwrap();
    assert!(util::closed_by_reset(&reason), "{reason:?}");
    assert_eq!(run.seen.lock().unwrap().bytes, b"a request");
    assert_eq!(run.told(), 2, "told no more");
    run.server.stop();
}

/// A connection that is reading gets the ordinary end of stream, never this callback; nor
/// does one that was paused and resumed before the peer finished.
#[test]
fn a_reading_connection_is_not_told() {
    for paused in [false, true] {
        let run = start(Setup { paused, ..PAUSED });
        let mut client = connect(run.server.addr());
        let conn = run.conn();
        if paused {
            conn.start_reading().unwrap();
            // The resumption has been applied once a byte is delivered.
            client.write_all(b"x").unwrap();
            wait_until("the first byte", || {
                !run.seen.lock().unwrap().bytes.is_empty()
            });
        }
        client.write_all(b"bye").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(run.closed.recv_timeout(LIMIT).unwrap(), CloseReason::User);
        let seen = run.seen.lock().unwrap();
        assert_eq!(seen.told, 0);
        assert_eq!(seen.half_closes, 1);
        drop(seen);
        run.server.stop();
    }
}

/// A client's connection is told too (the callbacks of `TcpClient` are the server's).
#[test]
fn a_paused_client_is_told_when_its_server_finishes() {
    init_log();
    let listener = std::net::TcpListener::bind(localhost()).unwrap();
    let lp = duo_reactor::EventLoopThread::spawn("paused-client", None).unwrap();
    let (tx, events) = mpsc::channel::<&'static str>();
    let (up, told, msg) = (
        Mutex::new(tx.clone()),
        Mutex::new(tx.clone()),
        Mutex::new(tx),
    );
    let client = duo_net::TcpClient::builder("paused-client", listener.local_addr().unwrap())
        .on_connection(move |conn| {
            if conn.is_connected() {
                conn.stop_reading().unwrap();
                up.lock().unwrap().send("up").unwrap();
            }
        })
        .on_peer_half_close_while_paused(move |_| told.lock().unwrap().send("told").unwrap())
        .on_message(move |_, input| {
            assert_eq!(input.peek(), b"bye");
            input.consume_all();
            msg.lock().unwrap().send("bye").unwrap();
        })
        .connect(lp.handle());
    let (mut server_side, _) = listener.accept().unwrap();
    assert_eq!(events.recv_timeout(LIMIT).unwrap(), "up");
    server_side.write_all(b"bye").unwrap();
    server_side.shutdown(Shutdown::Write).unwrap();
    assert_eq!(events.recv_timeout(LIMIT).unwrap(), "told");
    client.connection().unwrap().start_reading().unwrap();
    assert_eq!(events.recv_timeout(LIMIT).unwrap(), "bye");
    client.stop();
}
