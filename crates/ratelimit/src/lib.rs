//! Coffer's rate limits: the generic cell rate algorithm (GCRA) per key, either in this process
//! (governor) or shared by every process through Redis, with the local limits standing in
//! whenever Redis cannot be reached, so that traffic keeps flowing under a limit.
//!
//! A rate is `per_second` requests with a `burst` allowance; a limited request learns how long
//! to wait (`Retry-After`).

mod limits;
mod local;
mod redis_gcra;

use std::num::NonZeroU32;
use std::time::Duration;

pub use limits::{FALLBACKS, Limits};
pub use local::LocalLimits;
pub use redis_gcra::{RedisError, RedisLimits};

/// How many requests a key may make: `per_second` on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Rate {
    /// A rate, with zero read as one (a limit of nothing is not a limit anyone means).
    pub fn new(per_second: u32, burst: u32) -> Self {
        let at_least_one = |n| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        Self { per_second: at_least_one(per_second), burst: at_least_one(burst) }
    }

    /// The time between two requests at the steady rate.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(1) / self.per_second.get()
    }
}

/// What a check says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Over the limit: try again after this long.
    Limited {
        retry_after: Duration,
    },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed)
    }
}
