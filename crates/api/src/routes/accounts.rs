//! Accounts: where a ledger's money sits, with their running balances.

use axum::extract::State;
use axum::response::Response;
use coffer_ledger::{Account, AccountId, Command, NewAccount, Record, Transfer};
use coffer_store::{AccountFilter, TransferFilter};
use http::StatusCode;

use super::{answer, json, submit_one};
use crate::auth::{Caller, ReadScope, WriteScope};
use crate::dto::{AccountQuery, CreateAccount, List, PageQuery};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, JsonBody, Trace};
use crate::idempotency::NewIds;
use crate::openapi::{IdempotencyHeader, LookupProblems, ReadProblems, TraceHeader, WriteProblems};
use crate::state::AppState;

fn account(record: Record) -> Option<Account> {
    match record {
        Record::Account(a) => Some(a),
        _ => None,
    }
}

/// Create an account. With a client-chosen `id`, a retry with the same fields is a 200 replay and
/// one with different fields a 409.
#[utoipa::path(
    post, path = "/v1/accounts", tag = "accounts",
    params(IdempotencyHeader, TraceHeader),
    request_body = CreateAccount,
    responses(
        (status = 201, description = "Created", body = Account),
        (status = 200, description = "Already exists with the same fields (`Idempotent-Replayed: true`)", body = Account, headers(("Idempotent-Replayed" = String, description = "`true`: the record already existed with these fields"))),
        WriteProblems,
    )
)]
pub async fn create_account(
    State(state): State<AppState>,
    _: Caller<WriteScope>,
    trace: Trace,
    ids: NewIds,
    JsonBody(body, _): JsonBody<CreateAccount>,
) -> Result<Response, ApiError> {
    let id = body.id.unwrap_or_else(|| AccountId(ids.id(0)));
    let command = Command::CreateAccount(NewAccount {
        id,
        ledger: body.ledger,
        code: body.code,
        flags: body.flags,
        external_ref: body.external_ref,
        metadata: body.metadata,
    });
    answer(submit_one(&state, command, Some(id.0), trace).await?, account)
}

/// List accounts, oldest first, optionally of one ledger or with one external_ref.
#[utoipa::path(
    get, path = "/v1/accounts", tag = "accounts",
    params(AccountQuery),
    responses((status = 200, description = "A page of accounts", body = List<Account>), ReadProblems)
)]
pub async fn list_accounts(
    State(state): State<AppState>,
    _: Caller<ReadScope>,
    ApiQuery(query): ApiQuery<AccountQuery>,
) -> Result<Response, ApiError> {
    let page = query.page()?;
    let filter = AccountFilter { ledger: query.ledger, external_ref: query.external_ref };
    let accounts = state.store.accounts(filter, page).await?;
    Ok(json(StatusCode::OK, &List::from(accounts)))
}

/// Get one account with its balance.
#[utoipa::path(
    get, path = "/v1/accounts/{id}", tag = "accounts",
    params(("id" = String, Path, format = Uuid, description = "The account's id; a malformed UUID is a 400")),
    responses((status = 200, description = "The account", body = Account), LookupProblems)
)]
pub async fn get_account(
    State(state): State<AppState>,
    _: Caller<ReadScope>,
    ApiPath(id): ApiPath<AccountId>,
) -> Result<Response, ApiError> {
    let account = state.store.account(id).await?.ok_or_else(|| ApiError::not_found("no such account"))?;
    Ok(json(StatusCode::OK, &account))
}

/// The transfers on either side of an account, oldest first.
#[utoipa::path(
    get, path = "/v1/accounts/{id}/transfers", tag = "accounts",
    params(("id" = String, Path, format = Uuid, description = "The account's id; a malformed UUID is a 400"), PageQuery),
    responses((status = 200, description = "A page of the account's transfers", body = List<Transfer>), LookupProblems)
)]
pub async fn account_transfers(
    State(state): State<AppState>,
    _: Caller<ReadScope>,
    ApiPath(id): ApiPath<AccountId>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let page = query.page()?;
    // An unknown account is a 404 rather than an empty page, so a typo is not mistaken for "no activity".
    if state.store.account(id).await?.is_none() {
        return Err(ApiError::not_found("no such account"));
    }
    let filter = TransferFilter { account_id: Some(id), ledger: None };
    let transfers = state.store.transfers(filter, page).await?;
    Ok(json(StatusCode::OK, &List::from(transfers)))
}
