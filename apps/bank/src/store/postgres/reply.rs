//! Reading the database's replies: a column that does not hold what the bank reads from it
//! is an error ([`ReadError::Column`]), never a panic.

use super::{describe, failed, Failure};
use crate::protocol::ErrorCode;
use crate::store::{StoreError, WriteOutcome, WriteResults};

/// One row of `bank_apply`'s reply: status, balance, message.
type Outcome<'a> = (&'a str, Option<i64>, Option<String>);

/// Why a read failed: the database said so, or a column of its reply did not hold what
/// the bank reads from it.
pub(super) enum ReadError {
    Db(tokio_postgres::Error),
    Column(String),
}

impl From<tokio_postgres::Error> for ReadError {
    fn from(e: tokio_postgres::Error) -> ReadError {
        ReadError::Db(e)
    }
}

/// Column `i` of `row` as a `T`, or an error naming the column and its type: a table
/// altered under the server answers an error, not a panic. (The reads cast each column to
/// the type they take, so a widened column reads as before.)
pub(super) fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    i: usize,
) -> Result<T, ReadError> {
    row.try_get(i).map_err(|e| {
        let (name, ty) = row
            .columns()
            .get(i)
            .map_or(("?", "?"), |c| (c.name(), c.type_().name()));
        ReadError::Column(format!(
            "column {i} ({name}, of type {ty}) of a database reply cannot be read as {}: {}",
            std::any::type_name::<T>(),
            describe(&e)
        ))
    })
}

/// The outcomes `bank_apply` returned, one per operation.
pub(super) fn outcomes(n: usize, rows: &[tokio_postgres::Row]) -> WriteResults {
    if rows.len() != n {
        let m = format!("bank_apply returned {} rows for {n} operations", rows.len());
        return failed(n, Failure::Other(m));
    }
    let decoded: Result<Vec<Outcome<'_>>, ReadError> = rows
        .iter()
        .map(|row| Ok((column(row, 0)?, column(row, 1)?, column(row, 2)?)))
        .collect();
    let decoded = match decoded {
        Ok(decoded) => decoded,
        Err(e) => {
            // The call returned, so the batch committed: what it did is unknown here, as
            // with a connection lost on the way back (a retry by request id resolves it).
            let m = match e {
                ReadError::Column(m) => m,
                ReadError::Db(e) => describe(&e),
            };
            duo_net::log_limited!(
                log::Level::Error,
                "the outcomes of a committed batch of {n} could not be read: {m}"
            );
            return (0..n)
                .map(|_| Err(StoreError::Unavailable(m.clone())))
                .collect();
        }
    };
    decoded
        .into_iter()
        .map(|(status, balance, message)| match (status, balance) {
            // A replay's mark (`postgres.sql`): a message beside an OK.
            ("OK", Some(b)) if message.is_some() => replayed(WriteOutcome::Balance(b)),
            ("OK", Some(b)) => Ok(WriteOutcome::Balance(b)),
            ("REGISTERED", _) => Ok(WriteOutcome::Registered),
            ("INTERNAL", _) => Err(StoreError::Postgres(message.unwrap_or_default())),
            (code, _) => match ErrorCode::parse(code) {
                // ... and a balance beside a refusal.
                Some(code) if balance.is_some() => {
                    replayed(WriteOutcome::Rejected(code, message.unwrap_or_default()))
                }
                Some(code) => Ok(WriteOutcome::Rejected(code, message.unwrap_or_default())),
                None => Err(StoreError::Postgres(format!("unknown outcome {code:?}"))),
            },
        })
        .collect()
}

/// A transfer answered with the recorded outcome `first` of its request id.
fn replayed(first: WriteOutcome) -> Result<WriteOutcome, StoreError> {
    Ok(WriteOutcome::Replayed(Box::new(first)))
}
