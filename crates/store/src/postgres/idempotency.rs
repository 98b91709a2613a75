//! Idempotency-Key records in PostgreSQL, where every replica sees them: a row is either a key in
//! flight (no status yet, held until `locked_until`) or a stored answer.
//!
//! `begin` claims the key with one INSERT … ON CONFLICT that only takes over an in-flight row
//! whose holder is gone (`locked_until` passed), so among any number of concurrent `begin`s on
//! any replicas exactly one proceeds; the others read the row and answer in flight, replay or
//! mismatch.

use coffer_ledger::Timestamp;
use deadpool_postgres::Client;

use super::pg_error;
use crate::{Fingerprint, IdempotencyBegin, IdempotencyScope, StoreError, StoreResult, StoredResponse};

/// How long a request may hold its key before a retry may take it over: longer than any request
/// may run, so it only frees a key whose request vanished (its process died).
const IN_FLIGHT_TTL_US: i64 = 60_000_000;

pub(super) async fn begin(
    client: &Client,
    scope: &IdempotencyScope,
    fingerprint: Fingerprint,
) -> StoreResult<IdempotencyBegin> {
    let now = Timestamp::now().as_micros();
    let claim = client
        .prepare_cached(
            "INSERT INTO idempotency (principal, key, fingerprint, locked_until, created_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (principal, key) DO UPDATE \
               SET fingerprint = EXCLUDED.fingerprint, locked_until = EXCLUDED.locked_until, \
                   created_at = EXCLUDED.created_at \
               WHERE idempotency.status IS NULL AND idempotency.locked_until < EXCLUDED.created_at \
             RETURNING 1",
        )
        .await
        .map_err(pg_error)?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
        [&scope.principal.0, &scope.key, &fingerprint.0.as_slice(), &(now + IN_FLIGHT_TTL_US), &now];
    if client.query_opt(&claim, &params).await.map_err(pg_error)?.is_some() {
        return Ok(IdempotencyBegin::Proceed);
    }
    let row = client
        .query_opt(
            "SELECT fingerprint, status, content_type, body FROM idempotency WHERE principal = $1 AND key = $2",
            &[&scope.principal.0, &scope.key],
        )
        .await
        .map_err(pg_error)?;
    // Purged between the two statements (it was past retention): the next attempt claims it.
    let Some(row) = row else {
        return Ok(IdempotencyBegin::InFlight);
    };
    let stored: &[u8] = row.get(0);
    if stored != fingerprint.0.as_slice() {
        return Ok(IdempotencyBegin::Mismatch);
    }
    Ok(match row.get::<_, Option<i32>>(1) {
        None => IdempotencyBegin::InFlight,
        Some(status) => IdempotencyBegin::Replay(StoredResponse {
            status: u16::try_from(status).unwrap_or(500),
            content_type: row.get::<_, Option<String>>(2).unwrap_or_default(),
            body: row.get::<_, Option<Vec<u8>>>(3).unwrap_or_default(),
        }),
    })
}

/// Stores the answer; only the request holding the key (same fingerprint, still in flight) can.
pub(super) async fn complete(
    client: &Client,
    scope: &IdempotencyScope,
    response: StoredResponse,
) -> StoreResult<()> {
    let statement = client
        .prepare_cached(
            "UPDATE idempotency SET status = $3, content_type = $4, body = $5, locked_until = NULL \
             WHERE principal = $1 AND key = $2 AND status IS NULL",
        )
        .await
        .map_err(pg_error)?;
    let status = i32::from(response.status);
    let stored = client
        .execute(
            &statement,
            &[&scope.principal.0, &scope.key, &status, &response.content_type, &response.body],
        )
        .await
        .map_err(pg_error)?;
    if stored == 0 {
        return Err(StoreError::unavailable("no request with this Idempotency-Key is in flight"));
    }
    Ok(())
}

/// Frees a key whose request ended without an answer worth keeping.
pub(super) async fn abandon(client: &Client, scope: &IdempotencyScope) -> StoreResult<()> {
    client
        .execute(
            "DELETE FROM idempotency WHERE principal = $1 AND key = $2 AND status IS NULL",
            &[&scope.principal.0, &scope.key],
        )
        .await
        .map_err(pg_error)?;
    Ok(())
}

/// Forgets answers older than `before`, a chunk at a time so no statement runs long.
pub(super) async fn purge(client: &Client, before: Timestamp) -> StoreResult<u64> {
    let mut total = 0;
    loop {
        let deleted = client
            .execute(
                "DELETE FROM idempotency WHERE ctid IN \
                 (SELECT ctid FROM idempotency WHERE created_at < $1 LIMIT 1000)",
                &[&before.as_micros()],
            )
            .await
            .map_err(pg_error)?;
        total += deleted;
        if deleted < 1000 {
            return Ok(total);
        }
    }
}
