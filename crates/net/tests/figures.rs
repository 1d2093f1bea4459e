//! The server's figures for operators: connections opened per loop, messages in and out,
//! output queued, connections paused by backpressure, all back to zero when the peers
//! have gone; and the loops' own health counters seen through the same server.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use duo_testkit::LIMIT;
use util::{connect, echo_builder, init_log, localhost, TestServer};

#[test]
fn connections_messages_queued_output_and_backpressure_are_counted_per_loop() {
    init_log();
    const HIGH: usize = 64 << 10;
    let server = TestServer::start(|| {
        echo_builder("figures", localhost())
            .io_threads(2)
            .water_marks(HIGH, HIGH / 2)
    });
    let s = server.stats();
    assert_eq!(s.per_loop.len(), 2);
    assert!(
        s.per_loop
            .iter()
            .all(|l| l.loop_name.starts_with("figures")),
        "loops are named after the server: {s:?}"
    );

    // Ten clients, ten round trips each.
    let mut clients: Vec<TcpStream> = (0..10).map(|_| connect(server.addr())).collect();
    for c in &mut clients {
        for i in 0..10u8 {
            c.write_all(&[i; 100]).unwrap();
            let mut back = [0u8; 100];
            c.read_exact(&mut back).unwrap();
            assert_eq!(back, [i; 100]);
        }
    }
    // (The counters are stored just after each send: the client may read its reply first.)
    let s = server.wait_for_stats("ten connections open, every reply counted", |s| {
        s.per_loop.iter().map(|l| l.open()).sum::<u64>() == 10 && s.bytes_out() == 10_000
    });
    assert_eq!(s.per_loop.iter().map(|l| l.opened).sum::<u64>(), 10);
    let (msgs_in, msgs_out): (u64, u64) = s
        .per_loop
        .iter()
        .fold((0, 0), |(i, o), l| (i + l.messages_in, o + l.messages_out));
    // One message per read; a client's 100 bytes may come in one read or a few.
    assert!((100..=1000).contains(&msgs_in), "{s:?}");
    assert_eq!(msgs_in, msgs_out, "the echo sends once per delivery: {s:?}");
    assert_eq!(s.bytes_in(), 10 * 10 * 100);
    assert!(s
        .per_loop
        .iter()
        .all(|l| l.output_queued == 0 && l.backpressured == 0));

    // A client that sends but does not read: the server queues its echo, passes the
    // high-water mark and stops reading from it.
    let mut slow = connect(server.addr());
    slow.set_nonblocking(true).unwrap();
    let chunk = vec![7u8; 64 << 10];
    let deadline = Instant::now() + LIMIT;
    let mut sent = 0usize;
    let s = loop {
        match slow.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("write: {e}"),
        }
        let s = server.stats();
        if s.per_loop.iter().map(|l| l.backpressured).sum::<u64>() == 1 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no backpressure after {sent} bytes: {s:?}"
        );
    };
    let queued: u64 = s.output_queued();
    assert!(queued > HIGH as u64, "{queued} bytes queued: {s:?}");

    // Reading it all lifts the pause and empties the queue.
    slow.set_nonblocking(false).unwrap();
    slow.set_read_timeout(Some(LIMIT)).unwrap();
    let mut echoed = 0usize;
    let mut buf = vec![0u8; 256 << 10];
    while echoed < sent {
        echoed += slow.read(&mut buf).unwrap();
    }
    server.wait_for_stats("the pause lifted and the output drained", |s| {
        s.per_loop
            .iter()
            .all(|l| l.output_queued == 0 && l.backpressured == 0)
    });

    // Everyone leaves: nothing open, queued or paused.
    drop(clients);
    drop(slow);
    let s = server.wait_for_stats("every connection closed", |s| {
        s.per_loop.iter().all(|l| l.open() == 0) && s.closed == 11
    });
    assert_eq!(s.closes().peer, 11, "{s:?}");
    assert_eq!((s.accept_errors, s.full_pauses, s.fd_exhausted), (0, 0, 0));

    // The I/O loops' health is there too, under the same names.
    let loops = duo_net::loops();
    for l in &s.per_loop {
        let h = loops
            .iter()
            .find(|h| h.name() == l.loop_name)
            .unwrap_or_else(|| panic!("loop {} listed", l.loop_name));
        let m = h.metrics();
        assert!(m.io_events > 0 || l.opened == 0, "{m:?}");
        // No spin under this load. (Stalls are wall-clock time: a loop thread that loses
        // its core for 25 ms on a loaded host counts one, so they are not asserted here.)
        assert_eq!(m.spins, 0, "{m:?}");
    }
    server.stop();
}

#[test]
fn a_server_stopping_when_full_counts_its_pauses() {
    init_log();
    let server = TestServer::start(|| {
        echo_builder("full", localhost())
            .io_threads(1)
            .max_connections(2)
            .when_full(duo_net::WhenFull::Pause)
    });
    let a = connect(server.addr());
    let b = connect(server.addr());
    let _c = TcpStream::connect(server.addr()).unwrap();
    server.wait_for_stats("the server paused", |s| s.full_pauses >= 1);
    drop((a, b));
    server.wait_for_stats("the third served", |s| s.accepted == 3);
    server.stop();
}
