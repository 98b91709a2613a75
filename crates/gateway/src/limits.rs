//! Rate limits at the edge, before anything reaches an upstream: per client IP, and per API key
//! (the bearer token, known here only by a hash of it — the gateway never keeps tokens). Both are
//! GCRA limits shared by every gateway through Redis when `COFFER_REDIS_URL` is set, and local
//! to this gateway otherwise or while Redis is down (`coffer-ratelimit`).

use std::net::IpAddr;

use coffer_ratelimit::{Decision, Limits, Rate};
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::config::GatewayConfig;

pub struct EdgeLimits {
    limits: Limits,
    per_key: Rate,
    per_ip: Rate,
}

impl EdgeLimits {
    pub fn new(config: &GatewayConfig, limits: Limits) -> Self {
        Self {
            limits,
            per_key: Rate::new(config.rate_limit_per_second, config.rate_limit_burst),
            per_ip: Rate::new(config.ip_rate_limit_per_second, config.ip_rate_limit_burst),
        }
    }

    /// The client address's allowance first, then the key's, if the request names one.
    pub async fn check(&self, peer: IpAddr, headers: &HeaderMap) -> Decision {
        let by_ip = self.limits.check(&format!("ip:{peer}"), self.per_ip).await;
        if !by_ip.is_allowed() {
            return by_ip;
        }
        match bearer(headers) {
            Some(token) => self.limits.check(&format!("key:{}", token_id(token)), self.per_key).await,
            None => Decision::Allowed,
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::trim).filter(|t| !t.is_empty())
}

/// A stable name for a token that does not reveal it: half of its SHA-256, in hex.
fn token_id(token: &str) -> String {
    hex::encode(&Sha256::digest(token.as_bytes())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_named_by_a_hash_and_only_bearer_tokens_count() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert(http::header::AUTHORIZATION, "Bearer secret-token".parse().unwrap());
        assert_eq!(bearer(&headers), Some("secret-token"));
        let id = token_id("secret-token");
        assert_eq!(id.len(), 32);
        assert!(!id.contains("secret"));
        assert_eq!(id, token_id("secret-token"));
        assert_ne!(id, token_id("secret-token2"));
    }
}
