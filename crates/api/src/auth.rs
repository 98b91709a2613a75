//! Authentication and scopes: `Authorization: Bearer <token>` → SHA-256 → the store's API key,
//! behind the store's [`KeyCache`] so the hot path does not read the database on every request.
//!
//! Tokens are 256 random bits, so a plain SHA-256 is as strong as a password hash and costs well
//! under a microsecond. Neither tokens nor the Authorization header are ever logged.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use coffer_store::{
    ApiKey, KeyCache, KeyId, NewApiKey, Scope, Store, StoreError, StoreResult, TokenHash, bearer_token,
    is_valid_token,
};
use http::request::Parts;
use http::{HeaderMap, header};
use uuid::Uuid;

use crate::error::{ApiError, ErrorCode};
use crate::ratelimit::RateLimits;
use crate::state::AppState;

/// A new API token: `coffer_` and 256 random bits in hex, safe in URLs and headers.
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("coffer_{}", hex::encode(bytes))
}

/// DESIGN §2 bootstrap: when the store holds no key at all, `token` (or a generated one) becomes
/// an admin key. Answers the token only when it generated it, for the binary to print once.
pub async fn bootstrap(store: &dyn Store, token: Option<&str>) -> StoreResult<Option<String>> {
    let (token, generated) = match token {
        Some(token) if !is_valid_token(token) => {
            return Err(StoreError::Unavailable(
                "the bootstrap token must be 1 to 512 visible ASCII characters".into(),
            ));
        }
        Some(token) => (token.to_owned(), false),
        None => (generate_token(), true),
    };
    let key = NewApiKey {
        id: KeyId(Uuid::now_v7()),
        name: Some("bootstrap".into()),
        scopes: vec![Scope::Admin],
        rate_limit_per_second: None,
        token_hash: TokenHash::of(&token),
    };
    let created = store.bootstrap_key(key).await?;
    Ok((created && generated).then_some(token))
}

/// An authenticated caller: its key.
pub struct Principal {
    pub key: Arc<ApiKey>,
}

/// Verifies tokens (through the key cache) and applies each key's rate limit.
pub struct Authenticator {
    keys: KeyCache,
    limits: RateLimits,
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>, ttl: Duration, limits: RateLimits) -> Self {
        Self { keys: KeyCache::new(store, ttl), limits }
    }

    /// The caller of a request, after its rate limit: 401 without a valid, unrevoked key.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Principal>, ApiError> {
        let token = bearer(headers)?;
        let key = self.keys.find(TokenHash::of(token)).await?;
        let key = key.ok_or_else(|| unauthorized("the API key is not valid or was revoked"))?;
        self.limits.check(&key)?;
        Ok(Arc::new(Principal { key }))
    }

    /// Forgets a revoked key at once, so this process refuses it from the next request on.
    pub fn evict(&self, id: KeyId) {
        self.keys.evict(id);
        self.limits.forget(id);
    }
}

fn unauthorized(detail: &'static str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, detail)
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("send an API key as Authorization: Bearer <token>"))?;
    let value = value.to_str().map_err(|_| unauthorized("the Authorization header is malformed"))?;
    bearer_token(value).ok_or_else(|| unauthorized("send an API key as Authorization: Bearer <token>"))
}

/// The scope a route needs, as a type so the extractor can check it before the body is read.
pub trait Needs: Send + Sync + 'static {
    const SCOPE: Scope;
}

/// Reads.
pub struct ReadScope;
/// Creating accounts and transfers.
pub struct WriteScope;
/// Ledgers and keys.
pub struct AdminScope;

impl Needs for ReadScope {
    const SCOPE: Scope = Scope::Read;
}
impl Needs for WriteScope {
    const SCOPE: Scope = Scope::Write;
}
impl Needs for AdminScope {
    const SCOPE: Scope = Scope::Admin;
}

/// Proof that the caller is authenticated and holds scope `S` (401, 429 or 403 otherwise).
pub struct Caller<S: Needs>(PhantomData<S>);

impl<S: Needs> FromRequestParts<AppState> for Caller<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The idempotency layer authenticates (and rate-limits) keyed requests before it stores
        // anything; it leaves the principal here so that is done once.
        let principal = match parts.extensions.get::<Arc<Principal>>() {
            Some(principal) => principal.clone(),
            None => state.auth.authenticate(&parts.headers).await?,
        };
        if !principal.key.allows(S::SCOPE) {
            let detail = match S::SCOPE {
                Scope::Read => "this API key lacks the read scope",
                Scope::Write => "this API key lacks the write scope",
                Scope::Admin => "this API key lacks the admin scope",
            };
            return Err(ApiError::new(ErrorCode::Forbidden, detail));
        }
        // The key's id (never its token) goes on the request's span.
        tracing::Span::current().record("key_id", tracing::field::display(principal.key.id.0));
        Ok(Self(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_header_must_hold_a_bearer_token() {
        let mut headers = HeaderMap::new();
        assert!(bearer(&headers).is_err());
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(bearer(&headers).is_err());
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer(&headers).unwrap(), "abc");
    }

    #[test]
    fn tokens_are_long_random_and_url_safe() {
        let (a, b) = (generate_token(), generate_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), "coffer_".len() + 64);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'));
    }
}
