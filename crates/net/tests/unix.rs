//! Unix-domain stream sockets through the same server, client and connection API as TCP:
//! echo over a path and over an abstract name, a large transfer under backpressure,
//! half-close, the stale-file policy at bind, the socket file removed at stop, peer
//! credentials, and the TCP-only setters.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use duo_net::{AcceptMode, Endpoint, EventLoop, PeerCredentials, TcpClient, TcpServer};
use duo_testkit::{join_within, random_bytes, wait_until, LIMIT};
use util::{echo_builder, init_log, TestServer};

/// A socket path unique to this test process and call, under the temporary directory;
/// removed when dropped (whatever a failed test left there).
struct TempPath(PathBuf);

impl TempPath {
    fn new(what: &str) -> TempPath {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        TempPath(
            std::env::temp_dir().join(format!("duo-unix-{}-{n}-{what}.sock", std::process::id())),
        )
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::unix(&self.0).unwrap()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An abstract name unique to this test process and call.
fn abstract_name(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("duo-unix-{}-{n}-{what}", std::process::id())
}

fn connect(path: &TempPath) -> UnixStream {
    let s = UnixStream::connect(&path.0).expect("connect to the server's path");
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.set_write_timeout(Some(LIMIT)).unwrap();
    s
}

fn round_trip(s: &mut UnixStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
}

#[test]
fn echo_over_a_socket_path() {
    init_log();
    let path = TempPath::new("echo");
    let at = path.endpoint();
    let server = TestServer::start(move || echo_builder("uds-echo", at).io_threads(2));
    assert_eq!(server.handle().endpoint(), &path.endpoint());
    assert_eq!(
        server.addr(),
        "0.0.0.0:0".parse().unwrap(),
        "no TCP address"
    );
    let mut clients: Vec<UnixStream> = (0..4).map(|_| connect(&path)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        round_trip(c, format!("hello {i}").as_bytes());
    }
    wait_until("4 connections counted", || server.stats().accepted == 4);
    drop(clients);
    server.stop();
}

#[test]
fn echo_over_an_abstract_name() {
    init_log();
    let name = abstract_name("echo");
    let at: Endpoint = format!("unix:@{name}").parse().unwrap();
    let server = TestServer::start(move || echo_builder("uds-abstract", at).io_threads(1));
    assert_eq!(
        server.handle().endpoint().to_string(),
        format!("unix:@{name}")
    );
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
    let mut c = UnixStream::connect_addr(&addr).unwrap();
    c.set_read_timeout(Some(LIMIT)).unwrap();
    round_trip(&mut c, b"no file at all");
    // A second server cannot take a live abstract name.
    let again = format!("unix:@{name}").parse::<Endpoint>().unwrap();
    let err = TestServer::try_start(move || echo_builder("uds-abstract-2", again))
        .err()
        .expect("the name is taken");
    assert_eq!(err.kind(), ErrorKind::AddrInUse, "{err}");
    assert!(err.to_string().contains(&name), "{err}");
    drop(c);
    server.stop();
}

#[test]
fn a_large_transfer_comes_back_whole_under_backpressure() {
    init_log();
    let path = TempPath::new("large");
    let at = path.endpoint();
    // A small high-water mark: the server stops reading while its output is queued.
    let server = TestServer::start(move || {
        echo_builder("uds-large", at)
            .io_threads(1)
            .water_marks(64 * 1024, 16 * 1024)
    });
    let data = random_bytes(16, 8 * 1024 * 1024);
    let mut reader = connect(&path);
    let mut writer = reader.try_clone().unwrap();
    let sent = data.clone();
    let write = thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::with_capacity(data.len());
    reader.read_to_end(&mut got).unwrap();
    join_within("the writer", write);
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the echoed bytes differ");
    server.stop();
}

#[test]
fn a_half_closed_peer_gets_its_replies_then_end_of_stream() {
    init_log();
    let path = TempPath::new("half");
    let at = path.endpoint();
    let server = TestServer::start(move || echo_builder("uds-half", at).io_threads(1));
    let mut c = connect(&path);
    c.write_all(b"last words").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last words");
    server.stop();
}

#[test]
fn a_dead_servers_socket_file_is_replaced() {
    init_log();
    let path = TempPath::new("stale");
    // A server that died without removing its file: bound, then closed.
    drop(UnixListener::bind(&path.0).unwrap());
    assert!(path.0.exists());
    let at = path.endpoint();
    let server = TestServer::start(move || echo_builder("uds-stale", at));
    round_trip(&mut connect(&path), b"alive again");
    server.stop();
}

#[test]
fn a_live_servers_path_is_refused_and_left_alone() {
    init_log();
    let path = TempPath::new("live");
    let live = UnixListener::bind(&path.0).unwrap();
    let at = path.endpoint();
    let err = TestServer::try_start(move || echo_builder("uds-live", at))
        .err()
        .expect("a live server owns the path");
    assert_eq!(err.kind(), ErrorKind::AddrInUse, "{err}");
    assert!(
        err.to_string().contains(&path.0.display().to_string()),
        "{err}"
    );
    // The live server still gets its connections.
    let _c = UnixStream::connect(&path.0).unwrap();
    live.set_nonblocking(false).unwrap();
    let (_conn, _) = live.accept().unwrap();
}

#[test]
fn a_path_that_is_not_a_socket_is_refused_and_kept() {
    init_log();
    let path = TempPath::new("file");
    std::fs::write(&path.0, b"precious").unwrap();
    let at = path.endpoint();
    let err = TestServer::try_start(move || echo_builder("uds-file", at))
        .err()
        .expect("a regular file is in the way");
    assert_eq!(err.kind(), ErrorKind::AddrInUse, "{err}");
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&path.0).unwrap(), b"precious");
}

#[test]
fn the_socket_file_goes_at_stop_unless_replaced() {
    init_log();
    let path = TempPath::new("stop");
    let at = path.endpoint();
    let server = TestServer::start(move || echo_builder("uds-stop", at));
    assert!(path.0.exists());
    server.stop();
    assert!(!path.0.exists(), "the socket file is removed at stop");

    // Someone else's file at the path by the time we stop: it stays.
    let at = path.endpoint();
    let server = TestServer::start(move || echo_builder("uds-stop-2", at));
    std::fs::remove_file(&path.0).unwrap();
    std::fs::write(&path.0, b"successor").unwrap();
    server.stop();
    assert_eq!(std::fs::read(&path.0).unwrap(), b"successor");
}

#[test]
fn peer_credentials_and_names_on_both_sides() {
    init_log();
    let path = TempPath::new("cred");
    let at = path.endpoint();
    let (tx, rx) = mpsc::channel();
    let server = TestServer::start(move || {
        let tx = std::sync::Mutex::new(tx);
        echo_builder("uds-cred", at)
            .io_threads(1)
            .on_connection(move |c| {
                if c.is_connected() {
                    let _ = tx.lock().unwrap().send((
                        c.peer_credentials(),
                        c.name().to_string(),
                        c.peer_endpoint().clone(),
                        c.local_endpoint().clone(),
                        c.is_unix(),
                    ));
                }
            })
    });
    let me: PeerCredentials = duo_sys::own_credentials();
    assert_eq!(me.pid, std::process::id());

    // Our own client, on a loop of its own: the server's side and ours.
    let mut lp = EventLoop::new().unwrap();
    let (ctx_tx, ctx_rx) = mpsc::channel();
    let client = TcpClient::builder("uds-client", path.endpoint())
        .on_connection(move |c| {
            if c.is_connected() {
                let _ = ctx_tx.send((
                    c.peer_credentials(),
                    c.peer_endpoint().clone(),
                    c.peer_addr(),
                ));
                let _ = c.send(b"ping");
            }
        })
        .on_message(|ctx, input| {
            if input.peek() == b"ping" {
                ctx.event_loop().quit();
            }
        })
        .connect(&lp.handle());
    assert_eq!(client.server_endpoint(), &path.endpoint());
    lp.run_after(LIMIT, |lp| lp.quit());
    lp.run().unwrap();
    let (creds, peer, peer_addr) = ctx_rx.try_recv().expect("the client connected");
    assert_eq!(creds, Some(me));
    assert_eq!(peer, path.endpoint());
    assert_eq!(peer_addr, "0.0.0.0:0".parse().unwrap());
    drop(client);

    let (creds, name, peer, local, unix) = rx.recv_timeout(LIMIT).unwrap();
    assert_eq!(creds, Some(me));
    assert_eq!(peer, Endpoint::UnixUnnamed);
    assert_eq!(local, path.endpoint());
    assert!(unix);
    assert_eq!(name, format!("uds-cred-unix:pid{}#1", me.pid));
    // The client's loop owns its socket: dropping it closes the connection, so the
    // server's stop does not wait out its grace period.
    drop(lp);
    server.stop();
}

#[test]
fn tcp_only_settings_do_nothing_on_unix_connections() {
    init_log();
    let path = TempPath::new("tcp-only");
    let at = path.endpoint();
    let (tx, rx) = mpsc::channel();
    let server = TestServer::start(move || {
        let tx = std::sync::Mutex::new(tx);
        TcpServer::builder("uds-tcp-only", at)
            .io_threads(2)
            .reuse_port(true)
            .accept_mode(AcceptMode::ReusePort)
            .tcp_nodelay(true)
            .on_message(move |ctx, input| {
                let results = (ctx.set_tcp_nodelay(true), ctx.set_keepalive(true));
                let _ = tx
                    .lock()
                    .unwrap()
                    .send((results.0.is_ok(), results.1.is_ok()));
                let _ = ctx.connection().set_tcp_nodelay(false);
                let _ = ctx.connection().set_keepalive(false);
                ctx.send(input.peek());
                input.consume_all();
            })
    });
    round_trip(&mut connect(&path), b"no nagle here");
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), (true, true));
    // Several connections: the I/O loops share the one socket (no SO_REUSEPORT).
    for _ in 0..4 {
        round_trip(&mut connect(&path), b"again");
    }
    server.stop();
}

#[test]
fn an_inherited_unix_listener_is_served_and_its_file_kept() {
    init_log();
    let path = TempPath::new("inherited");
    let listener = UnixListener::bind(&path.0).unwrap();
    let server = TestServer::start(move || {
        TcpServer::builder_on_unix("uds-inherited", listener)
            .unwrap()
            .on_message(|ctx, input| {
                ctx.send(input.peek());
                input.consume_all();
            })
    });
    assert_eq!(server.handle().endpoint(), &path.endpoint());
    round_trip(&mut connect(&path), b"handed over");
    server.stop();
    assert!(path.0.exists(), "not ours to remove");
}

#[test]
fn a_client_retries_until_the_path_exists() {
    init_log();
    let path = TempPath::new("retry");
    let mut lp = EventLoop::new().unwrap();
    let client = TcpClient::builder("uds-retry", path.endpoint())
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .on_connection(|c| {
            if c.is_connected() {
                let _ = c.send(b"finally");
            }
        })
        .on_message(|ctx, input| {
            if input.peek() == b"finally" {
                ctx.event_loop().quit();
            }
        })
        .connect(&lp.handle());
    // The server comes up after the client's first attempts failed (no such file): the
    // loop runs in short steps until two have, however late the first step starts.
    let deadline = std::time::Instant::now() + LIMIT;
    while client.attempts() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} attempts",
            client.attempts()
        );
        lp.run_after(Duration::from_millis(10), |lp| lp.quit());
        lp.run().unwrap();
    }
    assert!(client.connection().is_none());
    let at = path.endpoint();
    let server = TestServer::start(move || echo_builder("uds-late", at));
    lp.run_after(LIMIT, |lp| lp.quit());
    lp.run().unwrap();
    assert!(client.connection().is_some(), "connected within {LIMIT:?}");
    drop(client);
    drop(lp);
    server.stop();
}

#[test]
fn a_peer_that_leaves_mid_reply_is_closed_and_others_are_served() {
    init_log();
    let path = TempPath::new("leaver");
    let at = path.endpoint();
    let big = std::sync::Arc::new(random_bytes(7, 4 * 1024 * 1024));
    let server = TestServer::start(move || {
        TcpServer::builder("uds-leaver", at)
            .io_threads(1)
            .on_message(move |ctx, input| {
                if input.peek() == b"big" {
                    ctx.send(&big);
                } else {
                    ctx.send(input.peek());
                }
                input.consume_all();
            })
    });
    // Asks for 4 MiB, reads none of it, and goes: the server's writes fail (EPIPE or
    // ECONNRESET) while most of the reply is still queued.
    let mut leaver = connect(&path);
    leaver.write_all(b"big").unwrap();
    wait_until("the reply is being written", || {
        server.stats().active == 1 && server.stats().bytes_out() > 0
    });
    drop(leaver);
    wait_until("the leaver's connection closed", || {
        server.stats().closed == 1
    });
    let closes = server.stats().closes();
    assert_eq!(closes.error + closes.peer, 1, "{closes:?}");
    round_trip(&mut connect(&path), b"still serving");
    server.stop();
}
