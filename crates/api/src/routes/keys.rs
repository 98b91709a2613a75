//! API keys (admin only). A token is shown once, in the creating response, and stored only as
//! its SHA-256. Every create, rotation and revocation is recorded in the audit trail in the
//! transaction that makes it.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use coffer_ledger::Timestamp;
use coffer_store::{AdminChange, AdminEffect, ApiKey, KeyId, NewApiKey, Scope, TokenHash};
use http::StatusCode;
use uuid::Uuid;

use super::{json, shown_once};
use crate::audit::Origin;
use crate::auth::{AdminScope, Caller, generate_token};
use crate::dto::{CreateKey, CreatedKey, KeyView, List, NoQuery, RotateKey, RotatedKey};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, JsonBody, Optional};
use crate::openapi::{ActionProblems, IdempotencyHeader, LookupProblems, ReadProblems, WriteProblems};
use crate::state::AppState;

/// Create an API key (admin). The token is in this response only. Under an Idempotency-Key, the
/// stored (and so any replayed) response has `"token": null`: the token is never written down.
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys",
    params(IdempotencyHeader),
    request_body = CreateKey,
    responses((status = 201, description = "Created; `token` is shown only here", body = CreatedKey), WriteProblems)
)]
pub async fn create_key(
    State(state): State<AppState>,
    Caller(caller, _): Caller<AdminScope>,
    origin: Origin,
    JsonBody(body, _): JsonBody<CreateKey>,
) -> Result<Response, ApiError> {
    if body.scopes.is_empty() {
        return Err(ApiError::invalid_field("scopes", "at least one scope is required"));
    }
    if body.expires_at.is_some_and(|at| at <= Timestamp::now()) {
        return Err(ApiError::invalid_field("expires_at", "must be in the future"));
    }
    let mut scopes: Vec<Scope> = body.scopes.into_iter().map(Scope::from).collect();
    scopes.sort();
    scopes.dedup();
    let token = generate_token();
    // A fresh id even under an Idempotency-Key: a retry whose first answer was lost also lost the
    // token, so what it needs is a new key, not the first one back.
    let key = NewApiKey {
        id: KeyId(Uuid::now_v7()),
        name: body.name.map(|n| n.0),
        scopes,
        rate_limit_per_second: body.rate_limit_per_second.map(|r| r.get()),
        expires_at: body.expires_at,
        token_hash: TokenHash::of(&token),
        bare_token: false,
    };
    let done = state.store.administer(AdminChange::CreateKey(key), &origin.by(&caller)).await?;
    let key = done.effect.made_key().ok_or_else(|| ApiError::internal("a key create made no key"))?;
    created(StatusCode::CREATED, key, token, |created| created)
}

/// The answer that shows a new token once. The response stored for an Idempotency-Key replay
/// has `"token": null`: the token is never written down.
fn created<T: serde::Serialize>(
    status: StatusCode,
    key: ApiKey,
    token: String,
    wrap: impl Fn(CreatedKey) -> T,
) -> Result<Response, ApiError> {
    let key = KeyView::from(key);
    let shown = wrap(CreatedKey { key: key.clone(), token: Some(token) });
    Ok(shown_once(status, &shown, &wrap(CreatedKey { key, token: None })))
}

/// Longest a rotated-out token may keep working.
const MAX_OVERLAP_SECONDS: i64 = 30 * 24 * 3600;
/// How long a rotated-out token keeps working unless told otherwise.
const DEFAULT_OVERLAP_SECONDS: u32 = 24 * 3600;

/// Rotate an API key (admin): a new key with the same name, scopes, rate and expiry, and a new
/// token, shown only here; the old token keeps working until `old_key_expires_at`.
#[utoipa::path(
    post, path = "/v1/keys/{id}/rotate", tag = "keys",
    params(IdempotencyHeader, ("id" = String, Path, format = Uuid, description = "The key's id; a malformed UUID is a 400")),
    request_body(content = Option<RotateKey>, description = "Optional; `{}`, `null` or no body takes the defaults"),
    responses((status = 201, description = "The new key, its token shown only here, and the old key", body = RotatedKey), ActionProblems)
)]
pub async fn rotate_key(
    State(state): State<AppState>,
    Caller(caller, _): Caller<AdminScope>,
    origin: Origin,
    ApiPath(id): ApiPath<KeyId>,
    JsonBody(body, _): JsonBody<RotateKey, Optional>,
) -> Result<Response, ApiError> {
    let now = Timestamp::now();
    let until = body.old_key_expires_at.unwrap_or_else(|| now.plus_seconds(DEFAULT_OVERLAP_SECONDS));
    if until < now || until.as_micros() - now.as_micros() > MAX_OVERLAP_SECONDS * 1_000_000 {
        return Err(ApiError::invalid_field(
            "old_key_expires_at",
            "must be between now and 30 days from now",
        ));
    }
    let not_live = || ApiError::not_found("no such live key (revoked and expired keys cannot be rotated)");
    let old = state.store.keys().await?.into_iter().find(|key| key.id == id);
    let old = old.filter(|key| key.is_live(now)).ok_or_else(not_live)?;
    let token = generate_token();
    // The new key, the old one's expiry and the record, in one transaction; the store checks
    // again that the old key is live, under its lock.
    let new = NewApiKey {
        id: KeyId(Uuid::now_v7()),
        name: old.name.clone(),
        scopes: old.scopes.clone(),
        rate_limit_per_second: old.rate_limit_per_second,
        expires_at: old.expires_at,
        token_hash: TokenHash::of(&token),
        bare_token: false,
    };
    let change = AdminChange::RotateKey { old: id, new, old_expires_at: until };
    let AdminEffect::Rotated { new, old: previous } =
        state.store.administer(change, &origin.by(&caller)).await?.effect
    else {
        return Err(not_live());
    };
    state.auth.evict(id);
    let previous = KeyView::from(previous);
    created(StatusCode::CREATED, new, token, |key| RotatedKey { key, previous: previous.clone() })
}

/// List every API key, revoked ones included; never their tokens.
#[utoipa::path(
    get, path = "/v1/keys", tag = "keys",
    responses((status = 200, description = "All keys (one page)", body = List<KeyView>), ReadProblems)
)]
pub async fn list_keys(
    State(state): State<AppState>,
    _: Caller<AdminScope>,
    _: ApiQuery<NoQuery>,
) -> Result<Response, ApiError> {
    let keys = state.store.keys().await?;
    let data = keys.into_iter().map(KeyView::from).collect();
    Ok(json(StatusCode::OK, &List { data, next_cursor: None }))
}

/// Revoke an API key at once (admin).
#[utoipa::path(
    delete, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, format = Uuid, description = "The key's id; a malformed UUID is a 400")),
    responses((status = 204, description = "Revoked"), LookupProblems)
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    Caller(caller, _): Caller<AdminScope>,
    origin: Origin,
    ApiPath(id): ApiPath<KeyId>,
) -> Result<Response, ApiError> {
    if !state.store.administer(AdminChange::RevokeKey(id), &origin.by(&caller)).await?.effect.applied() {
        return Err(ApiError::not_found("no such key"));
    }
    state.auth.evict(id);
    Ok(StatusCode::NO_CONTENT.into_response())
}
