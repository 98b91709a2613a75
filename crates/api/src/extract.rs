//! Strict input: the extractors that turn a request's body, path and query into typed values.
//!
//! Parse, don't validate: the DTOs deserialize straight into the ledger's newtypes with
//! `deny_unknown_fields`, so a value that gets past these extractors is valid by construction.
//! Every failure is a 400 (or 413/415) problem naming the field; none of them can panic.

use std::marker::PhantomData;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use bytes::Bytes;
use coffer_ledger::{AccountId, LedgerCode, TraceParent, TransferId};
use coffer_store::KeyId;
use http::request::Parts;
use http::{HeaderMap, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::config::ApiConfig;
use crate::error::{ApiError, ErrorCode, FieldError};
use crate::state::AppState;

/// The request's W3C trace context, when its `traceparent` header holds a valid one: the events
/// its commands cause carry it. A malformed one is ignored (the trace restarts), not refused: a
/// tracing header must never fail a payment.
pub struct Trace(pub Option<TraceParent>);

impl Trace {
    pub fn of(headers: &HeaderMap) -> Self {
        let header = headers.get("traceparent").and_then(|value| value.to_str().ok());
        Self(header.and_then(|text| TraceParent::try_from(text).ok()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Trace {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::of(&parts.headers))
    }
}

/// Which body limit a JSON body is held to, and whether it may be left out.
pub trait BodyKind: Send + Sync + 'static {
    fn limit(config: &ApiConfig) -> usize;
    /// A body-less request (no Content-Type, no bytes) and a JSON `null` read as `{}`: for actions
    /// whose fields are all optional, like posting a pending transfer.
    const OPTIONAL: bool = false;
}

/// The ordinary 1 MiB limit.
pub struct Standard;
/// The batch endpoint's 8 MiB limit.
pub struct Large;
/// The ordinary limit; the body may be left out.
pub struct Optional;

impl BodyKind for Standard {
    fn limit(config: &ApiConfig) -> usize {
        config.body_limit_bytes
    }
}

impl BodyKind for Large {
    fn limit(config: &ApiConfig) -> usize {
        config.batch_body_limit_bytes
    }
}

impl BodyKind for Optional {
    fn limit(config: &ApiConfig) -> usize {
        config.body_limit_bytes
    }
    const OPTIONAL: bool = true;
}

/// A JSON object body deserialized strictly into `T`.
pub struct JsonBody<T, K = Standard>(pub T, pub PhantomData<K>);

impl<T, K> FromRequest<AppState> for JsonBody<T, K>
where
    T: DeserializeOwned,
    K: BodyKind,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let unsupported = || {
            ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send the body as JSON with Content-Type: application/json",
            )
        };
        let (parts, body) = req.into_parts();
        // The media type is checked before the body is read, so a mislabelled upload costs nothing.
        let labelled = match parts.headers.get(header::CONTENT_TYPE) {
            Some(value) if is_json(value.as_bytes()) => true,
            Some(_) => return Err(unsupported()),
            None if K::OPTIONAL => false,
            None => return Err(unsupported()),
        };
        let bytes = read_body(&parts.headers, body, K::limit(&state.config)).await?;
        match (labelled, bytes.is_empty()) {
            // An optional body may also be `null`: no options, as the document's `oneOf` says.
            (true, _) if K::OPTIONAL && bytes.trim_ascii() == b"null" => {
                parse_json(b"{}").map(|v| Self(v, PhantomData))
            }
            (true, _) => parse_json(&bytes).map(|v| Self(v, PhantomData)),
            (false, true) => parse_json(b"{}").map(|v| Self(v, PhantomData)),
            (false, false) => Err(unsupported()),
        }
    }
}

/// `application/json`, with or without parameters such as `charset=utf-8`.
fn is_json(content_type: &[u8]) -> bool {
    let essence = content_type.split(|b| *b == b';').next().unwrap_or_default();
    essence.trim_ascii().eq_ignore_ascii_case(b"application/json")
}

/// Reads a whole body, refusing more than `limit` bytes whether or not Content-Length is sent.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(too_large(limit)),
        Err(_) => Err(ApiError::invalid_field("body", "the request body could not be read")),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(ErrorCode::PayloadTooLarge, format!("the request body exceeds {limit} bytes"))
}

/// Deserializes one JSON object and nothing after it.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // A derived struct would also accept an array of its fields in order; only objects are API.
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(ApiError::invalid_field("body", "the body is empty; a JSON object is expected")),
        Some(b'{') => {}
        Some(_) => return Err(ApiError::invalid_field("body", "the body must be a JSON object")),
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let field = field_of(&err.path().to_string(), &err.inner().to_string());
        ApiError::invalid(vec![FieldError { field, message: without_position(err.inner()) }])
    })?;
    de.end().map_err(|_| ApiError::invalid_field("body", "unexpected data after the JSON object"))?;
    Ok(value)
}

/// The field an error is about: serde reports a missing or duplicated field at its parent, so
/// the name is taken from the message and joined to that path.
/// A syntax error leaves an unknown (`?`) last segment, which is dropped.
fn field_of(path: &str, message: &str) -> String {
    let path = path.trim_end_matches('?').trim_end_matches('.');
    let missing = ["missing field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    match (path, missing) {
        ("", Some(name)) => name.to_owned(),
        (_, Some(name)) => format!("{path}.{name}"),
        ("", None) => "body".to_owned(),
        _ => path.to_owned(),
    }
}

/// serde_json's message without its " at line 1 column 7" suffix.
fn without_position(err: &serde_json::Error) -> String {
    let message = err.to_string();
    match message.rsplit_once(" at line ") {
        Some((head, _)) => head.to_owned(),
        None => message,
    }
}

/// A path parameter parsed into its domain type; a malformed one is a 400, not a 404.
pub struct ApiPath<T>(pub T);

/// A type a path segment parses into.
pub trait PathParam: Sized {
    /// The parameter's name, for the error's `field`.
    const NAME: &'static str;
    fn parse(raw: &str) -> Result<Self, &'static str>;
}

/// A UUID in its one documented form (`format: uuid`: 36 characters, hyphenated). The braced,
/// unhyphenated and `urn:uuid:` spellings the parser also knows are refused, so one resource has
/// one URL.
pub(crate) fn parse_uuid(raw: &str) -> Result<Uuid, &'static str> {
    let hyphenated = raw.len() == 36 && [8, 13, 18, 23].iter().all(|&i| raw.as_bytes()[i] == b'-');
    match hyphenated {
        true => Uuid::try_parse(raw).map_err(|_| "must be a UUID"),
        false => Err("must be a UUID (36 characters, hyphenated)"),
    }
}

impl PathParam for AccountId {
    const NAME: &'static str = "id";
    fn parse(raw: &str) -> Result<Self, &'static str> {
        parse_uuid(raw).map(AccountId)
    }
}

impl PathParam for TransferId {
    const NAME: &'static str = "id";
    fn parse(raw: &str) -> Result<Self, &'static str> {
        parse_uuid(raw).map(TransferId)
    }
}

impl PathParam for KeyId {
    const NAME: &'static str = "id";
    fn parse(raw: &str) -> Result<Self, &'static str> {
        parse_uuid(raw).map(KeyId)
    }
}

impl PathParam for LedgerCode {
    const NAME: &'static str = "code";
    fn parse(raw: &str) -> Result<Self, &'static str> {
        LedgerCode::try_from(raw).map_err(|e| e.0)
    }
}

impl<T: PathParam, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid_field(T::NAME, "is not a valid path segment"))?;
        T::parse(&raw).map(ApiPath).map_err(|message| ApiError::invalid_field(T::NAME, message))
    }
}

/// Two path parameters (`/{id}/…/{other}`), each parsed into its domain type.
pub struct ApiPath2<A, B>(pub A, pub B);

impl<A: PathParam, B: PathParam, S: Send + Sync> FromRequestParts<S> for ApiPath2<A, B> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((a, b)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid_field(A::NAME, "is not a valid path segment"))?;
        let a = A::parse(&a).map_err(|message| ApiError::invalid_field(A::NAME, message))?;
        let b = B::parse(&b).map_err(|message| ApiError::invalid_field(B::NAME, message))?;
        Ok(ApiPath2(a, b))
    }
}

/// Query parameters deserialized strictly into `T` (unknown or repeated parameters are a 400).
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de).map(ApiQuery).map_err(|err| {
            let path = err.path().to_string();
            let field = if path == "." { "query".to_owned() } else { path };
            ApiError::invalid(vec![FieldError { field, message: err.inner().to_string() }])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        amount: coffer_ledger::Amount,
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        flag: bool,
    }

    fn field(body: &str) -> String {
        let err = parse_json::<Sample>(body.as_bytes()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest, "{body}");
        err.errors[0].field.clone()
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field(r#"{"amount": 0}"#), "amount");
        assert_eq!(field(r#"{"amount": 1.5}"#), "amount");
        assert_eq!(field(r#"{"amount": "5"}"#), "amount");
        assert_eq!(field(r#"{}"#), "amount");
        assert_eq!(field(r#"{"amount": 1, "inner": {}}"#), "inner.flag");
        assert_eq!(field(r#"{"amount": 1, "inner": {"flag": 1}}"#), "inner.flag");
        assert_eq!(field(r#"{"amount": 1, "extra": 1}"#), "extra");
        assert_eq!(field(r#"{"amount": 1, "amount": 1}"#), "amount");
        assert_eq!(field(r#"[1]"#), "body");
        assert_eq!(field(r#""#), "body");
        assert_eq!(field(r#"{"amount": 1} x"#), "body");
        assert_eq!(field(r#"{"amount": 1"#), "body");
    }

    #[test]
    fn json_content_types() {
        assert!(is_json(b"application/json"));
        assert!(is_json(b"Application/JSON; charset=utf-8"));
        assert!(!is_json(b"text/plain"));
        assert!(!is_json(b"application/jsonx"));
    }
}
