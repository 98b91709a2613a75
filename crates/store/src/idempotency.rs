//! Idempotency-Key records: a keyed request's first answer, kept to replay to its retries.

use async_trait::async_trait;

use crate::{KeyId, StoreResult};

/// A stored answer to an Idempotency-Key request: replayed verbatim to a retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// Who sent a keyed request and with which key; a key is scoped to its principal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyScope {
    pub principal: KeyId,
    /// The header's value, already checked to be 1–255 visible ASCII characters.
    pub key: String,
}

/// SHA-256 of principal, method, path and body: what makes a retry "the same request".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

/// What to do with a request that carries an Idempotency-Key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// First time (or a crashed first attempt): go ahead, then call `idempotency_complete`.
    Proceed,
    /// Already answered: send this again with `Idempotent-Replayed: true`.
    Replay(StoredResponse),
    /// Another request with this key is being processed right now (409 `idempotency_key_in_use`).
    InFlight,
    /// The key was used with a different request (422 `idempotency_key_reused`).
    Mismatch,
}

/// Where keyed requests' answers are kept.
#[async_trait]
pub trait IdempotencyRecords: Send + Sync {
    async fn idempotency_begin(
        &self,
        scope: &IdempotencyScope,
        fingerprint: Fingerprint,
    ) -> StoreResult<IdempotencyBegin>;
    /// Stores the first completed answer; later `begin`s with this scope replay it.
    async fn idempotency_complete(
        &self,
        scope: &IdempotencyScope,
        response: StoredResponse,
    ) -> StoreResult<()>;
    /// Forgets an in-flight key whose request ended without an answer worth keeping (a 5xx).
    async fn idempotency_abandon(&self, scope: &IdempotencyScope) -> StoreResult<()>;
}
