//! Batches: many transfers (and posts and voids) in one request and one submission. With
//! `atomic`, all apply or none does — how a multi-party transaction is written.
//!
//! A structurally invalid item fails the whole request with a 400 that names every bad field;
//! business rules are judged per item and reported in the 200's `results`.

use axum::extract::State;
use axum::response::Response;
use coffer_ledger::{Command, NewTransfer, Outcome, Resolution, Submission, TransferId};
use http::StatusCode;

use super::json;
use super::transfers::{hold, transfer};
use crate::auth::{Caller, WriteScope};
use crate::dto::{BatchItem, BatchResponse, BatchResult, BatchStatus, CreateBatch, ItemError};
use crate::error::{ApiError, FieldError};
use crate::extract::{JsonBody, Large, Trace};
use crate::idempotency::NewIds;
use crate::openapi::{IdempotencyHeader, TraceHeader, WriteProblems};
use crate::state::AppState;

/// Most items in one batch: what one group commit takes, less a few for the other waiters.
pub const MAX_ITEMS: usize = 8189;
/// Most field errors reported for one batch; a few name the mistake, thousands bury it.
const MAX_ERRORS: usize = 100;

/// Create many transfers, posts and voids in order. Each item reports `created`, `exists` (same
/// id, same fields) or `failed` with its code; with `"atomic": true`, items that did not fail on
/// their own report `linked_item_failed` when any other did.
#[utoipa::path(
    post, path = "/v1/transfers/batch", tag = "transfers",
    params(IdempotencyHeader, TraceHeader),
    request_body = CreateBatch,
    responses((status = 200, description = "One result per item, in order", body = BatchResponse), WriteProblems)
)]
pub async fn create_batch(
    State(state): State<AppState>,
    _: Caller<WriteScope>,
    trace: Trace,
    ids: NewIds,
    JsonBody(body, _): JsonBody<CreateBatch, Large>,
) -> Result<Response, ApiError> {
    if !(1..=MAX_ITEMS).contains(&body.transfers.len()) {
        return Err(ApiError::invalid_field("transfers", format!("must hold 1 to {MAX_ITEMS} items")));
    }
    let mut errors = Vec::new();
    let commands: Vec<Command> = body
        .transfers
        .into_iter()
        .enumerate()
        .filter_map(|(index, item)| command(item, index, &ids, &mut errors))
        .collect();
    if !errors.is_empty() {
        errors.truncate(MAX_ERRORS);
        return Err(ApiError::invalid(errors));
    }
    let outcomes = state.store.submit(Submission::new(commands, body.atomic).traced(trace.0)).await?;
    let results = outcomes.into_iter().enumerate().map(|(index, outcome)| result(index, outcome)).collect();
    Ok(json(StatusCode::OK, &BatchResponse { results }))
}

fn result(index: usize, outcome: Outcome) -> BatchResult {
    let (status, record, error) = match outcome {
        Outcome::Created(record) => (BatchStatus::Created, transfer(record), None),
        Outcome::Exists(record) => (BatchStatus::Exists, transfer(record), None),
        Outcome::Rejected(code) => {
            (BatchStatus::Failed, None, Some(ItemError { code: code.as_str(), detail: code.detail() }))
        }
    };
    BatchResult { index, status, transfer: record, error }
}

/// One item's command, or its field errors added to `errors`.
fn command(item: BatchItem, index: usize, ids: &NewIds, errors: &mut Vec<FieldError>) -> Option<Command> {
    let mut fail = |name: &str, message: &str| {
        errors.push(FieldError { field: format!("transfers[{index}].{name}"), message: message.into() })
    };
    let id = item.id.unwrap_or_else(|| TransferId(ids.id(index)));

    let resolve = match (item.post_pending_id, item.void_pending_id) {
        (Some(_), Some(_)) => {
            fail("void_pending_id", "an item takes at most one of post_pending_id and void_pending_id");
            return None;
        }
        (Some(pending_id), None) => Some((pending_id, true)),
        (None, Some(pending_id)) => Some((pending_id, false)),
        (None, None) => None,
    };

    if let Some((pending_id, post)) = resolve {
        let message = if post {
            "is not allowed with post_pending_id: the pending transfer decides it"
        } else {
            "is not allowed with void_pending_id: the pending transfer decides it"
        };
        let present = [
            ("debit_account_id", item.debit_account_id.is_some()),
            ("credit_account_id", item.credit_account_id.is_some()),
            ("ledger", item.ledger.is_some()),
            ("pending", item.pending.is_some()),
            ("timeout_seconds", item.timeout_seconds.is_some()),
            ("amount", !post && item.amount.is_some()),
        ];
        let mut refused = false;
        for (name, _) in present.iter().filter(|(_, present)| *present) {
            fail(name, message);
            refused = true;
        }
        if refused {
            return None;
        }
        let resolution = Resolution {
            id,
            pending_id,
            amount: item.amount,
            code: item.code,
            external_ref: item.external_ref,
            metadata: item.metadata,
        };
        return Some(if post { Command::PostPending(resolution) } else { Command::VoidPending(resolution) });
    }

    let (Some(debit), Some(credit), Some(amount), Some(ledger)) =
        (item.debit_account_id, item.credit_account_id, item.amount, item.ledger)
    else {
        let fields = [
            ("debit_account_id", item.debit_account_id.is_some()),
            ("credit_account_id", item.credit_account_id.is_some()),
            ("amount", item.amount.is_some()),
            ("ledger", item.ledger.is_some()),
        ];
        for (name, _) in fields.iter().filter(|(_, present)| !present) {
            fail(name, "missing field; required unless post_pending_id or void_pending_id is given");
        }
        return None;
    };
    let timeout_field = || format!("transfers[{index}].timeout_seconds");
    let pending = match hold(item.pending.unwrap_or(false), item.timeout_seconds, timeout_field) {
        Ok(pending) => pending,
        Err(err) => {
            errors.extend(err.errors);
            return None;
        }
    };
    Some(Command::CreateTransfer(NewTransfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        ledger,
        code: item.code.unwrap_or(0),
        pending,
        external_ref: item.external_ref,
        metadata: item.metadata,
    }))
}
