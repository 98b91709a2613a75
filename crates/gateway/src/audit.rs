//! The gateway's audit trail. The gateway has no database, so a change to its upstream list
//! is recorded as a structured log line (Elastic Common Schema names, `event.category:
//! configuration`) carrying the same record the store's trail holds (`coffer_store::audit`):
//! time, actor, action, target, client address, request id, outcome, details, and a position
//! and hash chained from the first change this process made. A log pipeline that keeps the
//! lines can check with `coffer_store::audit::link` that none was dropped or edited within a
//! run; each start begins a new chain at position 1.

use std::sync::{Mutex, PoisonError};

use coffer_store::chain::ChainHash;
use coffer_store::{AuditAction, AuditContext, AuditOutcome};
use serde_json::Value;

/// The log's chain: the last position and hash this process wrote.
#[derive(Debug)]
pub struct AuditLog {
    head: Mutex<(i64, ChainHash)>,
}

impl Default for AuditLog {
    fn default() -> Self {
        Self { head: Mutex::new((0, ChainHash::GENESIS)) }
    }
}

impl AuditLog {
    /// Logs that `by` replaced the upstream list (`outcome`), with `details` (the list asked
    /// for, what was added and removed, or why it was refused).
    pub fn upstreams_changed(&self, by: &AuditContext, outcome: AuditOutcome, details: Value) {
        let entry =
            by.entry(AuditAction::GatewayUpstreamsChanged, "gateway:upstreams".into(), outcome, details);
        let mut head = self.head.lock().unwrap_or_else(PoisonError::into_inner);
        let record = entry.chained(head.0 + 1, &head.1);
        *head = (record.position, record.hash);
        let json = serde_json::to_string(&record).unwrap_or_default();
        tracing::info!(
            event.kind = "event",
            event.category = "configuration",
            event.type = "change",
            event.action = record.action.as_str(),
            event.outcome = if outcome == AuditOutcome::Succeeded { "success" } else { "failure" },
            user.name = record.actor.as_str(),
            source.ip = record.client_address.as_deref(),
            http.request.id = record.request_id.as_deref(),
            coffer.audit.position = record.position,
            coffer.audit.hash = %record.hash,
            coffer.audit.record = json.as_str(),
            "audit: the upstream list was replaced"
        );
    }
}

#[cfg(test)]
mod tests {
    use coffer_store::audit::link;

    use super::*;

    #[test]
    fn each_line_links_to_the_one_before() {
        let log = AuditLog::default();
        let by = AuditContext { actor: "gateway:admin".into(), client_address: None, request_id: None };
        log.upstreams_changed(&by, AuditOutcome::Succeeded, serde_json::json!({"upstreams": ["http://a:1"]}));
        let first = *log.head.lock().unwrap();
        log.upstreams_changed(&by, AuditOutcome::Denied, serde_json::json!({}));
        let second = *log.head.lock().unwrap();
        assert_eq!((first.0, second.0), (1, 2));
        assert_ne!(first.1, second.1);
        let _ = link; // the verifier's function, named in the module's doc
    }
}
