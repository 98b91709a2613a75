//! Offline administration of a SQLite data dir: `coffer migrate` and `coffer keys …`.
//!
//! These take no data dir lock, so they work while a server runs: WAL and the busy timeout let
//! their short write transactions take turns with the server's batches.

use std::path::Path;

use super::{audit, db_error, keys, schema};
use crate::{AdminChange, ApiKey, AuditContext, KeyId, NewApiKey, StoreError, StoreResult};

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

/// Creates a key, recorded in the audit trail as done `by` (the CLI and its OS user) in the
/// same transaction.
pub fn create_key(dir: &Path, key: NewApiKey, by: &AuditContext) -> StoreResult<ApiKey> {
    let mut conn = schema::open_writer(dir)?;
    let done = audit::administer_alone(&mut conn, &AdminChange::CreateKey(key), by).map_err(db_error)?;
    done.effect.made_key().ok_or_else(|| StoreError::unavailable("a key create made no key"))
}

pub fn list_keys(dir: &Path) -> StoreResult<Vec<ApiKey>> {
    let conn = schema::open_writer(dir)?;
    keys::list(&conn).map_err(db_error)
}

/// Revokes a key at once (a running server sees it on its next lookup), recorded in the audit
/// trail as done `by`; false when there is none.
pub fn revoke_key(dir: &Path, id: KeyId, by: &AuditContext) -> StoreResult<bool> {
    let mut conn = schema::open_writer(dir)?;
    Ok(audit::administer_alone(&mut conn, &AdminChange::RevokeKey(id), by)
        .map_err(db_error)?
        .effect
        .applied())
}
