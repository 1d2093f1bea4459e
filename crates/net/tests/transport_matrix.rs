//! Transports crossed with connection states that no other test combines: TLS with
//! half-close (close_notify, bare FIN, reset mid-record), a stalled reader that hangs up,
//! closes from another thread, a stalled handshake at a graceful stop, and TLS on a loop
//! group (over TCP and over a Unix-domain socket); Unix-domain sockets with a half-close
//! and a large pending reply, a peer that hangs up while reading is paused, the socket
//! file's life cycle across graceful shutdown and restarts; UDP truncation in every receive
//! mode, a kernel-refused datagram inside a batch, ICMP errors under cross-thread sends,
//! and a stop while traffic flows.
//!
//! Every test checks what a user relies on: every byte sent before a graceful close
//! arrives, exactly one "down" and one close callback per connection that was up, and none
//! after them, a sensible close reason, no hang, and the server serving others.

mod util;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, UdpSocket as StdUdp};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
#[cfg(feature = "tls")]
use std::time::Duration;
use std::time::Instant;

use duo_net::{
    BufPool, CloseReason, Endpoint, PoolConfig, ServerBuilder, TcpConnection, TcpServer,
    UdpSendError, UdpSocket,
};
use duo_reactor::{EventLoopThread, LoopHandle};
use duo_testkit::{join_within, random_bytes, wait_until, LIMIT};
use util::{hold_loop, init_log, TempDir, TestServer};

// ---------------------------------------------------------------------------------------
// What the server saw: one log per connection.

/// The callbacks one connection got.
#[derive(Debug, Default, Clone)]
struct ConnLog {
    ups: u32,
    downs: u32,
    closes: u32,
    reason: Option<CloseReason>,
    /// Callbacks that ran after the connection's "down" call (or before its "up").
    late: Vec<&'static str>,
}

/// Every connection's callbacks, plus the bytes each delivered to the message callback.
#[derive(Default)]
struct Probe {
    conns: Mutex<HashMap<u64, ConnLog>>,
    /// Bytes delivered to the message callback, and how far the command parser got.
    input: Mutex<HashMap<u64, (Vec<u8>, usize)>>,
    /// The handle of every connection that came up, in order.
    handles: Mutex<Vec<TcpConnection>>,
    /// Some connection's output passed its high-water mark.
    high_water: AtomicBool,
    /// Some connection paused its reading on a `pause` command.
    paused: AtomicBool,
}

impl Probe {
    fn connection(&self, c: &TcpConnection) {
        let mut conns = self.conns.lock().unwrap();
        let log = conns.entry(c.id()).or_default();
        if c.is_connected() {
            if log.downs > 0 {
                log.late.push("up after down");
            }
            log.ups += 1;
            drop(conns);
            self.handles.lock().unwrap().push(c.clone());
        } else {
            log.downs += 1;
            log.reason = c.close_reason();
        }
    }

    fn closed(&self, c: &TcpConnection) {
        let mut conns = self.conns.lock().unwrap();
        let log = conns.entry(c.id()).or_default();
        if log.downs == 0 {
            log.late.push("close before down");
        }
        log.closes += 1;
    }

    /// Any other callback of connection `c`.
    fn event(&self, c: &TcpConnection, what: &'static str) {
        let mut conns = self.conns.lock().unwrap();
        let log = conns.entry(c.id()).or_default();
        if log.downs > 0 || log.ups == 0 {
            log.late.push(what);
        }
    }

    /// Connections whose close callback ran.
    fn closed_count(&self) -> usize {
        let conns = self.conns.lock().unwrap();
        conns.values().filter(|l| l.closes > 0).count()
    }

    fn wait_closed(&self, n: usize) {
        wait_until(&format!("{n} connections closed"), || {
            self.closed_count() >= n
        });
    }

    /// The close reasons, in connection order.
    fn reasons(&self) -> Vec<Option<CloseReason>> {
        let conns = self.conns.lock().unwrap();
        let mut ids: Vec<_> = conns.keys().copied().collect();
        ids.sort_unstable();
        ids.iter().map(|id| conns[id].reason).collect()
    }

    #[cfg(feature = "tls")]
    fn ups(&self) -> usize {
        let conns = self.conns.lock().unwrap();
        conns.values().map(|l| l.ups as usize).sum()
    }

    /// Every connection seen: up once, down once, closed once, nothing late.
    fn check(&self) {
        let conns = self.conns.lock().unwrap();
        for (id, log) in conns.iter() {
            assert!(
                log.ups == 1 && log.downs == 1 && log.closes == 1 && log.late.is_empty(),
                "connection #{id}: {log:?}"
            );
        }
    }

    /// The bytes connection `id` delivered.
    fn input_of(&self, id: u64) -> Vec<u8> {
        self.input
            .lock()
            .unwrap()
            .get(&id)
            .map(|(d, _)| d.clone())
            .unwrap_or_default()
    }

    fn handle(&self, i: usize) -> TcpConnection {
        wait_until("the connection is up", || {
            self.handles.lock().unwrap().len() > i
        });
        self.handles.lock().unwrap()[i].clone()
    }
}

/// The bytes of a `big N` reply.
fn big_reply(n: usize) -> Vec<u8> {
    random_bytes(0xB16, n)
}

/// A server that records everything in `probe` and answers line commands:
/// `big N` sends N bytes of [`big_reply`], `pause` stops reading (its handle is in the
/// probe), `echo X` sends `X\n` back; other lines are ignored.
fn probed(b: ServerBuilder, probe: &Arc<Probe>) -> ServerBuilder {
    let (p1, p2, p3, p4) = (probe.clone(), probe.clone(), probe.clone(), probe.clone());
    b.on_connection(move |c| p1.connection(c))
        .on_close(move |c| p2.closed(c))
        .on_high_water_mark(move |ctx, _| {
            p3.event(ctx.connection(), "high water");
            p3.high_water.store(true, Ordering::SeqCst);
        })
        .on_message(move |ctx, input| {
            let id = ctx.connection().id();
            p4.event(ctx.connection(), "message");
            let lines = {
                let mut all = p4.input.lock().unwrap();
                let (data, parsed) = all.entry(id).or_default();
                data.extend_from_slice(input.peek());
                take_lines(data, parsed)
            };
            input.consume_all();
            for line in lines {
                if let Some(n) = line.strip_prefix(b"big ") {
                    let n: usize = std::str::from_utf8(n).unwrap().parse().unwrap();
                    ctx.send(&big_reply(n));
                } else if line == b"pause" {
                    ctx.stop_reading();
                    p4.paused.store(true, Ordering::SeqCst);
                } else if let Some(x) = line.strip_prefix(b"echo ") {
                    ctx.send_parts(&[x, b"\n"]);
                }
            }
        })
}

/// The complete lines of `data` from `*parsed` on; moves `*parsed` past them.
fn take_lines(data: &[u8], parsed: &mut usize) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    while let Some(at) = data[*parsed..].iter().position(|&b| b == b'\n') {
        lines.push(data[*parsed..*parsed + at].to_vec());
        *parsed += at + 1;
    }
    lines
}

/// An abstract Unix-domain name unique to this process and call.
fn abstract_name(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("duo-tm-{}-{n}-{what}", std::process::id())
}

/// A blocking Unix-domain client of `at` (a path or an abstract name) whose reads and
/// writes fail after [`LIMIT`].
fn uds(at: &Endpoint) -> UnixStream {
    let s = match at {
        Endpoint::Unix(path) => UnixStream::connect(path),
        Endpoint::Abstract(name) => {
            UnixStream::connect_addr(&UnixAddr::from_abstract_name(name).unwrap())
        }
        other => panic!("not a Unix-domain endpoint: {other}"),
    }
    .unwrap_or_else(|e| panic!("connect to {at}: {e}"));
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.set_write_timeout(Some(LIMIT)).unwrap();
    s
}

/// Runs a no-op on `lp` twice in a row and waits for it: whatever the kernel reported to
/// that loop before this call has been dispatched when it returns.
fn loop_barrier(lp: &LoopHandle) {
    for _ in 0..2 {
        let (done, wait) = mpsc::channel();
        lp.queue_in_loop(move |_| {
            let _ = done.send(());
        })
        .unwrap();
        wait.recv_timeout(LIMIT).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// TLS

#[cfg(feature = "tls")]
mod tls_cases {
    use super::*;

    use std::net::TcpStream;
    use std::sync::OnceLock;

    use duo_net::tls::{self, rustls};
    use duo_net::{EventLoop, TlsFailure};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use rustls::{ClientConnection, StreamOwned};
    use util::localhost;
    use util::pki::{client_conn, records};

    /// A self-signed certificate for "localhost" and its key.
    struct Pki {
        cert: CertificateDer<'static>,
        key: Vec<u8>,
    }

    fn self_signed() -> Pki {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        Pki {
            cert: c.cert.der().clone(),
            key: c.key_pair.serialize_der(),
        }
    }

    fn pki() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(self_signed)
    }

    fn server_config() -> Arc<rustls::ServerConfig> {
        let p = pki();
        Arc::new(
            rustls::ServerConfig::builder_with_provider(tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![p.cert.clone()],
                    PrivateKeyDer::Pkcs8(p.key.clone().into()),
                )
                .unwrap(),
        )
    }

    fn client_config_trusting(cert: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.clone()).unwrap();
        tls::client_config(roots).unwrap()
    }

    fn client_config() -> Arc<rustls::ClientConfig> {
        client_config_trusting(&pki().cert)
    }

    /// A rustls client over `sock` with its handshake done.
    fn handshaken<S: Read + Write>(mut sock: S) -> StreamOwned<ClientConnection, S> {
        let mut conn = client_conn(client_config());
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).expect("TLS handshake");
        }
        StreamOwned::new(conn, sock)
    }

    fn tls_tcp(addr: SocketAddr) -> StreamOwned<ClientConnection, TcpStream> {
        handshaken(util::connect(addr))
    }

    /// Plaintext `data`, then (with `close_notify`) the client's close_notify, in one
    /// write of records.
    fn send_records<S: Read + Write>(
        c: &mut StreamOwned<ClientConnection, S>,
        data: &[u8],
        close_notify: bool,
    ) {
        c.conn.writer().write_all(data).unwrap();
        if close_notify {
            c.conn.send_close_notify();
        }
        let wire = records(&mut c.conn);
        c.sock.write_all(&wire).unwrap();
    }

    /// A TLS server with one I/O thread, probed (see [`probed`]).
    fn tls_server(
        name: &'static str,
        build: impl FnOnce(ServerBuilder) -> ServerBuilder + Send + 'static,
    ) -> (TestServer, Arc<Probe>) {
        let probe = Arc::new(Probe::default());
        let p = probe.clone();
        let server = TestServer::start(move || {
            build(probed(
                TcpServer::builder(name, localhost())
                    .io_threads(1)
                    .tls(server_config()),
                &p,
            ))
        });
        (server, probe)
    }

    /// One echo through a fresh TLS client: the server still serves.
    fn still_serves(addr: SocketAddr) {
        let mut c = tls_tcp(addr);
        c.write_all(b"echo still here\n").unwrap();
        let mut back = [0u8; 11];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"still here\n");
    }

    /// The request, the client's close_notify and its TCP FIN in one go: the server reads
    /// them together, its 4 MiB reply passes the high-water mark (reading pauses with the
    /// close_notify already consumed), and the whole reply still arrives, then the
    /// server's close_notify; the close is the peer's. Edge- and level-triggered.
    #[test]
    fn tls_request_close_notify_and_fin_together_get_the_whole_large_reply() {
        init_log();
        for edge in [true, false] {
            let (server, probe) = tls_server("tls-cn-fin", move |b| {
                b.edge_triggered(edge).water_marks(64 << 10, 16 << 10)
            });
            let mut c = tls_tcp(server.addr());
            send_records(&mut c, b"big 4194304\n", true);
            c.sock.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            let r = c.read_to_end(&mut got);
            assert!(
                r.is_ok(),
                "edge {edge}: {r:?} after {} bytes: no clean close_notify",
                got.len()
            );
            assert!(
                got == big_reply(4 << 20),
                "edge {edge}: the reply differs ({} bytes)",
                got.len()
            );
            probe.wait_closed(1);
            assert_eq!(probe.reasons(), [Some(CloseReason::Peer)], "edge {edge}");
            probe.check();
            still_serves(server.addr());
            server.stop();
        }
    }

    /// The request, then a bare TCP FIN (no close_notify): the reply is written in full
    /// before the close, which says `Tls(Truncated)`.
    #[test]
    fn tls_request_then_bare_fin_gets_its_reply_then_closes_as_truncated() {
        init_log();
        let (server, probe) = tls_server("tls-fin", |b| b.water_marks(64 << 10, 16 << 10));
        let mut c = tls_tcp(server.addr());
        send_records(&mut c, b"big 1048576\n", false);
        c.sock.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        let r = c.read_to_end(&mut got);
        assert!(r.is_ok(), "{r:?} after {} bytes", got.len());
        assert!(
            got == big_reply(1 << 20),
            "the reply differs ({} bytes)",
            got.len()
        );
        probe.wait_closed(1);
        assert_eq!(
            probe.reasons(),
            [Some(CloseReason::Tls(TlsFailure::Truncated))]
        );
        probe.check();
        still_serves(server.addr());
        server.stop();
    }

    /// Half a record, then a TCP reset: nothing of the record is delivered, one close
    /// that is not the peer's clean end, and the server serves the next client. (The
    /// exact reason is pinned by `tls_a_reset_closes_with_the_socket_error`.)
    #[test]
    fn tls_reset_mid_record_delivers_nothing_and_closes_once() {
        init_log();
        let (server, probe) = tls_server("tls-rst", |b| b);
        let mut c = tls_tcp(server.addr());
        c.conn.writer().write_all(b"echo never complete\n").unwrap();
        let wire = records(&mut c.conn);
        c.sock.write_all(&wire[..wire.len() / 2]).unwrap();
        duo_sys::socket2::SockRef::from(&c.sock)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c);
        probe.wait_closed(1);
        let reasons = probe.reasons();
        assert!(
            matches!(
                reasons[..],
                [Some(
                    CloseReason::Error(ErrorKind::ConnectionReset)
                        | CloseReason::Tls(TlsFailure::Truncated)
                )]
            ),
            "{reasons:?}"
        );
        let id = probe.handle(0).id();
        assert!(probe.input_of(id).is_empty(), "a partial record delivered");
        probe.check();
        still_serves(server.addr());
        server.stop();
    }

    /// A client asks for 8 MiB, reads a little while the server's output passes its
    /// high-water mark (reading paused), then leaves with unread data (a reset): one close,
    /// nothing after it, and the server serves the next client.
    #[test]
    fn tls_stalled_reader_that_hangs_up_mid_reply_is_closed_once() {
        init_log();
        let (server, probe) = tls_server("tls-leaver", |b| b.water_marks(64 << 10, 16 << 10));
        let mut c = tls_tcp(server.addr());
        c.write_all(b"big 8388608\n").unwrap();
        wait_until("the reply passes the high-water mark", || {
            probe.high_water.load(Ordering::SeqCst)
        });
        let mut some = vec![0u8; 64 << 10];
        c.read_exact(&mut some).unwrap();
        assert!(some[..] == big_reply(64 << 10)[..]);
        drop(c);
        probe.wait_closed(1);
        let reasons = probe.reasons();
        assert!(
            matches!(
                reasons[..],
                [Some(
                    CloseReason::Error(_) | CloseReason::Tls(TlsFailure::Truncated)
                )]
            ),
            "{reasons:?}"
        );
        probe.check();
        assert_eq!(server.stats().per_loop[0].output_queued, 0);
        still_serves(server.addr());
        server.stop();
    }

    /// A peer that resets its TCP connection is a socket error, as on plain TCP
    /// (`Error(ConnectionReset)` or, from a failed write, `BrokenPipe`), not a stream that
    /// ended without close_notify: once right after the handshake, half a record sent
    /// (the server's session tickets may meet the reset first), once while the server's
    /// reading is paused by backpressure.
    #[test]
    fn tls_a_reset_closes_with_the_socket_error() {
        init_log();
        let (server, probe) = tls_server("tls-reset-reason", |b| b.water_marks(64 << 10, 16 << 10));
        let reset = |c: StreamOwned<ClientConnection, TcpStream>| {
            duo_sys::socket2::SockRef::from(&c.sock)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(c);
        };
        for round in 0..10 {
            let mut c = tls_tcp(server.addr());
            c.conn.writer().write_all(b"echo never complete\n").unwrap();
            let wire = records(&mut c.conn);
            c.sock.write_all(&wire[..wire.len() / 2]).unwrap();
            reset(c);
            probe.wait_closed(round + 1);
        }
        let mut c = tls_tcp(server.addr());
        c.write_all(b"big 8388608\n").unwrap();
        wait_until("the reply passes the high-water mark", || {
            probe.high_water.load(Ordering::SeqCst)
        });
        reset(c);
        probe.wait_closed(11);
        let reasons = probe.reasons();
        server.stop();
        for (i, r) in reasons.iter().enumerate() {
            assert!(
                matches!(
                    r,
                    Some(CloseReason::Error(
                        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
                    ))
                ),
                "connection {i}: {r:?}; all: {reasons:?}"
            );
        }
    }

    /// From a thread that is not the connection's loop: sends, then `shutdown`. Every byte
    /// arrives before the server's close_notify; the client's close_notify then ends it as
    /// the peer's close.
    #[test]
    fn tls_sends_and_shutdown_from_another_thread_deliver_everything_then_close_notify() {
        init_log();
        let (server, probe) =
            tls_server("tls-remote-shutdown", |b| b.water_marks(64 << 10, 16 << 10));
        let mut c = tls_tcp(server.addr());
        let conn = probe.handle(0);
        let data = random_bytes(5, 3 << 20);
        let sender = {
            let data = data.clone();
            thread::spawn(move || {
                for chunk in data.chunks(256 << 10) {
                    conn.send(chunk.to_vec()).unwrap();
                }
                conn.shutdown().unwrap();
            })
        };
        let mut got = Vec::new();
        let r = c.read_to_end(&mut got);
        join_within("the sender", sender);
        assert!(r.is_ok(), "{r:?} after {} bytes", got.len());
        assert!(
            got == data,
            "{} of {} bytes, or different",
            got.len(),
            data.len()
        );
        // Our close_notify: both sides are done.
        c.conn.send_close_notify();
        c.flush().unwrap();
        probe.wait_closed(1);
        assert_eq!(probe.reasons(), [Some(CloseReason::Peer)]);
        probe.check();
        server.stop();
    }

    /// Mid-transfer, `force_close` from two threads at once and a `shutdown` from a third:
    /// one close (the application's), no close_notify (the peer sees a truncated stream of
    /// correct bytes), and the handle refuses everything afterwards.
    #[test]
    fn tls_force_close_from_other_threads_mid_transfer_closes_once() {
        init_log();
        let (server, probe) = tls_server("tls-remote-close", |b| b.water_marks(64 << 10, 16 << 10));
        let mut c = tls_tcp(server.addr());
        c.write_all(b"big 8388608\n").unwrap();
        wait_until("the reply passes the high-water mark", || {
            probe.high_water.load(Ordering::SeqCst)
        });
        let conn = probe.handle(0);
        let closers: Vec<_> = (0..3)
            .map(|i| {
                let conn = conn.clone();
                thread::spawn(move || {
                    let _ = if i == 2 {
                        conn.shutdown()
                    } else {
                        conn.force_close()
                    };
                })
            })
            .collect();
        for t in closers {
            join_within("a closer", t);
        }
        let mut got = Vec::new();
        let r = c.read_to_end(&mut got);
        let err = r.expect_err("no close_notify after a force_close");
        assert!(
            matches!(
                err.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ),
            "{err}"
        );
        assert!(got[..] == big_reply(8 << 20)[..got.len()], "wrong bytes");
        probe.wait_closed(1);
        let reasons = probe.reasons();
        // Whether the shutdown ran before the force_closes or after, they close it.
        assert!(
            matches!(reasons[..], [Some(CloseReason::User)]),
            "{reasons:?}"
        );
        probe.check();
        assert!(conn.is_closed());
        assert!(conn.send(&b"late"[..]).is_err());
        assert!(conn.force_close().is_err());
        assert!(conn.shutdown().is_err());
        still_serves(server.addr());
        server.stop();
    }

    /// A graceful shutdown while one client sits in the middle of its handshake (half a
    /// ClientHello, then nothing) and another is up and idle: the shutdown closes the
    /// half-open one (it never was up: no callback) instead of waiting for the handshake
    /// timeout, sends close_notify to the other, and ends within its grace period.
    #[test]
    fn tls_stalled_handshake_does_not_hold_up_a_graceful_shutdown() {
        init_log();
        let (mut server, probe) = tls_server("tls-stall-stop", |b| {
            b.tls_handshake_timeout(Duration::from_secs(60))
        });
        let addr = server.addr();
        let mut good = tls_tcp(addr);
        good.write_all(b"echo up\n").unwrap();
        let mut back = [0u8; 3];
        good.read_exact(&mut back).unwrap();
        let good = thread::spawn(move || {
            let mut rest = Vec::new();
            let r = good.read_to_end(&mut rest);
            good.conn.send_close_notify();
            let _ = good.flush();
            r.map(|_| rest.len())
        });
        let mut stalled = util::connect(addr);
        let hello = records(&mut client_conn(client_config()));
        stalled.write_all(&hello[..hello.len() / 2]).unwrap();
        wait_until("both accepted", || server.stats().accepted == 2);

        let grace = Duration::from_millis(300);
        let started = Instant::now();
        let (done_tx, done_rx) = mpsc::channel();
        server.handle().shutdown(grace, move |lp| {
            let _ = done_tx.send(());
            lp.quit();
        });
        let done = done_rx.recv_timeout(grace + Duration::from_secs(5));
        let waited = started.elapsed();
        if done.is_err() {
            // Let the server end (the stalled client leaves), then fail.
            drop(stalled);
            server.join_within(LIMIT);
            panic!("the shutdown did not complete in {waited:?} with a grace of {grace:?}");
        }
        server.join_within(LIMIT);
        let mut b = [0u8; 64];
        stalled.set_read_timeout(Some(LIMIT)).unwrap();
        assert!(
            matches!(stalled.read(&mut b), Ok(0) | Err(_)),
            "the stalled connection was closed"
        );
        assert_eq!(join_within("the good client", good).unwrap(), 0);
        assert_eq!(probe.ups(), 1, "the stalled one never was up");
    }

    /// `TcpServer::stop` on a server without I/O threads, while a client is in the middle
    /// of its handshake, with the application's main loop running on afterwards: the
    /// connection of the stopped server must end; it must not finish its handshake and
    /// reach the callbacks later.
    #[test]
    fn tls_server_stop_ends_a_main_loop_connection_in_its_handshake() {
        init_log();
        let probe = Arc::new(Probe::default());
        let mut lp = EventLoop::new().unwrap();
        let server = probed(
            TcpServer::builder("tls-stop-main", localhost())
                .tls(server_config())
                .tls_handshake_timeout(LIMIT * 3),
            &probe,
        )
        .start(&mut lp)
        .unwrap();
        let addr = server.local_addr();
        let (half_tx, half_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let client = thread::spawn(move || -> std::io::Result<Vec<u8>> {
            let mut sock = util::connect(addr);
            let mut conn = client_conn(client_config());
            let hello = records(&mut conn);
            sock.write_all(&hello[..hello.len() / 2])?;
            half_tx.send(()).unwrap();
            go_rx.recv_timeout(LIMIT).unwrap();
            sock.write_all(&hello[hello.len() / 2..])?;
            while conn.is_handshaking() {
                conn.complete_io(&mut sock)?;
            }
            let mut c = StreamOwned::new(conn, sock);
            c.write_all(b"echo after stop\n")?;
            let mut back = vec![0u8; 11];
            c.read_exact(&mut back)?;
            Ok(back)
        });
        half_rx.recv_timeout(LIMIT).unwrap();
        let stats = server.clone_handle();
        assert!(spin_until(&mut lp, || stats.stats().accepted == 1));
        server.stop(&mut lp);
        go_tx.send(()).unwrap();
        // The application's loop goes on serving whatever else it serves.
        assert!(spin_until(&mut lp, || client.is_finished()));
        let result = client.join().unwrap();
        let ups = probe.ups();
        drop(lp);
        assert_eq!(
            ups, 0,
            "a callback ran for a connection of a stopped server"
        );
        assert!(
            result.is_err(),
            "the stopped server's connection finished its handshake: {result:?}"
        );
    }

    /// Runs `lp` in 5 ms steps until `cond` holds or [`LIMIT`] passes.
    fn spin_until(lp: &mut EventLoop, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + LIMIT;
        while !cond() {
            if Instant::now() >= deadline {
                return false;
            }
            let t = lp.run_after(Duration::from_millis(5), |lp| lp.quit());
            lp.run().unwrap();
            lp.cancel(t);
        }
        true
    }

    /// TLS on 8 loops shared by 2 I/O threads: 16 clients from 4 threads echo and end with
    /// close_notify (the peer's close), 2 leave without it (truncated), 2 do not trust the
    /// certificate and 1 never says anything (handshake failures and a timeout: no
    /// callbacks), and 3 still open at a graceful shutdown get close_notify and answer it.
    /// Every connection that was up sees one "down" and one close callback.
    #[test]
    fn tls_on_a_loop_group_serves_every_kind_of_client_with_one_close_each() {
        init_log();
        let probe = Arc::new(Probe::default());
        let p = probe.clone();
        let mut server = TestServer::start(move || {
            probed(
                TcpServer::builder("tls-group", localhost())
                    .io_threads(2)
                    .loops(8)
                    .tls(server_config())
                    .tls_handshake_timeout(Duration::from_secs(2)),
                &p,
            )
        });
        let addr = server.addr();
        let drivers: Vec<_> = (0..4)
            .map(|d| {
                thread::spawn(move || {
                    let mut clients: Vec<_> = (0..4).map(|_| tls_tcp(addr)).collect();
                    for round in 0..3 {
                        for (i, c) in clients.iter_mut().enumerate() {
                            let msg = format!("echo d{d} c{i} r{round}\n");
                            c.write_all(msg.as_bytes()).unwrap();
                            let mut back = vec![0u8; msg.len() - 5];
                            c.read_exact(&mut back).unwrap();
                            assert_eq!(back, msg.as_bytes()[5..]);
                        }
                    }
                    for mut c in clients {
                        c.conn.send_close_notify();
                        c.flush().unwrap();
                        let mut rest = Vec::new();
                        c.read_to_end(&mut rest).expect("the server's close_notify");
                        assert!(rest.is_empty());
                    }
                })
            })
            .collect();
        // Two that leave without close_notify.
        for _ in 0..2 {
            let mut c = tls_tcp(addr);
            c.write_all(b"echo bye\n").unwrap();
            let mut back = [0u8; 4];
            c.read_exact(&mut back).unwrap();
            c.sock.shutdown(Shutdown::Both).unwrap();
        }
        // Two that refuse the certificate.
        let stranger = self_signed();
        for _ in 0..2 {
            let mut sock = util::connect(addr);
            let mut conn = client_conn(client_config_trusting(&stranger.cert));
            let mut failed = false;
            while conn.is_handshaking() {
                if conn.complete_io(&mut sock).is_err() {
                    failed = true;
                    break;
                }
            }
            assert!(failed, "a client that does not trust the certificate");
        }
        // One that says nothing (the handshake timeout closes it).
        let mut silent = util::connect(addr);
        for t in drivers {
            join_within("a TLS driver", t);
        }
        let mut b = [0u8; 1];
        assert!(
            matches!(silent.read(&mut b), Ok(0) | Err(_)),
            "closed by the handshake timeout"
        );
        wait_until("the five TLS failures counted", || {
            server.stats().closes().tls == 5
        });
        // Three still open at a graceful shutdown.
        let open: Vec<_> = (0..3).map(|_| tls_tcp(addr)).collect();
        wait_until("24 accepted", || server.stats().accepted == 24);
        // Up on the server's side too (a client is done with its handshake a moment
        // before the server has read its last flight).
        wait_until("21 up", || probe.ups() == 21);
        let answer: Vec<_> = open
            .into_iter()
            .map(|mut c| {
                thread::spawn(move || {
                    let mut rest = Vec::new();
                    c.read_to_end(&mut rest).expect("close_notify at shutdown");
                    c.conn.send_close_notify();
                    c.flush().unwrap();
                })
            })
            .collect();
        let took = server.shutdown_and_join(LIMIT);
        for t in answer {
            join_within("a client answering close_notify", t);
        }
        assert!(
            took < LIMIT,
            "the shutdown waited for its deadline: {took:?}"
        );
        let reasons = probe.reasons();
        let count = |r: CloseReason| reasons.iter().filter(|x| **x == Some(r)).count();
        assert_eq!(count(CloseReason::Peer), 19, "{reasons:?}");
        assert_eq!(
            count(CloseReason::Tls(TlsFailure::Truncated)),
            2,
            "{reasons:?}"
        );
        assert_eq!(reasons.len(), 21);
        probe.check();
    }

    /// TLS over a Unix-domain socket on 8 loops shared by 2 I/O threads: the handshake,
    /// echoes, close_notify both ways, the peer's credentials on every connection, and the
    /// socket file removed at stop.
    #[test]
    fn tls_over_a_unix_socket_on_a_loop_group_with_peer_credentials() {
        init_log();
        let dir = TempDir::new("tls-uds");
        let path = dir.join("tls.sock");
        let at = Endpoint::unix(&path).unwrap();
        let probe = Arc::new(Probe::default());
        let creds = Arc::new(Mutex::new(Vec::new()));
        let (p, cr, at2) = (probe.clone(), creds.clone(), at.clone());
        let server = TestServer::start(move || {
            probed(
                TcpServer::builder("tls-uds", at2)
                    .io_threads(2)
                    .loops(8)
                    .tls(server_config()),
                &p,
            )
            .on_write_complete(move |ctx| {
                let c = ctx.connection();
                cr.lock().unwrap().push((
                    c.id(),
                    c.peer_credentials(),
                    c.is_unix(),
                    ctx.tls_info().is_some(),
                ));
            })
        });
        let drivers: Vec<_> = (0..2)
            .map(|d| {
                let at = at.clone();
                thread::spawn(move || {
                    for i in 0..3 {
                        let mut c = handshaken(uds(&at));
                        let msg = format!("echo uds d{d} c{i}\n");
                        c.write_all(msg.as_bytes()).unwrap();
                        let mut back = vec![0u8; msg.len() - 5];
                        c.read_exact(&mut back).unwrap();
                        assert_eq!(back, msg.as_bytes()[5..]);
                        c.conn.send_close_notify();
                        c.flush().unwrap();
                        let mut rest = Vec::new();
                        c.read_to_end(&mut rest).expect("the server's close_notify");
                    }
                })
            })
            .collect();
        for t in drivers {
            join_within("a driver", t);
        }
        probe.wait_closed(6);
        assert_eq!(probe.reasons(), vec![Some(CloseReason::Peer); 6]);
        probe.check();
        let me = duo_sys::own_credentials();
        let creds = creds.lock().unwrap().clone();
        assert!(creds.len() >= 6, "{creds:?}");
        for (id, cred, unix, tls) in creds {
            assert_eq!(
                (cred, unix, tls),
                (Some(me), true, true),
                "connection #{id}"
            );
        }
        server.stop();
        assert!(!path.exists(), "the socket file goes with the server");
    }

    /// A TLS connection whose message callback pauses reading; the peer then sends more
    /// records and close_notify and hangs up (both directions) while paused. Resumed from
    /// another thread, the connection delivers every byte, then closes as the peer's.
    /// Edge- and level-triggered.
    #[test]
    fn tls_paused_reader_whose_peer_hangs_up_delivers_everything_on_resume() {
        init_log();
        for edge in [true, false] {
            let (server, probe) = tls_server("tls-paused-hup", move |b| b.edge_triggered(edge));
            let mut c = tls_tcp(server.addr());
            // An echo first: the client has read everything the server sent (its session
            // tickets too), so its close is a FIN, not a reset.
            c.write_all(b"echo hi\n").unwrap();
            let mut back = [0u8; 3];
            c.read_exact(&mut back).unwrap();
            c.write_all(b"pause\n").unwrap();
            wait_until("reading paused", || probe.paused.load(Ordering::SeqCst));
            let conn = probe.handle(0);
            let tail = vec![b'z'; 40_000];
            send_records(&mut c, &tail, true);
            drop(c);
            loop_barrier(conn.loop_handle());
            assert!(
                !conn.is_closed(),
                "edge {edge}: closed while paused: {:?}",
                conn.close_reason()
            );
            conn.start_reading().unwrap();
            probe.wait_closed(1);
            let mut want = b"echo hi\npause\n".to_vec();
            want.extend_from_slice(&tail);
            let got = probe.input_of(conn.id());
            assert!(
                got == want,
                "edge {edge}: {} of {} bytes delivered",
                got.len(),
                want.len()
            );
            assert_eq!(probe.reasons(), [Some(CloseReason::Peer)], "edge {edge}");
            probe.check();
            server.stop();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Unix-domain sockets

/// A probed server on a Unix-domain endpoint.
fn uds_server(
    name: &'static str,
    at: &Endpoint,
    build: impl FnOnce(ServerBuilder) -> ServerBuilder + Send + 'static,
) -> (TestServer, Arc<Probe>) {
    let probe = Arc::new(Probe::default());
    let (p, at) = (probe.clone(), at.clone());
    let server = TestServer::start(move || build(probed(TcpServer::builder(name, at), &p)));
    (server, probe)
}

/// Over a socket path and over an abstract name: a request, then the client's
/// half-close at once; the 4 MiB reply passes the high-water mark while the client reads
/// nothing; then every byte arrives, then end of stream (not a reset), and the close is
/// the peer's.
#[test]
fn unix_half_close_with_a_large_pending_reply_delivers_every_byte_then_eof() {
    init_log();
    let dir = TempDir::new("half");
    let endpoints = [
        Endpoint::unix(dir.join("half.sock")).unwrap(),
        Endpoint::abstract_name(abstract_name("half")).unwrap(),
    ];
    for at in endpoints {
        let (server, probe) = uds_server("uds-half", &at, |b| {
            b.io_threads(1).water_marks(64 << 10, 16 << 10)
        });
        let mut c = uds(&at);
        c.write_all(b"big 4194304\n").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        wait_until("the reply passes the high-water mark", || {
            probe.high_water.load(Ordering::SeqCst)
        });
        let mut got = Vec::new();
        c.read_to_end(&mut got)
            .unwrap_or_else(|e| panic!("{at}: {e} after {} bytes", got.len()));
        assert!(
            got == big_reply(4 << 20),
            "{at}: {} bytes, or different",
            got.len()
        );
        probe.wait_closed(1);
        assert_eq!(probe.reasons(), [Some(CloseReason::Peer)], "{at}");
        probe.check();
        server.stop();
    }
}

/// The peer hangs up while the server has reading paused: once cleanly, once with a
/// reply of the server's unread (the kernel then reports a reset). Resumed from another
/// thread, the connection delivers the peer's last bytes, then closes with the matching
/// reason; nothing before.
#[test]
fn unix_peer_hang_up_while_paused_keeps_its_last_bytes() {
    init_log();
    let dir = TempDir::new("paused");
    let cases = [
        (Endpoint::unix(dir.join("p.sock")).unwrap(), false),
        (
            Endpoint::abstract_name(abstract_name("paused")).unwrap(),
            true,
        ),
    ];
    for (at, leave_unread) in cases {
        let (server, probe) = uds_server("uds-paused", &at, |b| b.io_threads(1));
        let mut c = uds(&at);
        let first: &[u8] = if leave_unread {
            b"echo unread\npause\n"
        } else {
            b"pause\n"
        };
        c.write_all(first).unwrap();
        wait_until("reading paused", || probe.paused.load(Ordering::SeqCst));
        let conn = probe.handle(0);
        let tail = vec![b't'; 32 << 10];
        c.write_all(&tail).unwrap();
        drop(c);
        loop_barrier(conn.loop_handle());
        assert!(!conn.is_closed(), "{at}: closed while paused");
        conn.start_reading().unwrap();
        probe.wait_closed(1);
        let mut want = first.to_vec();
        want.extend_from_slice(&tail);
        let got = probe.input_of(conn.id());
        assert!(got == want, "{at}: {} of {} bytes", got.len(), want.len());
        let want_reason = if leave_unread {
            CloseReason::Error(ErrorKind::ConnectionReset)
        } else {
            CloseReason::Peer
        };
        assert_eq!(probe.reasons(), [Some(want_reason)], "{at}");
        probe.check();
        server.stop();
    }
}

/// A graceful shutdown of a Unix-domain server on a loop group while a client still has
/// 4 MiB of reply to read: the socket file is gone as soon as `shutdown` returns (new
/// clients find no server), a successor binds the path at once and serves while the old
/// server drains, the old client still gets every byte and then end of stream, the old
/// shutdown completes when it leaves and leaves the successor's file alone.
#[test]
fn unix_graceful_shutdown_hands_the_path_over_and_finishes_pending_output() {
    init_log();
    let dir = TempDir::new("grace");
    let path = dir.join("grace.sock");
    let at = Endpoint::unix(&path).unwrap();
    let (mut server, probe) = uds_server("uds-grace", &at, |b| {
        b.io_threads(2).loops(8).water_marks(64 << 10, 16 << 10)
    });
    let mut c = uds(&at);
    c.write_all(b"big 4194304\n").unwrap();
    wait_until("the reply passes the high-water mark", || {
        probe.high_water.load(Ordering::SeqCst)
    });
    let (done_tx, done_rx) = mpsc::channel();
    server.handle().shutdown(LIMIT, move |lp| {
        let _ = done_tx.send(Instant::now());
        lp.quit();
    });
    assert!(
        !path.exists(),
        "the socket file is removed when accepting stops"
    );
    let refused = UnixStream::connect(&path).expect_err("nobody listens any more");
    assert_eq!(refused.kind(), ErrorKind::NotFound, "{refused}");

    // A successor on the same path while the old server still drains.
    let (successor, next_probe) = uds_server("uds-grace-2", &at, |b| b.io_threads(1));
    let mut n = uds(&at);
    n.write_all(b"echo next\n").unwrap();
    let mut back = [0u8; 5];
    n.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"next\n");

    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert!(
        got == big_reply(4 << 20),
        "{} bytes, or different",
        got.len()
    );
    let left = Instant::now();
    drop(c);
    let done = done_rx.recv_timeout(LIMIT).expect("the shutdown completes");
    assert!(
        done >= left,
        "the shutdown completed before the client left"
    );
    server.join_within(LIMIT);
    assert_eq!(probe.reasons(), [Some(CloseReason::Peer)]);
    probe.check();
    assert!(path.exists(), "the old server removed its successor's file");

    // The successor still serves, on the same connection and on a new one.
    n.write_all(b"echo again\n").unwrap();
    let mut back = [0u8; 6];
    n.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"again\n");
    let mut m = uds(&at);
    m.write_all(b"echo new\n").unwrap();
    let mut back = [0u8; 4];
    m.read_exact(&mut back).unwrap();
    drop((n, m));
    next_probe.wait_closed(2);
    next_probe.check();
    successor.stop();
    assert!(!path.exists());
}

/// A socket file left by a dead server, a loop group serving 8 concurrent clients with
/// their credentials, a stop, and a restart on the same path and on the same abstract
/// name right after the stop: each start binds, each stop frees the address.
#[test]
fn unix_addresses_survive_leftovers_and_restarts_on_a_loop_group() {
    init_log();
    let dir = TempDir::new("restart");
    let path = dir.join("r.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a dead server's socket file");
    let endpoints = [
        Endpoint::unix(&path).unwrap(),
        Endpoint::abstract_name(abstract_name("restart")).unwrap(),
    ];
    let me = duo_sys::own_credentials();
    for at in endpoints {
        for round in 0..2 {
            let (server, probe) = uds_server("uds-restart", &at, |b| b.io_threads(2).loops(8));
            let clients: Vec<_> = (0..8)
                .map(|i| {
                    let at = at.clone();
                    thread::spawn(move || {
                        let mut c = uds(&at);
                        let msg = format!("echo {round}/{i}\n");
                        c.write_all(msg.as_bytes()).unwrap();
                        let mut back = vec![0u8; msg.len() - 5];
                        c.read_exact(&mut back).unwrap();
                        assert_eq!(back, msg.as_bytes()[5..]);
                    })
                })
                .collect();
            for t in clients {
                join_within("a client", t);
            }
            probe.wait_closed(8);
            probe.check();
            assert_eq!(probe.reasons(), vec![Some(CloseReason::Peer); 8], "{at}");
            for h in probe.handles.lock().unwrap().iter() {
                assert_eq!(h.peer_credentials(), Some(me), "{at}");
            }
            server.stop();
            if let Some(p) = at.as_path() {
                assert!(!p.exists(), "{at}: removed at stop");
            }
        }
    }
}

/// A client that binds its own socket path before connecting: the server's connection
/// names its peer by that path (endpoint and connection name), and still has its
/// credentials.
#[test]
fn unix_a_client_bound_to_a_path_is_known_by_it() {
    init_log();
    let dir = TempDir::new("named");
    let at = Endpoint::unix(dir.join("srv.sock")).unwrap();
    let (server, probe) = uds_server("uds-named", &at, |b| b.io_threads(1));
    let client_path = dir.join("client.sock");
    let s = duo_sys::socket2::Socket::new(
        duo_sys::socket2::Domain::UNIX,
        duo_sys::socket2::Type::STREAM,
        None,
    )
    .unwrap();
    s.bind(&duo_sys::socket2::SockAddr::unix(&client_path).unwrap())
        .unwrap();
    s.connect(&duo_sys::socket2::SockAddr::unix(at.as_path().unwrap()).unwrap())
        .unwrap();
    let mut c = UnixStream::from(std::os::fd::OwnedFd::from(s));
    c.set_read_timeout(Some(LIMIT)).unwrap();
    c.write_all(b"echo named\n").unwrap();
    let mut back = [0u8; 6];
    c.read_exact(&mut back).unwrap();
    let conn = probe.handle(0);
    let peer = Endpoint::unix(&client_path).unwrap();
    assert_eq!(conn.peer_endpoint(), &peer);
    assert_eq!(conn.local_endpoint(), &at);
    assert_eq!(
        conn.name().to_string(),
        format!("uds-named-{peer}#{}", conn.id())
    );
    assert_eq!(conn.peer_credentials(), Some(duo_sys::own_credentials()));
    drop(c);
    probe.wait_closed(1);
    assert_eq!(probe.reasons(), [Some(CloseReason::Peer)]);
    probe.check();
    server.stop();
}

// ---------------------------------------------------------------------------------------
// UDP

fn localhost_udp() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn udp_client() -> StdUdp {
    let c = StdUdp::bind(localhost_udp()).unwrap();
    c.set_read_timeout(Some(LIMIT)).unwrap();
    c
}

fn recv(c: &StdUdp) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    let n = c.recv(&mut buf).expect("a datagram within the limit");
    buf.truncate(n);
    buf
}

/// How a socket receives, for [`udp_truncated_datagrams_are_dropped_in_every_receive_mode`].
#[derive(Debug, Clone, Copy)]
enum RecvMode {
    Batched,
    Unbatched,
    /// Batched, but the pool has no memory to give: one datagram at a time into the heap.
    NoPoolMemory,
}

/// With a 64-byte slot, datagrams of 0, 64, 65, 60 000, 1 and 64 bytes piled up while the
/// loop is held: the four that fit are delivered in order (the empty one too), the two
/// cut ones are counted, never delivered, in every receive mode.
#[test]
fn udp_truncated_datagrams_are_dropped_in_every_receive_mode() {
    init_log();
    for mode in [
        RecvMode::Batched,
        RecvMode::Unbatched,
        RecvMode::NoPoolMemory,
    ] {
        let mut b = UdpSocket::builder("trunc", localhost_udp())
            .max_datagram(64)
            .batch(8)
            .on_datagram(|ctx, payload, from| {
                ctx.send_to(payload, from).unwrap();
            });
        match mode {
            RecvMode::Batched => {}
            RecvMode::Unbatched => b = b.unbatched_receive(true),
            RecvMode::NoPoolMemory => {
                b = b.pool(BufPool::new(PoolConfig {
                    memory_cap: Some(1),
                    ..PoolConfig::default()
                }))
            }
        }
        let io = EventLoopThread::spawn("udp-trunc", None).unwrap();
        let sock = b.start(io.handle()).unwrap();
        let c = udp_client();
        let sizes = [0usize, 64, 65, 60_000, 1, 64];
        let release = hold_loop(io.handle());
        for (i, &n) in sizes.iter().enumerate() {
            c.send_to(&vec![i as u8; n], sock.local_addr()).unwrap();
        }
        drop(release);
        for (i, &n) in sizes.iter().enumerate().filter(|(_, n)| **n <= 64) {
            assert_eq!(recv(&c), vec![i as u8; n], "{mode:?}: datagram {i}");
        }
        wait_until("the counters", || {
            let s = sock.stats();
            s.truncated == 2 && s.datagrams_out == 4
        });
        let s = sock.stats();
        assert_eq!((s.datagrams_in, s.bytes_in), (4, 129), "{mode:?}: {s:?}");
        sock.stop();
        io.stop().unwrap();
    }
}

/// Five datagrams queued together, one larger than IPv4 carries (65 508 bytes) and one
/// for an IPv6 address: the kernel refuses each inside the batch; they alone are dropped
/// and counted, the three around them arrive in order.
#[test]
fn udp_a_datagram_the_kernel_refuses_inside_a_batch_loses_only_itself() {
    init_log();
    let io = EventLoopThread::spawn("udp-emsgsize", None).unwrap();
    let sock = UdpSocket::builder("emsgsize", localhost_udp())
        .start(io.handle())
        .unwrap();
    let peer = udp_client();
    let to = peer.local_addr().unwrap();
    let release = hold_loop(io.handle());
    sock.send_to(&b"first"[..], to).unwrap();
    sock.send_to(vec![9u8; 65_508], to).unwrap();
    sock.send_to(&b"middle"[..], to).unwrap();
    // An IPv6 destination for an IPv4 socket: refused too (EAFNOSUPPORT).
    sock.send_to(&b"nowhere"[..], "[::1]:9".parse().unwrap())
        .unwrap();
    sock.send_to(&b"last"[..], to).unwrap();
    drop(release);
    assert_eq!(recv(&peer), b"first");
    assert_eq!(recv(&peer), b"middle");
    assert_eq!(recv(&peer), b"last");
    wait_until("the counters", || {
        let s = sock.stats();
        s.datagrams_out == 3 && s.send_errors == 2
    });
    let s = sock.stats();
    assert_eq!((s.dropped, s.queued_bytes), (0, 0), "{s:?}");
    sock.stop();
    io.stop().unwrap();
}

/// A connected socket whose peer went away, flooded from another thread: the ICMP errors
/// are counted as refusals, the socket goes on, and every datagram accepted is sent or
/// counted (none vanishes).
#[test]
fn udp_connected_socket_to_a_vanished_peer_counts_every_datagram() {
    init_log();
    let gone = StdUdp::bind(localhost_udp()).unwrap();
    let peer = gone.local_addr().unwrap();
    drop(gone);
    let io = EventLoopThread::spawn("udp-vanished", None).unwrap();
    let sock = UdpSocket::builder("vanished", localhost_udp())
        .connect(peer)
        .send_queue_bytes(16 << 10)
        .start(io.handle())
        .unwrap();
    let h = sock.clone();
    let sender = thread::spawn(move || {
        let (mut ok, mut full) = (0u64, 0u64);
        for i in 0..300u32 {
            match h.send(i.to_be_bytes().repeat(16)) {
                Ok(()) => ok += 1,
                Err(UdpSendError::QueueFull { .. }) => full += 1,
                Err(e) => panic!("send {i}: {e}"),
            }
        }
        (ok, full)
    });
    let (ok, full) = join_within("the sender", sender);
    wait_until("every accepted datagram sent or counted", || {
        let s = sock.stats();
        s.datagrams_out + s.send_errors + s.dropped == ok + full && s.queued_bytes == 0
    });
    wait_until("an ICMP refusal counted", || sock.stats().refused >= 1);
    assert!(!sock.is_stopped() && !sock.is_closed());
    sock.stop();
    io.stop().unwrap();
}

/// Datagrams from four threads at once: each thread's arrive in the order it sent them.
#[test]
fn udp_sends_from_several_threads_keep_each_threads_order() {
    init_log();
    let io = EventLoopThread::spawn("udp-order", None).unwrap();
    let sock = UdpSocket::builder("order", localhost_udp())
        .start(io.handle())
        .unwrap();
    let peer = udp_client();
    let to = peer.local_addr().unwrap();
    let senders: Vec<_> = (0..4u8)
        .map(|t| {
            let h = sock.clone();
            thread::spawn(move || {
                for seq in 0..16u8 {
                    h.send_to(vec![t, seq], to).unwrap();
                }
            })
        })
        .collect();
    let mut next = [0u8; 4];
    for _ in 0..64 {
        let d = recv(&peer);
        let (t, seq) = (d[0] as usize, d[1]);
        assert_eq!(seq, next[t], "thread {t}'s datagrams out of order");
        next[t] += 1;
    }
    for t in senders {
        join_within("a sender", t);
    }
    sock.stop();
    io.stop().unwrap();
}

/// A stop while two threads flood the socket and a client's datagrams are being echoed:
/// once `stop` has returned every send is refused (`Stopped`), and every datagram that
/// was accepted (by a thread or by the echo callback) is sent, refused by the kernel, or
/// counted as dropped, none lost without a trace.
#[test]
fn udp_stop_while_traffic_flows_accounts_for_every_datagram() {
    init_log();
    let cb_ok = Arc::new(AtomicU64::new(0));
    let cb_full = Arc::new(AtomicU64::new(0));
    let (ok2, full2) = (cb_ok.clone(), cb_full.clone());
    let io = EventLoopThread::spawn("udp-stop-flow", None).unwrap();
    let sock = UdpSocket::builder("stop-flow", localhost_udp())
        .send_queue_bytes(32 << 10)
        .on_datagram(move |ctx, payload, from| match ctx.send_to(payload, from) {
            Ok(()) => {
                ok2.fetch_add(1, Ordering::SeqCst);
            }
            Err(UdpSendError::QueueFull { .. }) => {
                full2.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => panic!("echo: {e}"),
        })
        .start(io.handle())
        .unwrap();
    // Never read: its queue overflows, which UDP allows.
    let sink = StdUdp::bind(localhost_udp()).unwrap();
    let to = sink.local_addr().unwrap();
    let stopped = Arc::new(AtomicBool::new(false));
    let flooders: Vec<_> = (0..2)
        .map(|_| {
            let (h, stopped) = (sock.clone(), stopped.clone());
            thread::spawn(move || {
                let (mut ok, mut full) = (0u64, 0u64);
                let deadline = Instant::now() + LIMIT;
                loop {
                    assert!(Instant::now() < deadline, "never refused as stopped");
                    let after_stop = stopped.load(Ordering::SeqCst);
                    match h.send_to(vec![7u8; 200], to) {
                        Ok(()) => {
                            assert!(!after_stop, "a send accepted after stop returned");
                            ok += 1;
                        }
                        Err(UdpSendError::QueueFull { .. }) => full += 1,
                        Err(UdpSendError::Stopped) => return (ok, full),
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    let client = udp_client();
    let echo_to = sock.local_addr();
    let pinger = thread::spawn(move || {
        for i in 0..200u32 {
            let _ = client.send_to(&i.to_be_bytes(), echo_to);
        }
    });
    wait_until("traffic flows", || sock.stats().datagrams_out > 500);
    sock.stop();
    stopped.store(true, Ordering::SeqCst);
    let (mut ok, mut full) = (0, 0);
    for t in flooders {
        let (o, f) = join_within("a flooder", t);
        ok += o;
        full += f;
    }
    join_within("the pinger", pinger);
    wait_until("the socket closed", || sock.is_closed());
    // The loop ends: whatever was still on its way to it is dropped and counted.
    io.stop().unwrap();
    let s = sock.stats();
    let accepted_or_refused =
        ok + full + cb_ok.load(Ordering::SeqCst) + cb_full.load(Ordering::SeqCst);
    assert_eq!(
        s.datagrams_out + s.send_errors + s.dropped,
        accepted_or_refused,
        "{s:?}"
    );
    assert_eq!(s.queued_bytes, 0);
    assert_eq!(sock.send_to(&b"late"[..], to), Err(UdpSendError::Stopped));
}
