//! The audit trail on PostgreSQL. Many replicas append at once, so every append locks the one
//! head row (`FOR UPDATE`) after the change's own locks and moves it before its transaction
//! commits: appends take turns on it, positions come out gap-free and in commit order, and a
//! transaction that rolls back gives its position back. The head row is taken before the
//! outbox clock, which every writer takes last.

use async_trait::async_trait;
use coffer_ledger::Timestamp;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::outbox::LoneEvent;

use super::pipeline::{commit_error, dead_letters, projection, webhooks};
use super::{PgStore, codec, keys, pg_error};
use crate::audit::{AUDIT_EVENT_TYPE, AdminChange, AdminEffect, Administered, AuditHead};
use crate::chain::ChainHash;
use crate::{AuditContext, AuditEntry, AuditFilter, AuditRecord, AuditTrail, StoreError, StoreResult};

pub(super) const COLUMNS: &str =
    "position, id, time, actor, action, target, client_address, request_id, outcome, details, hash";

#[async_trait]
impl AuditTrail for PgStore {
    async fn administer(&self, change: AdminChange, by: &AuditContext) -> StoreResult<Administered> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let done = administer(&tx, &change, by, Timestamp::now()).await?;
        tx.commit().await.map_err(commit_error)?;
        Ok(done)
    }

    async fn record_audit(&self, entry: AuditEntry) -> StoreResult<AuditRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        open_trail(&tx).await?;
        let record = append(&tx, entry).await?;
        tx.commit().await.map_err(commit_error)?;
        Ok(record)
    }

    async fn audit_records(
        &self,
        filter: &AuditFilter,
        after: i64,
        limit: usize,
    ) -> StoreResult<Vec<AuditRecord>> {
        // Plans are made per execution (`plan_cache_mode`), so the NULL tests fold away and an
        // equality filter can use its (column, position) index.
        let sql = format!(
            "SELECT {COLUMNS} FROM audit_log WHERE position > $1 \
               AND ($3::text IS NULL OR action = $3) AND ($4::text IS NULL OR actor = $4) \
               AND ($5::text IS NULL OR target = $5) AND ($6::text IS NULL OR outcome = $6) \
               AND ($7::bigint IS NULL OR time >= $7) AND ($8::bigint IS NULL OR time < $8) \
             ORDER BY position LIMIT $2"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let statement = client.prepare_cached(&sql).await.map_err(pg_error)?;
        let rows = client
            .query(
                &statement,
                &[
                    &after,
                    &limit,
                    &filter.action,
                    &filter.actor,
                    &filter.target,
                    &filter.outcome,
                    &filter.since.map(Timestamp::as_micros),
                    &filter.until.map(Timestamp::as_micros),
                ],
            )
            .await
            .map_err(pg_error)?;
        rows.iter().map(record).collect()
    }

    async fn audit_head(&self) -> StoreResult<AuditHead> {
        let row = self
            .client()
            .await?
            .query_one("SELECT position, hash FROM audit_head WHERE single", &[])
            .await
            .map_err(pg_error)?;
        Ok(AuditHead { position: codec::get(&row, 0)?, hash: hash(&row, 1)? })
    }
}

/// Makes `change` and appends its record when it applied, in the caller's transaction.
pub(super) async fn administer(
    tx: &impl GenericClient,
    change: &AdminChange,
    by: &AuditContext,
    now: Timestamp,
) -> StoreResult<Administered> {
    open_trail(tx).await?;
    let mut letter = None;
    let effect = match change {
        AdminChange::CreateKey(key) => AdminEffect::Key(keys::create(tx, key.clone(), now).await?),
        AdminChange::BootstrapKey(key) => match keys::bootstrap_in(tx, key, now).await? {
            true => AdminEffect::Key(key.clone().stored(now)),
            false => AdminEffect::Applied(false),
        },
        AdminChange::RotateKey { old, new, old_expires_at } => {
            match keys::lock_by_id(tx, *old).await?.filter(|key| key.is_live(now)) {
                None => AdminEffect::Applied(false),
                Some(_) => {
                    let new = keys::create(tx, new.clone(), now).await?;
                    let old = keys::expire(tx, *old, *old_expires_at)
                        .await?
                        .ok_or_else(|| StoreError::unavailable("a locked key vanished"))?;
                    AdminEffect::Rotated { new, old }
                }
            }
        }
        AdminChange::RevokeKey(id) => AdminEffect::Applied(keys::revoke(tx, *id, now).await?),
        AdminChange::CreateWebhook(webhook) => {
            let (webhook, created) = webhooks::create(tx, webhook).await?;
            AdminEffect::Webhook { webhook, created }
        }
        AdminChange::RotateWebhookSecret { id, expected, secrets } => {
            AdminEffect::Applied(webhooks::replace_secrets(tx, *id, expected, secrets).await?)
        }
        AdminChange::DeleteWebhook(id) => AdminEffect::Applied(webhooks::delete(tx, *id).await?),
        AdminChange::Redeliver { delivery, now, .. } => {
            AdminEffect::Applied(webhooks::redeliver(tx, *delivery, *now).await?)
        }
        AdminChange::ReplayDeadLetter(id) => {
            letter = dead_letters::lock_consumer_and_event(tx, *id).await?;
            AdminEffect::Applied(dead_letters::request_replay(tx, *id).await?)
        }
        AdminChange::DiscardDeadLetter(id) => {
            letter = dead_letters::lock_consumer_and_event(tx, *id).await?;
            AdminEffect::Applied(dead_letters::remove(tx, *id).await?)
        }
        AdminChange::ResetProjection { consumer } => {
            projection::reset(tx, consumer).await?;
            AdminEffect::Applied(true)
        }
    };
    let letter = letter.as_ref().map(|(consumer, event): &(String, Uuid)| (consumer.as_str(), *event));
    let record = match change.entry(&effect, by, letter) {
        Some(entry) => Some(append(tx, entry).await?),
        None => None,
    };
    Ok(Administered { effect, record })
}

/// Before a store's first audit record, records the keys it already holds (see
/// [`crate::audit::adoption`]); does nothing once the trail has begun. Only then does it lock
/// the head before the change's own locks: replicas starting together adopt the keys once.
async fn open_trail(tx: &impl GenericClient) -> StoreResult<()> {
    const POSITION: &str = "SELECT position FROM audit_head WHERE single";
    let started = |row: Row| codec::get::<i64>(&row, 0).map(|position| position > 0);
    if started(tx.query_one(POSITION, &[]).await.map_err(pg_error)?)? {
        return Ok(());
    }
    let locked = tx.query_one(&format!("{POSITION} FOR UPDATE"), &[]).await.map_err(pg_error)?;
    if started(locked)? {
        return Ok(());
    }
    let keys = keys::list(tx).await?;
    if !keys.is_empty() {
        append(tx, crate::audit::adoption(&keys)).await?;
    }
    Ok(())
}

/// Appends `entry` after the head (locked until the caller's transaction ends), moves the head,
/// and writes the record's event.
pub(super) async fn append(tx: &impl GenericClient, entry: AuditEntry) -> StoreResult<AuditRecord> {
    let row = tx
        .query_one("SELECT position, hash FROM audit_head WHERE single FOR UPDATE", &[])
        .await
        .map_err(pg_error)?;
    let (position, previous): (i64, ChainHash) = (codec::get(&row, 0)?, hash(&row, 1)?);
    let record = entry.chained(position + 1, &previous);
    let details = serde_json::to_string(&record.details).expect("a JSON object always serializes");
    tx.execute(
        &format!("INSERT INTO audit_log ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"),
        &[
            &record.position,
            &record.id,
            &record.time.as_micros(),
            &record.actor,
            &record.action,
            &record.target,
            &record.client_address,
            &record.request_id,
            &record.outcome,
            &details,
            &record.hash.0.as_slice(),
        ],
    )
    .await
    .map_err(pg_error)?;
    tx.execute(
        "UPDATE audit_head SET position = $1, hash = $2 WHERE single",
        &[&record.position, &record.hash.0.as_slice()],
    )
    .await
    .map_err(pg_error)?;
    let data = serde_json::to_string(&record).expect("a record always serializes");
    outbox_insert(tx, Uuid::now_v7(), AUDIT_EVENT_TYPE, record.id, record.time, &data).await?;
    Ok(record)
}

/// Inserts one event into the outbox as a batch's events are (`coffer_append_events`: numbered
/// and linked after the `outbox_clock` row, locked until the caller's transaction ends).
pub(super) async fn outbox_insert(
    tx: &impl GenericClient,
    id: Uuid,
    kind: &str,
    subject: Uuid,
    time: Timestamp,
    data: &str,
) -> StoreResult<()> {
    let event = LoneEvent::new(id, kind, subject, time, data)
        .map_err(|e| StoreError::invalid("an audit event's data is not JSON").because(e))?;
    let (head, tail) = event.chain();
    let no_trace: Option<&str> = None;
    let (ids, kinds, subjects) = ([id], [kind], [subject]);
    let (data, traces, heads, tails) = ([event.data.as_str()], [no_trace], [head], [tail]);
    tx.execute(
        "SELECT coffer_append_events($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &&ids[..],
            &&kinds[..],
            &&subjects[..],
            &time.as_micros(),
            &&data[..],
            &&traces[..],
            &&heads[..],
            &&tails[..],
        ],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

pub(super) fn record(row: &Row) -> StoreResult<AuditRecord> {
    let details: &str = codec::get(row, 9)?;
    Ok(AuditRecord {
        position: codec::get(row, 0)?,
        id: codec::get(row, 1)?,
        time: Timestamp::from_micros(codec::get(row, 2)?),
        actor: codec::get(row, 3)?,
        action: codec::get(row, 4)?,
        target: codec::get(row, 5)?,
        client_address: codec::get(row, 6)?,
        request_id: codec::get(row, 7)?,
        outcome: codec::get(row, 8)?,
        details: serde_json::from_str(details).map_err(|e| codec::damaged("details", e))?,
        hash: hash(row, 10)?,
    })
}

fn hash(row: &Row, column: usize) -> StoreResult<ChainHash> {
    let bytes: &[u8] = codec::get(row, column)?;
    ChainHash::from_slice(bytes).ok_or_else(|| codec::damaged("hash", "not 32 bytes"))
}
