//! Review round 12 of the UDP API, from a library user's point of view (writing the
//! `roundtrip` example, `examples/roundtrip.rs`): what the public docs promise, checked
//! over loopback.
//!
//! `UdpSocket::send_to` "copies the payload and queues it onto the socket's loop, which
//! sends it", and `LoopHandle::quit` promises that every function queued before it runs
//! before `run` returns. A datagram sent just before a quit (a client's last word) was
//! put in the socket's queue by its function, but the flush that function scheduled was
//! queued after the quit, so `run` returned with the datagram unsent: it sat in the
//! queue, and was counted as dropped only when the loop was dropped.

use std::net::UdpSocket as StdUdp;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use duo_net::{EventLoop, UdpSocket};
use duo_testkit::{join_within, LIMIT};

fn std_peer() -> StdUdp {
    let p = StdUdp::bind("127.0.0.1:0").unwrap();
    p.set_read_timeout(Some(LIMIT)).unwrap();
    p
}

/// Receives one datagram on `peer`, or `None` within a short wait: over loopback a datagram
/// sent is in the receive queue at once, so a short wait after the loop returned is enough.
fn received(peer: &StdUdp) -> Option<Vec<u8>> {
    peer.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 64];
    peer.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

#[test]
fn a_datagram_sent_from_the_loop_just_before_its_quit_is_sent_before_run_returns() {
    let peer = std_peer();
    let to = peer.local_addr().unwrap();
    let mut lp = EventLoop::new().unwrap();
    let sock = UdpSocket::builder("last-word", "127.0.0.1:0".parse().unwrap())
        .start(&lp.handle())
        .unwrap();
    let (sender, handle) = (sock.clone(), lp.handle());
    lp.run_after(Duration::from_millis(1), move |_| {
        sender.send_to(&b"bye"[..], to).unwrap();
        handle.quit();
    });
    lp.run().unwrap();
    let stats = sock.stats();
    assert_eq!(
        received(&peer).as_deref(),
        Some(&b"bye"[..]),
        "the last datagram was not sent when run returned: {stats:?}"
    );
    assert_eq!((stats.datagrams_out, stats.dropped), (1, 0), "{stats:?}");
    drop(lp);
    assert_eq!(sock.stats().dropped, 0);
}

#[test]
fn a_datagram_sent_from_another_thread_just_before_a_quit_is_sent_before_run_returns() {
    let peer = std_peer();
    let to = peer.local_addr().unwrap();
    let (ready_tx, ready) = mpsc::channel();
    let (go_tx, go) = mpsc::channel::<()>();
    let looping = thread::spawn(move || {
        let mut lp = EventLoop::new().unwrap();
        let sock = UdpSocket::builder("last-word-2", "127.0.0.1:0".parse().unwrap())
            .start(&lp.handle())
            .unwrap();
        // Hold the loop in a queued function until the test thread has sent and quit:
        // the send's function and the quit then meet a pass that has not begun.
        lp.handle()
            .queue_in_loop(move |_| {
                let _ = go.recv_timeout(LIMIT);
            })
            .unwrap();
        ready_tx.send((sock.clone(), lp.handle())).unwrap();
        lp.run().unwrap();
        let stats = sock.stats();
        (lp, stats)
    });
    let (sock, handle): (UdpSocket, _) = ready.recv_timeout(LIMIT).unwrap();
    sock.send_to(&b"bye"[..], to).unwrap();
    handle.quit();
    go_tx.send(()).unwrap();
    let (lp, stats) = join_within("the loop thread", looping);
    assert_eq!(
        received(&peer).as_deref(),
        Some(&b"bye"[..]),
        "the last datagram was not sent when run returned: {stats:?}"
    );
    assert_eq!((stats.datagrams_out, stats.dropped), (1, 0), "{stats:?}");
    drop(lp);
    assert_eq!(sock.stats().dropped, 0);
}
