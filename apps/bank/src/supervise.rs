//! `bank serve --processes N`: a supervisor that binds the listening socket once and runs
//! N bank worker processes on it (this binary again, finding the worker protocol of
//! `duo_supervisor` in its environment; each serves with
//! [`serve_worker`](crate::server::serve_worker), with its own threads and database
//! connections).
//!
//! Only a database that several front-ends may share at once
//! ([`Database::allows_several_front_ends`], PostgreSQL) takes more than one worker: SQLite
//! has one writer process.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use duo_net::process;
use duo_supervisor::{Supervisor, SupervisorError};

use crate::server::{DRAIN_LIMIT, SHUTDOWN_GRACE};
use crate::Database;

/// Room the supervisor leaves a draining worker beyond [`SHUTDOWN_GRACE`] (to finish the
/// database work already queued, which the worker bounds by [`DRAIN_LIMIT`], and join its
/// threads) before it kills it.
const STOP_MARGIN: Duration = DRAIN_LIMIT.saturating_add(Duration::from_secs(1));

/// Why `processes` worker processes cannot serve `db`, if they cannot: none at all, or
/// more than one on a database only one process may write.
pub fn check_processes(processes: usize, db: &Database) -> Result<(), String> {
    if processes == 0 {
        return Err("--processes must be at least 1".to_owned());
    }
    if processes > 1 && !db.allows_several_front_ends() {
        return Err(format!(
            "--processes {processes} needs a database that several processes may share: \
             SQLite ({db}) has one writer process; use PostgreSQL (--db postgres://...) \
             or leave out --processes"
        ));
    }
    Ok(())
}

/// A supervisor of `processes` bank workers on `listener`, started from this binary with
/// this process's arguments (a worker ignores `--processes`).
///
/// # Errors
///
/// [`SupervisorError::Config`] for a refused configuration (0 workers, more than the
/// descriptor budget allows), or the path of this binary is unknown.
pub fn supervisor(processes: usize, listener: TcpListener) -> Result<Supervisor, SupervisorError> {
    duo_supervisor::supervise_this_program(processes, listener, |sup| {
        sup.stop_timeout = SHUTDOWN_GRACE + STOP_MARGIN;
    })
}

/// Runs `supervisor` until a stop signal has been handled and every worker has exited;
/// prints `listening on ADDR` once the first workers are ready (not again after an
/// upgrade, whose first image printed it), then `metrics on ADDR` with `metrics` (the
/// endpoint that gathers every worker's, served by the supervisor). If those lines cannot
/// be written (nobody reads stdout), the supervisor stops its workers and fails, as a
/// single process does.
///
/// # Errors
///
/// As [`duo_supervisor::metrics::run`].
pub fn run(
    supervisor: Supervisor,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
) -> Result<(), SupervisorError> {
    duo_supervisor::metrics::run(supervisor, metrics, move |metrics_at| {
        process::announce_listening(addr)?;
        metrics_at.map_or(Ok(()), duo_supervisor::metrics::announce)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_processes_need_a_shared_database() {
        let sqlite = Database::parse("bank.db").unwrap();
        let pg = Database::parse("postgres://bank@127.0.0.1:5432/bank").unwrap();
        assert!(check_processes(1, &sqlite).is_ok());
        assert!(check_processes(8, &pg).is_ok());
        let why = check_processes(2, &sqlite).unwrap_err();
        assert!(
            why.contains("SQLite") && why.contains("PostgreSQL"),
            "{why}"
        );
        assert!(check_processes(0, &pg).unwrap_err().contains("at least 1"));
    }
}
