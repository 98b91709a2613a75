//! The API's tuning knobs, named with their unit. The binary reads them from its config file and
//! `COFFER_API__*` environment variables and passes them to [`crate::router`].

use std::num::NonZeroU32;

use serde::Deserialize;

/// Limits and caches of the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Requests per second an API key may make unless the key sets its own limit. Generous by
    /// default so that a benchmark on one key is never throttled.
    pub rate_limit_per_second: NonZeroU32,
    /// How many requests above the steady rate a key may send at once (for keys on the default
    /// limit; a key with its own limit gets one second's worth).
    pub rate_limit_burst: NonZeroU32,
    /// Largest request body, in bytes (413 beyond).
    pub body_limit_bytes: usize,
    /// Largest body of `POST /v1/transfers/batch`, in bytes.
    pub batch_body_limit_bytes: usize,
    /// Longest a request may take before it is answered 503 (the outcome of a write cut short is
    /// unknown: the client retries with the same id or Idempotency-Key).
    pub request_timeout_ms: u64,
    /// How long a verified API key is trusted before the store is asked again. Revocation through
    /// this process's own `DELETE /v1/keys/{id}` takes effect at once regardless.
    pub key_cache_ttl_ms: u64,
    /// Event streams (`GET /v1/events/stream`) open at once in this process; more are a 503.
    pub max_event_streams: usize,
    /// Failed authentications a client address may have per second, on average, and at once:
    /// past them, tokens from it that are not already verified are refused (429) without a
    /// look-up until the allowance recovers. IPv6 clients count per /64.
    pub auth_failures_per_second: NonZeroU32,
    pub auth_failure_burst: NonZeroU32,
    /// `coffer serve`'s HTTP server: how long a client may take to send a request's headers.
    pub header_read_timeout_ms: u64,
    /// Connections served at once; past it new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub http2_max_concurrent_streams: u32,
    /// Largest request head (HTTP/1.1 buffer, HTTP/2 header list), in bytes.
    pub max_header_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            rate_limit_per_second: NonZeroU32::new(100_000).unwrap_or(NonZeroU32::MAX),
            rate_limit_burst: NonZeroU32::new(100_000).unwrap_or(NonZeroU32::MAX),
            body_limit_bytes: 1024 * 1024,
            batch_body_limit_bytes: 8 * 1024 * 1024,
            request_timeout_ms: 30_000,
            key_cache_ttl_ms: 1_000,
            max_event_streams: 256,
            auth_failures_per_second: NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
            auth_failure_burst: NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN),
            header_read_timeout_ms: 10_000,
            max_connections: 10_000,
            http2_max_concurrent_streams: 256,
            max_header_bytes: 16 * 1024,
        }
    }
}

/// A configuration value the API cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid api configuration: {0}")]
pub struct InvalidConfig(pub &'static str);

impl ApiConfig {
    /// Refuses values the API cannot run with, so a bad file fails at start, not under load.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        // Zero rates cannot even be written down: the fields are `NonZeroU32`.
        let problem = if self.body_limit_bytes == 0 {
            "body_limit_bytes must be at least 1"
        } else if self.batch_body_limit_bytes < self.body_limit_bytes {
            "batch_body_limit_bytes must be at least body_limit_bytes"
        } else if self.max_event_streams == 0 {
            "max_event_streams must be at least 1"
        } else if self.request_timeout_ms == 0 {
            "request_timeout_ms must be at least 1"
        } else if self.header_read_timeout_ms == 0
            || self.max_connections == 0
            || self.http2_max_concurrent_streams == 0
        {
            "header_read_timeout_ms, max_connections and http2_max_concurrent_streams must be at least 1"
        } else if self.max_header_bytes < 1024 {
            "max_header_bytes must be at least 1024"
        } else {
            return Ok(());
        };
        Err(InvalidConfig(problem))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_missing_fields_and_unknown_ones_are_refused() {
        let c: ApiConfig = serde_json::from_str(r#"{"rate_limit_per_second": 5}"#).unwrap();
        assert_eq!(
            c,
            ApiConfig { rate_limit_per_second: NonZeroU32::new(5).unwrap(), ..ApiConfig::default() }
        );
        assert!(serde_json::from_str::<ApiConfig>(r#"{"rate_limit": 5}"#).is_err());
        assert!(ApiConfig::default().validate().is_ok());
        for zero in [r#"{"rate_limit_per_second": 0}"#, r#"{"rate_limit_burst": 0}"#] {
            assert!(serde_json::from_str::<ApiConfig>(zero).is_err(), "{zero}");
        }
        assert!(ApiConfig { max_event_streams: 0, ..ApiConfig::default() }.validate().is_err());
    }
}
