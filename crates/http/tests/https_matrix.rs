//! HTTPS, deferred answers, graceful shutdown and I/O threads combined, against the real
//! kernel over loopback (written by a review helper as probes; none found a bug, and
//! they stay as the matrix's tests): pipelines with deferred answers in order, slow
//! readers, `100-continue`, a connection in each phase at a graceful shutdown and at its
//! deadline, blocked pipelines of uploads (rustls holding plaintext while reading is
//! paused), half-closes with and without `abort_on_client_close`, answers from many
//! threads and after the server stopped, `max_connections`, resets while waiting.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use duo_http::{Response, StatusCode};
use duo_net::tls::{self, rustls};
use duo_testkit::{join_within, wait_until, TestCerts, LIMIT};
use util::deferred::{answer_held, deferred_builder, BIG};
use util::{get, start, Client, LoopServer};

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

struct Pki {
    _certs: TestCerts,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn pki(label: &str) -> Pki {
    let certs = TestCerts::new(label);
    let server =
        tls::server_config_from_pem(certs.path("cert.pem"), certs.path("key.pem")).unwrap();
    let client = tls::client_config_from_pem(certs.path("ca.pem")).unwrap();
    Pki {
        _certs: certs,
        server,
        client,
    }
}

fn tls_connect(addr: SocketAddr, client: &Arc<rustls::ClientConfig>) -> TlsStream {
    let name = tls::server_name("localhost").unwrap();
    let session = rustls::ClientConnection::new(client.clone(), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(LIMIT)).unwrap();
    let mut s = rustls::StreamOwned::new(session, tcp);
    // Completes the handshake.
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).expect("the TLS handshake");
    }
    s
}

fn tls_rd(addr: SocketAddr, p: &Pki) -> Client<TlsStream> {
    Client::over(tls_connect(addr, &p.client))
}

/// HTTPS: deferred answers pipelined with immediate ones keep their order.
#[test]
fn tls_pipelined_deferred_answers_keep_order() {
    let p = pki("https-pipe");
    let (b, _held, _hits) = deferred_builder();
    let server = start(b.tls(p.server.clone()));
    let mut c = tls_rd(server.local_addr(), &p);
    let mut req = String::new();
    for i in 0..20 {
        req.push_str(&get(&format!("/later?a{i}")));
        req.push_str(&get("/hello"));
        req.push_str(&get(&format!("/now?n{i}")));
    }
    c.send(req.as_bytes());
    for i in 0..20 {
        assert_eq!(c.read_reply(false).text(), format!("a{i}"));
        assert_eq!(c.read_reply(false).text(), "hello");
        assert_eq!(c.read_reply(false).text(), format!("n{i}"));
    }
}

/// HTTPS: a big deferred response read slowly, with a short keep-alive timeout.
#[test]
fn tls_slow_reader_of_big_responses() {
    let p = pki("https-slow");
    let (b, _held, _hits) = deferred_builder();
    let server = start(
        b.tls(p.server.clone())
            .keep_alive_timeout(Duration::from_millis(200))
            .linger(Duration::from_millis(200)),
    );
    let mut c = tls_rd(server.local_addr(), &p);
    c.stream.sock.set_nodelay(true).unwrap();
    c.send(get("/dbig?x").as_bytes());
    c.send(get("/big?y").as_bytes());
    c.send(b"GET /dbig?z HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    // Read slowly: 8 KiB each 20 ms (so ~ 1.3 s for the whole).
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < LIMIT * 3, "too slow");
        match c.stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("after {} bytes: {e}", got.len()),
        }
        thread::sleep(Duration::from_millis(20));
    }
    let mut rest = &got[..];
    let mut bodies = Vec::new();
    while !rest.is_empty() {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut fields);
        let httparse::Status::Complete(h) = resp.parse(rest).unwrap() else {
            panic!("partial")
        };
        let len: usize = resp
            .headers
            .iter()
            .find(|x| x.name.eq_ignore_ascii_case("content-length"))
            .map(|x| std::str::from_utf8(x.value).unwrap().parse().unwrap())
            .unwrap();
        assert!(
            rest.len() >= h + len,
            "cut off: {} < {}",
            rest.len(),
            h + len
        );
        bodies.push(rest[h..h + len].to_vec());
        rest = &rest[h + len..];
    }
    assert_eq!(bodies.len(), 3);
    for (b, c) in bodies.iter().zip([b'x', b'y', b'z']) {
        assert!(b.len() == BIG && b.iter().all(|&x| x == c));
    }
}

/// HTTPS + Expect: 100-continue with a Content-Length body and a chunked one.
#[test]
fn tls_expect_continue() {
    let p = pki("https-100");
    let (b, _held, _hits) = deferred_builder();
    let server = start(b.tls(p.server.clone()));
    let mut c = tls_rd(server.local_addr(), &p);
    c.send(b"POST /decho HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let r = c.read_reply(false);
    assert_eq!(r.status, 100);
    c.send(b"hello");
    let r = c.read_reply(false);
    assert_eq!((r.status, r.text()), (200, "hello"));
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(c.read_reply(false).status, 100);
    c.send(b"3\r\nabc\r\n0\r\n\r\n");
    let r = c.read_reply(false);
    assert_eq!((r.status, r.text()), (200, "abc"));
}

/// Graceful shutdown over TLS: a connection in each phase.
#[test]
fn tls_graceful_shutdown_in_each_phase() {
    let p = pki("https-shut");
    let (b, held, _hits) = deferred_builder();
    let server = LoopServer::start(b.tls(p.server.clone()).max_pending_output(1024));
    // Waiting for a deferred answer.
    let mut waiting = tls_rd(server.addr, &p);
    waiting.send(format!("{}{}", get("/held?w"), get("/hello")).as_bytes());
    // Body: a chunked body half received.
    let mut body = tls_rd(server.addr, &p);
    body.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
    // Head: a head half received.
    let mut head = tls_rd(server.addr, &p);
    head.send(b"GET /hello HTTP/1.1\r\nHo");
    // Idle.
    let mut idle = tls_rd(server.addr, &p);
    idle.send(get("/hello").as_bytes());
    assert_eq!(idle.read_reply(false).text(), "hello");
    // Blocked behind big responses it does not read.
    let mut blocked = tls_rd(server.addr, &p);
    let mut pipe = String::new();
    for i in 0..64 {
        pipe.push_str(&get(&format!("/big?{}", (b'a' + i % 26) as char)));
    }
    blocked.send(pipe.as_bytes());
    wait_until("held", || held.lock().unwrap().len() == 1);
    util::wait_for_queued_output(|| server.handle.stats());
    let done = server.shutdown(LIMIT);
    // Idle: a clean end.
    assert_eq!(idle.rest().expect("clean EOF"), b"");
    // Finish the others.
    body.send(b"2\r\nde\r\n0\r\n\r\n");
    let r = body.read_reply(false);
    assert_eq!((r.text(), r.header("connection")), ("abcde", Some("close")));
    assert_eq!(body.rest().expect("clean EOF"), b"");
    head.send(b"st: t\r\n\r\n");
    let r = head.read_reply(false);
    assert_eq!((r.text(), r.header("connection")), ("hello", Some("close")));
    assert_eq!(head.rest().expect("clean EOF"), b"");
    answer_held(&held, 1);
    let r = waiting.read_reply(false);
    assert_eq!((r.text(), r.header("connection")), ("w", Some("close")));
    assert_eq!(waiting.rest().expect("clean EOF"), b"");
    let mut n = 0;
    loop {
        let r = blocked.read_reply(false);
        n += 1;
        assert_eq!(r.body.len(), BIG);
        if r.header("connection") == Some("close") {
            break;
        }
    }
    assert!(n < 64, "all answered: {n}");
    assert_eq!(blocked.rest().expect("clean EOF"), b"");
    done.recv_timeout(LIMIT).expect("the shutdown completes");
    server.join();
}

/// HTTPS + abort_on_client_close: a client that closes (close_notify + FIN) while its
/// deferred request waits: the responder sees it gone; the server closes the connection.
#[test]
fn tls_abort_on_client_close_sees_the_client_leave() {
    let p = pki("https-abort");
    let (b, held, _hits) = deferred_builder();
    let server = start(b.tls(p.server.clone()).abort_on_client_close(true));
    let mut c = tls_rd(server.local_addr(), &p);
    c.send(get("/held?x").as_bytes());
    wait_until("held", || held.lock().unwrap().len() == 1);
    assert!(held.lock().unwrap()[0].1.is_connected());
    c.stream.conn.send_close_notify();
    c.stream.conn.complete_io(&mut c.stream.sock).unwrap();
    c.stream.sock.shutdown(Shutdown::Write).unwrap();
    wait_until("the responder sees the client gone", || {
        !held.lock().unwrap()[0].1.is_connected()
    });
    wait_until("closed", || server.stats().active == 0);
}

/// io_threads(2): many connections, deferred answers from many threads at once.
#[test]
fn io_threads_deferred_from_many_threads() {
    let (b, held, _hits) = deferred_builder();
    let server = start(b.io_threads(2));
    let addr = server.local_addr();
    let clients: Vec<_> = (0..16)
        .map(|k| {
            thread::spawn(move || {
                let mut c = Client::over({
                    let s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(LIMIT)).unwrap();
                    s
                });
                let mut req = String::new();
                for i in 0..20 {
                    req.push_str(&get(&format!("/held?{k}-{i}")));
                    req.push_str(&get(&format!("/later?L{k}-{i}")));
                }
                c.send(req.as_bytes());
                for i in 0..20 {
                    assert_eq!(c.read_reply(false).text(), format!("{k}-{i}"));
                    assert_eq!(c.read_reply(false).text(), format!("L{k}-{i}"));
                }
            })
        })
        .collect();
    let answerers: Vec<_> = (0..4)
        .map(|_| {
            let held = held.clone();
            thread::spawn(move || {
                let deadline = Instant::now() + LIMIT;
                let mut answered = 0;
                while answered < 80 && Instant::now() < deadline {
                    let r = held.lock().unwrap().pop();
                    match r {
                        Some((t, r)) => {
                            assert!(r.is_connected());
                            r.respond(Response::text(StatusCode::OK, t));
                            answered += 1;
                        }
                        None => thread::yield_now(),
                    }
                }
            })
        })
        .collect();
    for c in clients {
        join_within("a client", c);
    }
    for a in answerers {
        join_within("an answerer", a);
    }
}

/// Responders kept after the server stopped: answering or dropping them does nothing.
#[test]
fn responders_outlive_the_server() {
    let (b, held, _hits) = deferred_builder();
    let server = start(b.io_threads(2));
    let mut cs: Vec<_> = (0..4)
        .map(|i| {
            let mut c = util::Client::connect(server.local_addr());
            c.send(get(&format!("/held?{i}")).as_bytes());
            c
        })
        .collect();
    wait_until("held", || held.lock().unwrap().len() == 4);
    server.stop().unwrap();
    let mut rs: Vec<_> = held.lock().unwrap().drain(..).collect();
    for (_, r) in &rs {
        assert!(!r.is_connected());
    }
    let (_, a) = rs.pop().unwrap();
    a.respond(Response::text(StatusCode::OK, "late"));
    drop(rs);
    for c in &mut cs {
        let mut b = Vec::new();
        let _ = c.stream.read_to_end(&mut b);
        assert!(b.is_empty(), "{:?}", String::from_utf8_lossy(&b));
    }
}

/// A TLS client driven by hand on a non-blocking socket: writes while it does not read.
struct Pump {
    conn: rustls::ClientConnection,
    sock: TcpStream,
    out: Vec<u8>,
    sent: usize,
    got: Vec<u8>,
    eof: bool,
}

impl Pump {
    fn new(addr: SocketAddr, client: &Arc<rustls::ClientConfig>, out: Vec<u8>) -> Pump {
        let name = tls::server_name("localhost").unwrap();
        let conn = rustls::ClientConnection::new(client.clone(), name).unwrap();
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_nonblocking(true).unwrap();
        Pump {
            conn,
            sock,
            out,
            sent: 0,
            got: Vec::new(),
            eof: false,
        }
    }

    /// One round; true if anything moved.
    fn step(&mut self, read: bool) -> bool {
        let mut moved = false;
        if self.sent < self.out.len() && !self.conn.is_handshaking() {
            let end = self.out.len().min(self.sent + (16 << 10));
            let n = self.conn.writer().write(&self.out[self.sent..end]).unwrap();
            self.sent += n;
            moved |= n > 0;
        }
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(n) => moved |= n > 0,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("write: {e}"),
            }
        }
        if (read || self.conn.is_handshaking()) && !self.eof {
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => {
                    self.eof = true;
                    moved = true;
                }
                Ok(_) => {
                    moved = true;
                    self.conn
                        .process_new_packets()
                        .expect("TLS from the server");
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e} after {} bytes", self.got.len()),
            }
            let mut chunk = [0u8; 16 << 10];
            loop {
                match self.conn.reader().read(&mut chunk) {
                    Ok(0) => {
                        self.eof = true;
                        break;
                    }
                    Ok(n) => self.got.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("plaintext: {e}"),
                }
            }
        }
        moved
    }
}

/// A response: status, `Connection` field, body.
type Resp = (u16, Option<String>, Vec<u8>);

/// Splits responses; also returns the length of the tail that is no whole response.
fn split(mut bytes: &[u8]) -> (Vec<Resp>, usize) {
    let mut out = Vec::new();
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut fields);
        let Ok(httparse::Status::Complete(h)) = resp.parse(bytes) else {
            return (out, bytes.len());
        };
        let find = |name: &str| {
            resp.headers
                .iter()
                .find(|x| x.name.eq_ignore_ascii_case(name))
                .map(|x| String::from_utf8_lossy(x.value).into_owned())
        };
        let len: usize = find("content-length").map_or(0, |v| v.parse().unwrap());
        if bytes.len() < h + len {
            return (out, bytes.len());
        }
        out.push((
            resp.code.unwrap(),
            find("connection"),
            bytes[h..h + len].to_vec(),
        ));
        bytes = &bytes[h + len..];
    }
}

/// HTTPS: a client pipelines big uploads (a third to a deferred route) without reading;
/// the server blocks on its output (reading stops with plaintext held in rustls), then
/// the client reads, and with `end` also ends its side (`close_notify` and FIN) once all
/// is sent: every answer, in order.
fn blocked_pipeline_of_uploads(label: &str, end: bool) {
    let p = pki(label);
    let (b, _held, _hits) = deferred_builder();
    let server = start(b.tls(p.server.clone()).max_pending_output(1024));
    const N: usize = 24;
    const SZ: usize = 200 << 10;
    let mut out = Vec::new();
    for i in 0..N {
        let route = if i % 3 == 1 { "/decho" } else { "/echo" };
        out.extend_from_slice(
            format!("POST {route} HTTP/1.1\r\nHost: t\r\nContent-Length: {SZ}\r\n\r\n").as_bytes(),
        );
        out.extend(std::iter::repeat_n(b'a' + i as u8, SZ));
    }
    let mut c = Pump::new(server.local_addr(), &p.client, out);
    let deadline = Instant::now() + LIMIT;
    // Not reading until the server has output queued and our writing stalls.
    wait_until("output queued", || {
        c.step(false);
        server.stats().output_queued() > 0
    });
    let mut idle = 0;
    while idle < 1000 && c.sent < c.out.len() {
        if c.step(false) {
            idle = 0;
        } else {
            idle += 1;
            thread::sleep(Duration::from_millis(1));
        }
    }
    let mut ended = !end;
    while Instant::now() < deadline {
        c.step(true);
        if !ended && c.sent == c.out.len() && !c.conn.wants_write() {
            ended = true;
            c.conn.send_close_notify();
            while c.conn.wants_write() {
                c.step(true);
            }
            c.sock.shutdown(Shutdown::Write).unwrap();
        }
        if c.eof || (!end && split(&c.got).0.len() == N) {
            break;
        }
    }
    let (rs, tail) = split(&c.got);
    assert_eq!(
        (rs.len(), tail),
        (N, 0),
        "sent {} of {}",
        c.sent,
        c.out.len()
    );
    for (i, (status, _, body)) in rs.iter().enumerate() {
        assert_eq!(*status, 200);
        assert!(
            body.len() == SZ && body.iter().all(|&x| x == b'a' + i as u8),
            "{i}"
        );
    }
}

#[test]
fn tls_blocked_pipeline_of_uploads() {
    blocked_pipeline_of_uploads("https-upl", false);
}

#[test]
fn tls_blocked_pipeline_of_uploads_then_close_notify_and_fin() {
    blocked_pipeline_of_uploads("https-upl2", true);
}

/// A graceful shutdown with stuck connections in every phase ends by its deadline.
#[test]
fn shutdown_deadline_ends_stuck_connections() {
    for tls_on in [false, true] {
        let p = pki("https-dl");
        let (b, held, _hits) = deferred_builder();
        let mut b = b.io_threads(2).max_pending_output(1024);
        if tls_on {
            b = b.tls(p.server.clone());
        }
        let server = LoopServer::start(b);
        let open = |req: &[u8]| -> Box<dyn FnMut() -> bool> {
            if tls_on {
                let mut c = tls_rd(server.addr, &p);
                c.send(req);
                Box::new(move || {
                    let _ = c.rest();
                    true
                })
            } else {
                let mut c = util::Client::connect(server.addr);
                c.send(req);
                Box::new(move || {
                    let mut v = Vec::new();
                    let _ = c.stream.read_to_end(&mut v);
                    true
                })
            }
        };
        let mut pipe = String::new();
        for _ in 0..64 {
            pipe.push_str(&get("/big"));
        }
        let all = vec![
            open(get("/held?never").as_bytes()),
            open(b"GET /hello HTTP/1.1\r\nHo"),
            open(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc"),
            open(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
            open(pipe.as_bytes()),
        ];
        let raw = TcpStream::connect(server.addr).unwrap();
        wait_until("held", || held.lock().unwrap().len() == 1);
        util::wait_for_queued_output(|| server.handle.stats());
        let grace = Duration::from_millis(500);
        let done = server.shutdown(grace);
        done.recv_timeout(LIMIT).expect("the shutdown completes");
        for mut f in all {
            f();
        }
        drop(raw);
        server.join();
        drop(held);
    }
}

/// HTTPS on two I/O threads: many pipelining clients with deferred answers, a graceful
/// shutdown in the middle: each gets a prefix of its answers, in order, the last one
/// with `Connection: close`, then a clean end.
#[test]
fn tls_io_threads_shutdown_mid_pipelines() {
    let p = Arc::new(pki("https-chaos"));
    let (b, _held, _hits) = deferred_builder();
    let server = LoopServer::start(b.tls(p.server.clone()).io_threads(2));
    let addr = server.addr;
    let first = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..16)
        .map(|k| {
            let (p, first) = (p.clone(), first.clone());
            thread::spawn(move || {
                let mut c = tls_rd(addr, &p);
                let mut req = String::new();
                let mut want = Vec::new();
                for i in 0..200 {
                    match i % 3 {
                        0 => {
                            req.push_str(&get(&format!("/later?{k}-{i}")));
                            want.push(format!("{k}-{i}"));
                        }
                        1 => {
                            req.push_str(&get("/hello"));
                            want.push("hello".to_owned());
                        }
                        _ => {
                            req.push_str(&get(&format!("/now?n{k}-{i}")));
                            want.push(format!("n{k}-{i}"));
                        }
                    }
                }
                c.send(req.as_bytes());
                let r = c.read_reply(false);
                assert_eq!(r.text(), want[0]);
                first.fetch_add(1, Ordering::SeqCst);
                let rest = c.rest();
                let (bytes, err) = match rest {
                    Ok(b) => (b, None),
                    Err((b, e)) => (b, Some(e)),
                };
                let (rs, tail) = split(&bytes);
                let mut closed = r.header("connection") == Some("close");
                for (i, (status, conn, body)) in rs.iter().enumerate() {
                    assert!(!closed, "client {k}: a response after Connection: close");
                    assert_eq!(*status, 200);
                    assert_eq!(String::from_utf8_lossy(body), want[i + 1], "client {k}");
                    closed = conn.as_deref() == Some("close");
                }
                assert_eq!(tail, 0, "client {k}: a partial response");
                assert!(
                    closed,
                    "client {k}: no Connection: close after {} answers",
                    rs.len() + 1
                );
                assert!(err.is_none(), "client {k}: {err:?}");
                rs.len() + 1
            })
        })
        .collect();
    wait_until("every client has its first answer", || {
        first.load(Ordering::SeqCst) == 16
    });
    let done = server.shutdown(LIMIT);
    let mut total = 0;
    for c in clients {
        total += join_within("a client", c);
    }
    done.recv_timeout(LIMIT).expect("the shutdown completes");
    server.join();
    println!("{total} answers");
}

/// HTTPS: a client that ends its side (close_notify, with or without its FIN) after a
/// pipeline with deferred requests still gets every answer, then a clean end.
#[test]
fn tls_half_close_after_a_deferred_pipeline() {
    let p = pki("https-half");
    for fin in [false, true] {
        for abort in [false, true] {
            let (b, held, _hits) = deferred_builder();
            let server = start(b.tls(p.server.clone()).abort_on_client_close(abort));
            let mut c = tls_rd(server.local_addr(), &p);
            c.send(format!("{}{}{}", get("/held?a"), get("/hello"), get("/later?b")).as_bytes());
            c.stream.conn.send_close_notify();
            c.stream.conn.complete_io(&mut c.stream.sock).unwrap();
            if fin {
                c.stream.sock.shutdown(Shutdown::Write).unwrap();
            }
            wait_until("held", || held.lock().unwrap().len() == 1);
            if abort && fin {
                wait_until("gone", || !held.lock().unwrap()[0].1.is_connected());
                drop(held.lock().unwrap().drain(..));
                let got = c.rest();
                assert!(
                    matches!(&got, Ok(b) if b.is_empty()),
                    "fin {fin} abort {abort}: {got:?}"
                );
                continue;
            }
            answer_held(&held, 1);
            let got = c.rest();
            let Ok(bytes) = got else {
                panic!("fin {fin} abort {abort}: {got:?}");
            };
            let (rs, tail) = split(&bytes);
            let texts: Vec<_> = rs
                .iter()
                .map(|r| String::from_utf8_lossy(&r.2).into_owned())
                .collect();
            assert_eq!(
                (texts, tail),
                (vec!["a".to_owned(), "hello".into(), "b".into()], 0),
                "fin {fin} abort {abort}"
            );
            wait_until("closed", || server.stats().active == 0);
        }
    }
}

/// Answers racing the server's stop, from many threads, on two I/O threads: no panic,
/// no hang.
#[test]
fn answers_racing_the_stop() {
    for round in 0..10 {
        let (b, held, _hits) = deferred_builder();
        let server = start(b.io_threads(2));
        let cs: Vec<_> = (0..8)
            .map(|i| {
                let mut c = util::Client::connect(server.local_addr());
                c.send(get(&format!("/held?{i}")).as_bytes());
                c
            })
            .collect();
        wait_until("held", || held.lock().unwrap().len() == 8);
        let rs: Vec<_> = held.lock().unwrap().drain(..).collect();
        let answerers: Vec<_> = rs
            .into_iter()
            .enumerate()
            .map(|(i, (t, r))| {
                thread::spawn(move || {
                    let _ = r.is_connected();
                    if (i + round) % 3 == 0 {
                        drop(r);
                    } else {
                        r.respond(Response::text(StatusCode::OK, t));
                    }
                })
            })
            .collect();
        server.stop().unwrap();
        for a in answerers {
            join_within("an answerer", a);
        }
        drop(cs);
    }
}

/// HTTPS with max_connections: failed handshakes and closed clients free their places.
#[test]
fn tls_max_connections_frees_places() {
    let p = pki("https-max");
    let (b, _held, _hits) = deferred_builder();
    let server = start(b.tls(p.server.clone()).max_connections(2).io_threads(2));
    for _ in 0..5 {
        // Plain HTTP to the TLS port: a failed handshake.
        let mut plain = TcpStream::connect(server.local_addr()).unwrap();
        plain.set_read_timeout(Some(LIMIT)).unwrap();
        plain.write_all(&get("/hello").into_bytes()).unwrap();
        let mut v = Vec::new();
        let _ = plain.read_to_end(&mut v);
    }
    wait_until("none open", || server.stats().active == 0);
    let mut a = tls_rd(server.local_addr(), &p);
    a.send(get("/later?a").as_bytes());
    assert_eq!(a.read_reply(false).text(), "a");
    let mut b2 = tls_rd(server.local_addr(), &p);
    b2.send(get("/hello").as_bytes());
    assert_eq!(b2.read_reply(false).text(), "hello");
    drop(a);
    wait_until("one open", || server.stats().active == 1);
    let mut d = tls_rd(server.local_addr(), &p);
    d.send(get("/later?d").as_bytes());
    assert_eq!(d.read_reply(false).text(), "d");
}

/// A reset while a deferred request waits, over TLS on I/O threads, without
/// abort_on_client_close: the responder sees it; the connection closes.
#[test]
fn tls_reset_while_waiting_is_seen() {
    let p = pki("https-rst");
    let (b, held, _hits) = deferred_builder();
    let server = start(b.tls(p.server.clone()).io_threads(2));
    let mut cs = Vec::new();
    for i in 0..4 {
        let mut c = tls_rd(server.local_addr(), &p);
        c.send(get(&format!("/held?{i}")).as_bytes());
        cs.push(c);
    }
    wait_until("held", || held.lock().unwrap().len() == 4);
    for c in cs {
        socket2::SockRef::from(&c.stream.sock)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c);
    }
    wait_until("every responder sees its client gone", || {
        held.lock().unwrap().iter().all(|(_, r)| !r.is_connected())
    });
    answer_held(&held, 4);
    wait_until("closed", || server.stats().active == 0);
}
