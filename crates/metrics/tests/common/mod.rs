//! Helpers shared by the aggregating endpoint's tests: endpoints standing in for workers,
//! fake targets with a canned answer, the scrape targets naming them, and reading a
//! sample's value out of a text.

#![allow(dead_code)] // (each test file uses some of these)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::thread::JoinHandle;

use duo_testkit::LIMIT;

use duo_metrics::prometheus_client::metrics::counter::Counter;
use duo_metrics::{MetricsEndpoint, MetricsServer, ScrapeTarget};

/// An endpoint whose `app_jobs` counter stands at `jobs`.
pub(crate) fn worker(jobs: u64) -> MetricsServer {
    let mut endpoint = MetricsEndpoint::new();
    let counter: Counter = Counter::default();
    counter.inc_by(jobs);
    endpoint
        .registry_mut()
        .register("app_jobs", "Jobs done", counter);
    endpoint.spawn("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// A scrape target at `addr` labelled `worker="name"`.
pub(crate) fn target(name: &str, addr: SocketAddr) -> ScrapeTarget {
    ScrapeTarget {
        labels: vec![("worker".to_owned(), name.to_owned())],
        addr,
    }
}

/// The value of the sample written exactly as `series`.
pub(crate) fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A fake target that answers `requests` requests, one per connection, with `200` and
/// `body`; its thread ends after the last.
pub(crate) fn canned(body: &str, requests: usize) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let thread = std::thread::spawn(move || {
        for _ in 0..requests {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(LIMIT)).unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = s.write_all(reply.as_bytes());
        }
    });
    (addr, thread)
}
