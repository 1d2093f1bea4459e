//! Review round 8 (codecs and UDP): each test failed before its fix.

mod util;

use std::net::UdpSocket as StdUdp;

use duo_net::UdpSocket;
use duo_reactor::EventLoopThread;
use duo_testkit::wait_until;
use util::hold_loop;

/// A connected socket whose peer is gone, sending one datagram per call (`batch(1)`:
/// `sendto`): each datagram's "port unreachable" comes back as `ECONNREFUSED` from the
/// next `sendto`, and that datagram was not sent. It is retried (the error was an earlier
/// datagram's), every time, not dropped and counted as a send error after the first
/// refusal of a flush.
#[test]
fn unbatched_sends_to_a_closed_port_retry_every_refusal() {
    let gone = StdUdp::bind("127.0.0.1:0").unwrap();
    let peer = gone.local_addr().unwrap();
    drop(gone);
    let io = EventLoopThread::spawn("udp-refused-1", None).unwrap();
    let sock = UdpSocket::builder("refused-1", "127.0.0.1:0".parse().unwrap())
        .connect(peer)
        .batch(1)
        .start(io.handle())
        .unwrap();
    const N: u64 = 8;
    let release = hold_loop(io.handle());
    for i in 0..N {
        sock.send(vec![i as u8; 10]).unwrap();
    }
    drop(release);
    wait_until("the queue flushed", || {
        let s = sock.stats();
        s.queued_bytes == 0 && s.datagrams_out + s.send_errors + s.dropped >= N
    });
    let s = sock.stats();
    assert_eq!(
        (s.datagrams_out, s.send_errors, s.dropped),
        (N, 0, 0),
        "{s:?}"
    );
    // Each refusal was counted as the ICMP error it is.
    wait_until("the refusals reported", || sock.stats().refused >= 1);
    sock.stop();
    io.stop().unwrap();
}

/// With [`unbatched_receive`](duo_net::UdpBuilder::unbatched_receive) each datagram takes
/// one `recvfrom`: `recv_calls` counts those calls (the mean batch, `datagrams_in /
/// recv_calls`, is 1), not the rounds of up to `batch` calls.
#[test]
fn unbatched_receive_counts_one_receive_call_per_datagram() {
    let io = EventLoopThread::spawn("udp-unbatched-calls", None).unwrap();
    let sock = UdpSocket::builder("unbatched-calls", "127.0.0.1:0".parse().unwrap())
        .batch(8)
        .unbatched_receive(true)
        .start(io.handle())
        .unwrap();
    let c = StdUdp::bind("127.0.0.1:0").unwrap();
    const N: u64 = 8;
    // Held, so that the datagrams are all waiting when the loop reads.
    let release = hold_loop(io.handle());
    for i in 0..N {
        c.send_to(&[i as u8; 4], sock.local_addr()).unwrap();
    }
    drop(release);
    wait_until("every datagram received", || sock.stats().datagrams_in == N);
    let s = sock.stats();
    assert_eq!(s.recv_calls, N, "{s:?}");
    sock.stop();
    io.stop().unwrap();
}
