//! The token check at the edge: a request's bearer token must be an unrevoked API key of the
//! same key table the api replicas read (DESIGN §2), looked up through the store's key cache.
//! A request without one is answered 401 here and never reaches an upstream.
//!
//! The edge checks only that the key exists; the scope a route needs is the replica's to check,
//! since the replica knows its routes. A revoked key gets through the edge for at most the cache
//! TTL, and the replica refuses it there.

use std::sync::Arc;
use std::time::Duration;

use coffer_store::{ApiKey, KeyCache, KeyDirectory, TokenHash, bearer_token};
use http::HeaderMap;

use crate::problem::GatewayProblem;

pub struct EdgeAuth {
    keys: KeyCache,
}

impl EdgeAuth {
    pub fn new(directory: Arc<dyn KeyDirectory>, ttl: Duration) -> Self {
        Self { keys: KeyCache::new(directory, ttl) }
    }

    /// The key a request authenticates with: 401 without one, 503 when keys cannot be read
    /// (the edge does not let unchecked tokens through while the key table is unreachable).
    pub async fn check(&self, headers: &HeaderMap) -> Result<Arc<ApiKey>, GatewayProblem> {
        let token = bearer(headers).ok_or(GatewayProblem::Unauthorized)?;
        // A token that cannot be a key's (see `KeyCache::may_exist`) is refused without a read.
        let key = match self.keys.may_exist(token).await {
            Ok(true) => self.keys.find(TokenHash::of(token)).await,
            Ok(false) => Ok(None),
            Err(err) => Err(err),
        };
        match key {
            Ok(Some(key)) => Ok(key),
            Ok(None) => Err(GatewayProblem::Unauthorized),
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the API keys to check a token");
                Err(GatewayProblem::KeysUnavailable)
            }
        }
    }
}

/// The bearer token a request carries, if its Authorization header holds one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(http::header::AUTHORIZATION).and_then(|value| value.to_str().ok()).and_then(bearer_token)
}

/// Paths any client may ask without a key: the replicas' liveness and readiness.
pub fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}
