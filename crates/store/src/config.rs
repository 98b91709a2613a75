//! The store's tuning knobs, named with their unit, with the defaults the benchmarks were run with.

use serde::Deserialize;

use crate::{StoreError, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Commands per batch (one transaction, one fsync). A submission is never split, so a batch
    /// holding a single bigger submission may exceed it.
    pub batch_size_max: usize,
    /// How long the writer waits for more submissions once it has one, when the queue is empty.
    pub batch_wait_us: u64,
    /// Submissions the write queue holds before `submit` answers `Overloaded`.
    pub queue_capacity: usize,
    /// How often pending transfers past their timeout are looked for and expired.
    pub expiry_interval_ms: u64,
    /// How long a stored Idempotency-Key answer is kept (at least; purged after).
    pub idempotency_retention_hours: u64,
    /// Read-only connections serving reads beside the single writer (SQLite); on PostgreSQL,
    /// the pooled connections serving reads beside the writer's.
    pub read_connections: usize,
    /// PostgreSQL: connections of their own that look API keys up, so that a flood of unknown
    /// tokens waits on them and never on the connections that move money.
    pub auth_connections: usize,
    /// PostgreSQL: batches applied at once, each on its own connection (SQLite always applies
    /// one at a time).
    pub write_connections: usize,
    /// PostgreSQL: how long opening a connection may take (per host of a multi-host URL),
    /// unless the URL sets `connect_timeout` itself.
    pub connect_timeout_ms: u64,
    /// PostgreSQL: the server-side `statement_timeout` of every connection.
    pub statement_timeout_ms: u64,
    /// PostgreSQL: how long a COMMIT may take before its outcome is reported unknown (a commit
    /// waiting for a synchronous standby that is gone waits here).
    pub commit_timeout_ms: u64,
    /// Test builds only (the `fault-injection` feature): every batch that loads an account
    /// hands it to the ledger core overdrawn, as a bug would, and so stops the store. A normal
    /// build does not know this key and refuses it.
    #[cfg(feature = "fault-injection")]
    pub test_break_invariant: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            batch_size_max: 8192,
            batch_wait_us: 100,
            queue_capacity: 16384,
            expiry_interval_ms: 1000,
            idempotency_retention_hours: 24,
            read_connections: 4,
            auth_connections: 2,
            write_connections: 2,
            connect_timeout_ms: 2000,
            statement_timeout_ms: 10_000,
            commit_timeout_ms: 5000,
            #[cfg(feature = "fault-injection")]
            test_break_invariant: false,
        }
    }
}

impl StoreConfig {
    /// Refuses values the store cannot run with, so a bad file fails at start, not under load.
    pub fn validate(&self) -> StoreResult<()> {
        let problem = if self.batch_size_max == 0 {
            "batch_size_max must be at least 1"
        } else if self.queue_capacity == 0 {
            "queue_capacity must be at least 1"
        } else if self.expiry_interval_ms == 0 {
            "expiry_interval_ms must be at least 1"
        } else if self.idempotency_retention_hours == 0 {
            "idempotency_retention_hours must be at least 1"
        } else if self.read_connections == 0 || self.write_connections == 0 || self.auth_connections == 0 {
            "read_connections, write_connections and auth_connections must be at least 1"
        } else if self.connect_timeout_ms == 0
            || self.statement_timeout_ms == 0
            || self.commit_timeout_ms == 0
        {
            "connect_timeout_ms, statement_timeout_ms and commit_timeout_ms must be at least 1"
        } else {
            return Ok(());
        };
        Err(StoreError::unavailable(format!("invalid store configuration: {problem}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_missing_fields_and_unknown_ones_are_refused() {
        let c: StoreConfig = serde_json::from_str(r#"{"batch_size_max": 10}"#).unwrap();
        assert_eq!(c, StoreConfig { batch_size_max: 10, ..StoreConfig::default() });
        assert!(serde_json::from_str::<StoreConfig>(r#"{"batch_size": 10}"#).is_err());
        assert!(StoreConfig::default().validate().is_ok());
        assert!(StoreConfig { queue_capacity: 0, ..StoreConfig::default() }.validate().is_err());
    }

    #[cfg(not(feature = "fault-injection"))]
    #[test]
    fn the_test_fault_is_unknown_to_a_normal_build() {
        assert!(serde_json::from_str::<StoreConfig>(r#"{"test_break_invariant": true}"#).is_err());
    }
}
