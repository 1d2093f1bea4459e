//! The SQLite backend: one file in WAL mode with `synchronous=FULL`, through `rusqlite`.
//!
//! Reads use a small pool of read-only connections; WAL lets them run beside the writer
//! and see every committed write. Writes go through one writer connection ([`GroupCommit`]
//! with a single writer): a batch is one `BEGIN IMMEDIATE` transaction and one WAL `fsync`.
//! An operation that fails with a database error makes the batch run again with a
//! savepoint per operation, so that it does not undo the others. Only one transaction
//! writes at a time, and every operation checks its preconditions inside it. A batch
//! commits only while the database and WAL paths still name the files the writer opened
//! (see `Files`): never into a file removed, renamed or replaced under the server.

use crate::store::PasswordHash;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::messages::*;
use super::{
    unix_now, GroupCommit, StoreError, StoreOptions, UserRow, WriteJob, WriteOp, WriteOutcome,
    WriteResults,
};
use crate::protocol::{EntryKind, ErrorCode, HistoryEntry};

/// Most operations in one group-commit transaction.
const MAX_BATCH_OPS: usize = 4096;
/// How long a connection waits for a lock held by another (a checkpoint, say).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a batch run one operation per savepoint starts over when an
/// operation's failure made SQLite roll back the whole transaction.
const MAX_RESTARTS: usize = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    balance       INTEGER NOT NULL DEFAULT 0 CHECK (balance >= 0),
    created       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger (
    id            INTEGER PRIMARY KEY,
    user_id       INTEGER NOT NULL REFERENCES users(id),
    kind          TEXT    NOT NULL
                  CHECK (kind IN ('deposit', 'withdraw', 'transfer_out', 'transfer_in')),
    counterparty  TEXT,
    amount        INTEGER NOT NULL CHECK (amount <> 0),
    balance_after INTEGER NOT NULL CHECK (balance_after >= 0),
    time          INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_by_user ON ledger (user_id, id);
CREATE TABLE IF NOT EXISTS requests (
    user_id    INTEGER NOT NULL REFERENCES users(id),
    request_id TEXT    NOT NULL,
    to_user    TEXT    NOT NULL,
    amount     INTEGER NOT NULL,
    status     TEXT    NOT NULL,
    balance    INTEGER,
    message    TEXT,
    PRIMARY KEY (user_id, request_id)
) WITHOUT ROWID;
PRAGMA user_version = 1;
";

/// The bank's accounts in an SQLite file.
pub(crate) struct SqliteStore {
    path: PathBuf,
    files: Files,
    writes: GroupCommit<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// `path` as SQLite must be given it to open that file: SQLite (built with URI names on)
/// reads a name beginning with `file:` as a URI (`file:b.db?mode=ro` names `b.db`, with
/// options), so such a relative path goes as `./file:...`.
fn not_a_uri(path: &Path) -> std::borrow::Cow<'_, Path> {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().as_bytes().starts_with(b"file:") {
        std::borrow::Cow::Owned(Path::new(".").join(path))
    } else {
        std::borrow::Cow::Borrowed(path)
    }
}

/// A connection to the database at `path`; the writer's (`read_only` false) creates the
/// file if absent, a reader's never does: opened on demand while the server runs, it must
/// not put an empty database where the bank's was removed or moved away.
fn open_connection(path: &Path, read_only: bool) -> rusqlite::Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if !read_only {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(not_a_uri(path).as_ref(), flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    if read_only {
        conn.pragma_update(None, "query_only", "ON")?;
    }
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if absent) the database at `path`: WAL mode, `synchronous=FULL`,
    /// the schema.
    pub(crate) fn open(path: &Path, options: StoreOptions) -> Result<SqliteStore, StoreError> {
        let writer = open_connection(path, false)?;
        // Before changing anything in the file (journal mode, tables): it must be empty or
        // a bank database, never some other program's database that gets bank tables
        // added to it.
        check_schema(&writer, path)?;
        let mode: String = writer.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Schema(format!(
                "{}: cannot switch to WAL mode (journal mode is {mode})",
                path.display()
            )));
        }
        // One transaction, so a crash cannot leave a partial schema behind.
        writer.execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA} COMMIT;"))?;
        let files = Files::of(path, &writer)
            .map_err(|e| StoreError::Schema(format!("{}: {e} after opening it", path.display())))?;
        Ok(SqliteStore {
            path: path.to_owned(),
            files,
            writes: GroupCommit::new(
                vec![writer],
                options.group_commit,
                MAX_BATCH_OPS,
                options.metrics.clone(),
            ),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// Runs `f` on a pooled read-only connection.
    fn read<R>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<R>) -> Result<R, StoreError> {
        let pooled = self.readers.lock().pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_connection(&self.path, true)?,
        };
        let result = f(&conn);
        self.readers.lock().push(conn);
        Ok(result?)
    }

    /// The user named `name`, if any.
    pub(crate) fn user(&self, name: &str) -> Result<Option<UserRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT id, password_hash FROM users WHERE name = ?1")?
                .query_row([name], |r| {
                    Ok(UserRow {
                        id: r.get(0)?,
                        hash: PasswordHash(r.get(1)?),
                    })
                })
                .optional()
        })
    }

    /// The balance of user `id`.
    pub(crate) fn balance(&self, id: i64) -> Result<i64, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT balance FROM users WHERE id = ?1")?
                .query_row([id], |r| r.get(0))
        })
    }

    /// The latest `limit` ledger entries of user `id`, newest first.
    pub(crate) fn history(&self, id: i64, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, kind, counterparty, amount, balance_after, time FROM ledger
                 WHERE user_id = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![id, limit as i64], |r| {
                let kind: String = r.get(1)?;
                Ok(HistoryEntry {
                    id: r.get(0)?,
                    kind: EntryKind::parse(&kind).unwrap_or(EntryKind::Deposit),
                    counterparty: r.get(2)?,
                    amount: r.get(3)?,
                    balance_after: r.get(4)?,
                    time: r.get(5)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Queues `job` for the writer (see [`GroupCommit::submit`]).
    pub(crate) fn submit_write(&self, job: WriteJob) {
        self.writes
            .submit(job, |w, ops| execute(w, ops, &self.files));
    }

    /// Applies `ops` now, in one transaction, on the calling thread (waits for the writer).
    #[cfg(test)]
    pub(crate) fn write_now(&self, ops: &[WriteOp]) -> WriteResults {
        let refs: Vec<&WriteOp> = ops.iter().collect();
        self.writes.with_writer(|w| execute(w, &refs, &self.files))
    }

    /// Runs `sql` on the writer (tests that reach under the store).
    #[cfg(test)]
    pub(crate) fn execute_sql(&self, sql: &str) -> Result<(), StoreError> {
        Ok(self.writes.with_writer(|c| c.execute_batch(sql))?)
    }

    /// The writer's journal mode and `synchronous` level.
    #[cfg(test)]
    pub(crate) fn pragmas(&self) -> (String, i64) {
        self.writes.with_writer(|c| {
            (
                c.query_row("PRAGMA journal_mode", [], |r| r.get(0))
                    .unwrap(),
                c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap(),
            )
        })
    }

    /// The sum of all balances.
    #[cfg(test)]
    pub(crate) fn total(&self) -> Result<i64, StoreError> {
        self.read(|c| {
            c.query_row("SELECT COALESCE(SUM(balance), 0) FROM users", [], |r| {
                r.get(0)
            })
        })
    }
}

/// A file's device and inode.
type FileId = (u64, u64);

/// The database file and its WAL file as the writer has them open.
///
/// SQLite goes on writing to the files it opened whatever becomes of their names: a
/// commit into a database file that was removed, renamed or replaced, or into a removed
/// WAL file, is on disk where the next start will not look (and a crash loses it). So a
/// batch commits only while both paths still name the files the writer opened
/// ([`Files::check`]: two `stat` calls per batch, beside its `fsync`).
#[derive(Debug)]
struct Files {
    db: (PathBuf, FileId),
    wal: (PathBuf, FileId),
}

/// The device and inode of the file `path` names (behind symbolic links).
fn file_id(path: &Path) -> std::io::Result<FileId> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

impl Files {
    /// The files at `path` and at the WAL's path now (the writer `conn` has just opened
    /// them). SQLite names the WAL after the database's real path (behind any symbolic
    /// link), which `conn` tells.
    fn of(path: &Path, conn: &Connection) -> Result<Files, String> {
        let real = conn.path().filter(|p| !p.is_empty()).map(Path::new);
        let mut wal = real.unwrap_or(path).as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let id = |p: &Path| file_id(p).map_err(|e| format!("cannot stat {}: {e}", p.display()));
        Ok(Files {
            db: (path.to_owned(), id(path)?),
            wal: (wal.clone(), id(&wal)?),
        })
    }

    /// Whether both paths still name the files the writer has open; if not, why.
    fn check(&self) -> Result<(), String> {
        for ((path, id), what) in [(&self.db, "database file"), (&self.wal, "WAL file")] {
            let why = match file_id(path) {
                Ok(now) if now == *id => continue,
                Ok(_) => "was replaced".to_owned(),
                Err(e) => format!("is gone ({e})"),
            };
            return Err(format!(
                "the {what} {} {why} while the server ran: writes are refused; restart \
                 the server (never remove, rename or replace a database in use)",
                path.display()
            ));
        }
        Ok(())
    }
}

/// A batch's answer when [`Files::check`] fails (`why`); its transaction is rolled back.
/// A checkpoint first copies what the WAL holds into the database file the writer has
/// open, so that a removed WAL file does not take the writes acknowledged before with it.
fn refuse(
    conn: &Connection,
    why: &str,
    all_failed: &dyn Fn(&dyn fmt::Display) -> WriteResults,
) -> WriteResults {
    match conn.query_row("PRAGMA wal_checkpoint(FULL)", [], |r| r.get::<_, i64>(0)) {
        Ok(0) => {}
        Ok(_) => duo_net::log_limited!(log::Level::Error, "checkpoint: busy"),
        Err(e) => duo_net::log_limited!(log::Level::Error, "checkpoint failed: {e}"),
    }
    all_failed(&why)
}

/// The tables of a bank database and the columns the program uses.
const TABLES: [(&str, &[&str]); 3] = [
    (
        "users",
        &["id", "name", "password_hash", "balance", "created"],
    ),
    (
        "ledger",
        &[
            "id",
            "user_id",
            "kind",
            "counterparty",
            "amount",
            "balance_after",
            "time",
        ],
    ),
    (
        "requests",
        &[
            "user_id",
            "request_id",
            "to_user",
            "amount",
            "status",
            "balance",
            "message",
        ],
    ),
];

/// Checks that the database is empty (a new bank) or a bank database of a version this
/// program knows.
fn check_schema(c: &Connection, path: &Path) -> Result<(), StoreError> {
    let not_ours = |why: String| {
        StoreError::Schema(format!(
            "{}: not a bank database ({why}); refusing to use it",
            path.display()
        ))
    };
    let version: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > 1 {
        return Err(StoreError::Schema(format!(
            "{}: schema version {version} is newer than this program's (1)",
            path.display()
        )));
    }
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if tables.is_empty() {
        return Ok(()); // a new database
    }
    if version != 1 {
        return Err(not_ours(format!(
            "schema version {version}, tables {}",
            tables.join(", ")
        )));
    }
    for (table, columns) in TABLES {
        let have: Vec<String> = c
            .prepare(&format!("PRAGMA table_info({table})"))?
            .query_map([], |r| r.get(1))?
            .collect::<rusqlite::Result<_>>()?;
        if have.is_empty() {
            return Err(not_ours(format!("no table {table}")));
        }
        if let Some(missing) = columns.iter().find(|col| !have.iter().any(|h| h == *col)) {
            return Err(not_ours(format!("table {table} has no column {missing}")));
        }
    }
    Ok(())
}

/// Runs `ops` in one transaction and commits once.
///
/// Every operation checks its preconditions before it writes, so a rejection (insufficient
/// funds, unknown user) writes nothing and the batch goes on. Only a database error can
/// stop an operation halfway; then the whole transaction is rolled back and the batch runs
/// again with each operation in its own savepoint, so that the failing one alone fails.
/// Savepoints cost a statement journal and two statements per operation, so the common
/// case does without them.
fn execute(conn: &mut Connection, ops: &[&WriteOp], files: &Files) -> WriteResults {
    let all_failed = |e: &dyn fmt::Display| -> WriteResults {
        duo_net::log_limited!(
            log::Level::Error,
            "write transaction of {} operations failed: {e}",
            ops.len()
        );
        ops.iter()
            .map(|_| Err(StoreError::Commit(e.to_string())))
            .collect()
    };
    let now = unix_now();
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return all_failed(&e),
    };
    let applied: rusqlite::Result<Vec<WriteOutcome>> =
        ops.iter().map(|op| apply(&tx, op, now)).collect();
    let results = match applied {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(e) => {
            duo_net::log_limited!(
                log::Level::Warn,
                "a write of a batch of {} failed ({e}); running them one by one",
                ops.len()
            );
            drop(tx); // rolls back
            return execute_isolated(conn, ops, now, files, &all_failed);
        }
    };
    if let Err(why) = files.check() {
        drop(tx);
        return refuse(conn, &why, &all_failed);
    }
    match tx.commit() {
        Ok(()) => results,
        Err(e) => all_failed(&e),
    }
}

/// [`execute`]'s fallback: one transaction, each operation in a savepoint.
///
/// Some failures (`SQLITE_FULL`, `SQLITE_IOERR`, `SQLITE_NOMEM` in a statement without a
/// statement journal) make SQLite roll back the whole transaction, not just the statement:
/// the operations before are undone, and a savepoint opened after would begin and commit
/// a transaction of its own, outside the batch. So after a failure that ended the
/// transaction it starts over without that operation, at most [`MAX_RESTARTS`] times.
fn execute_isolated(
    conn: &mut Connection,
    ops: &[&WriteOp],
    now: i64,
    files: &Files,
    all_failed: &dyn Fn(&dyn fmt::Display) -> WriteResults,
) -> WriteResults {
    // The operations whose failure ended a transaction, with their errors.
    let mut ended: Vec<Option<StoreError>> = ops.iter().map(|_| None).collect();
    'attempt: for _ in 0..=MAX_RESTARTS {
        let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => return all_failed(&e),
        };
        let mut results = Vec::with_capacity(ops.len());
        for (op, ended) in ops.iter().zip(&mut ended) {
            if ended.is_some() {
                results.push(None);
                continue;
            }
            let result = (|| {
                let sp = tx.savepoint()?;
                let outcome = apply(&sp, op, now)?;
                sp.commit()?;
                Ok(outcome)
            })();
            if let Err(e) = &result {
                duo_net::log_limited!(log::Level::Error, "write {op:?} failed: {e}");
                if tx.is_autocommit() {
                    // SQLite rolled the whole transaction back: start over without it.
                    *ended = result.err();
                    continue 'attempt;
                }
            }
            results.push(Some(result));
        }
        if let Err(why) = files.check() {
            drop(tx);
            return refuse(conn, &why, all_failed);
        }
        return match tx.commit() {
            Ok(()) => results
                .into_iter()
                .zip(ended)
                .map(|(result, ended)| match (result, ended) {
                    (Some(result), _) => result,
                    (None, Some(e)) => Err(e),
                    (None, None) => Err(StoreError::Commit("not run".to_owned())),
                })
                .collect(),
            Err(e) => all_failed(&e),
        };
    }
    all_failed(&"the transaction was rolled back by too many failing operations")
}

fn balance_of(c: &Connection, id: i64) -> rusqlite::Result<i64> {
    c.prepare_cached("SELECT balance FROM users WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
}

fn set_balance(c: &Connection, id: i64, balance: i64) -> rusqlite::Result<()> {
    c.prepare_cached("UPDATE users SET balance = ?2 WHERE id = ?1")?
        .execute(params![id, balance])?;
    Ok(())
}

/// Takes `amount` from user `id` if the balance covers it; the new balance, or `None` if
/// it does not (nothing changes then). The check and the update are one statement.
fn debit(c: &Connection, id: i64, amount: i64) -> rusqlite::Result<Option<i64>> {
    c.prepare_cached(
        "UPDATE users SET balance = balance - ?2 WHERE id = ?1 AND balance >= ?2 RETURNING balance",
    )?
    .query_row(params![id, amount], |r| r.get(0))
    .optional()
}

fn add_entry(
    c: &Connection,
    user: i64,
    kind: EntryKind,
    counterparty: Option<&str>,
    amount: i64,
    balance_after: i64,
    now: i64,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO ledger (user_id, kind, counterparty, amount, balance_after, time)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        user,
        kind.as_str(),
        counterparty,
        amount,
        balance_after,
        now
    ])?;
    Ok(())
}

fn rejected(code: ErrorCode, message: &str) -> WriteOutcome {
    WriteOutcome::Rejected(code, message.to_owned())
}

/// Applies one operation inside the current transaction.
fn apply(c: &Connection, op: &WriteOp, now: i64) -> rusqlite::Result<WriteOutcome> {
    match op {
        WriteOp::Register { name, hash } => {
            let inserted = c
                .prepare_cached(
                    "INSERT INTO users (name, password_hash, balance, created)
                     VALUES (?1, ?2, 0, ?3) ON CONFLICT (name) DO NOTHING",
                )?
                .execute(params![name, hash.as_str(), now])?;
            Ok(if inserted == 1 {
                WriteOutcome::Registered
            } else {
                rejected(ErrorCode::UserExists, USER_EXISTS)
            })
        }
        WriteOp::Deposit { user, amount } => {
            let Some(balance) = balance_of(c, *user)?.checked_add(*amount) else {
                return Ok(rejected(ErrorCode::InvalidAmount, DEPOSIT_OVERFLOW));
            };
            set_balance(c, *user, balance)?;
            add_entry(c, *user, EntryKind::Deposit, None, *amount, balance, now)?;
            Ok(WriteOutcome::Balance(balance))
        }
        WriteOp::Withdraw { user, amount } => {
            let balance = balance_of(c, *user)?;
            if balance < *amount {
                return Ok(rejected(ErrorCode::InsufficientFunds, WITHDRAW_FUNDS));
            }
            let balance = balance - amount;
            set_balance(c, *user, balance)?;
            add_entry(c, *user, EntryKind::Withdraw, None, -amount, balance, now)?;
            Ok(WriteOutcome::Balance(balance))
        }
        WriteOp::Transfer {
            from,
            from_name,
            to,
            amount,
            request_id,
        } => {
            if let Some(rid) = request_id {
                if let Some(first) = replay(c, *from, rid, to, *amount)? {
                    return Ok(first);
                }
            }
            let outcome = transfer(c, *from, from_name, to, *amount, now)?;
            if let Some(rid) = request_id {
                let (status, balance, message) = match &outcome {
                    WriteOutcome::Balance(b) => ("OK", Some(*b), None),
                    WriteOutcome::Rejected(code, m) => (code.as_str(), None, Some(m.as_str())),
                    // (Neither comes out of `transfer`.)
                    WriteOutcome::Registered | WriteOutcome::Replayed(_) => ("OK", None, None),
                };
                c.prepare_cached(
                    "INSERT INTO requests (user_id, request_id, to_user, amount, status, balance, message)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![from, rid, to, amount, status, balance, message])?;
            }
            Ok(outcome)
        }
    }
}

/// The recorded outcome of transfer `rid` of user `from`, if it was seen before.
fn replay(
    c: &Connection,
    from: i64,
    rid: &str,
    to: &str,
    amount: i64,
) -> rusqlite::Result<Option<WriteOutcome>> {
    type Row = (String, i64, String, Option<i64>, Option<String>);
    let row: Option<Row> = c
        .prepare_cached(
            "SELECT to_user, amount, status, balance, message FROM requests
             WHERE user_id = ?1 AND request_id = ?2",
        )?
        .query_row(params![from, rid], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    let Some((first_to, first_amount, status, balance, message)) = row else {
        return Ok(None);
    };
    if first_to != to || first_amount != amount {
        return Ok(Some(rejected(ErrorCode::BadRequest, RID_REUSED)));
    }
    let first = match (status.as_str(), balance) {
        ("OK", Some(b)) => WriteOutcome::Balance(b),
        _ => WriteOutcome::Rejected(
            ErrorCode::parse(&status).unwrap_or(ErrorCode::Internal),
            message.unwrap_or_default(),
        ),
    };
    Ok(Some(WriteOutcome::Replayed(Box::new(first))))
}

fn transfer(
    c: &Connection,
    from: i64,
    from_name: &str,
    to: &str,
    amount: i64,
    now: i64,
) -> rusqlite::Result<WriteOutcome> {
    // Five statements on the common path: the payee (id and balance) in one read, the
    // payer's check and debit in one `UPDATE ... RETURNING`, the credit, two ledger rows.
    let payee: Option<(i64, i64)> = c
        .prepare_cached("SELECT id, balance FROM users WHERE name = ?1")?
        .query_row([to], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((to_id, to_balance)) = payee else {
        return Ok(rejected(ErrorCode::NoSuchUser, NO_SUCH_USER));
    };
    if to_id == from {
        return Ok(rejected(ErrorCode::BadRequest, SELF_TRANSFER));
    }
    let insufficient = || rejected(ErrorCode::InsufficientFunds, TRANSFER_FUNDS);
    let Some(to_balance) = to_balance.checked_add(amount) else {
        // Rare: report a lack of funds first, as for any other transfer.
        if balance_of(c, from)? < amount {
            return Ok(insufficient());
        }
        return Ok(rejected(ErrorCode::InvalidAmount, CREDIT_OVERFLOW));
    };
    let Some(from_balance) = debit(c, from, amount)? else {
        return Ok(insufficient());
    };
    set_balance(c, to_id, to_balance)?;
    add_entry(
        c,
        from,
        EntryKind::TransferOut,
        Some(to),
        -amount,
        from_balance,
        now,
    )?;
    add_entry(
        c,
        to_id,
        EntryKind::TransferIn,
        Some(from_name),
        amount,
        to_balance,
        now,
    )?;
    Ok(WriteOutcome::Balance(from_balance))
}
