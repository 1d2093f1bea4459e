//! The server's figures after every kind of close, in combination: whatever ended a
//! connection, the gauges (open per loop, output queued, backpressured) come back to 0,
//! each close is counted once under its reason, and the server's totals agree with the
//! loops'.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use duo_net::{CloseCounts, OutputLimit, ServerStats, TcpServer};
use duo_testkit::LIMIT;
use util::{connect, echo_builder, init_log, localhost, TestServer};

/// Every figure that must be back at rest once `closed` connections have closed.
fn at_rest(s: &ServerStats, closed: u64) -> bool {
    s.active == 0
        && s.closed == closed
        && s.closes().total() == closed
        && s.per_loop
            .iter()
            .all(|l| l.open() == 0 && l.output_queued == 0 && l.backpressured == 0)
        && s.per_loop.iter().map(|l| l.opened).sum::<u64>() == closed
}

fn settle(server: &TestServer, closed: u64) -> ServerStats {
    server.wait_for_stats("back at rest", |s| at_rest(s, closed))
}

/// Closes `s` with a reset (SO_LINGER 0).
fn reset(s: TcpStream) {
    duo_sys::socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// Writes until the server's output for this connection is queued (it echoes what we
/// send and we read nothing): at least `min_queued` bytes queued on the server. Or until
/// the server closed it: with an idle timeout, this thread not run for that long on a
/// loaded host leaves the connection idle before its output is queued (the caller's
/// checks of the close then see why it closed).
fn fill(server: &TestServer, s: &mut TcpStream, min_queued: u64) {
    s.set_nonblocking(true).unwrap();
    let chunk = vec![7u8; 64 << 10];
    let deadline = Instant::now() + LIMIT;
    loop {
        let _ = s.write(&chunk);
        let st = server.stats();
        if st.output_queued() >= min_queued || st.closed > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "output never queued: {st:#?}");
        thread::sleep(Duration::from_millis(1));
    }
    s.set_nonblocking(false).unwrap();
}

fn only(c: CloseCounts) -> Vec<(&'static str, u64)> {
    [
        ("peer", c.peer),
        ("error", c.error),
        ("idle", c.idle),
        ("user", c.user),
        ("shutdown", c.shutdown),
        ("input_too_large", c.input_too_large),
        ("output_limit", c.output_limit),
        ("out_of_memory", c.out_of_memory),
        ("panic", c.panic),
        ("tls", c.tls),
    ]
    .into_iter()
    .filter(|&(_, n)| n > 0)
    .collect()
}

#[test]
fn a_reset_of_a_backpressured_reader_leaves_nothing_queued() {
    init_log();
    let server = TestServer::start(|| {
        echo_builder("fc-reset", localhost())
            .io_threads(2)
            .water_marks(64 << 10, 32 << 10)
    });
    let mut c = connect(server.addr());
    fill(&server, &mut c, 64 << 10);
    server.wait_for_stats("backpressured", |s| {
        s.per_loop.iter().map(|l| l.backpressured).sum::<u64>() == 1
    });
    reset(c);
    let s = settle(&server, 1);
    assert_eq!(only(s.closes()), vec![("error", 1)], "{s:#?}");
    server.stop();
}

#[test]
fn idle_timeout_of_a_non_reader() {
    init_log();
    let server = TestServer::start(|| {
        echo_builder("fc-idle", localhost())
            .io_threads(2)
            .idle_timeout(Duration::from_millis(200))
    });
    let mut c = connect(server.addr());
    fill(&server, &mut c, 64 << 10);
    let s = settle(&server, 1);
    assert_eq!(only(s.closes()), vec![("idle", 1)], "{s:#?}");
    server.stop();
}

#[test]
fn output_limit_close() {
    init_log();
    let server = TestServer::start(|| {
        echo_builder("fc-olimit", localhost())
            .io_threads(2)
            .backpressure(duo_net::Backpressure::Notify)
            .output_limit(256 << 10, OutputLimit::Close)
    });
    let mut c = connect(server.addr());
    c.set_nonblocking(true).unwrap();
    let chunk = vec![7u8; 64 << 10];
    let deadline = Instant::now() + LIMIT;
    while server.stats().closed == 0 {
        let _ = c.write(&chunk);
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(1));
    }
    let s = settle(&server, 1);
    assert_eq!(only(s.closes()), vec![("output_limit", 1)], "{s:#?}");
    server.stop();
}

#[test]
fn input_too_large_and_panic() {
    init_log();
    let server = TestServer::start(|| {
        TcpServer::builder("fc-input", localhost())
            .io_threads(2)
            .max_input(4096)
            .on_message(|ctx, input| {
                if input.peek().starts_with(b"panic") {
                    panic!("asked to");
                }
                if input.peek().starts_with(b"echo") {
                    ctx.send(input.peek());
                    input.consume_all();
                }
            })
    });
    let mut a = connect(server.addr());
    a.write_all(&vec![b'x'; 64 << 10]).unwrap_or(());
    let mut b = connect(server.addr());
    b.write_all(b"panic").unwrap();
    let s = settle(&server, 2);
    assert_eq!(
        only(s.closes()),
        vec![("input_too_large", 1), ("panic", 1)],
        "{s:#?}"
    );
    server.stop();
}

#[test]
fn graceful_shutdown_deadline_with_queued_output() {
    init_log();
    let mut server = TestServer::start(|| {
        echo_builder("fc-shutdown", localhost())
            .io_threads(2)
            .water_marks(64 << 10, 32 << 10)
    });
    let mut a = connect(server.addr());
    fill(&server, &mut a, 64 << 10);
    let mut b = connect(server.addr());
    util::echo_once(&mut b, b"hi");
    server.shutdown_and_join(Duration::from_millis(300));
    let s = server.stats();
    assert!(at_rest(&s, 2), "{s:#?}");
    drop((a, b));
}

#[test]
fn server_stop_drops_open_connections_counted() {
    init_log();
    let mut lp = duo_net::EventLoop::new().unwrap();
    let server = echo_builder("fc-stop", localhost())
        .io_threads(2)
        .water_marks(64 << 10, 32 << 10)
        .start(&mut lp)
        .unwrap();
    let handle = server.clone_handle();
    let addr = server.local_addr();
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let h2 = handle.clone();
    let client = thread::spawn(move || {
        let mut a = connect(addr);
        let mut b = connect(addr);
        util::echo_once(&mut b, b"x");
        a.set_nonblocking(true).unwrap();
        let chunk = vec![1u8; 64 << 10];
        let deadline = Instant::now() + LIMIT;
        loop {
            let _ = a.write(&chunk);
            let s = h2.stats();
            if s.output_queued() > 0 {
                break;
            }
            assert!(Instant::now() < deadline);
            thread::sleep(Duration::from_millis(1));
        }
        d.store(1, Ordering::SeqCst);
        (a, b)
    });
    let d = done.clone();
    lp.run_every(Duration::from_millis(2), move |lp| {
        if d.load(Ordering::SeqCst) == 1 {
            lp.quit();
        }
    });
    lp.run().unwrap();
    server.stop(&mut lp);
    let _conns = client.join().unwrap();
    let s = handle.stats();
    assert!(at_rest(&s, 2), "{s:#?}");
    assert_eq!(only(s.closes()), vec![("shutdown", 2)], "{s:#?}");
}

#[test]
fn main_loop_accepting_hands_over_and_counts() {
    init_log();
    let server = TestServer::start(|| {
        echo_builder("fc-main", localhost())
            .io_threads(3)
            .accept_mode(duo_net::AcceptMode::MainLoop)
    });
    let mut cs: Vec<TcpStream> = (0..9).map(|_| connect(server.addr())).collect();
    for c in &mut cs {
        util::echo_once(c, b"abc");
    }
    let s = server.wait_for_stats("nine open", |s| s.active == 9);
    assert_eq!(s.handed_over, 9);
    for c in cs {
        drop(c);
    }
    let s = settle(&server, 9);
    assert_eq!(only(s.closes()), vec![("peer", 9)], "{s:#?}");
    server.stop();
}

#[test]
fn user_close_from_another_thread_with_output_queued() {
    init_log();
    let conns = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let c2 = conns.clone();
    let server = TestServer::start(move || {
        echo_builder("fc-user", localhost())
            .io_threads(2)
            .water_marks(64 << 10, 32 << 10)
            .on_connection(move |c| {
                if c.is_connected() {
                    c2.lock().push(c.clone());
                }
            })
    });
    let mut c = connect(server.addr());
    fill(&server, &mut c, 64 << 10);
    for conn in conns.lock().iter() {
        conn.force_close().unwrap();
    }
    let s = settle(&server, 1);
    assert_eq!(only(s.closes()), vec![("user", 1)], "{s:#?}");
    server.stop();
}

#[test]
fn read_back_everything_of_a_slow_reader() {
    init_log();
    let server = TestServer::start(|| {
        echo_builder("fc-slow", localhost())
            .io_threads(1)
            .water_marks(64 << 10, 32 << 10)
    });
    let mut c = connect(server.addr());
    fill(&server, &mut c, 64 << 10);
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let s = settle(&server, 1);
    assert_eq!(s.bytes_in(), s.bytes_out(), "{s:#?}");
    assert_eq!(only(s.closes()), vec![("peer", 1)], "{s:#?}");
    server.stop();
}

#[test]
fn loop_group_stop_with_open_connections() {
    init_log();
    let mut lp = duo_net::EventLoop::new().unwrap();
    let server = echo_builder("fc-group", localhost())
        .io_threads(2)
        .loops(6)
        .start(&mut lp)
        .unwrap();
    let handle = server.clone_handle();
    let addr = server.local_addr();
    let h2 = handle.clone();
    let client = thread::spawn(move || {
        let mut cs: Vec<TcpStream> = (0..12).map(|_| connect(addr)).collect();
        for c in &mut cs {
            util::echo_once(c, b"abc");
        }
        let deadline = Instant::now() + LIMIT;
        while h2.stats().per_loop.iter().map(|l| l.open()).sum::<u64>() != 12 {
            assert!(Instant::now() < deadline);
            thread::sleep(Duration::from_millis(1));
        }
        cs
    });
    let h3 = handle.clone();
    lp.run_every(Duration::from_millis(2), move |lp| {
        if h3.stats().per_loop.iter().map(|l| l.open()).sum::<u64>() == 12 {
            lp.quit();
        }
    });
    lp.run().unwrap();
    let _cs = client.join().unwrap();
    server.stop(&mut lp);
    let s = handle.stats();
    assert!(at_rest(&s, 12), "{s:#?}");
}

#[cfg(feature = "tls")]
mod tls_cases {
    use super::*;
    use duo_net::tls::rustls;
    use util::pki::pki;

    #[test]
    fn tls_failures_and_truncations() {
        init_log();
        let pki = pki();
        let config = pki.server_config();
        let server = TestServer::start(move || {
            echo_builder("fc-tls", localhost())
                .io_threads(2)
                .tls(config)
                .tls_handshake_timeout(Duration::from_millis(200))
                .water_marks(64 << 10, 32 << 10)
        });
        // Plaintext on the TLS port.
        let mut plain = connect(server.addr());
        plain.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        // Silent: the handshake times out.
        let _silent = connect(server.addr());
        settle(&server, 2);
        // A good session, then a close without close_notify.
        let (mut sock, mut conn) = pki.handshaken(server.addr());
        {
            let mut st = rustls::Stream::new(&mut conn, &mut sock);
            st.write_all(b"hello").unwrap();
            let mut back = [0u8; 5];
            st.read_exact(&mut back).unwrap();
        }
        drop(sock);
        let s = settle(&server, 3);
        assert_eq!(only(s.closes()), vec![("tls", 3)], "{s:#?}");
        // A session that queues output and resets.
        let (mut sock, mut conn) = pki.handshaken(server.addr());
        sock.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + LIMIT;
        let chunk = vec![3u8; 16 << 10];
        loop {
            let st = server.stats();
            if st.per_loop.iter().map(|l| l.backpressured).sum::<u64>() == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "{st:#?}");
            if !conn.wants_write() {
                conn.writer().write_all(&chunk).unwrap();
            }
            let _ = conn.write_tls(&mut sock);
            thread::sleep(Duration::from_millis(1));
        }
        reset(sock);
        let s = settle(&server, 4);
        assert_eq!(only(s.closes()), vec![("error", 1), ("tls", 3)], "{s:#?}");
        server.stop();
    }
}

#[test]
fn a_storm_of_mixed_closes_comes_back_to_rest() {
    init_log();
    for (round, loops) in [(0u64, 0usize), (1, 5), (2, 0), (3, 3)] {
        let pool = duo_net::BufPool::new(duo_net::PoolConfig::default());
        let mut server = TestServer::start(move || {
            let b = TcpServer::builder("fc-storm", localhost())
                .io_threads(2)
                .buffer_pool(pool)
                .idle_timeout(Duration::from_millis(300))
                .max_input(16 << 10)
                .water_marks(32 << 10, 16 << 10)
                .output_limit(1 << 20, OutputLimit::Close)
                .close_linger(Duration::from_millis(200))
                .on_message(|ctx, input| {
                    let p = input.peek();
                    if p.starts_with(b"q") {
                        ctx.close_after_flush();
                    } else if p.starts_with(b"k") {
                        ctx.force_close();
                    } else if p.starts_with(b"p") {
                        panic!("asked");
                    } else if p.starts_with(b"h") {
                        // hold: consume nothing until max_input
                        return;
                    } else if p.starts_with(b"s") {
                        ctx.stop_reading();
                    } else {
                        let data = input.peek().to_vec();
                        ctx.send(&data);
                        ctx.send(&data);
                    }
                    input.consume_all();
                });
            if loops > 0 {
                b.loops(loops)
            } else {
                b
            }
        });
        let addr = server.addr();
        let mut rng = duo_testkit::Rng::new(round + 7);
        let mut keep = Vec::new();
        let mut threads = Vec::new();
        for i in 0..40 {
            let kind = rng.below(9);
            let t = thread::spawn(move || -> Option<TcpStream> {
                let mut c = TcpStream::connect(addr).ok()?;
                c.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let big = vec![b'x'; 200 << 10];
                match kind {
                    0 => {
                        let _ = c.write_all(b"echo");
                        let mut b = [0u8; 8];
                        let _ = c.read_exact(&mut b);
                        None
                    }
                    1 => {
                        let _ = c.write_all(&big);
                        reset(c);
                        None
                    }
                    2 => {
                        let _ = c.write_all(b"q");
                        let _ = c.write_all(&big);
                        Some(c)
                    }
                    3 => {
                        let _ = c.write_all(b"k");
                        None
                    }
                    4 => {
                        let _ = c.write_all(b"p");
                        None
                    }
                    5 => {
                        let _ = c.write_all(b"h");
                        let _ = c.write_all(&big);
                        None
                    }
                    6 => {
                        let _ = c.write_all(b"s");
                        let _ = c.write_all(&big[..1000]);
                        let _ = c.shutdown(std::net::Shutdown::Write);
                        Some(c)
                    }
                    7 => {
                        c.set_nonblocking(true).unwrap();
                        for _ in 0..200 {
                            let _ = c.write(&big[..64 << 10]);
                            thread::sleep(Duration::from_micros(200));
                        }
                        if i % 2 == 0 {
                            reset(c);
                            None
                        } else {
                            Some(c)
                        }
                    }
                    _ => Some(c),
                }
            });
            threads.push(t);
        }
        for t in threads {
            if let Some(c) = t.join().unwrap() {
                keep.push(c);
            }
        }
        server.shutdown_and_join(Duration::from_millis(400));
        let s = server.stats();
        assert!(at_rest(&s, s.accepted), "round {round}: {s:#?}");
        let ps = pool.stats();
        assert!(
            ps.classes.iter().all(|c| c.in_use == 0),
            "round {round}: pool {ps:#?}"
        );
        drop(keep);
    }
}

#[test]
fn a_single_reactor_stopped_with_open_and_backpressured_connections() {
    init_log();
    let mut lp = duo_net::EventLoop::new().unwrap();
    let server = echo_builder("fc-single", localhost())
        .io_threads(0)
        .water_marks(64 << 10, 32 << 10)
        .start(&mut lp)
        .unwrap();
    let handle = server.clone_handle();
    let addr = server.local_addr();
    // Set by the main loop once it has seen both connections, one of them backpressured.
    let c = Arc::new(AtomicUsize::new(0));
    let seen = c.clone();
    let client = thread::spawn(move || {
        let mut a = connect(addr);
        let b = connect(addr);
        a.set_nonblocking(true).unwrap();
        let chunk = vec![1u8; 64 << 10];
        let deadline = Instant::now() + LIMIT;
        while seen.load(Ordering::SeqCst) == 0 {
            let _ = a.write(&chunk);
            assert!(Instant::now() < deadline, "never backpressured");
            thread::sleep(Duration::from_millis(1));
        }
        (a, b)
    });
    let c2 = c.clone();
    let h3 = handle.clone();
    lp.run_every(Duration::from_millis(2), move |lp| {
        let s = h3.stats();
        if s.per_loop.iter().map(|l| l.backpressured).sum::<u64>() == 1 && s.active == 2 {
            c2.store(1, Ordering::SeqCst);
            lp.quit();
        }
    });
    lp.run().unwrap();
    assert_eq!(c.load(Ordering::SeqCst), 1);
    server.stop(&mut lp);
    let _conns = client.join().unwrap();
    let s = handle.stats();
    assert!(at_rest(&s, 2), "{s:#?}");
    assert_eq!(only(s.closes()), vec![("shutdown", 2)], "{s:#?}");
}
