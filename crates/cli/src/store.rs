//! Which store this process runs on: PostgreSQL when `database_url` is set, else the embedded
//! SQLite store in `data_dir`.

use std::sync::Arc;

use anyhow::Context;
use coffer_store::{PgStore, SqliteStore, Store, StoreError};

use crate::config::Config;

pub async fn open(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &config.database_url {
        // Its errors say what failed, where (host and port, never the password) and the
        // server's own words.
        Some(url) => PgStore::connect(url, config.store.clone()).await.map_err(|e| match e {
            StoreError::Unavailable { context, source: None } => anyhow::anyhow!("{context} (database_url)"),
            StoreError::Unavailable { context, source: Some(cause) } => {
                anyhow::Error::new(cause).context(format!("{context} (database_url)"))
            }
            other => anyhow::Error::new(other).context("cannot open the PostgreSQL store (database_url)"),
        })?,
        None => SqliteStore::open(&config.data_dir, config.store.clone())
            .await
            .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?,
    })
}

/// Where the store is, for log lines: never the URL, which may hold a password.
pub fn describe(config: &Config) -> String {
    match config.database_url {
        Some(_) => "postgresql (database_url)".to_owned(),
        None => config.data_dir.display().to_string(),
    }
}

/// For the offline commands: the data dir must hold a store unless `create` says to make one,
/// so that a command run in the wrong directory says so instead of making an empty store there.
pub fn require_existing(data_dir: &std::path::Path, create: bool) -> anyhow::Result<()> {
    if create || coffer_store::sqlite_admin::exists(data_dir) {
        return Ok(());
    }
    anyhow::bail!(
        "no store in {}: run this where the server keeps its data (--data-dir or COFFER_DATA_DIR), \
         or pass --create to make a new one",
        data_dir.display()
    )
}
