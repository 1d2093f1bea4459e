//! Review round 10 of TLS connections: states the other TLS tests do not combine, against
//! real rustls peers over loopback with real threads. Each test here failed when the
//! review helper wrote it (its doc says how).
#![cfg(feature = "tls")]

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use duo_buffer::{BufPool, PoolConfig};
use duo_net::tls::{self, rustls};
use duo_net::{EventLoop, TcpClient, TcpConnection, TcpServer};
use duo_testkit::{join_within, LIMIT};
use rustls::ServerConnection;

use util::pki::{pki, records, Pki};
use util::{localhost, TestServer};

/// What the application saw of its connections: "up" and "down" callbacks (the
/// connection callback with `is_connected` true, then false) and close callbacks.
#[derive(Default)]
struct UpDown {
    up: AtomicUsize,
    down: AtomicUsize,
    closed: AtomicUsize,
    /// A "down" or close callback for a connection no "up" callback had seen.
    down_without_up: AtomicUsize,
}

impl UpDown {
    fn connection(&self, conn: &TcpConnection) {
        if conn.is_connected() {
            self.up.fetch_add(1, Ordering::SeqCst);
        } else {
            if self.up.load(Ordering::SeqCst) <= self.down.load(Ordering::SeqCst) {
                self.down_without_up.fetch_add(1, Ordering::SeqCst);
            }
            self.down.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn close(&self) {
        if self.up.load(Ordering::SeqCst) <= self.closed.load(Ordering::SeqCst) {
            self.down_without_up.fetch_add(1, Ordering::SeqCst);
        }
        self.closed.fetch_add(1, Ordering::SeqCst);
    }

    fn counts(&self) -> (usize, usize, usize, usize) {
        (
            self.up.load(Ordering::SeqCst),
            self.down.load(Ordering::SeqCst),
            self.closed.load(Ordering::SeqCst),
            self.down_without_up.load(Ordering::SeqCst),
        )
    }
}

/// A rustls client connected to `addr` whose `Finished` goes out in one write with
/// `data` (encrypted once the handshake completed), so that the server reads them
/// together.
fn handshake_with_data(pki: &Pki, addr: std::net::SocketAddr, data: &[u8]) -> TcpStream {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(LIMIT)).unwrap();
    sock.set_write_timeout(Some(LIMIT)).unwrap();
    let mut conn = pki.client_conn();
    sock.write_all(&records(&mut conn)).unwrap();
    while conn.is_handshaking() {
        assert!(conn.read_tls(&mut sock).unwrap() > 0, "the server hung up");
        conn.process_new_packets().unwrap();
    }
    // The handshake is over on this side: rustls encrypts at once (past its 64 KiB
    // buffer limit for plaintext written before), behind the Finished it holds.
    let mut wire = records(&mut conn);
    for chunk in data.chunks(16 << 10) {
        conn.writer().write_all(chunk).unwrap();
        wire.extend(records(&mut conn));
    }
    // The server may close while this is on its way: what matters is what it saw.
    let _ = sock.write_all(&wire);
    sock
}

/// The connection was marked up (`TlsState::up`) as soon as rustls finished the
/// handshake, before the plaintext of the same read was placed and the handshake's last
/// answer sent; when the buffer pool refused that plaintext (a capped pool), the
/// connection closed `OutOfMemory` with the "down" and close callbacks of a connection
/// no "up" callback had seen. Failed: up 0, down 1, close 1.
#[test]
fn a_pool_that_refuses_the_first_flights_data_shows_no_down_without_up() {
    let pki = pki();
    let config = pki.server_config();
    // Nothing but the 64 KiB spill area: the first block the input asks for is refused.
    let pool = BufPool::new(PoolConfig {
        memory_cap: Some(1),
        thread_cache_bytes: 0,
    });
    let seen = Arc::new(UpDown::default());
    let s = seen.clone();
    let server = TestServer::start(move || {
        let (s1, s2) = (s.clone(), s);
        TcpServer::builder("tls-capped", localhost())
            .io_threads(1)
            .tls(config)
            .buffer_pool(pool)
            .on_connection(move |c| s1.connection(c))
            .on_close(move |_| s2.close())
            .on_message(|_, input| input.consume_all())
    });
    // More plaintext than the spill area holds, in records after the client's Finished.
    let _sock = handshake_with_data(&pki, server.addr(), &vec![b'q'; 200 << 10]);
    let stats = server.wait_for_stats("the connection closed", |s| s.closed == 1);
    assert_eq!(stats.closes().out_of_memory, 1, "{stats:#?}");
    let (up, down, closed, without) = seen.counts();
    assert!(
        without == 0 && up == down && down == closed,
        "up {up}, down {down}, close {closed}, down without up {without}"
    );
    server.stop();
}

/// A hand-driven rustls server (one connection) that answers its TLS 1.2 client's
/// `Finished` with its own and `data` in one write, so that the client completes its
/// handshake in the read that brings the data; then it waits for the client to hang up.
fn rustls_server_sending_at_once(pki: &Pki, data: Vec<u8>) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let config = pki.server_config();
    let t = thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(LIMIT)).unwrap();
        sock.set_write_timeout(Some(LIMIT)).unwrap();
        let mut conn = ServerConnection::new(config).unwrap();
        let mut wire = Vec::new();
        while conn.is_handshaking() {
            while conn.wants_write() {
                conn.write_tls(&mut wire).unwrap();
            }
            sock.write_all(&std::mem::take(&mut wire)).unwrap();
            assert!(conn.read_tls(&mut sock).unwrap() > 0, "the client hung up");
            conn.process_new_packets().unwrap();
        }
        for chunk in data.chunks(16 << 10) {
            conn.writer().write_all(chunk).unwrap();
            while conn.wants_write() {
                conn.write_tls(&mut wire).unwrap();
            }
        }
        let _ = sock.write_all(&wire);
        // Until the client hangs up (or the read times out): what it saw is the test's.
        let mut buf = [0u8; 4096];
        while matches!(sock.read(&mut buf), Ok(n) if n > 0) {}
    });
    (addr, t)
}

/// The client side of the test above: a duo TLS client on a pool that refuses its first
/// block (TLS 1.2: the server's `Finished` is the handshake's last message) gets that
/// last flight with 200 KiB of data. Failed
/// as the server did: the "down" and close callbacks of a connection never seen up.
#[test]
fn a_client_whose_pool_refuses_the_first_flights_data_shows_no_down_without_up() {
    let pki = pki();
    let (addr, peer) = rustls_server_sending_at_once(&pki, vec![b'r'; 200 << 10]);
    let pool = BufPool::new(PoolConfig {
        memory_cap: Some(1),
        thread_cache_bytes: 0,
    });
    let mut lp = EventLoop::new().unwrap();
    let seen = Arc::new(UpDown::default());
    let failed = Arc::new(AtomicUsize::new(0));
    let (s1, s2, f) = (seen.clone(), seen.clone(), failed.clone());
    let quit = lp.handle();
    let client = TcpClient::builder("tls-capped-client", addr)
        .tls(pki.tls12_client(), tls::server_name("localhost").unwrap())
        .reconnect(false)
        .buffer_pool(pool)
        .on_connection(move |c| s1.connection(c))
        .on_message(|_, input| input.consume_all())
        .on_close(move |c| {
            s2.close();
            let _ = c.loop_handle().queue_in_loop(|lp| lp.quit());
        })
        .max_attempts(1)
        .on_connect_failed(move |_| {
            f.fetch_add(1, Ordering::SeqCst);
            let _ = quit.queue_in_loop(|lp| lp.quit());
        })
        .connect(&lp.handle());
    let guard = lp.run_after(LIMIT, |lp| lp.quit());
    lp.run().unwrap();
    lp.cancel(guard);
    client.stop();
    let (up, down, closed, without) = seen.counts();
    assert!(
        without == 0 && up == down && down == closed,
        "up {up}, down {down}, close {closed}, down without up {without}"
    );
    assert!(
        up + failed.load(Ordering::SeqCst) > 0,
        "the client neither came up nor failed"
    );
    drop(client);
    join_within("rustls server", peer);
}
