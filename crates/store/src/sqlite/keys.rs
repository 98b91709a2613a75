//! API keys in SQLite. Only the token's SHA-256 is stored; scopes are a comma-separated list.
//!
//! Key writes are rare, so they go straight to a write connection (the server's, or the one
//! `coffer keys` opens next to a running server) instead of through the sequencer.

use coffer_ledger::{InvalidValue, Timestamp};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use crate::{ApiKey, KeyId, NewApiKey, Scope, TokenHash};

const COLUMNS: &str = "id, name, scopes, rate_limit_per_second, created_at, revoked_at, expires_at";

fn scopes_text(scopes: &[Scope]) -> String {
    scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
}

fn key(row: &Row<'_>) -> rusqlite::Result<ApiKey> {
    let scopes = row.get_ref(2)?.as_str()?;
    let scopes = scopes
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            Scope::parse(s).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    2,
                    Type::Text,
                    Box::new(InvalidValue("unknown scope")),
                )
            })
        })
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ApiKey {
        id: KeyId(Uuid::from_bytes(row.get(0)?)),
        name: row.get(1)?,
        scopes,
        rate_limit_per_second: row.get(3)?,
        created_at: Timestamp::from_micros(row.get(4)?),
        revoked_at: row.get::<_, Option<i64>>(5)?.map(Timestamp::from_micros),
        expires_at: row.get::<_, Option<i64>>(6)?.map(Timestamp::from_micros),
    })
}

pub(crate) fn create(conn: &Connection, key: NewApiKey, now: Timestamp) -> rusqlite::Result<ApiKey> {
    conn.execute(
        "INSERT INTO api_keys (id, name, scopes, rate_limit_per_second, token_hash, created_at, expires_at, \
         bare_token) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            key.id.0.as_bytes(),
            key.name,
            scopes_text(&key.scopes),
            key.rate_limit_per_second,
            key.token_hash.0,
            now.as_micros(),
            key.expires_at.map(Timestamp::as_micros),
            key.bare_token
        ],
    )?;
    Ok(key.stored(now))
}

/// Inserts `key` only into an empty table. One statement, so two servers starting on the same
/// database cannot both bootstrap.
pub(crate) fn bootstrap(conn: &Connection, key: NewApiKey, now: Timestamp) -> rusqlite::Result<bool> {
    let inserted = conn.execute(
        "INSERT INTO api_keys (id, name, scopes, rate_limit_per_second, token_hash, created_at, expires_at, \
         bare_token) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 WHERE NOT EXISTS (SELECT 1 FROM api_keys)",
        params![
            key.id.0.as_bytes(),
            key.name,
            scopes_text(&key.scopes),
            key.rate_limit_per_second,
            key.token_hash.0,
            now.as_micros(),
            key.expires_at.map(Timestamp::as_micros),
            key.bare_token
        ],
    )?;
    Ok(inserted == 1)
}

pub(crate) fn by_token(conn: &Connection, hash: TokenHash) -> rusqlite::Result<Option<ApiKey>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM api_keys WHERE token_hash = ?1"))?;
    stmt.query_row([hash.0], key).optional()
}

pub(crate) fn by_id(conn: &Connection, id: KeyId) -> rusqlite::Result<Option<ApiKey>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM api_keys WHERE id = ?1"))?;
    stmt.query_row([id.0.as_bytes()], key).optional()
}

pub(crate) fn bare_token_hashes(conn: &Connection) -> rusqlite::Result<Vec<TokenHash>> {
    let mut stmt =
        conn.prepare_cached("SELECT token_hash FROM api_keys WHERE bare_token AND revoked_at IS NULL")?;
    stmt.query_map([], |row| row.get::<_, [u8; 32]>(0).map(TokenHash))?.collect()
}

pub(crate) fn list(conn: &Connection) -> rusqlite::Result<Vec<ApiKey>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM api_keys ORDER BY created_at, id"))?;
    stmt.query_map([], key)?.collect()
}

/// Revokes a key, keeping the first revocation time; answers whether the key exists.
pub(crate) fn revoke(conn: &Connection, id: KeyId, now: Timestamp) -> rusqlite::Result<bool> {
    let changed = conn.execute(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
        params![id.0.as_bytes(), now.as_micros()],
    )?;
    Ok(changed == 1)
}

/// Makes a key expire at `at`, or sooner if it already would; answers the key as it is now,
/// `None` when there is no such key.
pub(crate) fn expire(conn: &Connection, id: KeyId, at: Timestamp) -> rusqlite::Result<Option<ApiKey>> {
    let sql = format!(
        "UPDATE api_keys SET expires_at = MIN(COALESCE(expires_at, ?2), ?2) WHERE id = ?1 RETURNING {COLUMNS}"
    );
    conn.query_row(&sql, params![id.0.as_bytes(), at.as_micros()], key).optional()
}
