//! Review round 12 of the buffer area, at the connection level: a connection whose input
//! buffer cannot grow because its capped pool is full for the moment.
//!
//! A message callback that waits for a whole message leaves the input in the buffer; past
//! 64 KiB of it, a read whose growth the pool refused dropped the bytes it had taken from
//! the kernel (which the kernel had acknowledged to the peer) and closed the connection
//! `OutOfMemory`, although the pool was full only because another user held memory for a
//! while. Now a read never takes bytes it cannot keep: the connection stops reading (the
//! peer is slowed by TCP flow control) and tries again shortly, and the message is
//! delivered whole once memory is free. Input that could never fit (a block larger than
//! the whole cap) still closes `OutOfMemory`, at once rather than after waiting forever.
//!
//! Also checked (no defect): a send from another thread, counted against the output limit
//! while in transit, that the loop drops because the connection closed first keeps its
//! count; the count belongs to that connection alone, which refuses every later send
//! before counting, so neither the loop's `output_queued`, nor the pool, nor another
//! connection sees it.

mod util;

use std::io::{Read, Write};
use std::thread;
use std::time::Instant;

use std::sync::{Arc, Mutex};

use duo_buffer::{BufPool, PoolConfig};
use duo_net::{OutputLimit, TcpConnection, TcpServer};
use duo_testkit::{join_before, wait_until, LIMIT};
use util::{connect, hold_loop, init_log, localhost, TestServer};

const K: usize = 1 << 10;

/// The stream's byte at position `i`.
fn byte_at(i: usize) -> u8 {
    (i % 251) as u8
}

/// A server whose callback answers `OK` to each whole `msg`-byte message, checking its bytes.
fn whole_message_server(pool: BufPool, msg: usize, edge_triggered: bool) -> TestServer {
    TestServer::start(move || {
        TcpServer::builder("round12-pool-full", localhost())
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
            })
    })
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
        let pool = BufPool::new(PoolConfig {
            memory_cap: Some(2 << 20),
            thread_cache_bytes: 0,
        });
        // Another user holds half of the cap for a while.
        let hog = pool.alloc(1 << 20).unwrap();
        let msg = 300 * K;
        let server = whole_message_server(pool, msg, edge_triggered);
        let (writer, mut s) = send_message(&server, msg);
        // 300 KiB of input need a 1 MiB block, which does not fit beside the hog.
        wait_until("the pool to refuse the connection's growth", || {
            pool.stats().refused > 0
        });
        drop(hog);
        let mut answer = [0u8; 2];
        let got = s.read_exact(&mut answer);
        let stats = server.stats();
        assert!(
            got.is_ok(),
            "et={edge_triggered}: no answer ({got:?}); closes for memory: {}",
            stats
                .per_loop
                .iter()
                .map(|l| l.closes.out_of_memory)
                .sum::<u64>()
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
    let pool = BufPool::new(PoolConfig {
        memory_cap: Some(512 * K),
        thread_cache_bytes: 0,
    });
    // 700 KiB need a 1 MiB block: more than the whole cap.
    let msg = 700 * K;
    let server = whole_message_server(pool, msg, true);
    let (writer, mut s) = send_message(&server, msg);
    wait_until("the connection to close for lack of memory", || {
        server
            .stats()
            .per_loop
            .iter()
            .map(|l| l.closes.out_of_memory)
            .sum::<u64>()
            == 1
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
