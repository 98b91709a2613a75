//! What every handler shares: the store, the configuration, the key cache and the rendered spec.

use std::ops::Deref;
use std::sync::Arc;

use bytes::Bytes;
use coffer_events::{DeadLetterQueue, SecretKeys, TargetPolicy};
use coffer_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::Authenticator;
use crate::config::ApiConfig;
use crate::outbox_tail::OutboxTail;

/// Cheap to clone (one `Arc`), as axum clones the state for every request.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub store: Arc<dyn Store>,
    /// The consumers' dead letters, on whichever bus runs them.
    pub dead_letters: Arc<dyn DeadLetterQueue>,
    pub config: ApiConfig,
    pub auth: Authenticator,
    /// Security events for the audit trail, throttled.
    pub alarms: Arc<crate::audit::Alarms>,
    /// What `/metrics` renders; none when it is served on a listener of its own.
    pub metrics: Option<PrometheusHandle>,
    /// Where webhook URLs may point: special-purpose addresses, plain http.
    pub webhook_targets: TargetPolicy,
    /// The keys webhook signing secrets are sealed with at rest.
    pub webhook_keys: Arc<SecretKeys>,
    /// One permit per open event stream: their number is bounded.
    pub streams: Arc<tokio::sync::Semaphore>,
    /// The one reader of new events that the event streams follow.
    pub outbox_tail: Arc<OutboxTail>,
    /// `/openapi.json`, serialized once at start.
    pub openapi_json: Bytes,
    /// What this process is (store, bus, roles), for `GET /v1/admin/status`.
    pub about: crate::routes::ServerAbout,
    /// Whether the process is shutting down.
    pub shutdown: crate::Shutdown,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}
