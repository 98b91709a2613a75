//! The consumer runtime: one way to run an event handler over either bus.
//!
//! A [`Source`] hands out deliveries (the in-process one tails the outbox, the JetStream one
//! pulls from a durable consumer); the [`Consumer`] runs the handler on them and settles each:
//! acknowledged when handled, retried after an exponential backoff with jitter when the handler
//! failed, and moved to the dead letters with the error once it has failed `max_attempts` times.
//! Delivery is at least once, so handlers are idempotent: they record the event as processed in
//! the same transaction as their effect.
//!
//! Deliveries are handled a batch at a time (one transaction for many events is what keeps a
//! projection up with thousands of events a second); when a batch fails, its events are tried
//! one by one so that only the failing one is retried.

mod jetstream;
mod outbox;

use std::time::Duration;

use async_trait::async_trait;
use coffer_store::OutboxEvent;
use tokio::sync::watch;

pub(crate) use self::jetstream::unavailable_js;
pub use self::jetstream::{JetStreamSource, JetStreamSourceSettings};
pub use self::outbox::OutboxSource;
use crate::BusError;

/// Why a handler did not handle an event. Its text goes into the dead letter.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

impl HandlerError {
    pub fn new(why: impl std::fmt::Display) -> Self {
        Self(why.to_string())
    }
}

/// What reacts to events: a projection, the webhook fan-out, a saga step.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles `events` (in delivery order) all or nothing, idempotently: an event handled
    /// before may be delivered again and must change nothing the second time.
    async fn handle(&self, events: &[OutboxEvent]) -> Result<(), HandlerError>;
}

#[async_trait]
impl<H: Handler + ?Sized> Handler for std::sync::Arc<H> {
    async fn handle(&self, events: &[OutboxEvent]) -> Result<(), HandlerError> {
        (**self).handle(events).await
    }
}

/// One event as a source delivered it.
pub struct Delivery<T> {
    pub event: OutboxEvent,
    /// 1 on the first delivery, counting up on each redelivery.
    pub attempt: u32,
    /// What the source needs to settle it.
    pub(crate) token: T,
}

/// Where a consumer's deliveries come from and how they are settled.
#[async_trait]
pub trait Source: Send + 'static {
    type Token: Send + Sync;

    /// Waits for the next deliveries (at least one, at most `max`) in delivery order.
    async fn next(&mut self, max: usize) -> Result<Vec<Delivery<Self::Token>>, BusError>;
    /// The delivery was handled: never deliver it again.
    async fn ack(&mut self, delivery: Delivery<Self::Token>) -> Result<(), BusError>;
    /// The handler failed: deliver it again after `delay`.
    async fn retry(&mut self, delivery: Delivery<Self::Token>, delay: Duration) -> Result<(), BusError>;
    /// The handler failed for the last time: keep it as a dead letter with `error`, and ack it.
    async fn dead_letter(
        &mut self,
        delivery: Delivery<Self::Token>,
        error: &HandlerError,
    ) -> Result<(), BusError>;
}

/// How often a failing event is tried and how long to wait in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts before the event goes to the dead letters (at least 1).
    pub max_attempts: u32,
    /// The delay after the first failure; it doubles after each further one.
    pub initial_backoff: Duration,
    /// The longest delay.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1`: `initial · 2^(attempt−1)`, capped, with "equal
    /// jitter" — half of it fixed and half random — so that failures that happened together
    /// do not retry together, while the schedule stays observable (never under half).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponential = self.initial_backoff.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = exponential.min(self.max_backoff);
        let half = capped / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// Runs one handler over one source until stopped.
pub struct Consumer<S: Source, H: Handler> {
    /// The consumer's durable name, used in logs and metrics.
    name: String,
    source: S,
    handler: H,
    retry: RetryPolicy,
    /// Deliveries handled in one call of the handler.
    batch: usize,
}

impl<S: Source, H: Handler> Consumer<S, H> {
    pub fn new(name: impl Into<String>, source: S, handler: H, retry: RetryPolicy) -> Self {
        Self { name: name.into(), source, handler, retry, batch: 500 }
    }

    /// Handles deliveries until `stop` turns true. A source error (the bus is down) is logged
    /// and retried after a pause: the deliveries it did not settle come again.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            let deliveries = tokio::select! {
                next = self.source.next(self.batch) => next,
                _ = stop.changed() => continue,
            };
            let result = match deliveries {
                Ok(deliveries) => self.settle(deliveries).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!(consumer = %self.name, error = %e, "consumer round failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }

    /// Handles a batch and settles each delivery in it.
    async fn settle(&mut self, deliveries: Vec<Delivery<S::Token>>) -> Result<(), BusError> {
        let events: Vec<OutboxEvent> = deliveries.iter().map(|d| d.event.clone()).collect();
        match self.handler.handle(&events).await {
            Ok(()) => {
                for delivery in deliveries {
                    self.source.ack(delivery).await?;
                }
            }
            Err(error) if deliveries.len() == 1 => {
                let delivery = deliveries.into_iter().next().expect("one delivery");
                self.failed(delivery, error).await?;
            }
            Err(_) => {
                for delivery in deliveries {
                    match self.handler.handle(std::slice::from_ref(&delivery.event)).await {
                        Ok(()) => self.source.ack(delivery).await?,
                        Err(error) => self.failed(delivery, error).await?,
                    }
                }
            }
        }
        Ok(())
    }

    async fn failed(&mut self, delivery: Delivery<S::Token>, error: HandlerError) -> Result<(), BusError> {
        if delivery.attempt >= self.retry.max_attempts {
            self.report_failure(&delivery, &error, None);
            return self.source.dead_letter(delivery, &error).await;
        }
        let delay = self.retry.backoff(delivery.attempt);
        self.report_failure(&delivery, &error, Some(delay));
        self.source.retry(delivery, delay).await
    }

    /// Logs and counts a failed delivery, retried after `delay` or, without one, dead-lettered.
    /// (Kept out of `failed`, whose future must not hold a borrow of the name across an await.)
    fn report_failure(&self, delivery: &Delivery<S::Token>, error: &HandlerError, delay: Option<Duration>) {
        let (consumer, event, attempt) = (&self.name, delivery.event.id, delivery.attempt);
        match delay {
            None => {
                tracing::error!(%consumer, %event, attempt, %error, "handler gave up; event dead-lettered");
                metrics::counter!(DEAD_LETTERED, "consumer" => consumer.clone()).increment(1);
            }
            Some(delay) => {
                tracing::warn!(%consumer, %event, attempt, ?delay, %error, "handler failed; retrying later");
                metrics::counter!(REDELIVERIES, "consumer" => consumer.clone()).increment(1);
            }
        }
    }
}

/// Deliveries retried after a handler failed, by consumer.
pub const REDELIVERIES: &str = "coffer_consumer_redeliveries_total";
/// Deliveries moved to the dead letters, by consumer.
pub const DEAD_LETTERED: &str = "coffer_consumer_dead_lettered_total";
/// Events published but not yet handled, by consumer.
pub const LAG: &str = "coffer_consumer_lag_events";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_initial_delay_up_to_the_cap_with_bounded_jitter() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        for (attempt, full) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (30, 1000)] {
            for _ in 0..50 {
                let delay = policy.backoff(attempt).as_millis();
                assert!((full / 2..=full).contains(&delay), "attempt {attempt}: {delay} ms");
            }
        }
    }
}
