//! The peer baselines of `cargo xtask bench` (`raw_epoll_echo`, `tokio_echo`) echo every
//! byte, in order, to several concurrent clients, including one that reads late (so the
//! server must hold back and stop reading), and close on end of file.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// Bytes each client sends.
const PAYLOAD: usize = 1 << 20;
const CLIENTS: u64 = 6;
/// Bounds every wait of the test.
const DEADLINE: Duration = Duration::from_secs(20);

/// A running server, killed (by PID, `SIGKILL`) and reaped when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(exe: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(exe)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {exe}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        // Build the guard first so that a failed wait still kills the child.
        let mut server = Server {
            child,
            addr: ([0, 0, 0, 0], 0).into(),
        };
        let line = rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("{exe} printed no listening line in time"));
        server.addr = line
            .trim_end()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{exe}: unexpected first line {line:?}"));
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// xorshift64*: reproducible pseudo-random numbers without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Sends `PAYLOAD` pseudo-random bytes in random chunks from one thread while another reads
/// the echo (after `read_delay`), then checks the echo and that the server closes on EOF.
fn client(addr: SocketAddr, seed: u64, read_delay: Duration) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let data: Vec<u8> = (0..PAYLOAD).map(|_| rng.next() as u8).collect();
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let reading = thread::spawn(move || {
        thread::sleep(read_delay);
        let mut echoed = Vec::with_capacity(PAYLOAD);
        reader.read_to_end(&mut echoed).map(|_| echoed)
    });
    let mut writer = stream;
    let mut rest = &data[..];
    while !rest.is_empty() {
        let chunk = (1 + rng.next() % 100_000).min(rest.len() as u64) as usize;
        writer.write_all(&rest[..chunk]).unwrap();
        rest = &rest[chunk..];
    }
    writer.shutdown(Shutdown::Write).unwrap();
    let echoed = reading.join().unwrap().expect("reading the echo");
    assert_eq!(echoed.len(), PAYLOAD, "client {seed}: echo length");
    let first_diff = echoed.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "client {seed}: echo differs");
}

fn check_server(exe: &str, extra: &[&str]) {
    let server = Server::start(exe, extra);
    // Connections that close at once, some after sending: the server must shrug them off.
    for i in 0..20 {
        let mut s = TcpStream::connect(server.addr).unwrap();
        if i % 2 == 0 {
            s.write_all(b"bye").unwrap();
        }
    }
    let clients: Vec<_> = (0..CLIENTS)
        .map(|seed| {
            let addr = server.addr;
            // The first client reads late: the server has to stop reading it and buffer.
            let delay = Duration::from_millis(if seed == 0 { 300 } else { 0 });
            thread::spawn(move || client(addr, seed, delay))
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}

#[test]
fn raw_epoll_echo_echoes_concurrent_clients() {
    check_server(env!("CARGO_BIN_EXE_raw_epoll_echo"), &[]);
}

#[test]
fn tokio_echo_echoes_concurrent_clients() {
    check_server(env!("CARGO_BIN_EXE_tokio_echo"), &["--threads", "2"]);
}

#[test]
fn bad_arguments_are_refused() {
    for exe in [
        env!("CARGO_BIN_EXE_raw_epoll_echo"),
        env!("CARGO_BIN_EXE_tokio_echo"),
    ] {
        let status = Command::new(exe)
            .args(["--listen", "not-an-address"])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(2), "{exe}");
    }
}
