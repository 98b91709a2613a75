//! The audit trail on SQLite. The single writer makes appends one at a time, so the head row
//! needs no lock of its own: an append reads it, inserts the record and moves it, inside the
//! transaction of the change it records.

use async_trait::async_trait;
use coffer_ledger::{InvalidValue, Timestamp};
use rusqlite::types::Type;
use rusqlite::{Connection, Row, ToSql, params, params_from_iter};
use uuid::Uuid;

use crate::outbox::LoneEvent;

use super::codec::{invalid, timestamp, uuid};
use super::pipeline::{dead_letters, projection, webhooks};
use super::{SqliteStore, keys};
use crate::audit::{AUDIT_EVENT_TYPE, AdminChange, AdminEffect, Administered, AuditHead};
use crate::chain::ChainHash;
use crate::{AuditContext, AuditEntry, AuditFilter, AuditRecord, AuditTrail, StoreResult};

pub(crate) const COLUMNS: &str =
    "position, id, time, actor, action, target, client_address, request_id, outcome, details, hash";

#[async_trait]
impl AuditTrail for SqliteStore {
    async fn administer(&self, change: AdminChange, by: &AuditContext) -> StoreResult<Administered> {
        let by = by.clone();
        self.write_tx(move |c| administer(c, &change, &by, Timestamp::now())).await
    }

    async fn record_audit(&self, entry: AuditEntry) -> StoreResult<AuditRecord> {
        self.write_tx(move |c| {
            open_trail(c)?;
            append(c, entry)
        })
        .await
    }

    async fn audit_records(
        &self,
        filter: &AuditFilter,
        after: i64,
        limit: usize,
    ) -> StoreResult<Vec<AuditRecord>> {
        let filter = filter.clone();
        self.reads.run(move |c| records(c, &filter, after, limit)).await
    }

    async fn audit_head(&self) -> StoreResult<AuditHead> {
        self.reads.run(head).await
    }
}

/// Makes `change` and appends its record when it applied, in the caller's transaction.
pub(crate) fn administer(
    conn: &Connection,
    change: &AdminChange,
    by: &AuditContext,
    now: Timestamp,
) -> rusqlite::Result<Administered> {
    open_trail(conn)?;
    let mut letter = None;
    let effect = match change {
        AdminChange::CreateKey(key) => AdminEffect::Key(keys::create(conn, key.clone(), now)?),
        AdminChange::BootstrapKey(key) => match keys::bootstrap(conn, key.clone(), now)? {
            true => AdminEffect::Key(key.clone().stored(now)),
            false => AdminEffect::Applied(false),
        },
        AdminChange::RotateKey { old, new, old_expires_at } => {
            match keys::by_id(conn, *old)?.filter(|key| key.is_live(now)) {
                None => AdminEffect::Applied(false),
                Some(_) => {
                    let new = keys::create(conn, new.clone(), now)?;
                    let old = keys::expire(conn, *old, *old_expires_at)?
                        .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
                    AdminEffect::Rotated { new, old }
                }
            }
        }
        AdminChange::RevokeKey(id) => AdminEffect::Applied(keys::revoke(conn, *id, now)?),
        AdminChange::CreateWebhook(webhook) => {
            let (webhook, created) = webhooks::create(conn, webhook)?;
            AdminEffect::Webhook { webhook, created }
        }
        AdminChange::RotateWebhookSecret { id, expected, secrets } => {
            AdminEffect::Applied(webhooks::replace_secrets(conn, *id, expected, secrets)?)
        }
        AdminChange::DeleteWebhook(id) => AdminEffect::Applied(webhooks::delete(conn, *id)?),
        AdminChange::Redeliver { delivery, now, .. } => {
            AdminEffect::Applied(webhooks::redeliver(conn, *delivery, *now)?)
        }
        AdminChange::ReplayDeadLetter(id) | AdminChange::DiscardDeadLetter(id) => {
            letter = dead_letters::consumer_and_event(conn, *id)?;
            let applied = match change {
                AdminChange::ReplayDeadLetter(_) => dead_letters::request_replay(conn, *id)?,
                _ => dead_letters::remove(conn, *id)?,
            };
            AdminEffect::Applied(applied)
        }
        AdminChange::ResetProjection { consumer } => {
            projection::reset(conn, consumer)?;
            AdminEffect::Applied(true)
        }
    };
    let letter = letter.as_ref().map(|(consumer, event): &(String, Uuid)| (consumer.as_str(), *event));
    let record = change.entry(&effect, by, letter).map(|entry| append(conn, entry)).transpose()?;
    Ok(Administered { effect, record })
}

/// Before a store's first audit record, records the keys it already holds (see
/// [`crate::audit::adoption`]); does nothing once the trail has begun.
fn open_trail(conn: &Connection) -> rusqlite::Result<()> {
    if head(conn)?.position == 0 {
        let keys = keys::list(conn)?;
        if !keys.is_empty() {
            append(conn, crate::audit::adoption(&keys))?;
        }
    }
    Ok(())
}

/// Appends `entry` after the head, moves the head, and writes the record's event, in the
/// caller's transaction.
pub(crate) fn append(conn: &Connection, entry: AuditEntry) -> rusqlite::Result<AuditRecord> {
    let previous = head(conn)?;
    let record = entry.chained(previous.position + 1, &previous.hash);
    let details = serde_json::to_string(&record.details).expect("a JSON object always serializes");
    conn.prepare_cached(&format!(
        "INSERT INTO audit_log ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
    ))?
    .execute(params![
        record.position,
        record.id.as_bytes(),
        record.time.as_micros(),
        record.actor,
        record.action,
        record.target,
        record.client_address,
        record.request_id,
        record.outcome,
        details,
        record.hash.0,
    ])?;
    conn.prepare_cached("UPDATE audit_head SET position = ?1, hash = ?2 WHERE single = 1")?
        .execute(params![record.position, record.hash.0])?;
    let data = serde_json::to_string(&record).expect("a record always serializes");
    outbox_insert(conn, Uuid::now_v7(), AUDIT_EVENT_TYPE, record.id, record.time, &data)?;
    Ok(record)
}

/// Inserts one event into the outbox, numbered and linked after the outbox's head as a batch's
/// events are (`write::write_events`).
pub(crate) fn outbox_insert(
    conn: &Connection,
    id: Uuid,
    kind: &str,
    subject: Uuid,
    time: Timestamp,
    data: &str,
) -> rusqlite::Result<()> {
    let event = LoneEvent::new(id, kind, subject, time, data)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let (position, head) = super::write::outbox_head(conn)?;
    let (position, hash) = (position + 1, event.link(&head, position + 1));
    conn.prepare_cached("UPDATE outbox_head SET position = ?1, hash = ?2")?
        .execute(params![position, &hash.0[..]])?;
    conn.prepare_cached(
        "INSERT INTO outbox (seq, id, type, subject, time, data, traceparent, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7)",
    )?
    .execute(params![
        position,
        id.as_bytes(),
        kind,
        subject.as_bytes(),
        time.as_micros(),
        event.data,
        &hash.0[..]
    ])?;
    Ok(())
}

pub(crate) fn head(conn: &Connection) -> rusqlite::Result<AuditHead> {
    conn.prepare_cached("SELECT position, hash FROM audit_head WHERE single = 1")?
        .query_row([], |row| Ok(AuditHead { position: row.get(0)?, hash: hash(row, 1)? }))
}

/// One statement per filter shape, in position order: by an index on the filtered column when
/// there is one, else along the table.
fn records(
    conn: &Connection,
    filter: &AuditFilter,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<AuditRecord>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let (since, until) = (filter.since.map(Timestamp::as_micros), filter.until.map(Timestamp::as_micros));
    let mut params: Vec<&dyn ToSql> = vec![&after, &limit];
    let mut conditions = vec!["position > ?1".to_owned()];
    let texts = [
        ("action", &filter.action),
        ("actor", &filter.actor),
        ("target", &filter.target),
        ("outcome", &filter.outcome),
    ];
    for (column, value) in texts {
        if let Some(value) = value {
            params.push(value);
            conditions.push(format!("{column} = ?{}", params.len()));
        }
    }
    for (condition, value) in [("time >=", &since), ("time <", &until)] {
        if let Some(value) = value {
            params.push(value);
            conditions.push(format!("{condition} ?{}", params.len()));
        }
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM audit_log WHERE {} ORDER BY position LIMIT ?2",
        conditions.join(" AND ")
    );
    conn.prepare_cached(&sql)?.query_map(params_from_iter(params), record)?.collect()
}

/// A row of [`COLUMNS`].
pub(crate) fn record(row: &Row<'_>) -> rusqlite::Result<AuditRecord> {
    let details = row.get_ref(9)?.as_str()?;
    let details = serde_json::from_str(details)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(9, Type::Text, Box::new(e)))?;
    Ok(AuditRecord {
        position: row.get(0)?,
        id: uuid(row, 1)?,
        time: timestamp(row, 2)?,
        actor: row.get(3)?,
        action: row.get(4)?,
        target: row.get(5)?,
        client_address: row.get(6)?,
        request_id: row.get(7)?,
        outcome: row.get(8)?,
        details,
        hash: hash(row, 10)?,
    })
}

fn hash(row: &Row<'_>, column: usize) -> rusqlite::Result<ChainHash> {
    let bytes = row.get_ref(column)?.as_blob()?;
    ChainHash::from_slice(bytes).ok_or_else(|| invalid(column, InvalidValue("a hash is not 32 bytes")))
}

/// `change` by `by` in a transaction of its own on `conn`: the offline CLI's way in.
pub(crate) fn administer_alone(
    conn: &mut Connection,
    change: &AdminChange,
    by: &AuditContext,
) -> rusqlite::Result<Administered> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let done = administer(&tx, change, by, Timestamp::now())?;
    tx.commit()?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::schema;

    /// A listing filtered by actor or target walks that column's index in position order.
    #[test]
    fn filtered_listings_use_their_index_without_sorting() {
        let dir = tempfile::tempdir().unwrap();
        let conn = schema::open_writer(dir.path()).unwrap();
        for column in ["actor", "target", "action"] {
            let sql = format!(
                "EXPLAIN QUERY PLAN SELECT {COLUMNS} FROM audit_log WHERE position > ?1 AND {column} = ?3 \
                 ORDER BY position LIMIT ?2"
            );
            let plan: Vec<String> = conn
                .prepare(&sql)
                .unwrap()
                .query_map(params![0, 10, "x"], |row| row.get(3))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let plan = plan.join("\n");
            assert!(plan.contains(&format!("audit_log_by_{column}")), "{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        }
    }
}
