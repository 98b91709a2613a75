//! `GET /v1/events/stream`: the events as Server-Sent Events, live, filtered by type and
//! account, resumable.
//!
//! Every SSE event's `id` is the outbox position (the CloudEvents `sequence`), so a client that
//! reconnects with `Last-Event-ID` continues right after the last event it got: positions only
//! grow in commit order and an event never appears behind one already read, so resuming after a
//! position has no gap and no duplicate. Each stream tails the outbox itself (one indexed read
//! per poll interval while it is idle); the number of open streams is bounded.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use coffer_events::EVENT_TYPES;
use coffer_store::{OutboxEvent, Store};
use futures::stream::{self, Stream, StreamExt};
use http::HeaderMap;
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::auth::{Caller, ReadScope};
use crate::error::{ApiError, ErrorCode};
use crate::extract::ApiQuery;
use crate::openapi::ReadProblems;
use crate::state::AppState;

/// How often an idle stream looks for new events.
const POLL: Duration = Duration::from_millis(50);
/// Events read from the outbox per query.
const PAGE: usize = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Comma-separated event types, e.g. `coffer.transfer.created,coffer.transfer.posted`;
    /// default all.
    pub types: Option<String>,
    /// Only events about this account: its creation and the transfers on either side of it.
    #[param(value_type = Option<String>, format = Uuid)]
    pub account: Option<Uuid>,
    /// Start after this position when there is no `Last-Event-ID` header; 0 replays the
    /// whole outbox (within its retention), and without either the stream starts at its end.
    pub after: Option<i64>,
}

/// What a stream lets through.
struct Filter {
    types: Vec<String>,
    account: Option<Uuid>,
}

impl Filter {
    fn passes(&self, event: &OutboxEvent) -> bool {
        (self.types.is_empty() || self.types.contains(&event.kind))
            && self.account.is_none_or(|account| is_about(event, account))
    }
}

/// Whether an event concerns `account`: the account itself, or a transfer on either side.
fn is_about(event: &OutboxEvent, account: Uuid) -> bool {
    if event.subject == account {
        return true;
    }
    #[derive(Deserialize)]
    struct Sides {
        debit_account_id: Option<Uuid>,
        credit_account_id: Option<Uuid>,
    }
    serde_json::from_str::<Sides>(&event.data)
        .is_ok_and(|s| s.debit_account_id == Some(account) || s.credit_account_id == Some(account))
}

fn parse_types(raw: Option<&str>) -> Result<Vec<String>, ApiError> {
    let Some(raw) = raw else { return Ok(Vec::new()) };
    raw.split(',')
        .map(|t| match EVENT_TYPES.contains(&t) {
            true => Ok(t.to_owned()),
            false => Err(ApiError::invalid_field("types", format!("{t:?} is not an event type"))),
        })
        .collect()
}

/// Where to start: after `Last-Event-ID`, else after `?after=`, else at the outbox's end.
async fn start(store: &dyn Store, headers: &HeaderMap, after: Option<i64>) -> Result<i64, ApiError> {
    if let Some(value) = headers.get("last-event-id") {
        let position = value.to_str().ok().and_then(|v| v.trim().parse::<i64>().ok()).filter(|p| *p >= 0);
        return position
            .ok_or_else(|| ApiError::invalid_field("Last-Event-ID", "must be an event id of this stream"));
    }
    match after {
        Some(p) if p < 0 => Err(ApiError::invalid_field("after", "must be 0 or more")),
        Some(p) => Ok(p),
        None => Ok(store.last_event_position().await?),
    }
}

/// Stream the events as Server-Sent Events.
///
/// Each SSE event has `id` = the outbox position, `event` = the CloudEvents type, and `data` =
/// the CloudEvent (JSON). Reconnect with `Last-Event-ID` to resume without a gap or a duplicate.
#[utoipa::path(
    get, path = "/v1/events/stream", tag = "events",
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"),
    ),
    responses(
        (status = 200, description = "An endless `text/event-stream`", content_type = "text/event-stream", body = String),
        ReadProblems,
    )
)]
pub async fn event_stream(
    State(state): State<AppState>,
    _: Caller<ReadScope>,
    ApiQuery(query): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let filter = Filter { types: parse_types(query.types.as_deref())?, account: query.account };
    let permit = state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(ErrorCode::Overloaded, "too many open event streams; retry later").retry_after(5)
    })?;
    let position = start(state.store.as_ref(), &headers, query.after).await?;
    let events = tail(state.store.clone(), filter, position, permit);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

/// The endless SSE events after `position` that pass `filter`. The permit is held as long as
/// the stream lives.
fn tail(
    store: Arc<dyn Store>,
    filter: Filter,
    position: i64,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let state = (store, filter, position, permit);
    stream::unfold(state, |(store, filter, mut position, permit)| async move {
        loop {
            match store.events_after(position, PAGE).await {
                Ok(events) if !events.is_empty() => {
                    position = events.last().map_or(position, |e| e.position);
                    let sse: Vec<_> =
                        events.iter().filter(|e| filter.passes(e)).filter_map(sse_event).collect();
                    if !sse.is_empty() {
                        return Some((
                            stream::iter(sse.into_iter().map(Ok)),
                            (store, filter, position, permit),
                        ));
                    }
                }
                Ok(_) => tokio::time::sleep(POLL).await,
                Err(e) => {
                    tracing::warn!(error = %e, "event stream: the outbox could not be read; retrying");
                    tokio::time::sleep(POLL * 10).await;
                }
            }
        }
    })
    .flatten()
}

fn sse_event(event: &OutboxEvent) -> Option<Event> {
    let json = coffer_events::encode(event).ok()?;
    let data = String::from_utf8(json).ok()?;
    Some(Event::default().id(event.position.to_string()).event(&event.kind).data(data))
}
