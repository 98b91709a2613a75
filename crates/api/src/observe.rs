//! Observability designed in: a request id on every request and response, one tracing span per
//! request (method, route, status, latency, and the W3C trace id when the request came with a
//! `traceparent`), the request timeout, and the HTTP metrics.
//!
//! Metric labels come from the matched route template (`/v1/transfers/{id}`), never the raw path,
//! and from static strings, so the label sets stay bounded and recording allocates nothing.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use coffer_ledger::TraceParent;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use tracing::Instrument;
use uuid::Uuid;

use crate::error::{ApiError, ErrorCode};
use crate::extract::Trace;
use crate::routes::ROUTES;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const REQUESTS_TOTAL: &str = "coffer_http_requests_total";
const REQUEST_DURATION: &str = "coffer_http_request_duration_seconds";
/// Installs the process-wide Prometheus recorder (once; see `coffer_prometheus::install`) and
/// describes the API's metrics.
pub fn install_metrics() -> PrometheusHandle {
    let handle = coffer_prometheus::install(&[REQUEST_DURATION]);
    metrics::describe_counter!(REQUESTS_TOTAL, "HTTP requests answered, by method, route and status");
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time to answer an HTTP request, by method and route"
    );
    handle
}

/// The route a response answered, left by [`tag_route`] for the outer [`layer`].
#[derive(Clone, Copy)]
struct RouteLabel(&'static str);

/// The template of a matched route as a static string (the templates are a fixed list).
pub fn route_label(matched: Option<&MatchedPath>) -> &'static str {
    let Some(matched) = matched else { return "unmatched" };
    ROUTES.iter().map(|(path, _)| *path).find(|path| *path == matched.as_str()).unwrap_or("other")
}

/// Route layer: records which route template matched. It runs inside routing, where
/// [`MatchedPath`] is known; the 405 fallback tags its own responses the same way.
pub async fn tag_route(req: Request, next: Next) -> Response {
    let label = route_label(req.extensions().get::<MatchedPath>());
    let mut response = next.run(req).await;
    tag(&mut response, label);
    response
}

pub fn tag(response: &mut Response, label: &'static str) {
    response.extensions_mut().insert(RouteLabel(label));
}

/// The outermost layer: request id, span, timeout, metrics.
pub async fn layer(State(timeout): State<Duration>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .filter(|v| (1..=128).contains(&v.len()) && v.as_bytes().iter().all(u8::is_ascii_graphic))
        .cloned()
        .unwrap_or_else(new_request_id);
    req.headers_mut().insert(REQUEST_ID.clone(), request_id.clone());
    let method = method_label(req.method());
    let trace = Trace::of(req.headers()).0;
    let span = tracing::info_span!(
        "request",
        request_id = request_id.to_str().unwrap_or_default(),
        trace_id = trace.as_ref().map(TraceParent::trace_id),
        method,
        key_id = tracing::field::Empty,
        route = tracing::field::Empty,
        status = tracing::field::Empty,
        latency_us = tracing::field::Empty,
    );

    let answered = tokio::time::timeout(timeout, next.run(req)).instrument(span.clone()).await;
    let mut response = answered.unwrap_or_else(|_| {
        ApiError::new(
            ErrorCode::Unavailable,
            "the request timed out; a write may or may not have applied: retry with the same id or Idempotency-Key",
        )
        .retry_after(1)
        .into_response()
    });

    let elapsed = start.elapsed();
    let route = response.extensions().get::<RouteLabel>().map_or("unmatched", |r| r.0);
    let status = response.status();
    span.record("route", route);
    span.record("status", status.as_u16());
    span.record("latency_us", elapsed.as_micros() as u64);
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!("request failed");
        } else {
            tracing::debug!("request answered");
        }
    });
    metrics::counter!(REQUESTS_TOTAL, "method" => method, "route" => route, "status" => status_label(status))
        .increment(1);
    metrics::histogram!(REQUEST_DURATION, "method" => method, "route" => route).record(elapsed.as_secs_f64());

    response.headers_mut().insert(REQUEST_ID.clone(), request_id);
    response
}

fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = Uuid::now_v7().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_label(status: StatusCode) -> Cow<'static, str> {
    Cow::Borrowed(match status.as_u16() {
        200 => "200",
        201 => "201",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        503 => "503",
        _ => return Cow::Owned(status.as_str().to_owned()),
    })
}
