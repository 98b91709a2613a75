//! Transfers: moving money at once, or holding it (pending) and later posting or voiding the hold.
//!
//! `create_transfer` is the hot path of the whole service: it parses, submits one command to the
//! sequencer and serializes the answer, nothing more.

use axum::extract::State;
use axum::response::Response;
use coffer_ledger::{Command, NewTransfer, Record, Resolution, Transfer, TransferId};
use coffer_store::TransferFilter;
use http::StatusCode;

use super::{answer, json, submit_one};
use crate::auth::{Caller, ReadScope, WriteScope};
use crate::dto::{CreateTransfer, List, PostPending, TimeoutSeconds, TransferQuery, VoidPending};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, JsonBody, Optional, Trace};
use crate::idempotency::NewIds;
use crate::openapi::{IdempotencyHeader, LookupProblems, ReadProblems, TraceHeader, WriteProblems};
use crate::state::AppState;

pub(super) fn transfer(record: Record) -> Option<Transfer> {
    match record {
        Record::Transfer(t) => Some(t),
        _ => None,
    }
}

/// The ledger's `pending` form: `None` posts at once, `Some(timeout)` holds. A timeout without a
/// hold is refused rather than ignored.
pub(super) fn hold(
    pending: bool,
    timeout: Option<TimeoutSeconds>,
    field: impl FnOnce() -> String,
) -> Result<Option<Option<u32>>, ApiError> {
    match (pending, timeout) {
        (true, timeout) => Ok(Some(timeout.map(|t| t.0.get()))),
        (false, None) => Ok(None),
        (false, Some(_)) => Err(ApiError::invalid_field(field(), "is only allowed with \"pending\": true")),
    }
}

/// Create a transfer, or a hold with `"pending": true`.
#[utoipa::path(
    post, path = "/v1/transfers", tag = "transfers",
    params(IdempotencyHeader, TraceHeader),
    request_body = CreateTransfer,
    responses(
        (status = 201, description = "Created", body = Transfer),
        (status = 200, description = "Already exists with the same fields (`Idempotent-Replayed: true`)", body = Transfer, headers(("Idempotent-Replayed" = String, description = "`true`: the record already existed with these fields"))),
        WriteProblems,
    )
)]
pub async fn create_transfer(
    State(state): State<AppState>,
    _: Caller<WriteScope>,
    trace: Trace,
    ids: NewIds,
    JsonBody(body, _): JsonBody<CreateTransfer>,
) -> Result<Response, ApiError> {
    let id = body.id.unwrap_or_else(|| TransferId(ids.id(0)));
    let pending = hold(body.pending, body.timeout_seconds, || "timeout_seconds".into())?;
    let command = Command::CreateTransfer(NewTransfer {
        id,
        debit_account_id: body.debit_account_id,
        credit_account_id: body.credit_account_id,
        amount: body.amount,
        ledger: body.ledger,
        code: body.code,
        pending,
        external_ref: body.external_ref,
        metadata: body.metadata,
    });
    answer(submit_one(&state, command, Some(id.0), trace).await?, transfer)
}

/// List transfers, oldest first, optionally of one account or ledger.
#[utoipa::path(
    get, path = "/v1/transfers", tag = "transfers",
    params(TransferQuery),
    responses((status = 200, description = "A page of transfers", body = List<Transfer>), ReadProblems)
)]
pub async fn list_transfers(
    State(state): State<AppState>,
    _: Caller<ReadScope>,
    ApiQuery(query): ApiQuery<TransferQuery>,
) -> Result<Response, ApiError> {
    let page = query.page()?;
    let filter = TransferFilter { account_id: query.account_id, ledger: query.ledger };
    let transfers = state.store.transfers(filter, page).await?;
    Ok(json(StatusCode::OK, &List::from(transfers)))
}

/// Get one transfer; a pending one shows its current status.
#[utoipa::path(
    get, path = "/v1/transfers/{id}", tag = "transfers",
    params(("id" = String, Path, format = Uuid, description = "The transfer's id; a malformed UUID is a 400")),
    responses((status = 200, description = "The transfer", body = Transfer), LookupProblems)
)]
pub async fn get_transfer(
    State(state): State<AppState>,
    _: Caller<ReadScope>,
    ApiPath(id): ApiPath<TransferId>,
) -> Result<Response, ApiError> {
    let transfer = state.store.transfer(id).await?.ok_or_else(|| ApiError::not_found("no such transfer"))?;
    Ok(json(StatusCode::OK, &transfer))
}

/// Post all (or `amount` of) a pending transfer; the rest is released. The post is a transfer of
/// its own whose `pending_id` names the hold. The body may be left out.
#[utoipa::path(
    post, path = "/v1/transfers/{id}/post", tag = "transfers",
    params(("id" = String, Path, format = Uuid, description = "The pending transfer's id"), IdempotencyHeader, TraceHeader),
    request_body(content = Option<PostPending>, description = "Optional; omitted (or `null`), the whole amount is posted"),
    responses(
        (status = 201, description = "Posted; the posting transfer", body = Transfer),
        (status = 200, description = "This post already happened (`Idempotent-Replayed: true`)", body = Transfer, headers(("Idempotent-Replayed" = String, description = "`true`: the record already existed with these fields"))),
        WriteProblems,
    )
)]
pub async fn post_transfer(
    State(state): State<AppState>,
    _: Caller<WriteScope>,
    trace: Trace,
    ids: NewIds,
    ApiPath(pending_id): ApiPath<TransferId>,
    JsonBody(body, _): JsonBody<PostPending, Optional>,
) -> Result<Response, ApiError> {
    let id = body.id.unwrap_or_else(|| TransferId(ids.id(0)));
    let command = Command::PostPending(Resolution {
        id,
        pending_id,
        amount: body.amount,
        code: None,
        external_ref: None,
        metadata: None,
    });
    answer(submit_one(&state, command, Some(id.0), trace).await?, transfer)
}

/// Void a pending transfer, releasing its whole amount. The body may be left out.
#[utoipa::path(
    post, path = "/v1/transfers/{id}/void", tag = "transfers",
    params(("id" = String, Path, format = Uuid, description = "The pending transfer's id"), IdempotencyHeader, TraceHeader),
    request_body(content = Option<VoidPending>, description = "Optional; `{}`, `null` or no body"),
    responses(
        (status = 201, description = "Voided; the voiding transfer", body = Transfer),
        (status = 200, description = "This void already happened (`Idempotent-Replayed: true`)", body = Transfer, headers(("Idempotent-Replayed" = String, description = "`true`: the record already existed with these fields"))),
        WriteProblems,
    )
)]
pub async fn void_transfer(
    State(state): State<AppState>,
    _: Caller<WriteScope>,
    trace: Trace,
    ids: NewIds,
    ApiPath(pending_id): ApiPath<TransferId>,
    JsonBody(body, _): JsonBody<VoidPending, Optional>,
) -> Result<Response, ApiError> {
    let id = body.id.unwrap_or_else(|| TransferId(ids.id(0)));
    let command = Command::VoidPending(Resolution {
        id,
        pending_id,
        amount: None,
        code: None,
        external_ref: None,
        metadata: None,
    });
    answer(submit_one(&state, command, Some(id.0), trace).await?, transfer)
}
