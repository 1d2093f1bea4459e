//! duo's figures for operators: every loop's health, every server's connections and
//! traffic, the buffer pool, and an application's own metrics, in the Prometheus /
//! OpenMetrics text format, served over HTTP by duo itself ([`duo_http`]).
//!
//! - [`MetricsEndpoint`] collects: duo's figures through a [`DuoCollector`] (read from
//!   the snapshots duo keeps anyway, at each scrape), plus whatever the application
//!   registers in its [`Registry`] (counters and histograms of `prometheus_client`).
//! - [`MetricsEndpoint::spawn`] serves it on a loop thread of its own, so a stalled
//!   application loop cannot take the endpoint down (the endpoint is how you see the
//!   stall):
//!   - `GET /metrics`: the OpenMetrics text exposition (Prometheus scrapes it);
//!   - `GET /healthz`: `200 ok`, or `503` naming every loop busy in one callback for
//!     longer than the health limit (default 5 s);
//!   - `GET /debug/loops`: every loop's figures as JSON, for people and scripts.
//!
//! - [`MetricsEndpoint::aggregate`] makes it the endpoint of a group of processes (a
//!   supervisor's for its workers, see [`aggregate`]): each request also fetches the
//!   route from every worker's endpoint and answers for all of them, each sample labelled
//!   with its process.
//!
//! `docs/observability.md` lists every metric with its meaning.
//!
//! ```
//! use duo_metrics::MetricsEndpoint;
//! use prometheus_client::metrics::counter::Counter;
//! use std::io::{Read, Write};
//!
//! let mut endpoint = MetricsEndpoint::new();
//! let jobs: Counter = Counter::default();
//! endpoint.registry_mut().register("myapp_jobs", "Jobs done", jobs.clone());
//! jobs.inc();
//! let server = endpoint.spawn("127.0.0.1:0".parse()?)?;
//!
//! let mut http = std::net::TcpStream::connect(server.local_addr())?;
//! http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
//! let mut reply = String::new();
//! http.read_to_string(&mut reply)?;
//! assert!(reply.starts_with("HTTP/1.1 200"));
//! assert!(reply.contains("myapp_jobs_total 1"));
//! assert!(reply.contains("duo_loop_iterations_total{loop=")); // the endpoint's own loop
//! server.stop()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod aggregate;
mod collect;
mod endpoint;
mod exposition;
mod udp;

pub use aggregate::ScrapeTarget;
pub use collect::{DuoCollector, EscapedLabel};
pub use endpoint::{MetricsEndpoint, MetricsServer, OPENMETRICS_CONTENT_TYPE};
pub use prometheus_client;
pub use prometheus_client::registry::Registry;
