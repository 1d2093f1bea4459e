//! `UdpCtx::stop` keeps `UdpSocket::stop`'s promise: a datagram another thread's
//! `send_to` accepted before the stop is sent, not dropped, though it was still on its way
//! to the loop when the callback asked to stop.

use std::net::{SocketAddr, UdpSocket as StdUdp};
use std::sync::mpsc;

use duo_net::{UdpSendError, UdpSocket};
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

/// `UdpCtx::stop` stops the socket once the batch is handled: a `send_to` in the same
/// callback after it is still sent with what was queued (a reply to a datagram the batch
/// delivers is not lost), while another thread's `UdpSocket::send_to` is refused from the
/// stop on.
#[test]
fn sends_of_the_batch_after_its_stop_go_out_and_other_threads_are_refused() {
    let io = EventLoopThread::spawn("udp-ctx-stop-after", None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (tx, rx) = mpsc::channel();
    let sock = UdpSocket::builder("ctx-stop-after", any)
        .on_datagram(move |ctx, payload, from| {
            if payload == b"stop" {
                let before = ctx.send_to(b"before", from);
                ctx.stop();
                let outside = ctx.socket().send_to(b"outside".to_vec(), from);
                let after = ctx.send_to(b"after", from);
                let _ = tx.send((before, outside, after));
            }
        })
        .start(io.handle())
        .unwrap();
    let peer = StdUdp::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(LIMIT)).unwrap();
    peer.send_to(b"stop", sock.local_addr()).unwrap();
    let (before, outside, after) = rx.recv_timeout(LIMIT).expect("the callback ran");
    assert_eq!(
        (before, outside, after),
        (Ok(()), Err(UdpSendError::Stopped), Ok(()))
    );
    wait_until("the socket closed", || sock.is_closed());
    let mut buf = [0u8; 64];
    for want in [&b"before"[..], b"after"] {
        let n = peer.recv(&mut buf).expect("a send of the batch");
        assert_eq!(&buf[..n], want);
    }
    let s = sock.stats();
    assert_eq!((s.datagrams_out, s.dropped), (2, 0), "{s:?}");
    io.stop().unwrap();
}
