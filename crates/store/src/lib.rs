//! Persistence for Coffer: the [`Store`] trait every backend implements, the sequencer that
//! group-commits commands, and the embedded SQLite backend.
//!
//! The store loads the records a batch touches, runs the pure core (`coffer_ledger::apply`) and
//! writes balances, transfers and outbox rows in ONE transaction. Idempotency-Key answers are
//! stored, durably, when the request that carried the key completes. A row that does not decode
//! or an invariant the core finds broken stops the store for good (see [`Halt`]).

pub mod audit;
mod bare_tokens;
pub mod chain;
mod columns;
mod config;
mod coordination;
mod dead_letters;
mod error;
mod expiry;
mod halt;
mod key_cache;
mod keys;
mod ledger;
mod outbox;
mod page;
mod postgres;
mod projection;
mod record_json;
mod sequencer;
mod sqlite;
pub mod verify;
mod webhooks;

pub use audit::{
    AdminChange, AdminEffect, Administered, AuditAction, AuditContext, AuditEntry, AuditFilter, AuditHead,
    AuditOutcome, AuditRecord, AuditTrail,
};
pub use config::StoreConfig;
pub use coordination::Coordination;
pub use dead_letters::{DeadLetter, DeadLetters};
pub use error::{Cause, StoreError, report};
pub use halt::Halt;
pub use key_cache::KeyCache;
pub use keys::{
    ApiKey, KeyDirectory, KeyId, NewApiKey, Scope, TOKEN_PREFIX, TokenHash, TokenKind, bearer_token,
    is_valid_token, issue_token,
};
pub use outbox::{OutboxEvent, sequence};
pub use page::{AccountFilter, Cursor, Page, PageRequest, TransferFilter};
/// Schema management of a PostgreSQL database (`coffer migrate`).
pub use postgres::migrate as postgres_migrate;
pub use postgres::{PgStore, key_directory as postgres_key_directory, verify::verify as verify_postgres};
pub use projection::{Projections, VolumeEntry, VolumeRow};
/// Offline, synchronous administration of a SQLite data dir (no lock; safe beside a server).
pub use sqlite::admin as sqlite_admin;
pub use sqlite::{SqliteStore, key_directory as sqlite_key_directory, verify::verify as verify_sqlite};
pub use webhooks::{
    AttemptResult, Delivery, DeliveryAttempt, DeliveryStatus, Webhook, WebhookEvent, WebhookSecrets, Webhooks,
};

use async_trait::async_trait;
use coffer_ledger::{
    Account, AccountId, Ledger, LedgerCode, Outcome, Submission, Timestamp, Transfer, TransferId,
};

pub type StoreResult<T> = Result<T, StoreError>;

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

/// Persistence of ledgers, accounts, transfers, API keys and idempotency records.
///
/// Every change to money goes through [`Store::submit`], which queues the submission on the
/// sequencer; reads go straight to the database. The event pipeline's state (positions and
/// leases, the projection, dead letters, webhooks) has a trait of its own per room, and so has
/// the audit trail ([`AuditTrail`]), through which every administrative change is made.
#[async_trait]
pub trait Store:
    KeyDirectory + Coordination + Projections + DeadLetters + Webhooks + AuditTrail + Send + Sync + 'static
{
    /// Applies one submission through the sequencer and answers one outcome per command.
    async fn submit(&self, submission: Submission) -> StoreResult<Vec<Outcome>>;

    async fn ledger(&self, code: LedgerCode) -> StoreResult<Option<Ledger>>;
    async fn ledgers(&self, page: PageRequest) -> StoreResult<Page<Ledger>>;
    async fn account(&self, id: AccountId) -> StoreResult<Option<Account>>;
    async fn accounts(&self, filter: AccountFilter, page: PageRequest) -> StoreResult<Page<Account>>;
    async fn transfer(&self, id: TransferId) -> StoreResult<Option<Transfer>>;
    async fn transfers(&self, filter: TransferFilter, page: PageRequest) -> StoreResult<Page<Transfer>>;

    /// Key writes without an audit record, for tests and fixtures: administrative requests make
    /// keys through [`AuditTrail::administer`], which records them in the same transaction.
    async fn create_key(&self, key: NewApiKey) -> StoreResult<ApiKey>;
    /// Creates `key` only when the store holds no key at all; answers whether it did.
    async fn bootstrap_key(&self, key: NewApiKey) -> StoreResult<bool>;
    async fn keys(&self) -> StoreResult<Vec<ApiKey>>;
    /// Revokes a key at once; answers false when there is no such key.
    async fn revoke_key(&self, id: KeyId) -> StoreResult<bool>;
    /// Makes a key expire at `at` (or sooner, if it already would): the end of a rotation's
    /// overlap. Answers the key as it is now, `None` when there is no such key.
    async fn expire_key(&self, id: KeyId, at: Timestamp) -> StoreResult<Option<ApiKey>>;

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

    /// The outbox's events after `position`, in position order, at most `limit`: what the relay
    /// reads. See [`OutboxEvent::position`] for why resuming after the last position read never
    /// skips an event.
    async fn events_after(&self, position: i64, limit: usize) -> StoreResult<Vec<OutboxEvent>>;

    /// The position of the newest event in the outbox (0 when it is empty): where a reader
    /// that wants only new events starts.
    async fn last_event_position(&self) -> StoreResult<i64>;

    /// Where the outbox's hash chain starts and ends (see [`chain::OutboxChain`]).
    async fn outbox_chain(&self) -> StoreResult<chain::OutboxChain>;

    /// Answers Ok when the database can be reached and the store is not stopped (for `/readyz`).
    async fn ping(&self) -> StoreResult<()>;
    /// The latch a fatal error trips ([`StoreError::is_fatal`]): the store trips it itself when
    /// a batch or a read meets one, and so should anyone else the store answered one to. Once
    /// tripped the writer takes nothing more, and the process should exit.
    fn halt(&self) -> &Halt;
    /// Stops taking submissions, finishes the batches in flight, and stops background tasks.
    async fn shutdown(&self);
}
