//! Dead letters of the in-process bus on PostgreSQL: the event is kept column by column, as the
//! outbox held it.

use async_trait::async_trait;
use coffer_ledger::Timestamp;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use super::super::{PgStore, codec, pg_error};
use super::{count_u32, row_limit};
use crate::{DeadLetter, DeadLetters, OutboxEvent, StoreResult};

const COLUMNS: &str = "id, consumer, position, event_id, source, type, subject, time, data, \
                       error, attempts, failed_at, replay_requested, traceparent";

/// A second letter for the same consumer and event takes the first one's place whole, its id
/// included: it is the newer failure, and ids sort by the time letters died.
const ADD: &str = "\
INSERT INTO dead_letters (id, consumer, position, event_id, source, type, subject, time, data, \
                          error, attempts, failed_at, replay_requested, traceparent) \
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
ON CONFLICT (consumer, event_id) DO UPDATE \
  SET id = excluded.id, position = excluded.position, source = excluded.source, type = excluded.type, \
      subject = excluded.subject, time = excluded.time, data = excluded.data, error = excluded.error, \
      attempts = excluded.attempts, failed_at = excluded.failed_at, \
      replay_requested = excluded.replay_requested, traceparent = excluded.traceparent";

#[async_trait]
impl DeadLetters for PgStore {
    async fn add_dead_letter(&self, letter: DeadLetter) -> StoreResult<()> {
        let DeadLetter { id, consumer, event, error, attempts, failed_at, replay_requested } = letter;
        let client = self.client().await?;
        let statement = client.prepare_cached(ADD).await.map_err(pg_error)?;
        client
            .execute(
                &statement,
                &[
                    &id,
                    &consumer,
                    &event.position,
                    &event.id,
                    &event.source,
                    &event.kind,
                    &event.subject,
                    &event.time.as_micros(),
                    &event.data,
                    &error,
                    &i64::from(attempts),
                    &failed_at.as_micros(),
                    &replay_requested,
                    &event.traceparent.as_ref().map(|trace| trace.as_str()),
                ],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    async fn dead_letters(
        &self,
        consumer: Option<&str>,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<DeadLetter>> {
        // Plans are made per execution (`plan_cache_mode`), so the NULL tests fold away.
        let sql = format!(
            "SELECT {COLUMNS} FROM dead_letters \
             WHERE ($1::text IS NULL OR consumer = $1) AND ($2::uuid IS NULL OR id > $2) \
             ORDER BY id LIMIT $3"
        );
        let client = self.client().await?;
        let statement = client.prepare_cached(&sql).await.map_err(pg_error)?;
        let rows =
            client.query(&statement, &[&consumer, &after, &row_limit(limit)]).await.map_err(pg_error)?;
        rows.iter().map(letter).collect()
    }

    async fn dead_letter(&self, id: Uuid) -> StoreResult<Option<DeadLetter>> {
        let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1");
        let row = self.client().await?.query_opt(&sql, &[&id]).await.map_err(pg_error)?;
        row.map(|row| letter(&row)).transpose()
    }

    async fn request_replay(&self, id: Uuid) -> StoreResult<bool> {
        request_replay(&self.client().await?, id).await
    }

    async fn replays_requested(&self, consumer: &str, limit: usize) -> StoreResult<Vec<DeadLetter>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM dead_letters WHERE consumer = $1 AND replay_requested \
             ORDER BY id LIMIT $2"
        );
        let client = self.client().await?;
        let statement = client.prepare_cached(&sql).await.map_err(pg_error)?;
        let rows = client.query(&statement, &[&consumer, &row_limit(limit)]).await.map_err(pg_error)?;
        rows.iter().map(letter).collect()
    }

    async fn remove_dead_letter(&self, id: Uuid) -> StoreResult<bool> {
        remove(&self.client().await?, id).await
    }

    async fn dead_letter_count(&self) -> StoreResult<u64> {
        let client = self.client().await?;
        let row = client.query_one("SELECT count(*) FROM dead_letters", &[]).await.map_err(pg_error)?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }
}

/// Marks a letter for replay; answers whether there is one.
pub(crate) async fn request_replay(client: &impl GenericClient, id: Uuid) -> StoreResult<bool> {
    let marked = client
        .execute("UPDATE dead_letters SET replay_requested = true WHERE id = $1", &[&id])
        .await
        .map_err(pg_error)?;
    Ok(marked == 1)
}

/// Deletes a letter; answers whether there was one.
pub(crate) async fn remove(client: &impl GenericClient, id: Uuid) -> StoreResult<bool> {
    let removed = client.execute("DELETE FROM dead_letters WHERE id = $1", &[&id]).await.map_err(pg_error)?;
    Ok(removed == 1)
}

/// Whose letter `id` is and which event it holds, locked until the caller's transaction ends.
pub(crate) async fn lock_consumer_and_event(
    client: &impl GenericClient,
    id: Uuid,
) -> StoreResult<Option<(String, Uuid)>> {
    let row = client
        .query_opt("SELECT consumer, event_id FROM dead_letters WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .map_err(pg_error)?;
    row.map(|row| Ok((codec::get(&row, 0)?, codec::get(&row, 1)?))).transpose()
}

fn letter(row: &Row) -> StoreResult<DeadLetter> {
    Ok(DeadLetter {
        id: codec::get(row, 0)?,
        consumer: codec::get(row, 1)?,
        event: OutboxEvent {
            position: codec::get(row, 2)?,
            id: codec::get(row, 3)?,
            source: codec::get(row, 4)?,
            kind: codec::get(row, 5)?,
            subject: codec::get(row, 6)?,
            time: Timestamp::from_micros(codec::get(row, 7)?),
            data: codec::get(row, 8)?,
            traceparent: codec::traceparent(row, 13)?,
            // A dead letter is a copy kept for one consumer, outside the chain.
            hash: None,
        },
        error: codec::get(row, 9)?,
        attempts: count_u32(row, 10, "attempts")?,
        failed_at: Timestamp::from_micros(codec::get(row, 11)?),
        replay_requested: codec::get(row, 12)?,
    })
}
