//! `coffer-gateway`: Coffer's edge proxy (DESIGN §1). Clients talk to it; it spreads their
//! requests over the api replicas, routes around a replica that fails, retries only what is
//! safe to retry, and logs and measures every request.
//!
//! The rooms: `config` (what to run with, checked at start), `limits` (rate limits per client
//! address and API key), `pool` (health and choice of
//! upstream), `health` (active checks), `retry` (what may be repeated, the budget), `headers`
//! (what a proxy rewrites), `body` (holding, handing off and logging bodies), `proxy` (the
//! handler), `problem` (the gateway's own error answers), `observe` (access log and metrics).
//! This file binds the listeners and runs them until a drain.

mod body;
mod config;
mod headers;
mod health;
mod limits;
mod observe;
mod pool;
mod problem;
mod proxy;
mod retry;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

pub use coffer_ratelimit::Limits;
pub use config::{ConfigError, GatewayConfig, UpstreamUrl, Upstreams};

/// Why the gateway could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid gateway configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the gateway's server failed: {0}")]
    Serve(std::io::Error),
}

/// A gateway with its listeners bound, not yet serving.
pub struct Gateway {
    config: GatewayConfig,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shared: Arc<proxy::Shared>,
    metrics: PrometheusHandle,
}

impl Gateway {
    /// Validates `config` and binds its listeners, with rate limits local to this gateway.
    pub async fn bind(config: GatewayConfig) -> Result<Self, GatewayError> {
        Self::bind_with_limits(config, Limits::local()).await
    }

    /// The same, with the given limits (shared through Redis by [`Limits::shared`]).
    pub async fn bind_with_limits(config: GatewayConfig, limits: Limits) -> Result<Self, GatewayError> {
        config.validate()?;
        let metrics = observe::install_metrics();
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| GatewayError::Bind { addr, source })
        };
        let listener = bind(config.listen).await?;
        let admin = match config.admin_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        connector.set_nodelay(true);
        let client =
            Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        let shared = Arc::new(proxy::Shared::new(&config, client, limits));
        Ok(Self { config, listener, admin, shared, metrics })
    }

    /// Where clients connect (the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// Where the admin endpoints are, if they are served.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then drains: the listeners close, requests in flight
    /// finish (for at most `drain_timeout_ms`), and the health checks stop.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let Gateway { config, listener, admin, shared, metrics } = self;
        let _checks = health::spawn(
            shared.clone(),
            Duration::from_millis(config.check_interval_ms),
            Duration::from_millis(config.check_timeout_ms),
        );
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        if let Some(admin) = admin {
            let app = admin_router(shared.clone(), metrics);
            tokio::spawn(
                axum::serve(admin, app).with_graceful_shutdown(stopped(stop_rx.clone())).into_future(),
            );
        }
        let app = Router::new().fallback(proxy::handle).with_state(shared);
        let server = tokio::spawn(
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(stopped(stop_rx))
                .into_future(),
        );
        tracing::info!(listen = %config.listen, upstreams = config.upstreams.0.len(), "coffer gateway is serving");
        shutdown.await;
        tracing::info!("gateway draining: no new connections, finishing requests in flight");
        let _ = stop_tx.send(true);
        match tokio::time::timeout(Duration::from_millis(config.drain_timeout_ms), server).await {
            Ok(Ok(Ok(()))) => tracing::info!("gateway drained"),
            Ok(Ok(Err(err))) => return Err(GatewayError::Serve(err)),
            Ok(Err(join)) => return Err(GatewayError::Serve(std::io::Error::other(join))),
            Err(_) => tracing::warn!("requests in flight did not finish within the drain timeout"),
        }
        Ok(())
    }
}

/// The gateway's own endpoints, on their own listener.
fn admin_router(shared: Arc<proxy::Shared>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/gateway/healthz", get(|| async { "ok" }))
        .route("/gateway/readyz", get(readyz))
        .route("/gateway/upstreams", get(upstreams))
        .route("/gateway/metrics", get(move || async move { metrics.render() }))
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<proxy::Shared>>) -> Response {
    if shared.pool.any_healthy() {
        "ready".into_response()
    } else {
        (http::StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream").into_response()
    }
}

async fn upstreams(State(shared): State<Arc<proxy::Shared>>) -> Response {
    axum::Json(shared.pool.view()).into_response()
}
