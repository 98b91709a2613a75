//! Reading a PostgreSQL database for `coffer verify`: one read-only REPEATABLE READ
//! transaction, so every table is read at the same moment while servers go on writing.

use futures_util::{TryStreamExt, pin_mut};
use tokio_postgres::Row;

use super::codec::{self, OUTBOX_COLUMNS};
use super::{audit, first_connection, keys, pg_error, pool_at, read, schema};
use crate::audit::AuditHead;
use crate::columns::{ACCOUNT_COLUMNS, TRANSFER_COLUMNS};
use crate::verify::{Progress, Report, Verifier};
use crate::{StoreConfig, StoreError, StoreResult};

/// Verifies the database at `url` (see [`crate::verify`]).
pub async fn verify(url: &str, progress: &dyn Progress) -> StoreResult<Report> {
    let (pool, at) = pool_at(url, &StoreConfig::default())?;
    let mut client = first_connection(&pool, &at).await?;
    let version: Option<i64> = client
        .query_one(
            "SELECT (SELECT max(version) FROM coffer_schema) WHERE to_regclass('coffer_schema') IS NOT NULL",
            &[],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    let version = version.unwrap_or(0);
    if version < schema::SCHEMA_VERSION {
        return Err(StoreError::unavailable(format!(
            "the database is at schema version {version}, older than this binary's {}: run `coffer migrate` first",
            schema::SCHEMA_VERSION
        )));
    }
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_error)?;
    // Whole-table reads: no statement limit, and scans allowed (the servers' sessions forbid them).
    tx.batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL enable_seqscan = on")
        .await
        .map_err(pg_error)?;
    let mut verifier = Verifier::new(read::outbox_chain(&tx).await?);

    progress.stage("events", count(&tx, "outbox").await?);
    each(&tx, &format!("SELECT {OUTBOX_COLUMNS} FROM outbox ORDER BY position"), progress, |row| {
        let position: i64 = row.get(0);
        verifier.outbox_row(codec::outbox_event(row).map_err(|e| e.to_string()), position);
    })
    .await?;
    verifier.outbox_done();

    progress.stage("transfers", count(&tx, "transfers").await?);
    each(&tx, &format!("SELECT {TRANSFER_COLUMNS} FROM transfers ORDER BY seq"), progress, |row| {
        let seq: i64 = row.get(0);
        verifier.transfer_row(codec::transfer(row).map(|(_, t)| t).map_err(|e| e.to_string()), seq);
    })
    .await?;

    progress.stage("accounts", count(&tx, "accounts").await?);
    each(&tx, &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY seq"), progress, |row| {
        let seq: i64 = row.get(0);
        verifier.account_row(codec::account(row).map(|(_, a)| a).map_err(|e| e.to_string()), seq);
    })
    .await?;

    progress.stage("audit", count(&tx, "audit_log").await?);
    each(&tx, &format!("SELECT {} FROM audit_log ORDER BY position", audit::COLUMNS), progress, |row| {
        let position: i64 = row.get(0);
        verifier.audit_row(audit::record(row).map_err(|e| e.to_string()), position);
    })
    .await?;
    let head =
        tx.query_one("SELECT position, hash FROM audit_head WHERE single", &[]).await.map_err(pg_error)?;
    let hash = codec::optional_chain_hash(&head, 1)?
        .ok_or_else(|| codec::damaged("hash", "the audit head has no hash"))?;
    verifier.audit_done(AuditHead { position: head.get(0), hash });
    for key in keys::list(&tx).await? {
        verifier.key_row(Ok(key));
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(verifier.finish())
}

async fn count(tx: &deadpool_postgres::Transaction<'_>, table: &str) -> StoreResult<u64> {
    let n: i64 = tx.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.map_err(pg_error)?.get(0);
    Ok(n as u64)
}

/// Streams the rows of `sql` to `f`, reporting progress every thousand rows.
async fn each(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    progress: &dyn Progress,
    mut f: impl FnMut(&Row),
) -> StoreResult<()> {
    let rows = tx.query_raw(sql, std::iter::empty::<i64>()).await.map_err(pg_error)?;
    pin_mut!(rows);
    let mut done = 0_u64;
    while let Some(row) = rows.try_next().await.map_err(pg_error)? {
        f(&row);
        done += 1;
        if done.is_multiple_of(1000) {
            progress.advance(1000);
        }
    }
    progress.advance(done % 1000);
    Ok(())
}
