//! Positions, leases and outbox pruning on PostgreSQL.
//!
//! Lease times come from the database's clock, the one clock every process racing for a lease
//! shares; the processes' own clocks may disagree.

use std::time::Duration;

use async_trait::async_trait;

use super::super::{PgStore, pg_error};
use crate::{Coordination, StoreResult};

/// The database's time, in the microseconds every timestamp column holds. `now()` is fixed for
/// the statement, so the expression means the same instant wherever it appears in one.
const DB_NOW_US: &str = "(extract(epoch FROM now()) * 1000000)::bigint";

/// How many outbox rows one pruning statement deletes, so none runs into `statement_timeout`.
const PRUNE_CHUNK: i64 = 1000;

/// Saves a position unconditionally; it only moves forward.
const SAVE: &str = "INSERT INTO relay_positions (name, position) VALUES ($1, $2) \
                    ON CONFLICT (name) DO UPDATE \
                      SET position = greatest(relay_positions.position, excluded.position)";

/// Saves a position only while the lease `name` has token `$3`. The lease row is read FOR SHARE:
/// a holder change waits for this statement to commit, or, if it committed first, the re-checked
/// row no longer has the token and nothing is written. No row back means fenced out.
const SAVE_FENCED: &str = "WITH lease AS (SELECT 1 FROM leases WHERE name = $1 AND token = $3 FOR SHARE) \
                           INSERT INTO relay_positions (name, position) SELECT $1, $2 FROM lease \
                           ON CONFLICT (name) DO UPDATE \
                             SET position = greatest(relay_positions.position, excluded.position) \
                           RETURNING 1";

#[async_trait]
impl Coordination for PgStore {
    async fn position(&self, name: &str) -> StoreResult<i64> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT position FROM relay_positions WHERE name = $1", &[&name])
            .await
            .map_err(pg_error)?;
        Ok(row.map_or(0, |row| row.get(0)))
    }

    async fn save_position(&self, name: &str, position: i64, fence: Option<i64>) -> StoreResult<bool> {
        let client = self.client().await?;
        let Some(token) = fence else {
            let statement = client.prepare_cached(SAVE).await.map_err(pg_error)?;
            client.execute(&statement, &[&name, &position]).await.map_err(pg_error)?;
            return Ok(true);
        };
        let statement = client.prepare_cached(SAVE_FENCED).await.map_err(pg_error)?;
        let saved = client.query_opt(&statement, &[&name, &position, &token]).await.map_err(pg_error)?;
        Ok(saved.is_some())
    }

    /// One statement, so any number of processes may race: the row is inserted (token 1), or
    /// taken over when it is ours, expired or released. Only renewing a live lease keeps the
    /// token: retaking an expired one is a new tenure even for its last holder, so whatever that
    /// holder did under the old token while it was paused cannot pass the fence.
    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> StoreResult<Option<i64>> {
        // Capped so that now + ttl cannot overflow BIGINT.
        let ttl_us = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX).min(i64::MAX / 2);
        let sql = format!(
            "INSERT INTO leases (name, holder, token, expires_at) VALUES ($1, $2, 1, {DB_NOW_US} + $3) \
             ON CONFLICT (name) DO UPDATE \
               SET holder = excluded.holder, \
                   token = CASE WHEN leases.holder = excluded.holder \
                                     AND leases.expires_at >= {DB_NOW_US} THEN leases.token \
                                ELSE leases.token + 1 END, \
                   expires_at = excluded.expires_at \
               WHERE leases.holder = excluded.holder OR leases.holder IS NULL \
                  OR leases.expires_at < {DB_NOW_US} \
             RETURNING token"
        );
        let client = self.client().await?;
        let statement = client.prepare_cached(&sql).await.map_err(pg_error)?;
        let row = client.query_opt(&statement, &[&name, &holder, &ttl_us]).await.map_err(pg_error)?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Keeps the row with its token (tokens must keep growing) but no holder, so whoever
    /// acquires next, the releasing holder included, gets a new token.
    async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "UPDATE leases SET holder = NULL, expires_at = 0 WHERE name = $1 AND holder = $2",
                &[&name, &holder],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    async fn prune_outbox(&self, up_to_position: i64, older_than_micros: i64) -> StoreResult<u64> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                // The oldest rows, up to the first one too young to go: the outbox stays a
                // whole stretch of the chain, and the anchor takes the last deleted link.
                "WITH chunk AS (SELECT position, time FROM outbox WHERE position <= $1 ORDER BY position LIMIT $3), \
                      young AS (SELECT min(position) AS position FROM chunk WHERE time >= $2), \
                      gone AS (DELETE FROM outbox o USING chunk \
                               WHERE o.position = chunk.position \
                                 AND chunk.position < coalesce((SELECT position FROM young), $1 + 1) \
                               RETURNING o.position, o.hash), \
                      last AS (SELECT position, hash FROM gone ORDER BY position DESC LIMIT 1), \
                      anchor AS (UPDATE outbox_anchor a SET position = last.position, hash = last.hash \
                                 FROM last WHERE last.position > a.position AND last.hash IS NOT NULL) \
                 SELECT count(*) FROM gone",
            )
            .await
            .map_err(pg_error)?;
        let mut total = 0;
        loop {
            let deleted: i64 = client
                .query_one(&statement, &[&up_to_position, &older_than_micros, &PRUNE_CHUNK])
                .await
                .map_err(pg_error)?
                .get(0);
            let deleted = deleted as u64;
            total += deleted;
            if deleted < PRUNE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }
}
