//! Positions, leases and outbox pruning on SQLite.
//!
//! A lease row is never deleted: a release only ends it, so the token of the next holder is still
//! larger than every token handed out before. The token changes whenever a lease that is not live
//! is taken (even by its last holder) and stays the same only while a live lease is renewed.

use std::time::Duration;

use async_trait::async_trait;
use coffer_ledger::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteStore;
use crate::{Coordination, StoreResult};

/// Outbox rows deleted per transaction, so a long prune never holds the writer from batches.
const PRUNE_CHUNK: i64 = 1000;

#[async_trait]
impl Coordination for SqliteStore {
    async fn position(&self, name: &str) -> StoreResult<i64> {
        let name = name.to_owned();
        self.reads.run(move |c| position(c, &name)).await
    }

    async fn save_position(&self, name: &str, position: i64, fence: Option<i64>) -> StoreResult<bool> {
        let name = name.to_owned();
        self.write(move |c| save_position(c, &name, position, fence)).await
    }

    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> StoreResult<Option<i64>> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        let now = Timestamp::now().as_micros();
        let expires_at = now.saturating_add(i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX));
        self.write(move |c| acquire_lease(c, &name, &holder, now, expires_at)).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        let now = Timestamp::now().as_micros();
        self.write(move |c| release_lease(c, &name, &holder, now)).await
    }

    async fn prune_outbox(&self, up_to_position: i64, older_than_micros: i64) -> StoreResult<u64> {
        let mut total = 0;
        // One chunk per transaction; batches get the writer in between.
        loop {
            let (deleted, more) =
                self.write_tx(move |c| prune_chunk(c, up_to_position, older_than_micros)).await?;
            total += deleted;
            if !more {
                return Ok(total);
            }
        }
    }
}

fn position(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    let mut stmt = conn.prepare_cached("SELECT position FROM relay_positions WHERE name = ?1")?;
    Ok(stmt.query_row([name], |row| row.get(0)).optional()?.unwrap_or(0))
}

/// One statement, so the fence check and the write cannot be split by a takeover. The SELECT
/// yields no row when fenced out, so nothing is written and no row changes; otherwise the upsert
/// changes one row even when it keeps the larger position already saved.
fn save_position(conn: &Connection, name: &str, position: i64, fence: Option<i64>) -> rusqlite::Result<bool> {
    let changed = conn
        .prepare_cached(
            "INSERT INTO relay_positions (name, position) SELECT ?1, ?2 \
         WHERE ?3 IS NULL OR EXISTS (SELECT 1 FROM leases WHERE name = ?1 AND token = ?3) \
         ON CONFLICT (name) DO UPDATE SET position = max(position, excluded.position)",
        )?
        .execute(params![name, position, fence])?;
    Ok(changed == 1)
}

/// Takes, renews or is refused the lease in one upsert. A live lease (`expires_at > now`) is
/// renewed only for its holder, keeping the token; a lease that is not live goes to whoever asks,
/// with the next token. The WHERE refuses another holder's live lease: no row comes back.
fn acquire_lease(
    conn: &Connection,
    name: &str,
    holder: &str,
    now: i64,
    expires_at: i64,
) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "INSERT INTO leases (name, holder, token, expires_at) VALUES (?1, ?2, 1, ?4) \
         ON CONFLICT (name) DO UPDATE SET \
             token = CASE WHEN leases.expires_at > ?3 THEN leases.token ELSE leases.token + 1 END, \
             holder = excluded.holder, \
             expires_at = excluded.expires_at \
         WHERE leases.expires_at <= ?3 OR leases.holder = excluded.holder \
         RETURNING token",
    )?
    .query_row(params![name, holder, now, expires_at], |row| row.get(0))
    .optional()
}

/// Ends `holder`'s lease now (if it holds it), keeping the row and its token for the next holder.
fn release_lease(conn: &Connection, name: &str, holder: &str, now: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE leases SET expires_at = min(expires_at, ?3) WHERE name = ?1 AND holder = ?2",
    )?
    .execute(params![name, holder, now])?;
    Ok(())
}

/// Deletes the oldest rows, at most a chunk of them, up to the first one too young to go, so
/// the outbox stays one whole stretch of the chain; the anchor takes the last deleted link.
/// Answers how many went and whether more may go.
fn prune_chunk(conn: &Connection, up_to: i64, older_than: i64) -> rusqlite::Result<(u64, bool)> {
    let chunk: Vec<(i64, i64)> = conn
        .prepare_cached("SELECT seq, time FROM outbox WHERE seq <= ?1 ORDER BY seq LIMIT ?2")?
        .query_map(params![up_to, PRUNE_CHUNK], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let old = chunk.iter().take_while(|(_, time)| *time < older_than).count();
    let Some(&(last, _)) = chunk[..old].last() else { return Ok((0, false)) };
    let hash: Option<Vec<u8>> =
        conn.prepare_cached("SELECT hash FROM outbox WHERE seq = ?1")?.query_row([last], |row| row.get(0))?;
    let deleted = conn.prepare_cached("DELETE FROM outbox WHERE seq <= ?1")?.execute([last])?;
    if let Some(hash) = hash {
        conn.prepare_cached("UPDATE outbox_anchor SET position = ?1, hash = ?2 WHERE position < ?1")?
            .execute(params![last, hash])?;
    }
    Ok((deleted as u64, old == chunk.len() && chunk.len() as i64 == PRUNE_CHUNK))
}
