//! Log-storm tests: the process's log lines captured, the "N similar messages suppressed"
//! counts read back, the bound a rate limiter keeps, and a hostile client.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use duo_reactor::log_limit::{DEFAULT_BURST, DEFAULT_INTERVAL};
use duo_testkit::LIMIT;
use log::{Level, LevelFilter, Log, Metadata, Record};

/// One line logged at `info` or above.
#[derive(Debug, Clone)]
pub(crate) struct LogLine {
    pub(crate) level: Level,
    pub(crate) target: String,
    pub(crate) text: String,
}

/// Every line logged in this process at `info` or above.
struct Capture {
    lines: Mutex<Vec<LogLine>>,
}

impl Log for Capture {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= Level::Info
    }

    fn log(&self, r: &Record<'_>) {
        if self.enabled(r.metadata()) {
            let line = LogLine {
                level: r.level(),
                target: r.target().to_owned(),
                text: r.args().to_string(),
            };
            self.lines.lock().unwrap().push(line);
        }
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture {
    lines: Mutex::new(Vec::new()),
};

/// Makes this process's logger the capture (a test binary that uses it holds one test:
/// the logger and the rate limiters are process-wide).
pub(crate) fn capture_logs() {
    log::set_logger(&CAPTURE).expect("the only logger of this test binary");
    log::set_max_level(LevelFilter::Info);
}

/// The lines captured so far.
pub(crate) fn captured() -> Vec<LogLine> {
    CAPTURE.lines.lock().unwrap().clone()
}

/// The number `N` in `"N similar message(s) suppressed"` in `line`, 0 if there is none.
pub(crate) fn suppressed_in(line: &str) -> u64 {
    let Some(at) = line.find(" similar message") else {
        return 0;
    };
    let digits = line[..at]
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap_or("");
    digits.parse().unwrap_or(0)
}

/// How many lines of one kind a storm lasting `storm` may log: a burst per window
/// started, plus the summaries (one per `report_suppressed`: the server's timer every
/// interval, its stop, and the test's own).
pub(crate) fn storm_bound(storm: Duration) -> u64 {
    let windows = (storm.as_secs_f64() / DEFAULT_INTERVAL.as_secs_f64()).ceil() as u64;
    u64::from(DEFAULT_BURST) * (windows + 1) + windows + 2
}

/// One hostile connection: sends `bytes`, then waits until the server closes it (`what`
/// names the connection in the failure).
pub(crate) fn hostile(addr: SocketAddr, bytes: &[u8], what: &str) {
    let mut s = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            // The backlog overflowed for a moment, say: try again (bounded by the caller).
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => thread::yield_now(),
            Err(e) => panic!("connect to {addr}: {e}"),
        }
    };
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.set_write_timeout(Some(LIMIT)).unwrap();
    // The server may close before everything is written (input too large): a reset here
    // is the expected end.
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if super::is_peer_close(&e) => return,
            Err(e) => panic!("the server did not close a {what} connection: {e}"),
        }
    }
}

/// Runs events `0..events` spread over `clients` threads (thread `c` runs `c`, `c +
/// clients`, ...), calling `event(i)` for each; fails the test if they are not all done
/// within `limit`. Returns how long they took.
pub(crate) fn run_clients(
    clients: u64,
    events: u64,
    limit: Duration,
    what: &str,
    event: impl Fn(u64) + Send + Sync + Clone + 'static,
) -> Duration {
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let event = event.clone();
            thread::spawn(move || {
                let mut i = c;
                while i < events {
                    event(i);
                    i += clients;
                }
            })
        })
        .collect();
    let deadline = started + limit;
    for (i, t) in threads.into_iter().enumerate() {
        duo_testkit::join_before(deadline, &format!("{what} client {i}"), t);
    }
    started.elapsed()
}
