//! Helpers shared by the aggregating endpoint's tests: endpoints standing in for workers,
//! the scrape targets naming them, and reading a sample's value out of a text.

use std::net::SocketAddr;

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
