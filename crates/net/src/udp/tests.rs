//! The send buffer full path (`EAGAIN`, wait for writability, flush the rest), with a
//! real kernel `EAGAIN`.
//!
//! Over loopback a UDP send never meets a full send buffer: the loopback device releases
//! the sender's buffer space as soon as the datagram is handed on (to the receiver's queue,
//! or dropped if that is full). A connected `AF_UNIX` datagram socket does block: a peer
//! that does not read fills its queue and the sender gets `EAGAIN`. The socket's code is
//! the same for both families, so that is where this path is tested.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;

use duo_reactor::EventLoopThread;
use duo_testkit::{wait_until, LIMIT};

use super::UdpSocket;

#[test]
fn a_full_send_buffer_waits_for_writability_and_sends_everything() {
    let io = EventLoopThread::spawn("udp-eagain", None).unwrap();
    let (ours, peer) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let addr = "127.0.0.1:9".parse().unwrap();
    let sock = UdpSocket::builder("eagain", addr)
        .serve(OwnedFd::from(ours), addr, io.handle())
        .unwrap();
    // Far more than a unix datagram queue holds (max_dgram_qlen, 512 by default, or the
    // receive buffer), while the peer reads nothing.
    let first = 3000u32;
    for i in 0..first {
        sock.send(i.to_be_bytes().to_vec()).unwrap();
    }
    wait_until("the send buffer full", || sock.stats().send_buffer_full > 0);
    // More sends while the socket waits for writability: each one's flush meets the full
    // buffer again, and the wait is still counted once.
    let total = first + 5;
    for i in first..total {
        sock.send(i.to_be_bytes().to_vec()).unwrap();
        let (done, wait) = std::sync::mpsc::channel();
        io.handle()
            .queue_in_loop(move |lp| {
                // After the flush the send scheduled (queued behind this barrier's own run).
                lp.queue_in_loop(move |_| {
                    let _ = done.send(());
                });
            })
            .unwrap();
        wait.recv_timeout(LIMIT).unwrap();
    }
    let s = sock.stats();
    assert_eq!(s.send_buffer_full, 1, "one wait for writability: {s:?}");
    assert!(
        s.datagrams_out < u64::from(total) && s.queued_bytes > 0,
        "{s:?}"
    );
    // Now the peer reads: the loop is told the socket is writable and sends the rest, in
    // order.
    peer.set_read_timeout(Some(LIMIT)).unwrap();
    let mut buf = [0u8; 8];
    for i in 0..total {
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &i.to_be_bytes(), "datagram {i}");
    }
    wait_until("the queue drained", || sock.stats().queued_bytes == 0);
    let s = sock.stats();
    assert_eq!(
        (s.datagrams_out, s.dropped, s.send_errors),
        (u64::from(total), 0, 0)
    );
    sock.stop();
    io.stop().unwrap();
}

/// A send accepted while the loop is alive but busy, whose loop then ends before it runs
/// the send, is counted as dropped (the caller got `Ok`, so the count is all that says the
/// datagram never left), and leaves nothing counted in flight.
#[test]
fn a_send_whose_loop_ends_before_running_it_is_counted_dropped() {
    let io = EventLoopThread::spawn("udp-loop-ends", None).unwrap();
    let sock = UdpSocket::builder("loop-ends", "127.0.0.1:0".parse().unwrap())
        .start(io.handle())
        .unwrap();
    // Hold the loop inside a queued function that has asked the loop to quit until the
    // send below is queued behind it: queued after the quit, the send is never run.
    let (entered, is_inside) = std::sync::mpsc::channel();
    let (release, wait_release) = std::sync::mpsc::channel::<()>();
    io.handle()
        .queue_in_loop(move |lp| {
            lp.quit();
            let _ = entered.send(());
            let _ = wait_release.recv_timeout(LIMIT);
        })
        .unwrap();
    is_inside.recv_timeout(LIMIT).unwrap();
    let to = "127.0.0.1:9".parse().unwrap();
    sock.send_to(b"never sent".to_vec(), to)
        .expect("the loop is alive: the send is accepted");
    release.send(()).unwrap();
    // The loop ends by itself (a stop now would ask it to run what is queued first) and
    // is dropped with the send still queued on it.
    wait_until("the loop ended", || io.handle().is_closed());
    drop(io);
    let s = sock.stats();
    assert_eq!((s.dropped, s.datagrams_out), (1, 0), "{s:?}");
    assert!(
        sock.send_to(b"late".to_vec(), to).is_err(),
        "a send after the loop ended is refused"
    );
    assert_eq!(
        sock.stats().dropped,
        1,
        "a refused send is the caller's error, not a drop"
    );
}
