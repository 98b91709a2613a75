//! The event pipeline's state on SQLite: positions and leases, the projection, dead letters and
//! webhooks. Writes go through the one writer connection.

use std::time::Duration;

use async_trait::async_trait;
use coffer_ledger::{LedgerCode, Timestamp};
use uuid::Uuid;

use super::SqliteStore;
use super::read;
use crate::{
    Coordination, DeadLetter, DeadLetters, Delivery, DeliveryAttempt, Projections, StoreResult, VolumeEntry,
    VolumeRow, Webhook, WebhookEvent, Webhooks,
};

#[async_trait]
impl Coordination for SqliteStore {
    async fn position(&self, name: &str) -> StoreResult<i64> {
        let name = name.to_owned();
        self.reads.run(move |c| read::relay_position(c, &name)).await
    }

    async fn save_position(&self, name: &str, position: i64, fence: Option<i64>) -> StoreResult<bool> {
        assert!(fence.is_none(), "todo");
        let name = name.to_owned();
        self.write(move |c| {
            c.execute(
                "INSERT INTO relay_positions (name, position) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET position = max(position, excluded.position)",
                rusqlite::params![name, position],
            )
            .map(|_| true)
        })
        .await
    }

    async fn acquire_lease(&self, _name: &str, _holder: &str, _ttl: Duration) -> StoreResult<Option<i64>> {
        todo!()
    }
    async fn release_lease(&self, _name: &str, _holder: &str) -> StoreResult<()> {
        todo!()
    }
    async fn prune_outbox(&self, _up_to_position: i64, _older_than_micros: i64) -> StoreResult<u64> {
        todo!()
    }
}

#[async_trait]
impl Projections for SqliteStore {
    async fn record_volumes(&self, _consumer: &str, _entries: &[VolumeEntry]) -> StoreResult<usize> {
        todo!()
    }
    async fn ledger_volumes(
        &self,
        _ledger: &LedgerCode,
        _from_day: i32,
        _to_day: i32,
    ) -> StoreResult<Vec<VolumeRow>> {
        todo!()
    }
    async fn reset_volumes(&self, _consumer: &str) -> StoreResult<()> {
        todo!()
    }
}

#[async_trait]
impl DeadLetters for SqliteStore {
    async fn add_dead_letter(&self, _letter: DeadLetter) -> StoreResult<()> {
        todo!()
    }
    async fn dead_letters(
        &self,
        _consumer: Option<&str>,
        _after: Option<Uuid>,
        _limit: usize,
    ) -> StoreResult<Vec<DeadLetter>> {
        todo!()
    }
    async fn dead_letter(&self, _id: Uuid) -> StoreResult<Option<DeadLetter>> {
        todo!()
    }
    async fn request_replay(&self, _id: Uuid) -> StoreResult<bool> {
        todo!()
    }
    async fn replays_requested(&self, _consumer: &str, _limit: usize) -> StoreResult<Vec<DeadLetter>> {
        todo!()
    }
    async fn remove_dead_letter(&self, _id: Uuid) -> StoreResult<bool> {
        todo!()
    }
}

#[async_trait]
impl Webhooks for SqliteStore {
    async fn create_webhook(&self, _webhook: Webhook) -> StoreResult<()> {
        todo!()
    }
    async fn webhooks(&self) -> StoreResult<Vec<Webhook>> {
        todo!()
    }
    async fn webhook(&self, _id: Uuid) -> StoreResult<Option<Webhook>> {
        todo!()
    }
    async fn delete_webhook(&self, _id: Uuid) -> StoreResult<bool> {
        todo!()
    }
    async fn enqueue_deliveries(
        &self,
        _consumer: &str,
        _events: &[WebhookEvent],
        _now: Timestamp,
    ) -> StoreResult<usize> {
        todo!()
    }
    async fn claim_due_deliveries(
        &self,
        _now: Timestamp,
        _claim_until: Timestamp,
        _limit: usize,
    ) -> StoreResult<Vec<(Delivery, Webhook)>> {
        todo!()
    }
    async fn record_attempt(&self, _delivery_id: Uuid, _attempt: DeliveryAttempt) -> StoreResult<()> {
        todo!()
    }
    async fn deliveries(
        &self,
        _webhook_id: Uuid,
        _before: Option<Uuid>,
        _limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        todo!()
    }
    async fn delivery(&self, _id: Uuid) -> StoreResult<Option<Delivery>> {
        todo!()
    }
    async fn redeliver(&self, _id: Uuid, _now: Timestamp) -> StoreResult<bool> {
        todo!()
    }
}
