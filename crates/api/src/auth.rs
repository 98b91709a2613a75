//! Authentication and scopes: `Authorization: Bearer <token>` → SHA-256 → the store's API key,
//! behind a small cache so the hot path does not read the database on every request.
//!
//! Tokens are 256 random bits, so a plain SHA-256 is as strong as a password hash and costs well
//! under a microsecond. Neither tokens nor the Authorization header are ever logged.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use coffer_store::{ApiKey, KeyId, NewApiKey, Scope, Store, StoreError, StoreResult, TokenHash};
use http::request::Parts;
use http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::error::{ApiError, ErrorCode};
use crate::ratelimit::RateLimits;
use crate::state::AppState;

/// Longest token accepted; ours are 71 characters.
const MAX_TOKEN_LEN: usize = 512;
/// Cached tokens (valid or not) before the cache is pruned.
const MAX_CACHED: usize = 10_000;

/// A new API token: `coffer_` and 256 random bits in hex, safe in URLs and headers.
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("coffer_{}", hex::encode(bytes))
}

/// What the store keeps instead of a token.
pub fn hash_token(token: &str) -> TokenHash {
    TokenHash(Sha256::digest(token.as_bytes()).into())
}

/// Whether `token` can be sent in an Authorization header: 1 to 512 visible ASCII characters.
pub fn is_valid_token(token: &str) -> bool {
    (1..=MAX_TOKEN_LEN).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_graphic())
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
        token_hash: hash_token(&token),
    };
    let created = store.bootstrap_key(key).await?;
    Ok((created && generated).then_some(token))
}

/// An authenticated caller: its key.
pub struct Principal {
    pub key: ApiKey,
}

struct CacheEntry {
    hash: TokenHash,
    /// `None`: no such key, or revoked.
    principal: Option<Arc<Principal>>,
    fetched: Instant,
}

/// Verifies tokens, caching each answer for `ttl`.
pub struct Authenticator {
    store: Arc<dyn Store>,
    ttl: Duration,
    /// Keyed by the first half of the token's hash; the whole hash is then compared in constant
    /// time, so the map's own lookup never compares secret-derived bytes in full.
    cache: RwLock<HashMap<[u8; 16], CacheEntry>>,
    limits: RateLimits,
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>, ttl: Duration, limits: RateLimits) -> Self {
        Self { store, ttl, cache: RwLock::new(HashMap::new()), limits }
    }

    /// The caller of a request, after its rate limit: 401 without a valid, unrevoked key.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Principal>, ApiError> {
        let token = bearer_token(headers)?;
        let hash = hash_token(token);
        let principal = match self.cached(&hash) {
            Some(found) => found,
            None => self.fetch(hash).await?,
        };
        let principal = principal.ok_or_else(|| unauthorized("the API key is not valid or was revoked"))?;
        self.limits.check(&principal.key)?;
        Ok(principal)
    }

    fn cached(&self, hash: &TokenHash) -> Option<Option<Arc<Principal>>> {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        let entry = cache.get(&prefix(hash))?;
        let same: bool = entry.hash.0.ct_eq(&hash.0).into();
        (same && entry.fetched.elapsed() < self.ttl).then(|| entry.principal.clone())
    }

    async fn fetch(&self, hash: TokenHash) -> Result<Option<Arc<Principal>>, ApiError> {
        let key = self.store.key_by_token(hash).await?;
        let principal = key.filter(|k| k.revoked_at.is_none()).map(|key| Arc::new(Principal { key }));
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_CACHED {
            // Bounded against a flood of random tokens: drop what is stale, then everything.
            cache.retain(|_, e| e.fetched.elapsed() < self.ttl);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        let entry = CacheEntry { hash, principal: principal.clone(), fetched: Instant::now() };
        cache.insert(prefix(&hash), entry);
        Ok(principal)
    }

    /// Forgets a revoked key at once, so this process refuses it from the next request on.
    pub fn evict(&self, id: KeyId) {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        cache.retain(|_, e| e.principal.as_ref().is_none_or(|p| p.key.id != id));
        self.limits.forget(id);
    }
}

fn prefix(hash: &TokenHash) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&hash.0[..16]);
    out
}

fn unauthorized(detail: &'static str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, detail)
}

fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("send an API key as Authorization: Bearer <token>"))?;
    let value = value.to_str().map_err(|_| unauthorized("the Authorization header is malformed"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    let token = token.trim_start_matches(' ');
    if !scheme.eq_ignore_ascii_case("bearer") || !is_valid_token(token) {
        return Err(unauthorized("send an API key as Authorization: Bearer <token>"));
    }
    Ok(token)
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

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(bearer_token(&headers("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer_token(&headers("bearer abc")).unwrap(), "abc");
        for bad in ["Bearer", "Bearer ", "Basic abc", "abc", "Bearer a b"] {
            assert!(bearer_token(&headers(bad)).is_err(), "{bad}");
        }
        assert!(bearer_token(&HeaderMap::new()).is_err());
    }

    #[test]
    fn tokens_are_long_random_and_url_safe() {
        let (a, b) = (generate_token(), generate_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), "coffer_".len() + 64);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'));
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
