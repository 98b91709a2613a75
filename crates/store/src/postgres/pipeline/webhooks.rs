//! Webhook endpoints and deliveries on PostgreSQL.
//!
//! Several dispatchers (one per process) claim from the same table: a claim locks the rows it
//! takes and skips the ones another dispatcher is taking, so no delivery is handed out twice
//! while its claim runs.

use std::collections::HashSet;

use async_trait::async_trait;
use coffer_ledger::Timestamp;
use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::super::{PgStore, codec, pg_error};
use super::{commit_error, count_u32, first_of_each, row_limit};
use crate::webhooks::fan_out;
use crate::{
    Delivery, DeliveryAttempt, DeliveryStatus, StoreResult, Webhook, WebhookEvent, WebhookSecrets, Webhooks,
};

/// Queries name deliveries `d` and endpoints `w`; the decoders below read columns in this order.
const DELIVERY_COLUMNS: &str = "d.id, d.webhook_id, d.event_id, d.event_type, d.payload, d.status, \
                                d.attempts, d.next_attempt_at, d.last_status_code, d.last_error, \
                                d.created_at, d.updated_at";
const WEBHOOK_COLUMNS: &str =
    "w.id, w.url, w.event_types, w.secret, w.created_at, w.previous_secret, w.previous_secret_expires_at";
/// Where the endpoint's columns start in a row of both.
const WEBHOOK_AT: usize = 12;

/// Takes the due rows no other dispatcher is taking (`SKIP LOCKED`), pushes their due time to
/// the claim's end, and answers them with their endpoints in the order they were due.
fn claim_sql() -> String {
    format!(
        "WITH due AS ( \
             SELECT id, next_attempt_at AS due_at FROM webhook_deliveries \
             WHERE status = 'pending' AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at, id LIMIT $3 \
             FOR UPDATE SKIP LOCKED \
         ), claimed AS ( \
             UPDATE webhook_deliveries d SET next_attempt_at = $2 FROM due WHERE d.id = due.id \
             RETURNING d.*, due.due_at \
         ) \
         SELECT {DELIVERY_COLUMNS}, {WEBHOOK_COLUMNS} \
         FROM claimed d JOIN webhooks w ON w.id = d.webhook_id \
         ORDER BY d.due_at, d.id"
    )
}

#[async_trait]
impl Webhooks for PgStore {
    async fn create_webhook(&self, webhook: Webhook) -> StoreResult<Webhook> {
        Ok(create(&self.client().await?, &webhook).await?.0)
    }

    async fn webhooks(&self) -> StoreResult<Vec<Webhook>> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks w ORDER BY w.created_at, w.id");
        let rows = self.client().await?.query(&sql, &[]).await.map_err(pg_error)?;
        rows.iter().map(|row| webhook(row, 0)).collect()
    }

    async fn webhook(&self, id: Uuid) -> StoreResult<Option<Webhook>> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks w WHERE w.id = $1");
        let row = self.client().await?.query_opt(&sql, &[&id]).await.map_err(pg_error)?;
        row.map(|row| webhook(&row, 0)).transpose()
    }

    async fn replace_webhook_secrets(
        &self,
        id: Uuid,
        expected: &str,
        secrets: WebhookSecrets,
    ) -> StoreResult<bool> {
        replace_secrets(&self.client().await?, id, expected, &secrets).await
    }

    async fn delete_webhook(&self, id: Uuid) -> StoreResult<bool> {
        delete(&self.client().await?, id).await
    }

    async fn enqueue_deliveries(
        &self,
        consumer: &str,
        events: &[WebhookEvent],
        now: Timestamp,
    ) -> StoreResult<usize> {
        let events = first_of_each(events, |e| e.id);
        if events.is_empty() {
            return Ok(0);
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let fresh = mark_processed(&tx, consumer, &events).await?;
        let events: Vec<&WebhookEvent> = events.into_iter().filter(|e| fresh.contains(&e.id)).collect();
        let created = insert_deliveries(&tx, &events, now).await?;
        tx.commit().await.map_err(commit_error)?;
        Ok(created)
    }

    async fn claim_due_deliveries(
        &self,
        now: Timestamp,
        claim_until: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<(Delivery, Webhook)>> {
        let client = self.client().await?;
        let statement = client.prepare_cached(&claim_sql()).await.map_err(pg_error)?;
        let rows = client
            .query(&statement, &[&now.as_micros(), &claim_until.as_micros(), &row_limit(limit)])
            .await
            .map_err(pg_error)?;
        rows.iter().map(|row| Ok((delivery(row)?, webhook(row, WEBHOOK_AT)?))).collect()
    }

    async fn record_attempt(&self, delivery_id: Uuid, attempt: DeliveryAttempt) -> StoreResult<()> {
        let (status, next) = attempt.next.settles_as();
        let next = next.map(Timestamp::as_micros);
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, status = $2, next_attempt_at = $3, \
                   last_status_code = $4, last_error = $5, updated_at = $6 \
                 WHERE id = $1",
            )
            .await
            .map_err(pg_error)?;
        let code = attempt.status_code.map(i32::from);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
            [&delivery_id, &status.as_str(), &next, &code, &attempt.error, &attempt.at.as_micros()];
        client.execute(&statement, &params).await.map_err(pg_error)?;
        Ok(())
    }

    async fn deliveries(
        &self,
        webhook_id: Uuid,
        before: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d \
             WHERE d.webhook_id = $1 AND ($2::uuid IS NULL OR d.id < $2) \
             ORDER BY d.id DESC LIMIT $3"
        );
        let client = self.client().await?;
        let statement = client.prepare_cached(&sql).await.map_err(pg_error)?;
        let rows =
            client.query(&statement, &[&webhook_id, &before, &row_limit(limit)]).await.map_err(pg_error)?;
        rows.iter().map(delivery).collect()
    }

    async fn delivery(&self, id: Uuid) -> StoreResult<Option<Delivery>> {
        let sql = format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d WHERE d.id = $1");
        let row = self.client().await?.query_opt(&sql, &[&id]).await.map_err(pg_error)?;
        row.map(|row| delivery(&row)).transpose()
    }

    /// The last attempt's status code and error stay: they say why it needed redelivering.
    async fn redeliver(&self, id: Uuid, now: Timestamp) -> StoreResult<bool> {
        redeliver(&self.client().await?, id, now).await
    }
}

/// Registers `webhook` unless its id is taken; answers the endpoint under the id and whether
/// this call registered it. One statement: the insert does nothing when the id is taken, and
/// the row read back is then the first one (the SELECT's snapshot does not see the new row, so
/// exactly one of the two parts answers).
pub(crate) async fn create(client: &impl GenericClient, webhook: &Webhook) -> StoreResult<(Webhook, bool)> {
    let sql = format!(
        "WITH inserted AS ( \
             INSERT INTO webhooks (id, url, event_types, secret, created_at, previous_secret, \
                                   previous_secret_expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING RETURNING * \
         ) \
         SELECT {WEBHOOK_COLUMNS}, true FROM inserted w \
         UNION ALL SELECT {WEBHOOK_COLUMNS}, false FROM webhooks w WHERE w.id = $1"
    );
    let params: [&(dyn ToSql + Sync); 7] = [
        &webhook.id,
        &webhook.url,
        &webhook.event_types,
        &webhook.secret,
        &webhook.created_at.as_micros(),
        &webhook.previous_secret,
        &webhook.previous_secret_expires_at.map(Timestamp::as_micros),
    ];
    let row = client.query_one(&sql, &params).await.map_err(pg_error)?;
    Ok((self::webhook(&row, 0)?, codec::get(&row, 7)?))
}

/// The compare and set of [`Webhooks::replace_webhook_secrets`].
pub(crate) async fn replace_secrets(
    client: &impl GenericClient,
    id: Uuid,
    expected: &str,
    secrets: &WebhookSecrets,
) -> StoreResult<bool> {
    let changed = client
        .execute(
            "UPDATE webhooks SET secret = $3, previous_secret = $4, previous_secret_expires_at = $5 \
             WHERE id = $1 AND secret = $2",
            &[
                &id,
                &expected,
                &secrets.secret,
                &secrets.previous_secret,
                &secrets.previous_secret_expires_at.map(Timestamp::as_micros),
            ],
        )
        .await
        .map_err(pg_error)?;
    Ok(changed == 1)
}

/// Deletes an endpoint; its deliveries go with it (`ON DELETE CASCADE`).
pub(crate) async fn delete(client: &impl GenericClient, id: Uuid) -> StoreResult<bool> {
    let deleted = client.execute("DELETE FROM webhooks WHERE id = $1", &[&id]).await.map_err(pg_error)?;
    Ok(deleted == 1)
}

/// Pending again and due at `now`, with no attempts made.
pub(crate) async fn redeliver(client: &impl GenericClient, id: Uuid, now: Timestamp) -> StoreResult<bool> {
    let changed = client
        .execute(
            "UPDATE webhook_deliveries \
             SET status = 'pending', attempts = 0, next_attempt_at = $2, updated_at = $2 WHERE id = $1",
            &[&id, &now.as_micros()],
        )
        .await
        .map_err(pg_error)?;
    Ok(changed == 1)
}

/// Records `events` as processed by `consumer`; answers the ids nobody had recorded before,
/// the only ones to deliver. Inserted in id order so concurrent callers cannot deadlock.
async fn mark_processed(
    tx: &Transaction<'_>,
    consumer: &str,
    events: &[&WebhookEvent],
) -> StoreResult<HashSet<Uuid>> {
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let statement = tx
        .prepare_cached(
            "INSERT INTO processed_events (consumer, event_id) \
             SELECT $1, id FROM unnest($2::uuid[]) AS e(id) ORDER BY id \
             ON CONFLICT DO NOTHING RETURNING event_id",
        )
        .await
        .map_err(pg_error)?;
    let rows = tx.query(&statement, &[&consumer, &ids]).await.map_err(pg_error)?;
    rows.iter().map(|row| codec::get(row, 0)).collect()
}

/// One pending delivery, due at `now`, per event and subscribed endpoint. The endpoints are
/// locked against deletion until the transaction ends, so none vanishes before its deliveries
/// are in. Ids are v7 UUIDs made here, in event order, so deliveries sort by creation.
async fn insert_deliveries(
    tx: &Transaction<'_>,
    events: &[&WebhookEvent],
    now: Timestamp,
) -> StoreResult<usize> {
    if events.is_empty() {
        return Ok(0);
    }
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let endpoints = tx
        .query(
            "SELECT id, event_types FROM webhooks WHERE event_types && $1::text[] \
             ORDER BY created_at, id FOR KEY SHARE",
            &[&kinds],
        )
        .await
        .map_err(pg_error)?
        .iter()
        .map(|row| Ok((codec::get::<Uuid>(row, 0)?, codec::get::<Vec<String>>(row, 1)?)))
        .collect::<StoreResult<Vec<_>>>()?;
    let deliveries = fan_out(events.iter().copied(), &endpoints);
    let ids: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
    let webhook_ids: Vec<Uuid> = deliveries.iter().map(|d| d.webhook_id).collect();
    let event_ids: Vec<Uuid> = deliveries.iter().map(|d| d.event.id).collect();
    let types: Vec<&str> = deliveries.iter().map(|d| d.event.kind.as_str()).collect();
    let payloads: Vec<&str> = deliveries.iter().map(|d| d.event.payload.as_str()).collect();
    if ids.is_empty() {
        return Ok(0);
    }
    let statement = tx
        .prepare_cached(
            "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, payload, status, \
                                             attempts, next_attempt_at, created_at, updated_at) \
             SELECT id, webhook_id, event_id, event_type, payload, 'pending', 0, $6, $6, $6 \
             FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[]) \
               AS d(id, webhook_id, event_id, event_type, payload) \
             ON CONFLICT (webhook_id, event_id) DO NOTHING",
        )
        .await
        .map_err(pg_error)?;
    let created = tx
        .execute(&statement, &[&ids, &webhook_ids, &event_ids, &types, &payloads, &now.as_micros()])
        .await
        .map_err(pg_error)?;
    Ok(created as usize)
}

fn webhook(row: &Row, at: usize) -> StoreResult<Webhook> {
    Ok(Webhook {
        id: codec::get(row, at)?,
        url: codec::get(row, at + 1)?,
        event_types: codec::get(row, at + 2)?,
        secret: codec::get(row, at + 3)?,
        created_at: Timestamp::from_micros(codec::get(row, at + 4)?),
        previous_secret: codec::get(row, at + 5)?,
        previous_secret_expires_at: codec::get::<Option<i64>>(row, at + 6)?.map(Timestamp::from_micros),
    })
}

fn delivery(row: &Row) -> StoreResult<Delivery> {
    let status: &str = codec::get(row, 5)?;
    let code: Option<i32> = codec::get(row, 8)?;
    Ok(Delivery {
        id: codec::get(row, 0)?,
        webhook_id: codec::get(row, 1)?,
        event_id: codec::get(row, 2)?,
        event_type: codec::get(row, 3)?,
        payload: codec::get(row, 4)?,
        status: DeliveryStatus::parse(status).ok_or_else(|| codec::damaged("status", status))?,
        attempts: count_u32(row, 6, "attempts")?,
        next_attempt_at: codec::get::<Option<i64>>(row, 7)?.map(Timestamp::from_micros),
        last_status_code: code
            .map(|c| u16::try_from(c).map_err(|_| codec::damaged("last_status_code", c)))
            .transpose()?,
        last_error: codec::get(row, 9)?,
        created_at: Timestamp::from_micros(codec::get(row, 10)?),
        updated_at: Timestamp::from_micros(codec::get(row, 11)?),
    })
}
