//! Limits kept in this process: one governor GCRA limiter per key and rate.
//!
//! A keyed governor limiter has one quota for every key, while keys may each have their own
//! rate, so the limiters live in a map; a key's limiter is kept while its rate stays the same.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};

use crate::{Decision, Rate};

#[derive(Default)]
pub struct LocalLimits {
    limiters: Mutex<HashMap<String, (Rate, Arc<DefaultDirectRateLimiter>)>>,
}

impl LocalLimits {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one request from `key`'s allowance at `rate`.
    pub fn check(&self, key: &str, rate: Rate) -> Decision {
        let limiter = self.limiter(key, rate);
        match limiter.check() {
            Ok(()) => Decision::Allowed,
            Err(not_until) => {
                Decision::Limited { retry_after: not_until.wait_time_from(DefaultClock::default().now()) }
            }
        }
    }

    fn limiter(&self, key: &str, rate: Rate) -> Arc<DefaultDirectRateLimiter> {
        // Every operation on the map is one call: a poisoned lock cannot leave it inconsistent.
        let mut limiters = self.limiters.lock().unwrap_or_else(PoisonError::into_inner);
        match limiters.get(key) {
            Some((kept, limiter)) if *kept == rate => limiter.clone(),
            _ => {
                let quota = Quota::per_second(rate.per_second).allow_burst(rate.burst);
                let limiter = Arc::new(DefaultDirectRateLimiter::direct(quota));
                limiters.insert(key.to_owned(), (rate, limiter.clone()));
                limiter
            }
        }
    }

    /// Forgets `key`'s limiter (a revoked API key).
    pub fn forget(&self, key: &str) {
        self.limiters.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    }
}
