//! Coffer's HTTP API (DESIGN.md §2) on axum: routes, authentication and scopes, per-key rate
//! limits, Idempotency-Key handling, strict input, RFC 9457 problems, metrics and OpenAPI 3.1.
//!
//! The API parses requests into the ledger's domain types and hands every write to the store as
//! one [`coffer_ledger::Submission`]; it keeps no state of its own beyond caches, so any number
//! of replicas may serve the same store.
//!
//! Layers, outermost first: `observe::layer` (request id, span, timeout, metrics), the stop on a
//! fatal store error (`halt_on_fatal`), a panic catcher, routing, the route tag,
//! `idempotency::layer`, then each handler's extractors (caller and scope, ids, path, query, body).
//!
//! Choices where DESIGN §2 is silent:
//! - A malformed path parameter (not a UUID, not a ledger code) is a 400 naming it, not a 404.
//! - `POST /v1/transfers/{id}/post` and `/void` may be sent without a body (no Content-Type, no
//!   bytes), which reads as `{}`; any body sent must be JSON.
//! - `GET /v1/keys` needs the admin scope, like the other key routes.
//! - Under an Idempotency-Key, 401, 429, 413 and a malformed key header are answered without
//!   being stored (they say nothing about the request's effect); everything else 2xx/4xx is.
//! - `POST /v1/keys` always makes a fresh key id: a retry whose first answer was lost also lost
//!   the token, so it needs a new key.
//! - A batch with a structurally invalid item is refused whole (400 naming every bad field);
//!   business rules are judged per item.
//! - A key with its own `rate_limit_per_second` may burst one second's worth.

mod audit;
mod auth;
mod auth_failures;
mod client_text;
mod config;
mod dto;
mod error;
mod extract;
mod idempotency;
mod lifecycle;
mod observe;
mod openapi;
mod outbox_tail;
mod ratelimit;
mod routes;
mod state;

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use coffer_events::{DeadLetterQueue, SecretKeys, StoreDeadLetters, TargetPolicy};
use coffer_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::catch_panic::CatchPanicLayer;

pub use auth::{MIN_EXPOSED_BOOTSTRAP_TOKEN_LEN, bootstrap, generate_token};
pub use config::{ApiConfig, InvalidConfig};
pub use error::{ApiError, ErrorCode, Fatal, FieldError, PROBLEM_JSON, Problem};
pub use idempotency::derived_id;
pub use lifecycle::Shutdown;
pub use observe::install_metrics;
pub use routes::ServerAbout;

use audit::Alarms;
use auth::Authenticator;
use auth_failures::FailedAuths;
use outbox_tail::OutboxTail;
use ratelimit::RateLimits;
use state::{AppState, Shared};

/// What the API reaches beside the store.
pub struct Services {
    /// The consumers' dead letters: in the store with the in-process bus, or JetStream's.
    pub dead_letters: Arc<dyn DeadLetterQueue>,
    /// Where webhook URLs may point: special-purpose (loopback, private, …) addresses and plain
    /// http are refused by default, against server-side request forgery and eavesdropping.
    pub webhook_targets: TargetPolicy,
    /// The keys that seal webhook signing secrets at rest; the first one seals.
    pub webhook_keys: Arc<SecretKeys>,
    /// Whether `/metrics` is served here. Off when the process serves it on a listener of its
    /// own ([`metrics_router`]): then this listener answers it 404 like any unknown path, so
    /// the public API does not show the process's internals.
    pub metrics_on_api: bool,
    /// What this process is, for `GET /v1/admin/status`.
    pub about: ServerAbout,
    /// Begun when the process starts to shut down: `/readyz` then answers 503 and the event
    /// streams end with a `shutdown` event.
    pub shutdown: Shutdown,
}

/// The whole API over `store` with the in-process bus's services. `metrics` renders
/// `/metrics`; get it from [`install_metrics`].
pub fn router(store: Arc<dyn Store>, config: ApiConfig, metrics: PrometheusHandle) -> Router {
    let dead_letters = Arc::new(StoreDeadLetters(store.clone()));
    // Sealed under a key that lives as long as the process: a router built this way is for
    // tests and embedding; `coffer serve` passes the configured keys.
    let services = Services {
        dead_letters,
        webhook_targets: TargetPolicy::default(),
        webhook_keys: Arc::new(SecretKeys::ephemeral()),
        metrics_on_api: true,
        about: ServerAbout::default(),
        shutdown: Shutdown::default(),
    };
    router_with(store, config, metrics, services)
}

/// The whole API over `store` and `services`.
pub fn router_with(
    store: Arc<dyn Store>,
    config: ApiConfig,
    metrics: PrometheusHandle,
    services: Services,
) -> Router {
    let (routes, api) = routes::api_routes().split_for_parts();
    let openapi_json = Bytes::from(serde_json::to_vec(&openapi::finish(&api)).unwrap_or_default());
    let limits = RateLimits::new(config.rate_limit_per_second, config.rate_limit_burst);
    let failures = FailedAuths::new(config.auth_failures_per_second, config.auth_failure_burst);
    let alarms = Arc::new(Alarms::new(store.clone()));
    let auth =
        Authenticator::new(store.clone(), Duration::from_millis(config.key_cache_ttl_ms), limits, failures)
            .with_alarms(alarms.clone());
    let timeout = Duration::from_millis(config.request_timeout_ms.max(1));
    let Services { dead_letters, webhook_targets, webhook_keys, metrics_on_api, about, shutdown } = services;
    let streams = Arc::new(tokio::sync::Semaphore::new(config.max_event_streams));
    let outbox_tail = OutboxTail::new(store.clone());
    let halting = from_fn_with_state(store.clone(), halt_on_fatal);
    let state = AppState::new(Shared {
        outbox_tail,
        store,
        dead_letters,
        webhook_targets,
        webhook_keys,
        config,
        auth,
        alarms,
        metrics: metrics_on_api.then_some(metrics),
        streams,
        openapi_json,
        about,
        shutdown,
    });

    routes
        .route_layer(from_fn_with_state(state.clone(), idempotency::layer))
        .route_layer(from_fn(observe::tag_route))
        .method_not_allowed_fallback(routes::method_not_allowed)
        .fallback(routes::not_found)
        .with_state(state)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(halting)
        .layer(from_fn_with_state(timeout, observe::layer))
}

/// A request that met a fatal store error — a damaged row, a broken invariant — stops the store,
/// whichever store call met it (the store stops itself for those of its own calls that decode
/// money and events; this covers every other). The answer is the 500 the error made.
async fn halt_on_fatal(State(store): State<Arc<dyn Store>>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if let Some(Fatal(cause)) = response.extensions().get::<Fatal>() {
        store.halt().trip(cause.clone());
    }
    response
}

/// `/metrics` alone, for a listener of its own (`metrics_listen`): what a Prometheus server
/// scrapes, kept off the address clients reach.
pub fn metrics_router(metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(move || async move { routes::render_metrics(&metrics) }))
}

/// A panic is a bug; the client still gets a problem, never a dropped connection.
fn panic_response(_: Box<dyn Any + Send + 'static>) -> Response {
    ApiError::internal("a handler panicked").into_response()
}

/// The OpenAPI 3.1 document of every route, generated from the handlers' own types.
pub fn openapi() -> serde_json::Value {
    openapi::finish(&routes::api_routes().into_openapi())
}
