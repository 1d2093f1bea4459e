//! One `/metrics` for a supervisor and all its workers (feature `metrics`).
//!
//! Each worker serves its own [`MetricsEndpoint`] on `127.0.0.1` (a port of its own,
//! published in its stats row: [`serve_worker`]); the supervisor serves one endpoint on
//! the operator's address that gathers them at every request ([`serve_supervisor`]):
//! every sample is labelled `process="worker"`, `pid` and `generation` (or
//! `process="supervisor"` and `pid` for the supervisor's own loops), so a reload shows as
//! the old generation's series ending and the new one's starting, and
//! `duo_aggregate_up` says which workers answered.

use std::io::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr};

use duo_metrics::{MetricsEndpoint, MetricsServer, ScrapeTarget};

use crate::{Supervisor, SupervisorError, Worker, WorkerTable};

/// The address an upgraded supervisor's metrics endpoint had, handed to its next image.
const METRICS_ADDR_VAR: &str = "DUO_SUPERVISOR_METRICS_ADDR";

/// [`Supervisor::run`] with the aggregating endpoint on `metrics` if given (started first,
/// [`serve_supervisor`], stopped when the supervisor is done): `on_ready` gets the
/// endpoint's address. A server prints its `listening on` line there, then
/// [`announce`]s the endpoint.
///
/// An upgrade (`SIGUSR2`) closes the endpoint with the old image; the new image opens it
/// again on the same address (with port 0 configured: the port the first image got, so
/// the announced address stays right; if that port was taken meanwhile, another). Between
/// the two a scrape is refused. An upgraded image that cannot open it at all logs the
/// error and supervises without it: the workers are serving, and an upgrade never ends
/// the service for its metrics.
///
/// # Errors
///
/// The endpoint could not start (binding `metrics` failed, say), or as
/// [`Supervisor::run`].
pub fn run(
    mut supervisor: Supervisor,
    metrics: Option<SocketAddr>,
    on_ready: impl FnOnce(Option<SocketAddr>) + Send + 'static,
) -> Result<(), SupervisorError> {
    // What the previous image bound, if this one is an upgrade: with port 0 configured,
    // the same port again, so that the address announced at the start stays right.
    let previous: Option<SocketAddr> = std::env::var(METRICS_ADDR_VAR)
        .ok()
        .and_then(|a| a.parse().ok());
    std::env::remove_var(METRICS_ADDR_VAR);
    // Set by the previous image: this one is an upgrade, whose workers are serving.
    let upgraded = previous.is_some();
    let server = match metrics {
        Some(configured) => {
            let table = supervisor.worker_table();
            let serve = |at| serve_supervisor(MetricsEndpoint::new(), table.clone(), at);
            let started = match previous {
                Some(prev) if configured.port() == 0 && prev.ip() == configured.ip() => serve(prev)
                    .or_else(|e| {
                        log::warn!("metrics endpoint: {prev} again: {e}; trying {configured}");
                        serve(configured)
                    }),
                _ => serve(configured),
            };
            match started {
                Ok(server) => Some(server),
                // The workers serve on: an upgrade must not end the service for the sake
                // of its metrics.
                Err(e) if upgraded => {
                    log::error!(
                        "metrics endpoint after the upgrade: {e}; supervising without it \
                         (until the next upgrade or restart)"
                    );
                    None
                }
                Err(source) => {
                    return Err(SupervisorError::Io {
                        what: "starting the metrics endpoint",
                        source,
                    })
                }
            }
        }
        None => None,
    };
    if let Some(server) = &server {
        supervisor.carry_across_upgrade(METRICS_ADDR_VAR, &server.local_addr().to_string());
    }
    let at = server.as_ref().map(MetricsServer::local_addr);
    let ran = supervisor.run(move || on_ready(at));
    if let Some(server) = server {
        if let Err(e) = server.stop() {
            log::warn!("stopping the metrics endpoint: {e}");
        }
    }
    ran
}

/// Prints `metrics on ADDR` on stdout and flushes it (errors are logged): how a script
/// that started a server with `--metrics HOST:0` learns the port.
pub fn announce(at: SocketAddr) {
    let mut out = io::stdout().lock();
    if let Err(e) = writeln!(out, "metrics on {at}").and_then(|()| out.flush()) {
        log::error!("writing the metrics line: {e}");
    }
}

/// Serves `endpoint` (the worker's figures) on `127.0.0.1` at a free port and publishes
/// that port in the worker's stats row, where the supervisor finds it. `Ok(None)` if the
/// supervisor gave this worker no stats row (it then has no endpoint: logged).
///
/// # Errors
///
/// The endpoint could not start.
pub fn serve_worker(
    endpoint: MetricsEndpoint,
    worker: &Worker,
) -> io::Result<Option<MetricsServer>> {
    let Some(slot) = worker.stats() else {
        log::warn!(
            "worker {}: no stats row, so no metrics endpoint",
            std::process::id()
        );
        return Ok(None);
    };
    let server = endpoint.spawn(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    slot.publish_metrics_port(server.local_addr().port());
    Ok(Some(server))
}

/// Serves `endpoint` (the supervisor's own figures) on `addr`, aggregating the endpoints
/// of the workers in `table` ([`MetricsEndpoint::aggregate`]).
///
/// Call it on the main thread, before [`Supervisor::run`](crate::Supervisor::run): it
/// first blocks the signals the supervisor handles in the calling thread, so that the
/// endpoint's threads inherit that mask and never take, say, a `SIGUSR2` meant for the
/// supervisor by its default action.
///
/// # Errors
///
/// Binding `addr` failed, or the endpoint's thread could not start.
pub fn serve_supervisor(
    mut endpoint: MetricsEndpoint,
    table: WorkerTable,
    addr: SocketAddr,
) -> io::Result<MetricsServer> {
    crate::supervisor::block_handled_signals()?;
    let own = vec![
        ("process".to_owned(), "supervisor".to_owned()),
        ("pid".to_owned(), std::process::id().to_string()),
    ];
    endpoint.aggregate(own, move || {
        table
            .metrics_endpoints()
            .into_iter()
            .map(|w| ScrapeTarget {
                labels: vec![
                    ("process".to_owned(), "worker".to_owned()),
                    ("pid".to_owned(), w.pid.to_string()),
                    ("generation".to_owned(), w.generation.to_string()),
                ],
                addr: w.metrics,
            })
            .collect()
    });
    endpoint
        .spawn(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("metrics endpoint on {addr}: {e}")))
}
