//! A stand-in for echo's metrics endpoint, for the tests of the Prometheus side of the
//! harness: a loopback HTTP server whose `/metrics` shows the three counters `observe`
//! checks, growing by one step per scrape or frozen.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::check::{wait_for, Expect};
use super::prometheus::{self, Prometheus};
use super::RunDir;

/// The stand-in server; dropping it stops its thread.
struct StandIn {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    scrapes: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl StandIn {
    /// Serves on a free loopback port; with `growing`, every scrape sees larger counters.
    fn start(growing: bool) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the stand-in");
        let addr = listener.local_addr().expect("the stand-in's address");
        let stop = Arc::new(AtomicBool::new(false));
        let scrapes = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, scrapes) = (stop.clone(), scrapes.clone());
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let n = if growing {
                        scrapes.fetch_add(1, Ordering::SeqCst) + 1
                    } else {
                        scrapes.fetch_add(1, Ordering::SeqCst);
                        1
                    };
                    // A scraper that hangs up early is not the stand-in's concern.
                    let _ = answer(conn, n);
                }
            })
        };
        StandIn {
            addr,
            stop,
            scrapes,
            thread: Some(thread),
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request (up to the end of its header) and answers with the metrics of
/// scrape `n`.
fn answer(mut conn: TcpStream, n: u64) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
        let got = conn.read(&mut buf)?;
        if got == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..got]);
    }
    let body = format!(
        "# HELP duo_loop_iterations_total Event loop iterations.\n\
         # TYPE duo_loop_iterations_total counter\n\
         duo_loop_iterations_total{{loop=\"0\"}} {}\n\
         # HELP duo_server_bytes_in_total Bytes read from connections.\n\
         # TYPE duo_server_bytes_in_total counter\n\
         duo_server_bytes_in_total{{server=\"echo\",loop=\"0\"}} {}\n\
         # HELP duo_server_connections_accepted_total Connections accepted.\n\
         # TYPE duo_server_connections_accepted_total counter\n\
         duo_server_connections_accepted_total{{server=\"echo\"}} 20\n",
        n * 100,
        n * 6400
    );
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Prometheus scraping a stand-in, for `test`. Where Prometheus is not installed: `None`
/// after one line `skipped TEST: ...`, except under CI (`CI` set and not empty), where the
/// test fails (`.ci/run` installs the package first), as the PostgreSQL tests do.
fn prometheus_on(stand_in: &StandIn, test: &str) -> Option<(RunDir, Prometheus)> {
    let exe = match prometheus::find() {
        Ok(exe) => exe,
        Err(e) => {
            let under_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
            assert!(
                !under_ci,
                "{test}: {e}; CI is set, so this fails instead of skipping"
            );
            println!("skipped {test}: {e}");
            return None;
        }
    };
    let dir = RunDir::create(test, false).expect("the run directory");
    let prom = Prometheus::start(&exe, &dir.path, stand_in.addr, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{test}: {e}"));
    Some((dir, prom))
}

const EXPECT: Expect = Expect {
    scrapes: 2,
    accepted: 20.0,
    workers: None,
};

#[test]
fn prometheus_sees_the_series_and_growing_counters() {
    let stand_in = StandIn::start(true);
    let Some((_dir, mut prom)) =
        prometheus_on(&stand_in, "prometheus_sees_the_series_and_growing_counters")
    else {
        return;
    };
    let found = wait_for(
        prom.addr,
        &EXPECT,
        Instant::now() + Duration::from_secs(30),
        || prom.still_running(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(found.scrapes_up >= 2, "{}", found.describe());
    assert!(stand_in.scrapes.load(Ordering::SeqCst) >= 2);
    assert_eq!(found.duo_series, 3, "{}", found.describe());
    let names: Vec<&str> = found.names.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "duo_loop_iterations_total",
            "duo_server_bytes_in_total",
            "duo_server_connections_accepted_total"
        ]
    );
    let bytes = &found.counters[0];
    assert_eq!(bytes.name, "duo_server_bytes_in_total");
    // 6400 per scrape, and Prometheus keeps the exact values it scraped.
    assert_eq!(
        bytes.increase(),
        6400.0 * (bytes.samples as f64 - 1.0),
        "{}",
        found.describe()
    );
}

#[test]
fn frozen_counters_fail_the_check() {
    let stand_in = StandIn::start(false);
    let Some((_dir, mut prom)) = prometheus_on(&stand_in, "frozen_counters_fail_the_check") else {
        return;
    };
    let err = wait_for(
        prom.addr,
        &EXPECT,
        // Prometheus hands its targets to the scrapers some 5 s after it starts.
        Instant::now() + Duration::from_secs(12),
        || prom.still_running(),
    )
    .expect_err("counters that never grow must fail the check");
    assert!(
        err.contains("duo_server_bytes_in_total did not increase"),
        "{err}"
    );
    assert!(
        err.contains("duo_loop_iterations_total did not increase"),
        "{err}"
    );
    // The scrapes themselves worked: only the growth is missing.
    assert!(!err.contains("successful scrapes"), "{err}");
}
