//! The routes of DESIGN §2, registered through utoipa-axum so every route is in the OpenAPI
//! document, and the helpers that turn a ledger outcome into a response.

mod accounts;
mod audit;
mod batch;
mod dead_letters;
mod keys;
mod ledgers;
mod ops;
mod projections;
mod stats;
pub(crate) mod status;
mod stream;
mod transfers;
mod webhooks;

pub use ops::render_metrics;
pub use status::ServerAbout;

use axum::extract::MatchedPath;
use axum::response::{IntoResponse, Response};
use coffer_ledger::{Command, Outcome, Record, Submission};
use coffer_store::StoreError;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::error::{ApiError, ErrorCode};
use crate::extract::Trace;
use crate::idempotency::IDEMPOTENT_REPLAYED;
use crate::observe;
use crate::openapi::ApiDoc;
use crate::state::AppState;

/// Every route template with its methods. Metrics label requests with these strings, and a test
/// checks the list against the OpenAPI document so it cannot drift from the router.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/v1/ledgers", &["get", "post"]),
    ("/v1/ledgers/{code}", &["get"]),
    ("/v1/ledgers/{code}/stats", &["get"]),
    ("/v1/accounts", &["get", "post"]),
    ("/v1/accounts/{id}", &["get"]),
    ("/v1/accounts/{id}/transfers", &["get"]),
    ("/v1/transfers", &["get", "post"]),
    ("/v1/transfers/{id}", &["get"]),
    ("/v1/transfers/{id}/post", &["post"]),
    ("/v1/transfers/{id}/void", &["post"]),
    (BATCH_ROUTE, &["post"]),
    ("/v1/keys", &["get", "post"]),
    ("/v1/keys/{id}", &["delete"]),
    ("/v1/keys/{id}/rotate", &["post"]),
    ("/v1/webhooks", &["get", "post"]),
    ("/v1/webhooks/{id}", &["get", "delete"]),
    ("/v1/webhooks/{id}/deliveries", &["get"]),
    ("/v1/webhooks/{id}/rotate-secret", &["post"]),
    ("/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", &["post"]),
    ("/v1/events/stream", &["get"]),
    ("/v1/admin/dead-letters", &["get"]),
    ("/v1/admin/dead-letters/{id}", &["get", "delete"]),
    ("/v1/admin/dead-letters/{id}/replay", &["post"]),
    ("/v1/admin/projections/ledger-volumes/rebuild", &["post"]),
    ("/v1/admin/status", &["get"]),
    ("/v1/audit", &["get"]),
    ("/healthz", &["get"]),
    ("/readyz", &["get"]),
    ("/metrics", &["get"]),
    ("/openapi.json", &["get"]),
];

/// The batch endpoint, whose body limit is the larger one.
pub const BATCH_ROUTE: &str = "/v1/transfers/batch";

/// Every route with its documentation; the caller adds layers and state.
pub fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(ledgers::create_ledger, ledgers::list_ledgers))
        .routes(routes!(ledgers::get_ledger))
        .routes(routes!(stats::ledger_stats))
        .routes(routes!(accounts::create_account, accounts::list_accounts))
        .routes(routes!(accounts::get_account))
        .routes(routes!(accounts::account_transfers))
        .routes(routes!(transfers::create_transfer, transfers::list_transfers))
        .routes(routes!(transfers::get_transfer))
        .routes(routes!(transfers::post_transfer))
        .routes(routes!(transfers::void_transfer))
        .routes(routes!(batch::create_batch))
        .routes(routes!(keys::create_key, keys::list_keys))
        .routes(routes!(keys::revoke_key))
        .routes(routes!(keys::rotate_key))
        .routes(routes!(webhooks::create_webhook, webhooks::list_webhooks))
        .routes(routes!(webhooks::get_webhook, webhooks::delete_webhook))
        .routes(routes!(webhooks::list_deliveries))
        .routes(routes!(webhooks::rotate_webhook_secret))
        .routes(routes!(webhooks::redeliver))
        .routes(routes!(stream::event_stream))
        .routes(routes!(dead_letters::list_dead_letters))
        .routes(routes!(dead_letters::get_dead_letter, dead_letters::discard_dead_letter))
        .routes(routes!(dead_letters::replay_dead_letter))
        .routes(routes!(projections::rebuild_ledger_volumes))
        .routes(routes!(status::status))
        .routes(routes!(audit::list_audit))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi_json))
}

/// 404 for a path no route matches.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no route matches this path")
}

/// 405 for a route that exists without this method (axum keeps the `Allow` header).
pub async fn method_not_allowed(matched: Option<MatchedPath>) -> Response {
    let mut response =
        ApiError::new(ErrorCode::MethodNotAllowed, "this route does not take this method").into_response();
    observe::tag(&mut response, observe::route_label(matched.as_ref()));
    response
}

/// A JSON response; serialization of our own types does not fail, but would be a 500, not a panic.
/// An answer that shows a secret once: `shown` goes to the client, and `stored`, the same with
/// the secret nulled, is what the idempotency layer keeps and a replay answers, so no token or
/// signing secret is ever written to the idempotency table.
pub fn shown_once<T: Serialize>(status: StatusCode, shown: &T, stored: &T) -> Response {
    let Ok(stored) = serde_json::to_vec(stored) else {
        return ApiError::internal("a response could not be serialized").into_response();
    };
    let mut response = json(status, shown);
    response.extensions_mut().insert(crate::idempotency::StoreInstead(stored.into()));
    response
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = (status, body).into_response();
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(_) => ApiError::internal("a response could not be serialized").into_response(),
    }
}

/// Submits one command, sent in `trace`. `id` is the record's id, named in the error should the
/// outcome be unknown, because a client that let Coffer choose the id could not otherwise retry.
pub async fn submit_one(
    state: &AppState,
    command: Command,
    id: Option<Uuid>,
    Trace(trace): Trace,
) -> Result<Outcome, ApiError> {
    let submission = Submission::one(command).traced(trace);
    let outcomes = state.store.submit(submission).await.map_err(|err| match (err, id) {
        (err @ StoreError::OutcomeUnknown { .. }, Some(id)) => {
            let mut api = ApiError::from(err);
            api.detail = format!(
                "the outcome of the write is unknown: retry with \"id\": \"{id}\" (or the same Idempotency-Key) to learn it"
            )
            .into();
            api
        }
        (other, _) => ApiError::from(other),
    })?;
    outcomes.into_iter().next().ok_or_else(|| ApiError::internal("the store answered no outcome"))
}

/// 201 for a new record, 200 with `Idempotent-Replayed: true` for an identical existing one, the
/// rule's problem for a rejection. `pick` takes the record kind the command creates.
pub fn answer<T: Serialize>(outcome: Outcome, pick: fn(Record) -> Option<T>) -> Result<Response, ApiError> {
    let wrong_kind = || ApiError::internal("the store answered a record of another kind");
    match outcome {
        Outcome::Created(record) => Ok(json(StatusCode::CREATED, &pick(record).ok_or_else(wrong_kind)?)),
        Outcome::Exists(record) => {
            let mut response = json(StatusCode::OK, &pick(record).ok_or_else(wrong_kind)?);
            response.headers_mut().insert(IDEMPOTENT_REPLAYED.clone(), HeaderValue::from_static("true"));
            Ok(response)
        }
        Outcome::Rejected(code) => Err(ApiError::rejected(code)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_route_list_matches_the_openapi_document() {
        let api = api_routes().into_openapi();
        let documented: BTreeSet<(String, String)> = api
            .paths
            .paths
            .iter()
            .flat_map(|(path, item)| {
                let json = serde_json::to_value(item).unwrap();
                let methods: Vec<String> = json.as_object().unwrap().keys().cloned().collect();
                methods.into_iter().filter(|m| m != "parameters").map(move |m| (path.clone(), m))
            })
            .collect();
        let listed: BTreeSet<(String, String)> = ROUTES
            .iter()
            .flat_map(|(path, methods)| methods.iter().map(move |m| (path.to_string(), m.to_string())))
            .collect();
        assert_eq!(documented, listed);
    }
}
