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
mod idempotency;
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
pub use idempotency::{Fingerprint, IdempotencyBegin, IdempotencyRecords, IdempotencyScope, StoredResponse};
pub use key_cache::KeyCache;
pub use keys::{
    ApiKey, KeyAdmin, KeyDirectory, KeyId, NewApiKey, Scope, TOKEN_PREFIX, TokenHash, TokenKind,
    bearer_token, is_valid_token, issue_token,
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
use coffer_ledger::{Account, AccountId, Ledger, LedgerCode, Outcome, Submission, Transfer, TransferId};

pub type StoreResult<T> = Result<T, StoreError>;

/// Persistence of ledgers, accounts, transfers, API keys and idempotency records: every role
/// trait below, each backend implementing them all.
///
/// Every change to money goes through [`Books::submit`], which queues the submission on the
/// sequencer; reads go straight to the database. Each room has a trait of its own — the books,
/// the outbox, keys, idempotency records, the event pipeline's state (positions and leases, the
/// projection, dead letters, webhooks) and the audit trail ([`AuditTrail`], through which every
/// administrative change is made) — so that a component takes only the roles it uses.
#[async_trait]
pub trait Store:
    Books
    + Outbox
    + KeyAdmin
    + KeyDirectory
    + IdempotencyRecords
    + Coordination
    + Projections
    + DeadLetters
    + Webhooks
    + AuditTrail
    + Send
    + Sync
    + 'static
{
    /// Answers Ok when the database can be reached and the store is not stopped (for `/readyz`).
    async fn ping(&self) -> StoreResult<()>;
    /// The latch a fatal error trips ([`StoreError::is_fatal`]): the store trips it itself when
    /// a batch or a read meets one, and so should anyone else the store answered one to. Once
    /// tripped the writer takes nothing more, and the process should exit.
    fn halt(&self) -> &Halt;
    /// Stops taking submissions, finishes the batches in flight, and stops background tasks.
    async fn shutdown(&self);
}

/// The money: every change through the sequencer, and the records' reads.
#[async_trait]
pub trait Books: Send + Sync {
    /// Applies one submission through the sequencer and answers one outcome per command.
    async fn submit(&self, submission: Submission) -> StoreResult<Vec<Outcome>>;

    async fn ledger(&self, code: LedgerCode) -> StoreResult<Option<Ledger>>;
    async fn ledgers(&self, page: PageRequest) -> StoreResult<Page<Ledger>>;
    async fn account(&self, id: AccountId) -> StoreResult<Option<Account>>;
    async fn accounts(&self, filter: AccountFilter, page: PageRequest) -> StoreResult<Page<Account>>;
    async fn transfer(&self, id: TransferId) -> StoreResult<Option<Transfer>>;
    async fn transfers(&self, filter: TransferFilter, page: PageRequest) -> StoreResult<Page<Transfer>>;
}

/// The outbox as its readers see it: the relay, the event stream, `coffer verify`.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// The outbox's events after `position`, in position order, at most `limit`: what the relay
    /// reads. See [`OutboxEvent::position`] for why resuming after the last position read never
    /// skips an event.
    async fn events_after(&self, position: i64, limit: usize) -> StoreResult<Vec<OutboxEvent>>;

    /// The position of the newest event in the outbox (0 when it is empty): where a reader
    /// that wants only new events starts.
    async fn last_event_position(&self) -> StoreResult<i64>;

    /// Where the outbox's hash chain starts and ends (see [`chain::OutboxChain`]).
    async fn outbox_chain(&self) -> StoreResult<chain::OutboxChain>;
}
