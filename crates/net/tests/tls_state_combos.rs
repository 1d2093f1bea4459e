//! TLS connections in combinations of states no other test combines, against real rustls
//! peers over loopback: reading paused (backpressure or the application) while the peer
//! sends `close_notify` and then hangs up; our half-close while the peer still sends and
//! while our output is queued; a handshake cut short by the idle
//! timeout; an alert while our output is blocked; TLS 1.3 key updates in the middle of
//! large transfers both ways; a TLS client reconnecting after the server closed with and
//! without `close_notify`.
#![cfg(feature = "tls")]

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use duo_net::tls::{self, rustls};
use duo_net::{
    Backpressure, CloseReason, EventLoop, ServerBuilder, TcpClient, TcpServer, TlsFailure,
};
use duo_testkit::{join_within, random_bytes, wait_until, LIMIT};
use rustls::{ClientConnection, ServerConnection};

use util::pki::{pki, records, Pki};
use util::shared::{pause_reading_for, Seen};
use util::{localhost, TestServer};

/// The bytes of the big reply: a pattern the client can check.
fn big_reply(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A TLS server on one I/O thread: a message `big` is answered with `big` bytes of
/// [`big_reply`], anything else is echoed; `build` adds to it.
fn server(
    pki: &Pki,
    big: usize,
    build: impl FnOnce(ServerBuilder) -> ServerBuilder + Send + 'static,
) -> (TestServer, Arc<Seen>) {
    let config = pki.server_config();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let server = TestServer::start(move || {
        let (s1, s2) = (s.clone(), s);
        let reply = big_reply(big);
        build(
            TcpServer::builder("tls-combos", localhost())
                .io_threads(1)
                .tls(config)
                .on_connection(move |conn| s1.record(conn))
                .on_high_water_mark(move |_, _| s2.high_water.store(true, Ordering::SeqCst))
                .on_message(move |ctx, input| {
                    if input.peek() == b"big" {
                        ctx.send(&reply);
                    } else {
                        ctx.send(input.peek());
                    }
                    input.consume_all();
                }),
        )
    });
    (server, seen)
}

/// How the stream from the server ended, as a rustls client saw it.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// `close_notify`, then (if waited for) the TCP end of stream.
    CloseNotify,
    /// The TCP stream ended without `close_notify`.
    Truncated,
    /// An error (a reset, a TLS error).
    Error(String),
}

/// A rustls client driven by hand over a non-blocking socket.
struct Peer {
    sock: TcpStream,
    conn: ClientConnection,
    got: Vec<u8>,
    fin_sent: bool,
}

impl Peer {
    fn connect(addr: SocketAddr, pki: &Pki) -> Peer {
        Peer::connect_with(addr, pki.client_config())
    }

    /// A peer whose client has `config` (say, TLS 1.2 only).
    fn connect_with(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Peer {
        let mut sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(LIMIT)).unwrap();
        let mut conn = util::pki::client_conn(config);
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        sock.set_nonblocking(true).unwrap();
        // Everything written is kept until the socket takes it.
        conn.set_buffer_limit(None);
        Peer {
            sock,
            conn,
            got: Vec::new(),
            fin_sent: false,
        }
    }

    /// Encrypts `data` (sent by the next [`Peer::flush`]).
    fn queue(&mut self, data: &[u8]) {
        self.conn.writer().write_all(data).unwrap();
    }

    /// Writes what the socket takes now; true if everything queued went out.
    fn flush(&mut self) -> bool {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) => panic!("write: {e}"),
            }
        }
        true
    }

    /// Flushes until everything queued went out (the server reading it), within LIMIT.
    fn flush_all(&mut self) {
        let deadline = Instant::now() + LIMIT;
        while !self.flush() {
            assert!(Instant::now() < deadline, "the server does not read");
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// One non-blocking read: `Some` once the stream ended.
    fn read_once(&mut self) -> Option<Ending> {
        match self.conn.read_tls(&mut self.sock) {
            Ok(0) => return Some(Ending::Truncated),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
            Err(e) => return Some(Ending::Error(e.to_string())),
        }
        if let Err(e) = self.conn.process_new_packets() {
            return Some(Ending::Error(e.to_string()));
        }
        match self.conn.reader().read_to_end(&mut self.got) {
            Ok(_) => Some(Ending::CloseNotify),
            Err(e) if e.kind() == ErrorKind::WouldBlock => None,
            Err(e) => Some(Ending::Error(e.to_string())),
        }
    }

    /// Sends what is queued (then, with `fin`, half-closes the TCP stream) and reads
    /// until the server's stream ends; returns how.
    fn finish(&mut self, fin: bool) -> Ending {
        let deadline = Instant::now() + LIMIT;
        loop {
            assert!(
                Instant::now() < deadline,
                "the server did not end its stream within {LIMIT:?}; got {} bytes",
                self.got.len()
            );
            let all_out = self.flush();
            if all_out && fin && !self.fin_sent {
                self.sock.shutdown(Shutdown::Write).unwrap();
                self.fin_sent = true;
            }
            if let Some(end) = self.read_once() {
                return end;
            }
            thread::sleep(Duration::from_micros(200));
        }
    }

    /// Waits for the TCP end of stream after `close_notify` (nothing more may come).
    fn expect_eof(&mut self) {
        self.sock.set_nonblocking(false).unwrap();
        let mut b = [0u8; 1024];
        match self.sock.read(&mut b) {
            Ok(0) => {}
            Ok(n) => panic!("{n} bytes after close_notify"),
            Err(e) => assert!(
                e.kind() == ErrorKind::ConnectionReset,
                "no EOF after close_notify: {e}"
            ),
        }
    }
}

/// Big enough to pass the high-water mark with the kernel's buffers full.
const BIG: usize = 8 << 20;

/// Sends `big`, waits until the server's output is above its high-water mark (reading
/// paused by backpressure), then sends `extra` and `close_notify` (and, with `fin`, the
/// TCP FIN) while it is paused, and only then reads: the server must deliver the big
/// reply, the echo of `extra`, then its `close_notify`, and close with `Peer`.
fn paused_by_backpressure_then_close_notify(fin_before_reading: bool) {
    let pki = pki();
    let (server, seen) = server(&pki, BIG, |b| b.water_marks(64 << 10, 16 << 10));
    let mut peer = Peer::connect(server.addr(), &pki);
    peer.queue(b"big");
    peer.flush_all();
    wait_until("the server passes its high-water mark", || {
        seen.high_water.load(Ordering::SeqCst)
    });
    // Read nothing yet; the server's reading is paused.
    thread::sleep(Duration::from_millis(20));
    let extra = b"last words before close_notify";
    peer.queue(extra);
    peer.conn.send_close_notify();
    peer.flush_all();
    if fin_before_reading {
        peer.sock.shutdown(Shutdown::Write).unwrap();
        peer.fin_sent = true;
    }
    let end = peer.finish(true);
    assert_eq!(end, Ending::CloseNotify, "after {} bytes", peer.got.len());
    assert_eq!(peer.got.len(), BIG + extra.len());
    assert!(peer.got[..BIG] == big_reply(BIG)[..], "big reply differs");
    assert_eq!(&peer.got[BIG..], extra);
    peer.expect_eof();
    seen.expect_close(CloseReason::Peer);
    server.stop();
}

#[test]
fn backpressure_then_close_notify_then_fin_before_or_after_reading() {
    paused_by_backpressure_then_close_notify(true);
    paused_by_backpressure_then_close_notify(false);
}

/// The server half-closes (`shutdown`: its `close_notify`) with a big reply still queued
/// while the peer goes on sending: the reply arrives whole before the `close_notify`, and
/// what the peer sends after it reaches the message callback; the peer's `close_notify`
/// then ends the connection (`Peer`).
#[test]
fn our_close_notify_with_output_queued_while_the_peer_still_sends() {
    let pki = pki();
    let late = Arc::new(AtomicUsize::new(0));
    let l = late.clone();
    let reply = big_reply(BIG);
    let (server, seen) = server(&pki, 0, move |b| {
        // Reading goes on while the reply is queued.
        b.backpressure(Backpressure::Notify)
            .on_message(move |ctx, input| {
                if input.peek() == b"big" {
                    assert!(ctx.send(&reply));
                    ctx.shutdown();
                    assert!(!ctx.send(b"refused after shutdown"));
                } else {
                    l.fetch_add(input.len(), Ordering::SeqCst);
                }
                input.consume_all();
            })
    });
    let mut peer = Peer::connect(server.addr(), &pki);
    peer.queue(b"big");
    peer.flush_all();
    wait_until("the server half-closes", || {
        seen.high_water.load(Ordering::SeqCst)
    });
    // While the reply is queued (we read nothing yet), send more.
    let more = vec![b'm'; 256 << 10];
    peer.queue(&more);
    peer.flush_all();
    wait_until("the server gets what came after its shutdown", || {
        late.load(Ordering::SeqCst) == more.len()
    });
    // Read the reply and the server's close_notify; it has half-closed.
    let end = peer.finish(false);
    assert_eq!(end, Ending::CloseNotify, "after {} bytes", peer.got.len());
    assert!(peer.got == big_reply(BIG), "reply differs");
    // After its close_notify the server still reads.
    peer.queue(b"after your close_notify");
    peer.flush_all();
    wait_until("the server reads after its close_notify", || {
        late.load(Ordering::SeqCst) == more.len() + 23
    });
    assert!(seen.reasons().is_empty(), "{:?}", seen.reasons());
    peer.conn.send_close_notify();
    peer.flush_all();
    seen.expect_close(CloseReason::Peer);
    server.stop();
}

/// TLS 1.3 key updates the peer asks for (`refresh_traffic_keys`: a KeyUpdate that
/// requests ours) every 256 KiB of a large echo under backpressure: every byte comes back
/// in order, decrypted with the keys of its time, and the connection stays open.
#[test]
fn key_updates_from_the_peer_in_the_middle_of_a_large_echo() {
    let pki = pki();
    let (server, seen) = server(&pki, 0, |b| b.water_marks(64 << 10, 16 << 10));
    let mut peer = Peer::connect(server.addr(), &pki);
    assert_eq!(
        peer.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let data = random_bytes(9, 8 << 20);
    let deadline = Instant::now() + LIMIT;
    let mut sent = 0;
    let mut updates = 0;
    while peer.got.len() < data.len() {
        assert!(
            Instant::now() < deadline,
            "sent {sent}, got {} of {}",
            peer.got.len(),
            data.len()
        );
        if sent < data.len() && peer.flush() {
            let n = (data.len() - sent).min(64 << 10);
            peer.queue(&data[sent..sent + n]);
            sent += n;
            if sent % (256 << 10) == 0 {
                peer.conn.refresh_traffic_keys().unwrap();
                updates += 1;
            }
        }
        peer.flush();
        if let Some(end) = peer.read_once() {
            panic!("{end:?} after {} bytes", peer.got.len());
        }
        let at = peer.got.len().min(data.len());
        assert!(peer.got[..at] == data[..at], "echo differs");
    }
    assert!(updates >= 30);
    assert!(seen.reasons().is_empty(), "{:?}", seen.reasons());
    peer.conn.send_close_notify();
    assert_eq!(peer.finish(true), Ending::CloseNotify);
    seen.expect_close(CloseReason::Peer);
    server.stop();
}

/// A plain rustls echo server (one connection) that asks for a key update every
/// `every` bytes it echoes; ends at the client's `close_notify` with its own. Returns
/// the bytes echoed and the key updates sent.
fn rustls_server_updating_keys(
    pki: &Pki,
    every: usize,
) -> (SocketAddr, thread::JoinHandle<(usize, usize)>) {
    let listener = TcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let config = pki.server_config();
    let t = thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(LIMIT)).unwrap();
        sock.set_write_timeout(Some(LIMIT)).unwrap();
        let mut s = rustls::StreamOwned::new(ServerConnection::new(config).unwrap(), sock);
        let mut buf = vec![0u8; 64 << 10];
        let (mut total, mut updates, mut since) = (0, 0, 0);
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    s.write_all(&buf[..n]).unwrap();
                    since += n;
                    if since >= every {
                        since = 0;
                        s.conn.refresh_traffic_keys().unwrap();
                        updates += 1;
                    }
                }
                Err(e) => panic!("rustls server read: {e}"),
            }
        }
        s.conn.send_close_notify();
        s.flush().unwrap();
        (total, updates)
    });
    (addr, t)
}

/// A duo TLS client sends 4 MiB through a rustls server that asks for a key update
/// every 128 KiB it echoes: the client answers each (its own KeyUpdate before its next
/// record), gets every byte back in order, and ends with `close_notify` both ways.
#[test]
fn a_duo_client_through_key_updates_from_the_server() {
    let pki = pki();
    let (addr, peer) = rustls_server_updating_keys(&pki, 128 << 10);
    let data = Arc::new(random_bytes(13, 4 << 20));
    let mut lp = EventLoop::new().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let (closed_tx, closed_rx) = mpsc::channel();
    let (d, g) = (data.clone(), got.clone());
    let want = data.len();
    let client = TcpClient::builder("tls-key-update", addr)
        .tls(pki.client_config(), tls::server_name("localhost").unwrap())
        .water_marks(64 << 10, 16 << 10)
        .on_connection(move |conn| {
            if conn.is_connected() {
                for chunk in d.chunks(64 << 10) {
                    assert!(conn.send(chunk.to_vec()).is_ok());
                }
            } else {
                let _ = closed_tx.send(conn.close_reason());
            }
        })
        .on_message(move |ctx, input| {
            let mut g = g.lock().unwrap();
            g.extend_from_slice(input.peek());
            input.consume_all();
            if g.len() == want {
                ctx.shutdown();
            }
        })
        .on_close(|conn| {
            let _ = conn.loop_handle().queue_in_loop(|lp| lp.quit());
        })
        .connect(&lp.handle());
    let guard = lp.run_after(LIMIT, |lp| lp.quit());
    lp.run().unwrap();
    lp.cancel(guard);
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), want, "everything echoed");
    assert!(got == *data, "echo differs");
    assert_eq!(closed_rx.try_recv().unwrap(), Some(CloseReason::Peer));
    let (total, updates) = join_within("rustls server", peer);
    assert_eq!(total, want);
    assert!(updates >= 16, "{updates} key updates");
    drop(client);
}

/// The peer's rustls fails on a record of ours (a byte flipped on the way: bad record
/// MAC) and sends its fatal alert while our big reply is blocked on the full socket.
/// With reading going on (`Notify`), the alert closes the connection at once
/// (`Tls(Protocol)`); under `PauseReading` the peer's hang-up that follows does.
fn alert_while_our_output_is_blocked(notify: bool) {
    let pki = pki();
    let (server, seen) = server(&pki, BIG, move |b| {
        if notify {
            b.backpressure(Backpressure::Notify)
        } else {
            b.water_marks(64 << 10, 16 << 10)
        }
    });
    let mut peer = Peer::connect(server.addr(), &pki);
    peer.queue(b"big");
    peer.flush_all();
    wait_until("the server passes its high-water mark", || {
        seen.high_water.load(Ordering::SeqCst)
    });
    // The first bytes of the reply, one of them flipped.
    peer.sock.set_nonblocking(false).unwrap();
    let mut wire = [0u8; 200];
    peer.sock.read_exact(&mut wire).unwrap();
    wire[100] ^= 0x01;
    peer.conn.read_tls(&mut &wire[..]).unwrap();
    let err = peer.conn.process_new_packets().expect_err("bad record MAC");
    assert!(err.to_string().contains("decrypt"), "{err}");
    let alert = records(&mut peer.conn);
    assert!(!alert.is_empty(), "rustls queued its alert");
    peer.sock.write_all(&alert).unwrap();
    if notify {
        seen.expect_close(CloseReason::Tls(TlsFailure::Protocol));
        drop(peer);
    } else {
        // Reading is paused: the alert waits in the kernel until the peer hangs up.
        thread::sleep(Duration::from_millis(20));
        assert!(seen.reasons().is_empty());
        drop(peer);
        wait_until("the server closes", || !seen.reasons().is_empty());
        let reasons = seen.reasons();
        assert!(
            matches!(
                reasons.as_slice(),
                [CloseReason::Tls(TlsFailure::Protocol)]
                    | [CloseReason::Error(ErrorKind::ConnectionReset)]
            ),
            "{reasons:?}"
        );
    }
    assert_eq!(server.stats().active, 0);
    server.stop();
}

#[test]
fn an_alert_while_our_output_is_blocked_or_backpressured() {
    alert_while_our_output_is_blocked(true);
    alert_while_our_output_is_blocked(false);
}

/// A handshake that stalls (half a ClientHello) under an idle timeout shorter than the
/// handshake timeout: the idle timeout closes it (no callback: it never was up), and the
/// server serves the next client.
#[test]
fn the_idle_timeout_fires_during_the_handshake() {
    let pki = pki();
    let (server, seen) = server(&pki, 0, |b| {
        b.idle_timeout(Duration::from_millis(200))
            .tls_handshake_timeout(Duration::from_secs(30))
    });
    let hello = records(&mut pki.client_conn());
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut b = [0u8; 64];
    let r = s.read(&mut b);
    assert!(matches!(r, Ok(0)) || r.is_err(), "{r:?}");
    wait_until("the close is counted", || {
        server.stats().closes().total() == 1
    });
    assert_eq!(seen.up.load(Ordering::SeqCst), 0);
    assert!(
        seen.reasons().is_empty(),
        "no callback for a connection never up"
    );
    let mut peer = Peer::connect(server.addr(), &pki);
    peer.queue(b"hello");
    peer.conn.send_close_notify();
    assert_eq!(peer.finish(true), Ending::CloseNotify);
    assert_eq!(peer.got, b"hello");
    server.stop();
}

/// A plain rustls server that serves `n` connections one after the other: each gets its
/// handshake, one echoed message, then the end: with `close_notify` or a bare TCP close.
fn rustls_server_one_echo_each(
    pki: &Pki,
    n: usize,
    notify: bool,
) -> (SocketAddr, thread::JoinHandle<()>) {
    let listener = TcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let config = pki.server_config();
    let t = thread::spawn(move || {
        for _ in 0..n {
            let (sock, _) = listener.accept().unwrap();
            sock.set_read_timeout(Some(LIMIT)).unwrap();
            let mut s =
                rustls::StreamOwned::new(ServerConnection::new(config.clone()).unwrap(), sock);
            let mut buf = [0u8; 64];
            let k = s.read(&mut buf).unwrap();
            s.write_all(&buf[..k]).unwrap();
            if notify {
                s.conn.send_close_notify();
            }
            s.flush().unwrap();
            // Our FIN, then the client's close before ours: no reset.
            s.sock.shutdown(Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            let _ = s.sock.read_to_end(&mut rest);
        }
    });
    (addr, t)
}

/// A reconnecting TLS client whose server ends each connection after one echo, with
/// `close_notify` (`Peer`) or without (`Tls(Truncated)`): it reconnects each time, with
/// a fresh session, and each new connection works.
fn client_reconnects_after_the_server_closed(notify: bool) {
    let pki = pki();
    const ROUNDS: usize = 3;
    let (addr, peer) = rustls_server_one_echo_each(&pki, ROUNDS, notify);
    let mut lp = EventLoop::new().unwrap();
    let echoes = Arc::new(AtomicUsize::new(0));
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let (e, r) = (echoes.clone(), reasons.clone());
    let client = TcpClient::builder("tls-reconnect", addr)
        .tls(pki.client_config(), tls::server_name("localhost").unwrap())
        .reconnect(true)
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .on_connection(move |conn| {
            if conn.is_connected() {
                assert!(conn.send(&b"ping"[..]).is_ok());
            } else {
                let mut r = r.lock().unwrap();
                r.push(conn.close_reason().unwrap());
                if r.len() == ROUNDS {
                    let _ = conn.loop_handle().queue_in_loop(|lp| lp.quit());
                }
            }
        })
        .on_message(move |_, input| {
            if input.peek() == b"ping" {
                e.fetch_add(1, Ordering::SeqCst);
                input.consume_all();
            }
        })
        .connect(&lp.handle());
    let guard = lp.run_after(LIMIT, |lp| lp.quit());
    lp.run().unwrap();
    lp.cancel(guard);
    client.stop();
    let want = if notify {
        CloseReason::Peer
    } else {
        CloseReason::Tls(TlsFailure::Truncated)
    };
    assert_eq!(*reasons.lock().unwrap(), vec![want; ROUNDS]);
    assert_eq!(echoes.load(Ordering::SeqCst), ROUNDS);
    join_within("rustls server", peer);
}

#[test]
fn a_tls_client_reconnects_after_a_close_with_or_without_close_notify() {
    client_reconnects_after_the_server_closed(true);
    client_reconnects_after_the_server_closed(false);
}

/// How the peer ends its stream in [`matrix_case`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerEnd {
    /// `close_notify` and the FIN with the last data, before reading anything.
    NotifyAndFin,
    /// `close_notify` with the last data; the FIN only after our `close_notify` came.
    NotifyThenFinLater,
    /// The FIN without `close_notify`.
    FinOnly,
}

/// How the server's reading is paused in [`matrix_case`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    None,
    /// The message callback pauses in every delivery (a timer resumes it).
    Application,
    /// Small water marks: the echo passes the high-water mark.
    Backpressure,
}

/// One echo of 1 MiB under `pause`, edge- or level-triggered, ended by the peer as `end`
/// before it reads anything: the whole echo comes back, then our `close_notify`, and the
/// close reason says how the peer ended.
fn matrix_case(edge: bool, pause: Pause, end: PeerEnd, tls12: bool) {
    let pki = pki();
    let (server, seen) = server(&pki, 0, move |b| {
        let b = b.edge_triggered(edge).max_input(16 << 10);
        match pause {
            Pause::None => b,
            Pause::Backpressure => b.water_marks(32 << 10, 8 << 10),
            Pause::Application => b.on_message(|ctx, input| {
                ctx.send(input.peek());
                input.consume_all();
                pause_reading_for(ctx, Duration::from_millis(1));
            }),
        }
    });
    let what = format!("edge {edge}, {pause:?}, {end:?}, TLS 1.2 {tls12}");
    let config = if tls12 {
        pki.tls12_client()
    } else {
        pki.client_config()
    };
    let mut peer = Peer::connect_with(server.addr(), config);
    let version = if tls12 {
        rustls::ProtocolVersion::TLSv1_2
    } else {
        rustls::ProtocolVersion::TLSv1_3
    };
    assert_eq!(peer.conn.protocol_version(), Some(version));
    let data = random_bytes(21, 1 << 20);
    peer.queue(&data);
    if end != PeerEnd::FinOnly {
        peer.conn.send_close_notify();
    }
    let ending = peer.finish(end != PeerEnd::NotifyThenFinLater);
    assert_eq!(
        ending,
        Ending::CloseNotify,
        "{what}: after {} bytes",
        peer.got.len()
    );
    assert!(
        peer.got == data,
        "{what}: echo differs ({} bytes)",
        peer.got.len()
    );
    if end == PeerEnd::NotifyThenFinLater {
        peer.sock.shutdown(Shutdown::Write).unwrap();
    }
    peer.expect_eof();
    let want = match end {
        PeerEnd::FinOnly => CloseReason::Tls(TlsFailure::Truncated),
        _ => CloseReason::Peer,
    };
    wait_until("the server closes", || !seen.reasons().is_empty());
    assert_eq!(seen.reasons(), [want], "{what}");
    server.stop();
}

#[test]
fn matrix_of_pauses_and_peer_endings() {
    for tls12 in [false, true] {
        for edge in [true, false] {
            for pause in [Pause::None, Pause::Application, Pause::Backpressure] {
                for end in [
                    PeerEnd::NotifyAndFin,
                    PeerEnd::NotifyThenFinLater,
                    PeerEnd::FinOnly,
                ] {
                    matrix_case(edge, pause, end, tls12);
                }
            }
        }
    }
}

/// The server half-closes (its `close_notify` and FIN) and pauses reading; the peer then
/// sends more data, its `close_notify` and its FIN (a hang-up: both directions are done)
/// while the server is paused. When reading resumes the data is delivered and the close
/// is `Peer`; with `on_peer_half_close_while_paused` the application is told once.
fn shut_then_paused_then_peer_finishes(watch: bool) {
    let pki = pki();
    let late = Arc::new(Mutex::new(Vec::new()));
    let told = Arc::new(AtomicUsize::new(0));
    let (l, t) = (late.clone(), told.clone());
    let (server, seen) = server(&pki, 0, move |b| {
        let b = b.on_message(move |ctx, input| {
            if input.peek() == b"bye" {
                ctx.send(b"ok");
                ctx.shutdown();
                pause_reading_for(ctx, Duration::from_millis(200));
            } else {
                l.lock().unwrap().extend_from_slice(input.peek());
            }
            input.consume_all();
        });
        if watch {
            b.on_peer_half_close_while_paused(move |_| {
                t.fetch_add(1, Ordering::SeqCst);
            })
        } else {
            b
        }
    });
    let mut peer = Peer::connect(server.addr(), &pki);
    peer.queue(b"bye");
    assert_eq!(peer.finish(false), Ending::CloseNotify);
    assert_eq!(peer.got, b"ok");
    peer.expect_eof();
    peer.sock.set_nonblocking(true).unwrap();
    peer.queue(b"after both close_notify");
    peer.conn.send_close_notify();
    peer.flush_all();
    peer.sock.shutdown(Shutdown::Write).unwrap();
    seen.expect_close(CloseReason::Peer);
    assert_eq!(*late.lock().unwrap(), b"after both close_notify");
    if watch {
        assert_eq!(told.load(Ordering::SeqCst), 1);
    }
    server.stop();
}

#[test]
fn shut_then_paused_then_the_peer_finishes() {
    shut_then_paused_then_peer_finishes(false);
    shut_then_paused_then_peer_finishes(true);
}
