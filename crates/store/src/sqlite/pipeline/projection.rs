//! The volume projection on SQLite. A volume can outgrow INTEGER (many amounts near `u64::MAX`),
//! so it is kept as the decimal text of a `u128` and added in Rust, inside the write transaction
//! that also records the event as processed.

use async_trait::async_trait;
use coffer_ledger::{InvalidValue, LedgerCode};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::SqliteStore;
use super::{count, mark_processed};
use crate::sqlite::codec::{invalid, small};
use crate::{Projections, StoreResult, VolumeEntry, VolumeRow};

#[async_trait]
impl Projections for SqliteStore {
    async fn record_volumes(&self, consumer: &str, entries: &[VolumeEntry]) -> StoreResult<usize> {
        let (consumer, entries) = (consumer.to_owned(), entries.to_vec());
        self.write_tx(move |c| record(c, &consumer, &entries)).await
    }

    async fn ledger_volumes(
        &self,
        ledger: &LedgerCode,
        from_day: i32,
        to_day: i32,
    ) -> StoreResult<Vec<VolumeRow>> {
        let ledger = *ledger;
        self.reads.run(move |c| rows(c, &ledger, from_day, to_day)).await
    }

    async fn reset_volumes(&self, consumer: &str) -> StoreResult<()> {
        let consumer = consumer.to_owned();
        self.write_tx(move |c| reset(c, &consumer)).await
    }
}

/// Applies the entries not yet processed by `consumer`; the caller's transaction makes the
/// records and the effects land together.
fn record(conn: &Connection, consumer: &str, entries: &[VolumeEntry]) -> rusqlite::Result<usize> {
    let mut applied = 0;
    for entry in entries {
        // The processed record is inserted first: when it already exists (an earlier call, or an
        // earlier entry of this one) the entry is skipped.
        if !mark_processed(conn, consumer, entry.event_id)? {
            continue;
        }
        add_volume(conn, entry)?;
        applied += 1;
    }
    Ok(applied)
}

/// count + 1 and volume + amount on the entry's row, the sum done exactly in `u128`.
fn add_volume(conn: &Connection, entry: &VolumeEntry) -> rusqlite::Result<()> {
    let key = params![entry.ledger.as_str(), entry.day, entry.code];
    let current: Option<(i64, u128)> = conn
        .prepare_cached(
            "SELECT count, volume FROM ledger_volumes WHERE ledger = ?1 AND day = ?2 AND code = ?3",
        )?
        .query_row(key, |row| Ok((row.get(0)?, volume(row, 1)?)))
        .optional()?;
    let (count, volume) = current.unwrap_or((0, 0));
    // A u128 holds 2^64 amounts of u64::MAX: running out would take more events than can exist.
    let volume = volume.checked_add(u128::from(entry.amount)).expect("a volume never overflows u128");
    conn.prepare_cached(
        "INSERT INTO ledger_volumes (ledger, day, code, count, volume) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (ledger, day, code) DO UPDATE SET count = excluded.count, volume = excluded.volume",
    )?
    .execute(params![entry.ledger.as_str(), entry.day, entry.code, count + 1, volume.to_string()])?;
    Ok(())
}

fn rows(conn: &Connection, ledger: &LedgerCode, from: i32, to: i32) -> rusqlite::Result<Vec<VolumeRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT day, code, count, volume FROM ledger_volumes \
         WHERE ledger = ?1 AND day >= ?2 AND day <= ?3 ORDER BY day, code",
    )?;
    let rows = stmt.query_map(params![ledger.as_str(), from, to], |row| {
        Ok(VolumeRow {
            day: row.get(0)?,
            code: small(row, 1)?,
            count: count(row, 2)?,
            volume: volume(row, 3)?,
        })
    })?;
    rows.collect()
}

/// Forgets every row of the projection and `consumer`'s processed records: a rebuild starts
/// from nothing and counts every replayed event again.
pub(crate) fn reset(conn: &Connection, consumer: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM ledger_volumes", [])?;
    conn.execute("DELETE FROM processed_events WHERE consumer = ?1", [consumer])?;
    Ok(())
}

/// The decimal text of a `u128` sum.
fn volume(row: &Row<'_>, column: usize) -> rusqlite::Result<u128> {
    let text = row.get_ref(column)?.as_str()?;
    text.parse().map_err(|_| invalid(column, InvalidValue("volume is not a decimal u128")))
}
