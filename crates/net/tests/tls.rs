//! TLS over loopback against real rustls peers: a blocking rustls client against a duo
//! server, a duo client against a plain rustls server, large transfers both ways with
//! backpressure, close_notify, and every way a handshake or a session can fail (each a
//! clear close with its reason, the server serving the next good client).
#![cfg(feature = "tls")]

mod util;

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use duo_net::tls::{self, rustls};
use duo_net::{
    ClientBuilder, CloseReason, EventLoop, ServerBuilder, TcpClient, TcpServer, TlsFailure,
};
use duo_testkit::{join_within, random_bytes, wait_until, LIMIT};

use rustls::{ClientConnection, ServerConnection, StreamOwned};
use util::pki::{pki, records, Pki};
use util::shared::{pause_reading_for, Seen};
use util::{localhost, TestServer};

/// A builder for a TLS server on loopback with one I/O thread.
fn tls_builder(name: &str, config: Arc<rustls::ServerConfig>) -> ServerBuilder {
    TcpServer::builder(name, localhost())
        .io_threads(1)
        .tls(config)
}

/// A builder for a duo TLS client of `addr` that trusts the test CA and expects the
/// server to be `server_name`.
fn tls_client(name: &str, addr: SocketAddr, pki: &Pki, server_name: &str) -> ClientBuilder {
    TcpClient::builder(name, addr).tls(pki.client_config(), tls::server_name(server_name).unwrap())
}

/// A TLS echo server that records its connections' ups and close reasons.
fn tls_echo(
    pki: &Pki,
    build: impl FnOnce(duo_net::ServerBuilder) -> duo_net::ServerBuilder + Send + 'static,
) -> (TestServer, Arc<Seen>) {
    let config = pki.server_config();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let server = TestServer::start(move || {
        let (s1, s2) = (s.clone(), s.clone());
        build(
            tls_builder("tls-echo", config)
                .on_connection(move |conn| s1.record(conn))
                .on_high_water_mark(move |_, _| s2.high_water.store(true, Ordering::SeqCst))
                .on_message(|ctx, input| {
                    assert!(ctx.tls_info().is_some());
                    ctx.send(input.peek());
                    input.consume_all();
                }),
        )
    });
    (server, seen)
}

/// A blocking rustls client connected to `addr`, verifying "localhost".
fn rustls_client(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: &str,
) -> StreamOwned<ClientConnection, TcpStream> {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(LIMIT)).unwrap();
    sock.set_write_timeout(Some(LIMIT)).unwrap();
    let conn = ClientConnection::new(config, tls::server_name(name).unwrap()).unwrap();
    StreamOwned::new(conn, sock)
}

/// Sends `msg` and expects exactly `msg` back.
fn echo_through(c: &mut (impl Read + Write), msg: &[u8]) {
    c.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

/// One echo through a fresh client (the server still serves), then a graceful stop.
fn good_echo_then_stop(server: TestServer, pki: &Pki) {
    let mut c = rustls_client(server.addr(), pki.client_config(), "localhost");
    echo_through(&mut c, b"still serving");
    drop(c);
    server.stop();
}

/// Waits for the server to count one connection closed as a TLS failure.
fn wait_one_tls_failure(server: &TestServer) {
    wait_until("the server closes it as a TLS failure", || {
        tls_closes(server) == 1
    });
}

/// Writes a byte and reads one through a client whose handshake is expected to fail;
/// returns how the first of these that failed failed.
fn first_exchange(c: &mut StreamOwned<ClientConnection, TcpStream>) -> io::Result<()> {
    c.write_all(b"x").and_then(|_| c.flush()).and_then(|_| {
        let mut b = [0u8; 1];
        c.read(&mut b).map(|_| ())
    })
}

/// Reads from a raw socket until the server closes it; true if it did within LIMIT.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::TimedOut,
        }
    }
}

/// A real ClientHello, as a rustls client sends it first.
fn client_hello(pki: &Pki) -> Vec<u8> {
    records(&mut pki.client_conn())
}

fn tls_closes(server: &TestServer) -> u64 {
    server.stats().closes().tls
}

#[test]
fn rustls_client_echoes_and_close_notify_ends_it() {
    let pki = pki();
    let (server, seen) = tls_echo(&pki, |b| b);
    let mut c = rustls_client(server.addr(), pki.client_config(), "localhost");
    echo_through(&mut c, b"hello over tls");
    assert_eq!(seen.up.load(Ordering::SeqCst), 1);
    // Our close_notify is the server's end of stream: it answers with its own and closes.
    c.conn.send_close_notify();
    c.flush().unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)
        .expect("a clean close_notify from the server");
    assert!(rest.is_empty());
    wait_until("the close is counted", || {
        seen.reasons.lock().unwrap().as_slice() == [CloseReason::Peer]
    });
    let stats = server.stats();
    assert!(
        stats.bytes_in() > 14 && stats.bytes_out() > 14,
        "ciphertext counted"
    );
    server.stop();
}

#[test]
fn half_close_with_close_notify_still_gets_late_replies() {
    let pki = pki();
    let (server, _seen) = tls_echo(&pki, |b| {
        b.on_peer_half_close(|ctx| {
            assert!(ctx.peer_half_closed());
            ctx.send(b" bye");
            ctx.close_after_flush();
        })
    });
    let mut c = rustls_client(server.addr(), pki.client_config(), "localhost");
    c.write_all(b"last words").unwrap();
    c.conn.send_close_notify();
    c.flush().unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last words bye");
    server.stop();
}

/// Pumps a non-blocking rustls client: sends `data` without reading until `paused` is set
/// (the server's output passed its high-water mark: the kernel's buffers both ways are
/// full) or everything is sent, then reads and writes until everything came back.
fn pump_echo(addr: SocketAddr, pki: &Pki, data: &[u8], paused: &AtomicBool, deadline: Instant) {
    let (mut sock, mut conn) = pki.handshaken(addr);
    sock.set_nonblocking(true).unwrap();
    let (mut sent, mut received) = (0, 0);
    let mut reading = false;
    let mut buf = vec![0u8; 64 << 10];
    while received < data.len() {
        assert!(
            Instant::now() < deadline,
            "sent {sent} got {received} of {}",
            data.len()
        );
        let mut progress = false;
        if sent < data.len() && !conn.wants_write() {
            let n = (data.len() - sent).min(16 << 10);
            sent += conn.writer().write(&data[sent..sent + n]).unwrap();
        }
        while conn.wants_write() {
            match conn.write_tls(&mut sock) {
                Ok(_) => progress = true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    reading = paused.load(Ordering::SeqCst);
                    break;
                }
                Err(e) => panic!("write: {e}"),
            }
        }
        if reading || sent == data.len() {
            match conn.read_tls(&mut sock) {
                Ok(0) => panic!("EOF after {received}"),
                Ok(_) => {
                    progress = true;
                    conn.process_new_packets().unwrap();
                    loop {
                        match conn.reader().read(&mut buf) {
                            Ok(n) if n > 0 => {
                                assert_eq!(buf[..n], data[received..received + n]);
                                received += n;
                            }
                            _ => break,
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        if !progress {
            thread::sleep(Duration::from_micros(200));
        }
    }
}

#[test]
fn large_transfer_from_a_rustls_client_with_backpressure() {
    let pki = pki();
    let (server, seen) = tls_echo(&pki, |b| b.water_marks(64 << 10, 16 << 10));
    // More than the kernel's loopback buffers hold both ways (up to about 10 MiB each).
    let data = random_bytes(7, 32 << 20);
    pump_echo(
        server.addr(),
        &pki,
        &data,
        &seen.high_water,
        Instant::now() + LIMIT * 3,
    );
    assert!(
        seen.high_water.load(Ordering::SeqCst),
        "the output passed the high-water mark"
    );
    server.stop();
}

/// A plain rustls echo server on a std listener, one connection: echoes until the
/// client's close_notify, then sends its own and closes.
fn rustls_echo_server(pki: &Pki) -> (SocketAddr, thread::JoinHandle<usize>) {
    let listener = TcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let config = pki.server_config();
    let t = thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(LIMIT)).unwrap();
        let mut s = StreamOwned::new(ServerConnection::new(config).unwrap(), sock);
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    s.write_all(&buf[..n]).unwrap();
                }
                Err(e) => panic!("rustls server read: {e}"),
            }
        }
        s.conn.send_close_notify();
        s.flush().unwrap();
        total
    });
    (addr, t)
}

#[test]
fn duo_client_against_a_rustls_server_large_transfer_and_close_notify() {
    let pki = pki();
    let (addr, peer) = rustls_echo_server(&pki);
    let data = Arc::new(random_bytes(11, 4 << 20));
    let mut lp = EventLoop::new().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let (closed_tx, closed_rx) = mpsc::channel();
    let (d, g) = (data.clone(), got.clone());
    let g2 = got.clone();
    let want = data.len();
    let client = tls_client("tls-client", addr, &pki, "localhost")
        .water_marks(64 << 10, 16 << 10)
        .on_connection(move |conn| {
            if conn.is_connected() {
                // Several sends, far past the high-water mark.
                for chunk in d.chunks(256 << 10) {
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
                ctx.shutdown(); // close_notify, then FIN
            }
        })
        .on_close(move |conn| {
            let _ = conn.loop_handle().queue_in_loop(|lp| lp.quit());
        })
        .connect(&lp.handle());
    let guard = lp.run_after(LIMIT * 2, |lp| lp.quit());
    lp.run().unwrap();
    lp.cancel(guard);
    assert_eq!(g2.lock().unwrap().len(), want, "everything echoed");
    assert!(*g2.lock().unwrap() == *data);
    assert_eq!(closed_rx.try_recv().unwrap(), Some(CloseReason::Peer));
    assert_eq!(join_within("rustls server", peer), want);
    drop(client);
}

#[test]
fn a_client_that_does_not_trust_the_certificate_fails_and_the_server_goes_on() {
    let pki = pki();
    let (server, seen) = tls_echo(&pki, |b| b);
    let other = self::pki(); // another CA
    let mut c = rustls_client(server.addr(), other.client_config(), "localhost");
    let err = first_exchange(&mut c);
    assert!(err.is_err(), "the client refuses the server's certificate");
    wait_one_tls_failure(&server);
    assert_eq!(seen.up.load(Ordering::SeqCst), 0, "never up");
    assert!(
        seen.reasons.lock().unwrap().is_empty(),
        "no callback for the failed one"
    );
    good_echo_then_stop(server, &pki);
}

#[test]
fn a_wrong_server_name_fails_the_handshake() {
    let pki = pki();
    let (server, seen) = tls_echo(&pki, |b| b);
    let mut c = rustls_client(server.addr(), pki.client_config(), "example.com");
    let err = first_exchange(&mut c);
    let err = err.expect_err("the name does not match");
    assert!(
        err.to_string().contains("NotValidForName") || err.to_string().contains("name"),
        "{err}"
    );
    wait_one_tls_failure(&server);
    assert_eq!(seen.up.load(Ordering::SeqCst), 0);
    good_echo_then_stop(server, &pki);
}

#[test]
fn plaintext_sent_to_the_tls_port_is_refused() {
    let pki = pki();
    let (server, seen) = tls_echo(&pki, |b| b);
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert!(closed_by_server(&mut s));
    wait_one_tls_failure(&server);
    assert_eq!(seen.up.load(Ordering::SeqCst), 0);
    good_echo_then_stop(server, &pki);
}

#[test]
fn a_truncated_handshake_is_closed() {
    let pki = pki();
    let (server, _seen) = tls_echo(&pki, |b| b);
    let hello = client_hello(&pki);
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert!(closed_by_server(&mut s));
    wait_one_tls_failure(&server);
    good_echo_then_stop(server, &pki);
}

#[test]
fn a_stalled_handshake_times_out() {
    let pki = pki();
    let timeout = Duration::from_millis(300);
    let (server, _seen) = tls_echo(&pki, move |b| b.tls_handshake_timeout(timeout));
    let hello = client_hello(&pki);
    // Before connecting: the server's timer starts when it registers the connection,
    // which may be before this thread runs again after `connect`.
    let started = Instant::now();
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    // We keep the connection open and say nothing more.
    assert!(closed_by_server(&mut s));
    assert!(
        started.elapsed() >= timeout,
        "closed by the timeout, not before"
    );
    wait_one_tls_failure(&server);
    good_echo_then_stop(server, &pki);
}

#[test]
fn a_peer_that_stops_mid_record_is_closed_as_truncated() {
    let pki = pki();
    let (server, seen) = tls_echo(&pki, |b| b);
    let (mut sock, mut conn) = pki.handshaken(server.addr());
    conn.writer().write_all(&[7u8; 1000]).unwrap();
    let record = records(&mut conn);
    sock.write_all(&record[..record.len() / 2]).unwrap();
    sock.shutdown(Shutdown::Write).unwrap();
    assert!(closed_by_server(&mut sock));
    seen.expect_close(CloseReason::Tls(TlsFailure::Truncated));
    good_echo_then_stop(server, &pki);
}

#[test]
fn a_garbled_record_after_the_handshake_is_a_protocol_error() {
    let pki = pki();
    let (server, seen) = tls_echo(&pki, |b| b);
    let (mut sock, mut conn) = pki.handshaken(server.addr());
    conn.writer().write_all(b"hello").unwrap();
    let mut record = records(&mut conn);
    let last = record.len() - 1;
    record[last] ^= 0xff; // the authentication tag no longer matches
    sock.write_all(&record).unwrap();
    assert!(closed_by_server(&mut sock));
    seen.expect_close(CloseReason::Tls(TlsFailure::Protocol));
    good_echo_then_stop(server, &pki);
}

#[test]
fn an_output_limit_discards_whole_messages_and_the_stream_stays_valid() {
    let pki = pki();
    let accepted = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (a, d) = (accepted.clone(), done.clone());
    let (server, _seen) = tls_echo(&pki, move |b| {
        b.output_limit(256 << 10, duo_net::OutputLimit::Discard)
            .on_message(move |ctx, input| {
                input.consume_all();
                // 12.5 MiB while the client reads nothing: more than the kernel's buffers
                // hold before the peer reads (a reader taking them as they come could
                // let every message through, and nothing would be tested).
                let msg = vec![b'x'; 64 << 10];
                for _ in 0..200 {
                    if ctx.send(&msg) {
                        a.fetch_add(msg.len(), Ordering::SeqCst);
                    }
                }
                ctx.shutdown(); // close_notify after the accepted messages
                d.store(true, Ordering::SeqCst);
            })
    });
    let mut c = rustls_client(server.addr(), pki.client_config(), "localhost");
    c.write_all(b"go").unwrap();
    wait_until("the 200 sends", || done.load(Ordering::SeqCst));
    let mut got = Vec::new();
    c.read_to_end(&mut got)
        .expect("every record decrypts, then close_notify");
    let accepted = accepted.load(Ordering::SeqCst);
    assert_eq!(got.len(), accepted);
    assert!(accepted < 200 * (64 << 10), "some messages were discarded");
    assert!(got.iter().all(|&b| b == b'x'));
    server.stop();
}

#[test]
fn a_duo_client_whose_handshake_fails_sees_no_callback() {
    let pki = pki();
    let (server, _seen) = tls_echo(&pki, |b| b);
    let mut lp = EventLoop::new().unwrap();
    let called = Arc::new(AtomicBool::new(false));
    let c = called.clone();
    let client = tls_client("tls-wrong-name", server.addr(), &pki, "example.com")
        .on_connection(move |_| c.store(true, Ordering::SeqCst))
        .connect(&lp.handle());
    spin_until(&mut lp, || client.stats().closes.tls != 0);
    assert_eq!(client.stats().closes.tls, 1, "closed as a TLS failure");
    assert!(!called.load(Ordering::SeqCst), "never up, so no callback");
    assert!(client.connection().is_none());
    drop(client);
    good_echo_then_stop(server, &pki);
}

/// A callback that consumes everything gets all of a transfer whose plaintext per read is
/// larger than `max_input` (TLS decrypts up to 64 KiB of ciphertext per read).
#[test]
fn max_input_below_one_read_still_serves_a_consuming_callback() {
    let pki = pki();
    let (server, seen) = tls_echo(&pki, |b| b.max_input(4096));
    let mut c = rustls_client(server.addr(), pki.client_config(), "localhost");
    let data = vec![b'a'; 32 << 10];
    c.write_all(&data).unwrap();
    c.flush().unwrap();
    let mut got = vec![0u8; data.len()];
    let r = c.read_exact(&mut got);
    let reasons = seen.reasons.lock().unwrap().clone();
    assert!(
        r.is_ok() && reasons.is_empty(),
        "read: {r:?}, reasons: {reasons:?}"
    );
    server.stop();
}

/// The plain-TCP twin of the test above.
#[test]
fn max_input_below_one_read_plain_tcp() {
    let server = TestServer::start(|| {
        TcpServer::builder("plain", localhost())
            .io_threads(1)
            .max_input(4096)
            .on_message(|ctx, input| {
                ctx.send(input.peek());
                input.consume_all();
            })
    });
    let mut c = TcpStream::connect(server.addr()).unwrap();
    c.set_read_timeout(Some(LIMIT)).unwrap();
    let data = vec![b'a'; 32 << 10];
    c.write_all(&data).unwrap();
    let mut got = vec![0u8; data.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(server.stats().closes().input_too_large, 0);
    server.stop();
}

/// A rustls server that starts its handshake only when told, and reports the plaintext
/// it received (until close_notify, EOF, error or 3 s of silence).
fn gated_rustls_server(
    pki: &Pki,
) -> (
    SocketAddr,
    mpsc::Sender<()>,
    mpsc::Receiver<(usize, String)>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let config = pki.server_config();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        if go_rx.recv().is_err() {
            return;
        }
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut s = StreamOwned::new(ServerConnection::new(config).unwrap(), sock);
        let mut n = 0;
        let mut buf = [0u8; 16384];
        let end = loop {
            match s.read(&mut buf) {
                Ok(0) => break "eof/close_notify".to_string(),
                Ok(k) => n += k,
                Err(e) => break format!("{e}"),
            }
        };
        let _ = done_tx.send((n, end));
    });
    (addr, go_tx, done_rx)
}

/// Runs `lp` for `ms` milliseconds.
fn spin(lp: &mut EventLoop, ms: u64) {
    let until = lp.run_after(Duration::from_millis(ms), |lp| lp.quit());
    lp.run().unwrap();
    lp.cancel(until);
}

/// Spins `lp` until `cond` or the deadline.
fn spin_until(lp: &mut EventLoop, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        spin(lp, 5);
    }
    true
}

/// A TLS client publishes its connection only once the handshake completed (as a plain
/// client publishes it only once connected); then a send larger than rustls'
/// pre-handshake buffer and a shutdown right after it arrive whole.
#[test]
fn a_tls_client_publishes_its_connection_once_up_and_nothing_sent_is_cut() {
    let pki = pki();
    let (addr, go, done) = gated_rustls_server(&pki);
    let mut lp = EventLoop::new().unwrap();
    let up = Arc::new(AtomicBool::new(false));
    let u = up.clone();
    let client = tls_client("publish", addr, &pki, "localhost")
        .on_connection(move |c| {
            if c.is_connected() {
                u.store(true, Ordering::SeqCst)
            }
        })
        .connect(&lp.handle());
    // The client hello went out: the connection is registered, its handshake under way.
    assert!(spin_until(&mut lp, || client.stats().bytes_out > 0));
    assert!(client.connection().is_none(), "no handle while handshaking");
    go.send(()).unwrap();
    assert!(spin_until(&mut lp, || up.load(Ordering::SeqCst)));
    let conn = client.connection().expect("up");
    assert!(conn.is_connected());
    assert!(conn.send(vec![b'z'; 100 << 10]).is_ok());
    assert!(conn.shutdown().is_ok());
    let mut result = None;
    assert!(spin_until(&mut lp, || {
        result = done.try_recv().ok();
        result.is_some()
    }));
    let (n, end) = result.unwrap();
    assert_eq!(n, 100 << 10, "server got {n} bytes, then {end}");
    assert_eq!(end, "eof/close_notify");
}

/// `disconnect` while the handshake is under way ends the connection (it never was up:
/// no callback), instead of sending close_notify into the handshake.
#[test]
fn disconnect_during_the_handshake_closes_without_callbacks() {
    let pki = pki();
    let (addr, go, done) = gated_rustls_server(&pki);
    let mut lp = EventLoop::new().unwrap();
    let called = Arc::new(AtomicBool::new(false));
    let c2 = called.clone();
    let client = tls_client("disconnect", addr, &pki, "localhost")
        .on_connection(move |_| c2.store(true, Ordering::SeqCst))
        .connect(&lp.handle());
    assert!(spin_until(&mut lp, || client.stats().bytes_out > 0));
    client.disconnect();
    assert!(spin_until(&mut lp, || client.stats().closes.total() > 0));
    assert!(client.connection().is_none());
    assert!(!called.load(Ordering::SeqCst), "never up, so no callback");
    go.send(()).unwrap();
    let (n, end) = done.recv_timeout(LIMIT).unwrap();
    assert_eq!(n, 0, "then {end}");
}

/// Data and close_notify in one read while the message callback pauses reading: when
/// reading resumes the peer's close_notify is acted on (half-close, our close_notify).
#[test]
fn close_notify_seen_while_the_callback_paused_reading_ends_the_connection() {
    let pki = pki();
    let config = pki.server_config();
    let server = TestServer::start(move || {
        tls_builder("pause", config).on_message(|ctx, input| {
            let hello = input.peek().ends_with(b"hello");
            ctx.send(input.peek());
            input.consume_all();
            if hello {
                pause_reading_for(ctx, Duration::from_millis(50));
            }
        })
    });
    let mut c = rustls_client(server.addr(), pki.client_config(), "localhost");
    c.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    c.read_exact(&mut one).unwrap();
    c.conn.writer().write_all(b"hello").unwrap();
    c.conn.send_close_notify();
    let wire = records(&mut c.conn);
    // One write, TCP left open: the server's close_notify must come by itself.
    c.sock.write_all(&wire).unwrap();
    c.sock.set_read_timeout(Some(LIMIT)).unwrap();
    let mut got = Vec::new();
    let r = c.read_to_end(&mut got);
    assert!(r.is_ok(), "{r:?}; got {:?}", String::from_utf8_lossy(&got));
    assert_eq!(got, b"hello");
    server.stop();
}

/// With a small `max_input`, a callback that pauses reading in every delivery (resumed
/// from a timer) still gets the whole stream, in order: the ciphertext and plaintext
/// not yet delivered wait for the resume.
#[test]
fn pausing_in_every_delivery_with_a_small_max_input_loses_nothing() {
    let pki = pki();
    let config = pki.server_config();
    let server = TestServer::start(move || {
        tls_builder("pause-small", config)
            .max_input(4096)
            .on_message(|ctx, input| {
                ctx.send(input.peek());
                input.consume_all();
                pause_reading_for(ctx, Duration::from_millis(1));
            })
    });
    let mut c = rustls_client(server.addr(), pki.client_config(), "localhost");
    let data = random_bytes(7, 48 << 10);
    c.write_all(&data).unwrap();
    c.flush().unwrap();
    let mut got = vec![0u8; data.len()];
    c.read_exact(&mut got).unwrap();
    assert!(got == data, "echo differs");
    assert_eq!(server.stats().closes().total(), 0);
    server.stop();
}
