//! Descriptor exhaustion (`EMFILE`) on the accepting side: the server sheds the connections
//! it cannot hold (the client sees a close, not a hang), does not spin, keeps serving the
//! connections it has, and serves new ones once descriptors are free again.
//!
//! The server runs in a child process with a low `RLIMIT_NOFILE`: this test binary runs
//! itself again (`current_exe`) with [`CHILD_ENV`] set and only [`emfile_child_server`]
//! selected; in that mode the test lowers its own limit through `duo_sys::set_fd_limit`
//! (only `duo-sys` calls libc), serves echo, prints `listening on ADDR`, answers `stats`
//! lines on stdin and exits when stdin closes. The parent kills and reaps it by PID in a
//! drop guard, even when the test fails.

mod util;

use std::io::{BufRead, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use duo_net::EventLoop;

use duo_testkit::{ChildServer, LIMIT};
use util::{connect, echo_builder, init_log, is_peer_close, localhost};

/// Set in the child's environment, to the number of I/O threads its server runs.
const CHILD_ENV: &str = "DUO_NET_EMFILE_CHILD";
/// The child's open-file limit.
const CHILD_FD_LIMIT: u64 = 64;
/// Connections the parent tries to open: more than the child can hold.
const ATTEMPTS: usize = 100;
/// How long the parent waits for an echo from the child (or its close): far more than a
/// working server needs, short enough that a stuck one fails the test quickly.
const ECHO_WAIT: Duration = Duration::from_secs(3);

/// The child: an echo server under a low descriptor limit. Returns at once unless
/// [`CHILD_ENV`] is set.
#[test]
fn emfile_child_server() {
    let Some(io_threads) = std::env::var(CHILD_ENV).ok() else {
        return;
    };
    let io_threads: usize = io_threads.parse().expect("I/O thread count");
    init_log();
    duo_sys::set_fd_limit(CHILD_FD_LIMIT).expect("lower RLIMIT_NOFILE");
    let mut lp = EventLoop::new().expect("event loop");
    let server = echo_builder("emfile", localhost())
        .io_threads(io_threads)
        .start(&mut lp)
        .expect("start the server");
    let handle = server.clone_handle();
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    println!("descriptors open {open} of {CHILD_FD_LIMIT}");
    println!("listening on {}", server.local_addr());
    std::io::stdout().flush().unwrap();
    // Control: `stats` prints the counters; end of input (the parent is done or gone)
    // ends the process.
    thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) if l.trim() == "stats" => {
                    let s = handle.stats();
                    println!(
                        "stats accepted={} active={} closed={} fd_exhausted={}",
                        s.accepted, s.active, s.closed, s.fd_exhausted
                    );
                    let _ = std::io::stdout().flush();
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        std::process::exit(0);
    });
    lp.run().expect("main loop");
}

/// The child process; killed and reaped on drop. Its stderr is kept and shown if the
/// test fails.
struct Child(ChildServer);

impl Child {
    fn spawn(io_threads: usize) -> Child {
        let exe = std::env::current_exe().expect("test binary path");
        let mut cmd = Command::new(exe);
        cmd.args([
            "--exact",
            "emfile_child_server",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, io_threads.to_string());
        let server = ChildServer::builder(cmd)
            // The child is this test binary: the harness prints its own lines first.
            .allow_preamble()
            .startup(LIMIT)
            .stdin(Stdio::piped())
            .start();
        Child(server)
    }

    fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    /// The next stdout line starting with `prefix` (others are the test harness's).
    fn line_starting(&mut self, prefix: &str) -> String {
        self.0.line_starting(prefix, LIMIT)
    }

    /// The child's counters, as `name=value` pairs.
    fn stats(&mut self) -> Vec<(String, u64)> {
        let stdin = self.0.stdin();
        stdin.write_all(b"stats\n").unwrap();
        stdin.flush().unwrap();
        let line = self.line_starting("stats ");
        line.split_whitespace()
            .skip(1)
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }

    fn stat(&mut self, name: &str) -> u64 {
        self.stats()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no {name} in the child's stats"))
    }

    /// User + system CPU time the child has used so far (`/proc/PID/stat`).
    fn cpu_time(&self) -> Duration {
        duo_testkit::cpu_time(self.0.pid()).expect("CPU time of the child")
    }
}

/// How a connection attempt went.
enum Attempt {
    /// Echoed: the server holds the connection.
    Served(TcpStream),
    /// Closed by the server (EOF or reset) without an answer.
    Shed,
}

/// Connects, sends a line and waits (up to [`ECHO_WAIT`]) for the echo or the close.
fn attempt(addr: SocketAddr, i: usize) -> Attempt {
    let mut s = connect(addr);
    s.set_read_timeout(Some(ECHO_WAIT)).unwrap();
    let msg = format!("hello {i}\n");
    match s.write_all(msg.as_bytes()) {
        Ok(()) => {}
        Err(e) if is_peer_close(&e) => return Attempt::Shed,
        Err(e) => panic!("connection {i}: write: {e}"),
    }
    let mut back = vec![0u8; msg.len()];
    match s.read_exact(&mut back) {
        Ok(()) => {
            assert_eq!(back, msg.as_bytes(), "connection {i}: echo differs");
            Attempt::Served(s)
        }
        Err(e) if e.kind() == ErrorKind::UnexpectedEof || is_peer_close(&e) => Attempt::Shed,
        Err(e) => panic!("connection {i} neither served nor closed within {ECHO_WAIT:?}: {e}"),
    }
}

/// Sends `msg` on a held connection and expects it back within [`ECHO_WAIT`].
fn echo_within(s: &mut TcpStream, msg: &[u8], what: &str) {
    s.set_read_timeout(Some(ECHO_WAIT)).unwrap();
    s.write_all(msg)
        .unwrap_or_else(|e| panic!("{what}: write: {e}"));
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)
        .unwrap_or_else(|e| panic!("{what}: no echo within {ECHO_WAIT:?}: {e}"));
    assert_eq!(back, msg, "{what}: echo differs");
}

/// With the server's connections on an I/O thread.
#[test]
fn fd_exhaustion_with_io_thread() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    init_log();
    exhaust_and_recover(1);
}

/// With the connections on the main loop itself, which also accepts (the default).
#[test]
fn fd_exhaustion_single_reactor() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    init_log();
    exhaust_and_recover(0);
}

/// Fills the child's descriptor table with connections, checks that the extra ones are
/// closed at once (counted in `fd_exhausted`), that the held ones still echo, that the
/// child stays mostly idle (under 50% of one core) for a second in which new connections
/// keep arriving, and that after ten held connections close, new ones are served again.
fn exhaust_and_recover(io_threads: usize) {
    // One child at a time: two of them (or one spinning) sharing the machine's cores would
    // blur the CPU measurement.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = Child::spawn(io_threads);
    let addr = child.addr();
    // Fill the child's descriptor table.
    let mut served = Vec::new();
    let mut shed = 0;
    for i in 0..ATTEMPTS {
        match attempt(addr, i) {
            Attempt::Served(s) => served.push(s),
            Attempt::Shed => shed += 1,
        }
    }
    println!(
        "{} of {ATTEMPTS} connections served, {shed} shed",
        served.len()
    );
    assert!(shed > 0, "the child never ran out of descriptors");
    assert!(
        served.len() >= 20,
        "only {} connections served under a limit of {CHILD_FD_LIMIT}",
        served.len()
    );
    let exhausted = child.stat("fd_exhausted");
    assert!(
        exhausted >= shed as u64,
        "{shed} connections shed but fd_exhausted = {exhausted}"
    );
    assert_eq!(child.stat("active"), served.len() as u64);

    // The connections it holds still work.
    for (i, s) in served.iter_mut().enumerate() {
        echo_within(
            s,
            format!("still there {i}").as_bytes(),
            &format!("held connection {i} while exhausted"),
        );
    }

    // While exhausted, with a new connection every 20 ms for a second, the child must stay
    // mostly idle: a loop spinning on the pending connection would use a whole core.
    let cpu_before = child.cpu_time();
    let window = Instant::now();
    let mut knocked = 0;
    while window.elapsed() < Duration::from_secs(1) {
        match attempt(addr, ATTEMPTS + knocked) {
            Attempt::Shed => {}
            Attempt::Served(_) => panic!("served a connection beyond the descriptor limit"),
        }
        knocked += 1;
        // Pacing, not waiting for anything.
        thread::sleep(Duration::from_millis(20));
    }
    let wall = window.elapsed();
    let cpu = child.cpu_time().saturating_sub(cpu_before);
    println!("while exhausted: {knocked} connections shed, child CPU {cpu:?} over {wall:?}");
    assert!(
        cpu.as_secs_f64() < 0.5 * wall.as_secs_f64(),
        "the child used {cpu:?} of CPU in {wall:?} while out of descriptors: spinning"
    );

    // Free ten descriptors: new connections are served again.
    let freed = 10;
    let before = child.stat("closed");
    served.truncate(served.len() - freed);
    let deadline = Instant::now() + LIMIT;
    while child.stat("closed") < before + freed as u64 {
        assert!(
            Instant::now() < deadline,
            "the child did not see the closes"
        );
        thread::sleep(Duration::from_millis(5));
    }
    let mut fresh = Vec::new();
    for i in 0..5 {
        match attempt(addr, 1000 + i) {
            Attempt::Served(s) => fresh.push(s),
            Attempt::Shed => panic!("connection {i} shed although descriptors are free"),
        }
    }
    for (i, s) in served.iter_mut().chain(fresh.iter_mut()).enumerate() {
        echo_within(
            s,
            format!("after recovery {i}").as_bytes(),
            &format!("connection {i} after recovery"),
        );
    }
    assert_eq!(child.stat("active"), (served.len() + fresh.len()) as u64);
}
