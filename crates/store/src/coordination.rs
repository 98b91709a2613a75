//! Named positions and leases: how far a relay or an in-process consumer has got, and which of
//! several relays is the active one.
//!
//! A lease is held by one holder until it expires; every change of holder hands out a larger
//! fencing token. A position saved with a token is written only while that token is the lease's
//! current one, so a relay that was paused past its lease (a GC stall, a partition) and wakes up
//! cannot move the position of the relay that took over.

use std::time::Duration;

use async_trait::async_trait;

use crate::StoreResult;

#[async_trait]
pub trait Coordination: Send + Sync {
    /// The last position saved under `name` (0 before the first).
    async fn position(&self, name: &str) -> StoreResult<i64>;

    /// Records that `name` has got to `position`. Positions only move forward: an older one is
    /// ignored. With `fence = Some(token)` the write happens only while `token` is the current
    /// token of the lease called `name`; answers false when it was fenced out (nothing written).
    async fn save_position(&self, name: &str, position: i64, fence: Option<i64>) -> StoreResult<bool>;

    /// Takes the lease `name` for `holder` when it is free or expired, or renews it when
    /// `holder` already holds it, for `ttl` from now. Answers the fencing token when `holder`
    /// holds the lease after the call, None when another holder's lease is still running.
    /// Renewing keeps the token; a change of holder answers a token larger than any before.
    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> StoreResult<Option<i64>>;

    /// Gives the lease up at once if `holder` holds it (a clean shutdown), so another relay can
    /// take over without waiting for it to expire.
    async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()>;

    /// Deletes outbox rows at or below `up_to_position` whose event time is before
    /// `older_than_micros` (the retention window); answers how many it deleted. `events_after`
    /// never answers a deleted row again.
    async fn prune_outbox(&self, up_to_position: i64, older_than_micros: i64) -> StoreResult<u64>;
}
