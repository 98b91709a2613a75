//! The event pipeline's state on SQLite: positions and leases, the projection, dead letters and
//! webhooks, one file per trait. Writes go through the one writer connection, between batches;
//! reads through the read pool.

mod coordination;
pub(super) mod dead_letters;
pub(super) mod projection;
pub(super) mod webhooks;

use coffer_ledger::InvalidValue;
use rusqlite::{Connection, Row, Transaction, TransactionBehavior};
use uuid::Uuid;

use super::batch::lock;
use super::codec::invalid;
use super::{SqliteStore, db_error};
use crate::{StoreError, StoreResult};

impl SqliteStore {
    /// Runs `work` in one transaction on the write connection: the writes that must land
    /// together (an effect and its processed record, a claim's select and updates).
    ///
    /// IMMEDIATE takes the write lock up front, so a transaction that reads before it writes
    /// waits for a `coffer keys` writer through the busy timeout instead of failing on upgrade.
    /// Only the commit's own failure leaves the outcome unknown.
    pub(in crate::sqlite) async fn write_tx<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let writer = self.writer.clone();
        let run = move || {
            let writer = lock(&writer);
            let tx =
                Transaction::new_unchecked(&writer.conn, TransactionBehavior::Immediate).map_err(db_error)?;
            let value = work(&tx).map_err(db_error)?;
            tx.commit().map_err(|e| StoreError::outcome_unknown("commit failed").because(e))?;
            Ok(value)
        };
        tokio::task::spawn_blocking(run)
            .await
            .map_err(|e| StoreError::unavailable("write failed").because(e))?
    }
}

/// Records `event_id` as processed by `consumer`; false when it already was. Called in the
/// transaction of the event's effect, which it guards.
fn mark_processed(conn: &Connection, consumer: &str, event_id: Uuid) -> rusqlite::Result<bool> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO processed_events (consumer, event_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )?
        .execute(rusqlite::params![consumer, event_id.as_bytes()])?;
    Ok(inserted == 1)
}

/// A caller's `limit` as SQL wants it; anything past `i64::MAX` means "no limit" anyway.
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A count column (attempts, events) as the unsigned type it is kept in.
fn count<T: TryFrom<i64>>(row: &Row<'_>, column: usize) -> rusqlite::Result<T> {
    T::try_from(row.get::<_, i64>(column)?).map_err(|_| invalid(column, InvalidValue("count out of range")))
}
