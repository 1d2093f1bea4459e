//! `UdpCtx::stop` keeps `UdpSocket::stop`'s promise: a datagram another thread's
//! `send_to` accepted before the stop is sent, not dropped, though it was still on its way
//! to the loop when the callback asked to stop.

use std::net::{SocketAddr, UdpSocket as StdUdp};
use std::sync::mpsc;

use duo_net::UdpSocket;
use duo_reactor::EventLoopThread;
use duo_testkit::{wait_until, LIMIT};

#[test]
fn a_send_accepted_before_a_stop_from_the_callback_is_sent() {
    let io = EventLoopThread::spawn("udp-ctx-stop", None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let sock = UdpSocket::builder("ctx-stop", any)
        .on_datagram(|ctx, payload, _from| {
            if payload == b"stop" {
                ctx.stop();
            }
        })
        .start(io.handle())
        .unwrap();
    let peer = StdUdp::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(LIMIT)).unwrap();
    // Hold the loop in a queued function: the send below then waits in the loop's queue
    // behind a pass that has already taken it, and the "stop" datagram is read (and its
    // callback run) in the next iteration, before that queue.
    let (release, wait) = mpsc::channel::<()>();
    let (ready_tx, ready) = mpsc::channel();
    io.handle()
        .queue_in_loop(move |_| {
            ready_tx.send(()).unwrap();
            let _ = wait.recv_timeout(LIMIT);
        })
        .unwrap();
    ready.recv_timeout(LIMIT).unwrap();
    sock.send_to(b"accepted".to_vec(), peer.local_addr().unwrap())
        .expect("the socket is open: the send is accepted");
    // Over loopback the datagram is in the socket's receive queue when this returns.
    peer.send_to(b"stop", sock.local_addr()).unwrap();
    release.send(()).unwrap();
    wait_until("the socket closed", || sock.is_closed());
    let mut buf = [0u8; 64];
    let got = peer.recv(&mut buf).map(|n| buf[..n].to_vec());
    let s = sock.stats();
    assert_eq!(
        got.as_deref().ok(),
        Some(&b"accepted"[..]),
        "the accepted send was not sent: {s:?}"
    );
    assert_eq!((s.datagrams_out, s.dropped), (1, 0), "{s:?}");
    io.stop().unwrap();
}
