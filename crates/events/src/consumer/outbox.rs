//! The in-process bus: a consumer that tails the outbox itself, for the embedded mode.
//!
//! The outbox already is an ordered, durable log, so no broker is needed in one process: the
//! source reads `events_after` its position and keeps that position in the store, under
//! `consumer.<name>`. The position saved is just below the oldest delivery not yet settled, so
//! a crash re-delivers everything that was not acknowledged (and perhaps some that was; the
//! handlers are idempotent). Retries wait in memory; dead letters and replays are the store's.
//!
//! Several processes may run the same consumer (every replica running the worker role on one
//! database): made [`OutboxSource::exclusive`], a source reads only while it holds the store
//! lease named like its position, and saves the position fenced by the lease's token. The
//! others stand by and take over within a lease when the holder dies; the holder gives the
//! lease up when it is dropped. Each event is then handled by one process, not by every one.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coffer_ledger::Timestamp;
use coffer_store::{DeadLetter, Store};
use tokio::time::Instant;
use uuid::Uuid;

use super::{Delivery, HandlerError, LAG, Source};
use crate::BusError;

pub struct OutboxSource {
    store: Arc<dyn Store>,
    consumer: String,
    /// The position's name in the store.
    position_name: String,
    /// The event types delivered; empty for all.
    types: Vec<String>,
    /// How often to look for new events when there were none.
    poll: Duration,
    /// The last position read from the outbox.
    read: i64,
    /// The last position saved in the store.
    saved: i64,
    /// Positions delivered and not yet acknowledged or dead-lettered (retries included).
    unsettled: BTreeSet<i64>,
    /// Failed deliveries waiting for their next attempt, with the time it is due.
    retries: Vec<(Instant, Delivery<Token>)>,
    /// Dead letters being replayed right now, so a replay is not handed out twice.
    replaying: HashSet<Uuid>,
    /// When the lag gauge was last brought up to date.
    lag_measured: Instant,
    /// The lease this source must hold to read, when it is exclusive.
    lease: Option<Lease>,
}

/// A source's hold on the lease named like its position.
struct Lease {
    holder: String,
    ttl: Duration,
    /// The fencing token, while the lease is held.
    held: Option<i64>,
    /// When the lease was last taken, renewed or found taken: it is asked again a third of its
    /// length later, by the holder to renew it and by a standby to see whether it is free.
    asked: Option<Instant>,
}

/// Where a delivery came from.
pub enum Token {
    /// The outbox's tail.
    Outbox,
    /// A dead letter an operator asked to replay.
    Replay(Uuid),
}

impl OutboxSource {
    /// The name the consumer `consumer`'s position is saved under in the store.
    pub fn position_name(consumer: &str) -> String {
        format!("consumer.{consumer}")
    }

    /// A source for the consumer `consumer`, resuming from its saved position.
    pub async fn open(
        store: Arc<dyn Store>,
        consumer: &str,
        types: Vec<String>,
        poll: Duration,
    ) -> Result<Self, BusError> {
        let position_name = Self::position_name(consumer);
        let saved = store.position(&position_name).await.map_err(unavailable)?;
        Ok(Self {
            store,
            consumer: consumer.to_owned(),
            position_name,
            types,
            poll,
            read: saved,
            saved,
            unsettled: BTreeSet::new(),
            retries: Vec::new(),
            replaying: HashSet::new(),
            lag_measured: Instant::now(),
            lease: None,
        })
    }

    /// This source reads only while it holds the store lease named like its position, taken
    /// for `ttl` and renewed at a third of it: one of several processes running the consumer
    /// reads, the others wait to take over.
    pub fn exclusive(mut self, ttl: Duration) -> Self {
        let holder = format!("consumer-{}", Uuid::now_v7());
        self.lease = Some(Lease { holder, ttl, held: None, asked: None });
        self
    }

    /// Whether this source may read now: always when it is not exclusive; else it takes or
    /// renews the lease when due. On taking it over it starts again from the saved position,
    /// forgetting what it held before, which the previous holder may have settled since.
    async fn may_read(&mut self) -> Result<bool, BusError> {
        let Some(lease) = &mut self.lease else { return Ok(true) };
        if lease.asked.is_some_and(|at| at.elapsed() < lease.ttl / 3) {
            return Ok(lease.held.is_some());
        }
        lease.asked = Some(Instant::now());
        let token = self.store.acquire_lease(&self.position_name, &lease.holder, lease.ttl).await;
        let token = token.map_err(unavailable)?;
        let taken_over = token.is_some() && lease.held != token;
        lease.held = token;
        if taken_over {
            tracing::info!(consumer = %self.consumer, "took the consumer's lease: reading from its saved position");
            self.saved = self.store.position(&self.position_name).await.map_err(unavailable)?;
            self.read = self.saved;
            self.unsettled.clear();
            self.retries.clear();
            self.replaying.clear();
        }
        Ok(token.is_some())
    }

    /// Saves the position below the oldest unsettled delivery, when it moved.
    async fn save_position(&mut self) -> Result<(), BusError> {
        let settled_up_to = self.unsettled.first().map_or(self.read, |oldest| oldest - 1);
        if settled_up_to > self.saved {
            let fence = self.lease.as_ref().and_then(|lease| lease.held);
            let saved = self.store.save_position(&self.position_name, settled_up_to, fence).await;
            if !saved.map_err(unavailable)? {
                tracing::warn!(consumer = %self.consumer, "another process took the consumer's lease over");
                if let Some(lease) = &mut self.lease {
                    lease.held = None;
                }
                return Ok(());
            }
            self.saved = settled_up_to;
        }
        self.measure_lag().await
    }

    /// Once a second: how far the saved position is behind the outbox's end, in positions.
    async fn measure_lag(&mut self) -> Result<(), BusError> {
        if self.lag_measured.elapsed() < Duration::from_secs(1) {
            return Ok(());
        }
        self.lag_measured = Instant::now();
        let end = self.store.last_event_position().await.map_err(unavailable)?;
        metrics::gauge!(LAG, "consumer" => self.consumer.clone()).set((end - self.saved).max(0) as f64);
        Ok(())
    }

    fn due_retries(&mut self, max: usize) -> Vec<Delivery<Token>> {
        let now = Instant::now();
        self.retries.sort_by_key(|(due, _)| *due);
        let due = self.retries.iter().take(max).take_while(|(at, _)| *at <= now).count();
        self.retries.drain(..due).map(|(_, d)| Delivery { attempt: d.attempt + 1, ..d }).collect()
    }

    async fn replays(&mut self, max: usize) -> Result<Vec<Delivery<Token>>, BusError> {
        let letters = self.store.replays_requested(&self.consumer, max).await.map_err(unavailable)?;
        let fresh = letters.into_iter().filter(|l| self.replaying.insert(l.id));
        Ok(fresh.map(|l| Delivery { event: l.event, attempt: 1, token: Token::Replay(l.id) }).collect())
    }

    async fn tail(&mut self, max: usize) -> Result<Vec<Delivery<Token>>, BusError> {
        let events = self.store.events_after(self.read, max).await.map_err(unavailable)?;
        let Some(last) = events.last() else { return Ok(Vec::new()) };
        self.read = last.position;
        let wanted = events.into_iter().filter(|e| self.types.is_empty() || self.types.contains(&e.kind));
        let deliveries: Vec<_> =
            wanted.map(|event| Delivery { event, attempt: 1, token: Token::Outbox }).collect();
        self.unsettled.extend(deliveries.iter().map(|d| d.event.position));
        Ok(deliveries)
    }

    fn settled(&mut self, delivery: &Delivery<Token>) {
        match delivery.token {
            Token::Outbox => self.unsettled.remove(&delivery.event.position),
            Token::Replay(id) => self.replaying.remove(&id),
        };
    }

    /// How long to sleep when nothing is ready: the poll interval, or less if a retry is due sooner.
    fn idle(&self) -> Duration {
        let next_retry =
            self.retries.iter().map(|(due, _)| due.saturating_duration_since(Instant::now())).min();
        next_retry.map_or(self.poll, |due| due.min(self.poll))
    }
}

#[async_trait]
impl Source for OutboxSource {
    type Token = Token;

    async fn next(&mut self, max: usize) -> Result<Vec<Delivery<Token>>, BusError> {
        loop {
            if !self.may_read().await? {
                tokio::time::sleep(self.poll).await;
                continue;
            }
            self.save_position().await?;
            let due = self.due_retries(max);
            if !due.is_empty() {
                return Ok(due);
            }
            let replays = self.replays(max).await?;
            if !replays.is_empty() {
                return Ok(replays);
            }
            let read_before = self.read;
            let fresh = self.tail(max).await?;
            if !fresh.is_empty() {
                return Ok(fresh);
            }
            // A page of other types only: there may be more behind it, so look again at once.
            if self.read == read_before {
                tokio::time::sleep(self.idle()).await;
            }
        }
    }

    async fn ack(&mut self, delivery: Delivery<Token>) -> Result<(), BusError> {
        if let Token::Replay(id) = delivery.token {
            self.store.remove_dead_letter(id).await.map_err(unavailable)?;
        }
        self.settled(&delivery);
        Ok(())
    }

    async fn retry(&mut self, delivery: Delivery<Token>, delay: Duration) -> Result<(), BusError> {
        self.retries.push((Instant::now() + delay, delivery));
        Ok(())
    }

    async fn dead_letter(&mut self, delivery: Delivery<Token>, error: &HandlerError) -> Result<(), BusError> {
        let id = match delivery.token {
            Token::Replay(id) => id,
            Token::Outbox => Uuid::now_v7(),
        };
        let letter = DeadLetter {
            id,
            consumer: self.consumer.clone(),
            event: delivery.event.clone(),
            error: error.0.clone(),
            attempts: delivery.attempt,
            failed_at: Timestamp::now(),
            replay_requested: false,
        };
        self.store.add_dead_letter(letter).await.map_err(unavailable)?;
        self.settled(&delivery);
        Ok(())
    }
}

impl Drop for OutboxSource {
    /// An exclusive source gives its lease up, so that a standby takes over at once rather
    /// than after the lease runs out.
    fn drop(&mut self) {
        let Some(Lease { holder, held: Some(_), .. }) = self.lease.take() else { return };
        let (store, name) = (self.store.clone(), self.position_name.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { store.release_lease(&name, &holder).await });
        }
    }
}

fn unavailable(e: coffer_store::StoreError) -> BusError {
    BusError::Unavailable(format!("store: {e}"))
}
