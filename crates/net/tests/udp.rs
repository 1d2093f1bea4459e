//! `UdpSocket` against std's `UdpSocket` over loopback: echo, batching, cross-thread
//! sends, truncation, a full send queue, ICMP errors, IPv6, stop.

mod util;

use std::net::{SocketAddr, UdpSocket as StdUdp};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use duo_net::{UdpBuilder, UdpSendError, UdpSocket};
use duo_reactor::{EventLoopThread, LoopHandle};
use duo_testkit::{wait_until, LIMIT};
use util::shared::echoing;

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn client(addr: &str) -> StdUdp {
    let c = StdUdp::bind(addr).unwrap();
    c.set_read_timeout(Some(LIMIT)).unwrap();
    c
}

/// An echo socket bound to `addr`, on `io`'s loop.
fn echo(io: &EventLoopThread, addr: SocketAddr) -> UdpSocket {
    echoing(UdpSocket::builder("echo", addr))
        .start(io.handle())
        .unwrap()
}

/// A loop thread named `thread` and the socket `builder` makes, started on its loop.
fn start_on_thread(thread: &str, builder: UdpBuilder) -> (EventLoopThread, UdpSocket) {
    let io = EventLoopThread::spawn(thread, None).unwrap();
    let sock = builder.start(io.handle()).unwrap();
    (io, sock)
}

/// Stops the socket, then its loop thread.
fn stop(io: EventLoopThread, sock: UdpSocket) {
    sock.stop();
    io.stop().unwrap();
}

fn recv(c: &StdUdp) -> Vec<u8> {
    let mut buf = [0u8; 70_000];
    let n = c.recv(&mut buf).expect("a datagram within the limit");
    buf[..n].to_vec()
}

/// Queues a function that holds the loop until the returned sender is dropped or sent
/// to; the returned receiver gets a message once the function has started (the loop is
/// held from then on).
fn queue_hold(lp: &LoopHandle) -> (mpsc::Sender<()>, mpsc::Receiver<()>) {
    let (release, wait) = mpsc::channel::<()>();
    let (ready_tx, ready) = mpsc::channel();
    lp.queue_in_loop(move |_| {
        ready_tx.send(()).unwrap();
        let _ = wait.recv_timeout(LIMIT);
    })
    .unwrap();
    (release, ready)
}

/// Holds the loop in a queued function until the returned sender is dropped or sent to,
/// so that datagrams pile up in the socket meanwhile.
fn block_loop(lp: &LoopHandle) -> mpsc::Sender<()> {
    let (release, ready) = queue_hold(lp);
    ready.recv_timeout(LIMIT).unwrap();
    release
}

/// Sends the numbers `0..n` (big-endian `u32`, one per datagram) from `c` to the echo
/// socket `sock` while `io`'s loop is held, so that they pile up in the socket, then lets
/// the loop go; returns the numbers echoed back, sorted.
fn echo_backlog(io: &EventLoopThread, sock: &UdpSocket, c: &StdUdp, n: u32) -> Vec<u32> {
    let release = block_loop(io.handle());
    for i in 0..n {
        c.send_to(&i.to_be_bytes(), sock.local_addr()).unwrap();
    }
    drop(release);
    let mut seen: Vec<u32> = (0..n)
        .map(|_| u32::from_be_bytes(recv(c).try_into().unwrap()))
        .collect();
    seen.sort_unstable();
    seen
}

#[test]
fn echoes_many_datagrams() {
    let io = EventLoopThread::spawn("udp-echo", None).unwrap();
    let sock = echo(&io, localhost());
    let c = client("127.0.0.1:0");
    for round in 0..50u32 {
        // Eight in flight at a time: well within any socket buffer.
        for k in 0..8u32 {
            let msg = format!("datagram {round}/{k}");
            c.send_to(msg.as_bytes(), sock.local_addr()).unwrap();
        }
        let mut got: Vec<String> = (0..8)
            .map(|_| String::from_utf8(recv(&c)).unwrap())
            .collect();
        got.sort();
        let want: Vec<String> = (0..8).map(|k| format!("datagram {round}/{k}")).collect();
        assert_eq!(got, want);
    }
    // The counters are added after the send call: the echo can arrive first.
    wait_until("the counters", || sock.stats().datagrams_out == 400);
    let s = sock.stats();
    assert_eq!(s.datagrams_in, 400);
    assert_eq!(s.bytes_in, s.bytes_out);
    assert_eq!(s.truncated + s.dropped + s.send_errors, 0);
    stop(io, sock);
}

#[test]
fn a_backlog_larger_than_the_batch_is_read_in_batches_and_echoed_in_batches() {
    let (io, sock) = start_on_thread(
        "udp-batch",
        echoing(UdpSocket::builder("batch", localhost()).batch(4)),
    );
    let c = client("127.0.0.1:0");
    let seen = echo_backlog(&io, &sock, &c, 100);
    assert_eq!(seen, (0..100).collect::<Vec<_>>());
    let s = sock.stats();
    assert_eq!(s.datagrams_in, 100);
    // Receives took full batches of 4: the backlog was there before the loop woke (all
    // 25 full as a rule; a loaded host may deliver some loopback datagrams a little late,
    // in softirq context, and a batch then ends short).
    assert!((25..=35).contains(&s.recv_calls), "{s:?}");
    // Replies of one batch go out together: far fewer send calls than datagrams.
    assert!(s.send_calls <= 25, "{s:?}");
    stop(io, sock);
}

#[test]
fn sends_from_another_thread_reach_the_peer() {
    let (io, sock) = start_on_thread("udp-send", UdpSocket::builder("sender", localhost()));
    let c = client("127.0.0.1:0");
    let to = c.local_addr().unwrap();
    let h = sock.clone();
    std::thread::spawn(move || {
        for i in 0..50u8 {
            h.send_to(vec![i; 100], to).unwrap();
        }
    })
    .join()
    .unwrap();
    for i in 0..50u8 {
        let (n, from) = {
            let mut buf = [0u8; 200];
            let (n, from) = c.recv_from(&mut buf).unwrap();
            assert!(
                buf[..n].iter().all(|&b| b == i),
                "datagram {i} out of order"
            );
            (n, from)
        };
        assert_eq!((n, from), (100, sock.local_addr()));
    }
    wait_until("the counters", || sock.stats().datagrams_out == 50);
    assert_eq!(sock.stats().bytes_out, 5000);
    stop(io, sock);
}

#[test]
fn truncated_datagrams_are_counted_not_delivered() {
    let (io, sock) = start_on_thread(
        "udp-trunc",
        echoing(UdpSocket::builder("trunc", localhost()).max_datagram(64)),
    );
    let c = client("127.0.0.1:0");
    c.send_to(&[1u8; 65], sock.local_addr()).unwrap();
    c.send_to(&[2u8; 64], sock.local_addr()).unwrap();
    assert_eq!(recv(&c), vec![2u8; 64]);
    wait_until("the truncation counted", || sock.stats().truncated == 1);
    assert_eq!(sock.stats().datagrams_in, 1);
    stop(io, sock);
}

#[test]
fn a_full_send_queue_refuses_and_counts_and_the_rest_is_sent() {
    let (io, sock) = start_on_thread(
        "udp-full",
        UdpSocket::builder("full", localhost())
            .send_buffer_size(4096)
            .send_queue_bytes(64 * 1024),
    );
    // A peer that never reads: its receive queue overflows, which UDP allows.
    let sink = StdUdp::bind("127.0.0.1:0").unwrap();
    let to = sink.local_addr().unwrap();
    let release = block_loop(io.handle());
    let (mut accepted, mut refused) = (0u64, 0u64);
    for _ in 0..200 {
        match sock.send_to(vec![7u8; 1200], to) {
            Ok(()) => accepted += 1,
            Err(UdpSendError::QueueFull { limit }) => {
                assert_eq!(limit, 64 * 1024);
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(accepted > 0 && refused > 0, "{accepted} {refused}");
    assert_eq!(sock.stats().dropped, refused);
    drop(release);
    wait_until("the queue sent", || {
        let s = sock.stats();
        s.datagrams_out + s.send_errors == accepted && s.queued_bytes == 0
    });
    let s = sock.stats();
    println!(
        "accepted {accepted}, refused {refused}, send buffer full {} times, {} send calls",
        s.send_buffer_full, s.send_calls
    );
    stop(io, sock);
}

#[test]
fn icmp_port_unreachable_is_reported_and_the_socket_goes_on() {
    let gone = StdUdp::bind("127.0.0.1:0").unwrap();
    let peer = gone.local_addr().unwrap();
    drop(gone);
    let got = Arc::new(AtomicUsize::new(0));
    let g = Arc::clone(&got);
    let (io, sock) = start_on_thread(
        "udp-icmp",
        UdpSocket::builder("icmp", localhost())
            .connect(peer)
            .on_datagram(move |_, _, _| {
                g.fetch_add(1, Ordering::Relaxed);
            }),
    );
    sock.send(b"anyone?".to_vec()).unwrap();
    wait_until("the refusal reported", || sock.stats().refused >= 1);
    // Somebody listens there now (unless another process took the port meanwhile).
    let Ok(back) = StdUdp::bind(peer) else {
        println!("skipped the second half: port {peer} was taken meanwhile");
        return;
    };
    back.set_read_timeout(Some(LIMIT)).unwrap();
    sock.send(b"now?".to_vec()).unwrap();
    assert_eq!(recv(&back), b"now?");
    back.send_to(b"yes", sock.local_addr()).unwrap();
    wait_until("the answer delivered", || got.load(Ordering::Relaxed) == 1);
    assert!(!sock.is_stopped());
    stop(io, sock);
}

#[test]
fn echoes_over_ipv6_loopback() {
    let Ok(c) = StdUdp::bind("[::1]:0") else {
        println!("skipped: no IPv6 loopback on this machine");
        return;
    };
    c.set_read_timeout(Some(LIMIT)).unwrap();
    let io = EventLoopThread::spawn("udp-v6", None).unwrap();
    let sock = echo(&io, "[::1]:0".parse().unwrap());
    assert!(sock.local_addr().is_ipv6());
    c.send_to(b"over v6", sock.local_addr()).unwrap();
    assert_eq!(recv(&c), b"over v6");
    stop(io, sock);
}

#[test]
fn stop_closes_the_socket_and_refuses_sends() {
    let io = EventLoopThread::spawn("udp-stop", None).unwrap();
    let sock = echo(&io, localhost());
    let addr = sock.local_addr();
    sock.stop();
    assert!(sock.is_stopped());
    assert_eq!(
        sock.send_to(b"x".to_vec(), addr),
        Err(UdpSendError::Stopped)
    );
    wait_until("the descriptor closed", || sock.is_closed());
    // The address is free again.
    StdUdp::bind(addr).unwrap();
    io.stop().unwrap();
}

#[test]
fn the_end_of_the_loop_closes_the_socket() {
    let io = EventLoopThread::spawn("udp-end", None).unwrap();
    let sock = echo(&io, localhost());
    let c = client("127.0.0.1:0");
    c.send_to(b"up?", sock.local_addr()).unwrap();
    assert_eq!(recv(&c), b"up?");
    io.stop().unwrap();
    assert!(sock.is_closed());
    assert!(sock
        .send_to(b"x".to_vec(), c.local_addr().unwrap())
        .is_err());
}

#[test]
fn a_panicking_callback_loses_its_datagram_only() {
    let (io, sock) = start_on_thread(
        "udp-panic",
        UdpSocket::builder("panicky", localhost()).on_datagram(|ctx, payload, from| {
            assert_ne!(payload, b"boom", "a callback that panics");
            ctx.send_to(payload, from).unwrap();
        }),
    );
    let c = client("127.0.0.1:0");
    c.send_to(b"boom", sock.local_addr()).unwrap();
    c.send_to(b"fine", sock.local_addr()).unwrap();
    assert_eq!(recv(&c), b"fine");
    stop(io, sock);
}

#[test]
fn oversized_payloads_are_refused_at_once() {
    let io = EventLoopThread::spawn("udp-big", None).unwrap();
    let sock = echo(&io, localhost());
    let err = sock
        .send_to(vec![0u8; 70_000], "127.0.0.1:9".parse().unwrap())
        .unwrap_err();
    assert_eq!(err, UdpSendError::TooLarge { len: 70_000 });
    stop(io, sock);
}

#[test]
fn binding_a_taken_address_fails_at_start() {
    let io = EventLoopThread::spawn("udp-taken", None).unwrap();
    let taken = StdUdp::bind("127.0.0.1:0").unwrap();
    let err = UdpSocket::builder("taken", taken.local_addr().unwrap())
        .start(io.handle())
        .unwrap_err();
    assert!(err.to_string().contains("bind"), "{err}");
    io.stop().unwrap();
}

#[test]
fn large_datagrams_are_delivered_whole_with_a_large_slot() {
    // 1 024 slots of 64 KiB would not fit one pooled block: the batch is cut to fit.
    let (io, sock) = start_on_thread(
        "udp-large",
        echoing(
            UdpSocket::builder("large", localhost())
                .max_datagram(duo_net::udp::MAX_PAYLOAD)
                .batch(1024),
        ),
    );
    let c = client("127.0.0.1:0");
    let big: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    c.send_to(&big, sock.local_addr()).unwrap();
    assert_eq!(recv(&c), big);
    assert_eq!(sock.stats().truncated, 0);
    stop(io, sock);
}

#[test]
fn unbatched_receive_echoes_the_same() {
    let (io, sock) = start_on_thread(
        "udp-unbatched",
        echoing(
            UdpSocket::builder("unbatched", localhost())
                .batch(8)
                .unbatched_receive(true),
        ),
    );
    let c = client("127.0.0.1:0");
    let seen = echo_backlog(&io, &sock, &c, 40);
    assert_eq!(seen, (0..40).collect::<Vec<_>>());
    stop(io, sock);
}

/// Runs a no-op on the loop and waits for it: everything queued on the loop before it has
/// run when this returns.
fn loop_barrier(lp: &LoopHandle) {
    let (done, wait) = mpsc::channel();
    lp.queue_in_loop(move |_| {
        let _ = done.send(());
    })
    .unwrap();
    wait.recv_timeout(LIMIT).unwrap();
}

/// A cross-thread send accepted (`Ok`) while the callback stops the socket reaches the
/// loop after the socket closed: it is counted as dropped, not lost without a trace.
#[test]
fn a_send_accepted_just_before_a_stop_is_counted_when_it_cannot_go_out() {
    let (accepted_tx, accepted) = mpsc::channel();
    let (io, sock) = start_on_thread(
        "udp-send-stop",
        UdpSocket::builder("send-stop", localhost()).on_datagram(move |ctx, payload, from| {
            // Through the handle: queued on the loop, so it runs after the stop below.
            let ok = ctx.socket().send_to(payload.to_vec(), from).is_ok();
            let _ = accepted_tx.send(ok);
            ctx.stop();
        }),
    );
    let c = client("127.0.0.1:0");
    c.send_to(b"ping", sock.local_addr()).unwrap();
    assert!(accepted.recv_timeout(LIMIT).unwrap(), "send_to said Ok");
    wait_until("the socket closed", || sock.is_closed());
    // The queued send ran before this barrier.
    loop_barrier(io.handle());
    let st = sock.stats();
    assert_eq!(
        st.datagrams_out + st.dropped + st.send_errors,
        1,
        "the accepted datagram is sent or counted: {st:?}"
    );
    io.stop().unwrap();
}

/// A datagram another thread queued is counted against the limit all the way: once the
/// loop has taken it into its queue (before the flush that sends it), a second send that
/// would pass the limit is refused.
#[test]
fn a_cross_thread_send_taken_by_the_loop_still_counts_against_the_limit() {
    let (io, sock) = start_on_thread(
        "udp-bound",
        UdpSocket::builder("bound", localhost())
            .send_queue_bytes(10_000)
            .on_datagram(|_, _, _| {}),
    );
    let c = client("127.0.0.1:0");
    let to = c.local_addr().unwrap();
    // Queue the send and a second block behind it while the loop is held: both run in
    // the same drain of the loop's queue, and the flush the send schedules waits for the
    // next one, so while the second block holds the loop the datagram is in the loop's
    // queue, not sent.
    let first = block_loop(io.handle());
    sock.send_to(vec![1u8; 6_000], to).unwrap();
    let (release, ready) = queue_hold(io.handle());
    drop(first);
    ready.recv_timeout(LIMIT).unwrap();
    assert_eq!(sock.stats().datagrams_out, 0);
    assert!(
        matches!(
            sock.send_to(vec![2u8; 6_000], to),
            Err(UdpSendError::QueueFull { limit: 10_000 })
        ),
        "12 096 bytes would be queued against a limit of 10 000: {:?}",
        sock.stats()
    );
    drop(release);
    assert_eq!(recv(&c), vec![1u8; 6_000]);
    wait_until("the gauge back to 0", || sock.stats().queued_bytes == 0);
    stop(io, sock);
}

/// `builder_on`: a socket bound by the caller (blocking, as std makes it) is served as it
/// is, at its address, non-blocking; the buffer size asked for is applied to it.
#[test]
fn a_socket_bound_already_is_served_at_its_address() {
    let bound = StdUdp::bind(localhost()).unwrap();
    let addr = bound.local_addr().unwrap();
    let builder = UdpSocket::builder_on("bound", bound)
        .unwrap()
        .recv_buffer_size(256 << 10);
    let (io, sock) = start_on_thread("udp-bound", echoing(builder));
    assert_eq!(sock.local_addr(), addr);
    let c = client("127.0.0.1:0");
    for i in 0..3u8 {
        c.send_to(&[i; 100], addr).unwrap();
        assert_eq!(recv(&c), vec![i; 100]);
    }
    wait_until("three echoed", || sock.stats().datagrams_out == 3);
    stop(io, sock);
}
