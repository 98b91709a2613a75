//! Operations endpoints, open without a token: liveness, readiness, metrics and the API document.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use metrics_exporter_prometheus::PrometheusHandle;

use super::json;
use crate::dto::Health;
use crate::error::{ApiError, ErrorCode};
use crate::openapi::NotReady;
use crate::state::AppState;

/// The process is alive.
#[utoipa::path(
    get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "Alive", body = Health))
)]
pub async fn healthz() -> Response {
    json(StatusCode::OK, &Health { status: "ok" })
}

/// The store can be reached and the process is not shutting down (nor stopping after a fatal
/// error); a load balancer sends traffic only while this is 200.
#[utoipa::path(
    get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, description = "Ready", body = Health), NotReady)
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    if state.shutdown.has_begun() {
        return Err(ApiError::new(ErrorCode::Unavailable, "this server is shutting down").retry_after(1));
    }
    match state.store.ping().await {
        Ok(()) => Ok(json(StatusCode::OK, &Health { status: "ok" })),
        // Not ready, and never again: the process is about to exit.
        Err(e) if e.is_fatal() => {
            Err(ApiError::new(ErrorCode::Unavailable, "this server stopped after an internal error")
                .retry_after(1))
        }
        Err(e) => Err(e.into()),
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(metrics) => render_metrics(metrics),
        // Served on `metrics_listen` instead: here it is a path like any unknown one.
        None => super::not_found().await.into_response(),
    }
}

/// The metrics in the Prometheus text format, on whichever listener serves them.
pub fn render_metrics(metrics: &PrometheusHandle) -> Response {
    let mut response = metrics.render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

/// This API as an OpenAPI 3.1 document, generated from the handlers and their types.
#[utoipa::path(
    get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"))
)]
pub async fn openapi_json(State(state): State<AppState>) -> Response {
    let mut response = state.openapi_json.clone().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
