//! `echo serve --processes N`: the supervisor and its worker processes, run as a user runs
//! them; reload, upgrade, socket activation. Every child is killed by PID (dropping a
//! [`Server`]), every wait is bounded.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{read_to_eof, round_trip, Server};
use duo_testkit::{
    children, is_running, join_within, run_within, tcp_queues, wait_until, ChildServer,
    RefusedPort, LIMIT,
};

const ECHO: &str = env!("CARGO_BIN_EXE_echo");
const SOCKET_ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

/// How many sockets process `pid` has open.
fn sockets(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|l| l.to_string_lossy().starts_with("socket:"))
                .unwrap_or(false)
        })
        .count()
}

fn supervisor(n: &str) -> Server {
    let server = Server::start(&["serve", "--processes", n, "--io-threads", "1"]);
    wait_until("the workers", || {
        children(server.pid()).len() == n.parse::<usize>().unwrap()
    });
    server
}

/// Connections made in a tight loop (connect, one byte each way, close) until stopped:
/// how many, and how many were refused or reset.
#[derive(Debug, Default)]
struct Churn {
    ok: u64,
    refused: u64,
    reset: u64,
    /// Closed by a draining worker before the echo (allowed: an orderly close).
    closed_early: u64,
}

fn churn(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) -> thread::JoinHandle<Churn> {
    thread::spawn(move || {
        let mut c = Churn::default();
        while !stop.load(Ordering::Relaxed) {
            let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    c.refused += 1;
                    continue;
                }
                Err(e) => panic!("connect: {e}"),
            };
            s.set_read_timeout(Some(LIMIT)).unwrap();
            let mut b = [0u8; 1];
            let r = s.write_all(b"x").and_then(|()| s.read(&mut b));
            match r {
                Ok(1) => {
                    c.ok += 1;
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => c.closed_early += 1,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => c.reset += 1,
                Err(e) if e.kind() == ErrorKind::BrokenPipe => c.reset += 1,
                Err(e) => panic!("churn: {e}"),
            }
        }
        c
    })
}

#[test]
fn two_processes_serve_and_both_workers_accept() {
    // Each worker takes at most 2 connections; a full worker stops accepting and leaves
    // the socket's queue to the other, so 4 connections in a row (each a round trip, so
    // no two arrive at once) must land 2 and 2. Without the limit, one idle worker can
    // take them all: `EPOLLEXCLUSIVE` wakes the first waiter that is asleep.
    let server = Server::start(&[
        "serve",
        "--processes",
        "2",
        "--io-threads",
        "1",
        "--max-conns",
        "2",
    ]);
    wait_until("the workers", || children(server.pid()).len() == 2);
    let workers: Vec<u32> = children(server.pid()).into_iter().collect();
    let before: Vec<usize> = workers.iter().map(|p| sockets(*p)).collect();
    let mut held = Vec::new();
    for i in 0..4 {
        let mut s = server.connect();
        round_trip(&mut s, format!("hello {i}").as_bytes());
        held.push(s);
    }
    let grew: Vec<usize> = workers
        .iter()
        .zip(&before)
        .map(|(p, n)| sockets(*p) - n)
        .collect();
    assert_eq!(grew, [2, 2], "connections per worker");
    // A fifth waits in the queue until a worker has room again.
    let mut fifth = server.connect();
    fifth.write_all(b"fifth").unwrap();
    drop(held.pop());
    let mut buf = [0u8; 5];
    fifth.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"fifth");
    assert!(!server.stderr().contains("stats:"), "no stats unless asked");
}

#[test]
fn a_killed_worker_is_replaced_and_service_continues() {
    let server = supervisor("2");
    let before = children(server.pid());
    let victim = *before.iter().next().unwrap();
    duo_testkit::send_signal(victim, "KILL").unwrap();
    wait_until("a new worker", || {
        let now = children(server.pid());
        now.len() == 2 && !now.contains(&victim)
    });
    server.wait_for_stderr("killed by signal 9", LIMIT);
    for i in 0..8u8 {
        round_trip(&mut server.connect(), &[b'a' + i; 100]);
    }
}

#[test]
fn sigterm_delivers_a_large_pending_reply_whole_then_exits_0() {
    let mut server = supervisor("2");
    let workers = children(server.pid());
    let mut s = server.connect();
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    // Written without reading: the reply piles up in the kernel and the worker's buffer.
    let mut writer = s.try_clone().unwrap();
    let payload = data.clone();
    let w = thread::spawn(move || writer.write_all(&payload).unwrap());
    join_within("writing the request", w);
    // Until the worker has read every byte (its receive queue is empty).
    let (client, srv) = (s.local_addr().unwrap().port(), server.addr().port());
    wait_until("the worker read the whole request", || {
        tcp_queues(srv, client).is_some_and(|(_, rx)| rx == 0)
            && tcp_queues(client, srv).is_some_and(|(tx, _)| tx == 0)
    });
    server.signal("TERM");
    let got = read_to_eof(&mut s);
    assert_eq!(got.len(), data.len(), "the whole reply");
    assert!(got == data, "the reply is the request");
    drop(s);
    let status = server.wait_exit(LIMIT);
    // The whole log: the exit does not wait for the thread that collects it to read the
    // pipe's last lines, so read it to its end before looking for the last one.
    let log = server.stderr_to_end(LIMIT);
    assert_eq!(status.code(), Some(0), "stderr:\n{log}");
    for pid in workers {
        assert!(!is_running(pid), "worker {pid} exited");
    }
    assert!(log.contains("all workers have exited"), "stderr:\n{log}");
}

/// A reload (or an upgrade, by `echo reload`) while a connection is held and a thread
/// connects in a tight loop: new workers, the old ones exit once their connection closes,
/// nothing refused or reset.
fn reload_under_churn(upgrade: bool) {
    let server = supervisor("2");
    let sup_pid = server.pid();
    let old = children(sup_pid);
    let mut held = server.connect();
    round_trip(&mut held, b"before");

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let churner = churn(server.addr(), stop.clone(), progress.clone());
    wait_until("churn under way", || progress.load(Ordering::Relaxed) > 0);
    held.write_all(b"across").unwrap();
    // The old worker has read `across` (its receive queue is empty, and nothing is left
    // in ours to send) before it is retired: the reload, not a race with it, is what
    // must bring the reply.
    let (client, srv) = (held.local_addr().unwrap().port(), server.addr().port());
    wait_until("the old worker read `across`", || {
        tcp_queues(srv, client).is_some_and(|(_, rx)| rx == 0)
            && tcp_queues(client, srv).is_some_and(|(tx, _)| tx == 0)
    });
    let mut reload = Command::new(ECHO);
    reload.args(["reload", "--pid", &sup_pid.to_string()]);
    if upgrade {
        reload.arg("--upgrade");
    }
    let done = run_within(&mut reload, LIMIT).unwrap();
    assert!(done.status.success(), "{done:?}");
    server.wait_for_stderr("generation 2 is serving", LIMIT);
    // The old worker serving `held` drains it: the reply, then EOF.
    assert_eq!(read_to_eof(&mut held), b"across");
    drop(held);
    wait_until("the old workers exit", || {
        old.iter().all(|p| !is_running(*p))
    });
    // And are reaped: then only the new ones are children.
    wait_until("two new workers only", || {
        let now = children(sup_pid);
        now.len() == 2 && now.is_disjoint(&old)
    });
    // Some more churn on the new generation alone.
    let now = progress.load(Ordering::Relaxed);
    wait_until("churn on the new workers", || {
        progress.load(Ordering::Relaxed) > now + 50
    });
    stop.store(true, Ordering::Relaxed);
    let c = join_within("the churn thread", churner);
    eprintln!("churn: {c:?}");
    assert_eq!((c.refused, c.reset), (0, 0), "{c:?}");
    assert!(c.ok > 10, "{c:?}");
    assert!(is_running(sup_pid));
    if upgrade {
        let log = server.stderr();
        assert_eq!(count(&log, "adopting worker"), 2, "{log}");
        assert_eq!(
            count(&log, ", stats row "),
            2,
            "the stats region handed over: {log}"
        );
    }
    round_trip(&mut server.connect(), b"after");
}

#[test]
fn sighup_reload_replaces_the_workers_without_refusing_anyone() {
    reload_under_churn(false);
}

#[test]
fn upgrade_keeps_the_supervisor_pid_and_serves_throughout() {
    reload_under_churn(true);
}

#[test]
fn reload_refuses_a_process_that_is_not_an_echo_supervisor() {
    let single = Server::start(&["serve", "--io-threads", "0"]);
    for pid in [single.pid(), std::process::id(), 999_999_999] {
        let done = run_within(
            Command::new(ECHO).args(["reload", "--pid", &pid.to_string()]),
            LIMIT,
        )
        .unwrap();
        assert_eq!(done.status.code(), Some(1), "{done:?}");
        assert!(done.stderr.contains("echo reload:"), "{}", done.stderr);
    }
    // The single-process server did not get a SIGHUP.
    round_trip(&mut single.connect(), b"still here");
    // Nor does a worker of a supervisor (same binary, same command line).
    let server = supervisor("1");
    let worker = *children(server.pid()).iter().next().unwrap();
    let done = run_within(
        Command::new(ECHO).args(["reload", "--pid", &worker.to_string()]),
        LIMIT,
    )
    .unwrap();
    assert_eq!(done.status.code(), Some(1), "{done:?}");
    assert!(done.stderr.contains("is a worker of"), "{}", done.stderr);
    assert!(
        children(server.pid()).contains(&worker),
        "the worker lives on"
    );
}

/// The last `stats:` line of `log` with its counters: (workers, accepted).
fn last_stats(log: &str) -> Option<(u64, u64)> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("stats: generation"))?;
    let number_before = |word: &str| -> Option<u64> {
        let i = line.find(word)?;
        line[..i].split_whitespace().last()?.parse().ok()
    };
    Some((number_before(" workers")?, number_before(" accepted")?))
}

#[test]
fn the_supervisor_logs_counters_summed_over_its_workers() {
    let server = Server::start(&[
        "serve",
        "--processes",
        "2",
        "--io-threads",
        "1",
        "--stats-interval",
        "1",
    ]);
    let mut held = Vec::new();
    for _ in 0..6 {
        let mut s = server.connect();
        round_trip(&mut s, b"counted");
        held.push(s);
    }
    wait_until("a stats line counting the 6 connections", || {
        last_stats(&server.stderr())
            .is_some_and(|(workers, accepted)| workers == 2 && accepted == 6)
    });
}

#[test]
fn bad_process_counts_are_usage_errors() {
    for (n, why) in [("0", "at least 1"), ("100000", "too many")] {
        let done = run_within(
            Command::new(ECHO).args(["serve", "--listen", "127.0.0.1:0", "--processes", n]),
            LIMIT,
        )
        .unwrap();
        assert_eq!(done.status.code(), Some(2), "{done:?}");
        assert!(done.stderr.contains(why), "{}", done.stderr);
        assert!(done.stdout.is_empty());
    }
    // Under an open-file limit of 64 the supervisor's budget allows 23 workers: 30 are
    // refused, with the arithmetic.
    let done = run_within(
        Command::new("/bin/sh").args([
            "-c",
            "ulimit -n 64 && exec \"$0\" serve --listen 127.0.0.1:0 --processes 30",
            ECHO,
        ]),
        LIMIT,
    )
    .unwrap();
    assert_eq!(done.status.code(), Some(2), "{done:?}");
    assert!(
        done.stderr.contains("at most 23") && done.stderr.contains("open-file limit of 64"),
        "{}",
        done.stderr
    );
}

#[test]
fn an_activation_descriptor_that_is_not_a_listening_socket_is_a_usage_error() {
    // The shell opens fd 3 on a file and announces it as a socket, with its own pid.
    let done = run_within(
        Command::new("/bin/sh").args([
            "-c",
            "exec 3</dev/null; LISTEN_FDS=1 LISTEN_PID=$$ exec \"$0\" serve",
            ECHO,
        ]),
        LIMIT,
    )
    .unwrap();
    assert_eq!(done.status.code(), Some(2), "{done:?}");
    assert!(
        done.stderr
            .contains("descriptor 3 is not a listening TCP socket"),
        "{}",
        done.stderr
    );
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

/// Connects to `addr` once something listens there (the activator binds a moment after it
/// starts: poll with a deadline, there is no event to wait on).
fn connect_when_listening(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + LIMIT;
    loop {
        match TcpStream::connect(addr) {
            // Dialling a port nobody listens on yet, the kernel may pick that very port as
            // the source and connect the socket to itself: not the activator; dial again.
            Ok(s) if s.local_addr().ok() == s.peer_addr().ok() => {
                thread::sleep(Duration::from_millis(5))
            }
            Ok(s) => return s,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("connect {addr}: {e}"),
        }
    }
}

/// Connects to `addr` once something listens there, and round-trips `msg`.
fn connect_and_echo(addr: SocketAddr, msg: &'static [u8]) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut s = connect_when_listening(addr);
        s.set_read_timeout(Some(LIMIT)).unwrap();
        round_trip(&mut s, msg);
    })
}

/// Whether `systemd-socket-activate` is installed (else the test says it is skipped).
fn have_activator() -> bool {
    let there = Path::new(SOCKET_ACTIVATE).exists();
    if !there {
        println!("skipped: {SOCKET_ACTIVATE} is not installed");
    }
    there
}

fn socket_activated(extra: &[&str]) {
    if !have_activator() {
        return;
    }
    // The activator binds the port itself: it is held (bound, refusing connections) until
    // just before the activator starts, so no other test's server is given it meanwhile.
    let reserved = RefusedPort::new();
    let addr = reserved.addr();
    let mut cmd = Command::new(SOCKET_ACTIVATE);
    cmd.args(["-l", &addr.to_string(), ECHO, "serve", "--io-threads", "1"])
        .args(extra)
        .env("RUST_LOG", "info");
    // It executes echo on the first connection: connect first, then the line comes.
    let first = connect_and_echo(addr, b"first");
    drop(reserved);
    let mut server = ChildServer::start(cmd);
    assert_eq!(server.addr(), addr, "serves on the inherited socket");
    join_within("the first connection", first);
    if !extra.is_empty() {
        wait_until("the workers", || children(server.pid()).len() == 2);
    }
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    round_trip(&mut s, b"second");
    drop(s);
    let (status, _) = server.terminate("TERM", LIMIT);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", server.stderr());
}

#[test]
fn socket_activation_single_process() {
    socket_activated(&[]);
}

#[test]
fn socket_activation_with_two_processes() {
    socket_activated(&["--processes", "2"]);
}

/// A client that never closes: after the server's half-close it keeps its end open.
fn stubborn_client(server: &Server) -> TcpStream {
    let mut s = server.connect();
    round_trip(&mut s, b"hold");
    s
}

#[test]
fn the_drain_timeout_bounds_a_graceful_stop() {
    let mut server = Server::start(&[
        "serve",
        "--processes",
        "2",
        "--io-threads",
        "1",
        "--drain-timeout",
        "1",
    ]);
    let _held = stubborn_client(&server);
    let (status, took) = server.terminate("TERM", LIMIT);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", server.stderr());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "stopped after {took:?} with a 1 s drain timeout"
    );
}

#[test]
fn a_second_signal_stops_at_once() {
    let mut server = Server::start(&[
        "serve",
        "--processes",
        "2",
        "--io-threads",
        "1",
        "--drain-timeout",
        "60",
    ]);
    let _held = stubborn_client(&server);
    let sent = Instant::now();
    server.signal("TERM");
    server.wait_for_stderr("stopping", LIMIT);
    server.signal("INT");
    let status = server.wait_exit(LIMIT);
    let took = sent.elapsed();
    // Read the log to its end: the collecting thread may not have read its last lines
    // when the process exits.
    let log = server.stderr_to_end(LIMIT);
    assert_eq!(status.code(), Some(0), "stderr:\n{log}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(log.contains("quitting now"), "{log}");
}

#[test]
fn two_activated_sockets_are_a_usage_error() {
    if !have_activator() {
        return;
    }
    // Two ports the activator binds itself, held together (so they differ, and no other
    // test's server is given them) until just before it starts.
    let (a, b) = (RefusedPort::new(), RefusedPort::new());
    let (first, second) = (a.addr(), b.addr());
    // The program is executed on the first connection: make one, then it exits.
    let poke = thread::spawn(move || drop(connect_when_listening(first)));
    let mut activate = Command::new(SOCKET_ACTIVATE);
    activate.args([
        "-l",
        &first.to_string(),
        "-l",
        &second.to_string(),
        ECHO,
        "serve",
    ]);
    drop((a, b));
    let done = run_within(&mut activate, LIMIT).unwrap();
    join_within("the first connection", poke);
    assert_eq!(done.status.code(), Some(2), "{done:?}");
    assert!(done.stderr.contains("passed 2 sockets"), "{}", done.stderr);
}

#[test]
fn an_address_in_use_is_a_runtime_error_in_supervisor_mode_too() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let done = run_within(
        Command::new(ECHO).args(["serve", "--listen", &addr, "--processes", "2"]),
        LIMIT,
    )
    .unwrap();
    assert_eq!(done.status.code(), Some(1), "{done:?}");
    assert!(done.stderr.contains(&addr), "{}", done.stderr);
    assert!(done.stdout.is_empty());
}
