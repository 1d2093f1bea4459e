//! A server on more loops than I/O threads (`ServerBuilder::loops`): the connections are
//! served by loops that any of the I/O threads runs, one turn at a time.

mod util;

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duo_net::{AcceptMode, EventLoop, LoopSharing, ServerStats, TcpServer};
use duo_testkit::{join_before, wait_until, LIMIT};
use util::{echo_builder, init_log, localhost, TestServer};

const THREADS: usize = 2;
const LOOPS: usize = 8;

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s
}

fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("echo");
    assert_eq!(back, msg);
}

/// The earliest the 200 ms idle timeout of `idle_timeouts_fire_and_...` can close a
/// connection after its last traffic: the timeout less one tick of the idle wheel (1/8),
/// which a loop running the wheel's tick late can cost.
const IDLE_AT_LEAST: Duration = Duration::from_millis(175);

/// `clients` connections from 4 threads, each echoing a few messages, held open together
/// until every one has been echoed, then closed; the server's figures once it counted
/// every one closed.
fn serve_clients(server: &TestServer, clients: usize) -> ServerStats {
    let addr = server.addr();
    let workers: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut conns: Vec<TcpStream> = (0..clients / 4).map(|_| connect(addr)).collect();
                for round in 0..5 {
                    for (i, c) in conns.iter_mut().enumerate() {
                        echo(c, format!("{t}/{i}/{round}").as_bytes());
                    }
                }
            })
        })
        .collect();
    for w in workers {
        join_before(Instant::now() + LIMIT, "clients", w);
    }
    let handle = server.handle().clone();
    wait_until("every connection closed", || {
        handle.stats().closed == clients as u64
    });
    handle.stats()
}

#[test]
fn connections_spread_over_every_loop_and_callbacks_run_as_their_loops_thread() {
    init_log();
    for sharing in [LoopSharing::Owned, LoopSharing::Any] {
        spread_over_loops(sharing);
    }
}

fn spread_over_loops(sharing: LoopSharing) {
    let names = Arc::new(Mutex::new(Vec::new()));
    let off_thread = Arc::new(AtomicUsize::new(0));
    let (seen, off) = (names.clone(), off_thread.clone());
    let server = TestServer::start(move || {
        TcpServer::builder("grouped", localhost())
            .io_threads(THREADS)
            .loops(LOOPS)
            .loop_sharing(sharing)
            .on_connection(move |c| {
                if c.is_connected() {
                    seen.lock().unwrap().push(c.name().to_string());
                }
            })
            .on_message(move |ctx, input| {
                let handle = ctx.connection().loop_handle();
                if !handle.is_in_loop_thread() {
                    off.fetch_add(1, Ordering::SeqCst);
                }
                ctx.send(input.peek());
                input.consume_all();
            })
    });
    let stats = serve_clients(&server, 200);
    assert_eq!((stats.accepted, stats.active), (200, 0));
    assert_eq!(
        stats.per_loop.len(),
        LOOPS,
        "one figure per loop, not per thread"
    );
    // Each loop accepts on a `SO_REUSEPORT` socket of its own: the kernel's hash over 200
    // source ports leaves a loop empty with probability about 8 x (7/8)^200 = 2e-11.
    let served: Vec<u64> = stats.per_loop.iter().map(|l| l.bytes_in).collect();
    assert!(served.iter().all(|&b| b > 0), "{served:?}");
    let names = names.lock().unwrap().clone();
    assert_eq!(
        names.iter().collect::<HashSet<_>>().len(),
        200,
        "unique names ({sharing:?})"
    );
    assert_eq!(off_thread.load(Ordering::SeqCst), 0, "{sharing:?}");
    server.stop();
}

#[test]
fn an_inherited_listener_is_accepted_on_the_main_loop_and_handed_round_robin() {
    init_log();
    // Whichever mode is asked: neither `Shared` nor `ReusePort` can serve a group on a
    // socket that cannot be re-bound.
    for mode in [AcceptMode::Shared, AcceptMode::ReusePort] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = TestServer::start(move || {
            TcpServer::builder_on("grouped-inherited", listener)
                .expect("a listening socket")
                .io_threads(THREADS)
                .loops(LOOPS)
                .accept_mode(mode)
                .on_message(|ctx, input| {
                    ctx.send(input.peek());
                    input.consume_all();
                })
        });
        let stats = serve_clients(&server, 80);
        let per_loop: Vec<u64> = stats.per_loop.iter().map(|l| l.opened).collect();
        assert_eq!(per_loop, vec![10; LOOPS], "{mode:?}: round robin, exact");
        server.stop();
    }
}

#[test]
fn loops_without_io_threads_are_refused() {
    init_log();
    let mut lp = EventLoop::new().unwrap();
    let err = echo_builder("no-threads", localhost())
        .loops(4)
        .start(&mut lp)
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("io_threads is 0"), "{err}");
}

#[test]
fn idle_timeouts_fire_and_a_graceful_shutdown_closes_what_is_left_on_every_loop() {
    init_log();
    let server = TestServer::start(|| {
        echo_builder("grouped-idle", localhost())
            .io_threads(THREADS)
            .loops(LOOPS)
            .idle_timeout(Duration::from_millis(200))
    });
    let addr = server.addr();
    // Silent connections: the idle timer (a timer on each connection's loop) closes them.
    let mut idle: Vec<TcpStream> = (0..16).map(|_| connect(addr)).collect();
    for s in &mut idle {
        let mut buf = [0u8; 1];
        assert_eq!(s.read(&mut buf).expect("closed by the server"), 0);
    }
    let handle = server.handle().clone();
    wait_until("the idle connections counted closed", || {
        handle.stats().closed == 16
    });
    // Served ones, then the shutdown closes what is left of them (on a slow host the
    // idle timeout may have closed some first, even before their echo: then only once
    // they were silent that long; either way each is closed, none is left).
    let since = Instant::now();
    let mut busy: Vec<TcpStream> = (0..16).map(|_| connect(addr)).collect();
    for s in &mut busy {
        if !util::echo_unless_closed(s, b"still here") {
            let quiet = since.elapsed();
            assert!(
                quiet >= IDLE_AT_LEAST,
                "closed before its echo after {quiet:?}"
            );
        }
    }
    wait_until("every busy connection accepted", || {
        handle.stats().accepted == 32
    });
    server.stop();
    for s in &mut busy {
        let mut buf = [0u8; 1];
        assert_eq!(s.read(&mut buf).expect("closed by the shutdown"), 0);
    }
}

#[test]
fn with_ctx_reaches_a_connection_of_the_same_loop_and_not_one_of_another_loop_on_the_same_thread() {
    init_log();
    // One thread runs both loops; the main loop hands connections round robin (an
    // inherited socket), so the first and third connections share loop 0 and the second
    // is on loop 1: the same thread, another loop.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let conns: Arc<Mutex<Vec<duo_net::TcpConnection>>> = Arc::default();
    // What the commands '0' and '1' reach, set by the test once every connection is up.
    let targets: Arc<Mutex<Vec<duo_net::TcpConnection>>> = Arc::default();
    let (tx, outcomes) = std::sync::mpsc::channel();
    let (seen, known) = (conns.clone(), targets.clone());
    let server = TestServer::start(move || {
        TcpServer::builder_on("grouped-ctx", listener)
            .expect("a listening socket")
            .io_threads(1)
            .loops(2)
            .on_connection(move |c| {
                if c.is_connected() {
                    seen.lock().unwrap().push(c.clone());
                }
            })
            .on_message(move |ctx, input| {
                let cmds = input.peek().to_vec();
                input.consume_all();
                for cmd in cmds {
                    let target = known.lock().unwrap()[usize::from(cmd - b'0')].clone();
                    let outcome = target.with_ctx(ctx.event_loop(), |t| {
                        t.send(b"via with_ctx");
                    });
                    let _ = tx.send(outcome);
                }
            })
    });
    let mut a = connect(server.addr());
    let b = connect(server.addr());
    let mut c = connect(server.addr());
    wait_until("three connections", || conns.lock().unwrap().len() == 3);
    let of = |s: &TcpStream| {
        let port = s.local_addr().unwrap();
        let conns = conns.lock().unwrap();
        conns
            .iter()
            .find(|k| k.peer_addr() == port)
            .expect("the server's side of a client")
            .clone()
    };
    let (a_conn, b_conn, c_conn) = (of(&a), of(&b), of(&c));
    assert!(a_conn.loop_handle().same_loop(c_conn.loop_handle()));
    assert!(!a_conn.loop_handle().same_loop(b_conn.loop_handle()));
    *targets.lock().unwrap() = vec![b_conn, c_conn];
    a.write_all(b"0").unwrap();
    assert_eq!(
        outcomes.recv_timeout(LIMIT).unwrap(),
        Err(duo_net::CtxUnavailable::OtherLoop),
        "a connection of another loop, although this thread may run that loop too"
    );
    a.write_all(b"1").unwrap();
    assert_eq!(outcomes.recv_timeout(LIMIT).unwrap(), Ok(()));
    let mut got = [0u8; 12];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"via with_ctx");
    drop(b);
    server.stop();
}
