//! The dead letters of the in-process bus: events a consumer gave up on after its last attempt,
//! kept with the error, the attempt count and their outbox position until an operator replays or
//! discards them. (On NATS JetStream they live in a dead-letter stream instead.)

use async_trait::async_trait;
use coffer_ledger::Timestamp;
use uuid::Uuid;

use crate::{OutboxEvent, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The dead letter's own id (a v7 UUID, so ids sort by the time they died).
    pub id: Uuid,
    /// The consumer that gave up.
    pub consumer: String,
    /// The event, as the outbox held it (its position is the original one).
    pub event: OutboxEvent,
    /// The handler's last error.
    pub error: String,
    /// How many times the handler was tried.
    pub attempts: u32,
    pub failed_at: Timestamp,
    /// An operator asked for it to be delivered to its consumer again.
    pub replay_requested: bool,
}

#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Keeps `letter`. A second letter for the same consumer and event id replaces the first
    /// (a replay that failed again), with `replay_requested` from the new one.
    async fn add_dead_letter(&self, letter: DeadLetter) -> StoreResult<()>;

    /// Dead letters in id order, after `after` when given, at most `limit`, of one consumer or
    /// of all.
    async fn dead_letters(
        &self,
        consumer: Option<&str>,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<DeadLetter>>;

    async fn dead_letter(&self, id: Uuid) -> StoreResult<Option<DeadLetter>>;

    /// Marks a dead letter for replay; answers false when there is no such letter.
    async fn request_replay(&self, id: Uuid) -> StoreResult<bool>;

    /// `consumer`'s letters marked for replay, in id order, at most `limit`.
    async fn replays_requested(&self, consumer: &str, limit: usize) -> StoreResult<Vec<DeadLetter>>;

    /// Deletes a dead letter (discarded, or replayed successfully); answers whether it existed.
    async fn remove_dead_letter(&self, id: Uuid) -> StoreResult<bool>;

    /// How many dead letters there are, of every consumer (the DLQ depth).
    async fn dead_letter_count(&self) -> StoreResult<u64>;
}
