//! `coffer gateway`: the edge proxy in front of the api replicas. The work is in
//! `coffer-gateway`; this wires the configuration, the key table and the shutdown signal to it.

use std::sync::Arc;

use anyhow::Context;
use coffer_store::KeyDirectory;

use crate::config::Config;

pub async fn run(config: Config) -> anyhow::Result<()> {
    config.gateway.validate().context("invalid gateway configuration")?;
    let timeout = std::time::Duration::from_millis(config.gateway.redis_timeout_ms);
    let limits = match &config.redis_url {
        Some(url) => coffer_gateway::Limits::shared(url, "coffer-gateway", timeout).context("redis_url")?,
        None => coffer_gateway::Limits::local(),
    };
    let keys = match config.gateway.check_tokens {
        true => Some(key_directory(&config).await?),
        false => None,
    };
    let gateway = coffer_gateway::Gateway::bind_with(config.gateway, limits, keys).await?;
    gateway.serve(crate::serve::shutdown_signal()).await?;
    Ok(())
}

/// The replicas' key table, read-only: PostgreSQL when `database_url` is set, else the
/// embedded store's data dir (the gateway then runs on the same machine as its server).
async fn key_directory(config: &Config) -> anyhow::Result<Arc<dyn KeyDirectory>> {
    let keys = match &config.database_url {
        Some(url) => coffer_store::postgres_key_directory(url)
            .context("cannot reach the API keys for the token check (database_url)")?,
        None => coffer_store::sqlite_key_directory(&config.data_dir).await.with_context(|| {
            format!(
                "cannot read the API keys in {} for the token check (start the server first, \
                 or set gateway.check_tokens = false)",
                config.data_dir.display()
            )
        })?,
    };
    Ok(keys)
}
