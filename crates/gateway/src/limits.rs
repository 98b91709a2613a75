//! Rate limits at the edge, before anything reaches an upstream: per client IP, and per API key.
//! Both are GCRA limits shared by every gateway through Redis when `COFFER_REDIS_URL` is set, and
//! local to this gateway otherwise or while Redis is down (`coffer-ratelimit`).
//!
//! A key checked at the edge is limited by its id, at its own rate when it has one (as the
//! replicas do); without the edge token check, by a hash of the bearer token — the gateway never
//! keeps tokens.

use std::net::IpAddr;

use coffer_ratelimit::{Decision, Limits, Rate};
use coffer_store::ApiKey;
use http::HeaderMap;

use crate::auth::bearer;
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

    /// A client address's name among the limits (worked out once per connection): IPv6 clients
    /// share one allowance per /64, which they could otherwise walk to get a fresh one each time.
    pub fn ip_name(peer: IpAddr) -> String {
        format!("ip:{}", coffer_ratelimit::address_bucket(peer))
    }

    /// The allowance of the client address named `ip_name`.
    pub async fn check_ip(&self, ip_name: &str) -> Decision {
        self.limits.check(ip_name, self.per_ip).await
    }

    /// A key's allowance: one second's worth of burst at its own rate, or the configured default.
    pub async fn check_key(&self, key: &ApiKey) -> Decision {
        let rate = key.rate_limit_per_second.and_then(Rate::of_key).unwrap_or(self.per_key);
        self.limits.check(&format!("key:{}", key.id.0), rate).await
    }

    /// Without the edge token check: the allowance of the bearer token the request names, if any.
    pub async fn check_token(&self, headers: &HeaderMap) -> Decision {
        match bearer(headers) {
            Some(token) => self.limits.check(&format!("token:{}", token_id(token)), self.per_key).await,
            None => Decision::Allowed,
        }
    }
}

/// A stable name for a token that does not reveal it: half of its SHA-256, in hex.
fn token_id(token: &str) -> String {
    hex::encode(&coffer_store::TokenHash::of(token).0[..16])
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
