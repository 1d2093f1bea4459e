//! How a server gets its connections: on a listening socket it binds itself or on one it
//! inherits (`TcpServer::builder_on`), accepted by the main loop or by every I/O loop.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};

use duo_net::{AcceptMode, TcpServer};
use duo_testkit::LIMIT;
use util::{init_log, TestServer};

fn echo_on(name: &str, listener: TcpListener) -> duo_net::ServerBuilder {
    TcpServer::builder_on(name, listener)
        .expect("a listening socket")
        .on_message(|ctx, input| {
            ctx.send(input.peek());
            input.consume_all();
        })
}

fn round_trip(addr: std::net::SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(payload).unwrap();
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back).expect("echo");
    back
}

#[test]
fn serves_on_an_inherited_listener_without_binding() {
    init_log();
    // Bound and listening before the server exists, as a supervisor or systemd would.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = TestServer::start(move || echo_on("inherited", listener).io_threads(1));
    assert_eq!(
        server.addr(),
        addr,
        "the server's address is the listener's"
    );
    assert_eq!(round_trip(addr, b"inherited"), b"inherited");
    server.stop();
}

#[test]
fn a_socket_that_is_not_listening_is_refused_with_a_clear_error() {
    init_log();
    let bound = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    bound
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    let err = TcpServer::builder_on("not-listening", TcpListener::from(bound)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("not listening"), "{err}");
}

/// Connections from several threads at once, each echoed and closed; returns the server's
/// statistics once all are closed.
fn serve_clients(server: &TestServer, clients: usize, threads: usize) -> duo_net::ServerStats {
    let addr = server.addr();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..clients / threads {
                    let msg = format!("client {t}/{i}");
                    assert_eq!(round_trip(addr, msg.as_bytes()), msg.as_bytes());
                }
            })
        })
        .collect();
    for w in workers {
        duo_testkit::join_before(std::time::Instant::now() + LIMIT, "clients", w);
    }
    let handle = server.handle().clone();
    duo_testkit::wait_until("every connection closed", || {
        handle.stats().closed == clients as u64
    });
    handle.stats()
}

#[test]
fn every_accept_mode_serves_concurrent_clients_with_unique_names() {
    init_log();
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};
    for mode in [
        AcceptMode::MainLoop,
        AcceptMode::Shared,
        AcceptMode::ReusePort,
    ] {
        let names = Arc::new(Mutex::new(Vec::new()));
        let seen = names.clone();
        let server = TestServer::start(move || {
            util::echo_builder("modes", util::localhost())
                .io_threads(2)
                .accept_mode(mode)
                .on_connection(move |c| {
                    if c.is_connected() {
                        seen.lock().unwrap().push(c.name().to_string());
                    }
                })
        });
        let stats = serve_clients(&server, 200, 4);
        assert_eq!((stats.accepted, stats.active), (200, 0), "{mode:?}");
        let names = names.lock().unwrap().clone();
        assert_eq!(names.len(), 200, "{mode:?}");
        assert_eq!(
            names.iter().collect::<HashSet<_>>().len(),
            200,
            "{mode:?}: connection names are unique across loops"
        );
        let served: Vec<u64> = stats.per_loop.iter().map(|l| l.bytes_in).collect();
        println!("{mode:?}: bytes per loop {served:?}");
        match mode {
            AcceptMode::MainLoop => assert_eq!(stats.handed_over, 200, "every one"),
            AcceptMode::ReusePort => assert_eq!(stats.handed_over, 0, "{mode:?}"),
            // Only while the loops are uneven.
            _ => assert!(stats.handed_over < 200, "{}", stats.handed_over),
        }
        if mode != AcceptMode::Shared {
            // Round robin, or the kernel's hash over 200 different source ports: both
            // loops serve (for the hash, all on one loop has probability 2^-199).
            assert!(served.iter().all(|&b| b > 0), "{mode:?}: {served:?}");
        }
        server.stop();
    }
}

#[test]
fn an_inherited_listener_is_shared_by_the_loops_even_when_reuse_port_is_asked() {
    init_log();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = TestServer::start(move || {
        echo_on("inherited-reuseport", listener)
            .io_threads(2)
            .accept_mode(AcceptMode::ReusePort)
    });
    let stats = serve_clients(&server, 40, 2);
    assert_eq!(stats.accepted, 40);
    server.stop();
}

#[test]
fn a_shared_listener_stays_open_while_another_holder_has_it() {
    // A worker process stopping (graceful shutdown) must not close a socket that the
    // supervisor and the next generation still accept on: connections made after the
    // server stopped accepting are queued for the other holder, never refused or reset.
    init_log();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let other_holder = listener.try_clone().unwrap();
    let server = TestServer::start(move || {
        echo_on("leaving", listener)
            .io_threads(2)
            .accept_mode(AcceptMode::Shared)
    });
    let addr = server.addr();
    assert_eq!(round_trip(addr, b"before"), b"before");
    server.stop();
    // The server is gone; its loops dropped their descriptors. The socket still listens.
    let mut late = TcpStream::connect(addr).expect("queued, not refused");
    late.write_all(b"after").unwrap();
    other_holder.set_nonblocking(true).unwrap();
    let mut accepted = None;
    duo_testkit::wait_until("the other holder accepts it", || {
        accepted = other_holder.accept().ok().map(|(s, _)| s);
        accepted.is_some()
    });
    let mut accepted = accepted.unwrap();
    accepted.set_nonblocking(false).unwrap();
    accepted.set_read_timeout(Some(LIMIT)).unwrap();
    let mut buf = [0u8; 5];
    accepted.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"after");
}

#[test]
fn a_full_server_that_pauses_leaves_extra_connections_queued_until_one_closes() {
    init_log();
    const MAX: usize = 3;
    const LOOPS: usize = 2;
    for mode in [AcceptMode::MainLoop, AcceptMode::Shared] {
        let server = TestServer::start(move || {
            util::echo_builder("pausing", util::localhost())
                .io_threads(LOOPS)
                .accept_mode(mode)
                .max_connections(MAX)
                .when_full(duo_net::WhenFull::Pause)
        });
        let addr = server.addr();
        let connect = || {
            let s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(LIMIT)).unwrap();
            s
        };
        let echo = |s: &mut TcpStream, msg: &[u8]| {
            s.write_all(msg).unwrap();
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, msg);
        };
        let mut open: Vec<TcpStream> = (0..MAX).map(|_| connect()).collect();
        for s in &mut open {
            echo(s, b"in");
        }
        // Two more complete their handshakes in the kernel's queue. A loop that was woken
        // for one before its pause arrived takes it (one over at most per loop, never a
        // connection declined unannounced); the rest wait.
        let mut extra: Vec<TcpStream> = (0..LOOPS).map(|_| connect()).collect();
        for s in &mut extra {
            s.write_all(b"queued").unwrap();
        }
        for s in &mut open {
            echo(s, b"still served");
        }
        let handle = server.handle().clone();
        let stats = handle.stats();
        let most = if mode == AcceptMode::MainLoop {
            MAX // one acceptor: it pauses at once
        } else {
            MAX + LOOPS - 1
        };
        assert!(
            (MAX as u64..=most as u64).contains(&stats.accepted) && stats.rejected == 0,
            "{mode:?}: {MAX}..={most} accepted while full, none rejected: {stats:?}"
        );
        // Room again: every queued connection is accepted and served.
        open.clear();
        duo_testkit::wait_until("the queued connections accepted", || {
            handle.stats().accepted == (MAX + LOOPS) as u64
        });
        for s in &mut extra {
            let mut back = [0u8; 6];
            s.read_exact(&mut back).unwrap();
            assert_eq!(&back, b"queued", "{mode:?}");
        }
        server.stop();
    }
}

#[test]
fn a_deferred_accept_hands_over_a_connection_with_its_first_bytes_in_every_mode() {
    init_log();
    let wait = std::time::Duration::from_secs(5);
    let bound = |mode: AcceptMode| {
        TestServer::start(move || {
            util::echo_builder("deferred", util::localhost())
                .io_threads(2)
                .accept_mode(mode)
                .defer_accept(wait)
        })
    };
    let inherited = || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        TestServer::start(move || echo_on("deferred", listener).defer_accept(wait))
    };
    let servers = [
        ("main loop", bound(AcceptMode::MainLoop)),
        ("shared", bound(AcceptMode::Shared)),
        ("reuseport", bound(AcceptMode::ReusePort)),
        ("inherited", inherited()),
    ];
    for (what, server) in servers {
        // Connected as far as the client can tell, but not handed to the server while it
        // has sent nothing (the wait is 5 s; this looks after 200 ms).
        let mut silent = TcpStream::connect(server.addr()).unwrap();
        silent.set_read_timeout(Some(LIMIT)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200)); // the silence under test
        assert_eq!(
            server.stats().accepted,
            0,
            "{what}: accepted before any bytes"
        );
        // Its first bytes bring it in, and they are served at once.
        util::echo_once(&mut silent, b"first bytes");
        assert_eq!(server.stats().accepted, 1, "{what}");
        assert_eq!(round_trip(server.addr(), b"another"), b"another", "{what}");
        drop(silent);
        server.stop();
    }
}

#[test]
fn deferred_accepting_is_off_by_default_and_set_on_an_inherited_listener() {
    use std::os::fd::AsFd;
    init_log();
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    let probe = plain.try_clone().unwrap();
    let server = TestServer::start(move || echo_on("plain", plain));
    assert_eq!(round_trip(server.addr(), b"x"), b"x");
    assert_eq!(duo_sys::tcp_defer_accept(probe.as_fd()).unwrap(), 0);
    server.stop();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let probe = listener.try_clone().unwrap();
    // 1.5 s rounds up to 2 s (which the kernel reports as 3 s: it keeps retransmissions).
    let server = TestServer::start(move || {
        echo_on("deferred", listener).defer_accept(std::time::Duration::from_millis(1500))
    });
    assert!(duo_sys::tcp_defer_accept(probe.as_fd()).unwrap() >= 2);
    server.stop();
}

/// Opens `n` connections to `server` as fast as one thread can (they queue faster than
/// one loop accepts) and waits until every one is established on a loop; returns them
/// and the connections open on each loop.
fn open_burst(server: &TestServer, n: usize) -> (Vec<TcpStream>, Vec<u64>) {
    let clients: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect(server.addr()).expect("connect"))
        .collect();
    let handle = server.handle();
    duo_testkit::wait_until("every connection established on a loop", || {
        let stats = handle.stats();
        stats.per_loop.iter().map(|l| l.open()).sum::<u64>() == n as u64
    });
    let open = handle.stats().per_loop.iter().map(|l| l.open()).collect();
    (clients, open)
}

/// Echoes a line on every one of `clients`, closes them and waits until the server has
/// closed them all; returns the server's statistics then.
fn echo_and_close(server: &TestServer, clients: Vec<TcpStream>) -> duo_net::ServerStats {
    for (i, mut c) in clients.iter().enumerate() {
        c.set_read_timeout(Some(LIMIT)).unwrap();
        let msg = format!("burst {i}");
        c.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).expect("echo");
        assert_eq!(back, msg.as_bytes());
    }
    let n = clients.len() as u64;
    drop(clients);
    let handle = server.handle();
    duo_testkit::wait_until("every connection closed", || handle.stats().closed == n);
    let stats = handle.stats();
    assert_eq!((stats.accepted, stats.active), (n, 0));
    stats
}

/// A burst of long-lived connections in the default mode (every I/O loop accepts on the
/// one socket, `EPOLLEXCLUSIVE`) ends up spread over the loops: the kernel wakes one loop,
/// which may drain the whole queue, so a loop that holds clearly more than the least
/// loaded one hands what it accepts over to that one. Every connection, handed over or
/// not, is served.
#[test]
fn a_burst_of_connections_is_spread_over_the_loops_of_the_shared_mode() {
    init_log();
    const CONNS: usize = 120;
    for io_threads in [2usize, 3] {
        let server = TestServer::start(move || {
            util::echo_builder("burst", util::localhost())
                .io_threads(io_threads)
                .accept_mode(AcceptMode::Shared)
        });
        let (clients, open) = open_burst(&server, CONNS);
        println!("{io_threads} loops: connections per loop {open:?}");
        let (least, most) = (*open.iter().min().unwrap(), *open.iter().max().unwrap());
        // The rule allows one more than the least plus an eighth of it; acceptors that
        // decide at the same moment can each add one.
        assert!(
            most <= least + 1 + least / 8 + io_threads as u64,
            "{io_threads} loops: connections per loop {open:?}"
        );
        let stats = echo_and_close(&server, clients);
        // Some were handed over (the spread above needs it), and not every one.
        assert!(
            stats.handed_over > 0 && stats.handed_over < CONNS as u64,
            "{io_threads} loops: {} handed over",
            stats.handed_over
        );
        server.stop();
    }
}

/// With balancing off (`balance_accepts(false)`), the shared mode never hands a
/// connection over, whatever the spread; every connection is served where it was
/// accepted.
#[test]
fn the_shared_mode_without_balancing_hands_nothing_over() {
    init_log();
    let server = TestServer::start(move || {
        util::echo_builder("unbalanced", util::localhost())
            .io_threads(2)
            .balance_accepts(false)
    });
    let (clients, open) = open_burst(&server, 60);
    println!("connections per loop {open:?}");
    let stats = echo_and_close(&server, clients);
    assert_eq!(stats.handed_over, 0);
    server.stop();
}
