//! Runs the `roundtrip` example (`examples/roundtrip.rs`) as child processes over loopback:
//! the server's answers are correct and well-formed, datagrams of the wrong size are
//! ignored (counted, logged rate-limited) without disturbing the others, clients print
//! sane round trips and offsets (several at once, and over IPv6 when the host has it), a
//! client without a server gives up with status 1, and `SIGTERM` stops either side
//! cleanly. Every process is killed by its guard or deadline if a test fails; every read
//! has a deadline. Written in review round 12 of the UDP API, as a user would, from the
//! docs (library defects met on the way: `review_round12_udp.rs`).

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use duo_testkit::{example_binary, finish_within, run_within, send_signal, ChildServer, LIMIT};

/// Datagrams of the wrong size sent in a row, and good ones per peer at once: well within
/// a socket's default receive buffer (about 200 KiB, some 800 bytes per small datagram),
/// so that loopback loses none even when the server is slow to read.
const FLOOD: usize = 100;
const EACH: usize = 25;

fn roundtrip() -> Command {
    let mut cmd = Command::new(example_binary("duo-net", "roundtrip"));
    cmd.env("RUST_LOG", "info");
    cmd
}

fn start_server(addr: &str) -> ChildServer {
    let mut cmd = roundtrip();
    cmd.args(["server", addr]);
    ChildServer::builder(cmd).startup(LIMIT).start()
}

fn now_micros() -> i64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(d.as_micros()).unwrap()
}

fn message(sent: i64, received: i64) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[..8].copy_from_slice(&sent.to_be_bytes());
    m[8..].copy_from_slice(&received.to_be_bytes());
    m
}

/// A peer socket on the server's address family, every read bounded by `LIMIT`.
fn peer(server: SocketAddr) -> UdpSocket {
    let local = if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let s = UdpSocket::bind(local).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s
}

/// Receives one datagram from `from`: its two times, after checking it is 16 bytes.
fn answer(s: &UdpSocket, from: SocketAddr) -> (i64, i64) {
    let mut buf = [0u8; 64];
    let (n, src) = s.recv_from(&mut buf).expect("an answer within LIMIT");
    assert_eq!(src, from, "answer from the server's address");
    assert_eq!(n, 16, "answer of 16 bytes: {:?}", &buf[..n]);
    (
        i64::from_be_bytes(buf[..8].try_into().unwrap()),
        i64::from_be_bytes(buf[8..16].try_into().unwrap()),
    )
}

/// Checks the `round trip R us, clock offset O us` lines a client printed: `n` of them,
/// the offset within half a round trip (plus rounding) of `ahead`, how far the server's
/// clock is ahead of the client's (0 for the example's server: one host, one clock).
fn check_lines(stdout: &str, n: usize, ahead: i64) {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), n, "stdout:\n{stdout}");
    for line in lines {
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(words.len(), 8, "{line:?}");
        assert_eq!(
            (words[0], words[1], words[3], words[4], words[5], words[7]),
            ("round", "trip", "us,", "clock", "offset", "us"),
            "{line:?}"
        );
        let rtt: i64 = words[2].parse().unwrap();
        let offset: i64 = words[6].parse().unwrap();
        assert!(rtt >= 0, "{line:?}");
        // The server read its clock between the send and the answer's return.
        assert!((offset - ahead).abs() <= rtt / 2 + 1, "{line:?}");
    }
}

#[test]
fn server_answers_each_request_and_ignores_wrong_sizes_then_stops_on_sigterm() {
    let mut server = start_server("127.0.0.1:0");
    let to = server.addr();
    let s = peer(to);

    // One request: the client's time comes back first, the server's receive time second.
    let before = now_micros();
    s.send_to(&message(before, 0), to).unwrap();
    let (sent, received) = answer(&s, to);
    let after = now_micros();
    assert_eq!(sent, before);
    assert!(
        (before..=after).contains(&received),
        "{before} {received} {after}"
    );
    // The second field of a request is not looked at; any first field comes back as is.
    s.send_to(&message(-7, 99), to).unwrap();
    assert_eq!(answer(&s, to).0, -7);

    // Wrong sizes among good requests: only the good ones are answered, in order.
    let wrong: Vec<usize> = vec![0, 1, 15, 17, 24, 1500, 3000];
    for (i, &len) in wrong.iter().enumerate() {
        s.send_to(&vec![0xab; len], to).unwrap();
        s.send_to(&message(i as i64, 0), to).unwrap();
    }
    for i in 0..wrong.len() {
        assert_eq!(answer(&s, to).0, i as i64);
    }
    // A flood of them is logged at most 10 times (plus the summary).
    for _ in 0..FLOOD {
        s.send_to(&[1u8; 8], to).unwrap();
    }
    s.send_to(&message(1000, 0), to).unwrap();
    assert_eq!(answer(&s, to).0, 1000);

    // Many at once from several peers: each gets its own answers, all of them.
    let peers: Vec<UdpSocket> = (0..4).map(|_| peer(to)).collect();
    for (p, socket) in peers.iter().enumerate() {
        for i in 0..EACH {
            socket
                .send_to(&message((p * 1000 + i) as i64, 0), to)
                .unwrap();
        }
    }
    for (p, socket) in peers.iter().enumerate() {
        let mut got: Vec<i64> = (0..EACH).map(|_| answer(socket, to).0).collect();
        got.sort_unstable();
        let want: Vec<i64> = (0..EACH).map(|i| (p * 1000 + i) as i64).collect();
        assert_eq!(got, want);
    }

    let (status, _) = server.terminate("TERM", LIMIT);
    let log = server.stderr();
    assert!(status.success(), "exit: {status}; log:\n{log}");
    let ignored = wrong.len() + FLOOD;
    assert!(
        log.contains(&format!(
            "answered {}, ignored {ignored} of the wrong size",
            2 + wrong.len() + 1 + 4 * EACH
        )),
        "{log}"
    );
    let logged = log.matches("ignored a datagram of").count();
    assert!((1..=10).contains(&logged), "{logged} lines:\n{log}");
}

#[test]
fn clients_print_round_trips_and_stop_after_count_several_at_once() {
    let server = start_server("127.0.0.1:0");
    let addr = server.addr().to_string();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            roundtrip()
                .args(["client", &addr, "10", "5", "50"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in clients {
        let done = finish_within(child, LIMIT).unwrap();
        assert!(done.status.success(), "{}\n{}", done.status, done.stderr);
        check_lines(&done.stdout, 5, 0);
    }
}

#[test]
fn over_ipv6_loopback_if_available() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    }
    let server = start_server("[::1]:0");
    assert!(server.addr().is_ipv6());
    let s = peer(server.addr());
    s.send_to(&message(42, 0), server.addr()).unwrap();
    assert_eq!(answer(&s, server.addr()).0, 42);
    let done = run_within(
        roundtrip().args(["client", &server.addr().to_string(), "10", "3", "50"]),
        LIMIT,
    )
    .unwrap();
    assert!(done.status.success(), "{}\n{}", done.status, done.stderr);
    check_lines(&done.stdout, 3, 0);
}

#[test]
fn client_gives_up_with_status_1_without_a_server() {
    // A port where nobody answers, and a closed port (ICMP "port unreachable").
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let closed = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for to in [silent.local_addr().unwrap(), closed] {
        let done = run_within(
            roundtrip().args(["client", &to.to_string(), "5", "0", "3"]),
            LIMIT,
        )
        .unwrap();
        assert_eq!(done.status.code(), Some(1), "{to}: {}", done.stderr);
        assert!(
            done.stderr
                .contains("no answer to 3 datagrams in a row; giving up"),
            "{to}: {}",
            done.stderr
        );
        assert!(
            done.stderr.contains("sent 3, answered 0"),
            "{to}: {}",
            done.stderr
        );
        assert_eq!(done.stdout, "", "{to}");
    }
}

#[test]
fn client_ignores_a_malformed_answer_and_stops_on_sigterm() {
    // The test plays the server: a junk answer and forged ones first, then a real one
    // with its clock a second ahead.
    let server = peer("127.0.0.1:0".parse().unwrap());
    let at = server.local_addr().unwrap();
    let child = roundtrip()
        .args(["client", &at.to_string(), "20", "0", "1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut buf = [0u8; 64];
    let (n, client) = server.recv_from(&mut buf).expect("a request within LIMIT");
    assert_eq!(n, 16);
    assert_eq!(&buf[8..16], &[0u8; 8], "a request's second field is 0");
    let sent = i64::from_be_bytes(buf[..8].try_into().unwrap());
    server.send_to(b"junk", client).unwrap();
    // Times no client sent, whose arithmetic would overflow.
    server
        .send_to(&message(i64::MIN, i64::MAX), client)
        .unwrap();
    server
        .send_to(&message(i64::MAX, i64::MIN), client)
        .unwrap();
    server
        .send_to(&message(sent, now_micros() + 1_000_000), client)
        .unwrap();
    // Its next request shows it is still running; then stop it.
    server.recv_from(&mut buf).expect("another request");
    send_signal(pid, "TERM").unwrap();
    let done = finish_within(child, LIMIT).unwrap();
    assert!(done.status.success(), "{}\n{}", done.status, done.stderr);
    assert!(
        done.stderr.contains("an answer of 4 bytes"),
        "{}",
        done.stderr
    );
    assert_eq!(
        done.stderr
            .matches("an answer to no datagram of ours")
            .count(),
        2,
        "{}",
        done.stderr
    );
    assert!(!done.stderr.contains("panic"), "{}", done.stderr);
    check_lines(&done.stdout, 1, 1_000_000);
}
