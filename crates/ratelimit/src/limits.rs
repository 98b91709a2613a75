//! The limits a caller uses: cluster-wide through Redis when it is configured and answering,
//! local otherwise — per request, so traffic keeps flowing under a limit while Redis is down
//! and the shared limit is back as soon as Redis is.
//!
//! While Redis is down each process enforces the rate on its own, so the cluster as a whole
//! lets through up to `processes × rate`: a limit that holds locally beats no limit, and beats
//! refusing everything.

use std::path::Path;
use std::time::Duration;

use crate::{Decision, LocalLimits, Rate, RedisLimits};

/// Checks answered by the local limits because Redis could not be asked.
pub const FALLBACKS: &str = "coffer_ratelimit_redis_fallbacks_total";

pub struct Limits {
    local: LocalLimits,
    redis: Option<RedisLimits>,
}

impl Limits {
    /// Local limits only.
    pub fn local() -> Self {
        Self { local: LocalLimits::new(), redis: None }
    }

    /// Cluster-wide limits on the Redis at `url` (keys under `prefix`), falling back to local
    /// ones. Fails only on a malformed URL.
    pub fn shared(url: &str, prefix: &str, timeout: Duration) -> Result<Self, crate::RedisError> {
        Self::shared_with_ca(url, prefix, timeout, None)
    }

    /// The same; a `rediss://` server's certificate must chain to the authorities in `ca`.
    /// Fails on a malformed URL or a CA file that cannot be read.
    pub fn shared_with_ca(
        url: &str,
        prefix: &str,
        timeout: Duration,
        ca: Option<&Path>,
    ) -> Result<Self, crate::RedisError> {
        Ok(Self { local: LocalLimits::new(), redis: Some(RedisLimits::new(url, prefix, timeout, ca)?) })
    }

    pub async fn check(&self, key: &str, rate: Rate) -> Decision {
        let Some(redis) = &self.redis else { return self.local.check(key, rate) };
        match redis.check(key, rate).await {
            Ok(decision) => decision,
            Err(e) => {
                tracing::debug!(error = %e, "rate limit: Redis unavailable, using the local limit");
                metrics::counter!(FALLBACKS).increment(1);
                self.local.check(key, rate)
            }
        }
    }

    pub fn forget(&self, key: &str) {
        self.local.forget(key);
    }
}
