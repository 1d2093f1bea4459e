//! The VALUES loadgen reports, checked against servers whose behaviour the test controls:
//! the server CPU time charged with `--server-pid` (a server of several processes, one
//! that ends during the phase), and latency when the server stalls.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{loadgen, number};

/// Starts a server on a free loopback port (one thread per connection); it lives as long
/// as the test process. Each connection echoes what it reads for `answer_for` after it
/// was accepted, then goes silent: it reads and drops everything, answering nothing, and
/// keeps the connection open.
fn server(answer_for: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            thread::spawn(move || echo_for(stream, answer_for));
        }
    });
    addr
}

fn echo_for(mut stream: TcpStream, answer_for: Duration) {
    let silent_from = Instant::now() + answer_for;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if Instant::now() < silent_from && stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// A process tree started by `sh -c SCRIPT`, standing for a server of several processes
/// (a supervisor and its workers): the test passes the `sh`'s PID as `--server-pid`.
/// Every process of the tree is killed by PID when this is dropped.
struct Tree {
    sh: Child,
}

impl Tree {
    fn start(script: &str) -> Tree {
        let sh = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .spawn()
            .expect("start sh");
        let tree = Tree { sh };
        let pid = tree.pid();
        duo_testkit::wait_until("the sh's child process", || {
            !duo_testkit::children(pid).is_empty()
        });
        tree
    }

    fn pid(&self) -> u32 {
        self.sh.id()
    }

    /// Every process below the `sh`.
    fn descendants(&self) -> Vec<u32> {
        let mut found = Vec::new();
        let mut todo: Vec<u32> = duo_testkit::children(self.pid()).into_iter().collect();
        while let Some(pid) = todo.pop() {
            found.push(pid);
            todo.extend(duo_testkit::children(pid));
        }
        found
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for pid in self.descendants() {
            let _ = duo_testkit::send_signal(pid, "KILL");
        }
        let _ = self.sh.kill();
        let _ = self.sh.wait();
    }
}

/// `loadgen rr` for `secs` against `addr` with `--server-pid pid`; its JSON report.
fn rr_charging(addr: SocketAddr, pid: u32, secs: &str) -> String {
    let (addr, pid) = (addr.to_string(), pid.to_string());
    let (code, out) = loadgen(&[
        "rr",
        "--addr",
        &addr,
        "--conns",
        "1",
        "--secs",
        secs,
        "--server-pid",
        &pid,
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    out
}

/// The server is a parent process whose work is done by its child (as `--processes`
/// makes a supervisor whose workers serve): the CPU time charged to the measured phase is
/// the whole tree's, not the idle parent's alone (which made CPU per message look free).
#[test]
fn server_cpu_counts_the_worker_processes_of_the_server() {
    let addr = server(Duration::from_secs(3600));
    // The parent waits; its child spins (user time, about one CPU when it gets one).
    let tree = Tree::start("while :; do :; done & wait");
    let worker = tree.descendants()[0];
    let worker_before = duo_testkit::cpu_time(worker).expect("the worker's CPU time");
    let out = rr_charging(addr, tree.pid(), "1");
    let worker_cpu = duo_testkit::cpu_time(worker)
        .expect("the worker's CPU time")
        .saturating_sub(worker_before);
    let charged = number(&out, "server_cpu_secs");
    let used = worker_cpu.as_secs_f64();
    assert!(used >= 0.05, "the machine gave the worker no CPU: {used} s");
    // The worker spun all along; the measured phase is 1 s of a loadgen run of about
    // 1.1 s, so it is charged most of what it used then (the machine is shared: half is
    // a wide margin), and not more (plus two clock ticks).
    assert!(
        charged >= used * 0.5,
        "charged {charged} s of the {used} s the worker used: {out}"
    );
    assert!(
        charged <= used + 0.02,
        "charged {charged} s of {used} s: {out}"
    );
}

/// `cutime + cstime` of process `pid` (its reaped children's CPU time), in seconds, read
/// here from `/proc/PID/stat` (fields 16 and 17) and the clock tick.
fn reaped_children_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let (_, rest) = stat.rsplit_once(')').expect("a command name");
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let hz = duo_testkit::clock_ticks_per_second().expect("CLK_TCK");
    (fields[12] + fields[13]) as f64 / hz as f64
}

/// A worker process that ends during the measured phase (a crash, a restart) keeps its
/// share: once reaped, its CPU time is its parent's `cutime`, and it must still count
/// (without it the figure fell to zero: less after than before).
#[test]
fn server_cpu_keeps_a_worker_that_ended_during_the_phase() {
    let addr = server(Duration::from_secs(3600));
    // `timeout` stops the spinning child after 1.2 s and is reaped by the parent, which
    // then sleeps (a new, idle child): the spin ends well inside the 2 s phase.
    let tree = Tree::start("timeout 1.2 sh -c 'while :; do :; done'; exec sleep 30");
    let out = rr_charging(addr, tree.pid(), "2");
    let charged = number(&out, "server_cpu_secs");
    // All the spinning child used, reaped by `timeout`, then `timeout` by the parent.
    let used = reaped_children_cpu(tree.pid());
    assert!(used >= 0.05, "the machine gave the worker no CPU: {used} s");
    // The phase began a little after the spin (loadgen connects first) and ended after
    // it: most of the spin is in it.
    assert!(
        charged >= used * 0.5,
        "the CPU of the worker that ended was lost: {used} s used, {out}"
    );
    assert!(charged <= used + 0.02, "charged more than {used} s: {out}");
}

/// A server that stops answering before the end of the run: the request it leaves
/// unanswered has waited (at least) from when it was sent to the end of the phase, and
/// the latency figures must show that wait, not only the fast answers from before the
/// stall (which made a server that hung for most of the run look healthy).
#[test]
fn a_stall_at_the_end_of_the_phase_shows_in_the_latency() {
    let addr = server(Duration::from_millis(300)).to_string();
    let (code, out) = loadgen(&[
        "rr", "--addr", &addr, "--conns", "1", "--secs", "1.5", "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(number(&out, "msgs") > 0.0, "{out}");
    // Silent from 0.3 s after connecting, the phase ends about 1.5 s after the connect:
    // the last request has waited about 1.2 s.
    let max = number(&out, "max_us");
    assert!(max >= 900_000.0, "the stall is hidden: {out}");
    assert!(max <= 1_600_000.0, "{out}");
}

/// A bank server that keeps every balance at `BALANCE` cents (so the total is always
/// conserved) and answers each connection's transfers for `answer_for` after it was
/// accepted, then none: they stay unanswered, the connection open.
fn bank_server(answer_for: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            thread::spawn(move || bank_conn(stream, answer_for));
        }
    });
    addr
}

const BALANCE: u64 = 1000;

fn bank_conn(stream: TcpStream, answer_for: Duration) {
    use std::io::BufRead;
    let silent_from = Instant::now() + answer_for;
    let mut out = stream.try_clone().expect("clone the stream");
    for line in std::io::BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let reply = match line.split_whitespace().next() {
            Some("REGISTER") => "OK registered".to_owned(),
            Some("LOGIN") => "OK welcome".to_owned(),
            Some("TRANSFER") if Instant::now() >= silent_from => continue,
            _ => format!("OK {BALANCE}"),
        };
        if out.write_all(format!("{reply}\n").as_bytes()).is_err() {
            return;
        }
    }
}

/// The bank's transfers, as rr's requests: a server that stops answering before the end
/// shows its stall in the latency.
#[test]
fn a_bank_stall_at_the_end_of_the_phase_shows_in_the_latency() {
    let addr = bank_server(Duration::from_millis(300)).to_string();
    let (code, out) = loadgen(&[
        "bank",
        "--addr",
        &addr,
        "--clients",
        "1",
        "--accounts",
        "2",
        "--deposit",
        &BALANCE.to_string(),
        "--secs",
        "1.5",
        // Longer than the stall (1.2 s), so that the transfer is still awaited when the
        // phase ends (with 1 s it timed out before: a fault, not a wait at the end); the
        // drain after the phase waits this long for it.
        "--timeout",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(number(&out, "transfers") > 0.0, "{out}");
    let max = number(&out, "max_us");
    assert!(max >= 900_000.0, "the stall is hidden: {out}");
    assert!(max <= 1_600_000.0, "{out}");
}
