//! API keys (admin only). A token is shown once, in the creating response, and stored only as
//! its SHA-256.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use coffer_store::{KeyId, NewApiKey, Scope, TokenHash};
use http::StatusCode;
use uuid::Uuid;

use super::json;
use crate::auth::{AdminScope, Caller, generate_token};
use crate::dto::{CreateKey, CreatedKey, KeyView, List, NoQuery};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, JsonBody};
use crate::idempotency::StoreInstead;
use crate::openapi::{IdempotencyHeader, LookupProblems, ReadProblems, WriteProblems};
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
    _: Caller<AdminScope>,
    JsonBody(body, _): JsonBody<CreateKey>,
) -> Result<Response, ApiError> {
    if body.scopes.is_empty() {
        return Err(ApiError::invalid_field("scopes", "at least one scope is required"));
    }
    let mut scopes: Vec<Scope> = body.scopes.into_iter().map(Scope::from).collect();
    scopes.sort();
    scopes.dedup();
    let token = generate_token();
    // A fresh id even under an Idempotency-Key: a retry whose first answer was lost also lost the
    // token, so what it needs is a new key, not the first one back.
    let key = state
        .store
        .create_key(NewApiKey {
            id: KeyId(Uuid::now_v7()),
            name: body.name.map(|n| n.0),
            scopes,
            rate_limit_per_second: body.rate_limit_per_second.map(|r| r.get()),
            token_hash: TokenHash::of(&token),
        })
        .await?;
    let view = KeyView::from(key);
    let mut created = CreatedKey {
        id: view.id,
        name: view.name,
        scopes: view.scopes,
        rate_limit_per_second: view.rate_limit_per_second,
        token: Some(token),
        created_at: view.created_at,
    };
    let mut response = json(StatusCode::CREATED, &created);
    created.token = None;
    let without_token = serde_json::to_vec(&created).map_err(|_| ApiError::internal("key serialization"))?;
    response.extensions_mut().insert(StoreInstead(Bytes::from(without_token)));
    Ok(response)
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
    _: Caller<AdminScope>,
    ApiPath(id): ApiPath<KeyId>,
) -> Result<Response, ApiError> {
    if !state.store.revoke_key(id).await? {
        return Err(ApiError::not_found("no such key"));
    }
    state.auth.evict(id);
    Ok(StatusCode::NO_CONTENT.into_response())
}
