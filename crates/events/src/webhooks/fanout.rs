//! The webhook consumer: turns events into deliveries.
//!
//! It does no HTTP. Posting inside a consumer would tie the event stream to the slowest
//! endpoint, and one endpoint that is down would hold back every other one; so the consumer
//! only records, in one store transaction per batch, a pending delivery per subscribed
//! endpoint together with the event's processed mark (a redelivered event changes nothing),
//! and the [`Dispatcher`](super::Dispatcher) posts the deliveries, each on its own schedule.

use std::sync::Arc;

use async_trait::async_trait;
use coffer_ledger::Timestamp;
use coffer_store::{OutboxEvent, WebhookEvent, Webhooks};

use crate::{Handler, HandlerError, encode};

/// The webhook consumer's name: its position, processed records and dead letters.
pub const WEBHOOKS_CONSUMER: &str = "webhooks";

/// The [`Handler`] that fans events out to the endpoints subscribed to their types.
pub struct WebhookFanout {
    store: Arc<dyn Webhooks>,
}

impl WebhookFanout {
    pub fn new(store: Arc<dyn Webhooks>) -> Self {
        Self { store }
    }
}

/// What is posted for an event: its CloudEvent, JSON structured mode.
fn webhook_event(event: &OutboxEvent) -> Result<WebhookEvent, HandlerError> {
    let json =
        encode(event).map_err(|e| HandlerError::new(format!("event {} does not encode: {e}", event.id)))?;
    let payload =
        String::from_utf8(json).map_err(|e| HandlerError::new(format!("event {}: {e}", event.id)))?;
    Ok(WebhookEvent { id: event.id, kind: event.kind.clone(), payload })
}

#[async_trait]
impl Handler for WebhookFanout {
    async fn handle(&self, events: &[OutboxEvent]) -> Result<(), HandlerError> {
        if events.is_empty() {
            return Ok(());
        }
        let events = events.iter().map(webhook_event).collect::<Result<Vec<_>, _>>()?;
        let created = self
            .store
            .enqueue_deliveries(WEBHOOKS_CONSUMER, &events, Timestamp::now())
            .await
            .map_err(HandlerError::new)?;
        tracing::debug!(events = events.len(), deliveries = created, "webhook deliveries enqueued");
        Ok(())
    }
}
