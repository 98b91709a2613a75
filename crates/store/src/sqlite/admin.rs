//! Offline administration of a SQLite data dir: `coffer migrate` and `coffer keys …`.
//!
//! These take no data dir lock, so they work while a server runs: WAL and the busy timeout let
//! their short write transactions take turns with the server's batches.

use std::path::Path;

use coffer_ledger::Timestamp;

use super::{db_error, keys, schema};
use crate::{ApiKey, KeyId, NewApiKey, StoreResult};

/// Whether `dir` holds a store, so that the offline commands can refuse to make one by mistake
/// in the wrong directory.
pub fn exists(dir: &Path) -> bool {
    schema::db_path(dir).is_file()
}

/// Creates the database if needed and brings it to this binary's schema; answers the version.
pub fn migrate(dir: &Path) -> StoreResult<u32> {
    schema::open_writer(dir)?;
    Ok(schema::SCHEMA_VERSION)
}

pub fn create_key(dir: &Path, key: NewApiKey) -> StoreResult<ApiKey> {
    let conn = schema::open_writer(dir)?;
    keys::create(&conn, key, Timestamp::now()).map_err(db_error)
}

pub fn list_keys(dir: &Path) -> StoreResult<Vec<ApiKey>> {
    let conn = schema::open_writer(dir)?;
    keys::list(&conn).map_err(db_error)
}

/// Revokes a key at once (a running server sees it on its next lookup); false when there is none.
pub fn revoke_key(dir: &Path, id: KeyId) -> StoreResult<bool> {
    let conn = schema::open_writer(dir)?;
    keys::revoke(&conn, id, Timestamp::now()).map_err(db_error)
}
