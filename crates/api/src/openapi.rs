//! The OpenAPI 3.1 document's frame: info, the bearer security scheme, the shared problem
//! responses and the Idempotency-Key header. The paths themselves come from the handlers'
//! `#[utoipa::path]` attributes as the router registers them (see `routes`), so a route cannot be
//! served without being documented.

use std::collections::BTreeMap;

use serde_json::{Value, json};
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
                       creates with a client-chosen `id` are idempotent for ever. Integers are written as \
                       JSON integers (`1`, not `1.0` or `1e0`): a number with a fraction or an \
                       exponent is a 400, even when it is whole.",
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
        (name = "audit", description = "The audit trail of administrative and security actions, hash-chained"),
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

/// 1 to 255 visible ASCII characters (`!` to `~`), as `idempotency::parse_key` checks.
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]{1,255}$";

/// Client text without control characters (Unicode category Cc), as `client_text::check`
/// checks; lengths are stated beside it.
pub const NO_CONTROL_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// The optional `Idempotency-Key` header of every POST.
pub struct IdempotencyHeader;

impl IntoParams for IdempotencyHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(255))
            .pattern(Some(IDEMPOTENCY_KEY_PATTERN));
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
        // Any string: one of another form is ignored, not refused, so no pattern is stated.
        let schema = ObjectBuilder::new().schema_type(Type::String);
        vec![
            ParameterBuilder::new()
                .name("traceparent")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "W3C trace context, `00-<32 hex>-<16 hex>-<2 hex>` with non-zero ids. Every event \
                     the request causes carries it as its `traceparent` extension, and the request's \
                     log lines carry its trace id. Any other value is ignored (never refused).",
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
                _ => problem("`overloaded` or `unavailable`: nothing was applied; `outcome_unknown`: a write's commit went unanswered, so it may have applied: retry with the same id or Idempotency-Key to learn which", true),
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
/// The problems of a write to one record named in its path (an action on it).
pub struct ActionProblems;
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

impl IntoResponses for ActionProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        problems(&[400, 401, 403, 404, 409, 413, 415, 422, 429, 503])
    }
}

impl IntoResponses for NotReady {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        problems(&[503])
    }
}

/// A ledger's code, as `LedgerCode` parses it.
pub const LEDGER_CODE_PATTERN: &str = "^[A-Z0-9_]{1,16}$";
/// A dead letter's id: a UUID (in-process bus) or a stream sequence (JetStream), as
/// `routes::dead_letters::DeadLetterId` takes it.
pub const DEAD_LETTER_ID_PATTERN: &str =
    "^(?:[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|[0-9]{1,19})$";

const IPV4: &str =
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}";

/// What a webhook URL may be, checked before the URL is parsed (`routes::webhooks`): `http` or
/// `https`, no credentials, a host that is a DNS name whose last label starts with a letter, a
/// dotted-quad IPv4 address or a bracketed IPv6 address, an optional port, and a path, query
/// and fragment of the characters a URL parser keeps as they are. So every URL of this shape
/// parses, and what is kept is what was sent (give or take a `/` after a bare host).
pub fn webhook_url_pattern() -> String {
    let h16 = "[0-9A-Fa-f]{1,4}";
    // RFC 3986's IPv6address, ls32 and all.
    let ls32 = format!("(?:{h16}:{h16}|{IPV4})");
    let ipv6 = [
        format!("(?:{h16}:){{6}}{ls32}"),
        format!("::(?:{h16}:){{5}}{ls32}"),
        format!("(?:{h16})?::(?:{h16}:){{4}}{ls32}"),
        format!("(?:(?:{h16}:){{0,1}}{h16})?::(?:{h16}:){{3}}{ls32}"),
        format!("(?:(?:{h16}:){{0,2}}{h16})?::(?:{h16}:){{2}}{ls32}"),
        format!("(?:(?:{h16}:){{0,3}}{h16})?::{h16}:{ls32}"),
        format!("(?:(?:{h16}:){{0,4}}{h16})?::{ls32}"),
        format!("(?:(?:{h16}:){{0,5}}{h16})?::{h16}"),
        format!("(?:(?:{h16}:){{0,6}}{h16})?::"),
    ]
    .join("|");
    let label = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
    let last = "[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
    let name = format!(r"(?:{label}\.)*{last}\.?");
    let port = "(?::(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?";
    let rest = "(?:[/?#][A-Za-z0-9._~!$&()*+,;=:@/?#%-]*)?";
    format!(r"^[Hh][Tt][Tt][Pp][Ss]?://(?:{name}|{IPV4}|\[(?:{ipv6})\]){port}{rest}$")
}

/// The document as served: utoipa's, with the rules its attributes cannot state — which fields
/// go together, recursive metadata, patterns on path parameters — each added here beside the
/// name of the check that enforces it.
pub fn finish(api: &utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(api).unwrap_or_default();
    let no_control = NO_CONTROL_PATTERN;

    // Path parameters: the ledger code (`ApiPath<LedgerCode>`) and the dead-letter id
    // (`DeadLetterId`).
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else { continue };
            for operation in item.values_mut().filter(|o| o.is_object()) {
                let Some(params) = operation.get_mut("parameters").and_then(Value::as_array_mut) else {
                    continue;
                };
                for param in params.iter_mut().filter(|p| p["in"] == "path") {
                    let pattern = match param["name"].as_str() {
                        Some("code") => LEDGER_CODE_PATTERN,
                        Some("id") if path.starts_with("/v1/admin/dead-letters/") => DEAD_LETTER_ID_PATTERN,
                        _ => continue,
                    };
                    param["schema"]["pattern"] = json!(pattern);
                }
            }
        }
    }

    // `routes::audit::list_audit`: an action filter names one of the actions.
    if let Some(params) = doc["paths"]["/v1/audit"]["get"]["parameters"].as_array_mut() {
        let actions: Vec<&str> = coffer_store::AuditAction::ALL.iter().map(|a| a.as_str()).collect();
        for param in params.iter_mut().filter(|p| p["name"] == "action") {
            param["schema"]["enum"] = json!(actions);
        }
    }

    let schemas = &mut doc["components"]["schemas"];
    // `client_text::metadata`: no control character in any key or string, however deep.
    schemas["MetadataValue"] = json!({
        "description": "A value inside `metadata`: its strings and keys hold no control characters.",
        "anyOf": [
            {"type": "string", "pattern": no_control},
            {"type": ["number", "boolean", "null"]},
            {"type": "array", "items": {"$ref": "#/components/schemas/MetadataValue"}},
            {
                "type": "object",
                "propertyNames": {"pattern": no_control},
                "additionalProperties": {"$ref": "#/components/schemas/MetadataValue"}
            }
        ]
    });
    let metadata = json!({
        "type": ["object", "null"],
        "description": "Free-form client data: a JSON object of at most 4096 bytes once serialized, \
                        with no control characters in any key or string.",
        "propertyNames": {"pattern": no_control},
        "additionalProperties": {"$ref": "#/components/schemas/MetadataValue"}
    });
    // `client_text::external_ref`.
    let external_ref = json!({
        "type": ["string", "null"],
        "description": "The client's own reference: 1 to 128 characters, no control characters.",
        "minLength": 1,
        "maxLength": 128,
        "pattern": no_control
    });
    for name in ["CreateAccount", "CreateTransfer", "BatchItem"] {
        schemas[name]["properties"]["metadata"] = metadata.clone();
        schemas[name]["properties"]["external_ref"] = external_ref.clone();
    }
    // `dto::KeyName`.
    schemas["KeyName"]["pattern"] = json!(no_control);
    // `routes::webhooks::create_webhook`.
    let webhook = &mut schemas["CreateWebhook"]["properties"];
    webhook["url"]["pattern"] = json!(webhook_url_pattern());
    webhook["url"]["maxLength"] = json!(2048);
    webhook["event_types"]["minItems"] = json!(1);
    webhook["event_types"]["items"]["enum"] = json!(coffer_events::EVENT_TYPES);

    // `routes::transfers::hold`: a timeout only with `"pending": true`.
    let hold = json!({"anyOf": [
        {"properties": {"timeout_seconds": {"type": "null"}}},
        {"required": ["pending"], "properties": {"pending": {"const": true}}}
    ]});
    let transfer = schemas["CreateTransfer"].take();
    schemas["CreateTransfer"] = json!({"allOf": [transfer, hold.clone()]});

    // `routes::batch::command`: an item is a new transfer, a post or a void.
    let absent = json!({"type": "null"});
    let present = |kind: &str| json!({"type": kind});
    let resolution = |id: &str, other: &str, amount: bool| {
        let mut properties = json!({
            id: present("string"),
            other: absent,
            "debit_account_id": absent,
            "credit_account_id": absent,
            "ledger": absent,
            "pending": absent,
            "timeout_seconds": absent,
        });
        if !amount {
            properties["amount"] = absent.clone();
        }
        json!({"title": id.trim_end_matches("_pending_id"), "required": [id], "properties": properties})
    };
    let new_transfer = json!({
        "title": "transfer",
        "required": ["debit_account_id", "credit_account_id", "amount", "ledger"],
        "properties": {
            "debit_account_id": present("string"),
            "credit_account_id": present("string"),
            "amount": present("integer"),
            "ledger": present("string"),
            "post_pending_id": absent,
            "void_pending_id": absent,
        },
        "allOf": [hold]
    });
    let item = schemas["BatchItem"].take();
    schemas["BatchItem"] = json!({"allOf": [item, {"oneOf": [
        new_transfer,
        resolution("post_pending_id", "void_pending_id", true),
        resolution("void_pending_id", "post_pending_id", false),
    ]}]});
    doc
}

#[cfg(test)]
mod tests {
    use coffer_events::{TargetPolicy, validate_url};
    use regex::Regex;

    use super::*;

    const ANY: TargetPolicy = TargetPolicy { allow_private_networks: true, allow_insecure_http: true };

    #[test]
    fn every_url_of_the_documented_shape_parses_and_is_kept_as_sent() {
        let shape = Regex::new(&webhook_url_pattern()).unwrap();
        for url in [
            "https://example.com",
            "https://example.com.",
            "HTTPS://API.Example.COM:65535/a/b?c=d&e=f#g",
            "http://a-b.c9/x",
            "https://1.example/",
            "https://93.184.215.14:8443/x?y=1",
            "https://0.0.0.0/",
            "https://[2606:4700::1111]/",
            "https://[::1]/",
            "https://[::]:1/",
            "https://[::ffff:127.0.0.1]/",
            "https://[1:2:3:4:5:6:7:8]/",
            "https://[1:2:3:4:5:6:1.2.3.4]/",
            "https://[1::2:3.4.5.6]/",
            "https://[1:2:3:4:5::]/",
            "https://[::2:3:4:5:6:7:8]/",
            "https://example.com/%zz/%/~!$&()*+,;=:@?/?#frag#more",
        ] {
            assert!(shape.is_match(url), "{url}");
            let kept = validate_url(url, ANY).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(kept.as_str().len() <= url.len() + 1, "{url} became {kept}");
        }
        for url in [
            "ftp://example.com/",
            "https://user@example.com/",
            "https://example.com:65536/",
            "https://1.2.3/",
            "https://256.1.1.1/",
            "https://example.1/",
            "https://-a.com/",
            "https://[1:2]/",
            "https://[1:2:3:4:5:6:7:8:9]/",
            "https://[1::2::3]/",
            "https://example.com/a b",
            "https://example.com/'",
            "https://example.com/\"",
            "https:example.com",
            "https://example.com\n",
        ] {
            assert!(!shape.is_match(url), "{url}");
        }
    }

    #[test]
    fn the_document_states_the_rules_added_by_hand() {
        let doc = finish(&crate::routes::api_routes().into_openapi());
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["BatchItem"]["allOf"][1]["oneOf"].as_array().unwrap().len(), 3);
        assert!(schemas["CreateTransfer"]["allOf"][1]["anyOf"].is_array());
        assert!(schemas["MetadataValue"]["anyOf"].is_array());
        let stats = &doc["paths"]["/v1/ledgers/{code}/stats"]["get"]["parameters"][0];
        assert_eq!(stats["schema"]["pattern"], LEDGER_CODE_PATTERN);
        let action = &doc["paths"]["/v1/audit"]["get"]["parameters"][0];
        assert_eq!(
            (&action["name"], action["schema"]["enum"].as_array().map(Vec::len)),
            (&json!("action"), Some(14))
        );
        for pattern in [NO_CONTROL_PATTERN, IDEMPOTENCY_KEY_PATTERN, DEAD_LETTER_ID_PATTERN] {
            Regex::new(pattern).unwrap();
        }
    }
}
