//! Webhook endpoints (admin): where the notification service posts events, signed per the
//! Standard Webhooks spec. The signing secret is shown once, in the answer to the create (and
//! a new one in the answer to a rotation); it is stored sealed (`coffer_events::SecretKeys`).
//!
//! URLs are checked when registered — https (http only where the deployment allows it), no
//! credentials, and no literal special-purpose address unless the deployment allows private
//! networks — and again at every delivery, against the addresses the name resolves to then.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;

use coffer_events::{
    DEFAULT_OVERLAP, EVENT_TYPES, MAX_OVERLAP, RotateError, UrlError, new_secret, rotate_secret, validate_url,
};
use coffer_ledger::{RejectCode, Timestamp};
use coffer_store::{AdminChange, AdminEffect, Delivery, Webhook};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{json, shown_once};
use crate::audit::Origin;
use crate::auth::{AdminScope, Caller};
use crate::dto::{NoQuery, page_limit};
use crate::error::{ApiError, ErrorCode};
use crate::extract::{ApiPath, ApiPath2, ApiQuery, JsonBody, Optional, PathParam};
use crate::idempotency::NewIds;
use crate::openapi::{
    ActionProblems, IdempotencyHeader, LookupProblems, ReadProblems, WriteProblems, webhook_url_pattern,
};
use crate::state::AppState;

/// The longest URL an endpoint may have.
const MAX_URL_BYTES: usize = 2048;

/// The shape every URL must have (`openapi::webhook_url_pattern`, which the document states).
static URL_SHAPE: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(&webhook_url_pattern()).ok());

/// Whether `url` has the documented shape; the pattern is tested to compile, so `None` never is.
fn well_shaped(url: &str) -> bool {
    URL_SHAPE.as_ref().is_some_and(|shape| shape.is_match(url))
}

/// A webhook endpoint's or a delivery's id.
pub struct WebhookId(Uuid);

impl PathParam for WebhookId {
    const NAME: &'static str = "id";
    fn parse(raw: &str) -> Result<Self, &'static str> {
        crate::extract::parse_uuid(raw).map(WebhookId)
    }
}

/// A delivery's id.
pub struct DeliveryId(Uuid);

impl PathParam for DeliveryId {
    const NAME: &'static str = "delivery_id";
    fn parse(raw: &str) -> Result<Self, &'static str> {
        crate::extract::parse_uuid(raw).map(DeliveryId)
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where deliveries are posted, at most 2048 bytes: `https` (`http` only where the deployment
    /// allows insecure http, else 422 `webhook_target_refused`), no credentials in it, a host
    /// that is a DNS name (its last label starting with a letter), a dotted-quad IPv4 address or
    /// a bracketed IPv6 address and is globally routable (a literal special-purpose address is
    /// refused with 422 `webhook_target_refused`; a name is checked at every delivery against
    /// what it resolves to), an optional port, and a path, query and fragment of characters that
    /// need no percent-encoding. A name with an invalid punycode (`xn--`) label is a 400.
    pub url: String,
    /// The event types delivered (at least one; repeats count once), e.g. `["coffer.transfer.created"]`.
    pub event_types: Vec<String>,
}

/// An endpoint as listed (without its secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookView {
    pub id: Uuid,
    pub url: String,
    pub event_types: Vec<String>,
    pub created_at: Timestamp,
    /// While a secret rotation's overlap runs: when the old secret stops signing beside the
    /// new one. Null otherwise.
    pub previous_secret_expires_at: Option<Timestamp>,
}

/// A new endpoint, with the secret that signs its deliveries: shown only this once.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// `whsec_…`: verify `webhook-signature` with it (Standard Webhooks). Null in the replay of
    /// an Idempotency-Key: the secret is never written down (rotate it to get a new one).
    pub secret: Option<String>,
}

/// A secret rotation's options.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// How long the old secret keeps signing beside the new one, 0..=604800 (7 days); default
    /// 86400 (24 h). 0 drops the old secret at once (it leaked).
    #[schema(minimum = 0, maximum = 604800)]
    pub overlap_seconds: Option<u64>,
}

/// A rotated endpoint: its new secret, shown only this once, and when the old one stops signing.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RotatedWebhook {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// The new `whsec_…` secret. Until `previous_secret_expires_at` (null with an overlap of 0)
    /// every delivery carries a signature with each secret (`v1,<new> v1,<old>`), so switching
    /// receivers has no gap. Null in the replay of an Idempotency-Key: the secret is never
    /// written down.
    pub secret: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub data: Vec<WebhookView>,
}

/// One event's delivery to one endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// Also the `webhook-id` header, the same on every attempt.
    pub id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    /// `pending`, `succeeded` or `dead` (out of attempts: redeliver it by hand).
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: Option<Timestamp>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub data: Vec<DeliveryView>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<Uuid>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// 1..=1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
}

fn view(webhook: Webhook) -> WebhookView {
    let now = Timestamp::now();
    WebhookView {
        id: webhook.id,
        url: webhook.url,
        event_types: webhook.event_types,
        created_at: webhook.created_at,
        previous_secret_expires_at: webhook.previous_secret_expires_at.filter(|until| *until > now),
    }
}

fn delivery_view(d: Delivery) -> DeliveryView {
    DeliveryView {
        id: d.id,
        event_id: d.event_id,
        event_type: d.event_type,
        status: d.status.as_str().to_owned(),
        attempts: d.attempts,
        next_attempt_at: d.next_attempt_at,
        last_status_code: d.last_status_code,
        last_error: d.last_error,
        created_at: d.created_at,
        updated_at: d.updated_at,
    }
}

/// The event types, each known, without repeats, in the order given.
fn event_types(types: Vec<String>) -> Result<Vec<String>, ApiError> {
    if types.is_empty() {
        return Err(ApiError::invalid_field("event_types", "must name at least one event type"));
    }
    let mut unique = Vec::with_capacity(types.len());
    for (i, kind) in types.into_iter().enumerate() {
        if !EVENT_TYPES.contains(&kind.as_str()) {
            return Err(ApiError::invalid_field(
                format!("event_types[{i}]"),
                format!("{kind:?} is not an event type"),
            ));
        }
        if !unique.contains(&kind) {
            unique.push(kind);
        }
    }
    Ok(unique)
}

/// Register a webhook endpoint (admin). The answer holds its signing secret, shown only here.
#[utoipa::path(
    post, path = "/v1/webhooks", tag = "webhooks",
    params(IdempotencyHeader),
    request_body = CreateWebhook,
    responses((status = 201, description = "Created, with its secret", body = CreatedWebhook), WriteProblems)
)]
pub async fn create_webhook(
    State(state): State<AppState>,
    Caller(caller, _): Caller<AdminScope>,
    origin: Origin,
    ids: NewIds,
    JsonBody(body, _): JsonBody<CreateWebhook>,
) -> Result<Response, ApiError> {
    if body.url.len() > MAX_URL_BYTES {
        return Err(ApiError::invalid_field("url", "must be at most 2048 bytes"));
    }
    if !well_shaped(&body.url) {
        return Err(ApiError::invalid_field(
            "url",
            "must be an http(s) URL without credentials, whose host is a DNS name, an IPv4 address or \
             a bracketed IPv6 address, and whose path, query and fragment need no percent-encoding",
        ));
    }
    let url = validate_url(&body.url, state.webhook_targets).map_err(|e| match e {
        // Well formed, but a destination this deployment never sends to: a policy refusal.
        UrlError::NotPublic { .. } | UrlError::InsecureHttp => {
            ApiError::webhook_target_refused("url", e.to_string())
        }
        other => ApiError::invalid_field("url", other.to_string()),
    })?;
    // The shape leaves nothing to percent-encode, so the URL kept is the one sent, normalized
    // (at most a `/` longer, after a bare host).
    // With an Idempotency-Key the id is derived from it, so a retry whose first run registered
    // the endpoint but lost its answer (a crash, a timeout) gets that endpoint, secret and all,
    // instead of registering a second one that would deliver every event twice.
    let id = ids.id(0);
    let webhook = Webhook {
        id,
        url: url.to_string(),
        event_types: event_types(body.event_types)?,
        secret: state.webhook_keys.seal(id, &new_secret()),
        previous_secret: None,
        previous_secret_expires_at: None,
        created_at: Timestamp::now(),
    };
    let done =
        state.store.administer(AdminChange::CreateWebhook(webhook.clone()), &origin.by(&caller)).await?;
    let AdminEffect::Webhook { webhook: stored, .. } = done.effect else {
        return Err(ApiError::internal("a webhook create made no webhook"));
    };
    if (&stored.url, &stored.event_types) != (&webhook.url, &webhook.event_types) {
        return Err(ApiError::rejected(RejectCode::ExistsWithDifferentFields));
    }
    // The stored one: on a keyed retry that found the endpoint, the secret made then.
    let secret = state.webhook_keys.open(stored.id, &stored.secret).map_err(|e| {
        tracing::error!(webhook = %stored.id, error = %e, "a webhook's secret cannot be opened");
        ApiError::internal("a webhook's secret cannot be opened with the configured keys")
    })?;
    let shown = CreatedWebhook { webhook: view(stored), secret: Some(secret.as_str().to_owned()) };
    let kept = CreatedWebhook { secret: None, ..shown.clone() };
    Ok(shown_once(StatusCode::CREATED, &shown, &kept))
}

/// Rotate an endpoint's signing secret (admin). The answer holds the new secret, shown only
/// here; the old one keeps signing beside it for the overlap.
#[utoipa::path(
    post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's id"), IdempotencyHeader),
    request_body(content = Option<RotateSecret>, description = "Optional; `{}`, `null` or no body takes the defaults"),
    responses((status = 200, description = "Rotated, with the new secret", body = RotatedWebhook), ActionProblems)
)]
pub async fn rotate_webhook_secret(
    State(state): State<AppState>,
    Caller(caller, _): Caller<AdminScope>,
    origin: Origin,
    ApiPath(WebhookId(id)): ApiPath<WebhookId>,
    JsonBody(options, _): JsonBody<RotateSecret, Optional>,
) -> Result<Response, ApiError> {
    let overlap = options.overlap_seconds.map_or(DEFAULT_OVERLAP, Duration::from_secs);
    if overlap > MAX_OVERLAP {
        return Err(ApiError::invalid_field("overlap_seconds", "must be at most 604800 (7 days)"));
    }
    let by = origin.by(&caller);
    let rotated =
        rotate_secret(state.store.as_ref(), &state.webhook_keys, id, overlap, Timestamp::now(), &by)
            .await
            .map_err(|e| match e {
                RotateError::NotFound => ApiError::not_found("no such webhook"),
                RotateError::Raced => ApiError::new(ErrorCode::WebhookSecretChanged, e.to_string()),
                RotateError::OverlapTooLong(_) => ApiError::invalid_field("overlap_seconds", e.to_string()),
                RotateError::Sealing(reason) => {
                    tracing::error!(webhook = %id, error = %reason, "a webhook's secret cannot be opened");
                    ApiError::internal("a webhook's secret cannot be opened with the configured keys")
                }
                RotateError::Store(e) => e.into(),
            })?;
    let shown =
        RotatedWebhook { webhook: view(rotated.webhook), secret: Some(rotated.secret.as_str().to_owned()) };
    let kept = RotatedWebhook { secret: None, ..shown.clone() };
    Ok(shown_once(StatusCode::OK, &shown, &kept))
}

/// List the webhook endpoints, oldest first (admin).
#[utoipa::path(
    get, path = "/v1/webhooks", tag = "webhooks",
    responses((status = 200, description = "Every endpoint", body = WebhookList), ReadProblems)
)]
pub async fn list_webhooks(
    State(state): State<AppState>,
    _: Caller<AdminScope>,
    _: ApiQuery<NoQuery>,
) -> Result<Response, ApiError> {
    let data = state.store.webhooks().await?.into_iter().map(view).collect();
    Ok(json(StatusCode::OK, &WebhookList { data }))
}

/// Get one webhook endpoint (admin).
#[utoipa::path(
    get, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    responses((status = 200, description = "The endpoint", body = WebhookView), LookupProblems)
)]
pub async fn get_webhook(
    State(state): State<AppState>,
    _: Caller<AdminScope>,
    ApiPath(WebhookId(id)): ApiPath<WebhookId>,
) -> Result<Response, ApiError> {
    let webhook = state.store.webhook(id).await?.ok_or_else(|| ApiError::not_found("no such webhook"))?;
    Ok(json(StatusCode::OK, &view(webhook)))
}

/// Delete a webhook endpoint and its deliveries (admin).
#[utoipa::path(
    delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    responses((status = 204, description = "Deleted"), LookupProblems)
)]
pub async fn delete_webhook(
    State(state): State<AppState>,
    Caller(caller, _): Caller<AdminScope>,
    origin: Origin,
    ApiPath(WebhookId(id)): ApiPath<WebhookId>,
) -> Result<Response, ApiError> {
    if !state.store.administer(AdminChange::DeleteWebhook(id), &origin.by(&caller)).await?.effect.applied() {
        return Err(ApiError::not_found("no such webhook"));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// An endpoint's deliveries, newest first (admin).
#[utoipa::path(
    get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint's id"), DeliveryQuery),
    responses((status = 200, description = "A page of deliveries", body = DeliveryList), LookupProblems)
)]
pub async fn list_deliveries(
    State(state): State<AppState>,
    _: Caller<AdminScope>,
    ApiPath(WebhookId(id)): ApiPath<WebhookId>,
    ApiQuery(query): ApiQuery<DeliveryQuery>,
) -> Result<Response, ApiError> {
    let limit = page_limit(query.limit)?;
    state.store.webhook(id).await?.ok_or_else(|| ApiError::not_found("no such webhook"))?;
    let deliveries = state.store.deliveries(id, query.cursor, limit).await?;
    let next_cursor = (deliveries.len() == limit).then(|| deliveries.last().map(|d| d.id)).flatten();
    let data = deliveries.into_iter().map(delivery_view).collect();
    Ok(json(StatusCode::OK, &DeliveryList { data, next_cursor }))
}

/// Deliver again now, from attempt 1 — typically a dead delivery after the receiver was fixed (admin).
#[utoipa::path(
    post, path = "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", tag = "webhooks",
    params(
        ("id" = Uuid, Path, description = "The endpoint's id"),
        ("delivery_id" = Uuid, Path, description = "The delivery's id"),
    ),
    responses((status = 202, description = "Queued for delivery now"), ActionProblems)
)]
pub async fn redeliver(
    State(state): State<AppState>,
    Caller(caller, _): Caller<AdminScope>,
    origin: Origin,
    ApiPath2(WebhookId(webhook), DeliveryId(delivery)): ApiPath2<WebhookId, DeliveryId>,
) -> Result<Response, ApiError> {
    let missing = || ApiError::not_found("no such delivery of this webhook");
    state.store.delivery(delivery).await?.filter(|d| d.webhook_id == webhook).ok_or_else(missing)?;
    let change = AdminChange::Redeliver { webhook, delivery, now: Timestamp::now() };
    if !state.store.administer(change, &origin.by(&caller)).await?.effect.applied() {
        return Err(missing());
    }
    Ok(StatusCode::ACCEPTED.into_response())
}
