//! The PostgreSQL backend: any number of front-ends on one database server, through the
//! `postgres` crate (blocking calls on the server's worker threads).
//!
//! # Writes: one round trip and one commit per batch
//!
//! A batch of operations ([`GroupCommit`]) is sent as one call of the server-side function
//! `bank_apply` (`postgres.sql`), in autocommit: the arrays of the batch's operations go
//! in, one outcome per operation comes out, in order, and the statement's implicit
//! transaction commits once. An `OK` means the commit is on disk. With group commit the
//! writers commit without waiting for the disk, so that the next batch need not wait for
//! this one's locks, and the results wait for a flush barrier instead (early lock
//! release, [`super::flush`]); without it, or with `--no-early-release`, every commit
//! waits for its own flush as the server's `synchronous_commit` says. Several writer
//! connections ([`StoreOptions::writers`]) let batches overlap.
//!
//! Concurrent batches (other writers, other front-ends) lock the user rows they touch in
//! id order first, so they wait for each other rather than deadlock; a batch that still
//! fails with a serialization failure or a detected deadlock is run again after a short,
//! growing pause. A batch that fails with another database error runs again with each
//! operation in its own subtransaction, so that the failing one fails alone.
//!
//! # When the server goes away
//!
//! A connection that breaks is dropped and made again on next use. An error the server
//! reports (it is shutting down, it does not accept connections yet) means the batch did
//! not commit, and it is tried once more on a new connection; if that fails too, every
//! operation of the batch gets [`StoreError::Unavailable`] (`ERR UNAVAILABLE`). A
//! connection lost *during* a call leaves the outcome unknown: the operations get
//! `UNAVAILABLE` as well, and a transfer retried with the same request id returns what
//! happened (applied once, or not at all); before they are answered, the server session
//! of the lost connection is ended and waited for ([`session::settle`]: a call still
//! waiting there for a lock would otherwise commit later). Reads are retried once on a new
//! connection, also when a table changed under their prepared statements.
//!
//! A call that gets no answer within [`StoreOptions::db_timeout`] counts as lost: its
//! connection is dropped ([`conn`]), as when a server or the path to it stalls without
//! closing (TCP timeouts never fire while something on the way acknowledges the packets).
//! A statement the server cancels (SQLSTATE 57014: `statement_timeout`,
//! `pg_cancel_backend`; 55P03: a lock not had within `lock_timeout`) rolled back on a
//! session still good: its operations get `UNAVAILABLE` at once, the session is kept, and
//! the statement is not sent again (not one operation per call either).
//!
//! # When the schema changes under the server
//!
//! Every read and the call of `bank_apply` cast each column they take to the type they
//! read it as, so a column a DBA widens in place (`bigint` to `numeric`, `text` to
//! `varchar`) reads as before; a reply that still cannot be read is an error, never a
//! panic. A batch that fails because its session's plans or compiled function predate a
//! change ([`schema_changed`]) is run once more on a new session, if its session has
//! completed a call before (a session that has not is as new as the schema it met: the
//! error is the schema's own, and another session would meet it again).

use crate::store::PasswordHash;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use parking_lot::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Config, Statement};

use super::flush::Flusher;
use super::group::Applied;
use super::{
    unix_now, GroupCommit, StoreError, StoreOptions, UserRow, WriteJob, WriteOp, WriteResults,
};
use crate::protocol::{EntryKind, HistoryEntry};

mod barrier;
mod conn;
mod hosts;
mod redact;
mod reply;
mod schema;
mod session;

use barrier::{start_flusher, FLUSHED};
use conn::{Conn, ConnectError};
pub(crate) use redact::redact;
use reply::{column, outcomes, ReadError};
use schema::migrate;
use session::{pin_schema, prepare_writer, settle, WriterSession};

/// Most operations in one call of `bank_apply`. A batch's set-up (locking its accounts,
/// resolving them) grows faster than its size past a few hundred operations, and batches
/// of 100 clients stay well below this.
const MAX_BATCH_OPS: usize = 512;
/// How long sent data may stay unacknowledged before the connection is given up, when
/// the URL does not say (`tcp_user_timeout`).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);
/// Idle time before TCP keepalive probes start, when the URL does not say.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// How long connecting may take when the URL does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Runs of a batch that keeps failing on serialization or deadlock before giving up.
const MAX_ATTEMPTS: u32 = 10;
/// First pause before running such a batch again; it doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(2);
/// Checks a `postgres://` URL without connecting.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    Config::from_str(url)
        .map(drop)
        .map_err(|e| format!("{}: {}", redact(url), url_error(&e)))
}

/// Why a URL does not parse: tokio-postgres says only `invalid connection string` and
/// keeps the reason (`unknown option `x``, `invalid value for option `port``, which name
/// options, never values) in its source.
fn url_error(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(why) => format!("{e}: {why}"),
        None => e.to_string(),
    }
}

/// A failed connection attempt: `UNAVAILABLE` when the server cannot be reached or does
/// not take connections now, a plain database error otherwise (a wrong password, a
/// database that does not exist: retrying will not help). `url` prefixes the message.
fn connect_failed(e: &ConnectError, url: Option<&str>) -> StoreError {
    let (e, text) = match e {
        ConnectError::Db(e) => (Some(e), describe(e)),
        ConnectError::Other(m) => (None, m.clone()),
    };
    let text = match url {
        Some(url) => format!("cannot connect to {url}: {text}"),
        None => text,
    };
    match e.map(classify) {
        Some(Failure::Other(_)) => StoreError::Postgres(text),
        _ => StoreError::Unavailable(text),
    }
}

/// What went wrong with a call, for deciding what to do next.
enum Failure {
    /// The server aborted the transaction to resolve a conflict: run it again.
    Conflict,
    /// The server refused or ended the session before doing anything (shutting down, not
    /// started yet, too many connections): nothing was committed; a new connection may
    /// do better.
    Refused(String),
    /// The connection broke, or the call overran its limit (`--db-timeout`) and the
    /// connection was dropped: whatever was in flight may or may not have committed.
    Lost(String),
    /// The statement was canceled (SQLSTATE 57014: `statement_timeout`,
    /// `pg_cancel_backend`; 55P03: a lock not had within `lock_timeout`): it rolled back,
    /// and the session is still good. It is not sent again (a DBA stopped it, or the
    /// timeout would stop it again).
    Canceled(String),
    /// Any other database error (the transaction rolled back).
    Other(String),
}

/// `e` with its causes ("error connecting to server: Connection refused ...").
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.to_string();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn classify(e: &tokio_postgres::Error) -> Failure {
    let Some(db) = e.as_db_error() else {
        return Failure::Lost(describe(e));
    };
    let code = db.code();
    if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
        return Failure::Conflict;
    }
    // A lock not had within `lock_timeout` (55P03) is a cancel as well: the statement
    // rolled back on a session still good, and running the batch again one operation per
    // call would wait the whole timeout once more for each.
    if *code == SqlState::QUERY_CANCELED || *code == SqlState::LOCK_NOT_AVAILABLE {
        return Failure::Canceled(db.to_string());
    }
    let class = &code.code()[..2];
    // 08: connection exception, 57: operator intervention (shutdown, crash, cannot connect
    // now), 53: insufficient resources (too many connections).
    if matches!(class, "08" | "57" | "53") {
        return Failure::Refused(db.to_string());
    }
    Failure::Other(db.to_string())
}

/// A writer connection with its prepared call of `bank_apply`; made when first needed.
#[derive(Default)]
pub(crate) struct Writer {
    session: Option<WriterSession>,
    /// The barrier session up when the current batch began ([`Flusher::session`]).
    sent_on: u64,
}

/// A reader connection with its prepared queries.
struct Reader {
    client: Conn,
    user: Statement,
    balance: Statement,
    history: Statement,
}

/// The bank's accounts on a PostgreSQL server.
pub(crate) struct PgStore {
    config: Config,
    /// How long one database call may take ([`StoreOptions::db_timeout`]).
    limit: Option<Duration>,
    shown: String,
    /// The schema that holds the bank's tables (found at start): every session's
    /// `search_path`, so that a table of the same name that appears in front of the bank's
    /// later (in the role's own schema, say) is never used instead.
    schema: String,
    writes: GroupCommit<Writer>,
    readers: Mutex<Vec<Reader>>,
    /// Flush barriers, with early lock release (`None` without it, or if the server will
    /// not run them: then every commit waits for its own flush and no read waits).
    flusher: Option<Flusher>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

/// The batch's operations as the columns `bank_apply` takes.
#[derive(Default)]
struct Columns<'a> {
    kinds: Vec<i16>,
    uids: Vec<Option<i64>>,
    names: Vec<Option<&'a str>>,
    extras: Vec<Option<&'a str>>,
    amounts: Vec<Option<i64>>,
    rids: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    fn new(ops: &[&'a WriteOp]) -> Columns<'a> {
        let mut c = Columns::default();
        for op in ops {
            let (kind, uid, name, extra, amount, rid) = match op {
                WriteOp::Register { name, hash } => (
                    1,
                    None,
                    Some(name.as_str()),
                    Some(hash.as_str()),
                    None,
                    None,
                ),
                WriteOp::Deposit { user, amount } => {
                    (2, Some(*user), None, None, Some(*amount), None)
                }
                WriteOp::Withdraw { user, amount } => {
                    (3, Some(*user), None, None, Some(*amount), None)
                }
                WriteOp::Transfer {
                    from,
                    from_name,
                    to,
                    amount,
                    request_id,
                } => (
                    4,
                    Some(*from),
                    Some(to.as_str()),
                    Some(from_name.as_str()),
                    Some(*amount),
                    request_id.as_deref(),
                ),
            };
            c.kinds.push(kind);
            c.uids.push(uid);
            c.names.push(name);
            c.extras.push(extra);
            c.amounts.push(amount);
            c.rids.push(rid);
        }
        c
    }
}

impl PgStore {
    /// Connects, creates or checks the schema, and keeps the connection as the first
    /// writer. Fails if the server cannot be reached or the database holds something else.
    pub(crate) fn open(url: &str, options: StoreOptions) -> Result<PgStore, StoreError> {
        let shown = redact(url);
        let mut config = Config::from_str(url)
            .map_err(|e| StoreError::Schema(format!("{shown}: {}", url_error(&e))))?;
        // As libpq does: a password the URL does not hold comes from `PGPASSWORD`, which
        // keeps it off the command line (`ps` shows a process's arguments to every user,
        // its environment only to its owner).
        if config.get_password().is_none() {
            if let Some(password) = std::env::var_os("PGPASSWORD") {
                config.password(password.as_encoded_bytes());
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("bank");
        }
        // A server that vanishes without closing (a partition, a dead host) must not hold
        // a call for the kernel's default of about 15 minutes: unacknowledged data or
        // silent keepalives end the connection, and the call gets `UNAVAILABLE`.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        if config.get_keepalives_idle() == Config::new().get_keepalives_idle() {
            config.keepalives_idle(KEEPALIVE_IDLE);
        }
        let limit = options.db_timeout;
        let mut client = Conn::connect(&config, limit).map_err(|e| connect_failed(&e, None))?;
        let schema = migrate(&mut client, &shown)?;
        // Only with early lock release: otherwise every commit of this front-end waits for
        // its own flush, and reads need no barrier (every front-end of one database
        // should use the same setting; see docs/bank-protocol.md).
        let flusher = if options.early_release && options.group_commit {
            start_flusher(&config, limit, &shown, &options.metrics)?
        } else {
            None
        };
        let first = Writer {
            session: Some(
                pin_schema(client, &schema)
                    .and_then(|c| prepare_writer(c, flusher.is_some()))
                    .map_err(|e| pg_error(&e))?,
            ),
            sent_on: 0,
        };
        let mut writers = vec![first];
        writers.resize_with(options.writers.max(1), Writer::default);
        Ok(PgStore {
            config,
            limit,
            shown,
            schema,
            writes: GroupCommit::new(
                writers,
                options.group_commit,
                MAX_BATCH_OPS,
                options.metrics.clone(),
            ),
            readers: Mutex::new(Vec::new()),
            flusher,
        })
    }

    /// A new session, its `search_path` the bank's schema.
    fn connect(&self) -> Result<Conn, StoreError> {
        Conn::connect(&self.config, self.limit)
            .and_then(|c| pin_schema(c, &self.schema).map_err(ConnectError::Db))
            .map_err(|e| connect_failed(&e, Some(&self.shown)))
    }

    /// Runs `f` on a pooled reader; once more on a new connection if the pooled one had
    /// broken or the server refused it. `f` also says whether the server's WAL was
    /// flushed as far as it was written when it read ([`FLUSHED`]); if not, what it read
    /// may include commits not yet durable, and the answer waits for a flush barrier.
    fn read<R>(
        &self,
        f: impl Fn(&mut Reader) -> Result<(R, bool), ReadError>,
    ) -> Result<R, StoreError> {
        let mut last = None;
        for attempt in 0..2 {
            // The second attempt is always on a new connection: the pooled ones most
            // likely broke with the first (a restarted server ends them all).
            let pooled = if attempt == 0 {
                self.readers.lock().pop()
            } else {
                None
            };
            let mut reader = match pooled {
                Some(r) => r,
                None => self.new_reader()?,
            };
            // Noted before the read. After a failed wait (the session had died, with a
            // database restart say), the read is made again under a session known to be up.
            let session = self.flusher.as_ref().map(|f| {
                if attempt == 0 {
                    f.session()
                } else {
                    f.session_for_send()
                }
            });
            match f(&mut reader) {
                Ok((v, flushed)) => {
                    self.readers.lock().push(reader);
                    let (false, Some(flusher), Some(session)) = (flushed, &self.flusher, session)
                    else {
                        return Ok(v);
                    };
                    match flusher.wait(session) {
                        Ok(()) => return Ok(v),
                        Err(e) => last = Some(e),
                    }
                }
                Err(ReadError::Column(m)) => {
                    duo_net::log_limited!(log::Level::Error, "{m}");
                    self.readers.lock().push(reader);
                    return Err(StoreError::Postgres(m));
                }
                Err(ReadError::Db(e)) => match classify(&e) {
                    Failure::Refused(m) | Failure::Lost(m) => {
                        duo_net::log_limited!(
                            log::Level::Warn,
                            "database read failed ({m}); reconnecting"
                        );
                        // Whatever else is pooled is as old as the one that broke
                        // (dropped outside the lock: a drop waits for the close).
                        let stale = std::mem::take(&mut *self.readers.lock());
                        drop(stale);
                        last = Some(StoreError::Unavailable(m));
                    }
                    Failure::Other(m) if e.code() == Some(&SqlState::FEATURE_NOT_SUPPORTED) => {
                        // "cached plan must not change result type": a table changed under
                        // the prepared reads (a column's type altered), in every pooled
                        // reader: they are prepared anew.
                        let stale = std::mem::take(&mut *self.readers.lock());
                        drop((reader, stale));
                        last = Some(StoreError::Postgres(m));
                    }
                    Failure::Canceled(m) => {
                        self.readers.lock().push(reader);
                        return Err(StoreError::Unavailable(m));
                    }
                    Failure::Conflict | Failure::Other(_) => {
                        self.readers.lock().push(reader);
                        return Err(pg_error(&e));
                    }
                },
            }
        }
        Err(last.unwrap_or_else(|| StoreError::Unavailable("no connection".to_owned())))
    }

    fn new_reader(&self) -> Result<Reader, StoreError> {
        let mut client = self.connect()?;
        // Without early lock release every commit waited for its flush: nothing to ask.
        let flushed = if self.flusher.is_some() {
            FLUSHED
        } else {
            "true"
        };
        let prepared = (|| {
            Ok::<_, tokio_postgres::Error>((
                client.prepare(&format!(
                    "SELECT id::int8, password_hash::text, {flushed} FROM users WHERE name = $1"
                ))?,
                client.prepare(&format!(
                    "SELECT balance::int8, {flushed} FROM users WHERE id = $1"
                ))?,
                client.prepare(&format!(
                    "SELECT id::int8, kind::text, counterparty::text, amount::int8,
                            balance_after::int8, time::int8, {flushed}
                     FROM ledger WHERE user_id = $1 ORDER BY id DESC LIMIT $2"
                ))?,
            ))
        })();
        let (user, balance, history) = prepared.map_err(|e| match classify(&e) {
            Failure::Refused(m) | Failure::Lost(m) | Failure::Canceled(m) => {
                StoreError::Unavailable(m)
            }
            _ => pg_error(&e),
        })?;
        Ok(Reader {
            client,
            user,
            balance,
            history,
        })
    }

    /// The user named `name`, if any.
    pub(crate) fn user(&self, name: &str) -> Result<Option<UserRow>, StoreError> {
        self.read(|r| {
            let row = r.client.query_opt(&r.user, &[&name])?;
            let Some(row) = row else {
                // Nothing read that a commit made (users are never deleted).
                return Ok((None, true));
            };
            let user = UserRow {
                id: column(&row, 0)?,
                hash: PasswordHash(column(&row, 1)?),
            };
            Ok((Some(user), column(&row, 2)?))
        })
    }

    /// The balance of user `id`.
    pub(crate) fn balance(&self, id: i64) -> Result<i64, StoreError> {
        let found = self.read(|r| {
            let row = r.client.query_opt(&r.balance, &[&id])?;
            match row {
                Some(row) => Ok((Some(column(&row, 0)?), column(&row, 1)?)),
                None => Ok((None, true)),
            }
        })?;
        found.ok_or_else(|| StoreError::Postgres(format!("no user with id {id}")))
    }

    /// The latest `limit` ledger entries of user `id`, newest first.
    pub(crate) fn history(&self, id: i64, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|r| {
            let rows = r.client.query(&r.history, &[&id, &limit])?;
            let mut flushed = true;
            let mut entries = Vec::with_capacity(rows.len());
            for row in &rows {
                flushed &= column::<bool>(row, 6)?;
                let kind: &str = column(row, 1)?;
                entries.push(HistoryEntry {
                    id: column(row, 0)?,
                    kind: EntryKind::parse(kind).ok_or_else(|| {
                        ReadError::Column(format!("ledger entry of unknown kind {kind:?}"))
                    })?,
                    counterparty: column(row, 2)?,
                    amount: column(row, 3)?,
                    balance_after: column(row, 4)?,
                    time: column(row, 5)?,
                });
            }
            Ok((entries, flushed))
        })
    }

    /// Queues `job` for a writer (see [`GroupCommit::submit`]).
    pub(crate) fn submit_write(&self, job: WriteJob) {
        self.writes.submit_with(
            job,
            |w, ops| self.execute(w, ops),
            |w, applied| self.release(w, applied),
        );
    }

    /// Hands a batch's results over: at once if its commit waited for the disk (or it
    /// committed nothing), else after a flush barrier on the session it was sent under.
    fn release(&self, w: &Writer, applied: Applied) {
        match &self.flusher {
            Some(flusher) if applied.committed_something() => {
                flusher.after_barrier(w.sent_on, Box::new(move |r| applied.deliver(r)));
            }
            _ => applied.deliver(Ok(())),
        }
    }

    /// Applies `ops` in order as one transaction (see the module docs for the retries);
    /// after a database error, one transaction per operation.
    fn execute(&self, w: &mut Writer, ops: &[&WriteOp]) -> WriteResults {
        // Every commit of this batch must be confirmed by a barrier on the session up
        // before the first of them was sent.
        if let Some(flusher) = &self.flusher {
            w.sent_on = flusher.session_for_send();
            if w.sent_on == 0 {
                // Nothing committed now could be confirmed: send nothing.
                return failed(
                    ops.len(),
                    Failure::Refused(
                        "no database session to confirm commits on (reconnecting)".to_owned(),
                    ),
                );
            }
        }
        match self.call(w, ops, true) {
            Err(Failure::Other(m)) if ops.len() > 1 => {
                duo_net::log_limited!(
                    log::Level::Warn,
                    "a write of a batch of {} failed ({m}); applying them one by one",
                    ops.len()
                );
                ops.iter()
                    // A new session was already tried for the batch: not once per
                    // operation (a dropped table would cost a connection each).
                    .flat_map(|op| match self.call(w, std::slice::from_ref(op), false) {
                        Ok(results) => results,
                        Err(f) => failed(1, f),
                    })
                    .collect()
            }
            Ok(results) => results,
            Err(f) => failed(ops.len(), f),
        }
    }

    /// One call of `bank_apply` for `ops`: their outcomes, or why the call failed (a
    /// conflict is retried here, a refused call once on a new connection, and with
    /// `renew_if_stale` a call that failed on a changed schema once on a new session).
    fn call(
        &self,
        w: &mut Writer,
        ops: &[&WriteOp],
        renew_if_stale: bool,
    ) -> Result<WriteResults, Failure> {
        let c = Columns::new(ops);
        let now = unix_now();
        let mut refused_once = false;
        let mut stale_once = !renew_if_stale;
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            attempt += 1;
            if w.session.as_ref().is_some_and(|s| s.client.is_closed()) {
                // Ended while idle (the server restarted): nothing was sent on it.
                w.session = None;
            }
            let session = match w.session.as_mut() {
                Some(s) => s,
                None => {
                    let session = self.connect().and_then(|c| {
                        prepare_writer(c, self.flusher.is_some()).map_err(|e| pg_error(&e))
                    });
                    match session {
                        Ok(s) => w.session.insert(s),
                        Err(e) => return Err(Failure::Refused(e.to_string())),
                    }
                }
            };
            let params: [&(dyn ToSql + Sync); 7] = [
                &c.kinds, &c.uids, &c.names, &c.extras, &c.amounts, &c.rids, &now,
            ];
            let e = match session.client.query(&session.call, &params) {
                Ok(rows) => {
                    session.proven = true;
                    return Ok(outcomes(ops.len(), &rows));
                }
                Err(e) => e,
            };
            // Only a session that has completed a call may be stale (see `proven`): a
            // new one for a schema that is itself broken would cost a connection per
            // batch for as long as it stays so.
            let may_be_stale = session.proven;
            match classify(&e) {
                Failure::Conflict if attempt < MAX_ATTEMPTS => {
                    duo_net::log_limited!(
                        log::Level::Debug,
                        "batch of {} conflicted ({e}); again in {backoff:?}",
                        ops.len()
                    );
                    std::thread::sleep(backoff);
                    backoff *= 2;
                }
                Failure::Refused(m) if !refused_once => {
                    // Nothing committed; the connection is likely stale (the server
                    // restarted since it was made).
                    duo_net::log_limited!(
                        log::Level::Warn,
                        "database refused a batch ({m}); reconnecting"
                    );
                    refused_once = true;
                    w.session = None;
                }
                f @ Failure::Refused(_) => {
                    w.session = None;
                    return Err(f);
                }
                // Rolled back, on a session still good: kept, and nothing sent again.
                f @ Failure::Canceled(_) => return Err(f),
                f @ Failure::Lost(_) => {
                    if let Some(lost) = w.session.take() {
                        settle(lost, || self.connect());
                    }
                    return Err(f);
                }
                Failure::Other(m) if !stale_once && may_be_stale && schema_changed(&e) => {
                    // The session's prepared call or its compiled `bank_apply` was made
                    // for tables or types since altered; the statement failed, so nothing
                    // committed. A new session plans and compiles them anew.
                    duo_net::log_limited!(
                        log::Level::Warn,
                        "a batch failed on a changed schema ({m}); again on a new session"
                    );
                    stale_once = true;
                    w.session = None;
                }
                Failure::Conflict => return Err(Failure::Other(describe(&e))),
                f @ Failure::Other(_) => return Err(f),
            }
        }
    }

    /// Applies `ops` as one job, the way a connection's writes go (group commit, flush
    /// barrier), and waits for their results.
    #[cfg(test)]
    pub(crate) fn write_now(&self, ops: &[WriteOp]) -> WriteResults {
        let (tx, rx) = std::sync::mpsc::channel();
        self.submit_write(WriteJob {
            ops: ops.to_vec(),
            done: Box::new(move |results| tx.send(results).unwrap()),
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the write's results")
    }

    /// Whether the writers commit without waiting for the disk (early lock release).
    #[cfg(test)]
    pub(crate) fn early_release(&self) -> bool {
        self.flusher.is_some()
    }

    /// The sum of all balances.
    #[cfg(test)]
    pub(crate) fn total(&self) -> Result<i64, StoreError> {
        self.read(|r| {
            let row = r
                .client
                .query_one("SELECT COALESCE(SUM(balance), 0)::bigint FROM users", &[])?;
            Ok((column(&row, 0)?, true))
        })
    }

    /// Runs `sql` on a new connection (tests that reach under the store).
    #[cfg(test)]
    pub(crate) fn execute_sql(&self, sql: &str) -> Result<(), StoreError> {
        self.connect()?.batch_execute(sql).map_err(|e| pg_error(&e))
    }
}

/// Whether `e` may come from a table or type altered since the session prepared its
/// statements or compiled a function (a cached plan whose result type changed, a record of
/// the wrong type, a relation or function looked up by a stale id): SQLSTATE 0A000 or
/// class 42.
fn schema_changed(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|code| {
        *code == SqlState::FEATURE_NOT_SUPPORTED || code.code().starts_with("42")
    })
}

fn pg_error(e: &tokio_postgres::Error) -> StoreError {
    StoreError::Postgres(describe(e))
}

/// `n` operations that failed with `f`.
fn failed(n: usize, f: Failure) -> WriteResults {
    let e = match f {
        Failure::Lost(m) => {
            duo_net::log_limited!(
                log::Level::Error,
                "database connection lost during a batch of {n}: {m}; their outcome is unknown"
            );
            StoreError::Unavailable(m)
        }
        Failure::Refused(m) => {
            duo_net::log_limited!(
                log::Level::Error,
                "database unavailable for a batch of {n}: {m}"
            );
            StoreError::Unavailable(m)
        }
        Failure::Canceled(m) => {
            duo_net::log_limited!(
                log::Level::Warn,
                "a batch of {n} was canceled by the database ({m}); nothing was committed"
            );
            StoreError::Unavailable(m)
        }
        Failure::Conflict => StoreError::Commit("conflict".to_owned()),
        Failure::Other(m) => {
            duo_net::log_limited!(
                log::Level::Error,
                "write batch of {n} operations failed: {m}"
            );
            StoreError::Commit(m)
        }
    };
    (0..n)
        .map(|_| {
            Err(match &e {
                StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
                other => StoreError::Commit(other.to_string()),
            })
        })
        .collect()
}
