//! The first projection's storage: volume and count of posted transfers per ledger, day and
//! transfer code, kept by a consumer of the transfer events.
//!
//! A consumer is at-least-once, so every event it applies is recorded as processed in the same
//! transaction as its effect; an event delivered again finds its record and changes nothing.

use async_trait::async_trait;
use coffer_ledger::LedgerCode;
use uuid::Uuid;

use crate::StoreResult;

/// One event's contribution: a posted transfer of `amount` in `ledger` on `day` with `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeEntry {
    /// The event's id: what makes applying it twice a no-op.
    pub event_id: Uuid,
    pub ledger: LedgerCode,
    /// Days since 1970-01-01 (UTC) of the transfer's `created_at`.
    pub day: i32,
    pub code: u16,
    pub amount: u64,
}

/// A row of the projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRow {
    /// Days since 1970-01-01 (UTC).
    pub day: i32,
    pub code: u16,
    pub count: u64,
    /// The sum of the amounts; wider than one amount so it never overflows.
    pub volume: u128,
}

#[async_trait]
pub trait Projections: Send + Sync {
    /// Applies every entry not yet processed by `consumer` (count + 1, volume + amount) and
    /// records it as processed, all in one transaction; answers how many it applied. Entries
    /// may repeat an event id, inside one call or across calls: each event counts once.
    async fn record_volumes(&self, consumer: &str, entries: &[VolumeEntry]) -> StoreResult<usize>;

    /// The rows of `ledger` with `from_day <= day <= to_day`, ordered by day, then code.
    async fn ledger_volumes(
        &self,
        ledger: &LedgerCode,
        from_day: i32,
        to_day: i32,
    ) -> StoreResult<Vec<VolumeRow>>;

    /// Forgets the whole projection and `consumer`'s processed records, in one transaction:
    /// the start of a rebuild by replay.
    async fn reset_volumes(&self, consumer: &str) -> StoreResult<()>;
}
