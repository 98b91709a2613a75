//! Rebuilding a projection (admin): the ledger-volumes projection is forgotten and rebuilt by
//! replaying the outbox. The rebuild runs on its own task, so a client that disconnects (or a
//! request timeout) cannot leave it half done; the answer says it started.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use coffer_events::LedgerVolumes;
use http::StatusCode;

use crate::audit::Origin;
use crate::auth::{AdminScope, Caller};
use crate::error::ApiError;
use crate::openapi::WriteProblems;
use crate::state::AppState;

/// Rebuild the ledger-volumes projection from the outbox (admin).
///
/// The figures of `/v1/ledgers/{code}/stats` restart from zero and climb back to their totals
/// while the replay runs; the projection's consumer keeps running beside it.
#[utoipa::path(
    post, path = "/v1/admin/projections/ledger-volumes/rebuild", tag = "events",
    responses((status = 202, description = "The rebuild started"), WriteProblems)
)]
pub async fn rebuild_ledger_volumes(
    State(state): State<AppState>,
    Caller(caller, _): Caller<AdminScope>,
    origin: Origin,
) -> Result<Response, ApiError> {
    let projection = LedgerVolumes::new(state.store.clone());
    let by = origin.by(&caller);
    tokio::spawn(async move {
        match projection.rebuild(&by).await {
            Ok(events) => tracing::info!(events, "rebuilt the ledger-volumes projection"),
            Err(e) => tracing::error!(error = %e, "the ledger-volumes rebuild failed; run it again"),
        }
    });
    Ok(StatusCode::ACCEPTED.into_response())
}
