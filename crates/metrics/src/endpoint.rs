//! [`MetricsEndpoint`]: `/metrics`, `/healthz` and `/debug/loops` on a duo HTTP server of
//! their own.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use duo_http::{
    HttpServer, HttpServerBuilder, HttpServerThread, Method, Request, Responder, Response,
    StatusCode,
};
use duo_net::{ServerHandle, UdpSocket};
use duo_reactor::LoopMetrics;
use parking_lot::Mutex;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::aggregate::{Aggregation, Labels, ScrapeTarget, Wanted};
use crate::collect::DuoCollector;
use crate::EscapedLabel;

/// `duo_tls_certificate_expiry_timestamp_seconds`, by certificate file.
type CertificateExpiry = Family<[(&'static str, EscapedLabel); 1], Gauge>;

/// The content type of `/metrics` (the OpenMetrics text format, which Prometheus prefers
/// and `prometheus_client` writes).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `/healthz` calls stuck by default: a loop busy this long in one go.
const DEFAULT_HEALTH_LIMIT: Duration = Duration::from_secs(5);

/// The most connections the endpoint serves at once, and the most aggregated answers
/// (each a thread, and a thread per target under it) it computes at once.
const MAX_CONNECTIONS: usize = 64;

/// How long an aggregating endpoint waits for its targets by default.
const DEFAULT_SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest an aggregating endpoint waits for its targets, whatever it is told (the
/// deadlines computed from it must not overflow).
const MAX_SCRAPE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The figures of a process and where to serve them: duo's own (every loop, the servers
/// given with [`add_server`](MetricsEndpoint::add_server), the buffer pool) and the
/// application's, registered in [`registry_mut`](MetricsEndpoint::registry_mut).
/// See the [crate] documentation for the routes and an example.
pub struct MetricsEndpoint {
    registry: Registry,
    collector: DuoCollector,
    health_limit: Duration,
    aggregation: Option<Aggregation>,
    scrape_timeout: Duration,
    /// Registered at the first [`MetricsEndpoint::certificate_expiry`].
    certificates: Option<CertificateExpiry>,
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
            .field("aggregation", &self.aggregation)
            .field("scrape_timeout", &self.scrape_timeout)
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
            aggregation: None,
            scrape_timeout: DEFAULT_SCRAPE_TIMEOUT,
            certificates: None,
        }
    }

    /// Makes this the endpoint of a group of processes (a supervisor's, for its workers):
    /// at every request it also fetches the same route from each of `targets()` (asked
    /// anew each time), in parallel and within the [scrape
    /// timeout](MetricsEndpoint::scrape_timeout), and answers for all of them:
    ///
    /// - `/metrics`: this process's figures labelled `own_labels` and every target's
    ///   labelled with its [`ScrapeTarget::labels`], merged family by family
    ///   ([`aggregate::merge`](crate::aggregate::merge)), plus `duo_aggregate_up` (1: the
    ///   target answered) and `duo_aggregate_scrape_seconds` per target. A target that
    ///   does not answer, or answers with a text that is not an exposition (a line a
    ///   Prometheus server could not parse as OpenMetrics, the format of the merged text),
    ///   is left out of that scrape, not the whole scrape failed.
    /// - `/healthz`: `200 ok` if this process and every target are healthy and there is
    ///   at least one target; else `503` with a line per problem.
    /// - `/debug/loops`: `{"self": {"labels", "loops"}, "targets": [{"labels", "loops"
    ///   or "error"}]}`.
    ///
    /// Each request waits for the targets on a thread of its own, so the endpoint answers
    /// other requests (several scrapers, a `/healthz` probe) meanwhile; a request not
    /// answered within the scrape timeout plus 2 s gets `503`. A request whose client
    /// left stops waiting for the targets; at most 64 requests are under way at once,
    /// and one beyond that gets `503` at once.
    pub fn aggregate(
        &mut self,
        own_labels: Labels,
        targets: impl Fn() -> Vec<ScrapeTarget> + Send + Sync + 'static,
    ) -> &mut Self {
        self.aggregation = Some(Aggregation {
            own_labels,
            targets: Arc::new(targets),
            timeout: self.scrape_timeout,
        });
        self
    }

    /// How long an [aggregating](MetricsEndpoint::aggregate) endpoint waits for its
    /// targets (default 3 s; before or after `aggregate`): a target slower than that is
    /// left out of the answer. A scraper that says how long it waits (Prometheus sends
    /// `X-Prometheus-Scrape-Timeout-Seconds`) gets its answer within 80 % of that, if
    /// that is shorter. At most an hour: a longer timeout (`Duration::MAX` for "as long
    /// as it takes") is an hour.
    pub fn scrape_timeout(&mut self, timeout: Duration) -> &mut Self {
        let timeout = timeout.min(MAX_SCRAPE_TIMEOUT);
        self.scrape_timeout = timeout;
        if let Some(aggregation) = &mut self.aggregation {
            aggregation.timeout = timeout;
        }
        self
    }

    /// Exports the figures of `server` (label `server`: its name; see
    /// [`DuoCollector::add_server`] for a name taken). Servers can be added
    /// after [`spawn`](MetricsEndpoint::spawn) through [`MetricsServer::add_server`].
    pub fn add_server(&mut self, server: ServerHandle) -> &mut Self {
        self.collector.add_server(server);
        self
    }

    /// Exports the figures of the UDP socket `socket` (`duo_udp_*`, label `socket`; see
    /// [`DuoCollector::add_udp_socket`]). Sockets can be added after
    /// [`spawn`](MetricsEndpoint::spawn) through [`MetricsServer::add_udp_socket`].
    ///
    /// ```
    /// use duo_metrics::MetricsEndpoint;
    /// use duo_net::UdpSocket;
    /// use duo_reactor::EventLoopThread;
    ///
    /// let io = EventLoopThread::spawn("udp", None)?;
    /// let socket = UdpSocket::builder("dns", "127.0.0.1:0".parse()?)
    ///     .on_datagram(|_ctx, _payload, _from| {})
    ///     .start(io.handle())?;
    /// let mut endpoint = MetricsEndpoint::new();
    /// endpoint.add_udp_socket(socket.clone());
    /// assert!(endpoint.render().contains("duo_udp_datagrams_in_total{socket=\"dns\"} 0"));
    /// socket.stop();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_udp_socket(&mut self, socket: UdpSocket) -> &mut Self {
        self.collector.add_udp_socket(socket);
        self
    }

    /// Publishes when the TLS certificate chain served from `file` stops being valid:
    /// `not_after`, the earliest end of validity of its certificates (see
    /// `duo_net::tls::chain_expiry`), as the gauge
    /// `duo_tls_certificate_expiry_timestamp_seconds{file}` (seconds from the Unix epoch),
    /// for an alert well before clients start refusing the handshake (for example
    /// `duo_tls_certificate_expiry_timestamp_seconds - time() < 14 * 86400`). A second
    /// call for the same file replaces its value. The `file` label is the path as given,
    /// each byte of it that is not UTF-8 written `\xNN`.
    ///
    /// ```
    /// use std::path::Path;
    /// use std::time::{Duration, SystemTime};
    /// use duo_metrics::MetricsEndpoint;
    ///
    /// let mut endpoint = MetricsEndpoint::new();
    /// let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    /// endpoint.certificate_expiry(Path::new("/etc/duo/cert.pem"), not_after);
    /// assert!(endpoint.render().contains(
    ///     "duo_tls_certificate_expiry_timestamp_seconds{file=\"/etc/duo/cert.pem\"} 1900000000"
    /// ));
    /// ```
    pub fn certificate_expiry(&mut self, file: &Path, not_after: SystemTime) -> &mut Self {
        let registry = &mut self.registry;
        let family = self.certificates.get_or_insert_with(|| {
            let family = CertificateExpiry::default();
            registry.register(
                "duo_tls_certificate_expiry_timestamp_seconds",
                "When the TLS certificate chain served from a file stops being valid (the \
                 earliest end of validity of its certificates), in seconds from the Unix epoch",
                family.clone(),
            );
            family
        });
        let secs = match not_after.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
            Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
        };
        let file = EscapedLabel(path_label(file));
        family.get_or_create(&[("file", file)]).set(secs);
        self
    }

    /// The registry for the application's own metrics (`prometheus_client` counters,
    /// gauges, histograms, families). Name them with a prefix of your own (the bank uses
    /// `bank_`); `duo_` is taken. `prometheus_client` writes label values as they are:
    /// for a value you do not control, use [`EscapedLabel`].
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
        self.serve(HttpServer::builder("metrics", addr))
    }

    /// As [`spawn`](MetricsEndpoint::spawn), on `listener`, a TCP socket already bound and
    /// listening (one a previous image of the process handed over, say): connections
    /// queued on it meanwhile are served.
    ///
    /// # Errors
    ///
    /// `listener` is not a listening TCP socket, or the thread could not start.
    pub fn spawn_on(self, listener: std::net::TcpListener) -> io::Result<MetricsServer> {
        self.serve(HttpServer::builder_on("metrics", listener))
    }

    fn serve(self, builder: HttpServerBuilder) -> io::Result<MetricsServer> {
        let collector = self.collector.clone();
        let registry = Arc::new(Mutex::new(self.registry));
        let health_limit = self.health_limit;
        let metrics = registry.clone();
        let group = self.aggregation.map(Arc::new);
        // What each route answers, from whichever thread computes it.
        let answer_metrics = {
            let group = group.clone();
            move |budget: Option<Duration>, wanted: Wanted<'_>| {
                let own = render(&metrics.lock());
                let text = match &group {
                    Some(group) => group.metrics(&own, budget, wanted),
                    None => own,
                };
                Response::with_body(StatusCode::OK, OPENMETRICS_CONTENT_TYPE, text)
            }
        };
        let answer_healthz = {
            let group = group.clone();
            move |wanted: Wanted<'_>| {
                let own = stuck_loops(&DuoCollector::loop_snapshots(), health_limit);
                let (healthy, text) = match &group {
                    Some(group) => group.healthz(own, wanted),
                    None => match own {
                        None => (true, "ok\n".to_owned()),
                        Some(stuck) => (false, format!("{stuck}\n")),
                    },
                };
                let status = if healthy {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                Response::text(status, text)
            }
        };
        let answer_loops = {
            let group = group.clone();
            move |wanted: Wanted<'_>| {
                let own = loops_json(&DuoCollector::loop_snapshots());
                let text = match &group {
                    Some(group) => group.loops(own, wanted),
                    None => pretty(&own),
                };
                Response::with_body(StatusCode::OK, "application/json", text)
            }
        };
        let builder = builder.max_connections(MAX_CONNECTIONS);
        // Aggregated answers under way: a client that leaves frees its connection at
        // once, not the work it started, so that work has a bound of its own.
        let under_way = Arc::new(AtomicUsize::new(0));
        let builder = match &group {
            // A process's own figures are at hand: answered on the loop.
            None => builder
                .route(Method::Get, "/metrics", move |req: &Request| {
                    answer_metrics(scraper_budget(req), &|| true)
                })
                .route(Method::Get, "/healthz", move |_: &Request| {
                    answer_healthz(&|| true)
                })
                .route(Method::Get, "/debug/loops", move |_: &Request| {
                    answer_loops(&|| true)
                }),
            // The targets' take time (up to the scrape timeout): fetched on a thread of
            // the request's own, so that the loop answers other requests meanwhile.
            // A scraper that gives up and closes frees its connection at once (there are
            // at most 64).
            Some(group) => builder
                .response_timeout(group.timeout + AGGREGATION_SLACK)
                .abort_on_client_close(true)
                .route_deferred(Method::Get, "/metrics", {
                    let under_way = under_way.clone();
                    move |req: &Request, r| {
                        let (answer, budget) = (answer_metrics.clone(), scraper_budget(req));
                        answer_off_loop(r, &under_way, move |wanted| answer(budget, wanted));
                    }
                })
                .route_deferred(Method::Get, "/healthz", {
                    let under_way = under_way.clone();
                    move |_: &Request, r| {
                        answer_off_loop(r, &under_way, answer_healthz.clone());
                    }
                })
                .route_deferred(Method::Get, "/debug/loops", move |_: &Request, r| {
                    answer_off_loop(r, &under_way, answer_loops.clone());
                }),
        };
        let http = builder.spawn()?;
        log::info!("metrics on http://{}/metrics", http.local_addr());
        Ok(MetricsServer {
            http,
            collector,
            _registry: registry,
        })
    }
}

/// What an aggregated answer may take beyond the scrape timeout (merging, writing) before
/// the endpoint gives up on it (503).
const AGGREGATION_SLACK: Duration = Duration::from_secs(2);

/// Counts an aggregated answer under way for as long as it lives.
struct UnderWay(Arc<AtomicUsize>);

impl Drop for UnderWay {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers through `r` with what `answer` computes, on a thread of its own, `answer`
/// told whether its client is still there (one that left is not waited for). Beyond
/// [`MAX_CONNECTIONS`] answers `under_way`, a `503` at once. If the thread cannot start,
/// the responder is dropped with the closure: the client gets a 500 (and the error is
/// logged).
fn answer_off_loop(
    r: Responder,
    under_way: &Arc<AtomicUsize>,
    answer: impl FnOnce(Wanted<'_>) -> Response + Send + 'static,
) {
    let counted = UnderWay(under_way.clone());
    if under_way.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
        drop(counted);
        duo_reactor::log_limited!(
            log::Level::Warn,
            "metrics: {MAX_CONNECTIONS} aggregated requests under way; answering 503"
        );
        return r.respond(Response::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests under way\n",
        ));
    }
    let started = std::thread::Builder::new()
        .name("metrics-aggregate".into())
        .spawn(move || {
            let _counted = counted;
            let resp = answer(&|| r.is_connected());
            r.respond(resp);
        });
    if let Err(e) = started {
        duo_reactor::log_limited!(
            log::Level::Error,
            "metrics: no thread to aggregate a request: {e}"
        );
    }
}

/// 80 % of the time the scraper waits for its answer, if it says
/// (`X-Prometheus-Scrape-Timeout-Seconds`).
fn scraper_budget(req: &Request) -> Option<Duration> {
    let secs: f64 = req
        .header("x-prometheus-scrape-timeout-seconds")?
        .trim()
        .parse()
        .ok()?;
    (secs.is_finite() && secs > 0.0)
        .then(|| Duration::from_secs_f64((secs * 0.8).min(MAX_SCRAPE_TIMEOUT.as_secs_f64())))
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

/// `None` if no loop has been busy longer than `limit`, else `stuck: ...` naming them.
fn stuck_loops(loops: &[(String, LoopMetrics)], limit: Duration) -> Option<String> {
    let stuck: Vec<String> = loops
        .iter()
        .filter_map(|(name, m)| {
            let busy = m.busy_for?;
            (busy > limit).then(|| format!("loop {name} busy for {:.1} s", busy.as_secs_f64()))
        })
        .collect();
    (!stuck.is_empty()).then(|| format!("stuck: {}", stuck.join("; ")))
}

/// Every loop's figures as a JSON array.
fn loops_json(loops: &[(String, LoopMetrics)]) -> serde_json::Value {
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
                "helped_turns": m.helped_turns,
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
    serde_json::Value::Array(rows)
}

/// `value` as pretty JSON and a newline.
fn pretty(value: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|e| {
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

    /// Exports the figures of another UDP socket from now on.
    pub fn add_udp_socket(&self, socket: UdpSocket) {
        self.collector.add_udp_socket(socket);
    }

    /// Stops the endpoint and joins its thread.
    ///
    /// # Errors
    ///
    /// The endpoint's loop failed or its thread panicked.
    pub fn stop(self) -> io::Result<()> {
        self.http.stop()
    }

    /// Stops the endpoint after the requests under way are answered (at most `grace`:
    /// [`HttpServerThread::shutdown`]), and joins its thread: a scraper idle between
    /// scrapes is closed at once, one waiting for its answer gets it.
    ///
    /// # Errors
    ///
    /// The endpoint's loop failed or its thread panicked.
    pub fn shutdown(self, grace: Duration) -> io::Result<()> {
        self.http.shutdown(grace)
    }
}

/// A path as a label value: its UTF-8 as it is, each byte that is not UTF-8 as `\xNN`
/// (`Path::display` turns them all into U+FFFD, so two files differing only there would
/// share one series).
fn path_label(path: &Path) -> String {
    use std::fmt::Write;
    use std::os::unix::ffi::OsStrExt;
    let mut label = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        label.push_str(chunk.valid());
        for byte in chunk.invalid() {
            let _ = write!(label, "\\x{byte:02x}");
        }
    }
    label
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
        assert_eq!(stuck_loops(&loops, limit), None);
        let mut loops = loops;
        loops.push(("stuck".to_owned(), metrics(Some(Duration::from_secs(7)))));
        let body = stuck_loops(&loops, limit).expect("one is stuck");
        assert!(body.contains("loop stuck busy for 7.0 s"), "{body}");
        assert!(!body.contains("working"), "{body}");
    }

    #[test]
    fn debug_loops_is_json_with_every_loop() {
        let loops = vec![
            ("a".to_owned(), metrics(None)),
            ("b".to_owned(), metrics(Some(Duration::from_millis(1500)))),
        ];
        let v: serde_json::Value = serde_json::from_str(&pretty(&loops_json(&loops))).unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(2));
        assert_eq!(v[1]["name"], "b");
        assert_eq!(v[1]["busy_for_seconds"], 1.5);
        assert!(v[0]["busy_for_seconds"].is_null());
    }
}
