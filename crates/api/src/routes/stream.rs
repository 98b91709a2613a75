//! `GET /v1/events/stream`: the events as Server-Sent Events, live, filtered by type and
//! account, resumable.
//!
//! Every SSE event's `id` is the outbox position (the CloudEvents `sequence`), so a client that
//! reconnects with `Last-Event-ID` continues right after the last event it got: positions only
//! grow in commit order and an event never appears behind one already read, so resuming after a
//! position has no gap and no duplicate. The streams of a process share one reader of new
//! events (`outbox_tail`) and read the store themselves only to catch up; their number is
//! bounded.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use coffer_events::EVENT_TYPES;
use coffer_store::audit::AUDIT_EVENT_TYPE;
use coffer_store::{Outbox, OutboxEvent, Scope};
use futures::stream::{self, Stream, StreamExt};
use http::HeaderMap;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, broadcast};
use utoipa::IntoParams;
use uuid::Uuid;

use crate::auth::{Caller, Principal, ReadScope};
use crate::error::{ApiError, ErrorCode};
use crate::extract::ApiQuery;
use crate::openapi::ReadProblems;
use crate::outbox_tail::{OutboxTail, PAGE, POLL, Page};
use crate::state::AppState;

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
    /// Whether the key may see the audit trail's events (scope `audit`).
    audit: bool,
}

impl Filter {
    fn passes(&self, event: &OutboxEvent) -> bool {
        (self.types.is_empty() || self.types.contains(&event.kind))
            && (self.audit || event.kind != AUDIT_EVENT_TYPE)
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
async fn start(store: &dyn Outbox, headers: &HeaderMap, after: Option<i64>) -> Result<i64, ApiError> {
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
    Caller(principal, _): Caller<ReadScope>,
    ApiQuery(query): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let audit = principal.key.allows(Scope::Audit);
    let filter = Filter { types: parse_types(query.types.as_deref())?, account: query.account, audit };
    if !audit && filter.types.iter().any(|t| t == AUDIT_EVENT_TYPE) {
        return Err(ApiError::new(ErrorCode::Forbidden, "this API key lacks the audit scope"));
    }
    if state.shutdown.has_begun() {
        return Err(ApiError::new(ErrorCode::Unavailable, "this server is shutting down").retry_after(1));
    }
    let permit = state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(ErrorCode::Overloaded, "too many open event streams; retry later").retry_after(5)
    })?;
    let position = start(state.store.as_ref(), &headers, query.after).await?;
    let shutdown = state.shutdown.clone();
    let events = tail(&state, filter, position, permit)
        .take_until(key_ends(state.clone(), principal))
        .take_until(async move { shutdown.begun().await })
        .chain(farewell(state.shutdown.clone()));
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

/// How long a client is asked to wait before it reconnects after a [`SHUTDOWN_EVENT`].
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// The last event of a stream whose server is shutting down: its client reconnects (to another
/// replica) with `Last-Event-ID` and misses nothing. It has no `id`, so the client's last event
/// id stays that of the last real event.
const SHUTDOWN_EVENT: &str = "shutdown";

/// The [`SHUTDOWN_EVENT`] when the stream ended because the server is shutting down; nothing
/// when it ended for another reason (its key was revoked).
fn farewell(shutdown: crate::Shutdown) -> impl Stream<Item = Result<Event, Infallible>> {
    // Asked when the stream has ended, not when it starts.
    stream::once(async move { shutdown.has_begun() })
        .filter_map(|begun| async move { begun.then(shutdown_event) })
}

fn shutdown_event() -> Result<Event, Infallible> {
    let data = serde_json::json!({
        "reason": "server_shutting_down",
        "detail": "this server is shutting down; reconnect with Last-Event-ID to resume",
        "retry_after_ms": RECONNECT_AFTER.as_millis() as u64,
    });
    Ok(Event::default().event(SHUTDOWN_EVENT).retry(RECONNECT_AFTER).data(data.to_string()))
}

/// Completes when the stream's key stops working (revoked or expired), checked once per key cache
/// TTL, so a revoked key's open stream closes within `key_cache_ttl_ms` like its requests fail.
async fn key_ends(state: AppState, principal: Arc<Principal>) {
    let ttl = Duration::from_millis(state.config.key_cache_ttl_ms.max(1));
    loop {
        tokio::time::sleep(ttl).await;
        if !state.auth.still_valid(&principal).await {
            tracing::info!(key_id = %principal.key.id.0, "event stream closed: its key was revoked or expired");
            return;
        }
    }
}

/// The endless SSE events after `position` that pass `filter`. The permit is held as long as
/// the stream lives.
fn tail(
    state: &AppState,
    filter: Filter,
    position: i64,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> + use<> {
    let follower =
        Follower::new(&state.outbox_tail, state.store.clone(), filter, position, sse_event, permit);
    stream::unfold(follower, |mut follower| async move {
        loop {
            let sse = follower.next().await;
            if !sse.is_empty() {
                return Some((stream::iter(sse.into_iter().map(Ok)), follower));
            }
        }
    })
    .flatten()
}

/// One stream's place in the outbox: it reads the store until it has caught up, then follows
/// the shared pages (`outbox_tail`), and reads the store again whenever a page does not
/// continue where it is. `render` makes what the stream sends of an event.
struct Follower<T> {
    pages: broadcast::Receiver<Arc<Page>>,
    store: Arc<dyn Outbox>,
    filter: Filter,
    render: fn(&OutboxEvent) -> Option<T>,
    /// The last position handled.
    position: i64,
    catching_up: bool,
    _permit: OwnedSemaphorePermit,
}

impl<T> Follower<T> {
    /// Subscribes to the pages first, so that none is missed while the store is read.
    fn new(
        tail: &Arc<OutboxTail>,
        store: Arc<dyn Outbox>,
        filter: Filter,
        position: i64,
        render: fn(&OutboxEvent) -> Option<T>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        let pages = tail.subscribe();
        Self { pages, store, filter, render, position, catching_up: true, _permit: permit }
    }

    /// What the stream sends of the next events after `position` (nothing when the filter
    /// passed none of them); waits until there are events.
    async fn next(&mut self) -> Vec<T> {
        loop {
            if self.catching_up {
                match self.store.events_after(self.position, PAGE).await {
                    Ok(events) => {
                        self.catching_up = events.len() == PAGE;
                        if !events.is_empty() {
                            return self.handle(&events);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "event stream: the outbox could not be read; retrying");
                        tokio::time::sleep(POLL * 10).await;
                    }
                }
                continue;
            }
            match self.pages.recv().await {
                Ok(page) if page.last() <= self.position => {}
                Ok(page) if page.after > self.position => self.catching_up = true,
                Ok(page) => {
                    let unseen = page.events.partition_point(|e| e.position <= self.position);
                    return self.handle(&page.events[unseen..]);
                }
                // Fell behind the buffered pages: the store has them.
                Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                // The tail keeps its sender as long as it lives, which is as long as this.
                Err(broadcast::error::RecvError::Closed) => {
                    tokio::time::sleep(POLL).await;
                    self.catching_up = true;
                }
            }
        }
    }

    /// Moves past `events` (non-empty, in order, all after `position`) and answers those that
    /// pass the filter.
    fn handle(&mut self, events: &[OutboxEvent]) -> Vec<T> {
        self.position = events.last().map_or(self.position, |e| e.position);
        events.iter().filter(|e| self.filter.passes(e)).filter_map(self.render).collect()
    }
}

fn sse_event(event: &OutboxEvent) -> Option<Event> {
    let json = coffer_events::encode(event).ok()?;
    let data = String::from_utf8(json).ok()?;
    Some(Event::default().id(event.position.to_string()).event(&event.kind).data(data))
}

#[cfg(test)]
mod tests {
    use coffer_ledger::{
        AccountFlags, AccountId, Command, LedgerCode, NewAccount, NewLedger, Scale, Submission,
    };
    use coffer_store::{Books, StoreConfig};
    use coffer_testkit::{Backend, TestStore};

    use super::*;

    fn everything() -> Filter {
        Filter { types: Vec::new(), account: None, audit: true }
    }

    async fn new_account(store: &dyn Books) {
        let account = NewAccount {
            id: AccountId(Uuid::now_v7()),
            ledger: LedgerCode::try_from("USD").unwrap(),
            code: 1,
            flags: AccountFlags::default(),
            external_ref: None,
            metadata: None,
        };
        store.submit(Submission::one(Command::CreateAccount(account))).await.unwrap();
    }

    /// Takes what `follower` sends until it has reached `last`.
    async fn follow_to(follower: &mut Follower<i64>, last: i64) -> Vec<i64> {
        let mut got = Vec::new();
        while got.last() != Some(&last) {
            let next = tokio::time::timeout(Duration::from_secs(10), follower.next()).await;
            got.extend(next.expect("the follower moves on"));
        }
        got
    }

    #[tokio::test]
    async fn streams_that_start_behind_or_fall_behind_the_pages_get_every_event_once_in_order() {
        let Some(test) = TestStore::open(Backend::Sqlite, StoreConfig::default()).await else { return };
        let store = test.store.clone();
        let usd =
            NewLedger { code: LedgerCode::try_from("USD").unwrap(), scale: Scale::try_from(2).unwrap() };
        store.submit(Submission::one(Command::CreateLedger(usd))).await.unwrap();
        for _ in 0..5 {
            new_account(store.as_ref()).await;
        }
        // Two pages kept: a follower that does not read while more are published lags.
        let tail = OutboxTail::with_buffer(store.clone(), 2);
        let permits = Arc::new(tokio::sync::Semaphore::new(2));
        let permit = || permits.clone().try_acquire_owned().unwrap();
        let render: fn(&OutboxEvent) -> Option<i64> = |event| Some(event.position);
        let mut from_start = Follower::new(&tail, store.clone(), everything(), 0, render, permit());
        let mut slow = Follower::new(&tail, store.clone(), everything(), 0, render, permit());
        let caught_up = store.last_event_position().await.unwrap();
        follow_to(&mut slow, caught_up).await;

        // One event per page: each write waits out the tail's poll.
        for _ in 0..8 {
            new_account(store.as_ref()).await;
            tokio::time::sleep(POLL * 3).await;
        }
        let end = store.last_event_position().await.unwrap();
        let all: Vec<i64> = store.events_after(0, 1000).await.unwrap().iter().map(|e| e.position).collect();
        assert_eq!(follow_to(&mut from_start, end).await, all, "read from the store, then the pages");
        let missed: Vec<i64> = all.iter().copied().filter(|p| *p > caught_up).collect();
        assert_eq!(follow_to(&mut slow, end).await, missed, "caught up past the pages it missed");

        // Both follow the pages again, and the tail stops once nobody listens.
        new_account(store.as_ref()).await;
        let end = store.last_event_position().await.unwrap();
        assert_eq!(follow_to(&mut from_start, end).await, vec![end]);
        assert_eq!(follow_to(&mut slow, end).await, vec![end]);
        drop((from_start, slow));
        tokio::time::sleep(POLL * 3).await;
        assert!(!tail.is_running(), "the tail stopped with its last stream");
    }
}
