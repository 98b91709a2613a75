//! Consumers on NATS JetStream: a durable pull consumer with explicit acks on the events
//! stream, and a second one on the consumer's replay subject of the dead-letter stream.
//!
//! A failed delivery is NAKed with a delay (JetStream's `backoff` list applies only to ack
//! timeouts, not to NAKs, so the runtime computes the delay); the attempt count is the
//! server's delivery count. After the last attempt the event is published to the dead-letter
//! stream with the error, the attempt count and its positions, and only then acked.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::{self, AckKind, Message};
use async_trait::async_trait;
use futures::FutureExt as _;
use futures::stream::{BoxStream, SelectAll, StreamExt};

use super::{Delivery, HandlerError, LAG, Source};
use crate::bus::subject;
use crate::dlq::{DeadLetterStream, headers};
use crate::{BusError, StreamSettings, decode};

/// Which consumer to run and on what.
#[derive(Debug, Clone)]
pub struct JetStreamSourceSettings {
    /// The durable consumer's name (also the dead letters' consumer name).
    pub consumer: String,
    /// The event types delivered; empty for all. One type is filtered by the server; with
    /// several the consumer reads all events and acks the others unhandled (nats-server 2.9
    /// takes one filter subject per consumer).
    pub types: Vec<String>,
    /// How long the server waits for an ack before delivering again (a consumer that died).
    pub ack_wait: Duration,
    /// Deliveries in flight, unacknowledged, at most.
    pub max_ack_pending: i64,
}

type Messages = SelectAll<BoxStream<'static, Result<Message, BusError>>>;

pub struct JetStreamSource {
    settings: JetStreamSourceSettings,
    context: jetstream::Context,
    stream: StreamSettings,
    messages: Messages,
    dead_letters: DeadLetterStream,
    /// The subscription failed (the server restarted without its state, the consumer was
    /// deleted): subscribe again before the next pull.
    broken: bool,
}

/// A JetStream delivery's handle: the message, to ack or NAK it.
pub struct Token(Message);

impl JetStreamSource {
    /// Creates (or binds to) the durable consumers and starts pulling.
    pub async fn open(
        context: &jetstream::Context,
        stream: &StreamSettings,
        settings: JetStreamSourceSettings,
    ) -> Result<Self, BusError> {
        let (messages, dead_letters) = subscribe(context, stream, &settings).await?;
        Ok(Self {
            settings,
            context: context.clone(),
            stream: stream.clone(),
            messages,
            dead_letters,
            broken: false,
        })
    }

    /// Subscribes again after a failure; the durable consumers' state is the server's, so
    /// nothing acknowledged comes back and nothing unacknowledged is lost.
    async fn resubscribe(&mut self) -> Result<(), BusError> {
        let (messages, dead_letters) = subscribe(&self.context, &self.stream, &self.settings).await?;
        (self.messages, self.dead_letters, self.broken) = (messages, dead_letters, false);
        tracing::info!(consumer = %self.settings.consumer, "subscribed to JetStream again");
        Ok(())
    }

    fn wanted(&self, kind: &str) -> bool {
        self.settings.types.is_empty() || self.settings.types.iter().any(|t| t == kind)
    }
}

/// The durable consumers of `settings` — on the events stream, filtered by type, and on the
/// consumer's replay subject of the dead-letter stream — as one stream of messages.
async fn subscribe(
    context: &jetstream::Context,
    stream: &StreamSettings,
    settings: &JetStreamSourceSettings,
) -> Result<(Messages, DeadLetterStream), BusError> {
    let filter = match settings.types.as_slice() {
        [one] => subject(&stream.subject_prefix, one),
        _ => format!("{}.>", stream.subject_prefix),
    };
    let events = context.get_stream(&stream.name).await.map_err(unavailable_js)?;
    let main = pull_messages(&events, settings, &settings.consumer, filter).await?;
    let dead_letters = DeadLetterStream::open(context, stream).await?;
    let replay_name = format!("{}_replay", settings.consumer);
    let replay_subject = dead_letters.replay_subject(&settings.consumer);
    let replays = pull_messages(dead_letters.stream(), settings, &replay_name, replay_subject).await?;
    Ok((futures::stream::select_all([main, replays]), dead_letters))
}

async fn pull_messages(
    stream: &jetstream::stream::Stream,
    settings: &JetStreamSourceSettings,
    durable: &str,
    filter_subject: String,
) -> Result<BoxStream<'static, Result<Message, BusError>>, BusError> {
    let consumer = stream
        .get_or_create_consumer(
            durable,
            pull::Config {
                durable_name: Some(durable.to_owned()),
                filter_subject,
                ack_policy: AckPolicy::Explicit,
                ack_wait: settings.ack_wait,
                // The runtime counts attempts and dead-letters; the server never gives up by itself.
                max_deliver: -1,
                max_ack_pending: settings.max_ack_pending,
                ..Default::default()
            },
        )
        .await
        .map_err(unavailable_js)?;
    let messages = consumer.messages().await.map_err(unavailable_js)?;
    Ok(messages.map(|m| m.map_err(unavailable_js)).boxed())
}

#[async_trait]
impl Source for JetStreamSource {
    type Token = Token;

    async fn next(&mut self, max: usize) -> Result<Vec<Delivery<Token>>, BusError> {
        if self.broken {
            self.resubscribe().await?;
        }
        loop {
            let first = match self.messages.next().await {
                Some(Ok(message)) => message,
                failed => {
                    self.broken = true;
                    let why = match failed {
                        Some(Err(BusError::Unavailable(why))) => why,
                        _ => "the subscription ended".to_owned(),
                    };
                    return Err(BusError::Unavailable(format!("JetStream consumer: {why}")));
                }
            };
            let mut batch = vec![first];
            // Take what is already buffered, without waiting for more.
            while batch.len() < max {
                match self.messages.next().now_or_never() {
                    Some(Some(Ok(message))) => batch.push(message),
                    _ => break,
                }
            }
            let mut deliveries = Vec::with_capacity(batch.len());
            for message in batch {
                if let Some(delivery) = self.delivery(message).await? {
                    deliveries.push(delivery);
                }
            }
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
        }
    }

    async fn ack(&mut self, delivery: Delivery<Token>) -> Result<(), BusError> {
        delivery.token.0.ack().await.map_err(unavailable_js)
    }

    async fn retry(&mut self, delivery: Delivery<Token>, delay: Duration) -> Result<(), BusError> {
        delivery.token.0.ack_with(AckKind::Nak(Some(delay))).await.map_err(unavailable_js)
    }

    async fn dead_letter(&mut self, delivery: Delivery<Token>, error: &HandlerError) -> Result<(), BusError> {
        let message = delivery.token.0;
        self.dead_letters
            .add(&self.settings.consumer, &message, delivery.event.position, delivery.attempt, &error.0)
            .await?;
        message.ack().await.map_err(unavailable_js)
    }
}

impl JetStreamSource {
    /// The delivery a message makes, or None when it was settled here: another type (acked),
    /// or not an event at all (dead-lettered as it is, since no handler could take it).
    async fn delivery(&mut self, message: Message) -> Result<Option<Delivery<Token>>, BusError> {
        let info =
            message.info().map_err(|e| BusError::Unavailable(format!("not a JetStream delivery: {e}")))?;
        let attempt = u32::try_from(info.delivered).unwrap_or(u32::MAX).max(1);
        metrics::gauge!(LAG, "consumer" => self.settings.consumer.clone()).set(info.pending as f64);
        let event = match decode(&message.payload) {
            Ok(event) => event,
            Err(e) => {
                let position = headers::position(&message).unwrap_or(0);
                let why = format!("not a Coffer event: {e}");
                self.dead_letters.add(&self.settings.consumer, &message, position, attempt, &why).await?;
                message.ack().await.map_err(unavailable_js)?;
                return Ok(None);
            }
        };
        if !self.wanted(&event.kind) {
            message.ack().await.map_err(unavailable_js)?;
            return Ok(None);
        }
        Ok(Some(Delivery { event, attempt, token: Token(message) }))
    }
}

pub(crate) fn unavailable_js(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}
