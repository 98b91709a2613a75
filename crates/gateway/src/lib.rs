//! `coffer-gateway`: Coffer's edge proxy (DESIGN §1). Clients talk to it; it spreads their
//! requests over the api replicas, routes around a replica that fails, retries only what is
//! safe to retry, and logs and measures every request.
//!
//! The rooms: `config` (what to run with, checked at start), `server` (accepting connections:
//! header deadline, drain), `tls` (certificates both ways), `client` (who the client is: the peer, or behind trusted
//! proxies what they forwarded), `auth` (the token check), `limits` (rate limits per client
//! address and API key), `pool` (health and choice of upstream, the circuit breaker),
//! `discovery` (upstream names resolved into one upstream per address), `health` (active checks), `retry` (what may be repeated, the budget), `headers` (what a proxy
//! rewrites), `body` (holding, handing off and logging bodies), `proxy` (the handler),
//! `problem` (the gateway's own error answers), `observe` (access log and metrics), `admin`
//! (the gateway's own endpoints and the token that guards them).
//! This file binds the listeners and runs them until a drain.

mod admin;
mod audit;
mod auth;
mod body;
mod client;
mod config;
mod discovery;
mod headers;
mod health;
mod limits;
mod observe;
mod pool;
mod problem;
mod proxy;
mod retry;
mod server;
pub mod tls;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use coffer_store::{AuditContext, AuditOutcome};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

pub use admin::{AdminToken, MIN_TOKEN_LEN as MIN_ADMIN_TOKEN_LEN};
pub use coffer_ratelimit::Limits;
pub use coffer_store::KeyDirectory;
pub use config::{ConfigError, GatewayConfig, TrustedProxies, UpstreamUrl, Upstreams, list_setting};
pub use discovery::{Lookup, Resolve};
pub use tls::TlsError;

/// Why the gateway could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid gateway configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A gateway with its listeners bound, not yet serving.
pub struct Gateway {
    config: GatewayConfig,
    listener: server::Listener,
    admin: Option<(TcpListener, AdminToken)>,
    shared: Arc<proxy::Shared>,
    discovery: Arc<discovery::Discovery>,
    metrics: PrometheusHandle,
    /// The upstream list's changes, logged in a chain of this process's.
    audit: Arc<audit::AuditLog>,
}

impl Gateway {
    /// Validates `config` and binds its listeners, with rate limits local to this gateway and
    /// tokens left to the replicas.
    pub async fn bind(config: GatewayConfig) -> Result<Self, GatewayError> {
        Self::bind_with(config, Limits::local(), None).await
    }

    /// The same, with the given limits (shared through Redis by [`Limits::shared`]) and, when
    /// `keys` is given, the token check at the edge against that key table.
    pub async fn bind_with(
        config: GatewayConfig,
        limits: Limits,
        keys: Option<Arc<dyn KeyDirectory>>,
    ) -> Result<Self, GatewayError> {
        config.validate()?;
        let tls = match (&config.tls_cert_path, &config.tls_key_path) {
            (Some(cert), Some(key)) => Some(tls::ServingCertificate::load(cert, key)?),
            _ => None,
        };
        let metrics = observe::install_metrics();
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| GatewayError::Bind { addr, source })
        };
        let listener = server::Listener {
            tcp: bind(config.listen).await?,
            tls,
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
        };
        let admin = match config.admin_listen {
            Some(addr) => {
                if !addr.ip().is_loopback() {
                    tracing::warn!(admin_listen = %addr, "the admin listener is reachable beyond this host: its token is all that guards it");
                }
                Some((bind(addr).await?, admin_token(&config)?))
            }
            None => None,
        };
        let pool = Arc::new(pool::Pool::new(&config));
        let connector = tls::upstream_connector(&config, pool.clone())?;
        let client =
            Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        let auth = keys.map(|keys| auth::EdgeAuth::new(keys, Duration::from_millis(config.key_cache_ttl_ms)));
        let shared = Arc::new(proxy::Shared::new(&config, pool, client, limits, auth));
        let discovery = Self::discovery(&config, &shared, discovery::system_resolver());
        let audit = Arc::new(audit::AuditLog::default());
        Ok(Self { config, listener, admin, shared, discovery, metrics, audit })
    }

    /// The same gateway with upstream names resolved by `resolve` instead of the system's
    /// resolver (a test's table of names with several addresses). Call it before
    /// [`Gateway::upstream_control`].
    pub fn resolve_with(self, resolve: Resolve) -> Self {
        let discovery = Self::discovery(&self.config, &self.shared, resolve);
        Self { discovery, ..self }
    }

    fn discovery(
        config: &GatewayConfig,
        shared: &proxy::Shared,
        resolve: Resolve,
    ) -> Arc<discovery::Discovery> {
        let timeout = Duration::from_millis(config.check_timeout_ms);
        Arc::new(discovery::Discovery::new(shared.pool.clone(), config.upstreams.0.clone(), resolve, timeout))
    }

    /// Where clients connect (the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.tcp.local_addr().unwrap_or(self.config.listen)
    }

    /// What replaces the upstream list while the gateway serves.
    pub fn upstream_control(&self) -> UpstreamControl {
        UpstreamControl { discovery: self.discovery.clone(), audit: self.audit.clone() }
    }

    /// The certificate clients are served, when the gateway terminates TLS: what a reload
    /// reads again.
    pub fn certificate(&self) -> Option<Arc<tls::ServingCertificate>> {
        self.listener.tls.clone()
    }

    /// Where the admin endpoints are, if they are served.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then drains: the listeners close, requests in flight
    /// finish (for at most `drain_timeout_ms`), and the health checks stop.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let Gateway { config, listener, admin, shared, discovery, metrics, audit } = self;
        // Names are expanded into their addresses before the first request is taken.
        discovery.refresh().await;
        let _resolving = discovery::spawn(discovery.clone(), Duration::from_millis(config.dns_refresh_ms));
        let _checks = health::spawn(
            shared.clone(),
            Duration::from_millis(config.check_interval_ms),
            Duration::from_millis(config.check_timeout_ms),
        );
        let admin = admin.map(|(admin, token)| {
            let control = UpstreamControl { discovery: discovery.clone(), audit: audit.clone() };
            let app = admin::router(&token, shared.clone(), control, metrics)
                .into_make_service_with_connect_info::<SocketAddr>();
            tokio::spawn(axum::serve(admin, app).into_future())
        });
        let scheme = if listener.tls.is_some() { "https" } else { "http" };
        tracing::info!(listen = %config.listen, scheme, upstreams = config.upstreams.0.len(), "coffer gateway is serving");
        let shutdown = async move {
            shutdown.await;
            tracing::info!("gateway draining: no new connections, finishing requests in flight");
        };
        let drain = Duration::from_millis(config.drain_timeout_ms);
        if server::serve(listener, shared, shutdown, drain).await {
            tracing::info!("gateway drained");
        } else {
            tracing::warn!("requests in flight did not finish within the drain timeout");
        }
        if let Some(admin) = admin {
            admin.abort();
        }
        Ok(())
    }
}

/// Replaces the upstream list of a running gateway: upstreams that stay keep their state, new
/// ones join, removed ones drain. Behind `PUT /gateway/upstreams` and the binary's reload.
#[derive(Clone)]
pub struct UpstreamControl {
    discovery: Arc<discovery::Discovery>,
    /// Where each replacement, and each refused one, is recorded.
    audit: Arc<audit::AuditLog>,
}

impl UpstreamControl {
    /// Applies `list` (its names resolved at once), or refuses it (empty, or an entry twice)
    /// and changes nothing; either is an audit log line naming `by`. Answers how many upstreams
    /// were added and removed.
    pub async fn replace(&self, list: &Upstreams, by: &AuditContext) -> Result<(usize, usize), ConfigError> {
        let asked: Vec<String> = list.0.iter().map(ToString::to_string).collect();
        if let Err(e) = list.validate() {
            let details = serde_json::json!({"upstreams": asked, "error": e.to_string()});
            self.audit.upstreams_changed(by, AuditOutcome::Denied, details);
            return Err(e);
        }
        let (added, removed) = self.discovery.set(list.0.clone()).await;
        tracing::info!(added, removed, upstreams = list.0.len(), "upstream list replaced");
        let details = serde_json::json!({"upstreams": asked, "added": added, "removed": removed});
        self.audit.upstreams_changed(by, AuditOutcome::Succeeded, details);
        Ok((added, removed))
    }
}

/// The admin token from the configuration: inline, or read from its file at start.
fn admin_token(config: &GatewayConfig) -> Result<AdminToken, ConfigError> {
    match (&config.admin_token, &config.admin_token_file) {
        (Some(token), _) => Ok(token.clone()),
        (None, Some(path)) => AdminToken::read(path),
        (None, None) => Err(ConfigError::OutOfRange {
            field: "admin_listen",
            reason: "needs gateway.admin_token or gateway.admin_token_file",
        }),
    }
}
