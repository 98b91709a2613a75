//! Webhook endpoints and deliveries on SQLite. An endpoint's `event_types` is kept as a JSON
//! array; a delivery's status as its `as_str` text. A claim is only a later `next_attempt_at`:
//! it does not change `updated_at`, which moves with attempts and redeliveries.

use async_trait::async_trait;
use coffer_ledger::{InvalidValue, Timestamp};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, ToSql, params, params_from_iter};
use uuid::Uuid;

use super::{SqliteStore, count, mark_processed, sql_limit};
use crate::sqlite::codec::{invalid, small, timestamp, uuid};
use crate::webhooks::fan_out;
use crate::{
    Delivery, DeliveryAttempt, DeliveryStatus, StoreResult, Webhook, WebhookEvent, WebhookSecrets, Webhooks,
};

const WEBHOOK_COLUMNS: &str =
    "w.id, w.url, w.event_types, w.secret, w.created_at, w.previous_secret, w.previous_secret_expires_at";
const DELIVERY_COLUMNS: &str = "d.id, d.webhook_id, d.event_id, d.event_type, d.payload, d.status, \
                                d.attempts, d.next_attempt_at, d.last_status_code, d.last_error, \
                                d.created_at, d.updated_at";
/// Where a claim's webhook columns start, after [`DELIVERY_COLUMNS`].
const CLAIM_WEBHOOK_AT: usize = 12;

#[async_trait]
impl Webhooks for SqliteStore {
    async fn create_webhook(&self, webhook: Webhook) -> StoreResult<Webhook> {
        self.write(move |c| create(c, &webhook).map(|(webhook, _)| webhook)).await
    }

    async fn webhooks(&self) -> StoreResult<Vec<Webhook>> {
        self.reads.run(endpoints).await
    }

    async fn webhook(&self, id: Uuid) -> StoreResult<Option<Webhook>> {
        self.reads
            .run(move |c| {
                let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks w WHERE w.id = ?1");
                c.prepare_cached(&sql)?.query_row([id.as_bytes()], |row| webhook(row, 0)).optional()
            })
            .await
    }

    async fn replace_webhook_secrets(
        &self,
        id: Uuid,
        expected: &str,
        secrets: WebhookSecrets,
    ) -> StoreResult<bool> {
        let expected = expected.to_owned();
        self.write(move |c| replace_secrets(c, id, &expected, &secrets)).await
    }

    async fn delete_webhook(&self, id: Uuid) -> StoreResult<bool> {
        self.write_tx(move |c| delete(c, id)).await
    }

    async fn enqueue_deliveries(
        &self,
        consumer: &str,
        events: &[WebhookEvent],
        now: Timestamp,
    ) -> StoreResult<usize> {
        let (consumer, events) = (consumer.to_owned(), events.to_vec());
        self.write_tx(move |c| enqueue(c, &consumer, &events, now)).await
    }

    async fn claim_due_deliveries(
        &self,
        now: Timestamp,
        claim_until: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<(Delivery, Webhook)>> {
        self.write_tx(move |c| claim(c, now, claim_until, limit)).await
    }

    async fn record_attempt(&self, delivery_id: Uuid, attempt: DeliveryAttempt) -> StoreResult<()> {
        self.write(move |c| record_attempt(c, delivery_id, &attempt)).await
    }

    async fn deliveries(
        &self,
        webhook_id: Uuid,
        before: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        self.reads.run(move |c| deliveries(c, webhook_id, before, limit)).await
    }

    async fn delivery(&self, id: Uuid) -> StoreResult<Option<Delivery>> {
        self.reads
            .run(move |c| {
                let sql = format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d WHERE d.id = ?1");
                c.prepare_cached(&sql)?.query_row([id.as_bytes()], delivery).optional()
            })
            .await
    }

    async fn redeliver(&self, id: Uuid, now: Timestamp) -> StoreResult<bool> {
        self.write(move |c| redeliver(c, id, now)).await
    }
}

/// Registers `webhook` unless its id is taken; answers the endpoint under the id and whether
/// this call registered it.
pub(crate) fn create(conn: &Connection, webhook: &Webhook) -> rusqlite::Result<(Webhook, bool)> {
    let event_types =
        serde_json::to_string(&webhook.event_types).expect("a list of strings always serializes");
    let inserted = conn
        .prepare_cached(
            "INSERT INTO webhooks (id, url, event_types, secret, created_at, previous_secret, \
                               previous_secret_expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![
            webhook.id.as_bytes(),
            webhook.url,
            event_types,
            webhook.secret,
            webhook.created_at.as_micros(),
            webhook.previous_secret,
            webhook.previous_secret_expires_at.map(Timestamp::as_micros),
        ])?;
    let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks w WHERE w.id = ?1");
    let stored =
        conn.prepare_cached(&sql)?.query_row([webhook.id.as_bytes()], |row| self::webhook(row, 0))?;
    Ok((stored, inserted == 1))
}

/// The compare and set of [`Webhooks::replace_webhook_secrets`].
pub(crate) fn replace_secrets(
    conn: &Connection,
    id: Uuid,
    expected: &str,
    secrets: &WebhookSecrets,
) -> rusqlite::Result<bool> {
    let changed = conn
        .prepare_cached(
            "UPDATE webhooks SET secret = ?3, previous_secret = ?4, previous_secret_expires_at = ?5 \
             WHERE id = ?1 AND secret = ?2",
        )?
        .execute(params![
            id.as_bytes(),
            expected,
            secrets.secret,
            secrets.previous_secret,
            secrets.previous_secret_expires_at.map(Timestamp::as_micros),
        ])?;
    Ok(changed == 1)
}

/// Every endpoint, oldest first (id breaks ties of the same microsecond).
fn endpoints(conn: &Connection) -> rusqlite::Result<Vec<Webhook>> {
    let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks w ORDER BY w.created_at, w.id");
    conn.prepare_cached(&sql)?.query_map([], |row| webhook(row, 0))?.collect()
}

/// The endpoint and its deliveries, in the caller's transaction: no delivery outlives it.
pub(crate) fn delete(conn: &Connection, id: Uuid) -> rusqlite::Result<bool> {
    conn.prepare_cached("DELETE FROM webhook_deliveries WHERE webhook_id = ?1")?.execute([id.as_bytes()])?;
    let deleted = conn.prepare_cached("DELETE FROM webhooks WHERE id = ?1")?.execute([id.as_bytes()])?;
    Ok(deleted == 1)
}

/// One pending delivery per subscribed endpoint for each event `consumer` has not processed yet,
/// in the caller's transaction with the processed records.
fn enqueue(
    conn: &Connection,
    consumer: &str,
    events: &[WebhookEvent],
    now: Timestamp,
) -> rusqlite::Result<usize> {
    // Endpoints are few and read once per call, not once per event.
    let endpoints: Vec<(Uuid, Vec<String>)> =
        endpoints(conn)?.into_iter().map(|w| (w.id, w.event_types)).collect();
    let mut insert = conn.prepare_cached(
        "INSERT INTO webhook_deliveries \
             (id, webhook_id, event_id, event_type, payload, status, attempts, next_attempt_at, \
              created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?6, ?6) \
         ON CONFLICT (webhook_id, event_id) DO NOTHING",
    )?;
    let mut fresh = Vec::with_capacity(events.len());
    for event in events {
        if mark_processed(conn, consumer, event.id)? {
            fresh.push(event);
        }
    }
    let mut created = 0;
    for delivery in fan_out(fresh, &endpoints) {
        created += insert.execute(params![
            delivery.id.as_bytes(),
            delivery.webhook_id.as_bytes(),
            delivery.event.id.as_bytes(),
            delivery.event.kind,
            delivery.event.payload,
            now.as_micros(),
        ])?;
    }
    Ok(created)
}

/// Selects the due pending deliveries, oldest due first, and moves each one's due time to
/// `until`; answers them as they are after the claim.
fn claim(
    conn: &Connection,
    now: Timestamp,
    until: Timestamp,
    limit: usize,
) -> rusqlite::Result<Vec<(Delivery, Webhook)>> {
    let due: Vec<(Delivery, Webhook)> = conn
        .prepare_cached(&claim_sql())?
        .query_map(params![now.as_micros(), sql_limit(limit)], |row| {
            Ok((delivery(row)?, webhook(row, CLAIM_WEBHOOK_AT)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut mark = conn.prepare_cached("UPDATE webhook_deliveries SET next_attempt_at = ?2 WHERE id = ?1")?;
    due.into_iter()
        .map(|(mut delivery, webhook)| {
            mark.execute(params![delivery.id.as_bytes(), until.as_micros()])?;
            delivery.next_attempt_at = Some(until);
            Ok((delivery, webhook))
        })
        .collect()
}

/// The due pending deliveries with their endpoints, oldest due first.
fn claim_sql() -> String {
    format!(
        "SELECT {DELIVERY_COLUMNS}, {WEBHOOK_COLUMNS} \
         FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
         WHERE d.status = 'pending' AND d.next_attempt_at <= ?1 \
         ORDER BY d.next_attempt_at, d.id LIMIT ?2"
    )
}

/// Counts the attempt and sets what it came to; the status code and error are this attempt's,
/// so a success clears an earlier error. A delivery deleted meanwhile (its endpoint went) is
/// left gone.
fn record_attempt(conn: &Connection, id: Uuid, attempt: &DeliveryAttempt) -> rusqlite::Result<()> {
    let (status, next) = attempt.next.settles_as();
    conn.prepare_cached(
        "UPDATE webhook_deliveries SET attempts = attempts + 1, status = ?2, next_attempt_at = ?3, \
         last_status_code = ?4, last_error = ?5, updated_at = ?6 WHERE id = ?1",
    )?
    .execute(params![
        id.as_bytes(),
        status.as_str(),
        next.map(Timestamp::as_micros),
        attempt.status_code,
        attempt.error,
        attempt.at.as_micros()
    ])?;
    Ok(())
}

/// An endpoint's deliveries, newest (largest id) first, through its (webhook_id, id) index.
fn deliveries(
    conn: &Connection,
    webhook_id: Uuid,
    before: Option<Uuid>,
    limit: usize,
) -> rusqlite::Result<Vec<Delivery>> {
    let (webhook_id, limit, before) =
        (webhook_id.into_bytes(), sql_limit(limit), before.map(Uuid::into_bytes));
    let mut params: Vec<&dyn ToSql> = vec![&webhook_id, &limit];
    let mut condition = "d.webhook_id = ?1";
    if let Some(before) = &before {
        params.push(before);
        condition = "d.webhook_id = ?1 AND d.id < ?3";
    }
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d WHERE {condition} ORDER BY d.id DESC LIMIT ?2"
    );
    conn.prepare_cached(&sql)?.query_map(params_from_iter(params), delivery)?.collect()
}

/// Pending again and due at `now` with no attempts made; the last status code and error stay,
/// as the record of why it was redelivered.
pub(crate) fn redeliver(conn: &Connection, id: Uuid, now: Timestamp) -> rusqlite::Result<bool> {
    let changed = conn
        .prepare_cached(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?2, \
             updated_at = ?2 WHERE id = ?1",
        )?
        .execute(params![id.as_bytes(), now.as_micros()])?;
    Ok(changed == 1)
}

/// A webhook whose [`WEBHOOK_COLUMNS`] start at column `at`.
fn webhook(row: &Row<'_>, at: usize) -> rusqlite::Result<Webhook> {
    let types = row.get_ref(at + 2)?.as_str()?;
    let event_types = serde_json::from_str(types)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(at + 2, Type::Text, Box::new(e)))?;
    Ok(Webhook {
        id: uuid(row, at)?,
        url: row.get(at + 1)?,
        event_types,
        secret: row.get(at + 3)?,
        created_at: timestamp(row, at + 4)?,
        previous_secret: row.get(at + 5)?,
        previous_secret_expires_at: row.get::<_, Option<i64>>(at + 6)?.map(Timestamp::from_micros),
    })
}

/// A delivery of [`DELIVERY_COLUMNS`].
fn delivery(row: &Row<'_>) -> rusqlite::Result<Delivery> {
    let status = row.get_ref(5)?.as_str()?;
    Ok(Delivery {
        id: uuid(row, 0)?,
        webhook_id: uuid(row, 1)?,
        event_id: uuid(row, 2)?,
        event_type: row.get(3)?,
        payload: row.get(4)?,
        status: DeliveryStatus::parse(status).ok_or_else(|| invalid(5, InvalidValue("unknown status")))?,
        attempts: count(row, 6)?,
        next_attempt_at: row.get::<_, Option<i64>>(7)?.map(Timestamp::from_micros),
        last_status_code: row.get::<_, Option<i64>>(8)?.map(|_| small(row, 8)).transpose()?,
        last_error: row.get(9)?,
        created_at: timestamp(row, 10)?,
        updated_at: timestamp(row, 11)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::schema;

    /// Dispatchers poll often: a claim must walk the due index, never scan every delivery (most
    /// of them succeeded long ago) nor sort.
    #[test]
    fn claims_find_due_deliveries_through_their_index() {
        let dir = tempfile::tempdir().unwrap();
        let conn = schema::open_writer(dir.path()).unwrap();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {}", claim_sql())).unwrap();
        let plan: Vec<String> =
            stmt.query_map([0, 10], |row| row.get(3)).unwrap().map(Result::unwrap).collect();
        let plan = plan.join("\n");
        assert!(plan.contains("USING INDEX webhook_deliveries_due"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
}
