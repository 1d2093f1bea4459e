//! A connection whose reading is paused loses nothing the peer sent before it ended: not
//! after our own half-close and the peer's FIN (the kernel then reports a hang-up without
//! "readable", because readable is not asked for while paused), not after a reset, not in
//! either trigger mode. Resuming delivers every byte, then the end of the stream.

mod util;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duo_net::{CloseReason, TcpConnection, TcpServer};
use duo_testkit::{tcp_state, wait_until, TcpState, LIMIT};
use util::{connect, init_log, localhost, TestServer};

const SIZE: usize = 100_000;

/// What the server saw of its one connection.
#[derive(Default)]
struct Seen {
    conn: Option<TcpConnection>,
    bytes: Vec<u8>,
}

/// A server whose connections start paused (and, with `half_close`, shut down their
/// writing side at once); everything received is recorded, the close reason is sent on
/// `closed`.
fn paused_server(
    edge: bool,
    half_close: bool,
) -> (TestServer, Arc<Mutex<Seen>>, mpsc::Receiver<CloseReason>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (on_close, closed) = util::shared::close_reasons();
    let s1 = seen.clone();
    let s2 = seen.clone();
    let server = TestServer::start(move || {
        TcpServer::builder("paused", localhost())
            .io_threads(1)
            .edge_triggered(edge)
            .on_connection(move |conn| {
                if conn.is_connected() {
                    conn.stop_reading().unwrap();
                    if half_close {
                        conn.shutdown().unwrap();
                    }
                    s1.lock().unwrap().conn = Some(conn.clone());
                }
            })
            .on_message(move |_, input| {
                s2.lock().unwrap().bytes.extend_from_slice(input.peek());
                input.consume_all();
            })
            .on_close(on_close)
    });
    (server, seen, closed)
}

fn server_conn(seen: &Mutex<Seen>) -> TcpConnection {
    wait_until("the server's connection", || {
        seen.lock().unwrap().conn.is_some()
    });
    seen.lock().unwrap().conn.clone().unwrap()
}

fn pattern() -> Vec<u8> {
    (0..SIZE).map(|i| (i % 251) as u8).collect()
}

/// Our half-close, then the peer's 100 000 bytes and FIN while paused: the kernel reports
/// a hang-up with nothing "readable" (not asked for). Resuming must deliver everything.
fn half_closed_and_paused(edge: bool) {
    init_log();
    let (server, seen, closed) = paused_server(edge, true);
    let mut client = connect(server.addr());
    // Our side's FIN arrives first: the server's write side is shut.
    let mut buf = [0u8; 16];
    assert_eq!(client.read(&mut buf).unwrap(), 0, "the server half-closes");
    let conn = server_conn(&seen);
    let events = conn.loop_handle().metrics().io_events;
    client.write_all(&pattern()).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    // The hang-up has been dispatched: everything is in the server's receive queue.
    wait_until("the hang-up event", || {
        conn.loop_handle().metrics().io_events > events
    });
    assert!(
        closed.try_recv().is_err(),
        "closed while paused: the peer's bytes were discarded"
    );
    conn.start_reading().unwrap();
    let reason = closed.recv_timeout(LIMIT).expect("the connection closes");
    assert_eq!(
        seen.lock().unwrap().bytes,
        pattern(),
        "every byte delivered"
    );
    assert_eq!(reason, CloseReason::Peer);
    server.stop();
}

#[test]
fn paused_half_closed_connection_keeps_the_peers_last_bytes_edge() {
    half_closed_and_paused(true);
}

#[test]
fn paused_half_closed_connection_keeps_the_peers_last_bytes_level() {
    half_closed_and_paused(false);
}

/// A level-triggered connection parked on a hang-up must not make its loop spin (the
/// kernel reports a hang-up on every wait, whatever the interest).
#[test]
fn parked_hang_up_does_not_spin_the_loop_level() {
    init_log();
    let (server, seen, closed) = paused_server(false, true);
    let mut client = connect(server.addr());
    let mut buf = [0u8; 16];
    assert_eq!(client.read(&mut buf).unwrap(), 0);
    let conn = server_conn(&seen);
    let events = conn.loop_handle().metrics().io_events;
    client.write_all(b"last words").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    wait_until("the hang-up event", || {
        conn.loop_handle().metrics().io_events > events
    });
    let before = conn.loop_handle().metrics().iterations;
    // Not an event: the loop stays quiet (it would spin on a hang-up still asked for).
    std::thread::sleep(Duration::from_millis(200));
    let spins = conn.loop_handle().metrics().iterations - before;
    assert!(
        spins < 20,
        "the loop woke {spins} times in 200 ms while parked"
    );
    conn.start_reading().unwrap();
    assert_eq!(closed.recv_timeout(LIMIT).unwrap(), CloseReason::Peer);
    assert_eq!(seen.lock().unwrap().bytes, b"last words");
    server.stop();
}

/// Paused without our half-close: the peer's bytes and FIN wait in the kernel (no event is
/// reported); resuming delivers them, then the end of stream.
fn paused_then_peer_finishes(edge: bool) {
    init_log();
    let (server, seen, closed) = paused_server(edge, false);
    let mut client = connect(server.addr());
    let conn = server_conn(&seen);
    client.write_all(&pattern()).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let (port, srv) = (client.local_addr().unwrap().port(), server.addr().port());
    wait_until("the peer's bytes and FIN in the server's kernel", || {
        tcp_state(srv, port) == Some(TcpState::CloseWait)
    });
    // Not an event: nothing closes the paused connection meanwhile.
    assert!(closed.recv_timeout(Duration::from_millis(100)).is_err());
    conn.start_reading().unwrap();
    assert_eq!(closed.recv_timeout(LIMIT).unwrap(), CloseReason::Peer);
    assert_eq!(seen.lock().unwrap().bytes, pattern());
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    server.stop();
}

#[test]
fn paused_connection_keeps_the_peers_bytes_and_eof_edge() {
    paused_then_peer_finishes(true);
}

#[test]
fn paused_connection_keeps_the_peers_bytes_and_eof_level() {
    paused_then_peer_finishes(false);
}

/// The peer sends 100 000 bytes, then resets (the kernel keeps what it received): a paused
/// connection delivers them when resumed, then closes with the reset as its reason.
fn paused_then_reset(edge: bool) {
    init_log();
    let (server, seen, closed) = paused_server(edge, false);
    let client = connect(server.addr());
    let conn = server_conn(&seen);
    let events = conn.loop_handle().metrics().io_events;
    (&client).write_all(&pattern()).unwrap();
    // Wait until the server's kernel holds every byte, then reset.
    let sock = socket2::Socket::from(client);
    wait_until("the peer's bytes acknowledged", || unacked(&sock) == 0);
    sock.set_linger(Some(Duration::ZERO)).unwrap();
    drop(sock);
    wait_until("the reset event", || {
        conn.loop_handle().metrics().io_events > events
    });
    assert!(
        closed.try_recv().is_err(),
        "closed while paused: the peer's bytes were discarded"
    );
    conn.start_reading().unwrap();
    let reason = closed.recv_timeout(LIMIT).unwrap();
    assert_eq!(seen.lock().unwrap().bytes, pattern());
    assert!(
        matches!(
            reason,
            CloseReason::Error(std::io::ErrorKind::ConnectionReset)
        ),
        "{reason:?}"
    );
    server.stop();
}

/// Bytes the kernel still has to deliver to the peer (sent, not yet acknowledged).
fn unacked(sock: &socket2::Socket) -> usize {
    duo_sys::bytes_unacknowledged(sock.as_fd()).unwrap_or(usize::MAX)
}

#[test]
fn paused_connection_reset_by_the_peer_keeps_what_arrived_edge() {
    paused_then_reset(true);
}

#[test]
fn paused_connection_reset_by_the_peer_keeps_what_arrived_level() {
    paused_then_reset(false);
}
