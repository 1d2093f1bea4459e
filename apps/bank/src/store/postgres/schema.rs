//! The bank's schema on PostgreSQL: created in an empty database, checked in one that
//! has it (a newer version or someone else's tables are refused), its functions brought
//! up to date, under an advisory lock so that front-ends may start together.

use super::conn::Conn;

use super::pg_error;
use crate::store::StoreError;

/// The schema and the batch function, idempotent (see the file's comments).
const SCHEMA: &str = include_str!("../postgres.sql");
/// The schema version this program writes and understands.
const SCHEMA_VERSION: i64 = 1;
/// Key of the advisory lock that serialises schema set-up between front-ends.
const SCHEMA_LOCK: i64 = 0x6261_6e6b; // "bank"

/// Creates the schema in an empty database, or checks that it is a bank database of a
/// version this program knows (refusing a newer one or someone else's tables), and brings
/// the functions up to date. Returns the schema that holds the bank's tables.
pub(super) fn migrate(client: &mut Conn, shown: &str) -> Result<String, StoreError> {
    let refuse = |why: String| StoreError::Schema(format!("{shown}: {why}; refusing to use it"));
    // READ COMMITTED whatever the database's default: a front-end that waited for the
    // lock must see what the one before it committed.
    // (On an error the connection is dropped with its transaction: the start fails.)
    client
        .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        .map_err(|e| pg_error(&e))?;
    let tx = client;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .map_err(|e| pg_error(&e))?;
    // Where the search path finds bank_meta, and where it would create tables: the two
    // must agree, or the schema's `CREATE TABLE IF NOT EXISTS` would start a second, empty
    // bank in front of the real one (a role whose own schema appeared after the bank was
    // set up in `public`, say).
    let row = tx
        .query_one(
            "SELECT (SELECT n.nspname::text FROM pg_class c
                     JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE c.oid = to_regclass('bank_meta')),
                    current_schema()::text",
            &[],
        )
        .map_err(|e| pg_error(&e))?;
    let (meta, current): (Option<String>, Option<String>) = (row.get(0), row.get(1));
    let Some(current) = current else {
        return Err(refuse(
            "no schema of the search_path exists to hold the bank's tables".to_owned(),
        ));
    };
    if let Some(found) = meta.as_deref().filter(|&found| found != current) {
        return Err(refuse(format!(
            "the bank's tables are in schema {found:?} but the search_path puts new tables in {current:?} (set search_path so that {found:?} comes first)"
        )));
    }
    if meta.is_some() {
        let version: Option<String> = tx
            .query_opt(
                "SELECT value::text FROM bank_meta WHERE key = 'schema_version'",
                &[],
            )
            .map_err(|e| pg_error(&e))?
            .map(|r| r.get(0));
        let Some(version) = version else {
            return Err(refuse(
                "not a bank database (bank_meta has no schema_version)".to_owned(),
            ));
        };
        match version.parse::<i64>() {
            Ok(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::Schema(format!(
                    "{shown}: schema version {v} is newer than this program's ({SCHEMA_VERSION})"
                )))
            }
            Ok(v) if v == SCHEMA_VERSION => {}
            _ => {
                return Err(refuse(format!(
                    "not a bank database (schema version {version:?})"
                )))
            }
        }
    } else {
        let foreign: Vec<String> = tx
            .query(
                "SELECT c.relname::text FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = current_schema()
                   AND c.relname IN ('users', 'ledger', 'requests')
                 ORDER BY 1",
                &[],
            )
            .map_err(|e| pg_error(&e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !foreign.is_empty() {
            return Err(refuse(format!(
                "not a bank database (it has tables {} but no bank_meta)",
                foreign.join(", ")
            )));
        }
    }
    tx.batch_execute(SCHEMA).map_err(|e| pg_error(&e))?;
    tx.batch_execute("COMMIT").map_err(|e| pg_error(&e))?;
    Ok(current)
}
