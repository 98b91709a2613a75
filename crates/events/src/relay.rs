//! The relay: publishes the outbox to the bus in position order, at least once, and records how
//! far it got in the store.
//!
//! It saves its position only after the bus acknowledged everything up to it, so a relay that
//! dies in between publishes those events again when it restarts; the bus drops them as
//! duplicates (the event id is the message id) and consumers deduplicate on the id anyway.
//! Positions follow commit order (see `OutboxEvent::position`), so resuming after the saved one
//! never skips an event that committed late.
//!
//! Several relays may run (one per replica): the one holding the store lease named after the
//! relay publishes, the others wait and take over when its lease runs out. Its position is
//! saved with the lease's fencing token, so a relay that stalled past its lease cannot move the
//! position of the relay that replaced it; what it published meanwhile is a duplicate the bus
//! drops. The outbox is one partition: per-account order needs one publisher at a time.

use std::sync::Arc;
use std::time::Duration;

use coffer_store::{Coordination, Outbox, Store};

use crate::bus::{Bus, BusError};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("store: {0}")]
    Store(#[from] coffer_store::StoreError),
    /// Another relay holds the lease now; this one must stop publishing.
    #[error("fenced out: another relay holds the lease")]
    Fenced,
}

/// Generic over the store so that it takes only the outbox and the coordination it uses; any
/// `Arc<dyn Store>` is one.
pub struct Relay<S: ?Sized = dyn Store> {
    store: Arc<S>,
    bus: Arc<dyn Bus>,
    /// The name the position is saved under: one per bus the outbox is relayed to.
    name: String,
    /// Events read and published per round.
    batch: usize,
    /// Who this relay is, for the lease.
    holder: String,
    /// How long a lease lasts unless renewed: a dead relay's successor waits at most this long.
    lease: Duration,
}

impl<S: Outbox + Coordination + ?Sized + 'static> Relay<S> {
    pub fn new(store: Arc<S>, bus: Arc<dyn Bus>, name: impl Into<String>) -> Self {
        let holder = format!("relay-{}", uuid::Uuid::now_v7());
        Self { store, bus, name: name.into(), batch: 1000, holder, lease: Duration::from_secs(5) }
    }

    /// How long the lease lasts (default 5 s).
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Publishes everything after the saved position, up to the current end of the outbox;
    /// answers how many events it published. With `fence`, stops with [`RelayError::Fenced`]
    /// once another relay has taken the lease.
    pub async fn catch_up(&self, fence: Option<i64>) -> Result<usize, RelayError> {
        let mut position = self.store.position(&self.name).await?;
        let mut published = 0;
        loop {
            let events = self.store.events_after(position, self.batch).await?;
            let Some(last) = events.last() else { return Ok(published) };
            self.bus.publish(&events).await?;
            position = last.position;
            if !self.store.save_position(&self.name, position, fence).await? {
                return Err(RelayError::Fenced);
            }
            published += events.len();
        }
    }

    /// Takes or renews the lease; answers the fencing token while this relay is the active one.
    async fn lease(&self) -> Result<Option<i64>, RelayError> {
        Ok(self.store.acquire_lease(&self.name, &self.holder, self.lease).await?)
    }

    /// While it holds the lease, catches up every `interval` until `stop` turns true; a failed
    /// round is logged and retried on the next tick, from the last saved position. Gives the
    /// lease up when stopped, so another relay takes over at once.
    pub async fn run(self, interval: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The lease is renewed at a third of its length, not on every tick.
        let renew_every = self.lease / 3;
        let mut held: Option<(i64, tokio::time::Instant)> = None;
        while !*stop.borrow() {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => continue,
            }
            if held.is_none_or(|(_, at)| at.elapsed() >= renew_every) {
                let renewed_at = tokio::time::Instant::now();
                held = match self.lease().await {
                    Ok(token) => token.map(|token| (token, renewed_at)),
                    Err(e) => {
                        tracing::warn!(error = %e, relay = %self.name, "could not renew the relay lease");
                        None
                    }
                };
            }
            let Some((token, _)) = held else { continue };
            match self.catch_up(Some(token)).await {
                Ok(0) => {}
                Ok(published) => tracing::debug!(published, relay = %self.name, "relayed events"),
                Err(RelayError::Fenced) => {
                    tracing::warn!(relay = %self.name, "another relay took the lease over");
                    held = None;
                }
                Err(e) => tracing::warn!(error = %e, relay = %self.name, "relay round failed; retrying"),
            }
        }
        if let Err(e) = self.store.release_lease(&self.name, &self.holder).await {
            tracing::warn!(error = %e, relay = %self.name, "could not release the relay lease");
        }
    }
}
