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

use crate::{NatsConnection, encode};

/// What a process may do to the events stream's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRole {
    /// The relay: creates the stream and brings it to the configured settings.
    Manage,
    /// A reader (worker, api): takes the stream as it is.
    Use,
}

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
    /// Connects anonymously to `url` (a comma-separated list for a cluster) and manages the
    /// stream, as [`JetStreamBus::connect_with`] does for a relay.
    pub async fn connect(url: &str, settings: &StreamSettings) -> Result<Self, BusError> {
        Self::connect_with(&NatsConnection::to(url), settings, StreamRole::Manage).await
    }

    /// Connects, and with [`StreamRole::Manage`] creates the stream (file storage, the
    /// duplicate window, the replicas) or brings an existing one to these settings. With
    /// [`StreamRole::Use`] an existing stream is taken as it is, and only a missing one is
    /// created: a worker's user may read the stream but not reconfigure it (see
    /// `deploy/nats/`), so it leaves the stream's settings to the relay.
    pub async fn connect_with(
        nats: &NatsConnection,
        settings: &StreamSettings,
        role: StreamRole,
    ) -> Result<Self, BusError> {
        let context = jetstream::new(nats.connect().await?);
        let config = stream::Config {
            name: settings.name.clone(),
            subjects: vec![format!("{}.>", settings.subject_prefix)],
            storage: stream::StorageType::File,
            duplicate_window: settings.duplicate_window,
            num_replicas: settings.replicas,
            ..Default::default()
        };
        let stream_error =
            |e: &dyn std::fmt::Display| BusError::Unavailable(format!("stream {}: {e}", settings.name));
        match role {
            StreamRole::Manage => {
                context.create_or_update_stream(config).await.map_err(|e| stream_error(&e))?;
            }
            StreamRole::Use => match context.get_stream(&settings.name).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {
                    // Not there yet (the relay has not started): make it, if this user may.
                    context.create_stream(config).await.map_err(|e| {
                        stream_error(&format!(
                            "{e} (a worker's NATS user may not create it: start the relay first)"
                        ))
                    })?;
                }
                Err(e) => return Err(stream_error(&e)),
            },
        }
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

/// Whether the server answered that the stream does not exist (rather than not answering).
fn is_not_found(error: &jetstream::context::GetStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(e)
            if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
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
