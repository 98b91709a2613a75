//! The relay: publishes the outbox to the bus in position order, at least once, and records how
//! far it got in the store.
//!
//! It saves its position only after the bus acknowledged everything up to it, so a relay that
//! dies in between publishes those events again when it restarts; the bus drops them as
//! duplicates (the event id is the message id) and consumers deduplicate on the id anyway.
//! Positions follow commit order (see `OutboxEvent::position`), so resuming after the saved one
//! never skips an event that committed late.

use std::sync::Arc;
use std::time::Duration;

use coffer_store::Store;

use crate::bus::{Bus, BusError};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("store: {0}")]
    Store(#[from] coffer_store::StoreError),
}

pub struct Relay {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    /// The name the position is saved under: one per bus the outbox is relayed to.
    name: String,
    /// Events read and published per round.
    batch: usize,
}

impl Relay {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, name: impl Into<String>) -> Self {
        Self { store, bus, name: name.into(), batch: 1000 }
    }

    /// Publishes everything after the saved position, up to the current end of the outbox;
    /// answers how many events it published.
    pub async fn catch_up(&self) -> Result<usize, RelayError> {
        let mut position = self.store.position(&self.name).await?;
        let mut published = 0;
        loop {
            let events = self.store.events_after(position, self.batch).await?;
            let Some(last) = events.last() else { return Ok(published) };
            self.bus.publish(&events).await?;
            position = last.position;
            self.store.save_position(&self.name, position, None).await?;
            published += events.len();
        }
    }

    /// Catches up every `interval` until `stop` turns true; a failed round is logged and
    /// retried on the next tick, from the last saved position.
    pub async fn run(self, interval: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*stop.borrow() {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => continue,
            }
            match self.catch_up().await {
                Ok(0) => {}
                Ok(published) => tracing::debug!(published, relay = %self.name, "relayed events"),
                Err(e) => tracing::warn!(error = %e, relay = %self.name, "relay round failed; retrying"),
            }
        }
    }
}
