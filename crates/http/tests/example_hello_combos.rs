//! The `hello` example (`examples/hello.rs`) as a user runs it, in combinations its own
//! test does not try: its heavy route's pool full of work when SIGTERM comes, clients that
//! reset while their heavy request is under way, and an argument too many.
//!
//! Every wait has a deadline; the server process is killed by its guard if a test fails.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use duo_testkit::{example_binary, run_within, ChildServer, LIMIT};

/// The heaviest request `/primes` takes: seconds of work even in a release build.
const HEAVY: &str = "/primes?below=100000000";

/// How many heavy requests fill the example's pool: 2 workers and room for 16 waiting.
const POOL_ROOM: usize = 18;

fn hello() -> ChildServer {
    let mut cmd = Command::new(example_binary("duo-http", "hello"));
    cmd.arg("127.0.0.1:0").env("RUST_LOG", "info");
    ChildServer::builder(cmd).startup(LIMIT).start()
}

/// The status code of the response head `head`, if it is one.
fn status_of(head: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(head);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Sends a heavy request on each of `POOL_ROOM + 2` connections and returns them once two
/// were refused with 503: the pool is then full, every request has been read and the
/// other `POOL_ROOM` are running or queued on it. (The connections are polled without
/// blocking, with a deadline; no other descriptor of them exists, so dropping one with
/// `SO_LINGER` 0 resets it.)
fn fill_the_pool(addr: SocketAddr) -> Vec<TcpStream> {
    let mut conns = Vec::new();
    for _ in 0..POOL_ROOM + 2 {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(format!("GET {HEAVY} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .expect("send the request");
        s.set_nonblocking(true).unwrap();
        conns.push((s, Vec::new()));
    }
    let deadline = Instant::now() + LIMIT;
    loop {
        let mut refused = 0;
        for (s, head) in &mut conns {
            let mut buf = [0u8; 512];
            match s.read(&mut buf) {
                Ok(n) => head.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("a heavy request: {e}"),
            }
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                let status = status_of(head);
                assert_eq!(status, Some(503), "with the pool full: {head:?}");
                refused += 1;
            }
        }
        if refused >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no two 503s from a full pool within {LIMIT:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
    conns.into_iter().map(|(s, _)| s).collect()
}

/// Ctrl-C or SIGTERM while the pool computes answers: the server gives them its grace
/// (3 s) to come, then closes what is still open and exits, in bounded time. It used to
/// wait for every accepted job (18 sieves of 10^8 for clients already gone: minutes)
/// before it exited, and a second signal did not help.
#[test]
fn sigterm_with_the_pool_full_of_heavy_work_exits_after_the_grace() {
    let mut server = hello();
    let conns = fill_the_pool(server.addr());
    // 3 s of grace, then the jobs must notice their clients are gone.
    let (status, took) = server
        .try_terminate("TERM", Duration::from_secs(7))
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", server.stderr()));
    assert!(status.success(), "exit {status}; log:\n{}", server.stderr());
    assert!(took >= Duration::from_millis(2500), "no grace: {took:?}");
    drop(conns);
}

/// A second signal quits at once, also with the pool full of heavy work: the connections
/// go with the loops, and the jobs with them. It used to quit the loop only to wait for
/// every accepted job all the same.
#[test]
fn a_second_signal_quits_at_once_with_the_pool_full() {
    let mut server = hello();
    let conns = fill_the_pool(server.addr());
    server.signal("TERM");
    server.wait_for_stderr("shutting down", LIMIT);
    let (status, took) = server
        .try_terminate("INT", Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", server.stderr()));
    assert!(status.success(), "exit {status}; log:\n{}", server.stderr());
    assert!(took < Duration::from_secs(2), "{took:?}");
    drop(conns);
}

/// Clients that reset their connection while their heavy requests run or wait: their work
/// is abandoned, so the next client is answered at once. It used to wait (or get 503)
/// while the pool computed answers for nobody.
#[test]
fn work_of_clients_that_reset_is_abandoned() {
    let server = hello();
    let conns = fill_the_pool(server.addr());
    for s in conns {
        let sock = socket2::Socket::from(s);
        sock.set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
        drop(sock); // RST
    }
    // The server notices the resets as they come: 503 until then, never a long wait.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match status_within(server.addr(), "/primes?below=100", deadline) {
            Some(200) => break,
            Some(503) => {}
            other => panic!("/primes?below=100 answered {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the pool is still busy with the work of clients that reset; log:\n{}",
            server.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The status of `GET path` on a new connection, or `None` if no response head came by
/// `deadline`.
fn status_within(addr: SocketAddr, path: &str, deadline: Instant) -> Option<u16> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .expect("send the request");
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    status_of(&head)
}

/// An argument too many is a usage error (exit 2), as for every program of the project;
/// it used to be ignored, and the server started.
#[test]
fn an_extra_argument_is_a_usage_error() {
    let out = run_within(
        Command::new(example_binary("duo-http", "hello")).args(["127.0.0.1:0", "extra"]),
        Duration::from_secs(5),
    )
    .expect("run hello");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("usage: hello"), "{}", out.stderr);
    assert!(out.stderr.contains("\"extra\""), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}
