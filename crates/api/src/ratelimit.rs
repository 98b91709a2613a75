//! Per-key rate limits: each API key's own rate, or the configured default, enforced by the
//! shared GCRA limits of `coffer-ratelimit` (local to this process).

use std::num::NonZeroU32;

use coffer_ratelimit::{Decision, LocalLimits, Rate};
use coffer_store::{ApiKey, KeyId};

use crate::error::{ApiError, ErrorCode};

/// Every key's limit.
pub struct RateLimits {
    default: Rate,
    limits: LocalLimits,
}

impl RateLimits {
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self { default: Rate::new(per_second, burst), limits: LocalLimits::new() }
    }

    /// A key with its own rate may burst one second's worth; others get the default.
    fn rate_of(&self, key: &ApiKey) -> Rate {
        key.rate_limit_per_second.and_then(Rate::of_key).unwrap_or(self.default)
    }

    /// Takes one request from the key's allowance, or says how long to wait (429).
    pub fn check(&self, key: &ApiKey) -> Result<(), ApiError> {
        match self.limits.check(&key.id.0.to_string(), self.rate_of(key)) {
            Decision::Allowed => Ok(()),
            Decision::Limited { retry_after } => {
                let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                Err(ApiError::new(ErrorCode::RateLimited, "this API key's request rate limit was exceeded")
                    .retry_after(seconds))
            }
        }
    }

    /// Drops a revoked key's limiter.
    pub fn forget(&self, id: KeyId) {
        self.limits.forget(&id.0.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_ledger::Timestamp;
    use coffer_store::Scope;
    use uuid::Uuid;

    fn key(rate: Option<u32>) -> ApiKey {
        ApiKey {
            id: KeyId(Uuid::nil()),
            name: None,
            scopes: vec![Scope::Read],
            rate_limit_per_second: rate,
            created_at: Timestamp::from_micros(0),
            revoked_at: None,
            expires_at: None,
        }
    }

    #[test]
    fn a_key_with_one_request_per_second_gets_one_then_a_retry_after() {
        let thousand = NonZeroU32::new(1000).unwrap();
        let limits = RateLimits::new(thousand, thousand);
        assert!(limits.check(&key(Some(1))).is_ok());
        let err = limits.check(&key(Some(1))).unwrap_err();
        assert_eq!(err.code, ErrorCode::RateLimited);
        assert_eq!(err.retry_after, Some(1));
        // A changed quota starts afresh.
        assert!(limits.check(&key(Some(5))).is_ok());
        // A forgotten (revoked) key starts afresh too.
        limits.forget(key(Some(5)).id);
        assert!(limits.check(&key(Some(5))).is_ok());
    }
}
