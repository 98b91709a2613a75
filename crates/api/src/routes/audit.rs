//! `GET /v1/audit` (scope `audit`, which `admin` implies): the audit trail, oldest first, with
//! filters and a cursor. Each record carries its `position` and chain `hash`, so a client can
//! check the chain itself: `hash` = SHA-256(previous hash ‖ canonical record), see
//! `coffer_store::audit::canonical` and docs/OPERATIONS.md.

use axum::extract::State;
use axum::response::Response;
use coffer_ledger::Timestamp;
use coffer_store::{AuditAction, AuditFilter, AuditRecord, Cursor};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::json;
use crate::auth::{AuditScope, Caller};
use crate::client_text;
use crate::dto::{CursorParam, List, page_limit};
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::openapi::ReadProblems;
use crate::state::AppState;

/// Longest actor or target a filter may name.
const MAX_FILTER_CHARS: usize = 256;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this action, e.g. `key.created` (the document lists them all).
    pub action: Option<String>,
    /// Only this actor: `key:<uuid>`, `cli:<os user>`, `bootstrap` or `anonymous`; 1 to 256
    /// characters, no control characters.
    #[param(min_length = 1, max_length = 256, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    pub actor: Option<String>,
    /// Only this target, e.g. `key:<uuid>`, `webhook:<uuid>`, `address:192.0.2.7`; 1 to 256
    /// characters, no control characters.
    #[param(min_length = 1, max_length = 256, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    pub target: Option<String>,
    /// Only this outcome.
    #[param(inline)]
    pub outcome: Option<OutcomeName>,
    /// Only records at or after this time.
    pub since: Option<Timestamp>,
    /// Only records before this time.
    pub until: Option<Timestamp>,
    /// 1..=1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[param(value_type = Option<String>, pattern = "^c(?:[0-9a-f]{1,15}|[0-7][0-9a-f]{15})$")]
    pub cursor: Option<CursorParam>,
}

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeName {
    Succeeded,
    Denied,
}

/// One record of the audit trail, as `GET /v1/audit` answers it and the
/// `coffer.audit.recorded` event carries it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditRecordView {
    /// 1, 2, 3… in commit order, without gaps.
    pub position: i64,
    pub id: Uuid,
    pub time: Timestamp,
    /// `key:<uuid>`, `cli:<os user>`, `bootstrap` or `anonymous`.
    pub actor: String,
    /// What was done, e.g. `key.created`.
    pub action: String,
    /// What it was done to, e.g. `key:<uuid>`.
    pub target: String,
    /// The client's IP address (an IPv6 client's /64 for failed authentications).
    pub client_address: Option<String>,
    /// The request's `x-request-id`.
    pub request_id: Option<String>,
    /// `succeeded` or `denied`.
    pub outcome: String,
    /// Facts beside the target: a new key's scopes, a webhook's URL, a refused path.
    #[schema(value_type = Object)]
    pub details: Map<String, Value>,
    /// SHA-256 of the previous record's hash (32 zero bytes before the first) and this
    /// record's canonical form, in 64 lowercase hex digits.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub hash: String,
}

impl From<AuditRecord> for AuditRecordView {
    fn from(r: AuditRecord) -> Self {
        Self {
            position: r.position,
            id: r.id,
            time: r.time,
            actor: r.actor,
            action: r.action,
            target: r.target,
            client_address: r.client_address,
            request_id: r.request_id,
            outcome: r.outcome,
            details: r.details,
            hash: r.hash.to_hex(),
        }
    }
}

/// A filter's text: 1 to 256 characters, none of them a control character.
fn filter_text(field: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(value) = value else { return Ok(None) };
    if value.is_empty() || value.chars().count() > MAX_FILTER_CHARS {
        return Err(ApiError::invalid_field(field, "must be 1 to 256 characters"));
    }
    client_text::check(&value).map_err(|m| ApiError::invalid_field(field, m))?;
    Ok(Some(value))
}

/// List the audit trail, oldest first (scope `audit`; `admin` implies it).
#[utoipa::path(
    get, path = "/v1/audit", tag = "audit",
    params(AuditQuery),
    responses((status = 200, description = "A page of audit records", body = List<AuditRecordView>), ReadProblems)
)]
pub async fn list_audit(
    State(state): State<AppState>,
    _: Caller<AuditScope>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    let limit = page_limit(query.limit)?;
    if let Some(action) = &query.action
        && AuditAction::parse(action).is_none()
    {
        return Err(ApiError::invalid_field("action", format!("{action:?} is not an audit action")));
    }
    let filter = AuditFilter {
        action: query.action,
        actor: filter_text("actor", query.actor)?,
        target: filter_text("target", query.target)?,
        outcome: query.outcome.map(|o| match o {
            OutcomeName::Succeeded => "succeeded".to_owned(),
            OutcomeName::Denied => "denied".to_owned(),
        }),
        since: query.since,
        until: query.until,
    };
    let after = query.cursor.map_or(0, |c| c.0.0);
    let records = state.store.audit_records(&filter, after, limit).await?;
    let next_cursor =
        (records.len() == limit).then(|| records.last().map(|r| Cursor(r.position).to_string())).flatten();
    let data = records.into_iter().map(AuditRecordView::from).collect();
    Ok(json(StatusCode::OK, &List { data, next_cursor }))
}

#[cfg(test)]
mod tests {
    use coffer_store::chain::ChainHash;
    use coffer_store::{AuditContext, AuditOutcome, KeyId};

    use super::*;

    /// The view documents the JSON the store writes into the event: the two must not drift.
    #[test]
    fn the_view_is_the_records_own_json() {
        let by = AuditContext::key(KeyId(Uuid::now_v7()), Some("192.0.2.1".into()), None);
        let entry = by.entry(
            AuditAction::KeyRevoked,
            "key:x".into(),
            AuditOutcome::Succeeded,
            serde_json::json!({"a": 1}),
        );
        let record = entry.chained(3, &ChainHash::GENESIS);
        let view = serde_json::to_value(AuditRecordView::from(record.clone())).unwrap();
        assert_eq!(view, serde_json::to_value(&record).unwrap());
    }
}
