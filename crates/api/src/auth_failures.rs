//! Failed authentications, per client address: counted, limited, and reported when they look
//! like someone guessing tokens (DESIGN §5).
//!
//! A token the key cache cannot answer costs a store look-up. An address that keeps presenting
//! tokens that are no key's uses up its allowance (`auth_failures_per_second`, with a burst of
//! `auth_failure_burst`); until it recovers, tokens from it that the cache cannot answer are
//! refused with 429 and never reach the store. Keys already verified and cached still pass, so an
//! honest client behind the same address keeps working. The first time an address runs out, one
//! warning names it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use coffer_ratelimit::{Decision, LocalLimits, Rate};

use crate::error::{ApiError, ErrorCode};

/// Addresses remembered as out of allowance before the list is pruned.
const MAX_BLOCKED: usize = 10_000;

/// Why an authentication failed, the `reason` label of `coffer_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No Authorization header, or not a bearer token.
    Missing,
    /// A token that cannot be one of Coffer's (prefix without shape or checksum): no look-up.
    Malformed,
    /// No live key has this token: unknown, revoked or expired.
    Unknown,
    /// The client's address is out of allowance: refused without a look-up.
    Throttled,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
            Self::Throttled => "throttled",
        }
    }
}

pub struct FailedAuths {
    rate: Rate,
    limits: LocalLimits,
    /// Addresses out of allowance, until when.
    blocked: Mutex<HashMap<String, Instant>>,
}

impl FailedAuths {
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self { rate: Rate::new(per_second, burst), limits: LocalLimits::new(), blocked: Mutex::default() }
    }

    /// Whether `client` may have a token looked up: 429 while it is out of allowance.
    pub fn check(&self, client: Option<&str>) -> Result<(), ApiError> {
        let Some(client) = client else { return Ok(()) };
        let blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        match blocked.get(client).map(|until| until.saturating_duration_since(Instant::now())) {
            Some(left) if !left.is_zero() => {
                drop(blocked);
                count(Failure::Throttled);
                Err(throttled(left))
            }
            _ => Ok(()),
        }
    }

    /// Counts a failure of `client`'s, taking it from the address's allowance; answers true when
    /// this failure ran the address out of it (when the warning is logged).
    pub fn record(&self, client: Option<&str>, failure: Failure) -> bool {
        count(failure);
        let Some(client) = client else { return false };
        let Decision::Limited { retry_after } = self.limits.check(client, self.rate) else { return false };
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if blocked.len() >= MAX_BLOCKED {
            blocked.retain(|_, until| *until > now);
            if blocked.len() >= MAX_BLOCKED {
                blocked.clear();
            }
        }
        let first = blocked.insert(client.to_owned(), now + retry_after).is_none_or(|until| until <= now);
        if first {
            tracing::warn!(
                source.ip = client,
                event.category = "authentication",
                event.action = "brute-force-suspected",
                "a client address keeps presenting tokens that are no key's; its look-ups are refused for now"
            );
        }
        first
    }
}

fn count(failure: Failure) {
    metrics::counter!("coffer_auth_failures_total", "reason" => failure.as_str()).increment(1);
}

fn throttled(left: Duration) -> ApiError {
    let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    ApiError::new(ErrorCode::RateLimited, "too many failed authentications from this address; retry later")
        .retry_after(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_keeps_failing_is_refused_then_recovers() {
        let failures = FailedAuths::new(NonZeroU32::new(1000).unwrap(), NonZeroU32::new(3).unwrap());
        let (attacker, other) = (Some("192.0.2.7"), Some("192.0.2.8"));
        for _ in 0..3 {
            assert!(failures.check(attacker).is_ok());
            failures.record(attacker, Failure::Unknown);
        }
        failures.record(attacker, Failure::Unknown);
        let refused = failures.check(attacker).unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited);
        assert_eq!(refused.retry_after, Some(1));
        assert!(failures.check(other).is_ok(), "another address is not affected");
        assert!(failures.check(None).is_ok(), "no address, no limit");
        std::thread::sleep(Duration::from_millis(5));
        assert!(failures.check(attacker).is_ok(), "the allowance comes back at the configured rate");
    }
}
