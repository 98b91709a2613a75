//! `coffer serve`: open the store, make sure an admin key exists, start the roles asked for (the
//! API, the relay, the worker), run until a signal, then finish what is in flight.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use coffer_events::{SecretKeys, TargetPolicy, reseal};
use coffer_gateway::tls::{ServingCertificate, TlsListener};
use coffer_ledger::Timestamp;
use coffer_store::Store;
use tracing::{error, info, warn};

use crate::api_server::{self, ServerLimits};
use crate::config::{Config, Role};

pub async fn run(config: Config) -> anyhow::Result<()> {
    let store: Arc<dyn Store> = crate::store::open(&config).await?;
    if let Some(token) = coffer_api::bootstrap(store.as_ref(), config.bootstrap_token.as_deref()).await? {
        // Printed once, on standard output and never in a log line.
        println!("Created the first admin key. Its token, shown only now: {token}");
    }
    // Installed before the roles start, so that their first measurements are kept.
    let metrics = coffer_api::install_metrics();
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(serve_metrics(addr, coffer_api::metrics_router(metrics.clone())).await?),
        None => None,
    };
    let webhook_keys = Arc::new(webhook_keys(&config, store.as_ref()).await?);
    let pipeline = crate::pipeline::start(&config, store.clone(), webhook_keys.clone()).await?;
    info!(roles = ?config.roles, bus = if config.nats_url.is_some() { "jetstream" } else { "in-process" }, "roles started");
    if config.roles.contains(&Role::Api) {
        let dead_letters = pipeline.dead_letters.clone().context("the api role opens the dead letters")?;
        let services = coffer_api::Services {
            dead_letters,
            webhook_targets: webhook_targets(&config),
            webhook_keys,
            metrics_on_api: config.metrics_listen.is_none(),
            about: about(&config),
        };
        let app = coffer_api::router_with(store.clone(), config.api.clone(), metrics, services);
        serve_http(&config, app).await?;
    } else {
        shutdown_signal().await;
        info!("shutting down");
    }
    pipeline.shutdown().await;
    if let Some(listener) = metrics_listener {
        listener.abort();
    }
    store.shutdown().await;
    info!("stopped");
    Ok(())
}

/// What this process is, as `GET /v1/admin/status` reports it.
fn about(config: &Config) -> coffer_api::ServerAbout {
    coffer_api::ServerAbout {
        store: if config.database_url.is_some() { "postgresql" } else { "sqlite" },
        bus: if config.nats_url.is_some() { "jetstream" } else { "in-process" },
        roles: config.roles.iter().map(|role| format!("{role:?}").to_lowercase()).collect(),
        started: std::time::Instant::now(),
    }
}

/// Where webhooks may be sent, as configured.
fn webhook_targets(config: &Config) -> TargetPolicy {
    TargetPolicy {
        allow_private_networks: config.webhook_allow_private_networks,
        allow_insecure_http: config.webhook_allow_insecure_http,
    }
}

/// The keys that seal webhook secrets, when a role of this process handles them (the API makes
/// and rotates secrets, the worker signs with them); the secrets in the store are then sealed
/// under the first key before anything else runs: rows from before sealing existed, and rows
/// sealed under a key that has since been rotated.
async fn webhook_keys(config: &Config, store: &dyn Store) -> anyhow::Result<SecretKeys> {
    if !config.roles.iter().any(|role| matches!(role, Role::Api | Role::Worker)) {
        // A relay alone never touches a secret: it needs no key.
        return Ok(SecretKeys::ephemeral());
    }
    let keys = crate::webhook_keys::load(config)?;
    let done = reseal(store, &keys, Timestamp::now()).await.context("cannot re-seal the webhook secrets")?;
    if done.resealed > 0 || done.unreadable > 0 {
        info!(
            resealed = done.resealed,
            unreadable = done.unreadable,
            key_id = keys.sealing_id(),
            "webhook secrets sealed under the current key"
        );
    }
    Ok(keys)
}

/// Serves `app` (`/metrics` alone) on `addr` (`metrics_listen`), in the background until stopped.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    app: axum::Router,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (metrics_listen)"))?;
    info!(metrics_listen = %addr, "metrics are served on their own listener");
    Ok(tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            error!(error = %err, "the metrics listener failed");
        }
    }))
}

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the API (over TLS when configured) until a signal, then lets in-flight requests finish.
async fn serve_http(config: &Config, app: axum::Router) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let tls = match (&config.tls_cert_path, &config.tls_key_path) {
        (Some(cert), Some(key)) => Some(ServingCertificate::load(cert, key)?),
        _ => None,
    };
    let _reloads = tls.clone().map(|certificate| tokio::spawn(reload_certificate_on_hangup(certificate)));
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(listen = %config.listen, scheme, store = %crate::store::describe(config), "coffer is serving");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stopped = async {
        let _ = stop_rx.await;
    };
    let api = &config.api;
    let limits = ServerLimits {
        header_read_timeout: Duration::from_millis(api.header_read_timeout_ms),
        max_connections: api.max_connections,
        http2_max_concurrent_streams: api.http2_max_concurrent_streams,
        max_header_bytes: api.max_header_bytes,
    };
    let drain = Duration::from_millis(config.shutdown_timeout_ms);
    let server = match tls {
        Some(certificate) => {
            let listener = TlsListener::new(listener, certificate, TLS_HANDSHAKE_TIMEOUT)?;
            tokio::spawn(api_server::serve(listener, app, limits, stopped, drain))
        }
        None => tokio::spawn(api_server::serve(listener, app, limits, stopped, drain)),
    };
    shutdown_signal().await;
    info!("shutting down: finishing in-flight requests");
    let _ = stop_tx.send(());
    if !server.await.context("server task failed")? {
        warn!("in-flight requests did not finish in time");
    }
    Ok(())
}

/// On each SIGHUP the certificate and key are read again (a renewal); new connections get the
/// new certificate, open ones keep theirs. A pair that does not load changes nothing.
async fn reload_certificate_on_hangup(certificate: Arc<ServingCertificate>) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return warn!("cannot listen for SIGHUP: the TLS certificate is read at start only");
    };
    while hangups.recv().await.is_some() {
        if let Err(err) = certificate.reload() {
            error!(error = %err, "TLS certificate not reloaded; the current one stays");
        }
    }
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
