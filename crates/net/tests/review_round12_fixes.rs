//! Review round 12 of this round's own fixes in duo-buffer and duo-net (a second look):
//! a read the capped pool refuses waits for memory instead of closing `OutOfMemory`.
//!
//! - A connection whose own input block is what keeps the pool from granting the bigger
//!   one (the block it holds plus the one it asks for exceed the whole cap) can never be
//!   served: nobody else frees that memory. It waited forever, retrying every 20 ms (its
//!   peer hung, its memory held), where the fix's own rule ("input that could never fit
//!   closes at once") meant it to close `OutOfMemory`.
//! - Connections that each hold a block while waiting for a bigger one can wait for each
//!   other's memory for ever (as can one whose peer reset meanwhile): a wait with no
//!   delivery for 2 s now gives up (`OutOfMemory`), freeing memory for the others.
//! - Over TLS, a refusal of the plaintext rustls holds still closed `OutOfMemory` at
//!   once, dropping what the peer sent, where plain TCP now waits: rustls keeps the
//!   plaintext (a refused read takes nothing), so the connection waits the same way
//!   (once up), without calling the message callback again for input it already saw.
//!
//! Also checked (no defect): the TcpClient fixes of this round (hidden up/down calls
//! after a cross-thread `stop`: the client's own close hook still runs; `connection()`
//! `None` once ending, and `connect()` after `disconnect()` reconnects once the old one
//! closed; the early-data probe byte only where more than `max_input` closes anyway).

mod util;

use std::io::{Read, Write};
use std::thread;
use std::time::Instant;

use duo_buffer::{BufPool, PoolConfig};
use duo_net::TcpServer;
use duo_testkit::{join_before, wait_until, LIMIT};
use util::{connect, init_log, localhost, TestServer};

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

/// 300 KiB of unconsumed input live in a 256 KiB block that must grow to 1 MiB: under a
/// 1 MiB cap, the 256 KiB it holds plus the 1 MiB it asks for never fit, whoever frees
/// what. Before the fix the connection waited forever (the peer got neither an answer
/// nor a close, and `wait_until` below ran out).
#[test]
fn input_whose_own_block_keeps_the_growth_from_ever_fitting_closes() {
    init_log();
    for edge_triggered in [true, false] {
        let pool = BufPool::new(PoolConfig {
            memory_cap: Some(1 << 20),
            thread_cache_bytes: 0,
        });
        let msg = 300 * K;
        let server = whole_message_server(
            pool,
            msg,
            edge_triggered,
            #[cfg(feature = "tls")]
            None,
        );
        let mut s = connect(server.addr());
        let mut w = s.try_clone().unwrap();
        let wire: Vec<u8> = (0..msg).map(byte_at).collect();
        let writer = thread::spawn(move || {
            let _ = w.write_all(&wire);
        });
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
        let pool = BufPool::new(PoolConfig {
            memory_cap: Some(2 << 20),
            thread_cache_bytes: 0,
        });
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
        let pool = BufPool::new(PoolConfig {
            memory_cap: Some(2 << 20),
            thread_cache_bytes: 0,
        });
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
    use std::sync::{Arc, Mutex};
    init_log();
    for edge_triggered in [true, false] {
        let pool = BufPool::new(PoolConfig {
            memory_cap: Some(2 << 20),
            thread_cache_bytes: 0,
        });
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
    let pool = BufPool::new(PoolConfig {
        memory_cap: Some(1280 * K),
        thread_cache_bytes: 0,
    });
    let msg = 300 * K;
    let server = whole_message_server(
        pool,
        msg,
        true,
        #[cfg(feature = "tls")]
        None,
    );
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
    use std::sync::{Arc, Mutex};
    init_log();
    let pool = BufPool::new(PoolConfig {
        memory_cap: Some(2 << 20),
        thread_cache_bytes: 0,
    });
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
