//! Every error the API answers, as RFC 9457 `application/problem+json`.
//!
//! One [`ErrorCode`] enum decides the HTTP status and the stable snake_case `code` of each problem,
//! including the ledger's own [`RejectCode`]s, so a code can never be sent with two statuses.

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use coffer_ledger::RejectCode;
use coffer_store::StoreError;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// What went wrong, as far as the client is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    IdempotencyKeyInUse,
    PayloadTooLarge,
    UnsupportedMediaType,
    IdempotencyKeyReused,
    /// A webhook URL that is well formed but somewhere this deployment never sends to: a
    /// special-purpose address, or plain http.
    WebhookTargetRefused,
    /// A webhook's secret changed while a rotation of it was under way.
    WebhookSecretChanged,
    RateLimited,
    Overloaded,
    Unavailable,
    /// A write whose commit was sent but never answered: it may or may not have applied.
    OutcomeUnknown,
    /// A bug, or data damaged at rest: never caused by input.
    Internal,
    /// A business rule of the ledger refused the command.
    Rejected(RejectCode),
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::IdempotencyKeyInUse
            | Self::WebhookSecretChanged
            | Self::Rejected(RejectCode::ExistsWithDifferentFields) => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::IdempotencyKeyReused | Self::WebhookTargetRefused | Self::Rejected(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded | Self::Unavailable | Self::OutcomeUnknown => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable `code` clients switch on.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::IdempotencyKeyInUse => "idempotency_key_in_use",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::WebhookTargetRefused => "webhook_target_refused",
            Self::WebhookSecretChanged => "webhook_secret_changed",
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::OutcomeUnknown => "outcome_unknown",
            Self::Internal => "internal",
            Self::Rejected(code) => code.as_str(),
        }
    }

    /// A short, human-readable summary of the problem type (the problem's `title`).
    pub fn title(self) -> &'static str {
        match self {
            Self::InvalidRequest => "The request is invalid",
            Self::Unauthorized => "Authentication is required",
            Self::Forbidden => "The API key lacks the scope for this request",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::IdempotencyKeyInUse => "A request with this Idempotency-Key is in flight",
            Self::PayloadTooLarge => "The request body is too large",
            Self::UnsupportedMediaType => "The request body must be application/json",
            Self::IdempotencyKeyReused => "The Idempotency-Key was used for a different request",
            Self::WebhookTargetRefused => "Webhooks are not sent to this destination",
            Self::WebhookSecretChanged => "The webhook's secret changed during the rotation",
            Self::RateLimited => "Too many requests",
            Self::Overloaded => "The server is overloaded",
            Self::Unavailable => "The service is unavailable",
            Self::OutcomeUnknown => "The outcome of the write is unknown",
            Self::Internal => "Internal error",
            Self::Rejected(RejectCode::ExistsWithDifferentFields) => "The id is taken by a different record",
            Self::Rejected(_) => "The ledger refused the request",
        }
    }
}

/// One reason an input was refused, naming the offending field (`transfers[2].amount`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// Where the problem is: a body field path, a query or path parameter, or a header name.
    pub field: String,
    pub message: String,
}

/// An RFC 9457 problem: the body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type; it ends in the `code`.
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: &'static str,
    /// The HTTP status code.
    pub status: u16,
    /// What happened in this occurrence.
    pub detail: String,
    /// The stable snake_case code, e.g. `insufficient_funds`.
    #[schema(examples("insufficient_funds"))]
    pub code: &'static str,
    /// The invalid inputs, for `invalid_request`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

/// An error on its way to becoming a problem response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", code.as_str())]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: Cow<'static, str>,
    pub errors: Vec<FieldError>,
    /// Seconds, sent as `Retry-After`.
    pub retry_after: Option<u64>,
    /// The fatal store error behind a 500, which stops the store (see [`Fatal`]).
    pub fatal: Option<Fatal>,
}

/// A fatal store error (a damaged row, a broken invariant) that a request met. Its response
/// carries it as an extension, and a layer around the whole router stops the store with it,
/// whichever store call met it: the process then exits for its supervisor to restart.
#[derive(Debug, Clone)]
pub struct Fatal(pub StoreError);

/// Two fatal errors are the same when they say the same.
impl PartialEq for Fatal {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl Eq for Fatal {}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<Cow<'static, str>>) -> Self {
        Self { code, detail: detail.into(), errors: Vec::new(), retry_after: None, fatal: None }
    }

    /// A 400 naming the fields at fault.
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let detail = match errors.len() {
            1 => format!("{}: {}", errors[0].field, errors[0].message),
            n => format!("{n} inputs are invalid; see errors"),
        };
        Self { errors, ..Self::new(ErrorCode::InvalidRequest, detail) }
    }

    /// A 422 `webhook_target_refused` naming the URL field and why.
    pub fn webhook_target_refused(field: impl Into<String>, message: impl Into<String>) -> Self {
        let errors = vec![FieldError { field: field.into(), message: message.into() }];
        let detail = format!("{}: {}", errors[0].field, errors[0].message);
        Self { errors, ..Self::new(ErrorCode::WebhookTargetRefused, detail) }
    }

    /// A 400 for one field.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::invalid(vec![FieldError { field: field.into(), message: message.into() }])
    }

    pub fn not_found(what: &'static str) -> Self {
        Self::new(ErrorCode::NotFound, what)
    }

    pub fn rejected(code: RejectCode) -> Self {
        Self::new(ErrorCode::Rejected(code), code.detail())
    }

    /// A bug: logged here, answered as a bare 500 without internals.
    pub fn internal(what: &'static str) -> Self {
        tracing::error!(what, "internal error");
        Self::new(ErrorCode::Internal, "an internal error occurred; it has been logged")
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    fn to_problem(&self) -> Problem {
        let code = self.code.as_str();
        Problem {
            type_uri: format!("https://coffer.dev/problems/{code}"),
            title: self.code.title(),
            status: self.status().as_u16(),
            detail: self.detail.to_string(),
            code,
            errors: (!self.errors.is_empty()).then(|| self.errors.clone()),
        }
    }
}

impl From<coffer_events::BusError> for ApiError {
    fn from(err: coffer_events::BusError) -> Self {
        if let coffer_events::BusError::InvalidCursor(_) = err {
            return Self::invalid_field("cursor", "is not a cursor this list handed out");
        }
        tracing::warn!(reason = %err, "event bus unavailable");
        Self::new(ErrorCode::Unavailable, "the event bus is unavailable; nothing was changed").retry_after(1)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        // Internals of the store are logged, never sent: the client needs to know only whether
        // its request may have been applied.
        match err {
            StoreError::Overloaded => {
                Self::new(ErrorCode::Overloaded, "the write queue is full; nothing was applied")
                    .retry_after(1)
            }
            StoreError::Unavailable { .. } => {
                tracing::warn!(reason = %coffer_store::report(&err), "store unavailable");
                Self::new(ErrorCode::Unavailable, "the store is unavailable; nothing was applied")
                    .retry_after(1)
            }
            // The store's own words: they name what it could not hold, never anything secret.
            StoreError::Invalid { context, .. } => Self::new(
                ErrorCode::InvalidRequest,
                format!("the request holds a value the store cannot keep ({context}); nothing was applied"),
            ),
            StoreError::OutcomeUnknown { .. } => {
                tracing::warn!(reason = %coffer_store::report(&err), "write outcome unknown");
                Self::new(
                    ErrorCode::OutcomeUnknown,
                    "the outcome of the write is unknown: retry with the same id or Idempotency-Key to learn it",
                )
                .retry_after(1)
            }
            // Never "try again": this server stops. The process reports the cause, once.
            StoreError::Corrupt { .. } | StoreError::InvariantBroken { .. } => Self {
                fatal: Some(Fatal(err)),
                ..Self::new(ErrorCode::Internal, "an internal error occurred; it has been logged")
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&self.to_problem()).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"coffer\""));
        }
        if let Some(fatal) = self.fatal {
            response.extensions_mut().insert(fatal);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_contract() {
        let cases = [
            (ErrorCode::InvalidRequest, 400, "invalid_request"),
            (ErrorCode::Rejected(RejectCode::ExistsWithDifferentFields), 409, "exists_with_different_fields"),
            (ErrorCode::Rejected(RejectCode::InsufficientFunds), 422, "insufficient_funds"),
            (ErrorCode::IdempotencyKeyInUse, 409, "idempotency_key_in_use"),
            (ErrorCode::IdempotencyKeyReused, 422, "idempotency_key_reused"),
            (ErrorCode::WebhookTargetRefused, 422, "webhook_target_refused"),
            (ErrorCode::WebhookSecretChanged, 409, "webhook_secret_changed"),
            (ErrorCode::RateLimited, 429, "rate_limited"),
            (ErrorCode::Overloaded, 503, "overloaded"),
            (ErrorCode::Unavailable, 503, "unavailable"),
            (ErrorCode::OutcomeUnknown, 503, "outcome_unknown"),
            (ErrorCode::Internal, 500, "internal"),
        ];
        for (code, status, name) in cases {
            assert_eq!(code.status().as_u16(), status);
            assert_eq!(code.as_str(), name);
        }
    }

    #[test]
    fn outcome_unknown_has_its_own_code_and_asks_for_a_retry() {
        let err = ApiError::from(StoreError::outcome_unknown("commit timed out"));
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.code.as_str(), "outcome_unknown");
        assert!(err.detail.contains("unknown"));
        assert_eq!(err.retry_after, Some(1));
        let unavailable = ApiError::from(StoreError::unavailable("no connection"));
        assert_eq!(unavailable.code.as_str(), "unavailable", "a failure before the commit is not unknown");
    }

    #[test]
    fn a_fatal_store_error_is_a_bare_500_that_carries_its_cause_to_the_router() {
        for fatal in
            [StoreError::corrupt("column metadata: not json"), StoreError::invariant_broken("overdrawn")]
        {
            let err = ApiError::from(fatal.clone());
            assert_eq!((err.status().as_u16(), err.code.as_str()), (500, "internal"));
            assert_eq!(err.retry_after, None, "never a retry: this server stops");
            assert!(!err.detail.contains(fatal.context()), "internals are not sent: {}", err.detail);
            let response = err.into_response();
            assert_eq!(response.extensions().get::<Fatal>(), Some(&Fatal(fatal)));
        }
        let plain = ApiError::from(StoreError::unavailable("down")).into_response();
        assert!(plain.extensions().get::<Fatal>().is_none());
    }
}
