//! The event pipeline's state on PostgreSQL: positions and leases, the projection, dead letters
//! and webhooks, one file per trait.
//!
//! Many `coffer serve` processes share these tables, so every write that must not interleave
//! with another is one statement or one transaction, never a read followed by a write.

mod coordination;
pub(super) mod dead_letters;
pub(super) mod projection;
pub(super) mod webhooks;

use std::collections::HashSet;
use std::hash::Hash;

use tokio_postgres::Row;

use super::{codec, pg_error};
use crate::{StoreError, StoreResult};

/// A failed COMMIT: refused by the server (nothing applied), or lost with the connection, when
/// it may have applied. The pipeline's writes are idempotent, so either way a retry is safe.
pub(super) fn commit_error(e: tokio_postgres::Error) -> StoreError {
    if e.as_db_error().is_some() {
        return pg_error(e);
    }
    StoreError::outcome_unknown("commit lost").because(e)
}

/// A `LIMIT` parameter: PostgreSQL counts rows in BIGINT.
fn row_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// The items whose key was not seen before in `items`, in order: a batch may repeat an event,
/// and the first occurrence is the one that counts.
fn first_of_each<T, K: Eq + Hash>(items: &[T], key: impl Fn(&T) -> K) -> Vec<&T> {
    let mut seen = HashSet::with_capacity(items.len());
    items.iter().filter(|item| seen.insert(key(item))).collect()
}

/// A BIGINT counter column that must fit a `u32` (attempts).
fn count_u32(row: &Row, column: usize, name: &str) -> StoreResult<u32> {
    let n: i64 = codec::get(row, column)?;
    u32::try_from(n).map_err(|_| codec::damaged(name, n))
}
