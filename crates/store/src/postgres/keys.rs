//! API keys in PostgreSQL. Only the token's SHA-256 is stored; scopes are a comma-separated list.

use coffer_ledger::{InvalidValue, Timestamp};
use deadpool_postgres::{Client, GenericClient};
use tokio_postgres::Row;

use super::{codec, pg_error};
use crate::{ApiKey, KeyId, NewApiKey, Scope, StoreError, StoreResult, TokenHash};

const COLUMNS: &str = "id, name, scopes, rate_limit_per_second, created_at, revoked_at, expires_at";

const INSERT: &str = "INSERT INTO api_keys (id, name, scopes, rate_limit_per_second, token_hash, created_at, \
                      expires_at, bare_token) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Any number the other servers agree on: the advisory lock that makes bootstrapping one at a time.
const BOOTSTRAP_LOCK: i64 = 0x636f_6b65_7973; // "cokeys"

fn key(row: &Row) -> StoreResult<ApiKey> {
    let scopes: &str = codec::get(row, 2)?;
    let scopes = scopes
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            Scope::parse(s)
                .ok_or_else(|| StoreError::corrupt(format!("key row: {}", InvalidValue("unknown scope"))))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let rate: Option<i64> = codec::get(row, 3)?;
    Ok(ApiKey {
        id: KeyId(codec::get(row, 0)?),
        name: codec::get(row, 1)?,
        scopes,
        rate_limit_per_second: rate.and_then(|r| u32::try_from(r).ok()),
        created_at: Timestamp::from_micros(codec::get(row, 4)?),
        revoked_at: codec::get::<Option<i64>>(row, 5)?.map(Timestamp::from_micros),
        expires_at: codec::get::<Option<i64>>(row, 6)?.map(Timestamp::from_micros),
    })
}

fn scopes_text(scopes: &[Scope]) -> String {
    scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
}

async fn insert(client: &impl GenericClient, key: &NewApiKey, now: Timestamp) -> StoreResult<()> {
    let rate = key.rate_limit_per_second.map(i64::from);
    client
        .execute(
            INSERT,
            &[
                &key.id.0,
                &key.name,
                &scopes_text(&key.scopes),
                &rate,
                &key.token_hash.0.as_slice(),
                &now.as_micros(),
                &key.expires_at.map(Timestamp::as_micros),
                &key.bare_token,
            ],
        )
        .await
        .map_err(pg_error)?;
    Ok(())
}

pub(super) async fn create(
    client: &impl GenericClient,
    key: NewApiKey,
    now: Timestamp,
) -> StoreResult<ApiKey> {
    insert(client, &key, now).await?;
    Ok(key.stored(now))
}

/// Inserts `key` only into an empty table. Replicas starting together take turns on an
/// advisory lock, so exactly one of them bootstraps.
pub(super) async fn bootstrap(client: &mut Client, key: NewApiKey, now: Timestamp) -> StoreResult<bool> {
    let tx = client.transaction().await.map_err(pg_error)?;
    let created = bootstrap_in(&tx, &key, now).await?;
    tx.commit().await.map_err(pg_error)?;
    Ok(created)
}

/// [`bootstrap`] inside the caller's transaction, whose end releases the lock.
pub(super) async fn bootstrap_in(
    tx: &impl GenericClient,
    key: &NewApiKey,
    now: Timestamp,
) -> StoreResult<bool> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&BOOTSTRAP_LOCK]).await.map_err(pg_error)?;
    let empty = tx.query_opt("SELECT 1 FROM api_keys LIMIT 1", &[]).await.map_err(pg_error)?.is_none();
    if empty {
        insert(tx, key, now).await?;
    }
    Ok(empty)
}

/// The key `id`, locked until the caller's transaction ends.
pub(super) async fn lock_by_id(tx: &impl GenericClient, id: KeyId) -> StoreResult<Option<ApiKey>> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1 FOR UPDATE");
    tx.query_opt(&sql, &[&id.0]).await.map_err(pg_error)?.map(|row| key(&row)).transpose()
}

pub(super) async fn by_token(client: &Client, hash: TokenHash) -> StoreResult<Option<ApiKey>> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE token_hash = $1");
    let statement = client.prepare_cached(&sql).await.map_err(pg_error)?;
    client
        .query_opt(&statement, &[&hash.0.as_slice()])
        .await
        .map_err(pg_error)?
        .map(|row| key(&row))
        .transpose()
}

pub(super) async fn bare_token_hashes(client: &Client) -> StoreResult<Vec<TokenHash>> {
    let rows = client
        .query("SELECT token_hash FROM api_keys WHERE bare_token AND revoked_at IS NULL", &[])
        .await
        .map_err(pg_error)?;
    rows.iter()
        .map(|row| {
            let hash: &[u8] = codec::get(row, 0)?;
            hash.try_into()
                .map(TokenHash)
                .map_err(|_| StoreError::corrupt("key row: a token hash is not 32 bytes"))
        })
        .collect()
}

pub(super) async fn list(client: &impl deadpool_postgres::GenericClient) -> StoreResult<Vec<ApiKey>> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys ORDER BY created_at, id");
    client.query(&sql, &[]).await.map_err(pg_error)?.iter().map(key).collect()
}

/// Revokes a key, keeping the first revocation time; answers whether the key exists.
pub(super) async fn revoke(client: &impl GenericClient, id: KeyId, now: Timestamp) -> StoreResult<bool> {
    let changed = client
        .execute(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1",
            &[&id.0, &now.as_micros()],
        )
        .await
        .map_err(pg_error)?;
    Ok(changed == 1)
}

/// Makes a live key expire at `at`, or sooner if it already would; answers the key as it is now,
/// `None` when there is no such key.
pub(super) async fn expire(
    client: &impl GenericClient,
    id: KeyId,
    at: Timestamp,
) -> StoreResult<Option<ApiKey>> {
    let sql = format!(
        "UPDATE api_keys SET expires_at = LEAST(COALESCE(expires_at, $2), $2) WHERE id = $1 RETURNING {COLUMNS}"
    );
    client
        .query_opt(&sql, &[&id.0, &at.as_micros()])
        .await
        .map_err(pg_error)?
        .map(|row| key(&row))
        .transpose()
}
