//! Helpers shared by the `TcpServer` integration tests: a server whose main loop runs on its
//! own thread, blocking and non-blocking loopback clients whose every wait has a deadline,
//! and reproducible pseudo-random data.
#![allow(dead_code)]

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use duo_net::{EventLoop, ServerBuilder, ServerHandle, ServerStats, TcpServer};
use duo_testkit::{join_before, random_bytes, Rng, LIMIT};

#[cfg(feature = "tls")]
pub(crate) mod pki;
pub(crate) mod shared;
pub(crate) mod storm;

/// The grace period the harness gives a server's graceful shutdown.
pub(crate) const GRACE: Duration = Duration::from_secs(1);

/// Turns on `RUST_LOG`-driven logging, once per test binary.
pub(crate) fn init_log() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// `127.0.0.1:0`: loopback, any free port.
pub(crate) fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A builder for an echo server on `at` (an address, or a Unix-domain endpoint): every
/// byte received is sent back.
pub(crate) fn echo_builder(name: &str, at: impl Into<duo_net::Endpoint>) -> ServerBuilder {
    TcpServer::builder(name, at).on_message(|ctx, input| {
        ctx.send(input.peek());
        input.consume_all();
    })
}

/// A server whose main loop runs on a thread of its own (the `EventLoop` is created on the
/// thread that runs it). [`TestServer::stop`] shuts it down gracefully and joins the
/// thread; dropping it does the same without failing the test a second time.
pub(crate) struct TestServer {
    addr: SocketAddr,
    handle: ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Builds (on the server thread) and starts a server; panics if it cannot start.
    pub(crate) fn start(make: impl FnOnce() -> ServerBuilder + Send + 'static) -> TestServer {
        TestServer::try_start(make).expect("server starts")
    }

    /// As [`start`](TestServer::start), but hands back the error of `ServerBuilder::start`
    /// (binding `::1` on a machine without IPv6, say).
    pub(crate) fn try_start(
        make: impl FnOnce() -> ServerBuilder + Send + 'static,
    ) -> io::Result<TestServer> {
        let (tx, rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("test-main-loop".into())
            .spawn(move || {
                let mut lp = EventLoop::new().expect("main loop");
                let server = match make().start(&mut lp) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok((server.local_addr(), server.clone_handle())));
                lp.run().expect("main loop runs");
                server.stop(&mut lp);
            })?;
        match rx.recv_timeout(LIMIT) {
            Ok(Ok((addr, handle))) => Ok(TestServer {
                addr,
                handle,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(e) => panic!("server did not start within {LIMIT:?}: {e}"),
        }
    }

    /// The address the server listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's handle.
    pub(crate) fn handle(&self) -> &ServerHandle {
        &self.handle
    }

    /// A snapshot of the server's counters.
    pub(crate) fn stats(&self) -> ServerStats {
        self.handle.stats()
    }

    /// Polls the counters until `cond` holds and returns that snapshot, failing with the
    /// last one after [`LIMIT`](duo_testkit::LIMIT) (`what` says what was awaited).
    pub(crate) fn wait_for_stats(
        &self,
        what: &str,
        cond: impl Fn(&ServerStats) -> bool,
    ) -> ServerStats {
        let deadline = Instant::now() + duo_testkit::LIMIT;
        loop {
            let s = self.stats();
            if cond(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what}: {s:#?}");
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Whether the main loop's thread has ended (its `run` returned).
    pub(crate) fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Graceful stop with the default grace period; fails the test if the main loop does
    /// not return in time or its thread panicked.
    pub(crate) fn stop(mut self) {
        self.shutdown_and_join(GRACE);
    }

    /// Asks for a graceful shutdown ending with `lp.quit()` and joins the main loop's
    /// thread, which must end within `grace` + [`LIMIT`]. Returns how long that took.
    pub(crate) fn shutdown_and_join(&mut self, grace: Duration) -> Duration {
        let started = Instant::now();
        self.handle.shutdown(grace, |lp| lp.quit());
        self.join_within(grace + LIMIT);
        started.elapsed()
    }

    /// Joins the main loop's thread (already asked to stop), failing the test if it does not
    /// end within `limit` or panicked.
    pub(crate) fn join_within(&mut self, limit: Duration) {
        let Some(t) = self.thread.take() else { return };
        join_before(Instant::now() + limit, "the server's main loop", t);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let Some(t) = self.thread.take() else { return };
        // A failed test: stop the server anyway, but never panic while panicking.
        self.handle.shutdown(Duration::ZERO, |lp| lp.quit());
        let deadline = Instant::now() + LIMIT;
        while !t.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        if t.is_finished() {
            let res = t.join();
            if res.is_err() && !thread::panicking() {
                panic!("the server's main loop thread panicked");
            }
        }
    }
}

/// A blocking client connection whose reads and writes fail after [`LIMIT`].
pub(crate) fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.set_write_timeout(Some(LIMIT)).unwrap();
    s
}

/// Sends `msg` and expects exactly `msg` back.
pub(crate) fn echo_once(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).expect("write to the echo server");
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("read the echo");
    assert_eq!(back, msg, "echo differs");
}

/// Echoes `msg` like [`echo_once`], or returns false if the server closed the connection
/// first (end of stream or reset, before or during the echo).
pub(crate) fn echo_unless_closed(s: &mut TcpStream, msg: &[u8]) -> bool {
    if let Err(e) = s.write_all(msg) {
        assert!(is_peer_close(&e), "the echo's write: {e}");
        return false;
    }
    let mut back = vec![0u8; msg.len()];
    match s.read_exact(&mut back) {
        Ok(()) => {
            assert_eq!(back, msg, "echo differs");
            true
        }
        Err(e) if e.kind() == ErrorKind::UnexpectedEof || is_peer_close(&e) => false,
        Err(e) => panic!("the echo: {e}"),
    }
}

/// Whether an error means the peer closed the connection (rather than a timeout).
pub(crate) fn is_peer_close(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

/// How a connection ended, seen by [`read_until_closed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Orderly end of stream.
    Eof,
    /// Reset by the peer.
    Reset,
}

/// Reads until the peer closes (EOF or reset); returns the bytes read and how it ended.
/// Fails the test if the connection stays open for [`LIMIT`].
pub(crate) fn read_until_closed(s: &mut TcpStream) -> (Vec<u8>, End) {
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, End::Eof),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_peer_close(&e) => return (got, End::Reset),
            Err(e) => panic!("connection not closed by the server within {LIMIT:?}: {e}"),
        }
    }
}

/// Half-closes our side, then reads until the server closes; returns everything read.
pub(crate) fn finish(mut s: TcpStream) -> Vec<u8> {
    s.shutdown(Shutdown::Write).expect("shutdown(SHUT_WR)");
    let (got, end) = read_until_closed(&mut s);
    assert_eq!(end, End::Eof, "the server resets instead of closing");
    got
}

/// One client of [`echo_clients`]: what it sends, how far it got.
struct EchoClient {
    index: usize,
    stream: TcpStream,
    data: Vec<u8>,
    sent: usize,
    received: usize,
    rng: Rng,
}

/// What [`echo_clients`] did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EchoRun {
    /// How long the transfer took, from the moment all clients were connected.
    pub(crate) transfer: Duration,
}

/// A load for [`echo_clients`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct EchoLoad {
    /// Concurrent connections.
    pub(crate) clients: usize,
    /// Bytes each client sends (and expects back).
    pub(crate) bytes: usize,
    /// Largest chunk per write; each write takes a random size in `1..=max_chunk`.
    pub(crate) max_chunk: usize,
    /// Client threads; the clients are spread over them.
    pub(crate) drivers: usize,
    /// Seed of the data and chunk sizes.
    pub(crate) seed: u64,
    /// Time for the whole run, connecting included.
    pub(crate) limit: Duration,
}

/// Connects `load.clients` clients to the echo server at `addr` from `load.drivers`
/// threads; once all are connected (and `all_connected` has returned: it may wait for the
/// server to see them), each sends `load.bytes` pseudo-random bytes in random chunks with
/// non-blocking writes, reading the echo as it comes and checking every byte. Each client
/// closes once all its bytes came back. Fails the test on any wrong, missing or extra
/// byte, or if the run takes longer than `load.limit`.
pub(crate) fn echo_clients(
    addr: SocketAddr,
    load: EchoLoad,
    all_connected: impl FnOnce(),
) -> EchoRun {
    let EchoLoad {
        clients,
        bytes,
        max_chunk,
        drivers,
        seed,
        limit,
    } = load;
    let drivers = drivers.clamp(1, clients.max(1));
    let deadline = Instant::now() + limit;
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut go = Vec::new();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for d in 0..drivers {
        let ready = ready_tx.clone();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        go.push(go_tx);
        let t = thread::Builder::new()
            .name(format!("echo-driver-{d}"))
            .spawn(move || {
                let mut conns: Vec<EchoClient> = (d..clients)
                    .step_by(drivers)
                    .map(|i| {
                        let stream = connect(addr);
                        stream.set_nonblocking(true).unwrap();
                        let seed = seed ^ ((i as u64) << 20);
                        EchoClient {
                            index: i,
                            stream,
                            data: random_bytes(seed, bytes),
                            sent: 0,
                            received: 0,
                            rng: Rng::new(seed ^ 0xC0FFEE),
                        }
                    })
                    .collect();
                let _ = ready.send(());
                // The test thread gave up (it failed): just close everything.
                if go_rx.recv().is_err() {
                    return;
                }
                drive(&mut conns, max_chunk, deadline);
            })
            .expect("spawn an echo driver");
        threads.push(t);
    }
    drop(ready_tx);
    for _ in 0..drivers {
        let left = deadline.saturating_duration_since(Instant::now());
        if ready_rx.recv_timeout(left).is_err() {
            // A driver died (connect failed, say) or hung: report its panic if any.
            drop(go);
            for t in threads {
                if t.is_finished() {
                    if let Err(p) = t.join() {
                        std::panic::resume_unwind(p);
                    }
                }
            }
            panic!("echo clients did not all connect within {limit:?}");
        }
    }
    all_connected();
    let started = Instant::now();
    for g in &go {
        g.send(()).expect("driver waiting for the start");
    }
    for t in threads {
        join_before(deadline + Duration::from_secs(1), "echo driver", t);
    }
    EchoRun {
        transfer: started.elapsed(),
    }
}

/// Pumps every client until all bytes came back; polls with short pauses when no socket
/// made progress.
fn drive(conns: &mut Vec<EchoClient>, max_chunk: usize, deadline: Instant) {
    let mut buf = vec![0u8; 64 << 10];
    while !conns.is_empty() {
        assert!(
            Instant::now() < deadline,
            "echo clients not done by the deadline: {} left, e.g. client {} sent {} got {} of {}",
            conns.len(),
            conns[0].index,
            conns[0].sent,
            conns[0].received,
            conns[0].data.len(),
        );
        let mut progress = false;
        conns.retain_mut(|c| {
            let total = c.data.len();
            if c.sent < total {
                let n = c.rng.range(1, max_chunk).min(total - c.sent);
                match c.stream.write(&c.data[c.sent..c.sent + n]) {
                    Ok(n) => {
                        c.sent += n;
                        progress = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => panic!("client {}: write: {e}", c.index),
                }
            }
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => panic!(
                        "client {}: EOF after {} of {total} echoed bytes",
                        c.index, c.received
                    ),
                    Ok(n) => {
                        progress = true;
                        let end = c.received + n;
                        assert!(
                            end <= total,
                            "client {}: {} bytes echoed, only {total} sent",
                            c.index,
                            end
                        );
                        if buf[..n] != c.data[c.received..end] {
                            let at = (0..n)
                                .find(|&k| buf[k] != c.data[c.received + k])
                                .unwrap_or(0);
                            panic!(
                                "client {}: echoed byte {} differs",
                                c.index,
                                c.received + at
                            );
                        }
                        c.received = end;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => panic!("client {}: read: {e}", c.index),
                }
            }
            // Done: dropping the stream closes it.
            c.received < total
        });
        if !progress {
            thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Holds `lp` in a queued function until the returned sender is used or dropped (at most
/// [`LIMIT`]); returns once the loop is held. With it a test orders what a loop sees:
/// what arrives meanwhile waits for the same iteration.
pub(crate) fn hold_loop(lp: &duo_net::LoopHandle) -> mpsc::Sender<()> {
    let (entered_tx, entered) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    lp.queue_in_loop(move |_| {
        let _ = entered_tx.send(());
        let _ = released.recv_timeout(LIMIT);
    })
    .expect("the loop is alive");
    entered.recv_timeout(LIMIT).expect("the loop to be held");
    release
}

/// Runs a function on the loop and waits for it: everything queued on the loop before
/// this call has run when it returns.
pub(crate) fn barrier(lp: &duo_net::LoopHandle) {
    let (tx, rx) = mpsc::channel();
    lp.queue_in_loop(move |_| {
        let _ = tx.send(());
    })
    .expect("the loop is alive");
    rx.recv_timeout(LIMIT)
        .expect("the loop ran the barrier in time");
}

// Not every test binary that includes this module uses it.
#[allow(unused_imports)]
pub(crate) use duo_testkit::TempDir;

/// Sends `msg` on the Unix-domain stream `s` and expects it back (every wait bounded).
pub(crate) fn unix_round_trip(mut s: std::os::unix::net::UnixStream, msg: &[u8]) {
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.set_write_timeout(Some(LIMIT)).unwrap();
    s.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
}

/// Whether `reason` is the close of a connection its peer reset: `ECONNRESET`, or
/// `EPIPE`, which the kernel reports instead for a reset that follows the peer's FIN
/// (`CLOSE_WAIT`).
pub(crate) fn closed_by_reset(reason: &duo_net::CloseReason) -> bool {
    matches!(
        reason,
        duo_net::CloseReason::Error(ErrorKind::BrokenPipe | ErrorKind::ConnectionReset)
    )
}
