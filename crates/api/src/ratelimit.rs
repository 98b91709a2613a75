//! Per-key rate limits: one GCRA limiter (governor) per API key, with the key's own quota or the
//! configured default.
//!
//! A keyed governor limiter has one quota for every key, and keys may each set their own, so the
//! limiters live in a map of their own. A key's limiter outlives refreshes of the key cache: a
//! limiter that was rebuilt every second would forgive every burst.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};

use coffer_store::{ApiKey, KeyId};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};

use crate::error::{ApiError, ErrorCode};

/// The limiter of one key.
pub struct Limiter {
    quota: Quota,
    inner: DefaultDirectRateLimiter,
}

impl Limiter {
    fn new(quota: Quota) -> Self {
        Self { quota, inner: DefaultDirectRateLimiter::direct(quota) }
    }

    /// Takes one request from the key's allowance, or says how long to wait (429).
    pub fn check(&self) -> Result<(), ApiError> {
        self.inner.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ApiError::new(ErrorCode::RateLimited, "this API key's request rate limit was exceeded")
                .retry_after(seconds)
        })
    }
}

/// Every key's limiter, keyed by key id.
pub struct RateLimits {
    default: Quota,
    limiters: Mutex<HashMap<KeyId, Arc<Limiter>>>,
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl RateLimits {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let default = Quota::per_second(nonzero(per_second)).allow_burst(nonzero(burst));
        Self { default, limiters: Mutex::new(HashMap::new()) }
    }

    /// The limiter for `key`, kept across calls while its quota stays the same.
    pub fn for_key(&self, key: &ApiKey) -> Arc<Limiter> {
        let quota = match key.rate_limit_per_second {
            Some(rate) => Quota::per_second(nonzero(rate)).allow_burst(nonzero(rate)),
            None => self.default,
        };
        // Poisoning cannot leave the map inconsistent: every operation on it is a single call.
        let mut limiters = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
        match limiters.get(&key.id) {
            Some(limiter) if limiter.quota == quota => limiter.clone(),
            _ => {
                let limiter = Arc::new(Limiter::new(quota));
                limiters.insert(key.id, limiter.clone());
                limiter
            }
        }
    }

    /// Drops a revoked key's limiter.
    pub fn forget(&self, id: KeyId) {
        self.limiters.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
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
        }
    }

    #[test]
    fn a_key_with_one_request_per_second_gets_one_then_a_retry_after() {
        let limits = RateLimits::new(1000, 1000);
        let limiter = limits.for_key(&key(Some(1)));
        assert!(limiter.check().is_ok());
        let err = limiter.check().unwrap_err();
        assert_eq!(err.code, ErrorCode::RateLimited);
        assert_eq!(err.retry_after, Some(1));
        // The same quota keeps the same limiter (and its spent allowance).
        assert!(limits.for_key(&key(Some(1))).check().is_err());
        // A changed quota starts afresh.
        assert!(limits.for_key(&key(Some(5))).check().is_ok());
    }
}
