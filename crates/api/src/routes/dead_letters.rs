//! The consumers' dead letters (admin): list, show, replay, discard — what `coffer dlq` calls.
//! They live in the store with the in-process bus and in the dead-letter stream on JetStream;
//! the [`coffer_events::DeadLetterQueue`] behind `state.dead_letters` hides which.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use coffer_events::{DeadLetterEntry, Handled};
use coffer_store::audit::{dead_letter_details, dead_letter_target};
use coffer_store::{AuditAction, AuditContext, AuditOutcome};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use super::json;
use crate::audit::Origin;
use crate::auth::{AdminScope, Caller};
use crate::client_text;
use crate::dto::page_limit;
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, PathParam};
use crate::openapi::{ActionProblems, LookupProblems, ReadProblems};
use crate::state::AppState;

/// A dead letter's id: a hyphenated UUID (in-process bus) or a stream sequence of 1 to 19
/// digits (JetStream); `openapi::DEAD_LETTER_ID_PATTERN` states the same.
pub struct DeadLetterId(String);

impl PathParam for DeadLetterId {
    const NAME: &'static str = "id";
    fn parse(raw: &str) -> Result<Self, &'static str> {
        let uuid = raw.len() == 36
            && raw.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_hexdigit(),
            });
        let sequence = (1..=19).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_digit());
        if uuid || sequence { Ok(Self(raw.to_owned())) } else { Err("must be a dead letter id") }
    }
}

/// A consumer's name as a filter: 1 to 128 characters, none of them a control character.
fn consumer_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.chars().count() > 128 {
        return Err("must be 1 to 128 characters");
    }
    client_text::check(name)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Only this consumer's dead letters: 1 to 128 characters, no control characters.
    #[param(min_length = 1, max_length = 128, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    pub consumer: Option<String>,
    /// 1..=1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page: a dead letter's id, a UUID on the in-process bus
    /// and a sequence on JetStream (the other bus's form is a 400).
    #[param(
        pattern = "^(?:[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|[0-9]{1,19})$"
    )]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterView {
    pub id: String,
    /// The consumer that gave up on the event.
    pub consumer: String,
    /// The handler's last error.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    pub failed_at: coffer_ledger::Timestamp,
    /// The event as a CloudEvent (its `sequence` is the outbox position); null when the
    /// message was not an event at all.
    #[schema(value_type = Option<Object>)]
    pub event: Option<Box<RawValue>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterList {
    pub data: Vec<DeadLetterView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

fn view(entry: DeadLetterEntry) -> DeadLetterView {
    let event = entry
        .event
        .as_ref()
        .and_then(|e| coffer_events::encode(e).ok())
        .and_then(|bytes| RawValue::from_string(String::from_utf8(bytes).ok()?).ok());
    DeadLetterView {
        id: entry.id,
        consumer: entry.consumer,
        error: entry.error,
        attempts: entry.attempts,
        failed_at: entry.failed_at,
        event,
    }
}

/// List dead letters, oldest first (admin).
#[utoipa::path(
    get, path = "/v1/admin/dead-letters", tag = "events",
    params(DeadLetterQuery),
    responses((status = 200, description = "A page of dead letters", body = DeadLetterList), ReadProblems)
)]
pub async fn list_dead_letters(
    State(state): State<AppState>,
    _: Caller<AdminScope>,
    ApiQuery(query): ApiQuery<DeadLetterQuery>,
) -> Result<Response, ApiError> {
    let limit = page_limit(query.limit)?;
    if let Some(cursor) = &query.cursor {
        DeadLetterId::parse(cursor).map_err(|m| ApiError::invalid_field("cursor", m))?;
    }
    if let Some(consumer) = &query.consumer {
        consumer_name(consumer).map_err(|m| ApiError::invalid_field("consumer", m))?;
    }
    let entries = state.dead_letters.list(query.consumer.as_deref(), query.cursor.as_deref(), limit).await?;
    let next_cursor = (entries.len() == limit).then(|| entries.last().map(|e| e.id.clone())).flatten();
    Ok(json(StatusCode::OK, &DeadLetterList { data: entries.into_iter().map(view).collect(), next_cursor }))
}

/// Get one dead letter with its event (admin).
#[utoipa::path(
    get, path = "/v1/admin/dead-letters/{id}", tag = "events",
    params(("id" = String, Path, description = "The dead letter's id")),
    responses((status = 200, description = "The dead letter", body = DeadLetterView), LookupProblems)
)]
pub async fn get_dead_letter(
    State(state): State<AppState>,
    _: Caller<AdminScope>,
    ApiPath(DeadLetterId(id)): ApiPath<DeadLetterId>,
) -> Result<Response, ApiError> {
    let entry =
        state.dead_letters.show(&id).await?.ok_or_else(|| ApiError::not_found("no such dead letter"))?;
    Ok(json(StatusCode::OK, &view(entry)))
}

/// Hand a dead letter back to its consumer, which tries it again from its first attempt (admin).
#[utoipa::path(
    post, path = "/v1/admin/dead-letters/{id}/replay", tag = "events",
    params(("id" = String, Path, description = "The dead letter's id: a UUID (in-process bus) or a sequence (JetStream)")),
    responses((status = 202, description = "Handed back; the consumer takes it shortly"), ActionProblems)
)]
pub async fn replay_dead_letter(
    State(state): State<AppState>,
    Caller(caller, _): Caller<AdminScope>,
    origin: Origin,
    ApiPath(DeadLetterId(id)): ApiPath<DeadLetterId>,
) -> Result<Response, ApiError> {
    let by = origin.by(&caller);
    let handled = state.dead_letters.replay(&id, &by).await?;
    record(&state, &by, AuditAction::DeadLetterReplayed, &id, handled).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// 404 for a letter that was not there; the audit record of one handled on a bus that keeps
/// none itself (JetStream), in a transaction of its own, after the change.
async fn record(
    state: &AppState,
    by: &AuditContext,
    action: AuditAction,
    id: &str,
    handled: Handled,
) -> Result<(), ApiError> {
    let Handled::Done { consumer, event_id } = handled else {
        return if handled.found() { Ok(()) } else { Err(ApiError::not_found("no such dead letter")) };
    };
    let details = dead_letter_details(&consumer, event_id.unwrap_or_default());
    let entry = by.entry(action, dead_letter_target(id), AuditOutcome::Succeeded, details);
    state.store.record_audit(entry).await?;
    Ok(())
}

/// Delete a dead letter for good (admin).
#[utoipa::path(
    delete, path = "/v1/admin/dead-letters/{id}", tag = "events",
    params(("id" = String, Path, description = "The dead letter's id")),
    responses((status = 204, description = "Discarded"), LookupProblems)
)]
pub async fn discard_dead_letter(
    State(state): State<AppState>,
    Caller(caller, _): Caller<AdminScope>,
    origin: Origin,
    ApiPath(DeadLetterId(id)): ApiPath<DeadLetterId>,
) -> Result<Response, ApiError> {
    let by = origin.by(&caller);
    let handled = state.dead_letters.discard(&id, &by).await?;
    record(&state, &by, AuditAction::DeadLetterDiscarded, &id, handled).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
