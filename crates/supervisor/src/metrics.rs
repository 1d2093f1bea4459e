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
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::time::Duration;

use duo_metrics::{MetricsEndpoint, MetricsServer, ScrapeTarget};

use crate::{Supervisor, SupervisorError, Worker, WorkerTable};

/// The address an upgraded supervisor's metrics endpoint had, handed to its next image
/// (used if the socket itself was not handed over).
const METRICS_ADDR_VAR: &str = "DUO_SUPERVISOR_METRICS_ADDR";

/// The descriptor of the endpoint's listening socket, handed to the next image.
const METRICS_FD_VAR: &str = "DUO_SUPERVISOR_METRICS_FD";

/// How long the endpoint may finish the requests under way when the supervisor ends.
const ENDPOINT_GRACE: Duration = Duration::from_secs(1);

/// [`Supervisor::run`] with the aggregating endpoint on `metrics` if given (started first,
/// [`serve_supervisor_on`], stopped when the supervisor is done): `on_ready` gets the
/// endpoint's address. A server prints its `listening on` line there, then
/// [`announce`]s the endpoint; if that fails, the supervisor stops (see
/// [`Supervisor::run`]).
///
/// An upgrade (`SIGUSR2`) hands the endpoint's listening socket to the new image, as the
/// workers' sockets are: nothing is bound again, so the address stays the same (also
/// with port 0 configured) and a scrape that arrives during the `exec` waits in the
/// socket's queue until the new image serves it; only a scrape the old image was
/// answering at that moment fails. Should the socket not come across (an upgrade from a
/// binary that did not hand it over), the new image binds the same address again. An
/// upgraded image that cannot open the endpoint at all logs the error and supervises
/// without it: the workers are serving, and an upgrade never ends the service for its
/// metrics.
///
/// # Errors
///
/// The endpoint could not start (binding `metrics` failed, say), or as
/// [`Supervisor::run`].
pub fn run(
    mut supervisor: Supervisor,
    metrics: Option<SocketAddr>,
    on_ready: impl FnOnce(Option<SocketAddr>) -> io::Result<()> + Send + 'static,
) -> Result<(), SupervisorError> {
    // What the previous image had, if this one is an upgrade.
    let previous: Option<SocketAddr> = std::env::var(METRICS_ADDR_VAR)
        .ok()
        .and_then(|a| a.parse().ok());
    std::env::remove_var(METRICS_ADDR_VAR);
    let inherited = inherited_listener();
    // Set by the previous image: this one is an upgrade, whose workers are serving.
    let upgraded = previous.is_some() || inherited.is_some();
    let server = match metrics {
        Some(configured) => {
            let started = listener_for(configured, inherited, previous).and_then(|listener| {
                let handover = listener.try_clone()?;
                let server = serve_supervisor_on(
                    MetricsEndpoint::new(),
                    supervisor.worker_table(),
                    listener,
                )?;
                Ok((server, handover))
            });
            match started {
                Ok((server, handover)) => {
                    supervisor.carry_fd_across_upgrade(METRICS_FD_VAR, handover.into());
                    supervisor
                        .carry_across_upgrade(METRICS_ADDR_VAR, &server.local_addr().to_string());
                    Some(server)
                }
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
    let at = server.as_ref().map(MetricsServer::local_addr);
    let ran = supervisor.run(move || on_ready(at));
    if let Some(server) = server {
        // A scrape under way gets its answer (the workers are gone: it comes quickly).
        if let Err(e) = server.shutdown(ENDPOINT_GRACE) {
            log::warn!("stopping the metrics endpoint: {e}");
        }
    }
    ran
}

/// The listening socket the previous image handed over, if there is one and it is one.
fn inherited_listener() -> Option<TcpListener> {
    let taken = duo_sys::take_fd_from_env(METRICS_FD_VAR).and_then(|fd| match fd {
        Some(fd) => duo_sys::check_listening_tcp(fd.as_fd()).map(|()| Some(TcpListener::from(fd))),
        None => Ok(None),
    });
    taken.unwrap_or_else(|e| {
        log::warn!("the metrics socket handed over: {e}; binding again");
        None
    })
}

/// The endpoint's listening socket: the one handed over if it is on the `configured`
/// address (the same port, or any with port 0), else bound now: on the `previous`
/// image's address when port 0 is configured, so the announced address stays right (if
/// that port was taken meanwhile, another).
fn listener_for(
    configured: SocketAddr,
    inherited: Option<TcpListener>,
    previous: Option<SocketAddr>,
) -> io::Result<TcpListener> {
    if let Some(listener) = inherited {
        match listener.local_addr() {
            Ok(at)
                if at.ip() == configured.ip()
                    && (configured.port() == 0 || configured.port() == at.port()) =>
            {
                log::info!("metrics endpoint on {at}: the socket the previous image handed over");
                return Ok(listener);
            }
            Ok(at) => log::info!("metrics: the socket handed over is on {at}, not {configured}"),
            Err(e) => log::warn!("metrics: the socket handed over: {e}"),
        }
    }
    let bind = |at: SocketAddr| {
        TcpListener::bind(at)
            .map_err(|e| io::Error::new(e.kind(), format!("metrics endpoint on {at}: {e}")))
    };
    match previous {
        Some(prev) if configured.port() == 0 && prev.ip() == configured.ip() => {
            bind(prev).or_else(|e| {
                log::warn!("{e}; trying {configured}");
                bind(configured)
            })
        }
        _ => bind(configured),
    }
}

/// Prints `metrics on ADDR` on stdout and flushes it: how a script that started a server
/// with `--metrics HOST:0` learns the port.
///
/// # Errors
///
/// Writing to stdout failed (nobody reads it), with the line in the message.
pub fn announce(at: SocketAddr) -> io::Result<()> {
    let line = format!("metrics on {at}");
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| io::Error::new(e.kind(), format!("printing `{line}` on stdout: {e}")))
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
    endpoint: MetricsEndpoint,
    table: WorkerTable,
    addr: SocketAddr,
) -> io::Result<MetricsServer> {
    crate::supervisor::block_handled_signals()?;
    aggregating(endpoint, table)
        .spawn(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("metrics endpoint on {addr}: {e}")))
}

/// As [`serve_supervisor`], on `listener`, a socket already bound and listening (one an
/// upgrade handed over, or one the caller keeps a duplicate of to hand over:
/// [`Supervisor::carry_fd_across_upgrade`](crate::Supervisor::carry_fd_across_upgrade)).
///
/// # Errors
///
/// `listener` is not a listening TCP socket, or the endpoint's thread could not start.
pub fn serve_supervisor_on(
    endpoint: MetricsEndpoint,
    table: WorkerTable,
    listener: TcpListener,
) -> io::Result<MetricsServer> {
    crate::supervisor::block_handled_signals()?;
    aggregating(endpoint, table).spawn_on(listener)
}

/// `endpoint`, made to aggregate the workers of `table`, each labelled `process="worker"`,
/// `pid` and `generation` (its own samples `process="supervisor"` and `pid`).
fn aggregating(mut endpoint: MetricsEndpoint, table: WorkerTable) -> MetricsEndpoint {
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
}
