//! The `demo` example (`examples/demo.rs`) as a user runs it, in what its use by the
//! supervisor's tests does not try: a command line it does not understand (a usage error,
//! exit 2, as for every program of the project), and a worker out of descriptors.
//!
//! Every wait has a deadline; the supervisor is killed by its guard if a test fails (its
//! workers then get their parent-death signal).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use duo_testkit::{children, cpu_time, example_binary, run_within, ChildServer, LIMIT};

fn demo() -> Command {
    Command::new(example_binary("duo-supervisor", "demo"))
}

/// Runs `demo` with `args` (and `env`), which must refuse them: exit 2, a message on
/// stderr naming `what`, nothing on stdout. A demo that starts serving instead is killed
/// after a few seconds, and the test fails.
fn refused(args: &[&str], env: &[(&str, &str)], what: &str) {
    let mut cmd = demo();
    cmd.args(args).envs(env.iter().copied());
    let out = run_within(&mut cmd, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("demo {args:?} {env:?} was not refused: {e}"));
    assert_eq!(out.status.code(), Some(2), "demo {args:?} {env:?}: {out:?}");
    assert!(out.stderr.contains(what), "demo {args:?}: {}", out.stderr);
    assert!(out.stdout.is_empty(), "demo {args:?}: {}", out.stdout);
}

/// An unknown mode, an argument too many, a timeout that is not a number: each refused
/// with exit 2. They used to be ignored (an unknown mode served as `echo`, a timeout that
/// did not parse kept the default), so a typo ran something else than what was asked.
#[test]
fn what_the_demo_does_not_understand_is_a_usage_error() {
    refused(&["2", "bogus"], &[], "\"bogus\"");
    refused(&["2", "echo", "extra"], &[], "\"extra\"");
    refused(
        &["1"],
        &[("DEMO_READY_TIMEOUT_MS", "soon")],
        "DEMO_READY_TIMEOUT_MS",
    );
    refused(
        &["1"],
        &[("DEMO_STOP_TIMEOUT_MS", "-5")],
        "DEMO_STOP_TIMEOUT_MS",
    );
    // What was already refused still is, with the usage.
    refused(&[], &[], "usage: demo");
    refused(&["two"], &[], "usage: demo");
}

/// Connects and reads the worker's `pid N` greeting, within `LIMIT`.
fn greeted(addr: SocketAddr) -> TcpStream {
    let conn = TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(LIMIT)).unwrap();
    let mut line = String::new();
    BufReader::new(&conn)
        .read_line(&mut line)
        .expect("the greeting");
    assert!(line.starts_with("pid "), "greeting {line:?}");
    conn
}

/// A worker out of descriptors (more clients than its open-file limit lets it hold) waits
/// for one to be freed instead of spinning on `accept`'s `EMFILE`: the connections beyond
/// the limit wait in the backlog while the worker sleeps, and are served once clients
/// leave. It used to retry `accept` at once, forever, at a whole core's worth of CPU.
#[test]
fn a_worker_out_of_descriptors_waits_instead_of_spinning() {
    // `prlimit` sets the limit and executes the demo (the same PID); its worker inherits
    // the limit. 32 descriptors: fewer than 40 clients, enough for the supervisor.
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=32:32")
        .arg(example_binary("duo-supervisor", "demo"))
        .arg("1")
        .env("RUST_LOG", "info");
    let server = ChildServer::builder(cmd).startup(LIMIT).start();
    let workers = children(server.pid());
    assert_eq!(workers.len(), 1, "{workers:?}");
    let worker = *workers.iter().next().unwrap();

    // Fill the worker's table: each greeted client holds one descriptor there.
    let open_files = || {
        std::fs::read_dir(format!("/proc/{worker}/fd"))
            .expect("the worker's descriptors")
            .count()
    };
    let mut held = Vec::new();
    while open_files() < 32 {
        assert!(held.len() < 40, "the worker holds {} clients", held.len());
        held.push(greeted(server.addr()));
    }
    // These wait in the backlog.
    let mut waiting: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(server.addr()).expect("connect"))
        .collect();

    // Out of descriptors, with connections waiting: an idle worker, not a spinning one.
    let before = cpu_time(worker).expect("the worker's CPU time");
    let window = Instant::now();
    let mut used = Duration::ZERO;
    while window.elapsed() < Duration::from_millis(1500) {
        used = cpu_time(worker).expect("the worker's CPU time") - before;
        assert!(
            used < Duration::from_millis(300),
            "the worker burnt {used:?} of CPU in {:?} while out of descriptors; log:\n{}",
            window.elapsed(),
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("worker CPU while out of descriptors: {used:?} in 1.5 s");

    // Clients leave: the waiting connections are served.
    held.clear();
    for conn in &mut waiting {
        let mut line = String::new();
        conn.set_read_timeout(Some(LIMIT)).unwrap();
        BufReader::new(conn)
            .read_line(&mut line)
            .expect("the greeting of a connection that waited");
        assert!(line.starts_with("pid "), "greeting {line:?}");
    }
    assert!(
        server
            .stderr()
            .contains(&format!("demo worker {worker}: accept")),
        "{}",
        server.stderr()
    );
}
