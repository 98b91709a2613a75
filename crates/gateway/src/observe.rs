//! What the gateway tells its operators: one JSON access-log line per request (through
//! `tracing`, target `coffer_gateway::access`) and the `coffer_gateway_*` metrics.
//!
//! The log line is written when the response body has been sent (or the client went away), so
//! it carries the bytes really sent and the whole latency. Metric labels are bounded: the status
//! code, and the upstream URL, which comes from the configuration and never from a request.

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, StatusCode, Uri};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::UpstreamUrl;

const REQUESTS_TOTAL: &str = "coffer_gateway_requests_total";
const REQUEST_DURATION: &str = "coffer_gateway_request_duration_seconds";
const UPSTREAM_HEALTHY: &str = "coffer_gateway_upstream_healthy";
const RETRIES_TOTAL: &str = "coffer_gateway_retries_total";
const RETRIES_DENIED_TOTAL: &str = "coffer_gateway_retries_denied_total";
/// Installs the process-wide Prometheus recorder (once; see `coffer_prometheus::install`) and
/// describes the gateway's metrics.
pub fn install_metrics() -> PrometheusHandle {
    let handle = coffer_prometheus::install(&[REQUEST_DURATION]);
    metrics::describe_counter!(REQUESTS_TOTAL, "Requests answered by the gateway, by status");
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time from a request's arrival to the end of its response body"
    );
    metrics::describe_gauge!(UPSTREAM_HEALTHY, "1 while an upstream may take requests, else 0");
    metrics::describe_counter!(RETRIES_TOTAL, "Requests sent again to another upstream, by reason");
    metrics::describe_counter!(RETRIES_DENIED_TOTAL, "Retries the retry budget refused");
    handle
}

// The per-request metrics are registered once, on first use, and kept: naming a metric on every
// request costs a registry lookup (and a formatted label) each time. First use is after
// `install_metrics`, which `Gateway::bind` calls before anything is served.
static REQUESTS_BY_STATUS: [OnceLock<Counter>; 900] = [const { OnceLock::new() }; 900];
static DURATIONS: OnceLock<Histogram> = OnceLock::new();

fn requests_total(status: StatusCode) -> &'static Counter {
    // A `StatusCode` is 100..=999.
    REQUESTS_BY_STATUS[usize::from(status.as_u16() - 100)]
        .get_or_init(|| metrics::counter!(REQUESTS_TOTAL, "status" => status.as_str().to_owned()))
}

pub fn upstream_health(url: &UpstreamUrl, healthy: bool) {
    metrics::gauge!(UPSTREAM_HEALTHY, "upstream" => url.to_string()).set(if healthy { 1.0 } else { 0.0 });
}

/// Why a request was sent again.
#[derive(Debug, Clone, Copy)]
pub enum RetryReason {
    /// The connection failed before anything was sent.
    Unsent,
    /// The exchange broke; the request was safe to repeat.
    Broken,
    /// The upstream answered 502, 503 or 504; the request was safe to repeat.
    Status,
}

pub fn retried(reason: RetryReason) {
    let reason = match reason {
        RetryReason::Unsent => "unsent",
        RetryReason::Broken => "broken",
        RetryReason::Status => "status",
    };
    metrics::counter!(RETRIES_TOTAL, "reason" => reason).increment(1);
}

pub fn retry_denied() {
    metrics::counter!(RETRIES_DENIED_TOTAL).increment(1);
}

/// The fields of one access-log line, filled while the request is handled.
#[derive(Debug)]
pub struct AccessRecord {
    pub start: Instant,
    pub request_id: HeaderValue,
    /// The client's address (see `client`).
    pub client: IpAddr,
    pub method: Method,
    pub uri: Uri,
    pub status: StatusCode,
    pub upstream: Option<UpstreamUrl>,
    pub retries: u32,
    /// The API key checked at the edge (its id; the token is never logged).
    pub key_id: Option<uuid::Uuid>,
}

impl AccessRecord {
    pub fn new(request_id: HeaderValue, client: IpAddr, method: Method, uri: Uri) -> Self {
        Self {
            start: Instant::now(),
            request_id,
            client,
            method,
            uri,
            status: StatusCode::OK,
            upstream: None,
            retries: 0,
            key_id: None,
        }
    }

    /// Writes the line and the metrics; `complete` is false when the body did not finish.
    pub fn finish(self, bytes: u64, complete: bool) {
        let elapsed = self.start.elapsed();
        tracing::info!(
            target: "coffer_gateway::access",
            request_id = self.request_id.to_str().unwrap_or_default(),
            client = %self.client,
            key_id = self.key_id.map_or_else(|| "-".to_owned(), |id| id.to_string()),
            method = self.method.as_str(),
            path = self.uri.path(),
            status = self.status.as_u16(),
            bytes,
            complete,
            latency_ms = millis(elapsed),
            upstream = self.upstream.as_ref().map_or_else(|| "-".to_owned(), UpstreamUrl::to_string),
            retries = self.retries,
            "request"
        );
        requests_total(self.status).increment(1);
        DURATIONS.get_or_init(|| metrics::histogram!(REQUEST_DURATION)).record(elapsed.as_secs_f64());
    }
}

fn millis(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0
}
