//! `coffer gateway`: the edge proxy in front of the api replicas. The work is in
//! `coffer-gateway`; this wires the configuration and the shutdown signal to it.

use anyhow::Context;

use crate::config::Config;

pub async fn run(config: Config) -> anyhow::Result<()> {
    config.gateway.validate().context("invalid gateway configuration")?;
    let gateway = coffer_gateway::Gateway::bind(config.gateway).await?;
    gateway.serve(crate::serve::shutdown_signal()).await?;
    Ok(())
}
