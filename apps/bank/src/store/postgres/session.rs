//! A writer's session: made with its `search_path` pinned to the bank's schema and its
//! call of `bank_apply` prepared, and ended for sure when its connection is lost during a
//! call ([`settle`]), so that a batch whose clients heard `UNAVAILABLE` cannot commit
//! afterwards.

use std::time::{Duration, Instant};

use tokio_postgres::types::Type;
use tokio_postgres::Statement;

use super::conn::Conn;
use super::describe;
use crate::store::StoreError;

/// How long a writer waits for the server session of a connection lost during a call to
/// end ([`settle`]).
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// The session's [`Backend`]: `pg_stat_activity` shows a session its own row.
const BACKEND_SQL: &str = "SELECT pid, (extract(epoch FROM backend_start) * 1000000)::int8 \
     FROM pg_catalog.pg_stat_activity WHERE pid = pg_catalog.pg_backend_pid()";

/// A writer's connection, its prepared call, and the server session behind it.
pub(super) struct WriterSession {
    pub(super) client: Conn,
    pub(super) call: Statement,
    /// A call on it has completed: its plans and compiled `bank_apply` may predate a
    /// change of the schema since. Until then they are as new as the schema it met, so a
    /// class-42 error on it is the schema's own (a table gone, a privilege revoked), which
    /// a new session would meet again.
    pub(super) proven: bool,
    /// `None` if the server would not say.
    backend: Option<Backend>,
}

/// A server session: its process id, and when it started (a process id may be reused).
#[derive(Clone, Copy, Debug)]
struct Backend {
    pid: i32,
    /// Microseconds since the Unix epoch.
    started: i64,
}

/// Sets the session's `search_path` to `schema` alone (see `PgStore::schema`).
pub(super) fn pin_schema(mut client: Conn, schema: &str) -> Result<Conn, tokio_postgres::Error> {
    client.execute(
        "SELECT pg_catalog.set_config('search_path', pg_catalog.quote_ident($1), false)",
        &[&schema],
    )?;
    Ok(client)
}

/// Prepares a writer session; with `early_release`, its commits do not wait for the disk
/// (the barrier does, before anyone hears of them).
pub(super) fn prepare_writer(
    mut client: Conn,
    early_release: bool,
) -> Result<WriterSession, tokio_postgres::Error> {
    if early_release {
        client.batch_execute("SET synchronous_commit = off")?;
    }
    let backend = client.query_opt(BACKEND_SQL, &[])?.map(|row| Backend {
        pid: row.get(0),
        started: row.get(1),
    });
    let call = client.prepare_typed(
        "SELECT status::text, balance::int8, message::text \
         FROM bank_apply($1, $2, $3, $4, $5, $6, $7)",
        &[
            Type::INT2_ARRAY,
            Type::INT8_ARRAY,
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
            Type::INT8_ARRAY,
            Type::TEXT_ARRAY,
            Type::INT8,
        ],
    )?;
    Ok(WriterSession {
        client,
        call,
        proven: false,
        backend,
    })
}

/// After the connection of `lost` broke during a call: ends its server session if it is
/// still there (on a new connection from `connect`), and waits (at most
/// [`SETTLE_LIMIT`]) until it is gone. A server does not notice a lost client while the
/// call waits for a lock, and would commit the call later, after its clients heard
/// `UNAVAILABLE` and looked (at a balance, through a retry): once the session is gone, the
/// outcome they see is the outcome. Runs only after a lost connection.
pub(super) fn settle(lost: WriterSession, connect: impl FnOnce() -> Result<Conn, StoreError>) {
    let WriterSession {
        client, backend, ..
    } = lost;
    drop(client);
    let Some(Backend { pid, started }) = backend else {
        return;
    };
    let deadline = Instant::now() + SETTLE_LIMIT;
    let mut pause = Duration::from_millis(1);
    let mut client = match connect() {
        Ok(c) => c,
        Err(e) => {
            duo_net::log_limited!(
                log::Level::Warn,
                "cannot end the session of a lost connection ({e}); the outcome of its \
                 batch may change until the server ends it"
            );
            return;
        }
    };
    loop {
        // Signalled again each time (harmless): it ends once its call is interrupted or
        // done.
        let left = client.query_one(
            "SELECT count(pg_catalog.pg_terminate_backend(pid))::int8 \
             FROM pg_catalog.pg_stat_activity WHERE pid = $1 \
             AND (extract(epoch FROM backend_start) * 1000000)::int8 = $2",
            &[&pid, &started],
        );
        match left.map(|row| row.get::<_, i64>(0)) {
            Ok(0) => return,
            Ok(_) if Instant::now() < deadline => {}
            Ok(_) => {
                duo_net::log_limited!(
                    log::Level::Warn,
                    "the session {pid} of a lost connection is still there after \
                     {SETTLE_LIMIT:?}; the outcome of its batch may change"
                );
                return;
            }
            Err(e) => {
                duo_net::log_limited!(
                    log::Level::Warn,
                    "cannot end the session {pid} of a lost connection ({})",
                    describe(&e)
                );
                return;
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
