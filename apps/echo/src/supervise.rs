//! `echo serve --processes N`: the supervisor of N echo worker processes (the same binary,
//! started again with the worker protocol of `duo_supervisor` in its environment).

use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use duo_net::process;
use duo_supervisor::{Supervisor, SupervisorError};

use crate::ServeConfig;

/// Room the supervisor leaves its workers beyond their drain timeout before it kills them.
const STOP_MARGIN: Duration = Duration::from_secs(2);

/// A supervisor of `processes` echo workers on `listener`, started from this binary with
/// this process's arguments (a worker ignores `--processes`).
///
/// # Errors
///
/// [`SupervisorError::Config`] for a refused configuration (0 workers, more than the
/// descriptor budget allows), or the path of this binary is unknown.
pub fn supervisor(
    cfg: &ServeConfig,
    processes: usize,
    listener: TcpListener,
) -> Result<Supervisor, SupervisorError> {
    duo_supervisor::supervise_this_program(processes, listener, |sup| {
        sup.stats_interval = cfg.stats_interval;
        sup.stop_timeout = cfg.drain_timeout + STOP_MARGIN;
    })
}

/// Runs `supervisor` until a stop signal has been handled and every worker has exited;
/// prints `listening on ADDR` once the first workers are ready (not again after an
/// upgrade, whose first image printed it), then `metrics on ADDR` with `metrics` (the
/// endpoint that gathers every worker's, served by the supervisor), and `udp on ADDR`
/// with `udp` (each worker serves UDP on `addr` with a `SO_REUSEPORT` socket of its own).
/// If those lines cannot be written (nobody reads stdout), nobody learns where the server
/// is: the supervisor stops its workers and fails, as a single process does.
///
/// # Errors
///
/// As [`duo_supervisor::metrics::run`] ([`SupervisorError::Io`] if a line could not be
/// written).
pub fn run(
    supervisor: Supervisor,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    udp: bool,
) -> Result<(), SupervisorError> {
    duo_supervisor::metrics::run(supervisor, metrics, move |metrics_at| {
        announce(addr, metrics_at, udp.then_some(addr))
    })
}

/// Prints the `listening on ADDR`, `metrics on` (with `metrics`) and `udp on` (with `udp`)
/// lines on stdout, flushed: how the server, one process or a supervisor, announces
/// itself.
///
/// # Errors
///
/// A line could not be written (nobody reads stdout); the message says which.
pub fn announce(
    addr: impl std::fmt::Display,
    metrics: Option<SocketAddr>,
    udp: Option<SocketAddr>,
) -> io::Result<()> {
    process::announce_listening(addr)?;
    if let Some(at) = metrics {
        duo_supervisor::metrics::announce(at)?;
    }
    if let Some(at) = udp {
        let mut out = io::stdout().lock();
        writeln!(out, "udp on {at}")
            .and_then(|()| out.flush())
            .map_err(|e| io::Error::new(e.kind(), format!("printing `udp on {at}`: {e}")))?;
    }
    Ok(())
}
