//! The gateway's own error answers, in the shape of the api's RFC 9457 problems
//! (`type`, `title`, `status`, `detail`, `code`) so a client parses one format whichever hop
//! failed. An upstream's own error answers pass through untouched.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

/// Why the gateway could not get an answer from an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayProblem {
    /// No upstream is healthy: nothing was sent (503 `unavailable`).
    NoUpstream,
    /// Connecting failed on every upstream tried: nothing was sent (502 `bad_gateway`).
    Unreachable,
    /// The exchange broke after the request may have left: the outcome is unknown (502).
    Broken,
    /// The upstream did not answer in time: the outcome is unknown (504 `gateway_timeout`).
    Timeout,
    /// The client's body could not be read (400 `invalid_request`).
    BadBody,
    /// The client address or API key is over its rate (429 `rate_limited`); nothing was sent.
    RateLimited,
    /// The gateway has as many requests in hand as it takes (503 `overloaded`); nothing was sent.
    Overloaded,
    /// The body declared is larger than the gateway takes (413 `payload_too_large`).
    TooLarge,
    /// The client sent its body too slowly (408 `request_timeout`); nothing was sent.
    SlowBody,
    /// The request's headers are larger than the gateway takes (431); nothing was sent.
    HeadersTooLarge,
    /// A method the API does not use (405 `method_not_allowed`); nothing was sent.
    OddMethod,
    /// A path that climbs out of its root or is not plain (400 `invalid_request`); nothing was sent.
    OddPath,
    /// No bearer token, or one that is no unrevoked API key (401 `unauthorized`); nothing was sent.
    Unauthorized,
    /// The API keys could not be read to check the token (503 `unavailable`); nothing was sent.
    KeysUnavailable,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    type_uri: String,
    title: &'static str,
    status: u16,
    detail: &'a str,
    code: &'static str,
}

/// A problem+json answer; 503s say when to come back, 401s how to authenticate.
fn problem_response(status: StatusCode, code: &'static str, title: &'static str, detail: &str) -> Response {
    let problem = Problem {
        type_uri: format!("https://coffer.dev/problems/{code}"),
        title,
        status: status.as_u16(),
        detail,
        code,
    };
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    match status {
        StatusCode::SERVICE_UNAVAILABLE => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        StatusCode::UNAUTHORIZED => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ => {}
    }
    response
}

/// The admin endpoint's answer to an upstream list it cannot take, saying why.
pub fn invalid_upstream_list(reason: &str) -> Response {
    problem_response(StatusCode::BAD_REQUEST, "invalid_request", "The upstream list is invalid", reason)
}

/// The admin listener's answer to a request without its token (RFC 6750: `WWW-Authenticate:
/// Bearer`). It says nothing about which endpoints exist.
pub fn admin_unauthorized() -> Response {
    problem_response(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Authentication is required",
        "send the gateway's admin token as Authorization: Bearer <token>",
    )
}

impl GatewayProblem {
    pub fn status(self) -> StatusCode {
        match self {
            Self::NoUpstream => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unreachable | Self::Broken => StatusCode::BAD_GATEWAY,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::BadBody => StatusCode::BAD_REQUEST,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::SlowBody => StatusCode::REQUEST_TIMEOUT,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::OddMethod => StatusCode::METHOD_NOT_ALLOWED,
            Self::OddPath => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(self) -> &'static str {
        match self {
            Self::NoUpstream => "unavailable",
            Self::Unreachable | Self::Broken => "bad_gateway",
            Self::Timeout => "gateway_timeout",
            Self::BadBody => "invalid_request",
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::TooLarge => "payload_too_large",
            Self::SlowBody => "request_timeout",
            Self::HeadersTooLarge => "headers_too_large",
            Self::OddMethod => "method_not_allowed",
            Self::OddPath => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::KeysUnavailable => "unavailable",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::NoUpstream => "The service is unavailable",
            Self::Unreachable | Self::Broken => "The upstream failed",
            Self::Timeout => "The upstream did not answer in time",
            Self::BadBody => "The request is invalid",
            Self::RateLimited => "Too many requests",
            Self::Overloaded => "The gateway is overloaded",
            Self::TooLarge => "The request body is too large",
            Self::SlowBody => "The request body came too slowly",
            Self::HeadersTooLarge => "The request headers are too large",
            Self::OddMethod => "The method is not allowed",
            Self::OddPath => "The request is invalid",
            Self::Unauthorized => "Authentication is required",
            Self::KeysUnavailable => "The service is unavailable",
        }
    }

    fn detail(self) -> &'static str {
        match self {
            Self::NoUpstream => "no upstream is healthy; nothing was sent",
            Self::Unreachable => "no upstream could be reached; nothing was sent",
            Self::Broken => {
                "the upstream failed while handling the request; a write may or may not have applied: \
                 retry with the same id or Idempotency-Key"
            }
            Self::Timeout => {
                "the upstream did not answer in time; a write may or may not have applied: \
                 retry with the same id or Idempotency-Key"
            }
            Self::BadBody => "the request body could not be read",
            Self::RateLimited => "this client or API key is over its request rate; nothing was sent",
            Self::Overloaded => "the gateway is handling as many requests as it takes; nothing was sent",
            Self::TooLarge => "the request body is larger than the gateway takes; nothing was sent",
            Self::SlowBody => "the request body did not arrive in time; nothing was sent",
            Self::HeadersTooLarge => {
                "the request headers are larger than the gateway takes; nothing was sent"
            }
            Self::OddMethod => {
                "the API takes GET, HEAD, OPTIONS, POST, PUT, PATCH and DELETE; nothing was sent"
            }
            Self::OddPath => "the path has a dot segment or a character paths do not hold; nothing was sent",
            Self::Unauthorized => {
                "send a valid, unrevoked API key as Authorization: Bearer <token>; nothing was sent"
            }
            Self::KeysUnavailable => "the API keys could not be checked; nothing was sent",
        }
    }

    /// A 429 that says when to come back (whole seconds, rounded up).
    pub fn rate_limited(retry_after: std::time::Duration) -> Response {
        let mut response = Self::RateLimited.response();
        let seconds = (retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1);
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        response
    }

    pub fn response(self) -> Response {
        problem_response(self.status(), self.code(), self.title(), self.detail())
    }
}
