//! Dead letters: the events a consumer gave up on, and what an operator does with them
//! (`coffer dlq list|show|replay|discard` and the admin endpoints) — one interface,
//! [`DeadLetterQueue`], over both buses.
//!
//! With the in-process bus they are rows in the store. With JetStream they are messages in the
//! dead-letter stream `<STREAM>_DLQ`: the event's CloudEvent as the payload and the consumer,
//! error, attempt count and original positions as headers, on `<prefix>_dlq.dead.<consumer>`.
//! A replay moves the message to `<prefix>_dlq.replay.<consumer>`, where the consumer's replay
//! subscription takes it. The stream is a work queue: a replayed message is gone once acked.

use std::sync::Arc;

use async_nats::jetstream::{self, Message, stream};
use async_trait::async_trait;
use coffer_ledger::Timestamp;
use coffer_store::{AdminChange, AuditContext, AuditTrail, DeadLetters, OutboxEvent, Store};

use crate::consumer::unavailable_js as unavailable;
use crate::{BusError, StreamSettings, decode};

/// One dead letter as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterEntry {
    /// The dead letter's id on its bus: a UUID in the store, a stream sequence on JetStream.
    pub id: String,
    pub consumer: String,
    /// The event (its `position` is the original outbox position); None when the message was
    /// not a Coffer event at all.
    pub event: Option<OutboxEvent>,
    pub error: String,
    pub attempts: u32,
    pub failed_at: Timestamp,
}

/// What a replay or a discard came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// There is no such letter; nothing changed.
    Missing,
    /// Done, and recorded in the audit trail in the same transaction (the store's letters).
    Recorded,
    /// Done on the bus, which has no audit trail: the caller records it. The letter was
    /// `consumer`'s and held the event `event_id` (when it was an event at all).
    Done { consumer: String, event_id: Option<uuid::Uuid> },
}

impl Handled {
    /// Whether there was such a letter (and so it was replayed or discarded).
    pub fn found(&self) -> bool {
        *self != Self::Missing
    }
}

#[async_trait]
pub trait DeadLetterQueue: Send + Sync {
    /// Dead letters, oldest first, of one consumer or all, after `after` when given.
    async fn list(
        &self,
        consumer: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetterEntry>, BusError>;
    async fn show(&self, id: &str) -> Result<Option<DeadLetterEntry>, BusError>;
    /// Hands the dead letter back to its consumer, which tries it again from attempt 1, as an
    /// administrative action of `by`.
    async fn replay(&self, id: &str, by: &AuditContext) -> Result<Handled, BusError>;
    /// Deletes the dead letter for good, as an administrative action of `by`.
    async fn discard(&self, id: &str, by: &AuditContext) -> Result<Handled, BusError>;
    /// How many dead letters wait (the `coffer_dlq_depth` gauge).
    async fn depth(&self) -> Result<u64, BusError>;
}

/// Dead letters waiting, all consumers (a gauge).
pub const DLQ_DEPTH: &str = "coffer_dlq_depth";

/// Keeps the [`DLQ_DEPTH`] gauge current, every `every`, until `stop` turns true.
pub async fn watch_depth(
    dlq: Arc<dyn DeadLetterQueue>,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        match dlq.depth().await {
            Ok(depth) => metrics::gauge!(DLQ_DEPTH).set(depth as f64),
            Err(e) => tracing::warn!(error = %e, "could not read the dead-letter depth"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
    }
}

/// The in-process bus's dead letters, in the store (any `Arc<dyn Store>`, or anything else
/// that keeps dead letters and an audit trail).
pub struct StoreDeadLetters<S: ?Sized = dyn Store>(pub Arc<S>);

fn store_error(e: coffer_store::StoreError) -> BusError {
    BusError::Unavailable(format!("store: {e}"))
}

impl From<coffer_store::DeadLetter> for DeadLetterEntry {
    fn from(letter: coffer_store::DeadLetter) -> Self {
        Self {
            id: letter.id.to_string(),
            consumer: letter.consumer,
            event: Some(letter.event),
            error: letter.error,
            attempts: letter.attempts,
            failed_at: letter.failed_at,
        }
    }
}

#[async_trait]
impl<S: DeadLetters + AuditTrail + ?Sized + 'static> DeadLetterQueue for StoreDeadLetters<S> {
    async fn list(
        &self,
        consumer: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetterEntry>, BusError> {
        let after =
            after.map(|id| id.parse().map_err(|_| BusError::InvalidCursor(id.to_owned()))).transpose()?;
        let letters = self.0.dead_letters(consumer, after, limit).await.map_err(store_error)?;
        Ok(letters.into_iter().map(Into::into).collect())
    }

    async fn show(&self, id: &str) -> Result<Option<DeadLetterEntry>, BusError> {
        let Ok(id) = id.parse() else { return Ok(None) };
        Ok(self.0.dead_letter(id).await.map_err(store_error)?.map(Into::into))
    }

    async fn replay(&self, id: &str, by: &AuditContext) -> Result<Handled, BusError> {
        let Ok(id) = id.parse() else { return Ok(Handled::Missing) };
        self.administer(AdminChange::ReplayDeadLetter(id), by).await
    }

    async fn discard(&self, id: &str, by: &AuditContext) -> Result<Handled, BusError> {
        let Ok(id) = id.parse() else { return Ok(Handled::Missing) };
        self.administer(AdminChange::DiscardDeadLetter(id), by).await
    }

    async fn depth(&self) -> Result<u64, BusError> {
        self.0.dead_letter_count().await.map_err(store_error)
    }
}

impl<S: DeadLetters + AuditTrail + ?Sized> StoreDeadLetters<S> {
    /// The change and its audit record, in one transaction of the store.
    async fn administer(&self, change: AdminChange, by: &AuditContext) -> Result<Handled, BusError> {
        let done = self.0.administer(change, by).await.map_err(store_error)?;
        Ok(if done.effect.applied() { Handled::Recorded } else { Handled::Missing })
    }
}

/// The headers a dead letter carries on JetStream.
pub(crate) mod headers {
    use async_nats::jetstream::Message;

    pub const CONSUMER: &str = "Coffer-Consumer";
    pub const ERROR: &str = "Coffer-Error";
    pub const ATTEMPTS: &str = "Coffer-Attempts";
    /// The event's outbox position.
    pub const POSITION: &str = "Coffer-Position";
    /// Where the message was in the events stream.
    pub const STREAM_SEQUENCE: &str = "Coffer-Stream-Sequence";
    pub const FAILED_AT: &str = "Coffer-Failed-At";

    pub fn get<'a>(headers: Option<&'a async_nats::HeaderMap>, name: &str) -> Option<&'a str> {
        headers?.get(name).map(|v| v.as_str())
    }

    /// The outbox position a message carries, if it says.
    pub fn position(message: &Message) -> Option<i64> {
        get(message.headers.as_ref(), POSITION)?.parse().ok()
    }
}

/// A letter handled on the bus, for the caller to record.
fn done(entry: DeadLetterEntry) -> Handled {
    Handled::Done { consumer: entry.consumer, event_id: entry.event.map(|event| event.id) }
}

/// The JetStream dead-letter stream.
pub struct DeadLetterStream {
    stream: jetstream::stream::Stream,
    context: jetstream::Context,
    /// `<prefix>_dlq`.
    prefix: String,
}

impl DeadLetterStream {
    /// Creates the stream `<STREAM>_DLQ` (file storage, work-queue retention) unless it exists.
    pub async fn open(context: &jetstream::Context, events: &StreamSettings) -> Result<Self, BusError> {
        let prefix = format!("{}_dlq", events.subject_prefix);
        let stream = context
            .get_or_create_stream(stream::Config {
                name: format!("{}_DLQ", events.name),
                subjects: vec![format!("{prefix}.>")],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::WorkQueue,
                num_replicas: events.replicas,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        Ok(Self { stream, context: context.clone(), prefix })
    }

    pub fn stream(&self) -> &jetstream::stream::Stream {
        &self.stream
    }

    pub fn replay_subject(&self, consumer: &str) -> String {
        format!("{}.replay.{consumer}", self.prefix)
    }

    fn dead_subject(&self, consumer: &str) -> String {
        format!("{}.dead.{consumer}", self.prefix)
    }

    /// Keeps `message` (an events-stream or replay delivery) as `consumer`'s dead letter and
    /// waits until the stream has stored it.
    pub async fn add(
        &self,
        consumer: &str,
        message: &Message,
        position: i64,
        attempts: u32,
        error: &str,
    ) -> Result<(), BusError> {
        let stream_sequence = match headers::get(message.headers.as_ref(), headers::STREAM_SEQUENCE) {
            Some(replayed) => replayed.to_owned(),
            None => message.info().map(|i| i.stream_sequence.to_string()).unwrap_or_default(),
        };
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::CONSUMER, consumer);
        // A header value is one line.
        h.insert(headers::ERROR, error.replace(['\r', '\n'], " ").as_str());
        h.insert(headers::ATTEMPTS, attempts.to_string().as_str());
        h.insert(headers::POSITION, position.to_string().as_str());
        h.insert(headers::STREAM_SEQUENCE, stream_sequence.as_str());
        h.insert(headers::FAILED_AT, Timestamp::now().as_micros().to_string().as_str());
        self.publish(self.dead_subject(consumer), h, message.payload.clone()).await
    }

    async fn publish(
        &self,
        subject: String,
        headers: async_nats::HeaderMap,
        payload: bytes::Bytes,
    ) -> Result<(), BusError> {
        let ack = self.context.publish_with_headers(subject, headers, payload).await.map_err(unavailable)?;
        ack.await.map_err(unavailable)?;
        Ok(())
    }

    /// The dead letter at `sequence`, with its headers; None when there is none there.
    async fn get(
        &self,
        sequence: u64,
    ) -> Result<Option<(DeadLetterEntry, jetstream::message::StreamMessage)>, BusError> {
        let message = match self.stream.get_raw_message(sequence).await {
            Ok(message) => message,
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(e) => return Err(unavailable(e)),
        };
        if !message.subject.starts_with(&format!("{}.dead.", self.prefix)) {
            return Ok(None);
        }
        let h = Some(&message.headers);
        let number = |name| headers::get(h, name).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let entry = DeadLetterEntry {
            id: sequence.to_string(),
            consumer: headers::get(h, headers::CONSUMER).unwrap_or_default().to_owned(),
            event: decode(&message.payload).ok(),
            error: headers::get(h, headers::ERROR).unwrap_or_default().to_owned(),
            attempts: u32::try_from(number(headers::ATTEMPTS)).unwrap_or(0),
            failed_at: Timestamp::from_micros(number(headers::FAILED_AT)),
        };
        Ok(Some((entry, message)))
    }
}

#[async_trait]
impl DeadLetterQueue for DeadLetterStream {
    async fn list(
        &self,
        consumer: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetterEntry>, BusError> {
        let state = self.stream.clone().info().await.map_err(unavailable)?.state.clone();
        let after =
            after.map(|a| a.parse::<u64>().map_err(|_| BusError::InvalidCursor(a.to_owned()))).transpose()?;
        let after = after.unwrap_or(0);
        let mut letters = Vec::new();
        // Dead letters are few; a walk over the stream's sequences is enough.
        for sequence in state.first_sequence.max(after + 1)..=state.last_sequence {
            if letters.len() >= limit {
                break;
            }
            if let Some((entry, _)) = self.get(sequence).await?
                && consumer.is_none_or(|c| c == entry.consumer)
            {
                letters.push(entry);
            }
        }
        Ok(letters)
    }

    async fn show(&self, id: &str) -> Result<Option<DeadLetterEntry>, BusError> {
        let Ok(sequence) = id.parse() else { return Ok(None) };
        Ok(self.get(sequence).await?.map(|(entry, _)| entry))
    }

    async fn replay(&self, id: &str, _: &AuditContext) -> Result<Handled, BusError> {
        let Ok(sequence) = id.parse() else { return Ok(Handled::Missing) };
        let Some((entry, message)) = self.get(sequence).await? else { return Ok(Handled::Missing) };
        // Stored on the replay subject before it leaves the dead letters: a crash in between
        // replays it twice, which the idempotent handler absorbs, and never loses it.
        self.publish(self.replay_subject(&entry.consumer), message.headers.clone(), message.payload.clone())
            .await?;
        self.stream.delete_message(sequence).await.map_err(unavailable)?;
        Ok(done(entry))
    }

    async fn discard(&self, id: &str, _: &AuditContext) -> Result<Handled, BusError> {
        let Ok(sequence) = id.parse() else { return Ok(Handled::Missing) };
        let Some((entry, _)) = self.get(sequence).await? else { return Ok(Handled::Missing) };
        if !self.stream.delete_message(sequence).await.map_err(unavailable)? {
            return Ok(Handled::Missing);
        }
        Ok(done(entry))
    }

    /// The stream's messages: the dead letters, and replays not yet taken (a moment's worth).
    async fn depth(&self) -> Result<u64, BusError> {
        Ok(self.stream.clone().info().await.map_err(unavailable)?.state.messages)
    }
}
