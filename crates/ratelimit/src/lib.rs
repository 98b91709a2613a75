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

    /// How long an unused allowance takes to fill up again: after it, a limiter holds nothing
    /// worth keeping.
    pub fn refill_time(&self) -> std::time::Duration {
        self.interval() * self.burst.get()
    }

    /// The time between two requests at the steady rate.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(1) / self.per_second.get()
    }
}

/// The name a client address is limited under: an IPv6 client owns a whole /64 (one customer's
/// network, where it may pick any address), so it is grouped by that; an IPv4-mapped address is
/// its IPv4 address.
pub fn address_bucket(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_grouped_by_their_64() {
        let bucket = |text: &str| address_bucket(text.parse().unwrap());
        assert_eq!(bucket("2001:db8:1:2:aaaa::1"), bucket("2001:db8:1:2:ffff::9"));
        assert_ne!(bucket("2001:db8:1:2::1"), bucket("2001:db8:1:3::1"));
        assert_eq!(bucket("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_eq!(bucket("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(bucket("192.0.2.1"), "192.0.2.1");
    }
}
