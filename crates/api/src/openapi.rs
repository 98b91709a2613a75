//! The OpenAPI 3.1 document's frame: info, the bearer security scheme, the shared problem
//! responses and the Idempotency-Key header. The paths themselves come from the handlers'
//! `#[utoipa::path]` attributes as the router registers them (see `routes`), so a route cannot be
//! served without being documented.

use std::collections::BTreeMap;

use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, ObjectBuilder, Ref, RefOr, Required, Response, ResponseBuilder, Type,
};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi};

use crate::error::{FieldError, PROBLEM_JSON, Problem};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Coffer",
        description = "A double-entry wallet and ledger. Every request except /healthz, /readyz, /metrics \
                       and /openapi.json needs `Authorization: Bearer <token>`. Errors are RFC 9457 \
                       problem details with a stable `code`. Any POST may carry an `Idempotency-Key`; \
                       creates with a client-chosen `id` are idempotent for ever.",
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(Problem, FieldError)),
    tags(
        (name = "ledgers", description = "Units of account"),
        (name = "accounts", description = "Where money sits"),
        (name = "transfers", description = "Movements of money, holds, posts and voids"),
        (name = "keys", description = "API keys"),
        (name = "events", description = "The live event stream and the consumers' dead letters"),
        (name = "webhooks", description = "Endpoints the events are posted to, signed (Standard Webhooks)"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("An API key made by POST /v1/keys, `coffer keys create` or the bootstrap."))
            .build();
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The optional `Idempotency-Key` header of every POST.
pub struct IdempotencyHeader;

impl IntoParams for IdempotencyHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let schema = ObjectBuilder::new().schema_type(Type::String).min_length(Some(1)).max_length(Some(255));
        vec![
            ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "1-255 visible ASCII characters. The first completed answer (2xx or 4xx) is stored \
                     for at least 24 h and replayed, with `Idempotent-Replayed: true`, to a retry with \
                     the same key and request; the same key with a different request is 422 \
                     `idempotency_key_reused`; while the first is in flight, 409 \
                     `idempotency_key_in_use`. Ids the request leaves out are derived from the key, so a \
                     retry never creates a second record.",
                ))
                .schema(Some(schema))
                .build(),
        ]
    }
}

/// The optional W3C `traceparent` header of the writes that emit events.
pub struct TraceHeader;

impl IntoParams for TraceHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"));
        vec![
            ParameterBuilder::new()
                .name("traceparent")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "W3C trace context. Every event the request causes carries it as its `traceparent` \
                     extension, and the request's log lines carry its trace id. One that is not of \
                     version 00 with non-zero ids is ignored (never refused).",
                ))
                .schema(Some(schema))
                .build(),
        ]
    }
}

fn problem(description: &str, retry_after: bool) -> Response {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build();
    let mut response = ResponseBuilder::new().description(description).content(PROBLEM_JSON, content);
    if retry_after {
        let header = HeaderBuilder::new()
            .schema(Some(ObjectBuilder::new().schema_type(Type::Integer)))
            .description(Some("Seconds to wait before retrying"))
            .build();
        response = response.header("Retry-After", header);
    }
    response.build()
}

fn problems(statuses: &[u16]) -> BTreeMap<String, RefOr<Response>> {
    statuses
        .iter()
        .map(|status| {
            let response = match status {
                400 => problem("`invalid_request`: malformed JSON, unknown fields, wrong types or out-of-range values; `errors` names each field", false),
                401 => problem("`unauthorized`: no valid API key", false),
                403 => problem("`forbidden`: the key lacks the scope", false),
                404 => problem("`not_found`", false),
                409 => problem("`exists_with_different_fields`, `idempotency_key_in_use` or `webhook_secret_changed`", false),
                413 => problem("`payload_too_large`", false),
                415 => problem("`unsupported_media_type`: the body must be application/json", false),
                422 => problem("a business rule refused the request (`insufficient_funds`, `exceeds_debits`, `ledger_mismatch`, `account_not_found`, `pending_transfer_*`, `overflow`, `idempotency_key_reused`, `webhook_target_refused`, ...)", false),
                429 => problem("`rate_limited`", true),
                _ => problem("`overloaded` or `unavailable`; a write's outcome may be unknown: retry with the same id or Idempotency-Key", true),
            };
            (status.to_string(), RefOr::T(response))
        })
        .collect()
}

/// The problems any authenticated read may answer.
pub struct ReadProblems;
/// The problems of a read of one record by its id.
pub struct LookupProblems;
/// The problems any write may answer.
pub struct WriteProblems;
/// The problem of `/readyz`.
pub struct NotReady;

impl IntoResponses for ReadProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        problems(&[400, 401, 403, 429, 503])
    }
}

impl IntoResponses for LookupProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        problems(&[400, 401, 403, 404, 429, 503])
    }
}

impl IntoResponses for WriteProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        problems(&[400, 401, 403, 409, 413, 415, 422, 429, 503])
    }
}

impl IntoResponses for NotReady {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        problems(&[503])
    }
}
