//! The `Idempotency-Key` header: the first completed answer (2xx or 4xx) to a keyed POST is stored
//! with a fingerprint of principal, method, path and body, and replayed to every retry.
//!
//! It runs as a route layer, before the handler's own extractors: it authenticates (a key is
//! scoped to its principal), reads the body (the fingerprint covers it), asks the store whether
//! to proceed, replay or refuse, and stores the handler's answer. A request that ends without an
//! answer worth keeping (a 5xx, a dropped connection, a timeout) abandons the key so a retry runs
//! again; the ids it derives (see [`NewIds`]) make that second run find the first run's records
//! instead of creating new ones.

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use coffer_store::{
    Fingerprint, IdempotencyBegin, IdempotencyRecords, IdempotencyScope, KeyId, StoredResponse,
};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{ApiError, ErrorCode};
use crate::extract::read_body;
use crate::routes::BATCH_ROUTE;
use crate::state::AppState;

pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Longest Idempotency-Key accepted.
const MAX_KEY_LEN: usize = 255;

/// A response extension: what to store for replay instead of the body sent (the created API key
/// with its token nulled, so no secret is ever written to the idempotency table).
#[derive(Clone)]
pub struct StoreInstead(pub Bytes);

/// The principal and key of a keyed request, from which record ids are derived.
#[derive(Clone)]
struct IdSeed {
    principal: KeyId,
    key: Arc<str>,
}

/// Ids for the records a request creates without naming them.
///
/// Without an Idempotency-Key each is a fresh UUIDv7. With one, the id of item `index` is a
/// UUIDv8 from SHA-256 of principal, key and index: a retry of a request whose first run crashed
/// after its write names the same records, finds them, and so can never write a second time.
pub struct NewIds(Option<IdSeed>);

impl NewIds {
    pub fn id(&self, index: usize) -> Uuid {
        match &self.0 {
            Some(seed) => derived_id(seed.principal, &seed.key, index),
            None => Uuid::now_v7(),
        }
    }
}

/// The id of item `index` of a request by `principal` with Idempotency-Key `key` (see [`NewIds`]).
pub fn derived_id(principal: KeyId, key: &str, index: usize) -> Uuid {
    let mut h = Sha256::new();
    h.update(b"coffer-derived-id-v1\0");
    h.update(principal.0.as_bytes());
    h.update((key.len() as u32).to_be_bytes());
    h.update(key.as_bytes());
    h.update((index as u64).to_be_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::new_v8(bytes)
}

impl<S: Send + Sync> FromRequestParts<S> for NewIds {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<IdSeed>().cloned()))
    }
}

/// The route layer. Requests other than keyed POSTs pass straight through.
pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST || !req.headers().contains_key(&IDEMPOTENCY_KEY) {
        return next.run(req).await;
    }
    keyed(state, req, next).await.unwrap_or_else(IntoResponse::into_response)
}

fn parse_key(value: Option<&HeaderValue>) -> Result<Arc<str>, ApiError> {
    let value = value.map(HeaderValue::as_bytes).unwrap_or_default();
    let valid = (1..=MAX_KEY_LEN).contains(&value.len()) && value.iter().all(u8::is_ascii_graphic);
    match std::str::from_utf8(value) {
        Ok(key) if valid => Ok(Arc::from(key)),
        _ => Err(ApiError::invalid_field("Idempotency-Key", "must be 1 to 255 visible ASCII characters")),
    }
}

async fn keyed(state: AppState, req: Request, next: Next) -> Result<Response, ApiError> {
    let key = parse_key(req.headers().get(&IDEMPOTENCY_KEY))?;
    let principal = state.auth.authenticate(req.headers(), crate::auth::client_ip(req.extensions())).await?;
    let is_batch = req.extensions().get::<MatchedPath>().is_some_and(|p| p.as_str() == BATCH_ROUTE);
    let limit = if is_batch { state.config.batch_body_limit_bytes } else { state.config.body_limit_bytes };
    let (mut parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body, limit).await?;

    let id = principal.key.id;
    let scope = IdempotencyScope { principal: id, key: key.to_string() };
    match state
        .store
        .idempotency_begin(&scope, fingerprint(id, &parts.method, parts.uri.path(), &body))
        .await?
    {
        IdempotencyBegin::Proceed => {}
        IdempotencyBegin::Replay(stored) => return Ok(replay(stored)),
        IdempotencyBegin::InFlight => {
            return Err(ApiError::new(
                ErrorCode::IdempotencyKeyInUse,
                "a request with this Idempotency-Key is still being processed; retry later",
            )
            .retry_after(1));
        }
        IdempotencyBegin::Mismatch => {
            return Err(ApiError::new(
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was used with a different request; use a new key",
            ));
        }
    }

    let pending = Pending { store: state.store.clone(), scope: Some(scope) };
    parts.extensions.insert(IdSeed { principal: id, key });
    parts.extensions.insert(principal);
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;

    let (mut head, body) = response.into_parts();
    let Ok(body) = to_bytes(body, usize::MAX).await else {
        pending.abandon().await;
        return Err(ApiError::internal("a response body could not be buffered"));
    };
    if head.status.is_server_error() {
        pending.abandon().await;
    } else {
        let stored = head.extensions.remove::<StoreInstead>().map_or_else(|| body.clone(), |s| s.0);
        let content_type = head.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let response = StoredResponse {
            status: head.status.as_u16(),
            content_type: content_type.unwrap_or("application/json").to_owned(),
            body: stored.to_vec(),
        };
        pending.complete(response).await;
    }
    Ok(Response::from_parts(head, Body::from(body)))
}

/// SHA-256 of principal, method, path and body, with separators so no two differ only in where
/// one part ends.
fn fingerprint(principal: KeyId, method: &Method, path: &str, body: &[u8]) -> Fingerprint {
    let mut h = Sha256::new();
    h.update(b"coffer-idempotency-v1\0");
    h.update(principal.0.as_bytes());
    h.update(method.as_str().as_bytes());
    h.update(b"\0");
    h.update(path.as_bytes());
    h.update(b"\0");
    h.update(body);
    Fingerprint(h.finalize().into())
}

fn replay(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = HeaderValue::from_str(&stored.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/json"));
    let mut response = (status, stored.body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    response.headers_mut().insert(IDEMPOTENT_REPLAYED.clone(), HeaderValue::from_static("true"));
    response
}

/// A key the store holds as in flight. Dropped without an answer (the client went away, the
/// request timed out), it abandons the key in the background so retries are not refused forever.
struct Pending {
    store: Arc<dyn IdempotencyRecords>,
    scope: Option<IdempotencyScope>,
}

impl Pending {
    async fn complete(mut self, response: StoredResponse) {
        let Some(scope) = self.scope.clone() else { return };
        if let Err(err) = self.store.idempotency_complete(&scope, response).await {
            tracing::warn!(%err, "could not store an idempotent response; abandoning the key");
            let _ = self.store.idempotency_abandon(&scope).await;
        }
        self.scope = None;
    }

    async fn abandon(mut self) {
        let Some(scope) = self.scope.clone() else { return };
        if let Err(err) = self.store.idempotency_abandon(&scope).await {
            tracing::warn!(%err, "could not abandon an idempotency key");
        }
        self.scope = None;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(scope) = self.scope.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let store = self.store.clone();
        runtime.spawn(async move {
            if let Err(err) = store.idempotency_abandon(&scope).await {
                tracing::warn!(%err, "could not abandon an idempotency key");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_up_to_255() {
        let ok = |s: &str| parse_key(Some(&HeaderValue::from_str(s).unwrap())).is_ok();
        assert!(ok("post-b1-once"));
        assert!(ok(&"k".repeat(255)));
        assert!(!ok(&"k".repeat(256)));
        assert!(!ok(""));
        assert!(!ok("has space"));
        assert!(parse_key(None).is_err());
    }

    #[test]
    fn derived_ids_are_stable_per_principal_key_and_index() {
        let seed =
            |p: u128, k: &str| NewIds(Some(IdSeed { principal: KeyId(Uuid::from_u128(p)), key: k.into() }));
        assert_eq!(seed(1, "a").id(0), seed(1, "a").id(0));
        assert_ne!(seed(1, "a").id(0), seed(1, "a").id(1));
        assert_ne!(seed(1, "a").id(0), seed(2, "a").id(0));
        assert_ne!(seed(1, "a").id(0), seed(1, "b").id(0));
        assert_eq!(seed(1, "a").id(0).get_version_num(), 8);
        assert_ne!(NewIds(None).id(0), NewIds(None).id(0));
    }
}
