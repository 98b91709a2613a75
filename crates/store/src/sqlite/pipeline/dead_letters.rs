//! Dead letters on SQLite: one row per consumer and event, the event's envelope in its own
//! columns. Ids are v7 UUIDs kept as 16 big-endian bytes, so BLOB order is id order.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, ToSql, params, params_from_iter};
use uuid::Uuid;

use super::{SqliteStore, count, sql_limit};
use crate::sqlite::codec::{timestamp, traceparent, uuid};
use crate::{DeadLetter, DeadLetters, OutboxEvent, StoreResult};

const COLUMNS: &str = "id, consumer, position, event_id, source, type, subject, time, data, error, \
                       attempts, failed_at, replay_requested, traceparent";

#[async_trait]
impl DeadLetters for SqliteStore {
    async fn add_dead_letter(&self, letter: DeadLetter) -> StoreResult<()> {
        self.write(move |c| add(c, &letter)).await
    }

    async fn dead_letters(
        &self,
        consumer: Option<&str>,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<DeadLetter>> {
        let consumer = consumer.map(str::to_owned);
        self.reads.run(move |c| list(c, consumer.as_deref(), after, limit)).await
    }

    async fn dead_letter(&self, id: Uuid) -> StoreResult<Option<DeadLetter>> {
        self.reads.run(move |c| get(c, id)).await
    }

    async fn request_replay(&self, id: Uuid) -> StoreResult<bool> {
        self.write(move |c| request_replay(c, id)).await
    }

    async fn replays_requested(&self, consumer: &str, limit: usize) -> StoreResult<Vec<DeadLetter>> {
        let consumer = consumer.to_owned();
        self.reads.run(move |c| replays(c, &consumer, limit)).await
    }

    async fn remove_dead_letter(&self, id: Uuid) -> StoreResult<bool> {
        self.write(move |c| remove(c, id)).await
    }

    async fn dead_letter_count(&self) -> StoreResult<u64> {
        let count: i64 = self
            .reads
            .run(|c| c.query_row("SELECT count(*) FROM dead_letters", [], |row| row.get(0)))
            .await?;
        Ok(count.max(0) as u64)
    }
}

/// Marks a letter for replay; answers whether there is one.
pub(crate) fn request_replay(conn: &Connection, id: Uuid) -> rusqlite::Result<bool> {
    let changed = conn
        .prepare_cached("UPDATE dead_letters SET replay_requested = 1 WHERE id = ?1")?
        .execute([id.as_bytes()])?;
    Ok(changed == 1)
}

/// Deletes a letter; answers whether there was one.
pub(crate) fn remove(conn: &Connection, id: Uuid) -> rusqlite::Result<bool> {
    let changed = conn.prepare_cached("DELETE FROM dead_letters WHERE id = ?1")?.execute([id.as_bytes()])?;
    Ok(changed == 1)
}

/// Whose letter `id` is and which event it holds, when there is one.
pub(crate) fn consumer_and_event(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<(String, Uuid)>> {
    conn.prepare_cached("SELECT consumer, event_id FROM dead_letters WHERE id = ?1")?
        .query_row([id.as_bytes()], |row| Ok((row.get(0)?, uuid(row, 1)?)))
        .optional()
}

/// Inserts the letter, or overwrites the whole row (its id included) of the earlier letter for
/// the same consumer and event: the latest failure is the one an operator acts on.
fn add(conn: &Connection, letter: &DeadLetter) -> rusqlite::Result<()> {
    let event = &letter.event;
    conn.prepare_cached(&format!(
        "INSERT INTO dead_letters ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
         ON CONFLICT (consumer, event_id) DO UPDATE SET \
             id = excluded.id, position = excluded.position, source = excluded.source, \
             type = excluded.type, subject = excluded.subject, time = excluded.time, \
             data = excluded.data, error = excluded.error, attempts = excluded.attempts, \
             failed_at = excluded.failed_at, replay_requested = excluded.replay_requested, \
             traceparent = excluded.traceparent"
    ))?
    .execute(params![
        letter.id.as_bytes(),
        letter.consumer,
        event.position,
        event.id.as_bytes(),
        event.source,
        event.kind,
        event.subject.as_bytes(),
        event.time.as_micros(),
        event.data,
        letter.error,
        letter.attempts,
        letter.failed_at.as_micros(),
        letter.replay_requested,
        event.traceparent.as_ref().map(|trace| trace.as_str()),
    ])?;
    Ok(())
}

/// One statement per filter shape, each walking an index in id order.
fn list(
    conn: &Connection,
    consumer: Option<&str>,
    after: Option<Uuid>,
    limit: usize,
) -> rusqlite::Result<Vec<DeadLetter>> {
    let limit = sql_limit(limit);
    let after = after.map(|id| *id.as_bytes());
    let mut params: Vec<&dyn ToSql> = vec![&limit];
    let mut conditions = vec!["1"];
    if let Some(consumer) = &consumer {
        params.push(consumer);
        conditions.push("consumer = ?2");
    }
    if let Some(after) = &after {
        params.push(after);
        conditions.push(if consumer.is_some() { "id > ?3" } else { "id > ?2" });
    }
    let sql =
        format!("SELECT {COLUMNS} FROM dead_letters WHERE {} ORDER BY id LIMIT ?1", conditions.join(" AND "));
    conn.prepare_cached(&sql)?.query_map(params_from_iter(params), letter)?.collect()
}

fn get(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<DeadLetter>> {
    let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = ?1");
    conn.prepare_cached(&sql)?.query_row([id.as_bytes()], letter).optional()
}

fn replays(conn: &Connection, consumer: &str, limit: usize) -> rusqlite::Result<Vec<DeadLetter>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM dead_letters WHERE consumer = ?1 AND replay_requested ORDER BY id LIMIT ?2"
    );
    conn.prepare_cached(&sql)?.query_map(params![consumer, sql_limit(limit)], letter)?.collect()
}

/// A row of [`COLUMNS`].
fn letter(row: &Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        id: uuid(row, 0)?,
        consumer: row.get(1)?,
        event: OutboxEvent {
            position: row.get(2)?,
            id: uuid(row, 3)?,
            source: row.get(4)?,
            kind: row.get(5)?,
            subject: uuid(row, 6)?,
            time: timestamp(row, 7)?,
            data: row.get(8)?,
            traceparent: traceparent(row, 13)?,
            // A dead letter is a copy kept for one consumer, outside the chain.
            hash: None,
        },
        error: row.get(9)?,
        attempts: count(row, 10)?,
        failed_at: timestamp(row, 11)?,
        replay_requested: row.get(12)?,
    })
}
