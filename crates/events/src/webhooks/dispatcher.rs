//! The dispatcher: posts due deliveries to their endpoints and records what happened.
//!
//! Each round claims up to `batch` due deliveries (the claim keeps other dispatchers off them
//! for `claim`, so several replicas can run one each), posts them `concurrency` at a time, and
//! records every attempt as soon as it ends: a 2xx is `Succeeded`; anything else — another
//! status, a timeout, a refused address, a connection error — is retried after the backoff,
//! until the last attempt makes the delivery `Dead`. A dispatcher that dies mid-round leaves
//! its claims to expire and the deliveries are posted again: delivery is at least once, and
//! the `webhook-id` header (the delivery id, the same on every attempt) is what receivers
//! deduplicate on.

use std::sync::Arc;
use std::time::Duration;

use coffer_ledger::Timestamp;
use coffer_store::{AttemptResult, Delivery, DeliveryAttempt, StoreResult, Webhook, Webhooks};
use futures::StreamExt as _;
use tokio::sync::watch;
use tracing::Instrument as _;

use super::rotation::signing_secrets;
use super::sealing::SecretKeys;
use super::settings::{SettingsError, WebhookSettings};
use super::target::{Lookup, SystemLookup};
use super::transport::{Outcome, Transport};
use crate::RetryPolicy;

/// Delivery attempts by what they came to: `result` is `succeeded`, `retry` or `dead`.
pub const WEBHOOK_DELIVERIES: &str = "coffer_webhook_deliveries_total";

/// Why a dispatcher could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    #[error("invalid webhook settings: {0}")]
    Settings(#[from] SettingsError),
    #[error("the webhook HTTP client could not be built: {0}")]
    Client(String),
}

pub struct Dispatcher {
    store: Arc<dyn Webhooks>,
    keys: Arc<SecretKeys>,
    transport: Transport,
    settings: WebhookSettings,
}

impl Dispatcher {
    /// A dispatcher over `store`'s deliveries, opening the endpoints' secrets with `keys`;
    /// fails on settings that cannot work.
    pub fn new(
        store: Arc<dyn Webhooks>,
        settings: WebhookSettings,
        keys: Arc<SecretKeys>,
    ) -> Result<Self, DispatcherError> {
        Self::with_lookup(store, settings, keys, Arc::new(SystemLookup))
    }

    /// The same with names resolved by `lookup` instead of the system's resolver: how tests
    /// make a name resolve into any range without a DNS server.
    pub fn with_lookup(
        store: Arc<dyn Webhooks>,
        settings: WebhookSettings,
        keys: Arc<SecretKeys>,
        lookup: Arc<dyn Lookup>,
    ) -> Result<Self, DispatcherError> {
        settings.validate()?;
        let transport = Transport::new(settings.policy(), settings.request_timeout, lookup)
            .map_err(|e| DispatcherError::Client(e.to_string()))?;
        Ok(Self { store, keys, transport, settings })
    }

    /// Dispatches until `stop` turns true (or its sender is gone). In a round in progress no
    /// new post starts once `stop` has turned, and the posts under way finish and are recorded
    /// (each within `request_timeout`); the deliveries claimed but not posted are not touched:
    /// their claim runs out and the next dispatcher (another replica, or the next process)
    /// posts them, none counted as a failed attempt.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            let pause = match self.round(Some(&stop)).await {
                // A full round: more may be due right now.
                Ok(attempted) if attempted == self.settings.batch => continue,
                Ok(_) => self.settings.poll_interval,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook round failed; trying again");
                    self.settings.poll_interval
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                changed = stop.changed() => if changed.is_err() { break },
            }
        }
    }

    /// One round: claims the deliveries due now, posts them and records each attempt. Answers
    /// how many were attempted, or the first store error (the other attempts were recorded; an
    /// unrecorded one is posted again when its claim runs out).
    pub async fn dispatch_due(&self) -> StoreResult<usize> {
        self.round(None).await
    }

    /// [`Self::dispatch_due`], starting no post once `stop` (when given) has turned true.
    async fn round(&self, stop: Option<&watch::Receiver<bool>>) -> StoreResult<usize> {
        let now = Timestamp::now();
        let claim_until = later(now, self.settings.claim);
        let claimed = self.store.claim_due_deliveries(now, claim_until, self.settings.batch).await?;
        let claimed_count = claimed.len();
        let stopped = || stop.is_some_and(|stop| *stop.borrow());
        let recorded: Vec<StoreResult<()>> = futures::stream::iter(claimed)
            .take_while(|_| std::future::ready(!stopped()))
            .map(|(delivery, webhook)| self.attempt(delivery, webhook))
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;
        let attempted = recorded.len();
        recorded.into_iter().collect::<StoreResult<Vec<()>>>()?;
        if attempted < claimed_count {
            tracing::info!(
                left = claimed_count - attempted,
                "stopping: webhook deliveries claimed but not posted are left to the next dispatcher"
            );
        }
        Ok(attempted)
    }

    /// Posts one delivery and records the attempt.
    async fn attempt(&self, delivery: Delivery, webhook: Webhook) -> StoreResult<()> {
        let span = tracing::info_span!("webhook_delivery", delivery = %delivery.id, webhook = %webhook.id,
            event_type = %delivery.event_type, attempt = delivery.attempts + 1);
        async {
            let sent_at = Timestamp::now();
            let outcome = match signing_secrets(&self.keys, &webhook, sent_at) {
                Ok(secrets) => {
                    self.transport.post(&delivery, &webhook.url, &secrets, unix_seconds(sent_at)).await
                }
                // The error names the key id, never a secret.
                Err(e) => Outcome::Failed(format!("the endpoint's secret is unusable: {e}")),
            };
            let attempt = settle(outcome, delivery.attempts, &self.settings.retry, Timestamp::now());
            observe(&attempt);
            self.store.record_attempt(delivery.id, attempt).await
        }
        .instrument(span)
        .await
    }
}

/// The attempt record of an outcome, the delivery having had `attempts_before` attempts.
fn settle(outcome: Outcome, attempts_before: u32, retry: &RetryPolicy, at: Timestamp) -> DeliveryAttempt {
    let (status_code, error) = match outcome {
        Outcome::Delivered(code) => {
            return DeliveryAttempt {
                at,
                status_code: Some(code),
                error: None,
                next: AttemptResult::Succeeded,
            };
        }
        Outcome::Rejected(code) => (Some(code), Some(format!("the endpoint answered HTTP {code}"))),
        Outcome::Failed(why) => (None, Some(why)),
    };
    let made = attempts_before.saturating_add(1);
    let next = if made >= retry.max_attempts {
        AttemptResult::Dead
    } else {
        AttemptResult::RetryAt(later(at, retry.backoff(made)))
    };
    DeliveryAttempt { at, status_code, error, next }
}

/// Logs and counts an attempt.
fn observe(attempt: &DeliveryAttempt) {
    let error = attempt.error.as_deref().unwrap_or("");
    let result = match attempt.next {
        AttemptResult::Succeeded => {
            tracing::debug!(status = ?attempt.status_code, "webhook delivered");
            "succeeded"
        }
        AttemptResult::RetryAt(due) => {
            tracing::info!(status = ?attempt.status_code, error, retry_at = %due.to_rfc3339(), "webhook attempt failed");
            "retry"
        }
        AttemptResult::Dead => {
            tracing::warn!(status = ?attempt.status_code, error, "webhook delivery out of attempts; dead");
            "dead"
        }
    };
    metrics::counter!(WEBHOOK_DELIVERIES, "result" => result).increment(1);
}

/// `time` plus `delay`, saturating.
pub(super) fn later(time: Timestamp, delay: Duration) -> Timestamp {
    let micros = i64::try_from(delay.as_micros()).unwrap_or(i64::MAX);
    Timestamp::from_micros(time.as_micros().saturating_add(micros))
}

/// The `webhook-timestamp` of a time: whole unix seconds.
fn unix_seconds(time: Timestamp) -> i64 {
    time.as_micros().div_euclid(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_secs(10),
        max_backoff: Duration::from_secs(60),
    };

    #[test]
    fn a_2xx_succeeds_whatever_the_attempt() {
        let at = Timestamp::from_micros(1_000_000);
        let attempt = settle(Outcome::Delivered(204), 2, &RETRY, at);
        assert_eq!(
            attempt,
            DeliveryAttempt { at, status_code: Some(204), error: None, next: AttemptResult::Succeeded }
        );
    }

    #[test]
    fn failures_retry_after_the_backoff_until_the_last_attempt() {
        let at = Timestamp::from_micros(1_000_000);
        let first = settle(Outcome::Rejected(503), 0, &RETRY, at);
        assert_eq!(first.status_code, Some(503));
        let AttemptResult::RetryAt(due) = first.next else { panic!("{first:?}") };
        let waited = due.as_micros() - at.as_micros();
        assert!((5_000_000..=10_000_000).contains(&waited), "waited {waited} µs after the first failure");

        let second = settle(Outcome::Failed("connection refused".into()), 1, &RETRY, at);
        assert_eq!((second.status_code, second.error.as_deref()), (None, Some("connection refused")));
        let AttemptResult::RetryAt(due) = second.next else { panic!("{second:?}") };
        assert!(due.as_micros() - at.as_micros() >= 10_000_000);

        assert_eq!(settle(Outcome::Rejected(500), 2, &RETRY, at).next, AttemptResult::Dead);
    }

    #[test]
    fn timestamps_are_whole_unix_seconds() {
        assert_eq!(unix_seconds(Timestamp::from_micros(1_700_000_000_999_999)), 1_700_000_000);
        assert_eq!(later(Timestamp::from_micros(5), Duration::from_millis(2)).as_micros(), 2_005);
    }
}
