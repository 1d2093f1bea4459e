//! `cargo xtask soak [--quick] [--secs N]`: the echo and bank servers under long mixed and
//! hostile load, watched for crashes, descriptor leaks, memory growth and lost money.
//!
//! # What runs
//!
//! Two servers, started once and kept for the whole run: `echo` (2 I/O threads) and `bank`
//! (1 I/O thread, 2 workers, `--hash-cost low` so that registering and logging in, which
//! hash passwords, do not dominate the run), both with a short `--idle-timeout`
//! ([`IDLE_TIMEOUT`]) so that idle eviction happens many times.
//!
//! Against them, for `--secs` seconds (default 600, `--quick` 60):
//!
//! - **Well-behaved load**: `loadgen` lanes, each a thread that runs one `loadgen` child
//!   after another (bounded runs of a sixth of the run, 8 to 30 s), all lanes at once:
//!   echo `pingpong`, `rr`, `churn` and `idle` (1 000 connections held for [`IDLE_HOLD`],
//!   less than the idle timeout), and two `bank` transfer lanes (each run registers its
//!   own accounts and checks at its end that their total did not change).
//! - **Hostile clients**, threads of this process using std sockets:
//!   - *slow readers* ([`SLOW_READERS`] per server, plus [`WARM_UP_SLOW_READERS`] more
//!     during warm-up): send until the server stops reading (its output buffer crosses
//!     the high-water mark) and never read; the server must evict them at the idle
//!     timeout. One still connected [`EVICT_SLACK`] after the timeout (counted from the
//!     last byte the server took) is a failure. Echo gets raw bytes; the bank gets
//!     pipelined `BALANCE` commands, each answered at once with a 59-byte
//!     `ERR NOT_AUTHENTICATED` line (no database work). During warm-up they reset their
//!     connection [`WARM_HOLD`] after the server stops reading and start again.
//!   - *resetters*: connect, send part of a message (or a command whose reply a worker is
//!     still computing, for the bank) and close with `SO_LINGER` 0 (an RST).
//!   - *garbage senders* (bank only; the echo server takes any bytes): random binary
//!     lines, malformed commands and lines over the 1 024-byte limit. Every non-blank line
//!     must get exactly one `ERR` reply, and an overlong line `ERR LINE_TOO_LONG` and the
//!     end of the stream; anything else is a failure.
//!
//! # Phases and samples
//!
//! *Warm-up* is the first 15 % of the run, *load* the rest; the load is the same mix all
//! along. Then every client stops and *cool-down* waits [`COOL_DOWN`] and polls up to
//! [`FD_SETTLE`] for the descriptor counts (and echo's own connection count) to return to
//! their baseline. Every second ([`FINE`]), each server's VmRSS and RssAnon
//! (`/proc/PID/status`), open descriptors (`/proc/PID/fd`), threads and, for echo, its
//! connection count (its `--stats-interval 1` log line) are sampled; the charts show every
//! sample, the report's table one every 10 s (5 s with `--quick` or runs under two
//! minutes) and those at the phase boundaries.
//!
//! # Pass criteria
//!
//! - Both servers run to the end, then exit with status 0 within [`STOP_GRACE`] of SIGTERM;
//!   their logs contain no panic.
//! - Every `loadgen` run exits 0 with zero errors of any kind (the hostile clients have
//!   connections of their own; nothing they do may disturb the well-behaved ones) and,
//!   for the bank, `total_ok` (money conserved).
//! - The hostile clients saw no protocol anomaly and every slow reader was evicted.
//! - Descriptors after cool-down are at most the baseline + [`FD_TOLERANCE`], and echo's
//!   statistics count no open connection. The baseline is sampled after a short priming
//!   run (one small `loadgen` run per server) so that what a server opens once, on first
//!   use (the bank's SQLite read connections), is in it.
//! - **RSS**: VmRSS after the cool-down is at most [`RSS_TOLERANCE`] (or [`RSS_SLACK_KIB`],
//!   whichever is more) above the *warm-up peak*, the highest VmRSS sampled (every
//!   second) during warm-up. Why these two samples:
//!   - Under load VmRSS swings with what the connections hold at that instant (a client
//!     that never reads pins at least the 4 MiB output high-water mark until it is
//!     evicted), so two instants under load (end of warm-up, end of load) can differ
//!     with no leak at all.
//!   - Pools keep their high-water mark: duo's `BufPool` never returns a block to the
//!     system unasked, and a block's pages become resident only when first touched;
//!     glibc keeps part of the freed heap. So VmRSS after the load is not compared with
//!     the baseline, and warm-up must reach the high-water mark of the load: that is what
//!     the slow readers' short cycles and the extra warm-up slow readers are for (memory
//!     held by clients that never read is by far the largest part of it).
//!   - After the cool-down, memory held for connections is gone; what the servers keep
//!     beyond the peak is memory not given back: a leak. Measured on 2 cores in
//!     `--quick` runs: echo's VmRSS after the cool-down was +0.8 to +1.1 % over its
//!     warm-up peak (about 22 MiB), the bank's -2.9 to +3.2 % (about 29 MiB, flat from the
//!     fifth second on). What leaks would add at the rates of a quick run: 1 KiB per echo
//!     connection (about 175 000 churned, idle and reset) is 170 MiB; one output buffer
//!     per evicted slow reader is 4 MiB x 14; 64 bytes per bank transfer (about 45 000)
//!     or 1 KiB per hostile bank connection (about 3 500) is 3 MiB, at the limit. A full
//!     run (600 s) multiplies every leak by ten.
//!   - Why the bank's slow readers send `BALANCE` and not `PING`: a `PING` flood (5-byte
//!     requests, 5-byte replies) costs the bank about 10 MiB per client that never reads
//!     and fragments its heap; its VmRSS then kept rising in steps for 30 s and more (17 to
//!     40 MiB, plateauing near 40 MiB with `MALLOC_ARENA_MAX=1`): no leak, but no steady
//!     state within a quick run either.
//!
//! Output: a summary on stdout, `target/soak/report.md` with `rss.svg` and `fds.svg`
//! beside it, server and failing `loadgen` logs in `target/soak/logs/`. (`target` is
//! `$CARGO_TARGET_DIR` when set.) The bank's database lives in `target/soak/bank-db-*` and
//! is removed at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use duo_sys::socket2::{Domain, SockRef, Socket, Type};
use serde_json::Value;

use crate::process::{open_fds, run_bounded, status_field, Server};
use crate::{build_release_bins, target_dir, Failure};

/// The servers' `--idle-timeout`.
const IDLE_TIMEOUT: Duration = Duration::from_secs(6);
/// How long each `loadgen idle` run holds its connections (below the idle timeout).
const IDLE_HOLD: Duration = Duration::from_secs(3);
/// Idle connections per `loadgen idle` run.
const IDLE_CONNS: u64 = 1000;
/// How often the servers are sampled for the charts and the warm-up peak (the table
/// shows every 10 s, or 5 s).
const FINE: Duration = Duration::from_secs(1);
/// Slow readers per server.
const SLOW_READERS: usize = 2;
/// Slow readers per server that run during warm-up only, so that warm-up reaches more
/// memory held by clients that never read than the load phase does (see the module docs).
const WARM_UP_SLOW_READERS: usize = 2;
/// How long a slow reader holds its connection during warm-up before it resets it.
const WARM_HOLD: Duration = Duration::from_millis(500);
/// How long past the idle timeout a slow reader may stay connected.
const EVICT_SLACK: Duration = Duration::from_secs(10);
/// Descriptors a server may hold above its baseline after the cool-down.
const FD_TOLERANCE: u64 = 4;
/// How much more VmRSS may be after the cool-down than at its peak during warm-up.
const RSS_TOLERANCE: f64 = 0.10;
/// ... or this many KiB more, if that is more: for a server of a few MiB, 10 % is less than
/// one large pool block touched for the first time (see the module docs).
const RSS_SLACK_KIB: u64 = 2048;
/// Part of the run that is warm-up.
const WARM_UP_FRACTION: f64 = 0.15;
/// Pause after the last client is gone, before the cool-down sample.
const COOL_DOWN: Duration = Duration::from_secs(3);
/// How long the cool-down waits for the descriptor counts to settle.
const FD_SETTLE: Duration = Duration::from_secs(10);
/// How long a server may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// A `loadgen` run shorter than this is not started.
const MIN_RUN: Duration = Duration::from_secs(3);
/// Hostile failures kept for the report (they are also counted).
const MAX_ANOMALIES: usize = 20;

struct Options {
    secs: u64,
    quick: bool,
    explicit_secs: bool,
}

fn parse(args: Vec<String>) -> Result<Options, Failure> {
    let mut quick = false;
    let mut secs = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--secs" => {
                let v = it
                    .next()
                    .ok_or_else(|| Failure::Usage("--secs needs a number".into()))?;
                secs = Some(
                    v.parse::<u64>()
                        .ok()
                        .filter(|s| (20..=86_400).contains(s))
                        .ok_or_else(|| {
                            Failure::Usage(format!("--secs: `{v}` is not a number in 20..=86400"))
                        })?,
                );
            }
            other => return Err(Failure::Usage(format!("unknown soak option `{other}`"))),
        }
    }
    Ok(Options {
        secs: secs.unwrap_or(if quick { 60 } else { 600 }),
        quick,
        explicit_secs: secs.is_some(),
    })
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::Run(format!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------
// Samples

/// One server's figures at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct Proc {
    rss_kib: u64,
    anon_kib: u64,
    fds: u64,
    threads: u64,
    /// Open connections, from the server's own statistics (echo only).
    conns: Option<u64>,
}

/// What a sample is.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Mark {
    Baseline,
    /// Every second: charts and the warm-up peak only.
    Fine,
    /// Every `interval`: also in the table.
    Periodic,
    WarmUpEnd,
    LoadEnd,
    CoolDown,
}

impl Mark {
    fn label(self) -> &'static str {
        match self {
            Mark::Baseline => "baseline",
            Mark::Fine | Mark::Periodic => "",
            Mark::WarmUpEnd => "end of warm-up",
            Mark::LoadEnd => "end of load",
            Mark::CoolDown => "after cool-down",
        }
    }
}

struct Sample {
    /// Seconds since the load started (negative for the baseline).
    t: f64,
    mark: Mark,
    /// Per server, in [`Srv`] order; `None` if it could not be read (the server is gone).
    procs: Vec<Option<Proc>>,
}

/// A server under test.
struct Srv {
    name: &'static str,
    server: Server,
    log: PathBuf,
    /// Why it is no longer running, once it is not.
    gone: Option<String>,
}

impl Srv {
    fn sample(&mut self) -> Option<Proc> {
        if self.gone.is_none() {
            if let Some(status) = self.server.exited() {
                self.gone = Some(format!("{} exited during the soak: {status}", self.name));
            }
        }
        if self.gone.is_some() {
            return None;
        }
        let pid = self.server.pid();
        let p = Proc {
            rss_kib: status_field(pid, "VmRSS").ok()?,
            anon_kib: status_field(pid, "RssAnon").ok()?,
            fds: open_fds(pid).ok()?,
            threads: status_field(pid, "Threads").ok()?,
            conns: if self.name == "echo" {
                echo_conns(&self.log)
            } else {
                None
            },
        };
        Some(p)
    }
}

/// The connection count of the last `stats:` line of echo's log.
fn echo_conns(log: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find_map(|l| l.split_once("stats: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
}

// ---------------------------------------------------------------------------------------
// loadgen lanes

/// A `loadgen` mode run over and over against one server.
struct Lane {
    name: &'static str,
    server: usize,
    mode: &'static str,
    args: &'static [&'static str],
    /// Length of the first run, to stagger lanes of the same mode.
    first_secs: Option<f64>,
}

const LANES: &[Lane] = &[
    Lane {
        name: "echo pingpong",
        server: 0,
        mode: "pingpong",
        args: &["--conns", "8", "--size", "16384"],
        first_secs: None,
    },
    Lane {
        name: "echo rr",
        server: 0,
        mode: "rr",
        args: &["--conns", "16", "--size", "64"],
        first_secs: None,
    },
    Lane {
        name: "echo churn",
        server: 0,
        mode: "churn",
        args: &["--conns", "4"],
        first_secs: None,
    },
    Lane {
        name: "echo idle",
        server: 0,
        mode: "idle",
        args: &[],
        first_secs: None,
    },
    Lane {
        name: "bank transfers A",
        server: 1,
        mode: "bank",
        args: &["--clients", "8", "--accounts", "8"],
        first_secs: None,
    },
    Lane {
        name: "bank transfers B",
        server: 1,
        mode: "bank",
        args: &["--clients", "8", "--accounts", "8"],
        first_secs: Some(4.0),
    },
];

/// What one lane's runs added up to.
#[derive(Default)]
struct LaneResult {
    runs: u64,
    /// Units of work: messages, requests, connections, confirmed idle connections or
    /// transfers.
    work: u64,
    errors: BTreeMap<String, u64>,
    /// Bank runs whose totals were checked and conserved.
    conserved: u64,
    /// Why runs failed (exit status, no report, verification, lost money).
    failures: Vec<String>,
}

impl LaneResult {
    /// The "conserved" cell: checked bank runs out of all runs, `-` for other modes.
    fn conserved_cell(&self, lane: &Lane) -> String {
        if lane.mode == "bank" {
            format!("{}/{}", self.conserved, self.runs)
        } else {
            "-".into()
        }
    }

    /// The "errors" cell: `none`, or the error counts and failures.
    fn errors_cell(&self) -> String {
        if self.errors.is_empty() && self.failures.is_empty() {
            "none".into()
        } else {
            format!("{} {}", fmt_errors(&self.errors), self.failures.join("; "))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_lane(
    lane: &Lane,
    loadgen: &Path,
    addr: SocketAddr,
    load_end: Instant,
    chunk: Duration,
    stop: &AtomicBool,
    logs: &Path,
) -> LaneResult {
    let mut res = LaneResult::default();
    let tag = lane.name.replace(' ', "-");
    loop {
        let remaining = load_end.saturating_duration_since(Instant::now());
        if stop.load(Ordering::Relaxed) || remaining < MIN_RUN {
            break;
        }
        let mut cmd = Command::new(loadgen);
        cmd.arg(lane.mode)
            .args(["--addr", &addr.to_string(), "--threads", "1", "--json"])
            .args(lane.args);
        let secs = match (res.runs, lane.first_secs) {
            (0, Some(first)) => Duration::from_secs_f64(first),
            _ => chunk,
        };
        match lane.mode {
            "idle" => {
                let hold = IDLE_HOLD.min(remaining - Duration::from_secs(1));
                cmd.args(["--conns", &IDLE_CONNS.to_string()])
                    .args(["--hold", &format!("{:.1}", hold.as_secs_f64())]);
            }
            "bank" => {
                // Set-up and the final balance check take about a second more.
                let secs = secs.min(remaining - Duration::from_secs(1));
                cmd.args(["--secs", &format!("{:.1}", secs.as_secs_f64())]);
            }
            _ => {
                let secs = secs.min(remaining);
                cmd.args(["--secs", &format!("{:.1}", secs.as_secs_f64())]);
            }
        }
        let log = logs.join(format!("loadgen-{tag}-{}.log", res.runs));
        res.runs += 1;
        let bound = secs + Duration::from_secs(90);
        let clean = match run_bounded(&mut cmd, bound, &log) {
            Err(e) => {
                res.failures.push(e);
                false
            }
            Ok((ok, out)) => match out
                .lines()
                .rev()
                .find_map(|l| serde_json::from_str::<Value>(l).ok())
            {
                None => {
                    res.failures.push(format!(
                        "run {} printed no report (exit {}; see {})",
                        res.runs,
                        if ok { "0" } else { "non-zero" },
                        log.display()
                    ));
                    false
                }
                Some(v) => lane_run(&mut res, &v, ok, &log),
            },
        };
        if clean {
            let _ = std::fs::remove_file(&log);
        }
    }
    res
}

/// Adds one run's report to the lane's result; returns whether the run was clean.
fn lane_run(res: &mut LaneResult, v: &Value, ok: bool, log: &Path) -> bool {
    let num = |k: &str| v.get(k).and_then(Value::as_u64);
    res.work += num("transfers").or_else(|| num("msgs")).unwrap_or(0);
    let mut clean = ok;
    if let Some(errors) = v.get("errors").and_then(Value::as_object) {
        for (kind, n) in errors {
            let n = n.as_u64().unwrap_or(0);
            if n > 0 {
                *res.errors.entry(kind.clone()).or_default() += n;
                clean = false;
            }
        }
    }
    match v.get("total_ok") {
        Some(Value::Bool(true)) => res.conserved += 1,
        Some(Value::Bool(false)) => {
            res.failures.push(format!(
                "run {}: bank total NOT conserved (deposited {}, final {})",
                res.runs,
                v.get("total_deposited").unwrap_or(&Value::Null),
                v.get("total_final").unwrap_or(&Value::Null)
            ));
            clean = false;
        }
        _ => {}
    }
    if let Some(f) = v.get("failure").and_then(Value::as_str) {
        res.failures.push(format!("run {}: {f}", res.runs));
        clean = false;
    }
    if v.get("verification_failed") == Some(&Value::Bool(true)) {
        res.failures
            .push(format!("run {}: verification failed", res.runs));
        clean = false;
    }
    if !ok && clean {
        res.failures
            .push(format!("run {}: loadgen exited non-zero", res.runs));
        clean = false;
    }
    if !clean && res.failures.len() < MAX_ANOMALIES {
        res.failures
            .push(format!("run {}: see {}", res.runs, log.display()));
    }
    clean
}

// ---------------------------------------------------------------------------------------
// Hostile clients

/// What one hostile client kind did, counted across its threads.
#[derive(Default)]
struct Hostile {
    name: &'static str,
    server: usize,
    /// Connections opened.
    conns: AtomicU64,
    connect_failed: AtomicU64,
    bytes_sent: AtomicU64,
    /// Connections the server closed or reset (expected for most kinds).
    closed_by_server: AtomicU64,
    /// Reply lines read (bank).
    replies: AtomicU64,
    /// Slow readers evicted, and the longest time from their last accepted byte to the
    /// eviction, in milliseconds.
    evicted: AtomicU64,
    max_evict_ms: AtomicU64,
    /// Slow readers' short cycles during warm-up.
    warm_cycles: AtomicU64,
    /// Things that must not happen (a failure of the soak).
    anomalies: AtomicU64,
    anomaly_log: Mutex<Vec<String>>,
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

    fn get(&self, c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// A small xorshift generator (no dependency needed for garbage).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
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
    let big: Vec<u8> = (0..1 << 20).map(|_| rng.next() as u8).collect();
    let mut i: u64 = 0;
    while !nap(Duration::from_millis(10), stop) {
        i += 1;
        let Ok(mut s) = connect(addr, None) else {
            h.connect_failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        h.conns.fetch_add(1, Ordering::Relaxed);
        let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
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
        let Ok(mut s) = connect(addr, None) else {
            h.connect_failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        h.conns.fetch_add(1, Ordering::Relaxed);
        let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
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
        let Ok(mut s) = connect(addr, None) else {
            h.connect_failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        h.conns.fetch_add(1, Ordering::Relaxed);
        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut msg = Vec::new();
        let mut expect_lines = 0u64;
        let overlong = i % 3 == 0;
        if overlong {
            let n = 1100 + rng.below(3000) as usize;
            msg.push(b'X');
            msg.extend((1..n).map(|_| match rng.next() as u8 {
                b'\n' => b'.',
                b => b,
            }));
        } else if i % 3 == 1 {
            // Random binary lines: NULs, invalid UTF-8, control bytes.
            for _ in 0..1 + rng.below(20) {
                let n = 1 + rng.below(200) as usize;
                // A first byte that is not blank, so that every line gets a reply.
                msg.push(b'!' + rng.below(200) as u8);
                msg.extend((1..n).map(|_| match rng.next() as u8 {
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

// ---------------------------------------------------------------------------------------
// The run

pub(crate) fn soak(args: Vec<String>) -> Result<(), Failure> {
    let opts = parse(args)?;
    let wall = Instant::now();
    let secs = opts.secs;
    let interval = Duration::from_secs(if opts.quick || secs < 120 { 5 } else { 10 });
    let chunk = Duration::from_secs((secs / 6).clamp(8, 30));

    let release = build_release_bins()?;
    let build_secs = wall.elapsed().as_secs_f64();
    let out_dir = target_dir().join("soak");
    let logs = out_dir.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).map_err(io_err(&logs))?;
    if let Err(e) = duo_sys::raise_fd_limit() {
        eprintln!("warning: cannot raise the open-file limit: {e}");
    }
    let db_dir = out_dir.join(format!("bank-db-{}", std::process::id()));
    std::fs::create_dir_all(&db_dir).map_err(io_err(&db_dir))?;

    let result = soak_with(
        &opts, &release, &out_dir, &logs, &db_dir, interval, chunk, build_secs, wall,
    );
    let _ = std::fs::remove_dir_all(&db_dir);
    result
}

/// Everything after the build, so that the caller removes the database whatever happens.
#[allow(clippy::too_many_arguments)]
fn soak_with(
    opts: &Options,
    release: &Path,
    out_dir: &Path,
    logs: &Path,
    db_dir: &Path,
    interval: Duration,
    chunk: Duration,
    build_secs: f64,
    wall: Instant,
) -> Result<(), Failure> {
    let secs = opts.secs;
    let idle = IDLE_TIMEOUT.as_secs().to_string();
    let echo_args: Vec<String> = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--io-threads",
        "2",
        "--idle-timeout",
        &idle,
        "--stats-interval",
        &FINE.as_secs().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let bank_args: Vec<String> = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--db",
        &db_dir.join("bank.db").display().to_string(),
        "--io-threads",
        "1",
        "--workers",
        "2",
        "--idle-timeout",
        &idle,
        "--hash-cost",
        "low",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut servers = Vec::new();
    for (name, bin, args) in [("echo", "echo", &echo_args), ("bank", "bank", &bank_args)] {
        let log = logs.join(format!("{name}.server.log"));
        let server = Server::start(name, &release.join(bin), args, &log).map_err(Failure::Run)?;
        servers.push(Srv {
            name,
            server,
            log,
            gone: None,
        });
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.server.addr()).collect();
    let loadgen = release.join("loadgen");
    println!(
        "soak: {secs} s of load (warm-up {:.0} s), samples every {} s; echo on {}, bank on {} \
         (--hash-cost low)",
        secs as f64 * WARM_UP_FRACTION,
        interval.as_secs(),
        addrs[0],
        addrs[1]
    );

    // Priming: one short run per server, so that what a server opens once, on first use,
    // is in the baseline.
    for (i, mode, args) in [
        (0, "rr", &["--conns", "2", "--secs", "1"][..]),
        (
            1,
            "bank",
            &["--clients", "2", "--accounts", "2", "--secs", "1"][..],
        ),
    ] {
        let mut cmd = Command::new(&loadgen);
        cmd.arg(mode)
            .args(["--addr", &addrs[i].to_string(), "--json"])
            .args(args);
        let log = logs.join(format!("loadgen-prime-{mode}.log"));
        match run_bounded(&mut cmd, Duration::from_secs(60), &log) {
            Ok((true, _)) => {
                let _ = std::fs::remove_file(&log);
            }
            Ok((false, out)) => {
                return Err(Failure::Run(format!(
                    "the priming {mode} run failed: {} (see {})",
                    out.trim(),
                    log.display()
                )))
            }
            Err(e) => return Err(Failure::Run(format!("the priming {mode} run: {e}"))),
        }
    }
    std::thread::sleep(Duration::from_secs(1));

    let start = Instant::now();
    let t = |at: Instant| at.saturating_duration_since(start).as_secs_f64();
    let mut samples: Vec<Sample> = Vec::new();
    take(&mut samples, &mut servers, Mark::Baseline, 0.0);
    let warm_end = start + Duration::from_secs_f64(secs as f64 * WARM_UP_FRACTION);
    let load_end = start + Duration::from_secs(secs);
    let stop = Arc::new(AtomicBool::new(false));

    // Load.
    let lane_threads: Vec<JoinHandle<LaneResult>> = LANES
        .iter()
        .map(|lane| {
            let (loadgen, logs, stop) = (loadgen.clone(), logs.to_path_buf(), stop.clone());
            let addr = addrs[lane.server];
            std::thread::spawn(move || {
                run_lane(lane, &loadgen, addr, load_end, chunk, &stop, &logs)
            })
        })
        .collect();
    let hostile: Vec<Arc<Hostile>> = vec![
        Arc::new(Hostile::new("echo slow readers", 0)),
        Arc::new(Hostile::new("echo resetters", 0)),
        Arc::new(Hostile::new("bank slow readers", 1)),
        Arc::new(Hostile::new("bank resetters", 1)),
        Arc::new(Hostile::new("bank garbage senders", 1)),
    ];
    let mut hostile_threads: Vec<JoinHandle<()>> = Vec::new();
    for h in &hostile {
        let count = if h.name.contains("slow") {
            SLOW_READERS + WARM_UP_SLOW_READERS
        } else {
            1
        };
        for i in 0..count {
            let (h, stop, addr) = (h.clone(), stop.clone(), addrs[h.server]);
            let until = (i >= SLOW_READERS).then_some(warm_end);
            hostile_threads.push(std::thread::spawn(move || match h.name {
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

    // Samples until the end of the load; a server that dies ends the run early. Every
    // second for the charts and the warm-up peak; every `interval` in the table.
    let mut next_fine = start + FINE;
    let mut next_table = start + interval;
    let mut warm_taken = false;
    loop {
        let now = Instant::now();
        if !warm_taken && now >= warm_end {
            take(&mut samples, &mut servers, Mark::WarmUpEnd, t(now));
            warm_taken = true;
            print_progress(samples.last(), &servers);
        }
        if now >= load_end {
            take(&mut samples, &mut servers, Mark::LoadEnd, t(now));
            print_progress(samples.last(), &servers);
            break;
        }
        if now >= next_table {
            take(&mut samples, &mut servers, Mark::Periodic, t(now));
            print_progress(samples.last(), &servers);
            next_table += interval;
            next_fine = now + FINE;
        } else if now >= next_fine {
            take(&mut samples, &mut servers, Mark::Fine, t(now));
            next_fine += FINE;
        }
        if servers.iter().any(|s| s.gone.is_some()) {
            println!("a server is gone: stopping the load");
            break;
        }
        let wake = [next_fine, next_table, load_end]
            .into_iter()
            .chain((!warm_taken).then_some(warm_end))
            .min()
            .unwrap_or(load_end);
        std::thread::sleep(
            wake.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250)),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let lane_results: Vec<LaneResult> = lane_threads
        .into_iter()
        .map(|h| {
            h.join().unwrap_or_else(|_| LaneResult {
                failures: vec!["the lane's thread panicked".into()],
                ..LaneResult::default()
            })
        })
        .collect();
    for h in hostile_threads {
        let _ = h.join();
    }
    let clients_gone = t(Instant::now());
    println!("all clients gone at {clients_gone:.1} s; cooling down");

    // Cool-down: wait, then give the descriptor counts some time to settle.
    std::thread::sleep(COOL_DOWN);
    let baseline: Vec<Option<Proc>> = samples[0].procs.clone();
    let settle_end = Instant::now() + FD_SETTLE;
    loop {
        let settled = servers
            .iter_mut()
            .zip(&baseline)
            .all(|(s, b)| match (s.sample(), b) {
                (Some(p), Some(b)) => p.fds <= b.fds + FD_TOLERANCE && p.conns.unwrap_or(0) == 0,
                _ => true,
            });
        if settled || Instant::now() >= settle_end {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    take(
        &mut samples,
        &mut servers,
        Mark::CoolDown,
        t(Instant::now()),
    );
    print_progress(samples.last(), &servers);

    // Stop.
    let mut stops: Vec<Result<(f64, i32), String>> = Vec::new();
    for s in &mut servers {
        if let Some(g) = &s.gone {
            stops.push(Err(g.clone()));
            continue;
        }
        let r = s.server.terminate(STOP_GRACE).and_then(|(status, took)| {
            let code = status.code().unwrap_or(-1);
            if status.success() {
                Ok((took.as_secs_f64(), code))
            } else {
                Err(format!("{} exited with {status} after SIGTERM", s.name))
            }
        });
        stops.push(r.map_err(|e| format!("{}: {e}", s.name)));
    }

    // Judge.
    let mut failures: Vec<String> = Vec::new();
    for (s, r) in servers.iter().zip(&stops) {
        if let Err(e) = r {
            failures.push(format!("{}: {e}", s.name));
        }
    }
    let log_notes: Vec<LogSummary> = servers.iter().map(|s| summarize_log(&s.log)).collect();
    for (s, l) in servers.iter().zip(&log_notes) {
        if l.panics > 0 {
            failures.push(format!(
                "{}: {} panic(s) in its log ({})",
                s.name,
                l.panics,
                s.log.display()
            ));
        }
    }
    for (lane, r) in LANES.iter().zip(&lane_results) {
        if !r.errors.is_empty() {
            failures.push(format!(
                "{}: loadgen errors {}",
                lane.name,
                fmt_errors(&r.errors)
            ));
        }
        for f in &r.failures {
            failures.push(format!("{}: {f}", lane.name));
        }
        if r.runs == 0 {
            failures.push(format!("{}: no loadgen run happened", lane.name));
        }
    }
    for h in &hostile {
        let log = h.anomaly_log.lock().unwrap_or_else(|e| e.into_inner());
        for a in log.iter() {
            failures.push(format!("{}: {a}", h.name));
        }
        let n = h.get(&h.anomalies);
        if n as usize > log.len() {
            failures.push(format!(
                "{}: {} more anomalies",
                h.name,
                n as usize - log.len()
            ));
        }
    }
    let find = |mark: Mark| samples.iter().find(|s| s.mark == mark);
    let warm_t = find(Mark::WarmUpEnd).map(|s| s.t);
    let mut checks: Vec<Check> = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let at = |mark: Mark| find(mark).and_then(|x| x.procs[i]);
        let (base, warm, end, cool) = (
            at(Mark::Baseline),
            at(Mark::WarmUpEnd),
            at(Mark::LoadEnd),
            at(Mark::CoolDown),
        );
        let fd_check = match (base, cool) {
            (Some(b), Some(c)) => {
                let ok = c.fds <= b.fds + FD_TOLERANCE;
                if !ok {
                    failures.push(format!(
                        "{}: {} descriptors after the cool-down, baseline {} (+{} allowed): \
                         a descriptor leak",
                        s.name, c.fds, b.fds, FD_TOLERANCE
                    ));
                }
                Check {
                    what: "fds: baseline → after cool-down",
                    server: s.name,
                    value: format!("{} → {} (≤ +{FD_TOLERANCE})", b.fds, c.fds),
                    ok,
                }
            }
            _ => Check {
                what: "fds: baseline → after cool-down",
                server: s.name,
                value: "not sampled".into(),
                ok: false,
            },
        };
        // The warm-up peak: the highest VmRSS sampled up to the end of warm-up.
        let warm_peak = samples
            .iter()
            .filter(|x| x.mark != Mark::Baseline && warm.is_some() && Some(x.t) <= warm_t)
            .filter_map(|x| x.procs[i].map(|p| p.rss_kib))
            .max();
        const RSS_WHAT: &str = "VmRSS: warm-up peak → after cool-down";
        let rss_check = match (warm_peak, cool) {
            (Some(w), Some(c)) => {
                let limit = rss_limit_kib(w);
                let ok = c.rss_kib <= limit;
                if !ok {
                    failures.push(format!(
                        "{}: VmRSS after the cool-down is {} KiB, {:+.1} % over the warm-up peak \
                         of {} KiB (limit {} KiB): memory not given back after the clients left, \
                         a leak?",
                        s.name,
                        c.rss_kib,
                        pct(w, c.rss_kib),
                        w,
                        limit
                    ));
                }
                Check {
                    what: RSS_WHAT,
                    server: s.name,
                    value: format!(
                        "{w} → {} KiB ({:+.1} %, limit {limit})",
                        c.rss_kib,
                        pct(w, c.rss_kib),
                    ),
                    ok,
                }
            }
            _ => Check {
                what: RSS_WHAT,
                server: s.name,
                value: "not sampled".into(),
                ok: false,
            },
        };
        checks.push(fd_check);
        checks.push(rss_check);
        if let (Some(b), Some(c)) = (base, cool) {
            checks.push(Check {
                what: "threads: baseline → after cool-down",
                server: s.name,
                value: format!("{} → {}", b.threads, c.threads),
                ok: true,
            });
            if let Some(e) = end {
                checks.push(Check {
                    what: "VmRSS after cool-down (reported only)",
                    server: s.name,
                    value: format!(
                        "{} KiB (baseline {}, end of load {}); RssAnon {} KiB",
                        c.rss_kib, b.rss_kib, e.rss_kib, c.anon_kib
                    ),
                    ok: true,
                });
            }
            if let Some(n) = c.conns {
                if n > 0 {
                    failures.push(format!(
                        "{}: its statistics still count {n} open connections after the \
                         cool-down (descriptors: {})",
                        s.name, c.fds
                    ));
                }
                checks.push(Check {
                    what: "connections in its stats after cool-down",
                    server: s.name,
                    value: n.to_string(),
                    ok: n == 0,
                });
            }
        }
        checks.push(Check {
            what: "alive to the end, exit 0 on SIGTERM",
            server: s.name,
            value: match &stops[i] {
                Ok((took, code)) => format!("exit {code} after {took:.2} s"),
                Err(e) => e.clone(),
            },
            ok: stops[i].is_ok(),
        });
    }

    let run = RunInfo {
        command: format!(
            "cargo xtask soak{}{}",
            if opts.quick { " --quick" } else { "" },
            if opts.explicit_secs {
                format!(" --secs {secs}")
            } else {
                String::new()
            }
        ),
        secs,
        interval,
        build_secs,
        wall_secs: wall.elapsed().as_secs_f64(),
        clients_gone,
    };
    let md = report_md(
        &run,
        &servers,
        &samples,
        &lane_results,
        &hostile,
        &checks,
        &log_notes,
        &failures,
    );
    write(&out_dir.join("report.md"), &md)?;
    let names: Vec<&str> = servers.iter().map(|s| s.name).collect();
    let end_t = find(Mark::LoadEnd).map(|s| s.t);
    write(
        &out_dir.join("rss.svg"),
        &svg_lines(
            "server VmRSS (MiB) over time",
            &names,
            &samples,
            |p| p.rss_kib as f64 / 1024.0,
            warm_t,
            end_t,
        ),
    )?;
    write(
        &out_dir.join("fds.svg"),
        &svg_lines(
            "server open file descriptors over time",
            &names,
            &samples,
            |p| p.fds as f64,
            warm_t,
            end_t,
        ),
    )?;
    print_summary(&run, &lane_results, &hostile, &checks);
    println!("report: {}", out_dir.join("report.md").display());
    if failures.is_empty() {
        println!("soak: PASS");
        Ok(())
    } else {
        for f in &failures {
            eprintln!("FAIL: {f}");
        }
        Err(Failure::Run(format!(
            "soak failed ({} problem(s), listed above and in {})",
            failures.len(),
            out_dir.join("report.md").display()
        )))
    }
}

/// Samples every server.
fn take(samples: &mut Vec<Sample>, servers: &mut [Srv], mark: Mark, t: f64) {
    let procs = servers.iter_mut().map(Srv::sample).collect();
    samples.push(Sample { t, mark, procs });
}

/// The most VmRSS may be after the cool-down, given the warm-up peak: [`RSS_TOLERANCE`]
/// more, or [`RSS_SLACK_KIB`] more for a small server.
fn rss_limit_kib(warm_peak: u64) -> u64 {
    let relative = (warm_peak as f64 * (1.0 + RSS_TOLERANCE)) as u64;
    relative.max(warm_peak + RSS_SLACK_KIB)
}

fn pct(from: u64, to: u64) -> f64 {
    if from == 0 {
        0.0
    } else {
        (to as f64 / from as f64 - 1.0) * 100.0
    }
}

struct Check {
    what: &'static str,
    server: &'static str,
    value: String,
    ok: bool,
}

struct RunInfo {
    command: String,
    secs: u64,
    interval: Duration,
    build_secs: f64,
    wall_secs: f64,
    clients_gone: f64,
}

/// Warnings, errors and panics in a server's log.
#[derive(Default)]
struct LogSummary {
    warn: u64,
    error: u64,
    panics: u64,
    /// Distinct messages (connection names and numbers blanked), with counts.
    kinds: BTreeMap<String, u64>,
}

fn summarize_log(path: &Path) -> LogSummary {
    let mut s = LogSummary::default();
    let Ok(text) = std::fs::read_to_string(path) else {
        return s;
    };
    for line in text.lines() {
        if line.contains("panicked") || line.contains("panic") {
            s.panics += 1;
        }
        let level = if line.contains(" WARN ") {
            s.warn += 1;
            "WARN"
        } else if line.contains(" ERROR ") {
            s.error += 1;
            "ERROR"
        } else {
            continue;
        };
        // `[time LEVEL target] message`: keep the message, with digits blanked so that
        // connection names and counts fold together.
        let msg = line.split_once("] ").map_or(line, |(_, m)| m);
        let folded: String = msg
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        let mut key = format!("{level} {folded}");
        key.truncate(160);
        *s.kinds.entry(key).or_default() += 1;
    }
    s
}

fn fmt_errors(errors: &BTreeMap<String, u64>) -> String {
    errors
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_progress(sample: Option<&Sample>, servers: &[Srv]) {
    let Some(s) = sample else { return };
    let mut line = format!("  t={:>6.1}s {:<16}", s.t, s.mark.label());
    for (srv, p) in servers.iter().zip(&s.procs) {
        match p {
            Some(p) => {
                let _ = write!(
                    line,
                    " | {} rss {:>7} KiB fds {:>5} thr {:>2}",
                    srv.name, p.rss_kib, p.fds, p.threads
                );
                if let Some(c) = p.conns {
                    let _ = write!(line, " conns {c:>5}");
                }
            }
            None => {
                let _ = write!(line, " | {} GONE", srv.name);
            }
        }
    }
    println!("{line}");
}

fn fmt_proc(p: &Option<Proc>) -> [String; 4] {
    match p {
        Some(p) => [
            p.rss_kib.to_string(),
            p.anon_kib.to_string(),
            p.fds.to_string(),
            format!(
                "{}{}",
                p.threads,
                p.conns.map_or(String::new(), |c| format!(" / {c}"))
            ),
        ],
        None => ["gone".into(), "-".into(), "-".into(), "-".into()],
    }
}

fn print_summary(run: &RunInfo, lanes: &[LaneResult], hostile: &[Arc<Hostile>], checks: &[Check]) {
    println!(
        "\n== soak summary ({} s of load; build {:.1} s, wall {:.1} s)",
        run.secs, run.build_secs, run.wall_secs
    );
    println!("\n{:<40} {:<6} {:<50} result", "check", "server", "value");
    for c in checks {
        println!(
            "{:<40} {:<6} {:<50} {}",
            c.what,
            c.server,
            c.value,
            if c.ok { "ok" } else { "FAIL" }
        );
    }
    println!(
        "\n{:<18} {:>5} {:>12} {:>10}  errors",
        "loadgen lane", "runs", "work", "conserved"
    );
    for (lane, r) in LANES.iter().zip(lanes) {
        println!(
            "{:<18} {:>5} {:>12} {:>10}  {}",
            lane.name,
            r.runs,
            r.work,
            r.conserved_cell(lane),
            r.errors_cell()
        );
    }
    println!(
        "\n{:<22} {:>7} {:>8} {:>10} {:>8} {:>8} {:>20} {:>9}",
        "hostile clients",
        "conns",
        "conn err",
        "MiB sent",
        "closed",
        "replies",
        "evicted(max)+warm-up",
        "anomalies"
    );
    for h in hostile {
        println!(
            "{:<22} {:>7} {:>8} {:>10.1} {:>8} {:>8} {:>20} {:>9}",
            h.name,
            h.get(&h.conns),
            h.get(&h.connect_failed),
            h.get(&h.bytes_sent) as f64 / (1024.0 * 1024.0),
            h.get(&h.closed_by_server),
            h.get(&h.replies),
            evicted_text(h),
            h.get(&h.anomalies)
        );
    }
    println!();
}

fn evicted_text(h: &Hostile) -> String {
    if h.name.contains("slow") {
        format!(
            "{} ({:.1}s) +{}w",
            h.get(&h.evicted),
            h.get(&h.max_evict_ms) as f64 / 1000.0,
            h.get(&h.warm_cycles)
        )
    } else {
        "-".into()
    }
}

#[allow(clippy::too_many_arguments)]
fn report_md(
    run: &RunInfo,
    servers: &[Srv],
    samples: &[Sample],
    lanes: &[LaneResult],
    hostile: &[Arc<Hostile>],
    checks: &[Check],
    logs: &[LogSummary],
    failures: &[String],
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Soak report\n\nCommand: `{}`: {} s of load (warm-up {:.0} s), then the clients \
         stop and a cool-down of {} s plus up to {} s for descriptors to settle; samples \
         every {} s. The last client was gone {:.1} s after the load started. Build {:.1} s, \
         wall time {:.1} s. Machine: {}.\n",
        run.command,
        run.secs,
        run.secs as f64 * WARM_UP_FRACTION,
        COOL_DOWN.as_secs(),
        FD_SETTLE.as_secs(),
        run.interval.as_secs(),
        run.clients_gone,
        run.build_secs,
        run.wall_secs,
        machine()
    );
    let _ = writeln!(
        md,
        "**Result: {}**\n",
        if failures.is_empty() { "PASS" } else { "FAIL" }
    );
    for f in failures {
        let _ = writeln!(md, "- {f}");
    }
    if !failures.is_empty() {
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "Servers: `echo serve --io-threads 2 --idle-timeout {idle} --stats-interval 1`; \
         `bank serve --io-threads 1 --workers 2 --idle-timeout {idle} --hash-cost low` \
         (low-cost password hashes keep account set-up fast; a fresh database per soak).\n\n\
         The RSS check compares the highest VmRSS sampled during warm-up (every second, \
         under the full mix of load) with VmRSS after the cool-down, once every client is \
         gone: memory the servers keep after the load beyond what the same mix needed at \
         its peak in warm-up is memory not given back, a leak, while the high-water marks \
         of pools and allocators (reached in warm-up) and per-connection memory (gone with \
         the connections) do not count. Allowed: +{:.0} % or +{} KiB, whichever is more. \
         Descriptors are compared with the baseline sampled after a short priming run.\n",
        RSS_TOLERANCE * 100.0,
        RSS_SLACK_KIB,
        idle = IDLE_TIMEOUT.as_secs()
    );
    let _ = writeln!(
        md,
        "## Checks\n\n| check | server | value | result |\n|---|---|---|---|"
    );
    for c in checks {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            c.what,
            c.server,
            c.value,
            if c.ok { "ok" } else { "**FAIL**" }
        );
    }
    let _ = writeln!(
        md,
        "\n## Samples\n\n![VmRSS](rss.svg)\n\n![descriptors](fds.svg)\n"
    );
    let mut head = "| t (s) | phase |".to_owned();
    let mut rule = "|---|---|".to_owned();
    for s in servers {
        let _ = write!(
            head,
            " {0} VmRSS KiB | {0} RssAnon KiB | {0} fds | {0} threads{1} |",
            s.name,
            if s.name == "echo" { " / conns" } else { "" }
        );
        rule.push_str("---|---|---|---|");
    }
    let _ = writeln!(md, "{head}\n{rule}");
    for s in samples.iter().filter(|s| s.mark != Mark::Fine) {
        let _ = write!(md, "| {:.1} | {} |", s.t, s.mark.label());
        for p in &s.procs {
            let _ = write!(md, " {} |", fmt_proc(p).join(" | "));
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "\n## loadgen lanes (all at once, one run after another)\n\n\
         | lane | mode and options | runs | work | bank totals conserved | errors |\n\
         |---|---|---|---|---|---|"
    );
    for (lane, r) in LANES.iter().zip(lanes) {
        let _ = writeln!(
            md,
            "| {} | `{} {}` | {} | {} | {} | {} |",
            lane.name,
            lane.mode,
            if lane.mode == "idle" {
                format!("--conns {IDLE_CONNS} --hold {}", IDLE_HOLD.as_secs())
            } else {
                lane.args.join(" ")
            },
            r.runs,
            r.work,
            r.conserved_cell(lane),
            r.errors_cell()
        );
    }
    let _ = writeln!(
        md,
        "\n## Hostile clients\n\n\
         | kind | conns | connect failures | MiB sent | closed by server | reply lines | \
         slow readers evicted (longest wait) +w short warm-up cycles | anomalies |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for h in hostile {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} | {} | {} | {} | {} |",
            h.name,
            h.get(&h.conns),
            h.get(&h.connect_failed),
            h.get(&h.bytes_sent) as f64 / (1024.0 * 1024.0),
            h.get(&h.closed_by_server),
            h.get(&h.replies),
            evicted_text(h),
            h.get(&h.anomalies)
        );
    }
    let _ = writeln!(md, "\n## Server logs\n");
    for (s, l) in servers.iter().zip(logs) {
        let _ = writeln!(
            md,
            "- `{}`: {} warnings, {} errors, {} panics",
            s.log.display(),
            l.warn,
            l.error,
            l.panics
        );
        let mut kinds: Vec<(&String, &u64)> = l.kinds.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1));
        for (k, n) in kinds.into_iter().take(8) {
            let _ = writeln!(md, "  - {n} × `{}`", k.replace('`', "'"));
        }
    }
    md
}

const COLORS: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// A line chart, one line per server, with the end of warm-up and of the load marked.
fn svg_lines(
    title: &str,
    names: &[&str],
    samples: &[Sample],
    value: impl Fn(&Proc) -> f64,
    warm_t: Option<f64>,
    end_t: Option<f64>,
) -> String {
    let (w, h, left, right, top, bottom) = (800.0, 360.0, 60.0, 20.0, 40.0, 50.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let t_max = samples.iter().map(|s| s.t).fold(1.0, f64::max);
    let t_step = nice_step(t_max / 6.0);
    let v_peak = samples
        .iter()
        .flat_map(|s| s.procs.iter().flatten().map(&value))
        .fold(1.0, f64::max);
    let v_step = nice_step(v_peak / 4.0);
    let v_max = v_step * (v_peak / v_step).ceil().max(1.0);
    let x = |t: f64| left + pw * t / t_max;
    let y = |v: f64| top + ph * (1.0 - v / v_max);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{title}</text>\n",
        w / 2.0
    );
    let mut v = 0.0;
    while v <= v_max + v_step / 2.0 {
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            w - right,
            left - 4.0,
            y(v) + 4.0,
            axis_label(v, v_step),
            y = y(v)
        );
        v += v_step;
    }
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{} s</text>",
            x(t),
            h - bottom + 16.0,
            axis_label(t, t_step),
        );
        t += t_step;
    }
    for (t, label, anchor, dx) in [
        (warm_t, "end of warm-up", "start", 3.0),
        (end_t, "end of load", "end", -3.0),
    ] {
        if let Some(t) = t {
            let _ = writeln!(
                svg,
                "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{top}\" y2=\"{1}\" stroke=\"#888\" \
                 stroke-dasharray=\"4 3\"/><text x=\"{2:.1}\" y=\"{3}\" fill=\"#555\" \
                 text-anchor=\"{anchor}\">{label}</text>",
                x(t),
                top + ph,
                x(t) + dx,
                top + 12.0
            );
        }
    }
    for (i, name) in names.iter().enumerate() {
        let points: Vec<String> = samples
            .iter()
            .filter_map(|s| {
                let p = s.procs.get(i)?.as_ref()?;
                Some(format!("{:.1},{:.1}", x(s.t), y(value(p))))
            })
            .collect();
        let color = COLORS[i % COLORS.len()];
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        for p in &points {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(
                svg,
                "<circle cx=\"{px}\" cy=\"{py}\" r=\"2.5\" fill=\"{color}\"/>"
            );
        }
        let lx = left + 10.0 + i as f64 * 100.0;
        let _ = writeln!(
            svg,
            "<rect x=\"{lx}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{color}\"/>\
             <text x=\"{}\" y=\"{}\">{name}</text>",
            h - 22.0,
            lx + 14.0,
            h - 13.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn axis_label(v: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A round axis step near `raw`: 1, 2 or 5 times a power of ten.
fn nice_step(raw: f64) -> f64 {
    if !raw.is_finite() || raw <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn write(path: &Path, text: &str) -> Result<(), Failure> {
    std::fs::write(path, text).map_err(io_err(path))
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into());
    format!("{cores} cores, Linux {kernel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_steps_are_round() {
        assert_eq!(nice_step(7.3), 10.0);
        assert_eq!(nice_step(4.1), 5.0);
        assert_eq!(nice_step(0.13), 0.2);
        assert_eq!(nice_step(1.0), 1.0);
        assert_eq!(nice_step(0.0), 1.0);
    }

    #[test]
    fn rss_limit_is_ten_percent_or_the_slack() {
        assert_eq!(rss_limit_kib(100_000), 110_000);
        assert_eq!(rss_limit_kib(3_000), 3_000 + RSS_SLACK_KIB);
    }

    #[test]
    fn reads_echo_connections_and_log_problems() {
        let dir = std::env::temp_dir().join(format!("duo-soak-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("echo.log");
        std::fs::write(
            &log,
            "[2026-01-01T00:00:00Z INFO  echo] stats: 12 connections, 3 msg/s\n\
             [2026-01-01T00:00:01Z WARN  duo_net::connection] echo#17: odd thing 42\n\
             [2026-01-01T00:00:01Z WARN  duo_net::connection] echo#18: odd thing 43\n\
             [2026-01-01T00:00:02Z INFO  echo] stats: 0 connections, 0 msg/s\n\
             thread 'x' panicked at src/main.rs:1:1\n",
        )
        .unwrap();
        assert_eq!(echo_conns(&log), Some(0));
        let s = summarize_log(&log);
        assert_eq!((s.warn, s.error, s.panics), (2, 0, 1));
        assert_eq!(s.kinds.len(), 1, "{:?}", s.kinds);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn options() {
        let o = parse(vec!["--quick".into()]).ok().unwrap();
        assert_eq!((o.secs, o.quick), (60, true));
        let o = parse(vec!["--secs".into(), "30".into()]).ok().unwrap();
        assert_eq!((o.secs, o.quick, o.explicit_secs), (30, false, true));
        assert!(parse(vec!["--secs".into(), "5".into()]).is_err());
        assert!(parse(vec!["--bogus".into()]).is_err());
        assert_eq!(parse(vec![]).ok().unwrap().secs, 600);
    }
}
