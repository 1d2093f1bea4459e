//! `UdpSocket` in combinations the other UDP tests do not cover, over loopback (IPv4 and
//! `::1`): datagram sizes at the edges (0, 1, the slot, the largest IPv4 payload, one
//! more than the slot) in batches that mix cut and whole datagrams, ICMP errors on a
//! connected socket, sends racing a stop, many source addresses, `SO_REUSEPORT` over
//! several loops, and an IPv6 socket serving IPv4 peers.

mod util;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdp};
use std::sync::{Arc, Mutex};

use duo_net::UdpSocket;
use duo_reactor::EventLoopThread;
use duo_testkit::{wait_until, LIMIT};
use util::hold_loop;
use util::shared::echoing;

fn client(addr: &str) -> Option<StdUdp> {
    let c = StdUdp::bind(addr).ok()?;
    c.set_read_timeout(Some(LIMIT)).unwrap();
    Some(c)
}

fn recv_from(c: &StdUdp) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 70_000];
    let (n, from) = c.recv_from(&mut buf).expect("a datagram within the limit");
    buf.truncate(n);
    (buf, from)
}

/// Datagrams of 0 and 1 bytes, exactly the slot, one byte more than the slot (cut: counted,
/// not echoed) in one batch, batched and unbatched, over `ip`.
fn edge_sizes_in_one_batch(ip: &str, unbatched: bool) {
    let Some(c) = client(&format!("{ip}:0")) else {
        println!("skipped: no {ip}");
        return;
    };
    let io = EventLoopThread::spawn("udp-sizes", None).unwrap();
    let slot = 1000;
    let sock = echoing(
        UdpSocket::builder("sizes", format!("{ip}:0").parse().unwrap())
            .max_datagram(slot)
            .batch(8)
            .unbatched_receive(unbatched),
    )
    .start(io.handle())
    .unwrap();
    let to = sock.local_addr();
    let sizes = [0, slot + 1, 1, slot, 5 * slot, slot - 1, 0, slot + 1];
    let release = hold_loop(io.handle());
    for (i, &n) in sizes.iter().enumerate() {
        c.send_to(&vec![i as u8; n], to).unwrap();
    }
    drop(release);
    let whole: Vec<(usize, usize)> = sizes
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, n)| n <= slot)
        .collect();
    for &(i, n) in &whole {
        let (got, from) = recv_from(&c);
        assert_eq!(from, to);
        assert_eq!((got.len(), got.iter().all(|&b| b == i as u8)), (n, true));
    }
    wait_until("the counters", || {
        sock.stats().datagrams_out == whole.len() as u64
    });
    let s = sock.stats();
    assert_eq!(
        (s.datagrams_in, s.truncated),
        (whole.len() as u64, 3),
        "{s:?}"
    );
    sock.stop();
    io.stop().unwrap();
}

#[test]
fn edge_sizes_mixed_with_cut_datagrams_in_one_batch_v4() {
    edge_sizes_in_one_batch("127.0.0.1", false);
    edge_sizes_in_one_batch("127.0.0.1", true);
}

#[test]
fn edge_sizes_mixed_with_cut_datagrams_in_one_batch_v6() {
    edge_sizes_in_one_batch("[::1]", false);
    edge_sizes_in_one_batch("[::1]", true);
}

/// The largest IPv4 payload (65 507 bytes) goes both ways; one more byte is refused by the
/// kernel on send and counted, and the socket goes on.
#[test]
fn the_largest_ipv4_payload_is_echoed_and_one_more_is_a_send_error() {
    let c = client("127.0.0.1:0").unwrap();
    let io = EventLoopThread::spawn("udp-65507", None).unwrap();
    let sock = echoing(
        UdpSocket::builder("max", "127.0.0.1:0".parse().unwrap())
            .max_datagram(duo_net::udp::MAX_PAYLOAD),
    )
    .start(io.handle())
    .unwrap();
    let big: Vec<u8> = (0..65_507u32).map(|i| (i % 253) as u8).collect();
    c.send_to(&big, sock.local_addr()).unwrap();
    assert_eq!(recv_from(&c).0, big);
    let to = c.local_addr().unwrap();
    sock.send_to(vec![1u8; 65_508], to).unwrap();
    sock.send_to(b"after".to_vec(), to).unwrap();
    assert_eq!(recv_from(&c).0, b"after");
    wait_until("the counters", || sock.stats().datagrams_out == 2);
    assert_eq!(sock.stats().send_errors, 1);
    sock.stop();
    io.stop().unwrap();
}

/// A connected socket whose peer is gone: every datagram queued in one flush is handed to
/// the kernel once (the peer's "port unreachable" answers are counted, not taken for the
/// next datagram's failure), in order, and the socket goes on.
#[test]
fn a_connected_socket_to_a_closed_port_sends_every_queued_datagram() {
    let gone = StdUdp::bind("127.0.0.1:0").unwrap();
    let peer = gone.local_addr().unwrap();
    drop(gone);
    let io = EventLoopThread::spawn("udp-refused", None).unwrap();
    let sock = UdpSocket::builder("refused", "127.0.0.1:0".parse().unwrap())
        .connect(peer)
        .start(io.handle())
        .unwrap();
    for round in 0..3 {
        let release = hold_loop(io.handle());
        for i in 0..6u8 {
            sock.send(vec![i; 10]).unwrap();
        }
        drop(release);
        wait_until("the queue flushed", || {
            let s = sock.stats();
            s.queued_bytes == 0 && s.datagrams_out + s.send_errors + s.dropped >= 6 * (round + 1)
        });
        let s = sock.stats();
        assert_eq!(
            (s.datagrams_out, s.send_errors, s.dropped),
            (6 * (round + 1), 0, 0),
            "round {round}: {s:?}"
        );
    }
    wait_until("the refusals reported", || sock.stats().refused >= 1);
    println!("{:?}", sock.stats());
    sock.stop();
    io.stop().unwrap();
}

/// `send_to` then `stop` from one thread: the datagram was accepted before the stop and
/// reaches the loop before it, so it is sent, not dropped.
#[test]
fn a_send_queued_before_a_stop_from_the_same_thread_is_sent() {
    let c = client("127.0.0.1:0").unwrap();
    let io = EventLoopThread::spawn("udp-send-stop", None).unwrap();
    let sock = UdpSocket::builder("send-stop", "127.0.0.1:0".parse().unwrap())
        .start(io.handle())
        .unwrap();
    let to = c.local_addr().unwrap();
    let release = hold_loop(io.handle());
    let h = sock.clone();
    std::thread::spawn(move || {
        h.send_to(b"last words".to_vec(), to).unwrap();
        h.stop();
    })
    .join()
    .unwrap();
    drop(release);
    wait_until("the socket closed", || sock.is_closed());
    let s = sock.stats();
    assert_eq!((s.datagrams_out, s.dropped), (1, 0), "{s:?}");
    assert_eq!(recv_from(&c).0, b"last words");
    io.stop().unwrap();
}

/// Peers at many source addresses (127.0.0.2 ...) each get their own datagrams back, at
/// the address they sent from.
#[test]
fn many_source_addresses_each_get_their_replies() {
    let io = EventLoopThread::spawn("udp-peers", None).unwrap();
    let sock = echoing(UdpSocket::builder("peers", "127.0.0.1:0".parse().unwrap()))
        .start(io.handle())
        .unwrap();
    let peers: Vec<StdUdp> = (2..34u8)
        .map(|k| client(&format!("127.0.0.{k}:0")).unwrap())
        .collect();
    let release = hold_loop(io.handle());
    for (k, p) in peers.iter().enumerate() {
        for j in 0..3u8 {
            p.send_to(&[k as u8, j], sock.local_addr()).unwrap();
        }
    }
    drop(release);
    for (k, p) in peers.iter().enumerate() {
        for j in 0..3u8 {
            let (got, from) = recv_from(p);
            assert_eq!((got, from), (vec![k as u8, j], sock.local_addr()));
        }
    }
    sock.stop();
    io.stop().unwrap();
}

/// Several `SO_REUSEPORT` sockets on several loops: every datagram is handled by exactly
/// one of them, and each reply comes from the shared address.
#[test]
fn reuse_port_sockets_on_several_loops_handle_each_datagram_once() {
    let probe = StdUdp::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let seen: Arc<Mutex<HashMap<Vec<u8>, usize>>> = Arc::default();
    let mut loops = Vec::new();
    for i in 0..3 {
        let io = EventLoopThread::spawn(&format!("udp-rp{i}"), None).unwrap();
        let seen = Arc::clone(&seen);
        let Ok(sock) = UdpSocket::builder("rp", addr)
            .reuse_port(true)
            .on_datagram(move |ctx, payload, from| {
                *seen.lock().unwrap().entry(payload.to_vec()).or_default() += 1;
                ctx.send_to(payload, from).unwrap();
            })
            .start(io.handle())
        else {
            println!("skipped: port {addr} taken meanwhile");
            return;
        };
        loops.push((io, sock));
    }
    let clients: Vec<StdUdp> = (0..40).map(|_| client("127.0.0.1:0").unwrap()).collect();
    for (k, c) in clients.iter().enumerate() {
        c.send_to(format!("from {k}").as_bytes(), addr).unwrap();
    }
    for (k, c) in clients.iter().enumerate() {
        let (got, from) = recv_from(c);
        assert_eq!((got, from), (format!("from {k}").into_bytes(), addr));
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 40);
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    let total: u64 = loops.iter().map(|(_, s)| s.stats().datagrams_in).sum();
    assert_eq!(total, 40);
    for (io, sock) in loops {
        sock.stop();
        io.stop().unwrap();
    }
}

/// A dual-stack IPv6 socket gets IPv4 peers as IPv4-mapped addresses, and replies sent to
/// those addresses reach the peers (from the address they sent to).
#[test]
fn an_ipv6_socket_replies_to_ipv4_peers_at_their_mapped_addresses() {
    let io = EventLoopThread::spawn("udp-mapped", None).unwrap();
    let froms = Arc::new(Mutex::new(Vec::new()));
    let f = Arc::clone(&froms);
    let Ok(sock) = UdpSocket::builder("mapped", "[::]:0".parse().unwrap())
        .only_v6(false)
        .on_datagram(move |ctx, payload, from| {
            f.lock().unwrap().push(from);
            ctx.send_to(payload, from).unwrap();
        })
        .start(io.handle())
    else {
        println!("skipped: no IPv6 on this machine");
        io.stop().unwrap();
        return;
    };
    let port = sock.local_addr().port();
    let c4 = client("127.0.0.1:0").unwrap();
    c4.send_to(b"v4", ("127.0.0.1", port)).unwrap();
    let (got, from) = recv_from(&c4);
    assert_eq!((got.as_slice(), from.port()), (&b"v4"[..], port));
    let seen = froms.lock().unwrap()[0];
    match seen.ip() {
        IpAddr::V6(v6) => assert_eq!(
            v6.to_ipv4_mapped(),
            Some(std::net::Ipv4Addr::LOCALHOST),
            "{seen}"
        ),
        IpAddr::V4(v4) => assert_eq!(v4, std::net::Ipv4Addr::LOCALHOST),
    }
    assert_eq!(seen.port(), c4.local_addr().unwrap().port());
    // The handle sends to the reported form too.
    sock.send_to(b"again".to_vec(), seen).unwrap();
    assert_eq!(recv_from(&c4).0, b"again");
    sock.stop();
    io.stop().unwrap();
}

/// Stopped while datagrams wait in the kernel: the socket closes, nothing is counted
/// twice and the address is free again.
#[test]
fn stopped_with_datagrams_waiting_in_the_kernel() {
    let c = client("127.0.0.1:0").unwrap();
    let io = EventLoopThread::spawn("udp-stop-backlog", None).unwrap();
    let sock = echoing(UdpSocket::builder(
        "backlog",
        "127.0.0.1:0".parse().unwrap(),
    ))
    .start(io.handle())
    .unwrap();
    let addr = sock.local_addr();
    let release = hold_loop(io.handle());
    for i in 0..50u32 {
        c.send_to(&i.to_be_bytes(), addr).unwrap();
    }
    sock.stop();
    drop(release);
    wait_until("the socket closed", || sock.is_closed());
    let s = sock.stats();
    assert_eq!(s.datagrams_in, s.datagrams_out + s.dropped, "{s:?}");
    StdUdp::bind(addr).unwrap();
    io.stop().unwrap();
}

/// A socket bound to the wildcard address replies from the address each peer sent to: a
/// peer that sent to 127.0.0.3 gets its reply from 127.0.0.3 (a connected peer, such as
/// `socat - UDP:127.0.0.3:PORT`, drops a reply from any other address). Batched and
/// unbatched receive, IPv4 and a dual-stack IPv6 socket (IPv4 peers and `::1`).
#[test]
fn a_wildcard_socket_replies_from_the_address_the_peer_sent_to() {
    for (bind, unbatched) in [("0.0.0.0:0", false), ("0.0.0.0:0", true), ("[::]:0", false)] {
        let io = EventLoopThread::spawn("udp-wild", None).unwrap();
        let Ok(sock) = echoing(
            UdpSocket::builder("wild", bind.parse().unwrap())
                .only_v6(false)
                .unbatched_receive(unbatched),
        )
        .start(io.handle()) else {
            println!("skipped {bind}: no IPv6 here");
            io.stop().unwrap();
            continue;
        };
        let port = sock.local_addr().port();
        let c = client("127.0.0.1:0").unwrap();
        let mut targets: Vec<SocketAddr> = (1..5u8)
            .map(|k| SocketAddr::from(([127, 0, 0, k], port)))
            .collect();
        let c6 = if bind.starts_with('[') {
            client("[::1]:0")
        } else {
            None
        };
        if c6.is_some() {
            targets.push(format!("[::1]:{port}").parse().unwrap());
        }
        for (k, to) in targets.iter().enumerate() {
            let peer = if to.is_ipv6() {
                c6.as_ref().unwrap()
            } else {
                &c
            };
            // A connected peer, as socat's: only replies from `to` reach it.
            peer.connect(to).unwrap();
            peer.send(&[k as u8]).unwrap();
            let (got, from) = recv_from(peer);
            assert_eq!((got, from), (vec![k as u8], *to), "{bind}");
        }
        // Sends that are not replies go out as before (from the kernel's choice).
        let plain = client("127.0.0.1:0").unwrap();
        let to_plain = plain.local_addr().unwrap();
        let to_plain = if bind.starts_with('[') {
            SocketAddr::new(
                match to_plain.ip() {
                    IpAddr::V4(a) => IpAddr::V6(a.to_ipv6_mapped()),
                    v6 => v6,
                },
                to_plain.port(),
            )
        } else {
            to_plain
        };
        sock.send_to(b"unasked".to_vec(), to_plain).unwrap();
        assert_eq!(recv_from(&plain).0, b"unasked");
        assert_eq!(sock.stats().send_errors, 0);
        sock.stop();
        io.stop().unwrap();
    }
}
