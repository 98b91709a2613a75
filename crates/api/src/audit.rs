//! The API's part in the audit trail (DESIGN §5): who and where an administrative request comes
//! from ([`Origin`]), and the security events recorded without a change of their own
//! ([`Alarms`]): a client address out of failed authentications, a key refused an
//! administrative route for lack of scope.
//!
//! Those two can be driven by a client, so they must not let anyone grow the trail without
//! bound: each is recorded at most once per subject (the address, the key and route) per
//! [`ALARM_WINDOW`], and all of them together at most [`ALARMS_PER_SECOND`] a second (a burst
//! of [`ALARM_BURST`]); what is left out is counted in `coffer_audit_alarms_suppressed_total`.
//! They are written off the request path, so a refusal is answered at once.

use std::collections::HashMap;
use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use coffer_ratelimit::{LocalLimits, Rate};
use coffer_store::{AuditAction, AuditContext, AuditEntry, AuditOutcome, AuditTrail, Scope};
use http::request::Parts;
use serde_json::json;

use crate::auth::{Principal, client_ip};
use crate::observe::REQUEST_ID;

/// How long one subject's alarm stands for all that follow it.
pub const ALARM_WINDOW: Duration = Duration::from_secs(60);
/// Alarms recorded per second, all subjects together.
pub const ALARMS_PER_SECOND: u32 = 1;
/// How many alarms may be recorded at once before [`ALARMS_PER_SECOND`] applies.
pub const ALARM_BURST: u32 = 60;
/// Subjects remembered before the oldest are forgotten.
const MAX_SUBJECTS: usize = 10_000;

/// Where a request comes from: the client's address (the TCP peer) and the request's id.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub client_address: Option<String>,
    pub request_id: Option<String>,
}

impl Origin {
    pub fn of(parts: &Parts) -> Self {
        Self {
            client_address: client_ip(&parts.extensions).map(|ip| ip.to_string()),
            // The outer layer made sure every request has one of at most 128 visible characters.
            request_id: parts.headers.get(&REQUEST_ID).and_then(|v| v.to_str().ok()).map(str::to_owned),
        }
    }

    /// The audit context of a request made with `principal`'s key.
    pub fn by(&self, principal: &Principal) -> AuditContext {
        AuditContext::key(principal.key.id, self.client_address.clone(), self.request_id.clone())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Origin {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self::of(parts))
    }
}

/// Security events for the audit trail, throttled (see the module's doc).
pub struct Alarms {
    trail: Arc<dyn AuditTrail>,
    /// When each subject was last recorded.
    recent: Mutex<HashMap<String, Instant>>,
    all: LocalLimits,
    rate: Rate,
}

impl Alarms {
    pub fn new(trail: Arc<dyn AuditTrail>) -> Self {
        let n = |n| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        Self {
            trail,
            recent: Mutex::default(),
            all: LocalLimits::new(),
            rate: Rate::new(n(ALARMS_PER_SECOND), n(ALARM_BURST)),
        }
    }

    /// `address` (an IPv4 address or an IPv6 /64) ran out of failed authentications.
    pub fn auth_failures(&self, address: &str, request_id: Option<String>) {
        let by =
            AuditContext { actor: "anonymous".into(), client_address: Some(address.to_owned()), request_id };
        let entry = by.entry(
            AuditAction::AuthFailureThreshold,
            format!("address:{address}"),
            AuditOutcome::Denied,
            json!({}),
        );
        self.raise(format!("address:{address}"), entry);
    }

    /// `principal`'s key was refused `method route` (the route's template; `path` as sent) for
    /// lack of `needed`.
    pub fn denied(
        &self,
        principal: &Principal,
        origin: &Origin,
        method: &str,
        route: &str,
        path: &str,
        needed: Scope,
    ) {
        let target = format!("route:{method} {route}");
        let details = json!({"path": path, "needed_scope": needed.as_str()});
        let entry = origin.by(principal).entry(
            AuditAction::AccessDenied,
            target.clone(),
            AuditOutcome::Denied,
            details,
        );
        self.raise(format!("{}:{target}", entry.actor), entry);
    }

    /// Records `entry` unless `subject` was recorded within the window or the allowance of all
    /// alarms is spent; the write happens on a task of its own.
    fn raise(&self, subject: String, entry: AuditEntry) {
        if !self.admit(subject) {
            metrics::counter!("coffer_audit_alarms_suppressed_total", "action" => entry.action.as_str())
                .increment(1);
            return;
        }
        let trail = self.trail.clone();
        tokio::spawn(async move {
            let action = entry.action.as_str();
            if let Err(e) = trail.record_audit(entry).await {
                tracing::warn!(error = %e, event.action = action, "a security event could not be recorded in the audit trail");
            }
        });
    }

    fn admit(&self, subject: String) -> bool {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.get(&subject).is_some_and(|at| now.duration_since(*at) < ALARM_WINDOW) {
            return false;
        }
        if !self.all.check("alarms", self.rate).is_allowed() {
            return false;
        }
        if recent.len() >= MAX_SUBJECTS {
            recent.retain(|_, at| now.duration_since(*at) < ALARM_WINDOW);
            if recent.len() >= MAX_SUBJECTS {
                recent.clear();
            }
        }
        recent.insert(subject, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nowhere;

    #[async_trait::async_trait]
    impl AuditTrail for Nowhere {
        async fn administer(
            &self,
            _: coffer_store::AdminChange,
            _: &AuditContext,
        ) -> coffer_store::StoreResult<coffer_store::Administered> {
            unreachable!()
        }
        async fn record_audit(&self, _: AuditEntry) -> coffer_store::StoreResult<coffer_store::AuditRecord> {
            Err(coffer_store::StoreError::unavailable("nowhere"))
        }
        async fn audit_records(
            &self,
            _: &coffer_store::AuditFilter,
            _: i64,
            _: usize,
        ) -> coffer_store::StoreResult<Vec<coffer_store::AuditRecord>> {
            Ok(Vec::new())
        }
        async fn audit_head(&self) -> coffer_store::StoreResult<coffer_store::AuditHead> {
            unreachable!()
        }
    }

    #[test]
    fn a_subject_is_recorded_once_per_window_and_all_subjects_share_an_allowance() {
        let alarms = Alarms::new(Arc::new(Nowhere));
        assert!(alarms.admit("address:192.0.2.1".into()));
        assert!(!alarms.admit("address:192.0.2.1".into()), "the same subject within the window");
        let admitted =
            (0..1000).filter(|i| alarms.admit(format!("address:10.0.{}.{}", i / 256, i % 256))).count();
        assert!(admitted < usize::try_from(ALARM_BURST).unwrap() + 5, "{admitted} admitted");
    }
}
