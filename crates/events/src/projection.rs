//! The first projection (the data aggregator): per ledger and day, the count and volume of
//! posted transfers by transfer code, served at `GET /v1/ledgers/{code}/stats`.
//!
//! It counts `coffer.transfer.created` events of transfers created posted: direct transfers and
//! the posts of holds (a post is a transfer of its own). A hold counts when it is posted, never
//! when it is made, voided or expires, so the figures are money that actually moved.
//!
//! [`LedgerVolumes::rebuild`] rebuilds it from scratch by replaying the outbox, safely beside
//! its running consumer: both record events under the same consumer name, so whichever applies
//! an event first wins and the other skips it.

use std::sync::Arc;

use async_trait::async_trait;
use coffer_ledger::{Timestamp, Transfer, TransferStatus};
use coffer_store::{
    AdminChange, AuditContext, AuditTrail, Outbox, OutboxEvent, Projections, Store, StoreResult, VolumeEntry,
};

use crate::{Handler, HandlerError};

/// The projection's consumer name: its position, processed records and dead letters.
pub const VOLUMES_CONSUMER: &str = "ledger-volumes";

/// The event type it reads.
pub const VOLUMES_EVENT_TYPE: &str = "coffer.transfer.created";

/// Generic over the store so that it takes only the roles it uses; any `Arc<dyn Store>` is one.
pub struct LedgerVolumes<S: ?Sized = dyn Store> {
    store: Arc<S>,
    consumer: String,
}

impl<S: Outbox + Projections + AuditTrail + ?Sized + 'static> LedgerVolumes<S> {
    pub fn new(store: Arc<S>) -> Self {
        Self { store, consumer: VOLUMES_CONSUMER.into() }
    }

    /// Forgets the projection and applies every event of the outbox again (what retention has
    /// kept: see `events.outbox_retention_hours`); answers how many events it read. The reset
    /// is recorded in the audit trail as `by`'s, in its own transaction.
    pub async fn rebuild(&self, by: &AuditContext) -> StoreResult<u64> {
        const PAGE: usize = 1000;
        self.store.administer(AdminChange::ResetProjection { consumer: self.consumer.clone() }, by).await?;
        let (mut position, mut read) = (0, 0);
        loop {
            let events = self.store.events_after(position, PAGE).await?;
            let Some(last) = events.last() else { return Ok(read) };
            position = last.position;
            read += events.len() as u64;
            // An event that is not a transfer is the store's bug, not the replay's: skip it here
            // as its consumer would dead-letter it.
            let entries: Vec<VolumeEntry> = events.iter().filter_map(|e| entry(e).ok().flatten()).collect();
            if !entries.is_empty() {
                self.store.record_volumes(&self.consumer, &entries).await?;
            }
        }
    }
}

/// Days since 1970-01-01 (UTC) of a time.
pub fn day_of(time: Timestamp) -> i32 {
    const MICROS_PER_DAY: i64 = 86_400_000_000;
    i32::try_from(time.as_micros().div_euclid(MICROS_PER_DAY)).unwrap_or(i32::MAX)
}

/// What an event adds to the projection, if anything.
fn entry(event: &OutboxEvent) -> Result<Option<VolumeEntry>, HandlerError> {
    if event.kind != VOLUMES_EVENT_TYPE {
        return Ok(None);
    }
    let transfer: Transfer = serde_json::from_str(&event.data)
        .map_err(|e| HandlerError::new(format!("event {} holds no transfer: {e}", event.id)))?;
    if transfer.status != TransferStatus::Posted {
        return Ok(None);
    }
    Ok(Some(VolumeEntry {
        event_id: event.id,
        ledger: transfer.ledger,
        day: day_of(transfer.created_at),
        code: transfer.code,
        amount: transfer.amount.get(),
    }))
}

#[async_trait]
impl<S: Outbox + Projections + AuditTrail + ?Sized + 'static> Handler for LedgerVolumes<S> {
    async fn handle(&self, events: &[OutboxEvent]) -> Result<(), HandlerError> {
        let mut entries = Vec::with_capacity(events.len());
        for event in events {
            entries.extend(entry(event)?);
        }
        if entries.is_empty() {
            return Ok(());
        }
        self.store.record_volumes(&self.consumer, &entries).await.map_err(HandlerError::new)?;
        Ok(())
    }
}
