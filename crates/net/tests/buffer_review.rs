//! A server on a capped buffer pool with two I/O loops: the blocks one loop freed after a
//! burst, kept in that loop's thread cache while its connection is quiet, must not make the
//! other loop's connections run out of memory while most of the cap is free. A test binary
//! of its own: the pool is its own, but the server's threads are counted per process.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use duo_buffer::{BufPool, PoolConfig};
use duo_net::AcceptMode;
use duo_testkit::wait_until;
use util::{echo_builder, init_log, localhost, TestServer};

const CAP: usize = 2 << 20;
const CHUNK: usize = 64 << 10;

/// A client whose receive buffer is small, so that what the server echoes piles up in the
/// server's output buffer rather than in the kernel.
fn slow_reader(addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&socket2::SockAddr::from(addr)).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(duo_testkit::LIMIT)).unwrap();
    s.set_write_timeout(Some(duo_testkit::LIMIT)).unwrap();
    s
}

/// Sends chunks without reading the echo, each once the server has read the one before,
/// until the loop `at` has `target` bytes of output queued; stops early if the server
/// closes a connection for lack of memory. Returns the bytes sent.
fn queue_echo(server: &TestServer, s: &mut TcpStream, at: usize, target: usize) -> usize {
    let chunk = vec![0x5a; CHUNK];
    let base = server.stats().per_loop[at].bytes_in;
    let mut sent = 0;
    loop {
        let l = &server.stats().per_loop[at];
        if l.output_queued as usize >= target || l.closes.out_of_memory > 0 {
            return sent;
        }
        if s.write_all(&chunk).is_err() {
            return sent;
        }
        sent += CHUNK;
        wait_until("the server to read the chunk", || {
            let l = &server.stats().per_loop[at];
            l.bytes_in - base == sent as u64 || l.closes.out_of_memory > 0
        });
    }
}

#[test]
fn a_quiet_loops_cached_blocks_do_not_starve_the_other_loop() {
    init_log();
    let pool = BufPool::new(PoolConfig {
        memory_cap: Some(CAP),
        ..PoolConfig::default()
    });
    let server = TestServer::start(move || {
        echo_builder("capped", localhost())
            .io_threads(2)
            .accept_mode(AcceptMode::MainLoop)
            .water_marks(64 << 20, 32 << 20)
            .buffer_pool(pool)
    });
    let opened = || -> Vec<u64> { server.stats().per_loop.iter().map(|l| l.opened).collect() };

    // A burst on the first connection's loop: 1 MiB of echo queued, then read back.
    let mut a = slow_reader(server.addr());
    wait_until("the first connection", || opened().iter().sum::<u64>() == 1);
    let la = opened().iter().position(|&n| n == 1).unwrap();
    let sent = queue_echo(&server, &mut a, la, CAP / 2);
    assert!(server.stats().per_loop[la].output_queued as usize >= CAP / 2);
    let mut back = vec![0u8; sent];
    a.read_exact(&mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0x5a));
    wait_until("the burst's blocks to be free", || {
        server.stats().per_loop[la].output_queued == 0 && pool.stats().in_use_blocks() == 0
    });
    // The first connection stays open and quiet; its loop sleeps with its cache as it is.

    // The second connection, on the other loop, queues three quarters of the cap (the
    // first loop's cache kept 9 to 16 of the burst's 64 KiB blocks, 0.56 to 1 MiB).
    let mut b = slow_reader(server.addr());
    wait_until("the second connection", || {
        opened().iter().sum::<u64>() == 2
    });
    let lb = 1 - la;
    assert_eq!(opened()[lb], 1, "round robin: the other loop");
    let target = CAP * 3 / 4;
    let sent = queue_echo(&server, &mut b, lb, target);
    let stats = server.stats();
    assert_eq!(
        stats.per_loop[lb].closes.out_of_memory,
        0,
        "closed for lack of memory with {} of {CAP} bytes in use ({} free)",
        pool.stats().in_use_bytes(),
        pool.stats().free_bytes()
    );
    assert!(stats.per_loop[lb].output_queued as usize >= target);
    let mut back = vec![0u8; sent];
    b.read_exact(&mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0x5a));
    drop((a, b));
    wait_until("both closed", || server.stats().active == 0);
    server.stop();
}
