//! Servers on more loops than I/O threads (`ServerBuilder::loops`, a `LoopGroup`) combined
//! with the rest of duo-net: work handed from one loop's callback to another loop the same
//! thread runs, a graceful shutdown over 64 loops, a thread held in one loop's callback
//! while its other loops have connections, idle timeouts and timers due, a panic that ends
//! one loop, sends from other threads, and every feature on at once under churn.

mod util;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use duo_net::{LoopHandle, LoopSharing, TcpConnection, TcpServer, WhenFull};
use duo_reactor::LoopGroup;
use duo_testkit::{join_within, wait_until, LIMIT};
use util::{connect, hold_loop, init_log, localhost, TestServer};

const SHARINGS: [LoopSharing; 2] = [LoopSharing::Owned, LoopSharing::Any];

/// An inherited listener: the main loop accepts and hands connections round robin, so
/// the k-th connection (made one after another) is on loop `k % loops`.
fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// Echoes, and answers "?" with the name of the loop serving the connection and '\n'.
fn echo_or_name(ctx: &mut duo_net::ConnCtx<'_>, input: &mut duo_net::InputBuffer) {
    if input.peek() == b"?" {
        let name = format!("{}\n", ctx.event_loop().name());
        ctx.send(name.as_bytes());
    } else {
        ctx.send(input.peek());
    }
    input.consume_all();
}

/// Asks the server which loop serves `s`.
fn loop_of(s: &mut TcpStream) -> String {
    s.write_all(b"?").unwrap();
    let mut name = Vec::new();
    let mut b = [0u8; 1];
    loop {
        s.read_exact(&mut b).expect("the loop's name");
        if b[0] == b'\n' {
            return String::from_utf8(name).unwrap();
        }
        name.push(b[0]);
    }
}

fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("the echo");
    assert_eq!(back, msg);
}

/// Reads until the server closes (end of stream or reset).
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => return util::is_peer_close(&e),
        }
    }
}

/// From a callback of loop 0, on the thread that runs every loop: work queued to loop 1
/// runs there (as loop 1's thread, not loop 0's), a timer set on loop 2 fires there, and
/// a quit of loop 1 ends loop 1 alone (the thread is not loop 1's, so it wakes it).
#[test]
fn work_handed_to_another_loop_from_a_callback_on_the_same_thread_runs_on_that_loop() {
    init_log();
    for sharing in SHARINGS {
        let group = LoopGroup::start_sharing("same-thread", 1, 3, sharing, None).unwrap();
        let h: Vec<LoopHandle> = group.handles().to_vec();
        let (tx, rx) = mpsc::channel();
        let (h0, h1, h2) = (h[0].clone(), h[1].clone(), h[2].clone());
        h[0].queue_in_loop(move |lp| {
            let here = (
                lp.name().to_owned(),
                h0.is_in_loop_thread(),
                h1.is_in_loop_thread(),
            );
            let _ = tx.send(here);
            let (tx1, h0b, h1b) = (tx.clone(), h0.clone(), h1.clone());
            h1.queue_in_loop(move |lp| {
                let _ = tx1.send((
                    lp.name().to_owned(),
                    h1b.is_in_loop_thread(),
                    h0b.is_in_loop_thread(),
                ));
            })
            .unwrap();
            let tx2 = tx.clone();
            let (h2b, h0c) = (h2.clone(), h0.clone());
            h2.run_after(Duration::from_millis(5), move |lp| {
                let _ = tx2.send((
                    lp.name().to_owned(),
                    h2b.is_in_loop_thread(),
                    h0c.is_in_loop_thread(),
                ));
            })
            .unwrap();
        })
        .unwrap();
        let mut got: Vec<_> = (0..3).map(|_| rx.recv_timeout(LIMIT).unwrap()).collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("same-thread-0".to_owned(), true, false),
                ("same-thread-1".to_owned(), true, false),
                ("same-thread-2".to_owned(), true, false),
            ],
            "{sharing:?}"
        );
        let h1 = h[1].clone();
        h[0].queue_in_loop(move |_| h1.quit()).unwrap();
        let h1 = h[1].clone();
        wait_until("loop 1 to end", || h1.is_closed());
        assert!(!h[0].is_closed() && !h[2].is_closed());
        util::barrier(&h[2]);
        group.stop().unwrap();
    }
}

/// 64 loops on 2 threads, two connections on each: a graceful shutdown tells each
/// connection once, completes as soon as the clients have closed (long before the
/// grace period), and leaves none of the server's loops in the process's list.
#[test]
fn a_graceful_shutdown_over_64_loops_on_2_threads_tells_everyone_once_and_completes() {
    init_log();
    const LOOPS: usize = 64;
    const CONNS: usize = 2 * LOOPS;
    for sharing in SHARINGS {
        let told: Arc<Mutex<HashMap<u64, usize>>> = Arc::default();
        let t = told.clone();
        let l = listener();
        let mut server = TestServer::start(move || {
            TcpServer::builder_on("g64", l)
                .unwrap()
                .io_threads(2)
                .loops(LOOPS)
                .loop_sharing(sharing)
                .on_message(echo_or_name)
                .on_shutdown(move |ctx| {
                    *t.lock().unwrap().entry(ctx.connection().id()).or_default() += 1;
                    ctx.shutdown();
                })
        });
        let mut clients: Vec<TcpStream> = (0..CONNS).map(|_| connect(server.addr())).collect();
        let mut per_loop: HashMap<String, usize> = HashMap::new();
        for c in &mut clients {
            *per_loop.entry(loop_of(c)).or_default() += 1;
        }
        assert_eq!(per_loop.len(), LOOPS, "{sharing:?}: {per_loop:?}");
        let grace = Duration::from_secs(30);
        let start = Instant::now();
        server.handle().shutdown(grace, |lp| lp.quit());
        for c in &mut clients {
            assert!(
                closed_by_server(c),
                "{sharing:?}: half-closed by the shutdown"
            );
        }
        drop(clients);
        server.join_within(LIMIT);
        assert!(
            start.elapsed() < LIMIT,
            "{sharing:?}: waited for the grace period"
        );
        let told = told.lock().unwrap().clone();
        assert_eq!(told.len(), CONNS, "{sharing:?}");
        assert!(told.values().all(|&n| n == 1), "{sharing:?}: {told:?}");
        let stats = server.stats();
        assert_eq!((stats.accepted, stats.closed, stats.active), (128, 128, 0));
        drop(server);
        let left: Vec<String> = duo_net::loops()
            .iter()
            .map(|h| h.name().to_owned())
            .filter(|n| n.starts_with("g64-"))
            .collect();
        assert!(left.is_empty(), "{sharing:?}: {left:?}");
    }
}

/// 4 loops on 2 threads: thread 0 owns loops 0 and 2 ([`LoopSharing::Owned`]). A
/// callback of loop 0 holds thread 0; loop 2's connections are served meanwhile (helped
/// turns), its idle timeout closes a silent one and a timer set on it fires; the held
/// loop counts as busy and the others do not. With [`LoopSharing::Any`] the free thread
/// runs them anyway.
#[test]
fn a_thread_held_in_one_loop_leaves_its_other_loops_served_with_idle_timeouts_and_timers() {
    init_log();
    for sharing in SHARINGS {
        let loops: Arc<Mutex<Vec<LoopHandle>>> = Arc::default();
        let seen = loops.clone();
        let l = listener();
        let server = TestServer::start(move || {
            TcpServer::builder_on("held", l)
                .unwrap()
                .io_threads(2)
                .loops(4)
                .loop_sharing(sharing)
                // Long against the busy connection's pace (an echo every 5 ms or so, and
                // the set-up between its first echo and the last): a test thread that loses
                // its core for a while on a loaded host must not make it idle.
                .idle_timeout(Duration::from_secs(1))
                .thread_init(move |lp| seen.lock().unwrap().push(lp.handle()))
                .on_message(echo_or_name)
        });
        let loops = loops.lock().unwrap().clone();
        let by_name = |n: &str| loops.iter().find(|h| h.name() == n).unwrap().clone();
        let (l0, l2) = (by_name("held-0"), by_name("held-2"));
        let mut c: Vec<TcpStream> = (0..8).map(|_| connect(server.addr())).collect();
        let names: Vec<String> = c.iter_mut().map(loop_of).collect();
        let on_2: Vec<usize> = (0..8).filter(|&i| names[i] == "held-2").collect();
        let (busy, silent) = (on_2[0], on_2[1]);
        let helped_before = l2.metrics().helped_turns;
        let release = hold_loop(&l0);
        let held_at = Instant::now();
        assert!(
            l0.metrics().busy_for.is_some(),
            "{sharing:?}: the held loop is busy"
        );
        let (tx, fired) = mpsc::channel();
        l2.run_after(Duration::from_millis(20), move |lp| {
            let _ = tx.send(lp.name().to_owned());
        })
        .unwrap();
        assert_eq!(fired.recv_timeout(LIMIT).unwrap(), "held-2", "{sharing:?}");
        // The busy connection keeps talking (and so stays open) while its silent
        // neighbour times out.
        c[silent]
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let mut round = 0u8;
        loop {
            echo(&mut c[busy], &[round; 100]);
            round = round.wrapping_add(1);
            let mut b = [0u8; 1];
            match c[silent].read(&mut b) {
                Ok(0) => break,
                Ok(_) => panic!("{sharing:?}: nothing was sent to the silent connection"),
                Err(e) if util::is_peer_close(&e) => break,
                Err(_) => assert!(held_at.elapsed() < LIMIT, "{sharing:?}: idle timeout"),
            }
        }
        let held_for = held_at.elapsed();
        assert!(l0.metrics().busy_for.is_some(), "{sharing:?}: still held");
        // (Loop 2 is busy only during its turns, which its idle wheel's tick brings.)
        wait_until("loop 2 between turns", || l2.metrics().busy_for.is_none());
        if sharing == LoopSharing::Owned {
            assert!(l2.metrics().helped_turns > helped_before, "{sharing:?}");
        }
        drop(release);
        echo(&mut c[busy], b"after");
        let on_0 = names.iter().position(|n| n == "held-0").unwrap();
        // Silent all along too: its idle timeout closes it once its loop runs again.
        assert!(closed_by_server(&mut c[on_0]), "{sharing:?}");
        assert!(held_for < LIMIT, "{sharing:?}: {held_for:?}");
        assert_eq!(server.stats().per_loop[2].closes.idle, 1, "{sharing:?}");
        server.stop();
    }
}

/// A panic out of a function queued on a group's loop through its handle (not a duo-net
/// callback, which is caught) ends that loop alone: its connections are dropped and
/// counted closed, the other loops serve on, and a graceful shutdown completes.
#[test]
fn a_panic_that_ends_one_loop_of_a_group_leaves_the_others_serving_and_counts_exact() {
    init_log();
    for sharing in SHARINGS {
        let l = listener();
        let mut server = TestServer::start(move || {
            TcpServer::builder_on("pan", l)
                .unwrap()
                .io_threads(2)
                .loops(4)
                .loop_sharing(sharing)
                .on_message(|ctx, input| {
                    if input.peek() == b"panic" {
                        input.consume_all();
                        let _ = ctx
                            .connection()
                            .loop_handle()
                            .queue_in_loop(|_| panic!("a function queued on the loop"));
                    } else {
                        echo_or_name(ctx, input);
                    }
                })
        });
        let mut c: Vec<TcpStream> = (0..8).map(|_| connect(server.addr())).collect();
        let names: Vec<String> = c.iter_mut().map(loop_of).collect();
        let dead = names[0].clone();
        c[0].write_all(b"panic").unwrap();
        for (i, s) in c.iter_mut().enumerate() {
            if names[i] == dead {
                assert!(closed_by_server(s), "{sharing:?}: dropped with its loop");
            }
        }
        for (i, s) in c.iter_mut().enumerate() {
            if names[i] != dead {
                echo(s, b"still served");
            }
        }
        let h = server.handle().clone();
        wait_until("the dead loop's connections counted", || {
            h.stats().active == 6
        });
        let start = Instant::now();
        h.shutdown(LIMIT, |lp| lp.quit());
        for (i, s) in c.iter_mut().enumerate() {
            if names[i] != dead {
                assert!(closed_by_server(s), "{sharing:?}");
            }
        }
        drop(c);
        server.join_within(LIMIT);
        assert!(start.elapsed() < LIMIT, "{sharing:?}");
        let stats = h.stats();
        assert_eq!((stats.accepted, stats.closed, stats.active), (8, 8, 0));
        let per_loop_closed: u64 = stats.per_loop.iter().map(|l| l.closes.total()).sum();
        assert_eq!(per_loop_closed, 8, "{sharing:?}: {stats:?}");
    }
}

/// Four threads send to sixteen connections on eight loops (`TcpConnection::send`, each
/// a queued function on the connection's loop): every byte arrives, in order per
/// connection, and the loops' figures add up.
#[test]
fn sends_from_other_threads_reach_connections_on_every_loop() {
    init_log();
    for sharing in SHARINGS {
        let conns: Arc<Mutex<Vec<TcpConnection>>> = Arc::default();
        let seen = conns.clone();
        let l = listener();
        let server = TestServer::start(move || {
            TcpServer::builder_on("snd", l)
                .unwrap()
                .io_threads(2)
                .loops(8)
                .loop_sharing(sharing)
                .on_connection(move |c| {
                    if c.is_connected() {
                        seen.lock().unwrap().push(c.clone());
                    }
                })
                .on_message(|_, input| input.consume_all())
        });
        let mut clients: Vec<TcpStream> = (0..16).map(|_| connect(server.addr())).collect();
        wait_until("16 connections up", || conns.lock().unwrap().len() == 16);
        let targets = conns.lock().unwrap().clone();
        let senders: Vec<_> = (0..4u8)
            .map(|t| {
                let targets = targets.clone();
                std::thread::spawn(move || {
                    for i in 0..100u8 {
                        for k in &targets {
                            k.send(vec![t, i]).unwrap();
                        }
                    }
                })
            })
            .collect();
        for s in senders {
            join_within("a sender", s);
        }
        for s in &mut clients {
            let mut got = vec![0u8; 800];
            s.read_exact(&mut got).unwrap();
            let mut next = [0u8; 4];
            for pair in got.chunks(2) {
                let t = usize::from(pair[0]);
                assert_eq!(pair[1], next[t], "{sharing:?}: per-sender order");
                next[t] += 1;
            }
        }
        let h = server.handle().clone();
        wait_until("every byte counted", || {
            h.stats().per_loop.iter().map(|l| l.bytes_out).sum::<u64>() == 16 * 800
        });
        assert!(
            h.stats().per_loop.iter().all(|l| l.opened == 2),
            "{sharing:?}"
        );
        server.stop();
    }
}

/// Churn with everything on: 16 loops on 2 threads, both sharings, busy polling on and
/// off, an idle timeout, a connection limit that pauses accepting, buffer trimming and
/// water marks. The counts come out exact and the per-loop gauges back at zero. A client
/// that talks may be closed by the idle timeout too when the machine is loaded (its
/// thread not run for that long): then it must have been silent that long, and the close
/// is counted as an idle one; it goes on with a new connection.
#[test]
fn churn_with_idle_timeouts_limits_trimming_and_backpressure_keeps_counts_exact() {
    init_log();
    for sharing in SHARINGS {
        for busy in [Duration::ZERO, Duration::from_micros(50)] {
            churn(sharing, busy);
        }
    }
}

/// The idle timeout of the churn server. Short, so that the silent clients are closed
/// quickly; a client that talks can be closed by it too on a loaded machine (a thread of
/// the test not run for that long), which [`util::echo_unless_closed`]'s caller checks.
const CHURN_IDLE: Duration = Duration::from_millis(100);

/// The earliest an idle close can come after the server's last traffic on a connection:
/// the timeout less one tick of the idle wheel (1/8 of it). The wheel's ticks are a
/// repeating timer; when a loop runs one late, after reading the connection in the same
/// turn, the read lands in the bucket that tick was about to close, which then expires a
/// tick sooner than the timeout.
const CHURN_IDLE_AT_LEAST: Duration = Duration::from_micros(87_500);

fn churn(sharing: LoopSharing, busy: Duration) {
    let told = Arc::new(AtomicUsize::new(0));
    let t = told.clone();
    let server = TestServer::start(move || {
        TcpServer::builder("all", localhost())
            .io_threads(2)
            .loops(16)
            .loop_sharing(sharing)
            .busy_poll(busy)
            .idle_timeout(CHURN_IDLE)
            .max_connections(40)
            .when_full(WhenFull::Pause)
            .buffer_trim_interval(Duration::from_millis(20))
            .water_marks(64 << 10, 16 << 10)
            .on_shutdown(move |ctx| {
                t.fetch_add(1, Ordering::SeqCst);
                ctx.shutdown();
            })
            .on_message(|ctx, input| {
                ctx.send(input.peek());
                input.consume_all();
            })
    });
    let addr = server.addr();
    let deadline = Instant::now() + Duration::from_millis(600);
    // Each worker returns how many of its connections the server closed.
    let workers: Vec<_> = (0..6usize)
        .map(|w| {
            std::thread::spawn(move || {
                let mut closed = 0u64;
                'conn: while Instant::now() < deadline {
                    // The last moment the server surely had traffic from this connection
                    // after: its connect, then the start of each message it echoed whole
                    // (it read that message's end after this). An idle close comes at least
                    // `CHURN_IDLE_AT_LEAST` after the server's last traffic, so not before
                    // this plus that: a close any earlier is not the idle timeout's.
                    let mut since = Instant::now();
                    let mut s = connect(addr);
                    for r in 0..(w + 1) * 3 {
                        let msg = vec![(r % 251) as u8; 1 + (r * 4099) % 100_000];
                        let start = Instant::now();
                        if !util::echo_unless_closed(&mut s, &msg) {
                            // Under load this client went unrun for the idle timeout.
                            let quiet = since.elapsed();
                            assert!(
                                quiet >= CHURN_IDLE_AT_LEAST,
                                "closed mid-echo after {quiet:?}"
                            );
                            closed += 1;
                            continue 'conn;
                        }
                        since = start;
                    }
                    if w % 3 == 0 {
                        // Left silent: the idle timeout closes it.
                        assert!(closed_by_server(&mut s));
                        let quiet = since.elapsed();
                        assert!(
                            quiet >= CHURN_IDLE_AT_LEAST,
                            "closed silent after {quiet:?}"
                        );
                        closed += 1;
                    }
                }
                closed
            })
        })
        .collect();
    let closed_by_idle: u64 = workers
        .into_iter()
        .map(|w| join_within("a client", w))
        .sum();
    let h = server.handle().clone();
    wait_until("every connection closed", || h.stats().active == 0);
    let st = h.stats();
    assert_eq!(st.accepted, st.closed, "{sharing:?} {busy:?}: {st:?}");
    let per_loop_closed: u64 = st.per_loop.iter().map(|l| l.closes.total()).sum();
    assert_eq!(per_loop_closed, st.closed, "{sharing:?} {busy:?}");
    // Every connection the clients saw the server close, it closed for the idle timeout
    // (and perhaps others besides, idle between a client's last echo and its close).
    let idle = st.closes().idle;
    assert!(
        idle >= closed_by_idle,
        "{sharing:?} {busy:?}: {idle} < {closed_by_idle}"
    );
    for l in &st.per_loop {
        assert_eq!((l.output_queued, l.backpressured), (0, 0), "{l:?}");
    }
    assert_eq!(told.load(Ordering::SeqCst), 0, "no shutdown yet");
    server.stop();
}
