//! The `tunnel` example (`crates/net/examples/tunnel.rs`), run as a child process in front
//! of a backend: bulk transfers come back intact; a reader that stalls makes the tunnel
//! push back instead of buffering; 200 half-closing transfers each get exactly their bytes
//! back; a backend that speaks and half-closes first still gets the client's upload; a
//! client's reset ends the backend connection; an unreachable backend closes the client's
//! connection cleanly. The tunnel keeps serving throughout.
//!
//! The backends are plain thread-per-connection servers on `std`, independent of the
//! library under test. Every wait has a deadline.

mod util;

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use duo_testkit::{
    example_binary, random_bytes, run_within, wait_until, wait_until_within, ChildServer, LIMIT,
};
use util::{connect, is_peer_close};

/// The tunnel's high-water mark (see the example): what it may buffer per direction.
const TUNNEL_HIGH_WATER: usize = 1 << 20;

// ---------------------------------------------------------------------------------------
// The tunnel as a child process.

/// The example's binary, next to this test's (built once per test process).
fn tunnel_binary() -> PathBuf {
    example_binary("duo-net", "tunnel")
}

/// A running `tunnel 127.0.0.1:0 BACKEND`; killed and reaped on drop. Its stderr (the log)
/// is kept, and printed if the test fails.
struct Tunnel {
    server: ChildServer,
    addr: SocketAddr,
}

impl Tunnel {
    fn start(backend: SocketAddr) -> Tunnel {
        let mut cmd = Command::new(tunnel_binary());
        cmd.args(["127.0.0.1:0", &backend.to_string()]).env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let server = ChildServer::builder(cmd).startup(LIMIT).start();
        Tunnel {
            addr: server.addr(),
            server,
        }
    }

    fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// The tunnel's resident set size, from `/proc/PID/status`.
    fn rss(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        let kib: usize = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib << 10
    }

    /// The tunnel's open descriptors, as what they point to (`/proc/PID/fd`).
    fn open_fds(&self) -> Vec<String> {
        let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/PID/fd")
            .flatten()
            .map(|e| match std::fs::read_link(e.path()) {
                Ok(target) => target.display().to_string(),
                Err(_) => "?".to_owned(),
            })
            .collect();
        fds.sort();
        fds
    }

    /// Waits until the tunnel has no more descriptors open than at `baseline`: every relay
    /// it served has closed both its connections.
    fn wait_for_fds(&self, baseline: &[String]) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let now = self.open_fds();
            if now.len() <= baseline.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the tunnel still has {} descriptors open {LIMIT:?} later, not {}:\n\
                 now {now:?}\nbaseline {baseline:?}",
                now.len(),
                baseline.len()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn assert_running(&mut self) {
        let status = self.server.try_wait();
        assert!(status.is_none(), "the tunnel exited: {status:?}");
    }

    fn log(&self) -> String {
        self.server.stderr()
    }
}

// ---------------------------------------------------------------------------------------
// Backends: thread-per-connection servers on std.

struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Connections whose handler has returned.
    ended: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// An echo server: echoes until end of stream, then half-closes.
    fn echo() -> Backend {
        Backend::start(echo)
    }

    /// Serves each connection with `serve` on a thread of its own.
    fn start(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the backend");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let ended = Arc::new(AtomicUsize::new(0));
        let serve = Arc::new(serve);
        let (stopped, done) = (stop.clone(), ended.clone());
        let thread = thread::Builder::new()
            .name("backend".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(s) = stream else { continue };
                    // Every wait of a handler is bounded.
                    let _ = s.set_read_timeout(Some(3 * LIMIT));
                    let _ = s.set_write_timeout(Some(3 * LIMIT));
                    let (serve, done) = (serve.clone(), done.clone());
                    thread::spawn(move || {
                        serve(s);
                        done.fetch_add(1, Ordering::SeqCst);
                    });
                }
            })
            .expect("spawn the backend");
        Backend {
            addr,
            stop,
            ended,
            thread: Some(thread),
        }
    }
}

fn echo(mut s: TcpStream) {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocked accept.
        let _ = TcpStream::connect_timeout(&self.addr, LIMIT);
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + LIMIT;
            while !t.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Transfers.

/// Writes `data` to `s` from a second thread (then half-closes), reads the echo on this
/// one, checks every byte, and expects an orderly end of stream right after the last one.
/// `before_reading` runs before the first read (a stall, say). Returns the time taken.
fn round_trip(
    what: &str,
    s: TcpStream,
    data: &[u8],
    written: &AtomicUsize,
    before_reading: impl FnOnce(),
) -> Duration {
    let started = Instant::now();
    s.set_write_timeout(Some(LIMIT)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut writer = s.try_clone().expect("clone the client socket");
    let mut reader = s;
    thread::scope(|scope| {
        let w = scope.spawn(move || -> io::Result<()> {
            for chunk in data.chunks(64 << 10) {
                writer.write_all(chunk)?;
                written.fetch_add(chunk.len(), Ordering::SeqCst);
            }
            writer.shutdown(Shutdown::Write)
        });
        before_reading();
        let received = read_and_check(what, &mut reader, data);
        let write = w.join().expect("writer thread");
        if let Err(e) = write {
            panic!("{what}: write failed: {e}");
        }
        assert_eq!(received, data.len(), "{what}: short echo");
    });
    started.elapsed()
}

/// Reads until end of stream, checking the bytes against `expected`; returns how many came.
fn read_and_check(what: &str, s: &mut TcpStream, expected: &[u8]) -> usize {
    let mut buf = vec![0u8; 256 << 10];
    let mut received = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return received,
            Ok(n) => {
                let end = received + n;
                assert!(
                    end <= expected.len(),
                    "{what}: {end} bytes came back, only {} sent",
                    expected.len()
                );
                if buf[..n] != expected[received..end] {
                    let at = (0..n).find(|&k| buf[k] != expected[received + k]).unwrap();
                    panic!("{what}: byte {} differs", received + at);
                }
                received = end;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_peer_close(&e) => panic!(
                "{what}: reset after {received} of {} bytes: {e}",
                expected.len()
            ),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => panic!(
                "{what}: nothing more within the read timeout after {received} of {} bytes \
                 (and no end of stream)",
                expected.len()
            ),
            Err(e) => panic!(
                "{what}: read after {received} of {} bytes: {e}",
                expected.len()
            ),
        }
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

// ---------------------------------------------------------------------------------------
// The cases.

#[test]
fn bad_arguments_give_the_usage_and_exit_code_2() {
    for args in [
        &[][..],
        &["127.0.0.1:0"][..],
        &["nonsense", "127.0.0.1:1"][..],
    ] {
        let out =
            run_within(Command::new(tunnel_binary()).args(args), LIMIT).expect("run the tunnel");
        assert_eq!(out.status.code(), Some(2), "args {args:?}");
        assert!(
            out.stderr.contains("usage: tunnel"),
            "args {args:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn fifty_megabytes_come_back_intact() {
    const LEN: usize = 50 << 20;
    let backend = Backend::echo();
    let mut tunnel = Tunnel::start(backend.addr);
    let fds = tunnel.open_fds();
    let data = random_bytes(0x7e11, LEN);
    let took = round_trip(
        "50 MB",
        connect(tunnel.addr),
        &data,
        &AtomicUsize::new(0),
        || {},
    );
    println!(
        "50 MB through the tunnel and back in {took:?} ({:.0} MB/s)",
        mib(LEN) / took.as_secs_f64()
    );
    tunnel.wait_for_fds(&fds);
    tunnel.assert_running();
}

#[test]
fn a_stalled_reader_is_pushed_back_not_buffered() {
    /// What the client offers while not reading: far more than the bound below, so a
    /// tunnel that buffered it would cross the bound.
    const OFFERED: usize = 128 << 20;
    const STALL: Duration = Duration::from_secs(2);
    /// The tunnel's growth allowed during the stall: two directions of one high-water
    /// mark each, plus the read areas and allocator slack, with a wide margin.
    const BOUND: usize = 32 << 20;

    let backend = Backend::echo();
    let mut tunnel = Tunnel::start(backend.addr);
    let fds = tunnel.open_fds();
    // Warm up both I/O threads (buffer pools, allocator arenas) before the baseline.
    for i in 0..2 {
        let warm = random_bytes(i, 4 << 20);
        round_trip(
            "warm-up",
            connect(tunnel.addr),
            &warm,
            &AtomicUsize::new(0),
            || {},
        );
    }
    let baseline = tunnel.rss();

    let data = random_bytes(0x57a11, OFFERED);
    let written = AtomicUsize::new(0);
    let mut peak = baseline;
    let mut at_stall_end = 0;
    let took = round_trip(
        "stalled reader",
        connect(tunnel.addr),
        &data,
        &written,
        || {
            let end = Instant::now() + STALL;
            while Instant::now() < end {
                peak = peak.max(tunnel.rss());
                thread::sleep(Duration::from_millis(10));
            }
            at_stall_end = written.load(Ordering::SeqCst);
        },
    );
    println!(
        "stalled reader: RSS baseline {:.1} MiB, peak during the {STALL:?} stall {:.1} MiB \
         (+{:.1} MiB); the writer got {:.1} of {:.0} MiB out before the reader resumed; \
         all of it back in {took:?}",
        mib(baseline),
        mib(peak),
        mib(peak - baseline),
        mib(at_stall_end),
        mib(OFFERED),
    );
    assert!(
        peak < baseline + BOUND,
        "the tunnel grew by {:.1} MiB while the reader stalled (bound {:.0} MiB; high-water \
         mark {:.0} MiB)",
        mib(peak - baseline),
        mib(BOUND),
        mib(TUNNEL_HIGH_WATER)
    );
    assert!(
        at_stall_end < OFFERED,
        "the writer was never held back: all {OFFERED} bytes went out while nobody read"
    );
    tunnel.wait_for_fds(&fds);
    tunnel.assert_running();
}

#[test]
fn two_hundred_half_closed_transfers_each_get_exactly_their_bytes() {
    const LEN: usize = 10 << 20;
    const THREADS: usize = 4;
    const PER_THREAD: usize = 50;
    let backend = Backend::echo();
    let mut tunnel = Tunnel::start(backend.addr);
    let fds = tunnel.open_fds();
    let addr = tunnel.addr;
    let started = Instant::now();
    let done = AtomicUsize::new(0);
    thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let done = &done;
                scope.spawn(move || {
                    // One buffer per thread, rotated by a different odd amount for each
                    // transfer: consecutive transfers differ everywhere, without generating
                    // 2 GB of random data.
                    let base = random_bytes(0x200 + t as u64, LEN);
                    for i in 0..PER_THREAD {
                        let shift = (i * 1_048_573 + t * 7919) % LEN;
                        let data = [&base[shift..], &base[..shift]].concat();
                        let what = format!("thread {t} transfer {i}");
                        round_trip(&what, connect(addr), &data, &AtomicUsize::new(0), || {});
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for w in workers {
            if let Err(p) = w.join() {
                std::panic::resume_unwind(p);
            }
        }
    });
    let took = started.elapsed();
    assert_eq!(done.load(Ordering::SeqCst), THREADS * PER_THREAD);
    println!(
        "{} transfers of 10 MB, {THREADS} at a time, in {took:?} ({:.0} MB/s each way)",
        THREADS * PER_THREAD,
        mib(THREADS * PER_THREAD * LEN) / took.as_secs_f64()
    );
    tunnel.wait_for_fds(&fds);
    tunnel.assert_running();
}

#[test]
fn an_unreachable_backend_closes_the_client_and_the_tunnel_goes_on() {
    // A port nobody listens on (bound, not listening, held to the end).
    let dead = duo_testkit::RefusedPort::new();
    let mut tunnel = Tunnel::start(dead.addr());
    let fds = tunnel.open_fds();
    const CLOSED_WITHIN: Duration = Duration::from_secs(5);
    for i in 0..3 {
        let started = Instant::now();
        let mut s = connect(tunnel.addr);
        s.set_read_timeout(Some(CLOSED_WITHIN)).unwrap();
        // Bytes the tunnel never reads: its close may then be a reset.
        match s.write_all(b"hello?") {
            Ok(()) => {}
            Err(e) if is_peer_close(&e) => {}
            Err(e) => panic!("client {i}: write: {e}"),
        }
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("client {i}: {n} unexpected bytes from the tunnel"),
            Err(e) if is_peer_close(&e) => {}
            Err(e) => panic!("client {i}: not closed within {CLOSED_WITHIN:?}: {e}"),
        }
        println!("client {i} closed after {:?}", started.elapsed());
        tunnel.assert_running();
    }
    wait_until("the tunnel to log why it closed", || {
        tunnel.log().contains("unreachable")
    });
    tunnel.wait_for_fds(&fds);
    tunnel.assert_running();
}

#[test]
fn a_backend_that_finishes_first_half_closes_the_client_which_goes_on_sending() {
    const GREETING: usize = 3 << 20;
    const UPLOAD: usize = 5 << 20;
    let greeting = Arc::new(random_bytes(0x6ee7, GREETING));
    let (tx, uploads) = mpsc::channel::<io::Result<Vec<u8>>>();
    let backend = Backend::start({
        let greeting = greeting.clone();
        move |mut s| {
            // Speaks first, half-closes, then reads what the client has to say.
            let result = s
                .write_all(&greeting)
                .and_then(|()| s.shutdown(Shutdown::Write))
                .and_then(|()| {
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).map(|_| got)
                });
            let _ = tx.send(result);
        }
    });
    let mut tunnel = Tunnel::start(backend.addr);
    let fds = tunnel.open_fds();
    let mut s = connect(tunnel.addr);
    // The greeting, then end of stream while our side is still open.
    let got = read_and_check("greeting", &mut s, &greeting);
    assert_eq!(got, GREETING, "short greeting");
    let upload = random_bytes(0x0b10ad, UPLOAD);
    s.write_all(&upload)
        .expect("send after the tunnel half-closed towards us");
    s.shutdown(Shutdown::Write).unwrap();
    let got = uploads
        .recv_timeout(LIMIT)
        .expect("the backend's report")
        .expect("the backend reads the upload to its end");
    assert!(
        got == upload,
        "the backend got {} bytes, not the {UPLOAD} sent (or other ones)",
        got.len()
    );
    tunnel.wait_for_fds(&fds);
    tunnel.assert_running();
}

#[test]
fn a_client_reset_ends_the_backend_connection_and_the_tunnel_goes_on() {
    let backend = Backend::echo();
    let mut tunnel = Tunnel::start(backend.addr);
    let fds = tunnel.open_fds();
    {
        let mut s = connect(tunnel.addr);
        s.write_all(&random_bytes(9, 1 << 20)).unwrap();
        // Once echoed bytes wait unread, closing sends a reset rather than a FIN.
        let mut one = [0u8; 1];
        s.peek(&mut one).expect("the echo starts");
    }
    wait_until_within(
        Duration::from_secs(8),
        "the backend's connection to end",
        || backend.ended.load(Ordering::SeqCst) == 1,
    );
    let data = random_bytes(10, 1 << 20);
    round_trip(
        "after the reset",
        connect(tunnel.addr),
        &data,
        &AtomicUsize::new(0),
        || {},
    );
    tunnel.wait_for_fds(&fds);
    tunnel.assert_running();
}
