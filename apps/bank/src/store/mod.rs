//! Storage: the bank's accounts behind one boundary, with two backends.
//!
//! - [`sqlite`]: one SQLite file next to the server (the embedded default, `--db bank.db`).
//! - [`postgres`]: a PostgreSQL server shared by any number of front-ends
//!   (`--db postgres://...`).
//!
//! Both keep the same three tables and give the same answers, so the protocol cannot tell
//! them apart (`docs/bank-protocol.md` lists the few backend-specific behaviours):
//!
//! - `users`: id, unique name, argon2 PHC hash, balance in cents (never negative).
//! - `ledger`: one row per balance change (deposit, withdraw, transfer out, transfer in),
//!   with the counterparty of a transfer and the balance after it.
//! - `requests`: the outcome of every `TRANSFER` that carried a request id, keyed by
//!   (user, request id), so a retry returns the first outcome and moves no money again,
//!   whichever front-end it reaches.
//!
//! # Reads and writes
//!
//! Reads (`BALANCE`, `HISTORY`, the password hash of `LOGIN`) run on pooled connections
//! and see every committed write. Writes go through [`GroupCommit`]: the operations of many
//! connections are batched into one transaction and one durable commit, and each operation
//! keeps its own outcome (an insufficient balance fails that transfer alone, in order).
//! Every operation checks its preconditions inside the transaction that applies it, so
//! balances never go negative and a transfer moves exactly what it debits.

use crate::metrics::BankMetrics;
use std::fmt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::protocol::{ErrorCode, HistoryEntry};

mod flush;
mod group;
pub(crate) mod postgres;
pub(crate) mod sqlite;

pub(crate) use group::GroupCommit;

/// Where the accounts live, as given to `bank serve --db`. Shown (`Display`) and debugged
/// (`Debug`) without the password of a PostgreSQL URL.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// An SQLite file (`bank.db`, `sqlite:PATH`).
    Sqlite(PathBuf),
    /// A PostgreSQL server (`postgres://...`, `postgresql://...`), as a connection URL.
    Postgres(String),
}

impl Database {
    /// Reads a `--db` value: a `postgres://` or `postgresql://` URL (also with
    /// `?host=/path/to/socket/dir`), `sqlite:PATH`, or a plain file path (SQLite).
    ///
    /// ```
    /// use bank::Database;
    /// assert!(matches!(Database::parse("bank.db"), Ok(Database::Sqlite(_))));
    /// assert!(matches!(Database::parse("sqlite:/var/lib/bank.db"), Ok(Database::Sqlite(_))));
    /// assert!(matches!(
    ///     Database::parse("postgres://bank@127.0.0.1:5432/bank"),
    ///     Ok(Database::Postgres(_))
    /// ));
    /// assert!(Database::parse("mysql://db/bank").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Database, String> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            postgres::check_url(s)?;
            return Ok(Database::Postgres(s.to_owned()));
        }
        if let Some(path) = s.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err("sqlite: needs a file path (sqlite:PATH)".to_owned());
            }
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(format!(
                "unknown database URL scheme {scheme:?}: use a file path, sqlite:PATH or \
                 postgres://..."
            ));
        }
        if s.is_empty() {
            return Err("empty database path".to_owned());
        }
        Ok(Database::Sqlite(PathBuf::from(s)))
    }

    /// Whether several server processes may use the database at once.
    pub fn allows_several_front_ends(&self) -> bool {
        matches!(self, Database::Postgres(_))
    }
}

impl fmt::Debug for Database {
    /// As the derived `Debug` would, with a PostgreSQL URL's password replaced by `***`:
    /// the settings a `{:?}` logs hold this.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Database::Postgres(url) => f
                .debug_tuple("Postgres")
                .field(&postgres::redact(url))
                .finish(),
        }
    }
}

impl fmt::Display for Database {
    /// The database for messages and logs: a PostgreSQL URL without its password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => f.write_str(&postgres::redact(url)),
        }
    }
}

/// How the server uses its database.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Batch concurrent writes into shared commits.
    pub group_commit: bool,
    /// With group commit on PostgreSQL, let a batch's commit return before it is on disk
    /// (its locks go at once) and hold its replies until a flush barrier has returned
    /// (see the `flush` module). Off: every commit waits for its own flush.
    pub early_release: bool,
    /// Transactions that may commit at once (PostgreSQL; SQLite has one writer).
    pub writers: usize,
    /// On PostgreSQL, how long one database call (a batch, a read, a flush barrier) may
    /// wait for the server; past it the connection is dropped and the call's commands get
    /// `UNAVAILABLE`, as with a connection that broke. `None`: no limit. SQLite ignores it.
    pub db_timeout: Option<std::time::Duration>,
    /// Where batches are counted (sizes, commit times, outcomes).
    pub metrics: BankMetrics,
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An SQLite error.
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A PostgreSQL error other than the database being unreachable.
    #[error("database: {0}")]
    Postgres(String),
    /// The database server cannot be reached (down, restarting, connection lost). A write
    /// that gets this may or may not have been committed if the connection broke during
    /// its commit; a retried transfer with the same request id tells which.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The transaction an operation belonged to failed to commit.
    #[error("database commit failed: {0}")]
    Commit(String),
    /// The database is not a bank database, or of a newer version.
    #[error("{0}")]
    Schema(String),
}

impl StoreError {
    /// The protocol error a client gets for it.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            StoreError::Unavailable(_) => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }
}

/// A change to the database, applied by the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriteOp {
    /// Creates a user with balance 0.
    Register {
        /// The new user's name (valid).
        name: String,
        /// The password's hash.
        hash: PasswordHash,
    },
    /// Adds to a balance.
    Deposit {
        /// The user's id.
        user: i64,
        /// Cents, positive.
        amount: i64,
    },
    /// Takes from a balance, if it covers the amount.
    Withdraw {
        /// The user's id.
        user: i64,
        /// Cents, positive.
        amount: i64,
    },
    /// Moves money from one user to another.
    Transfer {
        /// The payer's id.
        from: i64,
        /// The payer's name (the payee's ledger shows it).
        from_name: String,
        /// The payee's name, as the client gave it.
        to: String,
        /// Cents, positive.
        amount: i64,
        /// Idempotency key.
        request_id: Option<String>,
    },
}

/// The PHC string of a password's hash. Its `Debug` does not show it: a hash is no log's
/// business (an offline-crackable copy of the password), and the operations and rows that
/// hold one are logged when a write or a read fails.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PasswordHash(pub(crate) String);

impl PasswordHash {
    /// The PHC string.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(..)")
    }
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriteOutcome {
    /// The user was created.
    Registered,
    /// Done; the (payer's) new balance.
    Balance(i64),
    /// Refused by a business rule; nothing changed (except that a transfer with a request
    /// id records the refusal, so that a retry gets it again).
    Rejected(ErrorCode, String),
    /// A transfer retried with its request id: nothing applied or refused anew, the
    /// answer is the recorded outcome of the first one (a `Balance` or a `Rejected`).
    Replayed(Box<WriteOutcome>),
}

/// The results of a job's operations, in order.
pub(crate) type WriteResults = Vec<Result<WriteOutcome, StoreError>>;

/// Operations to apply in order, and what to do with their results once committed.
pub(crate) struct WriteJob {
    /// The operations.
    pub(crate) ops: Vec<WriteOp>,
    /// Called with one result per operation, after the commit (or its failure).
    pub(crate) done: Box<dyn FnOnce(WriteResults) + Send>,
}

impl fmt::Debug for WriteJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteJob")
            .field("ops", &self.ops)
            .finish_non_exhaustive()
    }
}

/// A user as stored: id and password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserRow {
    /// The id.
    pub(crate) id: i64,
    /// The password's hash.
    pub(crate) hash: PasswordHash,
}

/// The bank's database, whichever backend holds it.
#[derive(Debug)]
pub(crate) enum Store {
    /// An SQLite file.
    Sqlite(Box<sqlite::SqliteStore>),
    /// A PostgreSQL server.
    Postgres(Box<postgres::PgStore>),
}

impl Store {
    /// Opens the database (creating or migrating its schema); fails if it cannot be
    /// reached or is not a bank database.
    pub(crate) fn open(db: &Database, options: StoreOptions) -> Result<Store, StoreError> {
        Ok(match db {
            Database::Sqlite(path) => {
                Store::Sqlite(Box::new(sqlite::SqliteStore::open(path, options)?))
            }
            Database::Postgres(url) => {
                Store::Postgres(Box::new(postgres::PgStore::open(url, options)?))
            }
        })
    }

    /// The user named `name`, if any.
    pub(crate) fn user(&self, name: &str) -> Result<Option<UserRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.user(name),
            Store::Postgres(s) => s.user(name),
        }
    }

    /// The balance of user `id`.
    pub(crate) fn balance(&self, id: i64) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.balance(id),
            Store::Postgres(s) => s.balance(id),
        }
    }

    /// The latest `limit` ledger entries of user `id`, newest first.
    pub(crate) fn history(&self, id: i64, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        match self {
            Store::Sqlite(s) => s.history(id, limit),
            Store::Postgres(s) => s.history(id, limit),
        }
    }

    /// Queues `job` for a writer and commits what is queued if a writer is free (see
    /// [`GroupCommit::submit`]). Blocks for the commits it leads; call it on a worker
    /// thread. `job.done` runs on whichever thread led the commit.
    pub(crate) fn submit_write(&self, job: WriteJob) {
        match self {
            Store::Sqlite(s) => s.submit_write(job),
            Store::Postgres(s) => s.submit_write(job),
        }
    }

    /// Applies `ops` now, in one transaction, on the calling thread.
    #[cfg(test)]
    pub(crate) fn write_now(&self, ops: &[WriteOp]) -> WriteResults {
        match self {
            Store::Sqlite(s) => s.write_now(ops),
            Store::Postgres(s) => s.write_now(ops),
        }
    }

    /// The sum of all balances.
    #[cfg(test)]
    pub(crate) fn total(&self) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.total(),
            Store::Postgres(s) => s.total(),
        }
    }
}

/// Seconds since the Unix epoch, the ledger's time stamps.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Rejection messages, the same on both backends.
pub(crate) mod messages {
    /// `REGISTER` of a taken name.
    pub(crate) const USER_EXISTS: &str = "user name is taken";
    /// A deposit or credit past `i64::MAX`.
    pub(crate) const DEPOSIT_OVERFLOW: &str =
        "the balance would exceed the largest amount the bank can hold";
    /// A transfer whose payee would pass `i64::MAX`.
    pub(crate) const CREDIT_OVERFLOW: &str =
        "the recipient's balance would exceed the largest amount the bank can hold";
    /// A withdrawal beyond the balance.
    pub(crate) const WITHDRAW_FUNDS: &str = "the balance does not cover the withdrawal";
    /// A transfer beyond the balance.
    pub(crate) const TRANSFER_FUNDS: &str = "the balance does not cover the transfer";
    /// A transfer to nobody.
    pub(crate) const NO_SUCH_USER: &str = "no such user";
    /// A transfer to oneself.
    pub(crate) const SELF_TRANSFER: &str = "cannot transfer to your own account";
    /// A request id reused for another transfer.
    pub(crate) const RID_REUSED: &str = "request id already used for a different transfer";
}

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod tests;
