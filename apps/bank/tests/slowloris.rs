//! Slowloris: 2 000 connections that each send one byte now and then and never finish a
//! line. The bank counts only whole commands as activity for the idle timeout, so every one
//! of them must be closed by the server within the idle timeout (plus a margin), however
//! busy it keeps trickling, while a well-behaved client doing `PING` / `BALANCE` round
//! trips the whole time sees no error and a low latency.
//!
//! This is a robustness check, not a benchmark: the latency bound is generous, and the
//! percentiles are printed for the record (`cargo test -- --nocapture`).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, Server, TempDir, PW};

/// Slow connections.
const CONNS: usize = 2000;
/// Threads driving them (each owns `CONNS / DRIVERS`).
const DRIVERS: usize = 4;
/// The server's `--idle-timeout`.
const IDLE: Duration = Duration::from_secs(2);
/// How late after the timeout a slow connection may still be open: the idle wheel's tick
/// (1/8 of the timeout), our polling period, and scheduling on a busy 2-core machine that
/// other jobs share (the server, 4 drivers and the good client compete for its cores;
/// 1.5 s was seen overrun under such load).
const MARGIN: Duration = Duration::from_secs(5);
/// Each slow connection sends one byte this often.
const TRICKLE: Duration = Duration::from_secs(1);
/// How often the drivers look at their connections.
const POLL: Duration = Duration::from_millis(50);
/// The well-behaved client's 99th percentile round trip under the load.
const P99_LATENCY: Duration = Duration::from_millis(500);
/// Its worst round trip, ever: a bound on a stall (a machine shared with other jobs can
/// hold any one thread off its core for a few hundred milliseconds).
const MAX_LATENCY: Duration = Duration::from_secs(3);
/// Descriptors the test process needs besides the slow connections.
const SPARE_FDS: u64 = 256;

/// What happened to one slow connection.
#[derive(Debug)]
struct Slow {
    /// From the end of `connect` to the server's close (EOF or reset), as seen by polling.
    closed_after: Option<Duration>,
    /// Bytes it sent.
    sent: usize,
    /// How the close showed: "eof", "reset", "write" (EPIPE/ECONNRESET on a write).
    how: &'static str,
    /// Bytes the server sent it (there must be none: no line was ever finished).
    received: usize,
}

/// Opens `n` connections, trickles one byte into each every [`TRICKLE`] (spread round
/// robin), and polls each for the server's close until all are closed or the deadline.
fn drive(addr: SocketAddr, n: usize, seed: usize) -> Vec<Slow> {
    struct Conn {
        stream: Option<TcpStream>,
        connected: Instant,
        next_write: Instant,
        slow: Slow,
    }
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("slow connection {i} of driver {seed}: {e}"));
        stream.set_nonblocking(true).unwrap();
        let connected = Instant::now();
        // Spread the writes of this driver over the trickle period.
        let offset = TRICKLE.mul_f64(((i * 7 + seed) % 20) as f64 / 20.0);
        conns.push(Conn {
            stream: Some(stream),
            connected,
            next_write: connected + offset,
            slow: Slow {
                closed_after: None,
                sent: 0,
                how: "",
                received: 0,
            },
        });
    }
    let give_up = Instant::now() + IDLE + MARGIN + Duration::from_secs(2);
    let payload = b"BALANCE 12345 TRANSFER"; // never a line end
    let mut open = n;
    let mut buf = [0u8; 256];
    while open > 0 && Instant::now() < give_up {
        let now = Instant::now();
        for c in &mut conns {
            let Some(stream) = c.stream.as_mut() else {
                continue;
            };
            let mut closed = None;
            match stream.read(&mut buf) {
                Ok(0) => closed = Some("eof"),
                Ok(k) => c.slow.received += k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => closed = Some("reset"),
            }
            if closed.is_none() && now >= c.next_write {
                let byte = payload[c.slow.sent % payload.len()];
                match stream.write(&[byte]) {
                    Ok(_) => c.slow.sent += 1,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => closed = Some("write"),
                }
                c.next_write += TRICKLE;
            }
            if let Some(how) = closed {
                // Not `now`: that was taken before this pass over hundreds of sockets, and
                // under load it is stale enough to make a close look early.
                c.slow.closed_after = Some(c.connected.elapsed());
                c.slow.how = how;
                c.stream = None; // close our end
                open -= 1;
            }
        }
        std::thread::sleep(POLL);
    }
    conns.into_iter().map(|c| c.slow).collect()
}

/// Open descriptors of process `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// (p50, p99, max) of `samples`, in ms.
fn summary(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i].as_secs_f64() * 1e3
    };
    (at(0.50), at(0.99), at(1.0))
}

/// Which part of the test a latency sample belongs to.
const BASELINE: u8 = 0;
const UNDER_LOAD: u8 = 1;
const AFTER: u8 = 2;

#[test]
fn trickling_connections_are_evicted_and_a_good_client_is_unharmed() {
    let test_start = Instant::now();
    // The test holds 2 000 sockets, and so does the server, which inherits our limit.
    let raised = duo_net::process::raise_fd_limit();
    let (soft, hard) = duo_net::process::fd_limit().unwrap_or((0, 0));
    if soft < CONNS as u64 + SPARE_FDS {
        eprintln!(
            "SKIPPED: needs {} open files, the limit is {soft} (hard {hard}; raising: {raised:?})",
            CONNS as u64 + SPARE_FDS
        );
        return;
    }

    let dir = TempDir::new("slowloris");
    let server = Server::start(
        &dir.join("bank.db"),
        &["--idle-timeout", &IDLE.as_secs().to_string()],
    );
    let addr = server.addr;
    let server_pid = server.pid();

    // The well-behaved client: PING and BALANCE round trips, all the time.
    let phase = Arc::new(AtomicU8::new(BASELINE));
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<[Vec<Duration>; 3]>> = Arc::default();
    // When the slowest round trip under load started, from the test's start.
    let slowest: Arc<Mutex<(Duration, Duration)>> = Arc::default();
    let good = {
        let (phase, stop, samples) = (phase.clone(), stop.clone(), samples.clone());
        let slowest = slowest.clone();
        let mut c = Client::logged_in(addr, "goodclient");
        assert_eq!(c.cmd("DEPOSIT 4200"), "OK 4200");
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (cmd, want) = if n % 2 == 0 {
                    ("PING", "PONG")
                } else {
                    ("BALANCE", "OK 4200")
                };
                let p = phase.load(Ordering::Relaxed);
                let t = Instant::now();
                let reply = c.try_cmd(cmd);
                let took = t.elapsed();
                assert_eq!(
                    reply.as_deref(),
                    Some(want),
                    "well-behaved client, round trip {n} ({cmd}) after {:?}",
                    test_start.elapsed()
                );
                samples.lock().unwrap()[p as usize].push(took);
                let mut worst = slowest.lock().unwrap();
                if p == UNDER_LOAD && took > worst.1 {
                    *worst = (t.duration_since(test_start), took);
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            // Still connected and served at the end.
            assert_eq!(c.cmd("PING"), "PONG");
        })
    };

    std::thread::sleep(Duration::from_millis(1500));
    let fds_before = fd_count(server_pid);

    // The slowloris load.
    phase.store(UNDER_LOAD, Ordering::Relaxed);
    let load_start = Instant::now();
    let load_offset = load_start.duration_since(test_start);
    let drivers: Vec<_> = (0..DRIVERS)
        .map(|d| std::thread::spawn(move || drive(addr, CONNS / DRIVERS, d)))
        .collect();
    let slow: Vec<Slow> = drivers
        .into_iter()
        .flat_map(|d| d.join().expect("driver thread"))
        .collect();
    let load_time = load_start.elapsed();
    phase.store(AFTER, Ordering::Relaxed);

    // The server has let go of every slow connection's descriptor.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut fds_after = fd_count(server_pid);
    while fds_after > fds_before + 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        fds_after = fd_count(server_pid);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    good.join().expect("the well-behaved client failed");

    // A newcomer is served, and the account is intact.
    let mut late = Client::connect(addr);
    assert_eq!(
        late.cmd(&format!("LOGIN goodclient {PW}")),
        "OK welcome goodclient"
    );
    assert_eq!(late.balance(), 4200);

    // Report.
    let mut samples = std::mem::take(&mut *samples.lock().unwrap());
    let [base, load, after] = &mut samples;
    let (b50, b99, bmax) = summary(base);
    let (l50, l99, lmax) = summary(load);
    let mut closes: Vec<Duration> = slow.iter().filter_map(|s| s.closed_after).collect();
    let (c50, c99, cmax) = summary(&mut closes);
    let cmin = closes.first().copied().unwrap_or_default();
    let count = |how: &str| slow.iter().filter(|s| s.how == how).count();
    let sent: usize = slow.iter().map(|s| s.sent).sum();
    eprintln!(
        "slowloris: {CONNS} connections, {sent} bytes trickled, all handled in {load_time:?}; \
         closed after: min {:.0} p50 {c50:.0} p99 {c99:.0} max {cmax:.0} ms \
         (eof {}, reset {}, on write {}); server fds {fds_before} before, {fds_after} after",
        cmin.as_secs_f64() * 1e3,
        count("eof"),
        count("reset"),
        count("write"),
    );
    let (worst_at, _) = *slowest.lock().unwrap();
    eprintln!(
        "well-behaved client round trips: without load {} (p50 {b50:.2} p99 {b99:.2} max \
         {bmax:.2} ms), under load {} (p50 {l50:.2} p99 {l99:.2} max {lmax:.2} ms, the max \
         {:.0} ms into the load), after {}",
        base.len(),
        load.len(),
        worst_at.saturating_sub(load_offset).as_secs_f64() * 1e3,
        after.len(),
    );

    // Every slow connection was closed by the server, not before the timeout and not much
    // after it, having sent bytes and received none.
    let open: Vec<usize> = (0..slow.len())
        .filter(|&i| slow[i].closed_after.is_none())
        .collect();
    assert!(
        open.is_empty(),
        "{} slow connections still open after {:?} (first: {:?})",
        open.len(),
        IDLE + MARGIN + Duration::from_secs(2),
        slow[open[0]]
    );
    assert!(
        cmin >= IDLE - Duration::from_millis(100),
        "a slow connection was closed {cmin:?} after connecting, before the {IDLE:?} timeout"
    );
    assert!(
        Duration::from_secs_f64(cmax / 1e3) <= IDLE + MARGIN,
        "a slow connection stayed open {cmax:.0} ms (timeout {IDLE:?} + margin {MARGIN:?})"
    );
    assert!(
        slow.iter().all(|s| s.received == 0),
        "the server answered a line that was never finished"
    );
    assert!(
        slow.iter().filter(|s| s.sent >= 2).count() >= CONNS * 9 / 10,
        "the load did not trickle: {sent} bytes in all"
    );
    assert!(
        fds_after <= fds_before + 2,
        "server descriptors: {fds_before} before the load, {fds_after} after"
    );

    // The well-behaved client never failed (its thread asserts every reply) and stayed
    // fast.
    assert!(
        load.len() >= 50,
        "only {} round trips under load",
        load.len()
    );
    assert!(
        Duration::from_secs_f64(l99 / 1e3) < P99_LATENCY,
        "the p99 round trip under load was {l99:.0} ms (bound {P99_LATENCY:?})"
    );
    assert!(
        Duration::from_secs_f64(lmax.max(bmax) / 1e3) < MAX_LATENCY,
        "a round trip took {:.0} ms (bound {MAX_LATENCY:?})",
        lmax.max(bmax)
    );
    let total = test_start.elapsed();
    assert!(total < Duration::from_secs(40), "took {total:?}");
}
