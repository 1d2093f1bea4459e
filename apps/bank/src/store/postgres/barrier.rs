//! The session that runs flush barriers ([`super::super::flush`]) on PostgreSQL: what a
//! barrier is, what a session must show before it counts as up, and the column that
//! tells a read whether what it saw is durable.

use std::time::{Duration, Instant};

use tokio_postgres::{Config, Statement};

use super::conn::Conn;
use super::{classify, connect_failed, describe, Failure};
use crate::metrics::BankMetrics;
use crate::store::flush::{Barrier, Flusher};
use crate::store::StoreError;

/// The session that runs flush barriers ([`crate::store::flush`]).
struct PgBarrier {
    client: Conn,
    statement: Statement,
    metrics: BankMetrics,
}

impl Barrier for PgBarrier {
    fn barrier(&mut self) -> Result<(), StoreError> {
        let began = Instant::now();
        let result = self.client.execute(&self.statement, &[]);
        self.metrics.flush(began.elapsed(), result.is_ok());
        result
            .map(drop)
            .map_err(|e| StoreError::Unavailable(describe(&e)))
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        self.client
            .batch_execute("SELECT 1")
            .map_err(|e| StoreError::Unavailable(describe(&e)))
    }
}

/// The barrier: a transactional logical-decoding message (an empty one, prefix `bank`)
/// is the smallest transaction that writes WAL and so commits with a flush (one that
/// writes nothing, such as `SELECT txid_current()`, commits without waiting for the disk).
/// It needs no table and no privilege, and is ignored unless someone decodes the WAL.
const BARRIER_SQL: &str = "SELECT pg_logical_emit_message(true, 'bank', '')";

/// A read's extra column, with early lock release: whether every commit the statement
/// could see is durable. True when the server's WAL was flushed as far as it was written
/// when the row was produced (after the statement's snapshot was taken) and no
/// synchronous standby is configured: the writers' commits do not wait for a standby
/// either, so with one only a barrier (which does) can tell.
pub(super) const FLUSHED: &str = "pg_current_wal_flush_lsn() >= pg_current_wal_insert_lsn() \
                       AND current_setting('synchronous_standby_names') = ''";

/// Why a session cannot run flush barriers.
enum NoBarrier {
    /// The server cannot be reached (or refused the session): try again later.
    Unreachable(StoreError),
    /// The server will not run them (a missing function or privilege, or
    /// `synchronous_commit = off`, under which a barrier would flush nothing).
    Refused(String),
}

/// A new barrier session: connected, its statement prepared, the functions reads use
/// checked, and one barrier run, so that a session counts as up only once it has shown
/// it can confirm commits.
fn barrier_session(
    config: &Config,
    limit: Option<Duration>,
    shown: &str,
    metrics: &BankMetrics,
) -> Result<PgBarrier, NoBarrier> {
    let mut client = Conn::connect(config, limit)
        .map_err(|e| NoBarrier::Unreachable(connect_failed(&e, Some(shown))))?;
    let failed = |e: tokio_postgres::Error| match classify(&e) {
        Failure::Other(m) => NoBarrier::Refused(m),
        _ => NoBarrier::Unreachable(StoreError::Unavailable(describe(&e))),
    };
    let sync: String = client
        .query_one(
            &format!("SELECT current_setting('synchronous_commit'), {FLUSHED}"),
            &[],
        )
        .map_err(failed)?
        .get(0);
    if sync == "off" {
        return Err(NoBarrier::Refused(
            "synchronous_commit is off for the bank's sessions, so no commit waits for the \
             disk"
                .to_owned(),
        ));
    }
    let statement = client.prepare(BARRIER_SQL).map_err(failed)?;
    client.execute(&statement, &[]).map_err(failed)?;
    Ok(PgBarrier {
        client,
        statement,
        metrics: metrics.clone(),
    })
}

/// Starts the flush barriers on a first session ([`barrier_session`]): `None` (with a
/// warning) if the server will not run them; then every commit waits for its own flush.
pub(super) fn start_flusher(
    config: &Config,
    limit: Option<Duration>,
    shown: &str,
    metrics: &BankMetrics,
) -> Result<Option<Flusher>, StoreError> {
    let first = match barrier_session(config, limit, shown, metrics) {
        Ok(first) => first,
        Err(NoBarrier::Unreachable(e)) => return Err(e),
        Err(NoBarrier::Refused(m)) => {
            log::warn!(
                "{shown}: flush barriers are not available ({m}); every commit holds its \
                 locks until it is on disk (early lock release is off)"
            );
            return Ok(None);
        }
    };
    let (config, shown, metrics) = (config.clone(), shown.to_owned(), metrics.clone());
    let connect = move || {
        barrier_session(&config, limit, &shown, &metrics).map_err(|e| match e {
            NoBarrier::Unreachable(e) => e,
            // Writers send nothing while there is no session: their writes get
            // UNAVAILABLE without having happened.
            NoBarrier::Refused(m) => StoreError::Postgres(m),
        })
    };
    let flusher = Flusher::start(first, Box::new(connect))
        .map_err(|e| StoreError::Unavailable(format!("cannot start the flush thread: {e}")))?;
    Ok(Some(flusher))
}
