//! Review of the day's changes: combinations the new code did not cover.

use std::net::{SocketAddr, UdpSocket as StdUdp};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use duo_net::{TcpServer, UdpSocket};
use duo_reactor::{EventLoop, EventLoopThread};

/// As `listener_hangup.rs`, for a Unix-domain listener (`builder_on_unix`, what a
/// supervisor hands its workers). Shut down by another holder, a Unix listener is not
/// reported hung up (`EPOLLHUP`) like a TCP one but readable (`EPOLLIN | EPOLLRDHUP`),
/// level-triggered, and a non-blocking `accept` there fails with `EAGAIN`, not `EINVAL`:
/// the acceptor's `WouldBlock` arm returns with READABLE still on, and the loop is told
/// again at every poll.
#[test]
fn a_unix_listener_shut_down_by_another_holder_does_not_spin_the_loop() {
    unix_listener_shut_down(0);
}

/// The same with I/O threads: the acceptors share the listener (`EPOLLEXCLUSIVE`, whose
/// registration leaves the read hang-up bit out, so the event says only "readable").
#[test]
fn a_shared_unix_listener_shut_down_by_another_holder_does_not_spin_its_loops() {
    unix_listener_shut_down(2);
}

fn unix_listener_shut_down(io_threads: usize) {
    let dir = std::env::temp_dir().join(format!("duo-review-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("hup-{io_threads}.sock"));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let other_holder = listener.try_clone().unwrap();
    let mut lp = EventLoop::new().unwrap();
    let server = TcpServer::builder_on_unix("hup-unix", listener)
        .unwrap()
        .io_threads(io_threads)
        .on_message(|ctx, input| {
            ctx.send(input.peek());
            input.consume_all();
        })
        .start(&mut lp)
        .unwrap();
    // Serving before the hang-up.
    drop(UnixStream::connect(&path).unwrap());
    lp.run_after(Duration::from_millis(20), move |_| {
        socket2::SockRef::from(&other_holder)
            .shutdown(std::net::Shutdown::Read)
            .unwrap();
    });
    lp.run_after(Duration::from_millis(40), move |lp| {
        let at_hangup = all_iterations();
        lp.run_after(Duration::from_millis(500), move |lp| {
            let turns = all_iterations() - at_hangup;
            assert!(
                turns < 100,
                "{turns} iterations in 500 ms after the Unix listener was shut down"
            );
            lp.quit();
        });
    });
    let ran = lp.run();
    server.stop(&mut lp);
    let _ = std::fs::remove_file(&path);
    ran.unwrap();
}

/// A dual-stack socket bound to `[::]` (pktinfo on, both options) answers an IPv4
/// client from the IPv4 address it sent to (IPV6_PKTINFO with a v4-mapped source).
#[test]
fn a_dual_stack_wildcard_socket_replies_to_an_ipv4_client() {
    let io = EventLoopThread::spawn("review-udp", None).unwrap();
    let sock = UdpSocket::builder("dual", "[::]:0".parse().unwrap())
        .on_datagram(|ctx, payload, from| {
            let _ = ctx.send_to(payload, from);
        })
        .start(io.handle())
        .unwrap();
    let port = sock.local_addr().port();
    let c = StdUdp::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let to = SocketAddr::from(([127, 0, 0, 2], port));
    c.send_to(b"ping", to).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = c.recv_from(&mut buf).expect("an echo");
    assert_eq!(&buf[..n], b"ping");
    assert_eq!(from, to);
    assert_eq!(sock.stats().send_errors, 0);
    sock.stop();
    io.stop().unwrap();
}

/// Iterations of every loop of the process (this test binary's tests run in parallel, but
/// an idle loop adds next to nothing).
fn all_iterations() -> u64 {
    duo_reactor::loops()
        .iter()
        .map(|h| h.metrics().iterations)
        .sum()
}
