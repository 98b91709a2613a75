//! The proxy handler: every request that is not the gateway's own goes to an upstream chosen by
//! the pool, and is sent again to a different upstream only when the rules in `retry` allow it.
//!
//! Each attempt ends in one of four ways, and each decides health, retry and answer:
//! an answer (passed on, unless it is a 502/503/504 of a request safe to repeat), a connection
//! that failed before anything was sent (always retryable), a broken exchange (retryable only
//! when safe to repeat; else 502, outcome unknown), or a timeout (504, never retried: a slow
//! write retried elsewhere doubles the load that made it slow).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use coffer_ratelimit::{Decision, Limits};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;

use crate::auth::{self, EdgeAuth};
use crate::body::{self, Held, HoldError, Logged, ProxyBody};
use crate::client::Peer;
use crate::config::{GatewayConfig, TrustedProxies};
use crate::headers;
use crate::limits::EdgeLimits;
use crate::observe::{self, AccessRecord, RetryReason};
use crate::pool::{InFlight, Outcome, Pool, Upstream};
use crate::problem::GatewayProblem;
use crate::retry::{self, Budget, Replay};
use crate::tls::Connector;

/// What every request handler shares.
pub struct Shared {
    pub pool: Arc<Pool>,
    pub limits: EdgeLimits,
    /// The token check; `None` leaves tokens to the replicas.
    auth: Option<EdgeAuth>,
    /// Whether clients speak TLS to the gateway (for `x-forwarded-proto`).
    tls: bool,
    pub trusted_proxies: TrustedProxies,
    /// One permit per request in hand: the concurrency limit that sheds load.
    concurrency: Arc<tokio::sync::Semaphore>,
    /// One permit per byte of request body held in memory, over all requests.
    held_body_budget: Arc<tokio::sync::Semaphore>,
    max_body_bytes: u64,
    max_header_bytes: usize,
    body_read_timeout: Duration,
    pub client: Client<Connector, ProxyBody>,
    pub budget: Budget,
    upstream_timeout: Duration,
    retry_body_limit_bytes: usize,
    max_retries: u32,
    retry_backoff: Duration,
}

impl Shared {
    pub fn new(
        config: &GatewayConfig,
        pool: Arc<Pool>,
        client: Client<Connector, ProxyBody>,
        limits: Limits,
        auth: Option<EdgeAuth>,
    ) -> Self {
        Self {
            pool,
            limits: EdgeLimits::new(config, limits),
            auth,
            tls: config.tls_cert_path.is_some(),
            trusted_proxies: config.trusted_proxies.clone(),
            concurrency: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_requests)),
            held_body_budget: Arc::new(tokio::sync::Semaphore::new(config.max_held_body_bytes)),
            max_body_bytes: config.max_body_bytes,
            max_header_bytes: config.max_header_bytes,
            body_read_timeout: Duration::from_millis(config.body_read_timeout_ms),
            client,
            budget: Budget::new(config.retry_budget_percent, config.retry_budget_min_per_second),
            upstream_timeout: Duration::from_millis(config.upstream_timeout_ms),
            retry_body_limit_bytes: config.retry_body_limit_bytes,
            max_retries: config.max_retries,
            retry_backoff: Duration::from_millis(config.retry_backoff_ms),
        }
    }
}

/// The methods an HTTP API is spoken with; anything else (TRACE, CONNECT, made-up ones) is
/// refused at the edge.
fn is_api_method(method: &http::Method) -> bool {
    use http::Method;
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::POST, Method::PUT, Method::PATCH, Method::DELETE]
        .contains(method)
}

/// A path with no `.`/`..` segment (plain or percent-encoded) and no encoded slash, backslash
/// or control character: what a router behind the edge may read differently is refused.
fn is_plain_path(path: &str) -> bool {
    let bytes = path.as_bytes();
    // The common path holds none of the bytes the checks below look at.
    let suspect = |b: &u8| matches!(b, b'%' | b'.' | b'\\') || b.is_ascii_control();
    if path.starts_with('/') && !bytes.iter().any(suspect) {
        return true;
    }
    let tricky_escape = bytes.windows(3).any(|w| {
        let escaped = (w[1], w[2].to_ascii_lowercase());
        w[0] == b'%' && matches!(escaped, (b'2', b'e' | b'f') | (b'5', b'c') | (b'0', b'0'))
    });
    let dot_segment = path.split('/').any(|segment| segment == "." || segment == "..");
    let odd_byte = bytes.iter().any(|b| *b == b'\\' || b.is_ascii_control());
    path.starts_with('/') && !tricky_escape && !dot_segment && !odd_byte
}

/// The body length a request declares, if it does.
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// How one attempt ended.
enum Attempt {
    Answered(Response<Incoming>, InFlight),
    /// The connection failed before the request was written.
    Unsent,
    /// The exchange failed after the request may have been written.
    Broken,
    TimedOut,
}

/// Answers one request of a client: every request on the proxy listener comes here.
pub async fn handle(shared: &Shared, peer: &Peer, request: Request<Incoming>) -> Response<Logged<Body>> {
    let (mut parts, body) = request.into_parts();
    let request_id = headers::request_id(&parts.headers);
    let client = peer.client(&parts.headers, &shared.trusted_proxies);
    let mut record =
        AccessRecord::new(request_id.clone(), client.ip, parts.method.clone(), parts.uri.clone());
    // Shed, refused and limited before anything else: they cost no upstream work and no budget.
    let Ok(_permit) = shared.concurrency.clone().try_acquire_owned() else {
        return answer(GatewayProblem::Overloaded.response(), record, None, &request_id);
    };
    if !is_api_method(&parts.method) {
        return answer(GatewayProblem::OddMethod.response(), record, None, &request_id);
    }
    if !is_plain_path(parts.uri.path()) {
        return answer(GatewayProblem::OddPath.response(), record, None, &request_id);
    }
    let header_bytes: usize =
        parts.headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    if header_bytes > shared.max_header_bytes {
        return answer(GatewayProblem::HeadersTooLarge.response(), record, None, &request_id);
    }
    if declared_length(&parts.headers).is_some_and(|length| length > shared.max_body_bytes) {
        return answer(GatewayProblem::TooLarge.response(), record, None, &request_id);
    }
    if let Decision::Limited { retry_after } = shared.limits.check_ip(&client.limit_name).await {
        return answer(GatewayProblem::rate_limited(retry_after), record, None, &request_id);
    }
    let by_key = match &shared.auth {
        Some(_) if auth::is_public(parts.uri.path()) => Decision::Allowed,
        Some(edge) => match edge.check(&parts.headers).await {
            Ok(key) => {
                record.key_id = Some(key.id.0);
                shared.limits.check_key(&key).await
            }
            Err(problem) => return answer(problem.response(), record, None, &request_id),
        },
        None => shared.limits.check_token(&parts.headers).await,
    };
    if let Decision::Limited { retry_after } = by_key {
        return answer(GatewayProblem::rate_limited(retry_after), record, None, &request_id);
    }
    shared.budget.deposit();
    headers::to_upstream(&mut parts.headers, &request_id, client.forwarded_for, shared.tls);
    let hold =
        body::hold(body, shared.retry_body_limit_bytes, shared.max_body_bytes, &shared.held_body_budget);
    let held = match tokio::time::timeout(shared.body_read_timeout, hold).await {
        Ok(Ok(held)) => held,
        Ok(Err(HoldError::TooLarge)) => {
            return answer(GatewayProblem::TooLarge.response(), record, None, &request_id);
        }
        Ok(Err(HoldError::NoRoom)) => {
            return answer(GatewayProblem::Overloaded.response(), record, None, &request_id);
        }
        Ok(Err(HoldError::Read(err))) => {
            tracing::debug!(error = %err, "reading the request body failed");
            return answer(GatewayProblem::BadBody.response(), record, None, &request_id);
        }
        Err(_) => return answer(GatewayProblem::SlowBody.response(), record, None, &request_id),
    };
    // Only a failed attempt asks, so the body of a request that succeeds is never parsed.
    let safe_to_repeat = || retry::classify(&parts.method, &parts.headers, held.bytes()) == Replay::Safe;
    let path_and_query =
        parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));

    let Some(mut upstream) = shared.pool.pick(&[]) else {
        return answer(GatewayProblem::NoUpstream.response(), record, None, &request_id);
    };
    let mut tried: Vec<Arc<Upstream>> = Vec::new();
    loop {
        record.upstream = Some(upstream.url.clone());
        let attempt = send(shared, &upstream, &parts, &path_and_query, &held).await;
        tried.push(upstream.clone());
        let retry_reason = match &attempt {
            Attempt::Answered(response, _) if retry::is_retryable_status(response.status()) => {
                (held.available() && safe_to_repeat()).then_some(RetryReason::Status)
            }
            Attempt::Answered(..) | Attempt::TimedOut => None,
            Attempt::Unsent => held.available().then_some(RetryReason::Unsent),
            Attempt::Broken => (held.available() && safe_to_repeat()).then_some(RetryReason::Broken),
        };
        // The next upstream is chosen before the budget is asked, so that a retry with nowhere
        // to go costs no token and the client gets this attempt's own answer.
        let next = match retry_reason {
            Some(_) if record.retries < shared.max_retries => shared.pool.pick(&tried),
            _ => None,
        };
        if let (Some(reason), Some(next)) = (retry_reason, next) {
            if shared.budget.withdraw() {
                observe::retried(reason);
                record.retries += 1;
                tokio::time::sleep(retry::backoff(shared.retry_backoff, record.retries)).await;
                upstream = next;
                continue;
            }
            observe::retry_denied();
        }
        return match attempt {
            Attempt::Answered(response, in_flight) => {
                let (mut parts, incoming) = response.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                answer(Response::from_parts(parts, Body::new(incoming)), record, Some(in_flight), &request_id)
            }
            Attempt::Unsent => answer(GatewayProblem::Unreachable.response(), record, None, &request_id),
            Attempt::Broken => answer(GatewayProblem::Broken.response(), record, None, &request_id),
            Attempt::TimedOut => answer(GatewayProblem::Timeout.response(), record, None, &request_id),
        };
    }
}

/// One attempt on one upstream, its result recorded in the pool.
async fn send(
    shared: &Shared,
    upstream: &Arc<Upstream>,
    parts: &http::request::Parts,
    path_and_query: &PathAndQuery,
    held: &Held,
) -> Attempt {
    let uri = upstream.url.join(path_and_query.clone());
    let mut request = http::Request::new(held.for_attempt());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = parts.headers.clone();
    upstream.url.address_by_name(request.headers_mut());

    let in_flight = upstream.start();
    let started = Instant::now();
    let attempt = match tokio::time::timeout(shared.upstream_timeout, shared.client.request(request)).await {
        Ok(Ok(response)) => Attempt::Answered(response, in_flight),
        Ok(Err(err)) if err.is_connect() => Attempt::Unsent,
        Ok(Err(err)) => {
            tracing::debug!(upstream = %upstream.url, error = %err, "exchange with upstream broke");
            Attempt::Broken
        }
        Err(_) => Attempt::TimedOut,
    };
    let outcome = match &attempt {
        Attempt::Answered(response, _) if !response.status().is_server_error() => {
            Outcome::Answered(started.elapsed())
        }
        _ => Outcome::Failed,
    };
    shared.pool.record(upstream, outcome);
    attempt
}

/// The response to the client: the request id on it, the access log written when it ends.
fn answer(
    response: Response<Body>,
    mut record: AccessRecord,
    in_flight: Option<InFlight>,
    id: &HeaderValue,
) -> Response<Logged<Body>> {
    let (mut parts, body) = response.into_parts();
    parts.headers.insert(headers::REQUEST_ID.clone(), id.clone());
    record.status = parts.status;
    Response::from_parts(parts, Logged::new(body, record, in_flight))
}

#[cfg(test)]
mod tests {
    use super::is_plain_path;

    #[test]
    fn only_plain_paths_pass() {
        for plain in ["/", "/v1/ledgers", "/v1/accounts/a.b", "/v1/x%20y", "/v1/%41", "/v1/..x", "/v1/%2"] {
            assert!(is_plain_path(plain), "{plain}");
        }
        for odd in [
            "v1/ledgers",
            "/v1/../keys",
            "/v1/./keys",
            "/v1/..",
            "/v1/%2e%2e/admin",
            "/v1/%2E%2E/admin",
            "/v1/..%2fkeys",
            "/v1/ledgers%2Fusd",
            "/v1/a%5cb",
            "/v1/a%5Cb",
            "/v1/a%00",
            "/v1/a\\b",
            "/v1/a\u{7f}",
        ] {
            assert!(!is_plain_path(odd), "{odd}");
        }
    }
}
