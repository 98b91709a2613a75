//! The event pipeline's knobs, named with their unit: the stream, the relay, retention and the
//! consumers' retry schedule.

use std::time::Duration;

use serde::Deserialize;

use crate::{RetryPolicy, StreamSettings};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// The JetStream stream the relay publishes to.
    pub stream: String,
    /// The first token of every subject: `<prefix>.<entity>.<action>`.
    pub subject_prefix: String,
    /// How long JetStream remembers event ids to drop re-published events.
    pub duplicate_window_ms: u64,
    /// Copies of the stream: 3 on a three-node cluster (R3), 1 on a single server.
    pub stream_replicas: usize,
    /// How often the relay looks for new outbox rows, and consumers of the in-process bus for
    /// new events.
    pub poll_interval_ms: u64,
    /// How long a relay's lease, and an in-process consumer's, lasts unless renewed: the longest
    /// a standby waits to take over from one that died.
    pub relay_lease_ms: u64,
    /// How long the outbox keeps rows that every reader has passed: `coffer events republish`
    /// and a projection rebuild reach back this far. 0 keeps them for ever.
    pub outbox_retention_hours: u64,
    /// Attempts a consumer makes before an event goes to the dead letters.
    pub max_attempts: u32,
    /// The wait after a consumer's first failure; it doubles after each further one.
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// JetStream: how long the server waits for an ack before delivering again.
    pub ack_wait_ms: u64,
    /// JetStream: deliveries a consumer may have unacknowledged.
    pub max_ack_pending: i64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            stream: "COFFER_EVENTS".into(),
            subject_prefix: "coffer".into(),
            duplicate_window_ms: 120_000,
            stream_replicas: 1,
            poll_interval_ms: 10,
            relay_lease_ms: 5000,
            outbox_retention_hours: 168,
            max_attempts: 8,
            initial_backoff_ms: 500,
            max_backoff_ms: 60_000,
            ack_wait_ms: 30_000,
            max_ack_pending: 10_000,
        }
    }
}

impl EventsConfig {
    /// Refuses values the pipeline cannot run with.
    pub fn validate(&self) -> Result<(), String> {
        let token =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !token(&self.stream) {
            return Err("events.stream must be letters, digits, '_' or '-'".into());
        }
        if !token(&self.subject_prefix) {
            return Err(
                "events.subject_prefix must be one subject token (letters, digits, '_' or '-')".into()
            );
        }
        let positive = [
            ("events.poll_interval_ms", self.poll_interval_ms),
            ("events.relay_lease_ms", self.relay_lease_ms),
            ("events.max_attempts", u64::from(self.max_attempts)),
            ("events.initial_backoff_ms", self.initial_backoff_ms),
            ("events.ack_wait_ms", self.ack_wait_ms),
            ("events.stream_replicas", self.stream_replicas as u64),
            ("events.max_ack_pending", self.max_ack_pending.max(0) as u64),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        if self.max_backoff_ms < self.initial_backoff_ms {
            return Err("events.max_backoff_ms must be at least events.initial_backoff_ms".into());
        }
        Ok(())
    }

    pub fn stream_settings(&self) -> StreamSettings {
        StreamSettings {
            name: self.stream.clone(),
            subject_prefix: self.subject_prefix.clone(),
            duplicate_window: Duration::from_millis(self.duplicate_window_ms),
            replicas: self.stream_replicas,
        }
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            initial_backoff: Duration::from_millis(self.initial_backoff_ms),
            max_backoff: Duration::from_millis(self.max_backoff_ms),
        }
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
}
