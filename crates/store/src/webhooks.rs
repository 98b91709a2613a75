//! Webhook endpoints and their deliveries: the notification service's state.
//!
//! The webhook consumer turns each event into one delivery row per endpoint subscribed to its
//! type (recording the event as processed in the same transaction), and the dispatcher claims
//! due deliveries, posts them and records each attempt. A delivery that ran out of attempts is
//! `dead`: the endpoint's dead letter, delivered again only on request.

use async_trait::async_trait;
use coffer_ledger::Timestamp;
use uuid::Uuid;

use crate::StoreResult;

/// A registered endpoint. The secret is kept to sign deliveries; the API shows it only once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    /// CloudEvents types delivered to it; never empty.
    pub event_types: Vec<String>,
    /// The signing secret as the webhook engine stores it: sealed (`whenc1.…`, see
    /// `coffer_events::SecretKeys`), or `whsec_…` in clear in rows written before sealing.
    /// The store keeps the text as given and never looks inside.
    pub secret: String,
    /// The secret before the last rotation, stored like `secret`: deliveries are signed with
    /// it too until `previous_secret_expires_at`, so receivers can switch without a gap.
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

/// An endpoint's secrets, as a rotation or a re-sealing writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSecrets {
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<Timestamp>,
}

/// An event on its way to the webhook consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    pub id: Uuid,
    /// The CloudEvents `type`, matched against the endpoints' `event_types`.
    pub kind: String,
    /// What is posted: the CloudEvent in JSON structured mode.
    pub payload: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (`next_attempt_at`).
    Pending,
    /// The endpoint answered 2xx.
    Succeeded,
    /// Out of attempts: the endpoint's dead letter.
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "succeeded" => Self::Succeeded,
            "dead" => Self::Dead,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// A v7 UUID: deliveries sort by the time they were created. It is also the
    /// `webhook-id` header, the same on every attempt so receivers deduplicate on it.
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub payload: String,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    /// When a pending delivery is next due (or when a claim on it runs out).
    pub next_attempt_at: Option<Timestamp>,
    /// The HTTP status of the last attempt, when one came back.
    pub last_status_code: Option<u16>,
    /// Why the last attempt failed, when it did.
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    pub at: Timestamp,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub next: AttemptResult,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    Succeeded,
    /// Failed; try again at this time.
    RetryAt(Timestamp),
    /// Failed for the last time.
    Dead,
}

impl AttemptResult {
    /// What the delivery becomes: its status, and when a delivery still pending is next due.
    pub fn settles_as(self) -> (DeliveryStatus, Option<Timestamp>) {
        match self {
            Self::Succeeded => (DeliveryStatus::Succeeded, None),
            Self::RetryAt(at) => (DeliveryStatus::Pending, Some(at)),
            Self::Dead => (DeliveryStatus::Dead, None),
        }
    }
}

/// A delivery the fan-out decided to make: the endpoint it goes to and the event it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NewDelivery<'a> {
    /// A v7 UUID made in fan-out order, so deliveries sort by creation.
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub event: &'a WebhookEvent,
}

/// The fan-out, the same on every backend: one delivery per event, in event order, for each
/// endpoint subscribed to its type, in the order `endpoints` lists them (oldest first).
/// `endpoints` pairs each endpoint's id with its subscribed types.
pub(crate) fn fan_out<'a>(
    events: impl IntoIterator<Item = &'a WebhookEvent>,
    endpoints: &[(Uuid, Vec<String>)],
) -> Vec<NewDelivery<'a>> {
    let mut deliveries = Vec::new();
    for event in events {
        for (webhook_id, subscribed) in endpoints {
            if subscribed.contains(&event.kind) {
                deliveries.push(NewDelivery { id: Uuid::now_v7(), webhook_id: *webhook_id, event });
            }
        }
    }
    deliveries
}

#[async_trait]
pub trait Webhooks: Send + Sync {
    /// Registers `webhook`, or, when its id is taken, changes nothing and answers the endpoint
    /// registered under it: a create retried after its answer was lost (the api derives the id
    /// from the Idempotency-Key) finds the first one instead of making a second.
    async fn create_webhook(&self, webhook: Webhook) -> StoreResult<Webhook>;
    /// Every endpoint, oldest first.
    async fn webhooks(&self) -> StoreResult<Vec<Webhook>>;
    async fn webhook(&self, id: Uuid) -> StoreResult<Option<Webhook>>;
    /// Replaces an endpoint's secrets if its `secret` is still `expected` (compare and set: of
    /// two rotations, or a rotation and a re-sealing, racing, one loses instead of one
    /// overwriting the other). Answers whether it replaced them.
    async fn replace_webhook_secrets(
        &self,
        id: Uuid,
        expected: &str,
        secrets: WebhookSecrets,
    ) -> StoreResult<bool>;
    /// Deletes an endpoint and its deliveries; answers whether it existed.
    async fn delete_webhook(&self, id: Uuid) -> StoreResult<bool>;

    /// For each event not yet processed by `consumer`: one pending delivery, due at `now`, per
    /// endpoint whose `event_types` holds the event's type, and the processed record, all in one
    /// transaction. Answers how many deliveries it created. Repeated events change nothing.
    async fn enqueue_deliveries(
        &self,
        consumer: &str,
        events: &[WebhookEvent],
        now: Timestamp,
    ) -> StoreResult<usize>;

    /// Claims up to `limit` pending deliveries due at `now` (oldest due first) by moving their
    /// `next_attempt_at` to `claim_until`, so that another dispatcher does not take them too,
    /// and answers them with their endpoints. A dispatcher that dies leaves its claims to expire.
    async fn claim_due_deliveries(
        &self,
        now: Timestamp,
        claim_until: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<(Delivery, Webhook)>>;

    /// Records an attempt: attempts + 1, the status code and error, and the new status
    /// (`Succeeded`, `Pending` due at the retry time, or `Dead`).
    async fn record_attempt(&self, delivery_id: Uuid, attempt: DeliveryAttempt) -> StoreResult<()>;

    /// An endpoint's deliveries, newest first, before `before` when given, at most `limit`.
    async fn deliveries(
        &self,
        webhook_id: Uuid,
        before: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>>;

    async fn delivery(&self, id: Uuid) -> StoreResult<Option<Delivery>>;

    /// Makes a delivery pending again, due at `now`, with its attempt count back at 0 (manual
    /// redelivery, typically of a dead one); answers false when there is no such delivery.
    async fn redeliver(&self, id: Uuid, now: Timestamp) -> StoreResult<bool>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str) -> WebhookEvent {
        WebhookEvent { id: Uuid::now_v7(), kind: kind.into(), payload: "{}".into() }
    }

    #[test]
    fn fan_out_makes_one_delivery_per_subscribed_endpoint_in_order() {
        let (created, posted) = (event("coffer.transfer.created"), event("coffer.transfer.posted"));
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let endpoints = [
            (a, vec!["coffer.transfer.created".to_owned()]),
            (b, vec!["coffer.transfer.posted".to_owned(), "coffer.transfer.created".to_owned()]),
        ];
        let deliveries = fan_out([&created, &posted], &endpoints);
        let made: Vec<(Uuid, Uuid)> = deliveries.iter().map(|d| (d.event.id, d.webhook_id)).collect();
        assert_eq!(made, [(created.id, a), (created.id, b), (posted.id, b)]);
        assert!(deliveries.windows(2).all(|w| w[0].id < w[1].id), "ids sort by creation");
        assert!(fan_out([&event("coffer.account.created")], &endpoints).is_empty());
    }

    #[test]
    fn an_attempt_settles_the_delivery() {
        let at = Timestamp::from_micros(7);
        assert_eq!(AttemptResult::Succeeded.settles_as(), (DeliveryStatus::Succeeded, None));
        assert_eq!(AttemptResult::RetryAt(at).settles_as(), (DeliveryStatus::Pending, Some(at)));
        assert_eq!(AttemptResult::Dead.settles_as(), (DeliveryStatus::Dead, None));
    }
}
