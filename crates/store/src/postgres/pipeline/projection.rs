//! The volume projection on PostgreSQL.
//!
//! Volumes are NUMERIC, which tokio-postgres does not map to an integer type: amounts go in as
//! text cast to numeric, and volumes come back as text parsed into a `u128`.

use async_trait::async_trait;
use coffer_ledger::LedgerCode;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::super::{PgStore, codec, pg_error};
use super::{commit_error, first_of_each};
use crate::{Projections, StoreResult, VolumeEntry, VolumeRow};

/// Records the entries as processed and adds the fresh ones to their rows, in one statement
/// (so one transaction). `ON CONFLICT DO NOTHING` returns only the events no one recorded
/// before: a concurrent caller with the same event waits for ours to commit and then skips it.
/// Both inserts go in key order, so two callers lock rows in the same order and cannot deadlock.
const RECORD: &str = "\
WITH entry AS ( \
    SELECT * FROM unnest($2::uuid[], $3::text[], $4::int[], $5::int[], $6::text[]) \
        AS e(event_id, ledger, day, code, amount) \
), fresh AS ( \
    INSERT INTO processed_events (consumer, event_id) \
    SELECT $1, event_id FROM entry ORDER BY event_id \
    ON CONFLICT DO NOTHING \
    RETURNING event_id \
), applied AS ( \
    INSERT INTO ledger_volumes (ledger, day, code, count, volume) \
    SELECT ledger, day, code, count(*), sum(amount::numeric) \
    FROM entry JOIN fresh USING (event_id) \
    GROUP BY ledger, day, code \
    ORDER BY ledger, day, code \
    ON CONFLICT (ledger, day, code) DO UPDATE \
      SET count = ledger_volumes.count + excluded.count, \
          volume = ledger_volumes.volume + excluded.volume \
) \
SELECT count(*) FROM fresh";

#[async_trait]
impl Projections for PgStore {
    async fn record_volumes(&self, consumer: &str, entries: &[VolumeEntry]) -> StoreResult<usize> {
        // Deduplicated here: a repeated event would otherwise join its one processed record twice.
        let entries = first_of_each(entries, |e| e.event_id);
        if entries.is_empty() {
            return Ok(0);
        }
        let ids: Vec<_> = entries.iter().map(|e| e.event_id).collect();
        let ledgers: Vec<_> = entries.iter().map(|e| e.ledger.as_str()).collect();
        let days: Vec<_> = entries.iter().map(|e| e.day).collect();
        let codes: Vec<_> = entries.iter().map(|e| i32::from(e.code)).collect();
        let amounts: Vec<_> = entries.iter().map(|e| e.amount.to_string()).collect();
        let client = self.client().await?;
        let statement = client.prepare_cached(RECORD).await.map_err(pg_error)?;
        let applied: i64 = client
            .query_one(&statement, &[&consumer, &ids, &ledgers, &days, &codes, &amounts])
            .await
            .map_err(pg_error)?
            .get(0);
        Ok(applied as usize)
    }

    async fn ledger_volumes(
        &self,
        ledger: &LedgerCode,
        from_day: i32,
        to_day: i32,
    ) -> StoreResult<Vec<VolumeRow>> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT day, code, count, volume::text FROM ledger_volumes \
                 WHERE ledger = $1 AND day BETWEEN $2 AND $3 ORDER BY day, code",
            )
            .await
            .map_err(pg_error)?;
        let rows =
            client.query(&statement, &[&ledger.as_str(), &from_day, &to_day]).await.map_err(pg_error)?;
        rows.iter().map(volume_row).collect()
    }

    async fn reset_volumes(&self, consumer: &str) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        reset(&tx, consumer).await?;
        tx.commit().await.map_err(commit_error)
    }
}

/// Forgets the projection and `consumer`'s processed records, in the caller's transaction.
pub(crate) async fn reset(tx: &impl GenericClient, consumer: &str) -> StoreResult<()> {
    // Each DELETE reads its own snapshot (READ COMMITTED). Without the lock, a recording that
    // commits between the two would keep its volume rows (inserted after the first DELETE's
    // snapshot) while losing its processed records to the second: the next replay would count
    // those events twice. EXCLUSIVE waits for recordings in flight and holds off new ones
    // until the reset commits; readers of the projection are not blocked.
    tx.execute("LOCK TABLE ledger_volumes IN EXCLUSIVE MODE", &[]).await.map_err(pg_error)?;
    tx.execute("DELETE FROM ledger_volumes", &[]).await.map_err(pg_error)?;
    tx.execute("DELETE FROM processed_events WHERE consumer = $1", &[&consumer]).await.map_err(pg_error)?;
    Ok(())
}

fn volume_row(row: &Row) -> StoreResult<VolumeRow> {
    let code: i32 = codec::get(row, 1)?;
    let count: i64 = codec::get(row, 2)?;
    let volume: &str = codec::get(row, 3)?;
    Ok(VolumeRow {
        day: codec::get(row, 0)?,
        code: u16::try_from(code).map_err(|_| codec::damaged("code", code))?,
        count: u64::try_from(count).map_err(|_| codec::damaged("count", count))?,
        volume: volume.parse().map_err(|e| codec::damaged("volume", e))?,
    })
}
