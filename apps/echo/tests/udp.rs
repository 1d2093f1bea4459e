//! `echo --udp`: datagrams echoed on the TCP listener's port number, by std's `UdpSocket`
//! and by a real `socat` client (skipped, with one line, where socat is missing).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Server, IO_TIMEOUT};
use duo_testkit::{run_within, wait_child_within};

/// Starts `echo --udp ARGS..` and reads its `udp on` line.
fn start(args: &[&str]) -> (Server, SocketAddr) {
    let mut all = vec!["--udp"];
    all.extend_from_slice(args);
    let mut server = Server::start(&all);
    let line = server.line_starting("udp on ", Duration::from_secs(10));
    let udp: SocketAddr = line["udp on ".len()..].trim().parse().unwrap();
    (server, udp)
}

#[test]
fn udp_datagrams_are_echoed_on_the_tcp_port() {
    let (mut server, udp) = start(&["--io-threads", "1"]);
    assert_eq!(udp, server.addr(), "same address and port number as TCP");
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = [0u8; 4096];
    for i in 0..100u32 {
        let msg = format!("datagram {i}").repeat(1 + i as usize % 20);
        c.send_to(msg.as_bytes(), udp).unwrap();
        let (n, from) = c.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (msg.as_bytes(), udp));
    }
    // TCP still echoes beside it.
    let mut tcp = server.connect();
    tcp.write_all(b"tcp too").unwrap();
    let mut back = [0u8; 7];
    std::io::Read::read_exact(&mut tcp, &mut back).unwrap();
    assert_eq!(&back, b"tcp too");
    drop(tcp);
    let (status, _) = server.terminate("TERM", Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

#[test]
fn an_oversized_datagram_is_not_echoed_and_the_next_one_is() {
    let (mut server, udp) = start(&["--io-threads", "1"]);
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c.send_to(&[1u8; 3000], udp).unwrap();
    c.send_to(b"small", udp).unwrap();
    let mut buf = [0u8; 4096];
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"small");
    server.wait_for_stderr("larger than 2048 bytes", Duration::from_secs(10));
    let (status, _) = server.terminate("TERM", Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

/// Kills (by PID) and reaps a child on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = wait_child_within(&mut self.0, Duration::from_secs(5));
    }
}

#[test]
fn socat_gets_its_datagram_back() {
    if run_within(Command::new("socat").arg("-V"), Duration::from_secs(5)).is_err() {
        println!("skipped: socat is not installed");
        return;
    }
    let (mut server, udp) = start(&["--io-threads", "1"]);
    let mut socat = Reaped(
        Command::new("socat")
            .args(["-T", "10", "STDIO", &format!("UDP:{udp}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = socat.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let mut stdin = socat.0.stdin.take().unwrap();
    stdin.write_all(b"hello from socat\n").unwrap();
    stdin.flush().unwrap();
    let line = rx.recv_timeout(IO_TIMEOUT).expect("socat printed the echo");
    assert_eq!(line, "hello from socat\n");
    drop(stdin); // end of input: socat exits
    drop(socat);
    let (status, _) = server.terminate("TERM", Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

#[test]
fn every_worker_serves_udp_on_the_shared_port() {
    let (mut server, udp) = start(&["--processes", "2", "--io-threads", "1"]);
    assert_eq!(udp, server.addr());
    // Twenty sources: the kernel spreads them over the two workers' sockets by hash.
    let clients: Vec<UdpSocket> = (0..20)
        .map(|_| {
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            c
        })
        .collect();
    let mut buf = [0u8; 64];
    for round in 0..5 {
        for (i, c) in clients.iter().enumerate() {
            let msg = format!("{round}:{i}");
            c.send_to(msg.as_bytes(), udp).unwrap();
            let n = c.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], msg.as_bytes());
        }
    }
    let (status, _) = server.terminate("TERM", Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    let log = server.stderr_to_end(Duration::from_secs(5));
    let served: Vec<u64> = log
        .lines()
        .filter(|l| l.contains(" udp: UdpStats"))
        .map(|l| {
            let at = l.find("datagrams_in: ").unwrap() + "datagrams_in: ".len();
            l[at..].split(',').next().unwrap().parse().unwrap()
        })
        .collect();
    println!("served per worker: {served:?}");
    assert_eq!(served.len(), 2, "{log}");
    assert_eq!(served.iter().sum::<u64>(), 100, "{log}");
    assert!(
        served.iter().all(|&n| n > 0),
        "one worker served nothing: {log}"
    );
}
