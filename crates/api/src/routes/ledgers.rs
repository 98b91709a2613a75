//! Ledgers: units of account. Created by admins only, since every account and transfer hangs off one.

use axum::extract::State;
use axum::response::Response;
use coffer_ledger::{Command, Ledger, LedgerCode, NewLedger, Record};
use http::StatusCode;

use super::{answer, json, submit_one};
use crate::auth::{AdminScope, Caller, ReadScope};
use crate::dto::{CreateLedger, List, PageQuery};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, JsonBody, Trace};
use crate::openapi::{IdempotencyHeader, LookupProblems, ReadProblems, WriteProblems};
use crate::state::AppState;

fn ledger(record: Record) -> Option<Ledger> {
    match record {
        Record::Ledger(l) => Some(l),
        _ => None,
    }
}

/// Create a ledger (admin). Creating an existing code with the same scale is a 200 replay.
#[utoipa::path(
    post, path = "/v1/ledgers", tag = "ledgers",
    params(IdempotencyHeader),
    request_body = CreateLedger,
    responses(
        (status = 201, description = "Created", body = Ledger),
        (status = 200, description = "Already exists with the same scale (`Idempotent-Replayed: true`)", body = Ledger, headers(("Idempotent-Replayed" = String, description = "`true`: the record already existed with these fields"))),
        WriteProblems,
    )
)]
pub async fn create_ledger(
    State(state): State<AppState>,
    _: Caller<AdminScope>,
    JsonBody(body, _): JsonBody<CreateLedger>,
) -> Result<Response, ApiError> {
    let command = Command::CreateLedger(NewLedger { code: body.code, scale: body.scale });
    // Ledgers are named by their code, not a UUID: an unknown outcome is settled by sending it again.
    // Creating one emits no event, so there is no trace to carry.
    answer(submit_one(&state, command, None, Trace(None)).await?, ledger)
}

/// List ledgers, oldest first.
#[utoipa::path(
    get, path = "/v1/ledgers", tag = "ledgers",
    params(PageQuery),
    responses((status = 200, description = "A page of ledgers", body = List<Ledger>), ReadProblems)
)]
pub async fn list_ledgers(
    State(state): State<AppState>,
    _: Caller<ReadScope>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let page = query.page()?;
    let ledgers = state.store.ledgers(page).await?;
    Ok(json(StatusCode::OK, &List::from(ledgers)))
}

/// Get one ledger by its code.
#[utoipa::path(
    get, path = "/v1/ledgers/{code}", tag = "ledgers",
    params(("code" = String, Path, description = "The ledger's code, `^[A-Z0-9_]{1,16}$`; another shape is a 400")),
    responses((status = 200, description = "The ledger", body = Ledger), LookupProblems)
)]
pub async fn get_ledger(
    State(state): State<AppState>,
    _: Caller<ReadScope>,
    ApiPath(code): ApiPath<LedgerCode>,
) -> Result<Response, ApiError> {
    let ledger = state.store.ledger(code).await?.ok_or_else(|| ApiError::not_found("no such ledger"))?;
    Ok(json(StatusCode::OK, &ledger))
}
