//! `coffer gateway`: the edge proxy in front of the api replicas. The work is in
//! `coffer-gateway`; this wires the configuration and the shutdown signal to it.

use anyhow::Context;

use crate::config::Config;

pub async fn run(config: Config) -> anyhow::Result<()> {
    config.gateway.validate().context("invalid gateway configuration")?;
    let timeout = std::time::Duration::from_millis(config.gateway.redis_timeout_ms);
    let limits = match &config.redis_url {
        Some(url) => coffer_gateway::Limits::shared(url, "coffer-gateway", timeout).context("redis_url")?,
        None => coffer_gateway::Limits::local(),
    };
    let gateway = coffer_gateway::Gateway::bind_with_limits(config.gateway, limits).await?;
    gateway.serve(crate::serve::shutdown_signal()).await?;
    Ok(())
}
