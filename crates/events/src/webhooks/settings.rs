//! The dispatcher's limits, in one validated value (DESIGN.md §4.4–5): how long a request may
//! take, how often and for how long a failing endpoint is retried, how many deliveries are in
//! flight at once, and whether private networks and plain http may be reached.
//!
//! The default retry schedule spans about a day — an endpoint down for a deploy, a night or an
//! outage of its own still gets every event — with the delays doubling from 5 s up to 4 h and
//! jittered (between half and all of each delay) so that endpoints that failed together do
//! not all come back at the same second: 18 attempts over roughly 13 to 26 hours.

use std::time::Duration;

use super::target::TargetPolicy;
use crate::RetryPolicy;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Lets deliveries reach loopback and private addresses: for tests and for an operator
    /// whose endpoints are all inside their own network. Off by default (SSRF guard).
    pub allow_private_networks: bool,
    /// Lets deliveries go to `http://` URLs: for tests and local setups. Off by default, as a
    /// delivery in clear can be read, and its receiver impersonated, on the way.
    pub allow_insecure_http: bool,
    /// The longest one POST may take, connecting included.
    pub request_timeout: Duration,
    /// How many attempts a delivery gets and the delays between them.
    pub retry: RetryPolicy,
    /// How long a claimed delivery is kept from other dispatchers: longer than a whole round
    /// may take, so no delivery is posted twice while its first attempt is still running.
    pub claim: Duration,
    /// Deliveries posted at the same time.
    pub concurrency: usize,
    /// Deliveries claimed in one round.
    pub batch: usize,
    /// How long to wait before looking again when nothing was due.
    pub poll_interval: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allow_private_networks: false,
            allow_insecure_http: false,
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy {
                max_attempts: 18,
                initial_backoff: Duration::from_secs(5),
                max_backoff: Duration::from_secs(4 * 3600),
            },
            claim: Duration::from_secs(60),
            concurrency: 16,
            batch: 64,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// Settings that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("webhook {0} must be at least 1")]
    Zero(&'static str),
    #[error("webhook claim ({claim:?}) must outlast a round of requests ({round:?})")]
    ClaimTooShort { claim: Duration, round: Duration },
}

impl WebhookSettings {
    /// Where deliveries may go.
    pub fn policy(&self) -> TargetPolicy {
        TargetPolicy {
            allow_private_networks: self.allow_private_networks,
            allow_insecure_http: self.allow_insecure_http,
        }
    }

    /// Checks the settings at start, so a bad value is an error then and not a stall later.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let counts = [
            ("max_attempts", self.retry.max_attempts as usize),
            ("concurrency", self.concurrency),
            ("batch", self.batch),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, value)| *value == 0) {
            return Err(SettingsError::Zero(name));
        }
        if self.request_timeout.is_zero() {
            return Err(SettingsError::Zero("request_timeout"));
        }
        let round = self.longest_round();
        if self.claim <= round {
            return Err(SettingsError::ClaimTooShort { claim: self.claim, round });
        }
        Ok(())
    }

    /// The longest a round can take: its requests, `concurrency` at a time, each timing out.
    fn longest_round(&self) -> Duration {
        let waves = self.batch.div_ceil(self.concurrency);
        self.request_timeout.saturating_mul(u32::try_from(waves).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_retry_for_about_a_day() {
        let settings = WebhookSettings::default();
        settings.validate().unwrap();
        let retry = settings.retry;
        let full: Duration = (1..retry.max_attempts)
            .map(|attempt| retry.initial_backoff.saturating_mul(1 << (attempt - 1)).min(retry.max_backoff))
            .sum();
        let hours = full.as_secs_f64() / 3600.0;
        assert!((20.0..30.0).contains(&hours), "the schedule spans {hours} h without jitter");
    }

    #[test]
    fn a_claim_shorter_than_a_round_is_refused() {
        let settings = WebhookSettings { claim: Duration::from_secs(40), ..WebhookSettings::default() };
        assert!(matches!(settings.validate(), Err(SettingsError::ClaimTooShort { .. })));
        let settings = WebhookSettings { concurrency: 0, ..WebhookSettings::default() };
        assert_eq!(settings.validate(), Err(SettingsError::Zero("concurrency")));
    }
}
