//! A connection whose capped buffer pool refuses its input buffer's growth for the moment
//! (written in review round 12: the buffer area's review, then a second look at its fix).
//!
//! A message callback that waits for a whole message leaves the input in the buffer; past
//! 64 KiB of it, a read whose growth the pool refused dropped the bytes it had taken from
//! the kernel (which the kernel had acknowledged to the peer) and closed the connection
//! `OutOfMemory`, although the pool was full only because another user held memory for a
//! while. Now a read never takes bytes it cannot keep: the connection stops reading (the
//! peer is slowed by TCP flow control) and tries again every 20 ms, and the message is
//! delivered whole once memory is free; over TLS too, once up, without calling the message
//! callback again for input it already saw.
//!
//! - Input that could never fit closes `OutOfMemory` at once: a block larger than the
//!   whole cap, or one that, beside the block the connection holds while its contents
//!   move, exceeds it (nobody else frees that memory).
//! - Connections that each hold a block while waiting for a bigger one can wait for each
//!   other's memory for ever (as can one whose peer reset meanwhile): a wait with no
//!   delivery for 2 s gives up (`OutOfMemory`), freeing memory for the others; time spent
//!   paused does not count.
//!
//! Also checked (no defect): a send from another thread, counted against the output limit
//! while in transit, that the loop drops because the connection closed first keeps its
//! count, but the count belongs to that connection alone, which refuses every later send
//! before counting, so neither the loop's `output_queued`, nor the pool, nor another
//! connection sees it.

mod util;

use std::io::{Read, Write};
use std::thread;
use std::time::Instant;

use duo_buffer::{BufPool, PoolConfig};
use std::sync::{Arc, Mutex};

use duo_net::{OutputLimit, TcpConnection, TcpServer};
use duo_testkit::{join_before, wait_until, LIMIT};
use util::{connect, hold_loop, init_log, localhost, TestServer};

const K: usize = 1 << 10;

/// The stream's byte at position `i`.
fn byte_at(i: usize) -> u8 {
    (i % 251) as u8
}

/// A server whose callback answers `OK` to each whole `msg`-byte message (checking its
/// bytes), over TLS if `tls` is given.
fn whole_message_server(
    pool: BufPool,
    msg: usize,
    edge_triggered: bool,
    #[cfg(feature = "tls")] tls: Option<std::sync::Arc<duo_net::tls::rustls::ServerConfig>>,
) -> TestServer {
    TestServer::start(move || {
        let builder = TcpServer::builder("round12-fixes", localhost())
            .io_threads(1)
            .edge_triggered(edge_triggered)
            .max_input(1 << 20)
            .buffer_pool(pool)
            .on_message(move |ctx, input| {
                if input.len() < msg {
                    return;
                }
                let intact = input.peek()[..msg]
                    .iter()
                    .enumerate()
                    .all(|(i, &b)| b == byte_at(i));
                ctx.send(if intact { b"OK" } else { b"NO" });
                input.consume(msg);
            });
        #[cfg(feature = "tls")]
        let builder = match tls {
            Some(config) => builder.tls(config),
            None => builder,
        };
        builder
    })
}

/// A pool capped at `cap` bytes, without thread caches (every block counts at once).
fn capped(cap: usize) -> BufPool {
    BufPool::new(PoolConfig {
        memory_cap: Some(cap),
        thread_cache_bytes: 0,
    })
}

/// [`whole_message_server`] over plain TCP.
fn plain_server(pool: BufPool, msg: usize, edge_triggered: bool) -> TestServer {
    whole_message_server(
        pool,
        msg,
        edge_triggered,
        #[cfg(feature = "tls")]
        None,
    )
}

fn out_of_memory_closes(server: &TestServer) -> u64 {
    server
        .stats()
        .per_loop
        .iter()
        .map(|l| l.closes.out_of_memory)
        .sum()
}

/// The first two bytes of plaintext the server answers (fewer if the stream ends first).
#[cfg(feature = "tls")]
fn tls_answer(
    sock: &mut std::net::TcpStream,
    conn: &mut duo_net::tls::rustls::ClientConnection,
) -> Vec<u8> {
    let mut answer = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while answer.len() < 2 && Instant::now() < deadline {
        let mut buf = [0u8; 16];
        match conn.reader().read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
        match conn.read_tls(sock) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if conn.process_new_packets().is_err() {
                    break;
                }
            }
        }
    }
    answer
}

/// Sends one `msg`-byte message from a thread of its own (the kernel may not take it all
/// at once) and returns the first two bytes of the answer, or what ended the wait.
fn send_message(server: &TestServer, msg: usize) -> (thread::JoinHandle<()>, std::net::TcpStream) {
    let s = connect(server.addr());
    let mut w = s.try_clone().unwrap();
    let wire: Vec<u8> = (0..msg).map(byte_at).collect();
    let writer = thread::spawn(move || {
        let _ = w.write_all(&wire);
    });
    s.set_read_timeout(Some(LIMIT)).unwrap();
    (writer, s)
}

#[test]
fn a_read_the_full_pool_refuses_waits_for_memory_and_loses_nothing() {
    init_log();
    for edge_triggered in [true, false] {
        let pool = capped(2 << 20);
        // Another user holds half of the cap for a while.
        let hog = pool.alloc(1 << 20).unwrap();
        let msg = 300 * K;
        let server = plain_server(pool, msg, edge_triggered);
        let (writer, mut s) = send_message(&server, msg);
        // 300 KiB of input need a 1 MiB block, which does not fit beside the hog.
        wait_until("the pool to refuse the connection's growth", || {
            pool.stats().refused > 0
        });
        drop(hog);
        let mut answer = [0u8; 2];
        let got = s.read_exact(&mut answer);
        assert!(
            got.is_ok(),
            "et={edge_triggered}: no answer ({got:?}); closes for memory: {}",
            out_of_memory_closes(&server)
        );
        assert_eq!(
            &answer, b"OK",
            "et={edge_triggered}: the message arrived damaged"
        );
        join_before(Instant::now() + LIMIT, "the writer", writer);
        drop(s);
        wait_until("the connection to close", || server.stats().active == 0);
        assert_eq!(pool.stats().allocated_bytes - pool.stats().free_bytes(), 0);
        server.stop();
    }
}

#[test]
fn input_that_can_never_fit_under_the_cap_closes_at_once() {
    init_log();
    let pool = capped(512 * K);
    // 700 KiB need a 1 MiB block: more than the whole cap.
    let msg = 700 * K;
    let server = plain_server(pool, msg, true);
    let (writer, mut s) = send_message(&server, msg);
    wait_until("the connection to close for lack of memory", || {
        out_of_memory_closes(&server) == 1
    });
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "no answer: {rest:?}");
    drop(s);
    join_before(Instant::now() + LIMIT, "the writer", writer);
    server.stop();
}

#[test]
fn a_send_in_transit_when_the_connection_closes_leaves_nothing_counted() {
    init_log();
    let pool = BufPool::new(PoolConfig::default());
    let conns: Arc<Mutex<Vec<TcpConnection>>> = Arc::default();
    let seen = conns.clone();
    let server = TestServer::start(move || {
        TcpServer::builder("round12-transit", localhost())
            .io_threads(1)
            .buffer_pool(pool)
            .output_limit(64 * K, OutputLimit::Discard)
            .on_connection(move |c| {
                if c.is_connected() {
                    seen.lock().unwrap().push(c.clone());
                }
            })
            .on_message(|_, input| input.consume_all())
    });
    for round in 0..2 {
        let s = connect(server.addr());
        wait_until("the connection", || {
            conns.lock().unwrap().len() == round + 1
        });
        let conn = conns.lock().unwrap()[round].clone();
        // The close is queued first, the send after it: the loop runs them in that order.
        let release = hold_loop(conn.loop_handle());
        conn.force_close().unwrap();
        conn.send(vec![7u8; 48 * K]).unwrap();
        drop(release);
        wait_until("the close", || conn.is_closed());
        assert!(conn.send(vec![7u8; 16]).is_err(), "round {round}");
        let stats = server.stats();
        assert_eq!(stats.per_loop[0].output_queued, 0, "round {round}");
        assert_eq!(pool.stats().in_use_blocks(), 0, "round {round}");
        drop(s);
    }
    // A later connection on the same loop, pool and limit is served in full.
    let mut s = connect(server.addr());
    wait_until("the third connection", || conns.lock().unwrap().len() == 3);
    let conn = conns.lock().unwrap()[2].clone();
    conn.send(vec![9u8; 60 * K]).unwrap();
    let mut got = vec![0u8; 60 * K];
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.read_exact(&mut got).unwrap();
    assert!(got.iter().all(|&b| b == 9));
    server.stop();
}

/// 300 KiB of unconsumed input live in a 256 KiB block that must grow to 1 MiB: under a
/// 1 MiB cap, the 256 KiB it holds plus the 1 MiB it asks for never fit, whoever frees
/// what. Before the fix the connection waited forever (the peer got neither an answer
/// nor a close, and `wait_until` below ran out).
#[test]
fn input_whose_own_block_keeps_the_growth_from_ever_fitting_closes() {
    init_log();
    for edge_triggered in [true, false] {
        let pool = capped(1 << 20);
        let msg = 300 * K;
        let server = plain_server(pool, msg, edge_triggered);
        let (writer, mut s) = send_message(&server, msg);
        wait_until("the connection to close for lack of memory", || {
            out_of_memory_closes(&server) == 1
        });
        s.set_read_timeout(Some(LIMIT)).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "et={edge_triggered}: no answer: {rest:?}");
        drop(s);
        join_before(Instant::now() + LIMIT, "the writer", writer);
        wait_until("the pool to get everything back", || {
            pool.stats().in_use_blocks() == 0
        });
        server.stop();
    }
}

/// Over TLS, as over plain TCP: another user holds half of a 2 MiB cap while a 300 KiB
/// message needs its input to grow to a 1 MiB block. The connection waits until the hog
/// lets go, then the message arrives whole. Before the fix it closed `OutOfMemory` at
/// the refusal, and the client read the end of the stream instead of `OK`.
#[cfg(feature = "tls")]
#[test]
fn over_tls_a_read_the_full_pool_refuses_waits_for_memory_and_loses_nothing() {
    init_log();
    let pki = util::pki::pki();
    for edge_triggered in [true, false] {
        let pool = capped(2 << 20);
        let hog = pool.alloc(1 << 20).unwrap();
        let msg = 300 * K;
        let server = whole_message_server(pool, msg, edge_triggered, Some(pki.server_config()));
        let (mut sock, mut conn) = pki.handshaken(server.addr());
        let plain: Vec<u8> = (0..msg).map(byte_at).collect();
        conn.set_buffer_limit(None);
        conn.writer().write_all(&plain).unwrap();
        let wire = util::pki::records(&mut conn);
        let mut w = sock.try_clone().unwrap();
        let writer = thread::spawn(move || {
            let _ = w.write_all(&wire);
        });
        wait_until("the pool to refuse the connection's growth", || {
            pool.stats().refused > 0 || out_of_memory_closes(&server) > 0
        });
        drop(hog);
        let answer = tls_answer(&mut sock, &mut conn);
        assert_eq!(
            answer,
            b"OK",
            "et={edge_triggered}: closes for memory: {}",
            out_of_memory_closes(&server)
        );
        join_before(Instant::now() + LIMIT, "the writer", writer);
        drop(sock);
        wait_until("the connection to close", || server.stats().active == 0);
        assert_eq!(out_of_memory_closes(&server), 0);
        server.stop();
    }
}

/// While a TLS connection waits for memory, the message callback is not called again
/// with the input it already saw (nothing new came): the retries every 20 ms pump what
/// rustls holds, as plain TCP's retries read, and deliver only what is new. (Written with
/// the TLS wait: its first version re-delivered the unchanged input at every retry.)
#[cfg(feature = "tls")]
#[test]
fn over_tls_waiting_for_memory_does_not_call_the_callback_again_for_nothing() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    init_log();
    let pki = util::pki::pki();
    for edge_triggered in [true, false] {
        let pool = capped(2 << 20);
        let hog = pool.alloc(1 << 20).unwrap();
        let msg = 300 * K;
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let config = pki.server_config();
        let server = TestServer::start(move || {
            TcpServer::builder("round12-fixes-calls", localhost())
                .io_threads(1)
                .edge_triggered(edge_triggered)
                .max_input(1 << 20)
                .buffer_pool(pool)
                .tls(config)
                .on_message(move |ctx, input| {
                    seen.fetch_add(1, Ordering::SeqCst);
                    if input.len() >= msg {
                        ctx.send(b"OK");
                        input.consume(msg);
                    }
                })
        });
        let (mut sock, mut conn) = pki.handshaken(server.addr());
        conn.set_buffer_limit(None);
        let plain: Vec<u8> = (0..msg).map(byte_at).collect();
        conn.writer().write_all(&plain).unwrap();
        let wire = util::pki::records(&mut conn);
        let mut w = sock.try_clone().unwrap();
        let writer = thread::spawn(move || {
            let _ = w.write_all(&wire);
        });
        wait_until("the pool to refuse the connection's growth", || {
            pool.stats().refused > 0 || out_of_memory_closes(&server) > 0
        });
        let before = calls.load(Ordering::SeqCst);
        let refused = pool.stats().refused;
        // Several retries, each refused again.
        wait_until("five more refusals", || pool.stats().refused >= refused + 5);
        let after = calls.load(Ordering::SeqCst);
        // At most one delivery of what was fresh when the wait began.
        assert!(
            after <= before + 1,
            "et={edge_triggered}: {} calls while waiting",
            after - before
        );
        drop(hog);
        assert_eq!(
            tls_answer(&mut sock, &mut conn),
            b"OK",
            "et={edge_triggered}"
        );
        join_before(Instant::now() + LIMIT, "the writer", writer);
        drop(sock);
        wait_until("the connection to close", || server.stats().active == 0);
        server.stop();
    }
}

/// Plain TCP, waiting for memory with the pool still full: a peer that resets during the
/// wait does not keep the connection (and the memory it holds) for ever: its last bytes
/// wait for memory, and the wait gives up after `POOL_WAIT_LIMIT` (before the fix it
/// stayed open as long as the pool was full); and a pause and resume from another thread
/// during the wait neither loses bytes nor ends the wait early: the message arrives whole
/// once memory frees.
#[test]
fn a_waiting_connection_sees_a_reset_and_survives_pause_and_resume() {
    init_log();
    for edge_triggered in [true, false] {
        let pool = capped(2 << 20);
        let hog = pool.alloc(1 << 20).unwrap();
        let msg = 300 * K;
        let conns: Arc<Mutex<Vec<duo_net::TcpConnection>>> = Arc::default();
        let seen = conns.clone();
        let server = TestServer::start(move || {
            TcpServer::builder("round12-fixes-combo", localhost())
                .io_threads(1)
                .edge_triggered(edge_triggered)
                .max_input(1 << 20)
                .buffer_pool(pool)
                .on_connection(move |c| {
                    if c.is_connected() {
                        seen.lock().unwrap().push(c.clone());
                    }
                })
                .on_message(move |ctx, input| {
                    if input.len() < msg {
                        return;
                    }
                    let intact = input.peek()[..msg]
                        .iter()
                        .enumerate()
                        .all(|(i, &b)| b == byte_at(i));
                    ctx.send(if intact { b"OK" } else { b"NO" });
                    input.consume(msg);
                })
        });
        let wire: Vec<u8> = (0..msg).map(byte_at).collect();
        // First a connection that resets while it waits.
        {
            let s = connect(server.addr());
            let mut w = s.try_clone().unwrap();
            let bytes = wire.clone();
            let writer = thread::spawn(move || {
                let _ = w.write_all(&bytes);
            });
            wait_until("the pool to refuse", || pool.stats().refused > 0);
            socket2::SockRef::from(&s)
                .set_linger(Some(std::time::Duration::ZERO))
                .unwrap();
            drop(s);
            join_before(Instant::now() + LIMIT, "the writer", writer);
            wait_until("the reset connection to close", || {
                server.stats().active == 0
            });
        }
        // Then one paused and resumed while it waits.
        let mut s = connect(server.addr());
        let mut w = s.try_clone().unwrap();
        let writer = thread::spawn(move || {
            let _ = w.write_all(&wire);
        });
        let refused = pool.stats().refused;
        wait_until("the pool to refuse", || pool.stats().refused > refused);
        let conn = conns.lock().unwrap().last().unwrap().clone();
        conn.stop_reading().unwrap();
        drop(hog);
        conn.start_reading().unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        let mut answer = [0u8; 2];
        s.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"OK", "et={edge_triggered}");
        join_before(Instant::now() + LIMIT, "the writer", writer);
        drop(s);
        wait_until("the connection to close", || server.stats().active == 0);
        server.stop();
    }
}

/// Two connections each hold a 256 KiB block of a partial 300 KiB message and each needs
/// a 1 MiB block to go on: under a 1.25 MiB cap neither can ever grow while the other
/// holds its block, and neither gives its block back while it waits. Before the fix both
/// waited for ever (their peers hung, `wait_until` below ran out); before round 12 one
/// closed and the other went on. Now a wait that sees no progress for
/// `POOL_WAIT_LIMIT` (2 s) gives up (`OutOfMemory`), and the memory it frees lets the
/// other be served.
#[test]
fn connections_that_wait_for_each_others_memory_do_not_wait_for_ever() {
    init_log();
    let pool = capped(1280 * K);
    let msg = 300 * K;
    let server = plain_server(pool, msg, true);
    let wire: Vec<u8> = (0..msg).map(byte_at).collect();
    // Both hold a 256 KiB block before either needs the 1 MiB one.
    let first = 200 * K;
    let mut clients: Vec<_> = (0..2)
        .map(|_| {
            let mut s = connect(server.addr());
            s.set_read_timeout(Some(LIMIT)).unwrap();
            s.write_all(&wire[..first]).unwrap();
            s
        })
        .collect();
    wait_until("both first parts read", || {
        server.stats().per_loop[0].bytes_in == 2 * first as u64
    });
    let writers: Vec<_> = clients
        .iter()
        .map(|s| {
            let mut w = s.try_clone().unwrap();
            let rest = wire[first..].to_vec();
            thread::spawn(move || drop(w.write_all(&rest)))
        })
        .collect();
    wait_until("a wait to give up", || out_of_memory_closes(&server) >= 1);
    let mut answers = 0;
    for s in &mut clients {
        let mut answer = [0u8; 2];
        if s.read_exact(&mut answer).is_ok() && &answer == b"OK" {
            answers += 1;
        }
    }
    for writer in writers {
        join_before(Instant::now() + LIMIT, "a writer", writer);
    }
    assert_eq!(
        answers + out_of_memory_closes(&server) as usize,
        2,
        "every connection is either served or closed"
    );
    assert!(
        answers >= 1,
        "the memory the closed one freed serves the other"
    );
    drop(clients);
    wait_until("the connections to close", || server.stats().active == 0);
    server.stop();
}

/// Time spent paused is no time waiting for memory: a connection paused (from another
/// thread) during a wait for the pool, for longer than the wait's limit, and resumed with
/// the pool still full, waits again rather than give up at once; the message arrives
/// whole once memory frees. (Written with the limit: its first version counted the pause
/// and closed `OutOfMemory` at the first refusal after resuming.)
#[test]
fn a_pause_during_a_wait_for_memory_does_not_count_against_its_limit() {
    init_log();
    let pool = capped(2 << 20);
    let hog = pool.alloc(1 << 20).unwrap();
    let msg = 300 * K;
    let conns: Arc<Mutex<Vec<duo_net::TcpConnection>>> = Arc::default();
    let seen = conns.clone();
    let server = TestServer::start(move || {
        TcpServer::builder("round12-fixes-pause", localhost())
            .io_threads(1)
            .max_input(1 << 20)
            .buffer_pool(pool)
            .on_connection(move |c| {
                if c.is_connected() {
                    seen.lock().unwrap().push(c.clone());
                }
            })
            .on_message(move |ctx, input| {
                if input.len() >= msg {
                    ctx.send(b"OK");
                    input.consume(msg);
                }
            })
    });
    let mut s = connect(server.addr());
    let mut w = s.try_clone().unwrap();
    let wire: Vec<u8> = (0..msg).map(byte_at).collect();
    let writer = thread::spawn(move || drop(w.write_all(&wire)));
    wait_until("the pool to refuse", || pool.stats().refused > 0);
    let conn = conns.lock().unwrap()[0].clone();
    conn.stop_reading().unwrap();
    // Paused past the wait's limit (2 s): the condition under test is time passing.
    let paused = Instant::now();
    wait_until("the pause to outlast the wait's limit", || {
        paused.elapsed() > std::time::Duration::from_millis(2500)
    });
    let refused = pool.stats().refused;
    conn.start_reading().unwrap();
    wait_until("a refusal after resuming", || {
        pool.stats().refused > refused
    });
    assert_eq!(out_of_memory_closes(&server), 0, "gave up at once");
    drop(hog);
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut answer = [0u8; 2];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"OK");
    join_before(Instant::now() + LIMIT, "the writer", writer);
    drop(s);
    wait_until("the connection to close", || server.stats().active == 0);
    server.stop();
}
