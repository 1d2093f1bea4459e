//! `TcpClient` against a real `TcpServer` over loopback: connect, echo, disconnect, stop,
//! retry with backoff while nothing listens, reconnect after the server restarts.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use duo_net::{ServerHandle, TcpClient, TcpServer};
use duo_reactor::{EventLoop, EventLoopThread};

const DEADLINE: Duration = Duration::from_secs(10);

/// An echo server on its own thread; `stop` shuts it down gracefully and joins.
struct Server {
    handle: ServerHandle,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    fn start(addr: SocketAddr) -> Server {
        let (tx, rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            let mut lp = EventLoop::new().unwrap();
            let server = TcpServer::builder("echo", addr)
                .on_message(|ctx, input| {
                    ctx.send(input.peek());
                    input.consume_all();
                })
                .start(&mut lp)
                .unwrap();
            tx.send(server.clone_handle()).unwrap();
            lp.run().unwrap();
            server.stop(&mut lp);
        });
        let handle = rx.recv_timeout(DEADLINE).expect("server did not start");
        Server {
            handle,
            thread: Some(thread),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(t) = self.thread.take() {
            self.handle
                .shutdown(Duration::from_millis(500), |lp| lp.quit());
            t.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Events the client's callbacks report.
#[derive(Debug, PartialEq)]
enum Event {
    Up,
    Down,
    Echo(Vec<u8>),
}

fn recv(rx: &mpsc::Receiver<Event>) -> Event {
    rx.recv_timeout(DEADLINE).expect("no client event in time")
}

fn client(
    addr: SocketAddr,
    lp: &EventLoopThread,
    reconnect: bool,
    tx: mpsc::Sender<Event>,
) -> TcpClient {
    let tx2 = tx.clone();
    TcpClient::builder("test", addr)
        .reconnect(reconnect)
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .on_connection(move |conn| {
            let _ = tx.send(if conn.is_connected() {
                Event::Up
            } else {
                Event::Down
            });
        })
        .on_message(move |_, input| {
            let _ = tx2.send(Event::Echo(input.peek().to_vec()));
            input.consume_all();
        })
        .connect(lp.handle())
}

/// Sends `msg` and collects the echo (which may arrive in pieces).
fn round_trip(client: &TcpClient, rx: &mpsc::Receiver<Event>, msg: &[u8]) {
    client
        .connection()
        .expect("connected")
        .send(msg.to_vec())
        .unwrap();
    let mut got = Vec::new();
    while got.len() < msg.len() {
        match recv(rx) {
            Event::Echo(bytes) => got.extend(bytes),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, msg);
}

#[test]
fn connects_echoes_and_disconnects() {
    let _ = env_logger::builder().is_test(true).try_init();
    let server = Server::start("127.0.0.1:0".parse().unwrap());
    let lp = EventLoopThread::spawn("client", None).unwrap();
    let (tx, rx) = mpsc::channel();
    let c = client(server.addr(), &lp, false, tx);
    assert_eq!(recv(&rx), Event::Up);
    let conn = c.connection().unwrap();
    assert_eq!(conn.peer_addr(), server.addr());
    round_trip(&c, &rx, b"hello through the client");

    // A half-close from our side: the server closes its side in turn, and we are down.
    c.disconnect();
    assert_eq!(recv(&rx), Event::Down);
    assert!(c.connection().is_none());
    assert!(conn.is_closed());
    assert_eq!(conn.send(&b"late"[..]), Err(duo_net::ConnectionClosed));
    assert!(c.stats().bytes_in >= 24);

    // Poll the server's count down to zero, with a deadline.
    let start = Instant::now();
    while server.handle.stats().active != 0 {
        assert!(start.elapsed() < DEADLINE, "server kept the connection");
        thread::sleep(Duration::from_millis(5));
    }
    drop(c);
    server.stop();
}

#[test]
fn stop_closes_now_and_does_not_reconnect() {
    let server = Server::start("127.0.0.1:0".parse().unwrap());
    let lp = EventLoopThread::spawn("client", None).unwrap();
    let (tx, rx) = mpsc::channel();
    let c = client(server.addr(), &lp, true, tx);
    assert_eq!(recv(&rx), Event::Up);
    c.stop();
    assert_eq!(recv(&rx), Event::Down);
    // Reconnect is on, but stop means stop: no further attempt within several backoffs.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    assert_eq!(c.attempts(), 1);
    server.stop();
}

#[test]
fn retries_with_backoff_while_nothing_listens() {
    // A port bound but not listening: connecting is refused, and no other test's
    // `bind(0)` can take it meanwhile.
    let reserved = duo_testkit::RefusedPort::new();
    let addr = reserved.addr();
    let lp = EventLoopThread::spawn("client", None).unwrap();
    let (tx, rx) = mpsc::channel();
    let c = client(addr, &lp, false, tx);
    // Delays 20, 40, 80, 100, 100 ms...: at least 4 attempts within a second.
    let start = Instant::now();
    while c.attempts() < 4 {
        assert!(start.elapsed() < DEADLINE, "client stopped retrying");
        thread::sleep(Duration::from_millis(10));
    }
    // The backoff caps the rate: with the delay at its 100 ms ceiling, 250 ms hold at
    // most 3 attempts (4 allowing for a timer at the edges); no backoff would make dozens.
    // (The time slept is measured: on a loaded host a sleep can last much longer.)
    let at = c.attempts();
    let slept_from = Instant::now();
    thread::sleep(Duration::from_millis(250));
    let (made, slept) = (c.attempts() - at, slept_from.elapsed());
    let allowed = slept.as_millis() as u64 / 100 + 2;
    assert!(made <= allowed, "{made} attempts in {slept:?}");

    // Now a server appears on that port: the client gets through.
    drop(reserved);
    let server = Server::start(addr);
    assert_eq!(recv(&rx), Event::Up);
    round_trip(&c, &rx, b"late but there");

    // stop() ends retrying too.
    c.stop();
    assert_eq!(recv(&rx), Event::Down);
    server.stop();
}

#[test]
fn reconnects_after_the_server_restarts() {
    let _ = env_logger::builder().is_test(true).try_init();
    let server = Server::start("127.0.0.1:0".parse().unwrap());
    let addr = server.addr();
    let lp = EventLoopThread::spawn("client", None).unwrap();
    let (tx, rx) = mpsc::channel();
    let c = client(addr, &lp, true, tx);
    assert_eq!(recv(&rx), Event::Up);
    round_trip(&c, &rx, b"first life");

    // The server goes away (its graceful shutdown half-closes us; we close).
    server.stop();
    assert_eq!(recv(&rx), Event::Down);

    // ... and comes back on the same port: the client reconnects by itself.
    let server = Server::start(addr);
    assert_eq!(recv(&rx), Event::Up);
    round_trip(&c, &rx, b"second life");
    assert!(c.attempts() >= 2);

    c.stop();
    assert_eq!(recv(&rx), Event::Down);
    server.stop();
}
