//! `coffer gateway`: the edge proxy in front of the api replicas. The work is in
//! `coffer-gateway`; this wires the configuration, the key table and the signals to it: SIGTERM
//! (or ctrl-c) drains, SIGHUP reads the TLS certificate and the configuration again and applies
//! its upstream list.

use std::sync::Arc;

use anyhow::Context;
use coffer_gateway::tls::ServingCertificate;
use coffer_gateway::{GatewayConfig, UpstreamControl};
use coffer_store::AuditContext;
use coffer_store::KeyDirectory;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;

/// Runs the gateway until a shutdown signal; `reload` reads the configuration again (the same
/// file, environment and flags as at start).
pub async fn run(
    config: Config,
    reload: impl Fn() -> anyhow::Result<Config> + Send + 'static,
) -> anyhow::Result<()> {
    config.gateway.validate().context("invalid gateway configuration")?;
    let timeout = std::time::Duration::from_millis(config.gateway.redis_timeout_ms);
    let limits = match &config.redis_url {
        Some(url) => {
            let ca = config.redis_tls_ca_path.as_deref();
            coffer_gateway::Limits::shared_with_ca(url, "coffer-gateway", timeout, ca).context("redis_url")?
        }
        None => coffer_gateway::Limits::local(),
    };
    let keys = match config.gateway.check_tokens {
        true => Some(key_directory(&config).await?),
        false => None,
    };
    let started_with = config.gateway.clone();
    let gateway = coffer_gateway::Gateway::bind_with(config.gateway, limits, keys).await?;
    let hangups = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let reloads = tokio::spawn(reload_on_hangup(
        hangups,
        reload,
        gateway.upstream_control(),
        gateway.certificate(),
        started_with,
    ));
    gateway.serve(crate::serve::shutdown_signal()).await?;
    reloads.abort();
    Ok(())
}

/// On each SIGHUP: the TLS certificate and key are read again from their files (a renewal),
/// and the configuration is read again and its upstream list applied. A certificate or a
/// configuration that does not load changes nothing. Other settings are read at start only; a
/// change to them is reported, not applied.
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    reload: impl Fn() -> anyhow::Result<Config>,
    control: UpstreamControl,
    certificate: Option<Arc<ServingCertificate>>,
    started_with: GatewayConfig,
) {
    let besides_upstreams =
        |config: &GatewayConfig| GatewayConfig { upstreams: Default::default(), ..config.clone() };
    // A reload is the doing of whoever may signal this process: the audit log says so.
    let reloaded_by = AuditContext { actor: "gateway:reload".into(), client_address: None, request_id: None };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reading the configuration again");
        if let Some(Err(err)) = certificate.as_ref().map(|certificate| certificate.reload()) {
            tracing::error!(error = %err, "TLS certificate not reloaded; the current one stays");
        }
        let applied = match reload() {
            Ok(config) => control
                .replace(&config.gateway.upstreams, &reloaded_by)
                .await
                .map(|_| config.gateway)
                .context("gateway.upstreams"),
            Err(err) => Err(err),
        };
        match applied {
            Ok(config) if besides_upstreams(&config) != besides_upstreams(&started_with) => tracing::warn!(
                "gateway settings other than the upstream list changed; they take effect at the next start"
            ),
            Ok(_) => {}
            Err(err) => {
                tracing::error!(error = format!("{err:#}"), "configuration not reloaded; nothing changed")
            }
        }
    }
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
