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
    /// A rate of at least one request: a zero is refused where it is configured (the settings
    /// are `NonZeroU32`), never turned into something else here.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self { per_second, burst }
    }

    /// A key's own rate, `per_second` with one second's worth of burst; `None` for zero. Keys are
    /// made with a rate of at least one (the API and `coffer keys create` refuse zero), so a
    /// stored zero cannot occur; the callers give such a key the default rate rather than none.
    pub fn of_key(per_second: u32) -> Option<Self> {
        NonZeroU32::new(per_second).map(|rate| Self::new(rate, rate))
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
