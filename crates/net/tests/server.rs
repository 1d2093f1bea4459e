//! `TcpServer` over loopback with real sockets and threads: many concurrent echo clients,
//! half-close, reset, sends on stale handles, idle timeout, connection limit, graceful
//! shutdown, panicking callbacks, level triggering and IPv6.
//!
//! Every wait has a deadline ([`util::LIMIT`]); the tests wait for events (a byte, an EOF,
//! a counter) and poll only where nothing signals, and every server is shut down and its
//! thread joined at the end (or by the harness's drop guard on failure).

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use duo_net::{AcceptMode, ConnectionClosed, TcpConnection, ThreadPool};

use duo_testkit::{join_within, random_bytes, wait_until, LIMIT};
use util::{
    connect, echo_builder, echo_clients, echo_once, finish, init_log, localhost, read_until_closed,
    EchoLoad, TestServer,
};

/// Sends RST instead of FIN: `SO_LINGER` with a zero timeout, then close.
fn reset(s: TcpStream) {
    let sock = socket2::Socket::from(s);
    sock.set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
    drop(sock);
}

/// 1 000 clients, all connected at once, each sending 64 KiB of random bytes in random
/// chunks to an echo server with two I/O threads; every byte must come back intact and in
/// order, and the server must end with every connection closed and counted.
#[test]
fn thousand_concurrent_clients_echo_64k_each() {
    init_log();
    const CLIENTS: usize = 1000;
    const BYTES: usize = 64 << 10;
    // Each client costs this process two descriptors: its own socket and the server's.
    // The soft RLIMIT_NOFILE is raised to the hard limit first (20 000 on the development
    // machine; 1024/4096 is common elsewhere). If it stays too low for 1 000 clients, they
    // run in batches that fit, keeping ~256 descriptors spare for loops and the harness.
    let soft = duo_sys::raise_fd_limit()
        .or_else(|_| duo_sys::fd_limit().map(|(soft, _)| soft))
        .unwrap_or(1024);
    let batch = (soft.saturating_sub(256) / 2).clamp(64, CLIENTS as u64) as usize;
    if batch < CLIENTS {
        println!("RLIMIT_NOFILE is {soft}: running the clients in batches of {batch}");
    }

    // Round robin, so that each loop's share is known exactly.
    let server = TestServer::start(|| {
        echo_builder("echo-1000", localhost())
            .io_threads(2)
            .accept_mode(AcceptMode::MainLoop)
    });
    let addr = server.addr();
    let handle = server.handle().clone();
    let started = Instant::now();
    let mut done = 0;
    let mut transfer = Duration::ZERO;
    while done < CLIENTS {
        let n = batch.min(CLIENTS - done);
        let before = done;
        let run = echo_clients(
            addr,
            EchoLoad {
                clients: n,
                bytes: BYTES,
                max_chunk: 16 << 10,
                drivers: 4,
                seed: 1000 + done as u64,
                limit: Duration::from_secs(60),
            },
            || {
                // All n connections are open at the same time on the server too.
                wait_until("the server to hold every client", || {
                    let s = handle.stats();
                    s.accepted as usize == before + n && s.active as usize == n
                });
            },
        );
        transfer += run.transfer;
        done += n;
        wait_until("the batch's connections to close", || {
            handle.stats().active == 0
        });
    }
    let total = (CLIENTS * BYTES) as u64;
    wait_until("every connection closed and counted", || {
        let s = handle.stats();
        s.closed == CLIENTS as u64 && s.bytes_out() == total
    });
    let s = server.stats();
    assert_eq!(s.accepted, CLIENTS as u64);
    assert_eq!((s.active, s.rejected, s.fd_exhausted), (0, 0, 0));
    assert_eq!(s.bytes_in(), total);
    assert_eq!(s.per_loop.len(), 2);
    for (i, l) in s.per_loop.iter().enumerate() {
        // Round robin: each loop serves half of the connections.
        assert_eq!(l.bytes_in, total / 2, "loop {i} got an unfair share: {s:?}");
        assert_eq!(l.bytes_out, l.bytes_in, "loop {i}");
    }
    println!(
        "{CLIENTS} clients x {} KiB echoed in {:?} (transfer {:?})",
        BYTES >> 10,
        started.elapsed(),
        transfer
    );
    server.stop();
}

/// A peer that sends and then half-closes (`shutdown(SHUT_WR)`) still gets everything
/// back, including what the server had to buffer, and then sees EOF.
#[test]
fn half_closed_peer_gets_all_data_then_eof() {
    init_log();
    let server = TestServer::start(|| echo_builder("half-close", localhost()).io_threads(1));

    // Small: nothing pending in the server when the FIN arrives.
    let mut s = connect(server.addr());
    s.write_all(b"hello").unwrap();
    assert_eq!(finish(s), b"hello");

    // 2 MiB written before reading anything: much of the echo waits in the server's output
    // buffer (below the 4 MiB high-water mark, so the server keeps reading) when the FIN
    // arrives; it must be flushed before the server closes.
    let data = random_bytes(2, 2 << 20);
    let mut s = connect(server.addr());
    s.write_all(&data).unwrap();
    let got = finish(s);
    assert_eq!(got.len(), data.len(), "echoed bytes");
    assert!(got == data, "echo differs");

    wait_until("both connections closed", || {
        let s = server.stats();
        s.active == 0 && s.closed == 2
    });
    server.stop();
}

/// Peers that reset (RST) while the server still has output queued for them and input
/// in flight: the server closes them, `active` returns to 0, every one is counted closed
/// and reported down once, and the server goes on serving.
#[test]
fn reset_peers_are_cleaned_up() {
    init_log();
    const N: usize = 8;
    let downs = Arc::new(AtomicUsize::new(0));
    let d = downs.clone();
    let server = TestServer::start(move || {
        echo_builder("reset", localhost())
            .io_threads(2)
            .on_connection(move |c| {
                if !c.is_connected() {
                    d.fetch_add(1, Ordering::SeqCst);
                }
            })
    });
    for i in 0..N {
        let data = random_bytes(30 + i as u64, 512 << 10);
        let mut s = connect(server.addr());
        // The server reads it all (its output stays below the high-water mark) and owes
        // most of the echo when the reset comes.
        s.write_all(&data).unwrap();
        let mut first = [0u8; 1000];
        s.read_exact(&mut first).unwrap();
        assert_eq!(first[..], data[..1000]);
        if i % 2 == 0 {
            // And some input still in flight.
            s.write_all(&data[..64 << 10]).unwrap();
        }
        reset(s);
    }
    wait_until("reset connections removed", || {
        let s = server.stats();
        s.active == 0 && s.closed == N as u64
    });
    wait_until("every down callback", || downs.load(Ordering::SeqCst) == N);
    let s = server.stats();
    assert_eq!(s.accepted, N as u64);

    let mut s = connect(server.addr());
    echo_once(&mut s, b"still serving");
    drop(s);
    wait_until("the last connection closed", || {
        server.stats().closed == N as u64 + 1
    });
    // The close is counted (on the main loop) before the I/O loop runs the "down"
    // callback, so wait for that too.
    wait_until("one down call per connection", || {
        downs.load(Ordering::SeqCst) == N + 1
    });
    server.stop();
    assert_eq!(downs.load(Ordering::SeqCst), N + 1, "no extra down call");
}

/// A server whose message callback hands out the connection's handle when a message
/// starts with `hold`; it echoes everything.
fn holding_server(name: &'static str) -> (TestServer, mpsc::Receiver<TcpConnection>) {
    let (tx, rx) = mpsc::channel::<TcpConnection>();
    let server = TestServer::start(move || {
        echo_builder(name, localhost())
            .io_threads(1)
            .on_message(move |ctx, input| {
                if input.peek().starts_with(b"hold") {
                    let _ = tx.send(ctx.connection().clone());
                }
                ctx.send(input.peek());
                input.consume_all();
            })
    });
    (server, rx)
}

/// `TcpConnection::send` from worker threads (a `ThreadPool` job and a plain thread) on
/// the handle of a connection whose peer has left: `Err(ConnectionClosed)`, no panic, and
/// nothing reaches the connection that took its place (likely on the same descriptor).
#[test]
fn send_from_worker_after_peer_left_is_harmless() {
    init_log();
    let (server, held) = holding_server("stale");
    let mut a = connect(server.addr());
    echo_once(&mut a, b"hold");
    let stale = held.recv_timeout(LIMIT).expect("the server hands out A");
    drop(a);
    wait_until("A closed on the server", || {
        stale.is_closed() && server.stats().active == 0
    });

    // B likely gets A's descriptor number (and channel slot) on the server.
    let mut b = connect(server.addr());
    echo_once(&mut b, b"b");

    let pool = ThreadPool::new("stale-send", 1, 8).unwrap();
    let (tx, rx) = mpsc::channel();
    let c = stale.clone();
    pool.submit(move || {
        let _ = tx.send((
            c.send(&b"LEAK-1"[..]),
            c.shutdown(),
            c.force_close(),
            c.queue_in_loop(|ctx| {
                ctx.send(b"LEAK-2");
            }),
        ));
    })
    .unwrap();
    let results = rx.recv_timeout(LIMIT).expect("the job ran");
    assert_eq!(
        results,
        (
            Err(ConnectionClosed),
            Err(ConnectionClosed),
            Err(ConnectionClosed),
            Err(ConnectionClosed)
        )
    );
    pool.stop();
    let c = stale.clone();
    let plain = thread::spawn(move || c.send(vec![b'X'; 4096]));
    assert_eq!(join_within("plain sender", plain), Err(ConnectionClosed));

    // B gets its own echo and nothing else.
    echo_once(&mut b, b"c");
    assert_eq!(
        finish(b),
        b"",
        "bytes of a stale handle reached another connection"
    );
    server.stop();
}

/// The race: a worker keeps sending on a connection while its peer leaves and a new
/// connection arrives. The worker's sends turn into `Err(ConnectionClosed)` (sends queued
/// before the close are dropped), nothing panics, and the new connection only ever sees
/// its own echo.
#[test]
fn send_racing_a_disconnect_never_leaks() {
    init_log();
    let (server, held) = holding_server("stale-race");
    for round in 0..6u8 {
        let mut a = connect(server.addr());
        echo_once(&mut a, b"hold");
        let stale = held.recv_timeout(LIMIT).expect("the server hands out A");
        let (first_tx, first_rx) = mpsc::channel();
        let worker = thread::spawn(move || {
            let mut ok = 0usize;
            let deadline = Instant::now() + LIMIT;
            loop {
                match stale.send(vec![b'X'; 1024]) {
                    Ok(()) => {
                        ok += 1;
                        if ok == 1 {
                            let _ = first_tx.send(());
                        }
                        // Bounded: at most ~1 MiB queued at the peer that never reads.
                        if ok >= 1024 {
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                    Err(ConnectionClosed) => return ok,
                }
                assert!(Instant::now() < deadline, "send kept succeeding");
            }
        });
        first_rx.recv_timeout(LIMIT).expect("the worker sends");
        if round % 2 == 0 {
            reset(a);
        } else {
            drop(a);
        }
        let mut b = connect(server.addr());
        let msg = format!("round {round}");
        echo_once(&mut b, msg.as_bytes());
        let sent = join_within("worker", worker);
        assert!(sent >= 1);
        echo_once(&mut b, b"again");
        assert_eq!(finish(b), b"", "round {round}: stray bytes on B");
    }
    wait_until("all closed", || server.stats().active == 0);
    server.stop();
}

/// With `idle_timeout(1 s)`, a connection that sends nothing is closed after the timeout
/// (never before it, at most a wheel tick later plus scheduling), while one that sends
/// every 50 ms stays open for four timeouts and longer. (The timeout is long against the
/// pace so that a client thread that waits for a core on a loaded host is not idle.)
#[test]
fn idle_timeout_closes_silent_connection_and_spares_active_one() {
    init_log();
    const TIMEOUT: Duration = Duration::from_secs(1);
    let server = TestServer::start(|| {
        echo_builder("idle", localhost())
            .io_threads(1)
            .idle_timeout(TIMEOUT)
    });
    let addr = server.addr();
    let active = thread::spawn(move || {
        let mut s = connect(addr);
        let started = Instant::now();
        let mut i = 0;
        while started.elapsed() < 4 * TIMEOUT {
            echo_once(&mut s, format!("tick {i}").as_bytes());
            i += 1;
            // Pacing, not waiting for anything.
            thread::sleep(Duration::from_millis(50));
        }
        s
    });
    let started = Instant::now();
    let mut silent = connect(addr);
    let (got, _) = read_until_closed(&mut silent);
    let idle = started.elapsed();
    assert!(got.is_empty());
    assert!(idle >= TIMEOUT, "closed after {idle:?}, before the timeout");
    assert!(
        idle < TIMEOUT + Duration::from_secs(2),
        "closed only after {idle:?}"
    );

    let mut s = join_within("active client", active);
    echo_once(&mut s, b"still here");
    let st = server.stats();
    assert_eq!((st.closed, st.active), (1, 1), "{st:?}");
    drop(s);
    wait_until("the active one closed by its peer", || {
        server.stats().closed == 2
    });
    println!("silent connection closed after {idle:?}");
    server.stop();
}

/// `max_connections(3)`: the 4th and 5th connections are accepted and closed at once
/// (the client sees EOF or a reset), counted as rejected; the first three keep working,
/// and once one of them leaves a new connection is served again.
#[test]
fn max_connections_rejects_the_extra_ones() {
    init_log();
    let server = TestServer::start(|| {
        echo_builder("max-conn", localhost())
            .io_threads(2)
            .max_connections(3)
    });
    let addr = server.addr();
    let mut open: Vec<TcpStream> = (0..3)
        .map(|i| {
            let mut s = connect(addr);
            echo_once(&mut s, format!("conn {i}").as_bytes());
            s
        })
        .collect();
    assert_eq!(server.stats().active, 3);

    for i in 0..2 {
        let mut extra = connect(addr);
        // Writing may already fail if the server closed first; either way it is closed.
        let _ = extra.write_all(b"let me in");
        let (got, end) = read_until_closed(&mut extra);
        assert!(got.is_empty(), "extra connection {i} was served ({end:?})");
    }
    wait_until("two rejections counted", || server.stats().rejected == 2);
    let st = server.stats();
    assert_eq!((st.accepted, st.active), (3, 3), "{st:?}");
    for (i, s) in open.iter_mut().enumerate() {
        echo_once(s, format!("still {i}").as_bytes());
    }

    drop(open.remove(0));
    wait_until("a slot freed", || server.stats().active == 2);
    let mut s = connect(addr);
    echo_once(&mut s, b"room again");
    let st = server.stats();
    assert_eq!((st.accepted, st.rejected, st.active), (4, 2, 3), "{st:?}");
    drop(s);
    drop(open);
    wait_until("all closed", || server.stats().active == 0);
    server.stop();
}

/// A server that answers `go` with `data` and reports the output buffer's length right
/// after queuing it.
fn bulk_server(name: &'static str, data: Arc<Vec<u8>>) -> (TestServer, mpsc::Receiver<usize>) {
    let (tx, rx) = mpsc::channel();
    let server = TestServer::start(move || {
        echo_builder(name, localhost())
            .io_threads(1)
            .on_message(move |ctx, input| {
                if input.peek() == b"go" {
                    input.consume_all();
                    ctx.send(&data);
                    let _ = tx.send(ctx.output_len());
                }
            })
    });
    (server, rx)
}

/// Graceful stop with output still queued: the client, which has not read anything when
/// the stop is requested and then reads slowly, still gets all 8 MiB and then EOF; the
/// main loop's `run` returns as soon as the connection is done (well before the grace
/// period), and the listening socket is closed.
#[test]
fn graceful_shutdown_delivers_queued_output() {
    init_log();
    const BIG: usize = 8 << 20;
    const GRACE: Duration = Duration::from_secs(5);
    let data = Arc::new(random_bytes(8, BIG));
    let (mut server, queued) = bulk_server("graceful", data.clone());
    let addr = server.addr();
    let mut s = connect(addr);
    s.write_all(b"go").unwrap();
    let pending = queued
        .recv_timeout(LIMIT)
        .expect("the server queued the data");
    assert!(
        pending > 0,
        "the kernel took all 8 MiB at once: nothing left to drain"
    );

    let started = Instant::now();
    server
        .handle()
        .shutdown(GRACE, |lp: &mut duo_net::EventLoop| lp.quit());
    // Read slowly at first, then drain.
    let mut got = Vec::with_capacity(BIG);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() < (1 << 20) {
                    thread::sleep(Duration::from_millis(2));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("after {} bytes: {e}", got.len()),
        }
    }
    assert_eq!(got.len(), BIG, "bytes delivered after the shutdown request");
    assert!(got == *data, "delivered bytes differ");
    drop(s);
    server.join_within(LIMIT);
    let took = started.elapsed();
    assert!(
        took < GRACE,
        "run returned only after {took:?}: the connection was force-closed"
    );
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after the shutdown"
    );
    let st = server.stats();
    assert_eq!((st.accepted, st.closed, st.active), (1, 1, 0), "{st:?}");
    println!("{pending} bytes queued at the shutdown request; drained in {took:?}");
}

/// Graceful stop against a peer that never reads: at the end of the grace period the
/// connection is force-closed (unsent output dropped) and `run` returns.
#[test]
fn graceful_shutdown_force_closes_at_the_deadline() {
    init_log();
    const BIG: usize = 8 << 20;
    const GRACE: Duration = Duration::from_millis(300);
    let data = Arc::new(random_bytes(9, BIG));
    let (mut server, queued) = bulk_server("deadline", data.clone());
    let mut s = connect(server.addr());
    s.write_all(b"go").unwrap();
    assert!(queued.recv_timeout(LIMIT).expect("queued") > 0);
    let took = server.shutdown_and_join(GRACE);
    assert!(
        took >= GRACE,
        "run returned after {took:?}, before the grace period"
    );
    let (got, _) = read_until_closed(&mut s);
    assert!(
        got.len() < BIG,
        "everything was delivered to a peer that never read"
    );
    assert!(got[..] == data[..got.len()], "delivered prefix differs");
    let st = server.stats();
    assert_eq!((st.closed, st.active), (1, 0), "{st:?}");
    println!(
        "force-closed after {took:?} with {} bytes delivered",
        got.len()
    );
}

/// A message callback that panics closes only its connection: another connection on the
/// same I/O loop keeps echoing, and the server keeps accepting.
#[test]
fn panic_in_message_callback_closes_only_that_connection() {
    init_log();
    // The panic message below on stderr is expected.
    let server = TestServer::start(|| {
        echo_builder("panic", localhost())
            .io_threads(1)
            .on_message(|ctx, input| {
                if input.peek().windows(5).any(|w| w == b"panic") {
                    panic!("test: message callback panics on purpose");
                }
                if input.peek().windows(5).any(|w| w == b"later") {
                    // A function run later on the connection's loop (a worker's reply,
                    // say) panics instead.
                    let _ = ctx.connection().queue_in_loop(|_| {
                        panic!("test: function run on the loop panics on purpose")
                    });
                }
                ctx.send(input.peek());
                input.consume_all();
            })
    });
    let addr = server.addr();
    let mut q = connect(addr);
    echo_once(&mut q, b"before");
    let mut p = connect(addr);
    echo_once(&mut p, b"hi");
    p.write_all(b"panic").unwrap();
    let (got, _) = read_until_closed(&mut p);
    assert!(got.is_empty());
    wait_until("the panicking connection closed", || {
        server.stats().closed == 1
    });
    let mut l = connect(addr);
    l.write_all(b"later").unwrap();
    let (got, _) = read_until_closed(&mut l);
    assert!(got.is_empty() || got == b"later", "{got:?}");
    wait_until("the second panicking connection closed", || {
        server.stats().closed == 2
    });
    echo_once(&mut q, b"after");
    let mut r = connect(addr);
    echo_once(&mut r, b"new one");
    assert_eq!(server.stats().active, 2);
    drop((q, r));
    wait_until("all closed", || server.stats().active == 0);
    server.stop();
}

/// Level-triggered connections (one read or write per readiness event) echo correctly,
/// including chunks larger than one read and output that has to wait for the socket.
#[test]
fn level_triggered_echo() {
    init_log();
    let server = TestServer::start(|| {
        echo_builder("echo-lt", localhost())
            .io_threads(2)
            .edge_triggered(false)
    });
    let run = echo_clients(
        server.addr(),
        EchoLoad {
            clients: 50,
            bytes: 256 << 10,
            max_chunk: 128 << 10,
            drivers: 2,
            seed: 10,
            limit: Duration::from_secs(30),
        },
        || {},
    );
    wait_until("all closed", || server.stats().closed == 50);
    assert_eq!(server.stats().bytes_out(), 50 * (256 << 10));
    println!("level-triggered: 50 x 256 KiB in {:?}", run.transfer);
    server.stop();
}

/// A server on `[::1]` serves IPv6 clients (skipped where `::1` cannot be bound).
#[test]
fn ipv6_loopback_echo() {
    init_log();
    let addr: SocketAddr = "[::1]:0".parse().unwrap();
    let server = match TestServer::try_start(move || echo_builder("echo-v6", addr).io_threads(1)) {
        Ok(s) => s,
        Err(e) => {
            println!("skipping ipv6_loopback_echo: cannot listen on [::1]: {e}");
            return;
        }
    };
    assert!(server.addr().is_ipv6());
    assert_ne!(server.addr().port(), 0);
    echo_clients(
        server.addr(),
        EchoLoad {
            clients: 20,
            bytes: 64 << 10,
            max_chunk: 8 << 10,
            drivers: 2,
            seed: 6,
            limit: Duration::from_secs(30),
        },
        || {},
    );
    let mut s = connect(server.addr());
    assert!(s.local_addr().unwrap().is_ipv6());
    echo_once(&mut s, b"over IPv6");
    drop(s);
    wait_until("all closed", || server.stats().closed == 21);
    server.stop();
}

/// `TcpServer::stop` on the main loop's thread after `run` has returned (the documented
/// way to finish; here without a graceful shutdown first) must close the listening
/// socket: afterwards connections are refused and the address can be bound again, even
/// though the loop itself lives on.
#[test]
fn stop_after_run_closes_the_listener() {
    init_log();
    let t = thread::spawn(|| {
        let mut lp = duo_net::EventLoop::new().unwrap();
        let server = echo_builder("stop-listener", localhost())
            .io_threads(1)
            .start(&mut lp)
            .unwrap();
        let addr = server.local_addr();
        lp.quit();
        lp.run().unwrap();
        server.stop(&mut lp);
        let refused = TcpStream::connect_timeout(&addr, LIMIT).is_err();
        let rebind = echo_builder("stop-listener-again", addr)
            .start(&mut lp)
            .map(|s| s.stop(&mut lp));
        (addr, refused, rebind.err().map(|e| e.to_string()))
    });
    let (addr, refused, rebind) = join_within("server thread", t);
    assert!(
        refused,
        "{addr} still accepts connections after TcpServer::stop (the listener stays \
         registered with the stopped loop until the loop is dropped or run again); \
         listening again fails with: {rebind:?}"
    );
    assert_eq!(rebind, None, "cannot listen on {addr} again after stop");
}

/// Without I/O threads the main loop serves the connections itself. `TcpServer::stop`
/// after `run` has returned says those connections "close now": the peer must see EOF
/// while the loop still exists.
#[test]
fn stop_closes_main_loop_connections() {
    init_log();
    let (tx, rx) = mpsc::channel();
    let (stopped_tx, stopped_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let t = thread::spawn(move || {
        let mut lp = duo_net::EventLoop::new().unwrap();
        let server = echo_builder("stop-main", localhost())
            .start(&mut lp)
            .unwrap();
        tx.send((server.local_addr(), lp.handle())).unwrap();
        lp.run().unwrap();
        server.stop(&mut lp);
        stopped_tx.send(()).unwrap();
        // Keep the loop (and whatever it still owns) alive until the test has looked.
        let _ = done_rx.recv_timeout(LIMIT);
    });
    let (addr, lh) = rx.recv_timeout(LIMIT).expect("server started");
    let mut s = connect(addr);
    echo_once(&mut s, b"served by the main loop");
    lh.quit();
    stopped_rx
        .recv_timeout(LIMIT)
        .expect("run returned and stop was called");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 16];
    let outcome = s.read(&mut buf);
    let _ = done_tx.send(());
    join_within("server thread", t);
    match outcome {
        Ok(0) => {}
        Err(e) if util::is_peer_close(&e) => {}
        other => {
            panic!("the main loop's connection is still open 2 s after TcpServer::stop: {other:?}")
        }
    }
}

/// No I/O threads (the default): the main loop accepts and serves. Echo for several
/// clients, an idle timeout, and a graceful stop that half-closes an open connection and
/// returns once its peer closes.
#[test]
fn single_reactor_echo_idle_and_graceful_stop() {
    init_log();
    // An idle timeout long against what a busy client or this thread may wait for a core
    // on a loaded host (the echo load and the graceful stop below run under it too).
    let mut server = TestServer::start(|| {
        echo_builder("single", localhost()).idle_timeout(Duration::from_secs(1))
    });
    echo_clients(
        server.addr(),
        EchoLoad {
            clients: 20,
            bytes: 64 << 10,
            max_chunk: 16 << 10,
            drivers: 2,
            seed: 77,
            limit: Duration::from_secs(30),
        },
        || {},
    );
    let mut silent = connect(server.addr());
    let started = Instant::now();
    let (got, _) = read_until_closed(&mut silent);
    assert!(got.is_empty());
    assert!(started.elapsed() < Duration::from_secs(5));
    wait_until("21 closed", || server.stats().closed == 21);

    let mut open = connect(server.addr());
    echo_once(&mut open, b"before the stop");
    let (tx, rx) = mpsc::channel();
    let handle = server.handle().clone();
    let stopper = thread::spawn(move || {
        handle.shutdown(Duration::from_secs(5), move |lp| {
            let _ = tx.send(());
            lp.quit()
        })
    });
    join_within("stopper", stopper);
    // The server half-closes: EOF here; our own side stays open until we drop it.
    let (got, end) = read_until_closed(&mut open);
    assert_eq!((got.len(), end), (0, util::End::Eof));
    assert!(rx.try_recv().is_err(), "stopped before the peer closed");
    drop(open);
    rx.recv_timeout(LIMIT).expect("the continuation ran");
    server.join_within(LIMIT);
    assert_eq!(server.stats().active, 0);
}

/// `ConnCtx::send_parts` with more pieces than one vectored write takes (8), some larger
/// than the socket buffer, arrives as their concatenation; the write-complete callback runs
/// once the output is drained.
#[test]
fn send_parts_with_many_large_pieces() {
    init_log();
    let pieces: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..20u64)
            .map(|i| random_bytes(500 + i, (i as usize * 37_001) % (300 << 10) + 1))
            .collect(),
    );
    let expected: Vec<u8> = pieces.concat();
    let completed = Arc::new(AtomicUsize::new(0));
    let (p, c) = (pieces.clone(), completed.clone());
    let server = TestServer::start(move || {
        echo_builder("parts", localhost())
            .io_threads(1)
            .on_message(move |ctx, input| {
                if input.peek() == b"parts" {
                    input.consume_all();
                    let parts: Vec<&[u8]> = p.iter().map(|v| &v[..]).collect();
                    assert!(ctx.send_parts(&parts));
                    ctx.shutdown();
                }
            })
            .on_write_complete(move |_| {
                c.fetch_add(1, Ordering::SeqCst);
            })
    });
    let mut s = connect(server.addr());
    s.write_all(b"parts").unwrap();
    let (got, end) = read_until_closed(&mut s);
    assert_eq!(end, util::End::Eof);
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "pieces arrived out of order or damaged");
    wait_until("write complete", || completed.load(Ordering::SeqCst) >= 1);
    drop(s);
    wait_until("closed", || server.stats().active == 0);
    server.stop();
}

/// A connection's addresses are the two ends the client sees, whether the server listens
/// on one address (taken from the listener) or on the wildcard (asked of the socket).
#[test]
fn connection_addresses_match_the_clients_view() {
    init_log();
    for listen in ["127.0.0.1:0", "0.0.0.0:0"] {
        let (tx, rx) = mpsc::channel::<(SocketAddr, SocketAddr)>();
        let listen: SocketAddr = listen.parse().unwrap();
        let server = TestServer::start(move || {
            echo_builder("addrs", listen)
                .io_threads(1)
                .on_connection(move |conn| {
                    if conn.is_connected() {
                        let _ = tx.send((conn.local_addr(), conn.peer_addr()));
                    }
                })
        });
        // Dial 127.0.0.2: on the wildcard listener the local address is not the
        // listener's.
        let port = server.addr().port();
        let dial: SocketAddr = if listen.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 2], port))
        } else {
            server.addr()
        };
        let mut s = connect(dial);
        echo_once(&mut s, b"where am I");
        let (local, peer) = rx.recv_timeout(LIMIT).expect("connection callback");
        assert_eq!(local, s.peer_addr().unwrap(), "listening on {listen}");
        assert_eq!(peer, s.local_addr().unwrap(), "listening on {listen}");
        drop(s);
        server.stop();
    }
}

/// A message callback that never consumes (waiting for a frame that never completes) makes
/// the connection close once `max_input` bytes are buffered, rather than grow without
/// bound; the server's other connections are not disturbed.
#[test]
fn input_over_max_input_closes_only_that_connection() {
    init_log();
    const MAX: usize = 256 << 10;
    let server = TestServer::start(|| {
        echo_builder("max-input", localhost())
            .io_threads(1)
            .max_input(MAX)
            .on_message(|ctx, input| {
                // "hoard" connections keep everything; the others echo.
                if !input.peek().starts_with(b"hoard") {
                    ctx.send(input.peek());
                    input.consume_all();
                }
            })
    });
    let mut other = connect(server.addr());
    echo_once(&mut other, b"before");

    let mut hoarder = connect(server.addr());
    hoarder
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sent = 0;
    let chunk = [b'h'; 16 << 10];
    hoarder.write_all(b"hoard").unwrap();
    // The server closes after MAX bytes; writing on past that fails (reset) or lands in
    // kernel buffers: stop at 4 x MAX either way.
    while sent < 4 * MAX {
        match hoarder.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    let (echoed, _) = read_until_closed(&mut hoarder);
    assert!(echoed.is_empty(), "nothing was echoed to the hoarder");
    wait_until("the hoarder's connection to close", || {
        server.stats().closed == 1
    });
    echo_once(&mut other, b"after");
    drop(other);
    server.stop();
}

/// What the `on_shutdown` test's connections remember.
#[derive(Default)]
struct Pending {
    replies_owed: usize,
    closing: bool,
}

/// A graceful shutdown with an `on_shutdown` callback: the application stops reading,
/// sends the reply it was still computing when the shutdown began, then closes. (Without
/// the callback, the connection would be half-closed at once and the late reply refused.)
#[test]
fn on_shutdown_lets_the_application_send_replies_in_flight() {
    init_log();
    let (got_tx, got_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Arc::new(parking_lot::Mutex::new(release_rx));
    let (began_tx, began_rx) = mpsc::channel::<()>();
    let mut server = TestServer::start(move || {
        echo_builder("on-shutdown", localhost())
            .io_threads(1)
            .on_connection(|conn| {
                if conn.is_connected() {
                    conn.set_context(Pending::default());
                }
            })
            .on_message(move |ctx, input| {
                // Answer from a worker thread, once the test says so.
                let data = input.peek().to_vec();
                input.consume_all();
                let conn = ctx.connection().clone();
                conn.with_context(|p: &mut Pending| p.replies_owed += 1)
                    .expect("context set on connect");
                let _ = got_tx.send(());
                let release_rx = release_rx.clone();
                thread::spawn(move || {
                    let _ = release_rx.lock().recv_timeout(LIMIT);
                    let _ = conn.queue_in_loop(move |ctx| {
                        ctx.send(&data);
                        let done = ctx
                            .connection()
                            .with_context(|p: &mut Pending| {
                                p.replies_owed -= 1;
                                p.closing && p.replies_owed == 0
                            })
                            .unwrap_or(false);
                        if done {
                            ctx.close_after_flush();
                        }
                    });
                });
            })
            .on_shutdown(move |ctx| {
                ctx.stop_reading();
                let idle = ctx
                    .connection()
                    .with_context(|p: &mut Pending| {
                        p.closing = true;
                        p.replies_owed == 0
                    })
                    .unwrap_or(true);
                if idle {
                    ctx.close_after_flush();
                }
                let _ = began_tx.send(());
            })
    });
    let mut busy = connect(server.addr());
    // An idle connection: the callback closes it at once.
    let mut quiet = connect(server.addr());
    busy.write_all(b"late reply").unwrap();
    got_rx
        .recv_timeout(LIMIT)
        .expect("busy's request reached the server");
    wait_until("both connections to be up", || server.stats().active == 2);

    let handle = server.handle().clone();
    handle.shutdown(LIMIT, |lp| lp.quit());
    began_rx.recv_timeout(LIMIT).expect("shutdown callback");
    began_rx.recv_timeout(LIMIT).expect("shutdown callback");
    release_tx.send(()).unwrap();
    let (late, end) = read_until_closed(&mut busy);
    assert_eq!(
        late, b"late reply",
        "the reply computed after the shutdown began"
    );
    assert!(matches!(end, util::End::Eof), "closed cleanly");
    let (rest, _) = read_until_closed(&mut quiet);
    assert!(rest.is_empty());
    server.join_within(LIMIT);
}

/// `shutdown` called twice (two signal handlers, say): the second call adds its
/// continuation instead of replacing the first, both run once the last connection is gone,
/// and the connections are told only once.
#[test]
fn a_second_shutdown_adds_its_continuation() {
    init_log();
    let told = Arc::new(AtomicUsize::new(0));
    let told2 = told.clone();
    let mut server = TestServer::start(move || {
        echo_builder("shutdown-twice", localhost())
            .io_threads(1)
            .on_shutdown(move |_ctx| {
                // Keep the connection open: the client closes it below.
                told2.fetch_add(1, Ordering::SeqCst);
            })
    });
    let mut s = connect(server.addr());
    echo_once(&mut s, b"open");
    let (tx, rx) = mpsc::channel::<&'static str>();
    let (tx1, tx2) = (tx.clone(), tx);
    let handle = server.handle().clone();
    handle.shutdown(LIMIT, move |_| {
        let _ = tx1.send("first");
    });
    handle.shutdown(LIMIT, move |lp| {
        let _ = tx2.send("second");
        lp.quit();
    });
    wait_until("the connection to be told", || {
        told.load(Ordering::SeqCst) >= 1
    });
    assert!(
        rx.try_recv().is_err(),
        "nothing runs while a connection is open"
    );
    drop(s);
    assert_eq!(rx.recv_timeout(LIMIT), Ok("first"));
    assert_eq!(rx.recv_timeout(LIMIT), Ok("second"));
    server.join_within(LIMIT);
    assert_eq!(told.load(Ordering::SeqCst), 1, "told once");
}
