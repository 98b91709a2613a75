//! Where the relay publishes: a [`Bus`], and its NATS JetStream implementation.
//!
//! JetStream subjects are `<prefix>.<entity>.<action>` (`coffer.transfer.created` with the
//! default prefix), so consumers filter by event type with subject wildcards. Every message
//! carries `Nats-Msg-Id` = the event id: a re-publication inside the stream's duplicate window
//! (a relay that crashed after publishing but before saving its position) is dropped by the
//! server, and consumers deduplicate on the id beyond it.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use coffer_store::OutboxEvent;

use crate::encode;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("an outbox row is not a valid event: {0}")]
    Encoding(#[from] serde_json::Error),
    /// A list cursor that this bus never handed out.
    #[error("not a cursor of this list: {0}")]
    InvalidCursor(String),
}

/// A broker that stores events durably before it acknowledges them.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes `events` in order and returns once the broker has stored all of them. On an
    /// error, any of them may or may not be stored: the caller publishes them again.
    async fn publish(&self, events: &[OutboxEvent]) -> Result<(), BusError>;
}

/// The stream the events go to.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub name: String,
    /// The first subject token, `coffer` by default.
    pub subject_prefix: String,
    /// How long JetStream remembers message ids to drop re-published events.
    pub duplicate_window: Duration,
    /// Copies of the stream in a cluster: 3 in production (R3), 1 on a single server.
    pub replicas: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            name: "COFFER_EVENTS".into(),
            subject_prefix: "coffer".into(),
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
        }
    }
}

/// The JetStream subject of an event type: `coffer.transfer.created` → `<prefix>.transfer.created`.
pub(crate) fn subject(prefix: &str, kind: &str) -> String {
    format!("{prefix}.{}", kind.strip_prefix("coffer.").unwrap_or(kind))
}

#[derive(Clone)]
pub struct JetStreamBus {
    context: jetstream::Context,
    prefix: String,
}

impl JetStreamBus {
    /// Connects, and creates the stream (file storage, the duplicate window, the replicas) or
    /// brings an existing one to these settings.
    pub async fn connect(url: &str, settings: &StreamSettings) -> Result<Self, BusError> {
        // A cluster is given as a comma-separated list of servers; the client fails over among
        // them. The URL stays out of the error: it may hold credentials.
        let servers: Vec<&str> = url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        let client = async_nats::connect(servers)
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot connect to NATS: {e}")))?;
        let context = jetstream::new(client);
        context
            .create_or_update_stream(stream::Config {
                name: settings.name.clone(),
                subjects: vec![format!("{}.>", settings.subject_prefix)],
                storage: stream::StorageType::File,
                duplicate_window: settings.duplicate_window,
                num_replicas: settings.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::Unavailable(format!("stream {}: {e}", settings.name)))?;
        Ok(Self { context, prefix: settings.subject_prefix.clone() })
    }

    /// The subject of an event type: `coffer.transfer.created` → `<prefix>.transfer.created`.
    pub fn subject(&self, kind: &str) -> String {
        subject(&self.prefix, kind)
    }

    pub fn context(&self) -> &jetstream::Context {
        &self.context
    }
}

#[async_trait]
impl Bus for JetStreamBus {
    async fn publish(&self, events: &[OutboxEvent]) -> Result<(), BusError> {
        let unavailable = |e: &dyn std::fmt::Display| BusError::Unavailable(e.to_string());
        // Send them all, then wait for the acknowledgements: one round trip per batch, not per
        // event. Each event but the first names its predecessor as the stream's expected last
        // message: when one is lost in flight (a node dying mid-batch), every later one is
        // refused instead of stored ahead of it, and the retry of the batch restores the order
        // (the stream answers the ones it has as duplicates before checking the expectation).
        let mut acks = Vec::with_capacity(events.len());
        let mut previous: Option<String> = None;
        for event in events {
            let id = event.id.to_string();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            if let Some(previous) = &previous {
                headers.insert("Nats-Expected-Last-Msg-Id", previous.as_str());
            }
            // As on a webhook: a subscriber's tracing reads it without parsing the body.
            if let Some(trace) = &event.traceparent {
                headers.insert("traceparent", trace.as_str());
            }
            let payload = encode(event)?.into();
            let ack = self
                .context
                .publish_with_headers(self.subject(&event.kind), headers, payload)
                .await
                .map_err(|e| unavailable(&e))?;
            acks.push(ack);
            previous = Some(id);
        }
        for ack in acks {
            ack.await.map_err(|e| unavailable(&e))?;
        }
        Ok(())
    }
}
