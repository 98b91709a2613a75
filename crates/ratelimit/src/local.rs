//! Limits kept in this process: one governor GCRA limiter per key and rate.
//!
//! A keyed governor limiter has one quota for every key, while keys may each have their own
//! rate, so the limiters live in a map; a key's limiter is kept while its rate stays the same.
//! The map is bounded: a flood of distinct keys (random tokens, many client addresses) must not
//! grow it without end. Past [`MAX_ENTRIES`], limiters idle long enough to have refilled are
//! dropped (forgetting a full allowance changes nothing); should that not make room, all are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};

use crate::{Decision, Rate};

/// Limiters kept before idle ones are dropped.
pub const MAX_ENTRIES: usize = 100_000;

struct Entry {
    rate: Rate,
    limiter: Arc<DefaultDirectRateLimiter>,
    last_used: Instant,
}

#[derive(Default)]
pub struct LocalLimits {
    limiters: Mutex<HashMap<String, Entry>>,
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
        let now = Instant::now();
        if let Some(entry) = limiters.get_mut(key).filter(|entry| entry.rate == rate) {
            entry.last_used = now;
            return entry.limiter.clone();
        }
        if limiters.len() >= MAX_ENTRIES {
            limiters.retain(|_, entry| now.duration_since(entry.last_used) < entry.rate.refill_time());
            if limiters.len() >= MAX_ENTRIES {
                limiters.clear();
            }
        }
        let quota = Quota::per_second(rate.per_second).allow_burst(rate.burst);
        let limiter = Arc::new(DefaultDirectRateLimiter::direct(quota));
        limiters.insert(key.to_owned(), Entry { rate, limiter: limiter.clone(), last_used: now });
        limiter
    }

    /// Forgets `key`'s limiter (a revoked API key).
    pub fn forget(&self, key: &str) {
        self.limiters.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    }

    /// Limiters kept now.
    pub fn len(&self) -> usize {
        self.limiters.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    #[test]
    fn a_flood_of_distinct_keys_stays_bounded_and_busy_keys_keep_their_state() {
        let limits = LocalLimits::new();
        // A key that spent a burst of 1000 at one a second: some 1000 s from refilled.
        let slow = Rate::new(NonZeroU32::MIN, NonZeroU32::new(1000).unwrap());
        while limits.check("busy", slow).is_allowed() {}
        let fast = Rate::new(NonZeroU32::new(1_000_000).unwrap(), NonZeroU32::MIN);
        for i in 0..MAX_ENTRIES + 10 {
            limits.check(&format!("junk-{i}"), fast);
        }
        assert!(limits.len() <= MAX_ENTRIES, "{}", limits.len());
        // The busy key had not refilled: its state survived the pruning (a fresh limiter would
        // allow 1000 at once; the kept one only what came back since, one a second).
        let mut allowed = 0;
        while limits.check("busy", slow).is_allowed() {
            allowed += 1;
        }
        assert!(allowed < 100, "the busy key's spent allowance was forgotten: {allowed} allowed");
    }
}
