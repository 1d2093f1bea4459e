//! [`MetricsEndpoint`]: `/metrics`, `/healthz` and `/debug/loops` on a duo HTTP server of
//! their own.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use duo_http::{HttpServer, HttpServerThread, Method, Request, Response, StatusCode};
use duo_net::ServerHandle;
use duo_reactor::LoopMetrics;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::collect::DuoCollector;

/// The content type of `/metrics` (the OpenMetrics text format, which Prometheus prefers
/// and `prometheus_client` writes).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `/healthz` calls stuck by default: a loop busy this long in one go.
const DEFAULT_HEALTH_LIMIT: Duration = Duration::from_secs(5);

/// The figures of a process and where to serve them: duo's own (every loop, the servers
/// given with [`add_server`](MetricsEndpoint::add_server), the buffer pool) and the
/// application's, registered in [`registry_mut`](MetricsEndpoint::registry_mut).
/// See the [crate] documentation for the routes and an example.
pub struct MetricsEndpoint {
    registry: Registry,
    collector: DuoCollector,
    health_limit: Duration,
}

impl Default for MetricsEndpoint {
    fn default() -> MetricsEndpoint {
        MetricsEndpoint::new()
    }
}

impl fmt::Debug for MetricsEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsEndpoint")
            .field("collector", &self.collector)
            .field("health_limit", &self.health_limit)
            .finish()
    }
}

impl MetricsEndpoint {
    /// An endpoint with duo's figures registered and no server yet.
    pub fn new() -> MetricsEndpoint {
        let mut registry = Registry::default();
        let collector = DuoCollector::new();
        registry.register_collector(Box::new(collector.clone()));
        MetricsEndpoint {
            registry,
            collector,
            health_limit: DEFAULT_HEALTH_LIMIT,
        }
    }

    /// Exports the figures of `server` (label `server`: its name). Servers can be added
    /// after [`spawn`](MetricsEndpoint::spawn) through [`MetricsServer::add_server`].
    pub fn add_server(&mut self, server: ServerHandle) -> &mut Self {
        self.collector.add_server(server);
        self
    }

    /// The registry for the application's own metrics (`prometheus_client` counters,
    /// gauges, histograms, families). Name them with a prefix of your own (the bank uses
    /// `bank_`); `duo_` is taken.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// How long a loop may stay busy in one go (in one callback, or in `epoll_wait`'s
    /// return and the loop's own bookkeeping before the next callback) before `/healthz`
    /// answers `503` (default 5 s).
    pub fn health_limit(&mut self, limit: Duration) -> &mut Self {
        self.health_limit = limit;
        self
    }

    /// The `/metrics` text, as a scrape would get it now.
    pub fn render(&self) -> String {
        render(&self.registry)
    }

    /// Serves the endpoint on `addr` (port 0 picks a free port) from a loop thread of its
    /// own, named `metrics`.
    ///
    /// # Errors
    ///
    /// Binding `addr` failed, or the thread could not start.
    pub fn spawn(self, addr: SocketAddr) -> io::Result<MetricsServer> {
        let collector = self.collector.clone();
        let registry = Arc::new(Mutex::new(self.registry));
        let health_limit = self.health_limit;
        let metrics = registry.clone();
        let http = HttpServer::builder("metrics", addr)
            .route(Method::Get, "/metrics", move |_: &Request| {
                Response::with_body(
                    StatusCode::OK,
                    OPENMETRICS_CONTENT_TYPE,
                    render(&metrics.lock()),
                )
            })
            .route(Method::Get, "/healthz", move |_: &Request| {
                healthz(&DuoCollector::loop_snapshots(), health_limit)
            })
            .route(Method::Get, "/debug/loops", |_: &Request| {
                Response::with_body(
                    StatusCode::OK,
                    "application/json",
                    loops_json(&DuoCollector::loop_snapshots()),
                )
            })
            .max_connections(64)
            .spawn()?;
        log::info!("metrics on http://{}/metrics", http.local_addr());
        Ok(MetricsServer {
            http,
            collector,
            _registry: registry,
        })
    }
}

/// Encodes `registry`; an encoding error (a collector failing to write) is a bug, logged,
/// and what was written so far is served.
fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        log::error!("encoding the metrics failed: {e}");
    }
    out
}

/// `200 ok`, or `503` with the loops busy longer than `limit`.
fn healthz(loops: &[(String, LoopMetrics)], limit: Duration) -> Response {
    let stuck: Vec<String> = loops
        .iter()
        .filter_map(|(name, m)| {
            let busy = m.busy_for?;
            (busy > limit).then(|| format!("loop {name} busy for {:.1} s", busy.as_secs_f64()))
        })
        .collect();
    if stuck.is_empty() {
        Response::text(StatusCode::OK, "ok\n")
    } else {
        Response::text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stuck: {}\n", stuck.join("; ")),
        )
    }
}

/// Every loop's figures as a JSON array.
fn loops_json(loops: &[(String, LoopMetrics)]) -> String {
    let secs = |d: Duration| d.as_secs_f64();
    let rows: Vec<_> = loops
        .iter()
        .map(|(name, m)| {
            json!({
                "name": name,
                "iterations": m.iterations,
                "io_events": m.io_events,
                "tasks_run": m.tasks_run,
                "timers_fired": m.timers_fired,
                "empty_wakeups": m.empty_wakeups,
                "events_per_iteration": m.events_per_iteration,
                "seconds": {
                    "poll": secs(m.poll_time),
                    "io": secs(m.io_time),
                    "timers": secs(m.timer_time),
                    "tasks": secs(m.task_time),
                },
                "timer_lateness": {
                    "buckets": m.timer_lateness.counts,
                    "sum_seconds": secs(m.timer_lateness.sum),
                },
                "tasks_queued": m.tasks_queued,
                "largest_task_batch": m.largest_task_batch,
                "longest_callback_seconds": secs(m.longest_callback),
                "stalls": m.stalls,
                "spins": m.spins,
                "busy_for_seconds": m.busy_for.map(secs),
            })
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&rows).unwrap_or_else(|e| {
        log::error!("encoding /debug/loops failed: {e}");
        "[]".into()
    });
    text.push('\n');
    text
}

/// A running [`MetricsEndpoint`], from [`MetricsEndpoint::spawn`]. Dropping it stops the
/// endpoint, as [`stop`](MetricsServer::stop) does.
pub struct MetricsServer {
    http: HttpServerThread,
    collector: DuoCollector,
    /// Kept alive with the routes that share it.
    _registry: Arc<Mutex<Registry>>,
}

impl fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.http.local_addr())
            .field("collector", &self.collector)
            .finish()
    }
}

impl MetricsServer {
    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// Exports the figures of another server from now on.
    pub fn add_server(&self, server: ServerHandle) {
        self.collector.add_server(server);
    }

    /// Stops the endpoint and joins its thread.
    ///
    /// # Errors
    ///
    /// The endpoint's loop failed or its thread panicked.
    pub fn stop(self) -> io::Result<()> {
        self.http.stop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(busy_for: Option<Duration>) -> LoopMetrics {
        LoopMetrics {
            busy_for,
            ..LoopMetrics::default()
        }
    }

    #[test]
    fn healthz_names_the_loops_busy_too_long() {
        let limit = Duration::from_secs(5);
        let loops = vec![
            ("idle".to_owned(), metrics(None)),
            (
                "working".to_owned(),
                metrics(Some(Duration::from_millis(3))),
            ),
        ];
        assert_eq!(healthz(&loops, limit).status(), StatusCode::OK);
        let mut loops = loops;
        loops.push(("stuck".to_owned(), metrics(Some(Duration::from_secs(7)))));
        let r = healthz(&loops, limit);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = String::from_utf8_lossy(r.body());
        assert!(body.contains("loop stuck busy for 7.0 s"), "{body}");
        assert!(!body.contains("working"), "{body}");
    }

    #[test]
    fn debug_loops_is_json_with_every_loop() {
        let loops = vec![
            ("a".to_owned(), metrics(None)),
            ("b".to_owned(), metrics(Some(Duration::from_millis(1500)))),
        ];
        let v: serde_json::Value = serde_json::from_str(&loops_json(&loops)).unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(2));
        assert_eq!(v[1]["name"], "b");
        assert_eq!(v[1]["busy_for_seconds"], 1.5);
        assert!(v[0]["busy_for_seconds"].is_null());
    }
}
