//! Reading a SQLite data dir for `coffer verify`: one read transaction, so one snapshot, beside
//! a running server (WAL lets a reader run beside the writer); nothing is written.

use std::path::Path;

use rusqlite::{Connection, Row};

use super::codec::{self, ACCOUNT_COLUMNS, OUTBOX_COLUMNS, TRANSFER_COLUMNS};
use super::{audit, db_error, keys, read, schema};
use crate::verify::{Progress, Report, Verifier};
use crate::{StoreError, StoreResult};

/// Verifies the store in `dir` (see [`crate::verify`]).
pub fn verify(dir: &Path, progress: &dyn Progress) -> StoreResult<Report> {
    if !super::admin::exists(dir) {
        return Err(StoreError::unavailable(format!("no store in {}", dir.display())));
    }
    let mut conn = schema::open_reader(dir)?;
    let version: u32 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(db_error)?;
    if version < schema::SCHEMA_VERSION {
        return Err(StoreError::unavailable(format!(
            "the store is at schema version {version}, older than this binary's {}: run `coffer migrate` first",
            schema::SCHEMA_VERSION
        )));
    }
    let tx = conn.transaction().map_err(db_error)?;
    check(&tx, progress).map_err(db_error)
}

fn check(conn: &Connection, progress: &dyn Progress) -> rusqlite::Result<Report> {
    let chain = read::outbox_chain(conn)?;
    let mut verifier = Verifier::new(chain);

    progress.stage("events", count(conn, "outbox")?);
    each(conn, &format!("SELECT {OUTBOX_COLUMNS} FROM outbox ORDER BY seq"), progress, |row| {
        let position: i64 = row.get(0)?;
        verifier.outbox_row(codec::outbox_event(row).map_err(|e| e.to_string()), position);
        Ok(())
    })?;
    verifier.outbox_done();

    progress.stage("transfers", count(conn, "transfers")?);
    each(conn, &format!("SELECT {TRANSFER_COLUMNS} FROM transfers ORDER BY seq"), progress, |row| {
        let seq: i64 = row.get(0)?;
        verifier.transfer_row(codec::transfer(row).map(|(_, t)| t).map_err(|e| e.to_string()), seq);
        Ok(())
    })?;

    progress.stage("accounts", count(conn, "accounts")?);
    each(conn, &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY seq"), progress, |row| {
        let seq: i64 = row.get(0)?;
        verifier.account_row(codec::account(row).map(|(_, a)| a).map_err(|e| e.to_string()), seq);
        Ok(())
    })?;

    progress.stage("audit", count(conn, "audit_log")?);
    each(conn, &format!("SELECT {} FROM audit_log ORDER BY position", audit::COLUMNS), progress, |row| {
        let position: i64 = row.get(0)?;
        verifier.audit_row(audit::record(row).map_err(|e| e.to_string()), position);
        Ok(())
    })?;
    verifier.audit_done(audit::head(conn)?);
    for key in keys::list(conn)? {
        verifier.key_row(Ok(key));
    }
    Ok(verifier.finish())
}

fn count(conn: &Connection, table: &str) -> rusqlite::Result<u64> {
    let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| row.get(0))?;
    Ok(n as u64)
}

/// Runs `sql` and hands each row to `f`, reporting progress every thousand rows.
fn each(
    conn: &Connection,
    sql: &str,
    progress: &dyn Progress,
    mut f: impl FnMut(&Row<'_>) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let mut statement = conn.prepare(sql)?;
    let mut rows = statement.query([])?;
    let mut done = 0_u64;
    while let Some(row) = rows.next()? {
        f(row)?;
        done += 1;
        if done.is_multiple_of(1000) {
            progress.advance(1000);
        }
    }
    progress.advance(done % 1000);
    Ok(())
}
