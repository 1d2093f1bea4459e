//! Hostile clients: threads of this process, using std sockets, that read slowly or never,
//! reset connections mid-message and send garbage.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use duo_sys::socket2::{Domain, SockRef, Socket, Type};
use duo_testkit::Rng;

use super::{
    EVICT_SLACK, IDLE_TIMEOUT, MAX_ANOMALIES, SLOW_READERS, WARM_HOLD, WARM_UP_SLOW_READERS,
};

/// What one hostile client kind did, counted across its threads.
#[derive(Default)]
pub(super) struct Hostile {
    pub(super) name: &'static str,
    pub(super) server: usize,
    /// Connections opened.
    pub(super) conns: AtomicU64,
    pub(super) connect_failed: AtomicU64,
    pub(super) bytes_sent: AtomicU64,
    /// Connections the server closed or reset (expected for most kinds).
    pub(super) closed_by_server: AtomicU64,
    /// Reply lines read (bank).
    pub(super) replies: AtomicU64,
    /// Slow readers evicted, and the longest time from their last accepted byte to the
    /// eviction, in milliseconds.
    pub(super) evicted: AtomicU64,
    pub(super) max_evict_ms: AtomicU64,
    /// Slow readers' short cycles during warm-up.
    pub(super) warm_cycles: AtomicU64,
    /// Things that must not happen (a failure of the soak).
    pub(super) anomalies: AtomicU64,
    pub(super) anomaly_log: Mutex<Vec<String>>,
}

impl Hostile {
    fn new(name: &'static str, server: usize) -> Hostile {
        Hostile {
            name,
            server,
            ..Hostile::default()
        }
    }

    fn anomaly(&self, what: String) {
        self.anomalies.fetch_add(1, Ordering::Relaxed);
        let mut log = self.anomaly_log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() < MAX_ANOMALIES {
            log.push(what);
        }
    }

    /// Connects (counting the connection or the failure to connect) with read and write
    /// timeouts of `timeout`.
    fn open(&self, addr: SocketAddr, timeout: Duration) -> Option<TcpStream> {
        let Ok(s) = connect(addr, None) else {
            self.connect_failed.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        self.conns.fetch_add(1, Ordering::Relaxed);
        let _ = s.set_write_timeout(Some(timeout));
        let _ = s.set_read_timeout(Some(timeout));
        Some(s)
    }

    pub(super) fn get(&self, c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

fn seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// Connects with a 2 s timeout; `rcvbuf` shrinks the receive buffer first (a slow reader
/// then holds the server's data in the server, not in our kernel buffer).
fn connect(addr: SocketAddr, rcvbuf: Option<usize>) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if let Some(n) = rcvbuf {
        socket.set_recv_buffer_size(n)?;
    }
    socket.connect_timeout(&addr.into(), Duration::from_secs(2))?;
    Ok(socket.into())
}

/// Closes with an RST (`SO_LINGER` 0).
fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

fn stopped(stop: &AtomicBool) -> bool {
    stop.load(Ordering::Relaxed)
}

/// Sleeps `d` in small steps, returning early (true) when told to stop.
fn nap(d: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stopped(stop) {
            return true;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    stopped(stop)
}

/// Sends `payload` (repeated) until the server stops taking bytes, then never reads and
/// waits to be evicted by the server's idle timeout. During warm-up (before `warm_end`) it
/// resets the connection [`WARM_HOLD`] after the server stops reading instead, and starts
/// again: many short cycles bring the server's buffer pools to the high-water mark that
/// clients that never read give them before the warm-up peak of VmRSS is taken.
fn slow_reader(
    addr: SocketAddr,
    payload: &[u8],
    stop: &AtomicBool,
    h: &Hostile,
    warm_end: Instant,
    until: Option<Instant>,
) {
    while !stopped(stop) && until.is_none_or(|u| Instant::now() < u) {
        let stream = match connect(addr, Some(4096)) {
            Ok(s) => s,
            Err(_) => {
                h.connect_failed.fetch_add(1, Ordering::Relaxed);
                nap(Duration::from_millis(200), stop);
                continue;
            }
        };
        h.conns.fetch_add(1, Ordering::Relaxed);
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        // Fill: until a whole second passes without the server taking a byte.
        let mut off = 0;
        let mut sent: u64 = 0;
        let mut last_progress = Instant::now();
        let closed_early = loop {
            if stopped(stop) {
                reset(stream);
                return;
            }
            match (&stream).write(&payload[off..]) {
                Ok(n) => {
                    sent += n as u64;
                    h.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                    off = (off + n) % payload.len();
                    last_progress = Instant::now();
                    if sent > 1 << 30 {
                        h.anomaly(format!(
                            "the server took {sent} bytes from a client that never reads: \
                             no backpressure"
                        ));
                        break false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if last_progress.elapsed() > Duration::from_secs(1) {
                        break false;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => break true,
            }
        };
        if closed_early {
            // Evicted (or reset) before the buffers filled: possible when the load starves
            // this thread for longer than the idle timeout; not judged.
            h.closed_by_server.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if Instant::now() < warm_end {
            if nap(WARM_HOLD, stop) {
                reset(stream);
                return;
            }
            h.warm_cycles.fetch_add(1, Ordering::Relaxed);
            reset(stream);
            continue;
        }
        // Hold, never reading, until the server closes the connection.
        let limit = IDLE_TIMEOUT + EVICT_SLACK;
        loop {
            if nap(Duration::from_millis(100), stop) {
                reset(stream);
                return;
            }
            let gone = match stream.take_error() {
                Ok(Some(_)) | Err(_) => true,
                Ok(None) => match (&stream).write(&payload[..1]) {
                    Ok(n) => {
                        // The server read again (it made room): it is still active.
                        h.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                        sent += n as u64;
                        last_progress = Instant::now();
                        false
                    }
                    Err(e) => e.kind() != ErrorKind::WouldBlock,
                },
            };
            let waited = last_progress.elapsed();
            if gone {
                h.closed_by_server.fetch_add(1, Ordering::Relaxed);
                h.evicted.fetch_add(1, Ordering::Relaxed);
                h.max_evict_ms
                    .fetch_max(waited.as_millis() as u64, Ordering::Relaxed);
                break;
            }
            if waited > limit {
                h.anomaly(format!(
                    "a slow reader (sent {sent} bytes, reads nothing) was still connected \
                     {:.1} s after the server last took a byte (idle timeout {} s)",
                    waited.as_secs_f64(),
                    IDLE_TIMEOUT.as_secs()
                ));
                break;
            }
        }
        reset(stream);
    }
}

/// Echo: connect, then RST at once, or in the middle of a large message, or while the
/// server is echoing.
fn echo_resetter(addr: SocketAddr, stop: &AtomicBool, h: &Hostile) {
    let mut rng = Rng::new(seed());
    let big = rng.bytes(1 << 20);
    let mut i: u64 = 0;
    while !nap(Duration::from_millis(10), stop) {
        i += 1;
        let Some(mut s) = h.open(addr, Duration::from_millis(500)) else {
            continue;
        };
        match i % 3 {
            0 => {}
            1 => {
                // Up to 1 MiB, all or part of it: the server is still echoing when the
                // RST comes.
                let n = 64 * 1024 + rng.below(big.len() as u64 - 64 * 1024) as usize;
                match s.write(&big[..n]) {
                    Ok(n) => {
                        h.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        h.closed_by_server.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            _ => {
                let n = 1 + rng.below(256 * 1024) as usize;
                if s.write_all(&big[..n]).is_ok() {
                    h.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                    let mut buf = [0u8; 8192];
                    let _ = s.read(&mut buf);
                }
            }
        }
        reset(s);
    }
}

/// Bank: a partial line, a command whose reply a worker is still computing, or a long
/// pipeline, each cut off by an RST.
fn bank_resetter(addr: SocketAddr, stop: &AtomicBool, h: &Hostile) {
    let pings = "PING\n".repeat(2000) + "BALANCE\n";
    let mut i: u64 = 0;
    while !nap(Duration::from_millis(10), stop) {
        i += 1;
        let Some(mut s) = h.open(addr, Duration::from_millis(500)) else {
            continue;
        };
        let msg = match i % 4 {
            0 => "TRANSFER soak_nobody 12".to_owned(),
            // LOGIN runs on a worker (a password hash): its reply finds the connection gone.
            1 => format!("LOGIN soak_nobody_{} wrongpassword\n", i % 100),
            2 => pings.clone(),
            _ => "LOGIN soak_nobody wrongpassword\n".repeat(3),
        };
        match s.write_all(msg.as_bytes()) {
            Ok(()) => {
                h.bytes_sent.fetch_add(msg.len() as u64, Ordering::Relaxed);
            }
            Err(_) => {
                h.closed_by_server.fetch_add(1, Ordering::Relaxed);
            }
        }
        if i % 4 == 3 {
            let mut buf = [0u8; 256];
            if let Ok(n) = s.read(&mut buf) {
                h.replies.fetch_add(
                    buf[..n].iter().filter(|&&b| b == b'\n').count() as u64,
                    Ordering::Relaxed,
                );
            }
        }
        reset(s);
    }
}

/// Malformed commands that are answered `ERR` without touching the database (and that are
/// not failed logins, which close the connection after five).
const BAD_COMMANDS: &[&str] = &[
    "TRANSFER",
    "DEPOSIT abc",
    "WITHDRAW -1",
    "BALANCE extra",
    "HISTORY 0",
    "REGISTER bad-name! password123",
    "REGISTER someone short",
    "FROB",
    "BALANCE",
    "DEPOSIT 100",
    "TRANSFER bob 5",
    "ping extra",
    "\u{feff}PING",
    "TRANSFER bob 99999999999999999999",
    "LOGIN onlyone",
];

/// Bank: random binary lines, malformed commands, lines over the limit. Checks the replies.
fn garbage_sender(addr: SocketAddr, stop: &AtomicBool, h: &Hostile) {
    let mut rng = Rng::new(seed() ^ 0x5eed);
    let mut i: u64 = 0;
    while !nap(Duration::from_millis(20), stop) {
        i += 1;
        let Some(mut s) = h.open(addr, Duration::from_secs(5)) else {
            continue;
        };
        let mut msg = Vec::new();
        let mut expect_lines = 0u64;
        let overlong = i % 3 == 0;
        if overlong {
            let n = 1100 + rng.below(3000) as usize;
            msg.push(b'X');
            msg.extend((1..n).map(|_| match rng.next_u64() as u8 {
                b'\n' => b'.',
                b => b,
            }));
        } else if i % 3 == 1 {
            // Random binary lines: NULs, invalid UTF-8, control bytes.
            for _ in 0..1 + rng.below(20) {
                let n = 1 + rng.below(200) as usize;
                // A first byte that is not blank, so that every line gets a reply.
                msg.push(b'!' + rng.below(200) as u8);
                msg.extend((1..n).map(|_| match rng.next_u64() as u8 {
                    b'\n' => 0,
                    b => b,
                }));
                if rng.below(2) == 0 {
                    msg.push(b'\r');
                }
                msg.push(b'\n');
                expect_lines += 1;
            }
        } else {
            for _ in 0..1 + rng.below(20) {
                let cmd = BAD_COMMANDS[rng.below(BAD_COMMANDS.len() as u64) as usize];
                msg.extend_from_slice(cmd.as_bytes());
                msg.extend_from_slice(if rng.below(2) == 0 { b"\r\n" } else { b"\n" });
                expect_lines += 1;
                if rng.below(4) == 0 {
                    // Blank lines get no reply.
                    msg.extend_from_slice(b" \t\n");
                }
            }
        }
        if s.write_all(&msg).is_err() {
            h.closed_by_server.fetch_add(1, Ordering::Relaxed);
            reset(s);
            continue;
        }
        h.bytes_sent.fetch_add(msg.len() as u64, Ordering::Relaxed);
        let what = if overlong {
            format!("an overlong line ({} bytes)", msg.len())
        } else {
            format!("{expect_lines} bad lines")
        };
        // Read the replies: `expect_lines` ERR lines, or for an overlong line one
        // `ERR LINE_TOO_LONG` and the end of the stream.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let started = Instant::now();
        let outcome: Result<(), String> = loop {
            let lines = got.iter().filter(|&&b| b == b'\n').count() as u64;
            if !overlong && lines >= expect_lines {
                break Ok(());
            }
            match s.read(&mut buf) {
                Ok(0) => {
                    h.closed_by_server.fetch_add(1, Ordering::Relaxed);
                    break if overlong {
                        Ok(())
                    } else {
                        Err(format!(
                            "the bank closed the connection after {lines} of {expect_lines} \
                             replies to {what}"
                        ))
                    };
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break Err(format!(
                        "no complete answer to {what} after {:.1} s ({lines} reply lines{})",
                        started.elapsed().as_secs_f64(),
                        if overlong { ", no end of stream" } else { "" }
                    ));
                }
                Err(_) => {
                    // A reset: for an overlong line the bank may close before we read all.
                    h.closed_by_server.fetch_add(1, Ordering::Relaxed);
                    break if overlong {
                        Ok(())
                    } else {
                        Err(format!("the bank reset the connection during {what}"))
                    };
                }
            }
        };
        let text = String::from_utf8_lossy(&got);
        let lines: Vec<&str> = text.lines().collect();
        h.replies.fetch_add(lines.len() as u64, Ordering::Relaxed);
        let result = outcome.and_then(|()| {
            if let Some(bad) = lines.iter().find(|l| !l.starts_with("ERR ")) {
                return Err(format!("reply {bad:?} to {what}"));
            }
            if overlong {
                if !got.is_empty() && !lines.iter().any(|l| l.starts_with("ERR LINE_TOO_LONG")) {
                    return Err(format!("no ERR LINE_TOO_LONG for {what}: {lines:?}"));
                }
            } else if lines.len() as u64 != expect_lines {
                return Err(format!(
                    "{} replies to {what} (expected {expect_lines})",
                    lines.len()
                ));
            }
            Ok(())
        });
        if let Err(e) = result {
            h.anomaly(e);
        }
        if overlong {
            drop(s);
        } else {
            // An orderly close: the server sees the end of the stream.
            let _ = s.shutdown(Shutdown::Write);
            drop(s);
        }
    }
}

/// The hostile clients of a soak and their threads.
pub(super) struct HostileClients {
    /// What each kind did.
    pub(super) kinds: Vec<Arc<Hostile>>,
    threads: Vec<JoinHandle<()>>,
}

impl HostileClients {
    /// Starts every kind against its server (`addrs[0]` echo, `addrs[1]` the bank) until
    /// `stop`: [`SLOW_READERS`] slow readers per server, plus [`WARM_UP_SLOW_READERS`] until
    /// `warm_end`, and one thread of each other kind.
    pub(super) fn start(addrs: &[SocketAddr], stop: &Arc<AtomicBool>, warm_end: Instant) -> Self {
        let kinds = vec![
            Arc::new(Hostile::new("echo slow readers", 0)),
            Arc::new(Hostile::new("echo resetters", 0)),
            Arc::new(Hostile::new("bank slow readers", 1)),
            Arc::new(Hostile::new("bank resetters", 1)),
            Arc::new(Hostile::new("bank garbage senders", 1)),
        ];
        let mut threads = Vec::new();
        for h in &kinds {
            let count = if h.name.contains("slow") {
                SLOW_READERS + WARM_UP_SLOW_READERS
            } else {
                1
            };
            for i in 0..count {
                let (h, stop, addr) = (h.clone(), stop.clone(), addrs[h.server]);
                let until = (i >= SLOW_READERS).then_some(warm_end);
                threads.push(std::thread::spawn(move || match h.name {
                    "echo slow readers" => {
                        let payload: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
                        slow_reader(addr, &payload, &stop, &h, warm_end, until)
                    }
                    "bank slow readers" => slow_reader(
                        addr,
                        "BALANCE\n".repeat(8192).as_bytes(),
                        &stop,
                        &h,
                        warm_end,
                        until,
                    ),
                    "echo resetters" => echo_resetter(addr, &stop, &h),
                    "bank resetters" => bank_resetter(addr, &stop, &h),
                    _ => garbage_sender(addr, &stop, &h),
                }));
            }
        }
        HostileClients { kinds, threads }
    }

    /// Waits for every thread (they end once told to stop); returns what each kind did.
    pub(super) fn join(self) -> Vec<Arc<Hostile>> {
        for t in self.threads {
            let _ = t.join();
        }
        self.kinds
    }
}
