//! API keys and scopes, rate limits, and the operations endpoints (/healthz, /readyz, /metrics,
//! /openapi.json).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use coffer_api::ApiConfig;
use coffer_store::{KeyDirectory, SqliteStore, StoreConfig};
use coffer_testkit::Backend;
use common::{ADMIN, spawn, spawn_with};
use serde_json::{Value, json};

coffer_testkit::on_each_backend! {
    #![tokio::test(flavor = "multi_thread", worker_threads = 2)]
    keys_scopes_and_revocation,
    a_key_over_its_rate_gets_429_with_retry_after,
    the_default_rate_limit_comes_from_the_config,
    operations_endpoints,
    openapi_documents_every_route,
    keys_expire_by_themselves,
    a_rotated_key_overlaps_then_the_old_token_stops,
    a_flood_of_bad_tokens_is_refused_and_throttled_without_failing_anyone,
    only_the_operators_own_tokens_are_taken_without_the_prefix,
}

async fn keys_scopes_and_revocation(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    app.ledger("USD").await;

    let r = app.post("/v1/keys", json!({"name": "reporting", "scopes": ["read"]})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["name"], "reporting");
    assert_eq!(r.body["scopes"], json!(["read"]));
    let read_id = r.body["id"].as_str().unwrap().to_owned();
    let read_token = r.body["token"].as_str().unwrap().to_owned();
    assert!(read_token.starts_with("coffer_"));

    // A read key reads, and may not write.
    assert_eq!(app.get_as(&read_token, "/v1/ledgers").await.status, 200);
    app.post_as(&read_token, "/v1/accounts", json!({"ledger": "USD"})).await.assert_problem(403, "forbidden");

    // A write key creates accounts and transfers but not ledgers or keys.
    let (_, write_token) = app.key(&["write"], None).await;
    assert_eq!(app.post_as(&write_token, "/v1/accounts", json!({"ledger": "USD"})).await.status, 201);
    app.post_as(&write_token, "/v1/ledgers", json!({"code": "EUR", "scale": 2}))
        .await
        .assert_problem(403, "forbidden");
    app.post_as(&write_token, "/v1/keys", json!({"scopes": ["admin"]}))
        .await
        .assert_problem(403, "forbidden");

    // Listed without tokens.
    let r = app.get("/v1/keys").await;
    assert_eq!(r.status, 200);
    let keys = r.body["data"].as_array().unwrap();
    assert_eq!(keys.len(), 3, "{}", r.text);
    assert!(keys.iter().all(|k| k.get("token").is_none() && k["revoked_at"].is_null()));
    assert!(!r.text.contains(&read_token));

    // Revocation takes effect at once (the key was cached by the requests above).
    let r = app.send("DELETE", &format!("/v1/keys/{read_id}"), Some(ADMIN), None, &[]).await;
    assert_eq!(r.status, 204, "{}", r.text);
    app.get_as(&read_token, "/v1/ledgers").await.assert_problem(401, "unauthorized");
    let r = app.get("/v1/keys").await;
    let revoked =
        r.body["data"].as_array().unwrap().iter().find(|k| k["id"] == read_id.as_str()).unwrap().clone();
    assert!(revoked["revoked_at"].is_string());
}

async fn a_key_over_its_rate_gets_429_with_retry_after(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (_, slow) = app.key(&["read"], Some(1)).await;
    let first = app.get_as(&slow, "/v1/ledgers").await;
    assert_eq!(first.status, 200, "{}", first.text);
    // One request a second: of a quick run of requests, all but about one a second are refused.
    let mut refused = None;
    for _ in 0..20 {
        let r = app.get_as(&slow, "/v1/ledgers").await;
        if r.status != 200 {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("a 429 within 20 quick requests");
    refused.assert_problem(429, "rate_limited");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry));
    // Other keys are not affected.
    assert_eq!(app.get("/v1/ledgers").await.status, 200);
}

async fn the_default_rate_limit_comes_from_the_config(backend: Backend) {
    let (one, two) = (std::num::NonZeroU32::MIN, std::num::NonZeroU32::new(2).unwrap());
    let config = ApiConfig { rate_limit_per_second: one, rate_limit_burst: two, ..ApiConfig::default() };
    let Some(app) = spawn_with(backend, config).await else { return };
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(app.get("/v1/ledgers").await.status);
    }
    // A burst of two, then about one a second.
    assert_eq!(&statuses[..2], &[200, 200]);
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_makes_one_admin_key_only_when_there_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<SqliteStore> = SqliteStore::open(dir.path(), StoreConfig::default()).await.unwrap();
    let generated = coffer_api::bootstrap(store.as_ref(), None).await.unwrap().expect("a generated token");
    assert!(generated.starts_with("coffer_"));
    let key = store.key_by_token(coffer_store::TokenHash::of(&generated)).await.unwrap().unwrap();
    assert!(key.allows(coffer_store::Scope::Admin));
    // A second bootstrap finds a key and does nothing.
    assert_eq!(coffer_api::bootstrap(store.as_ref(), None).await.unwrap(), None);
    assert_eq!(coffer_api::bootstrap(store.as_ref(), Some("other")).await.unwrap(), None);
    assert!(store.key_by_token(coffer_store::TokenHash::of("other")).await.unwrap().is_none());
    assert!(coffer_api::bootstrap(store.as_ref(), Some("has space")).await.is_err());
}

async fn operations_endpoints(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let r = app.send("GET", "/healthz", None, None, &[]).await;
    assert_eq!((r.status, r.body["status"].as_str()), (200, Some("ok")));
    let r = app.send("GET", "/readyz", None, None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Every response carries a request id; a sane one sent by the client is echoed.
    let id = r.header("x-request-id").expect("a request id");
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    let r = app.send("GET", "/healthz", None, None, &[("x-request-id", "trace-me-42")]).await;
    assert_eq!(r.header("x-request-id"), Some("trace-me-42"));
    let r = app.get("/v1/nothing").await;
    assert!(r.header("x-request-id").is_some());

    app.get("/v1/ledgers/USD").await;
    let r = app.send("GET", "/metrics", None, None, &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert!(r.text.contains("coffer_http_requests_total"), "{}", r.text);
    assert!(r.text.contains(r#"route="/v1/ledgers/{code}""#), "labels use the route template");
    assert!(!r.text.contains(r#"route="/v1/ledgers/USD""#), "never the raw path");
    assert!(r.text.contains("coffer_http_request_duration_seconds_bucket"));

    // Readiness follows the store.
    app.store.shutdown().await;
    let r = app.send("GET", "/readyz", None, None, &[]).await;
    r.assert_problem(503, "unavailable");
    assert!(r.header("retry-after").is_some());
}

/// Every route the router serves, with its methods: the OpenAPI document must list exactly these.
const ROUTES: &[(&str, &[&str])] = &[
    ("/v1/ledgers", &["get", "post"]),
    ("/v1/ledgers/{code}", &["get"]),
    ("/v1/accounts", &["get", "post"]),
    ("/v1/accounts/{id}", &["get"]),
    ("/v1/accounts/{id}/transfers", &["get"]),
    ("/v1/transfers", &["get", "post"]),
    ("/v1/transfers/{id}", &["get"]),
    ("/v1/transfers/{id}/post", &["post"]),
    ("/v1/transfers/{id}/void", &["post"]),
    ("/v1/transfers/batch", &["post"]),
    ("/v1/keys", &["get", "post"]),
    ("/v1/keys/{id}", &["delete"]),
    ("/v1/keys/{id}/rotate", &["post"]),
    ("/v1/ledgers/{code}/stats", &["get"]),
    ("/v1/webhooks", &["get", "post"]),
    ("/v1/webhooks/{id}", &["get", "delete"]),
    ("/v1/webhooks/{id}/deliveries", &["get"]),
    ("/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", &["post"]),
    ("/v1/webhooks/{id}/rotate-secret", &["post"]),
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

/// POST routes that take no body: they document none.
const BODYLESS_POSTS: &[&str] = &[
    "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
    "/v1/admin/dead-letters/{id}/replay",
    "/v1/admin/projections/ledger-volumes/rebuild",
];

/// What a client generator trips over: the document must parse as OpenAPI 3.1 (the `oas3`
/// crate's model of the specification), every `$ref` must point at something that exists, and
/// operation ids must be unique.
fn openapi_is_well_formed(doc: &Value) {
    let text = serde_json::to_string(doc).unwrap();
    let spec = oas3::from_json(&text).unwrap_or_else(|e| panic!("not an OpenAPI 3.1 document: {e}"));
    assert!(spec.openapi.starts_with("3.1"));

    fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    found.push(target);
                }
                map.values().for_each(|v| refs(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(doc, &mut found);
    assert!(!found.is_empty(), "the document uses components");
    for target in found {
        let pointer = target.strip_prefix('#').unwrap_or_else(|| panic!("external $ref {target}"));
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {target}");
    }

    let mut ids = BTreeSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            if let Some(id) = op.get("operationId") {
                assert!(ids.insert(id.as_str().unwrap().to_owned()), "operationId {id} twice");
            }
        }
    }
}

async fn openapi_documents_every_route(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let r = app.send("GET", "/openapi.json", None, None, &[]).await;
    assert_eq!(r.status, 200);
    let doc = r.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    assert_eq!(doc, serde_json::to_value(coffer_api::openapi()).unwrap(), "served = generated");
    openapi_is_well_formed(&doc);

    let paths = doc["paths"].as_object().unwrap();
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object().unwrap().keys().filter(|m| *m != "parameters").map(|m| (path.clone(), m.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> =
        ROUTES.iter().flat_map(|(p, ms)| ms.iter().map(|m| (p.to_string(), m.to_string()))).collect();
    assert_eq!(documented, expected);

    for (path, methods) in ROUTES {
        for method in *methods {
            let op = &paths[*path][*method];
            let responses =
                op["responses"].as_object().unwrap_or_else(|| panic!("{method} {path}: no responses"));
            assert!(!responses.is_empty(), "{method} {path}");
            if path.starts_with("/v1/") {
                for status in ["400", "401", "403", "429", "503"] {
                    let problem = &responses[status]["content"]["application/problem+json"];
                    assert!(problem.is_object(), "{method} {path} lacks the {status} problem");
                }
            }
            if *method == "post" && !BODYLESS_POSTS.contains(path) {
                assert!(op["requestBody"]["content"]["application/json"]["schema"].is_object(), "{path}");
                assert!(
                    op["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "Idempotency-Key"),
                    "{path} documents Idempotency-Key"
                );
            }
        }
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    for schema in ["Problem", "Transfer", "Account", "Ledger", "CreateTransfer", "BatchItem", "CreatedKey"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema} missing");
    }
    // The ops endpoints need no token.
    assert_eq!(paths["/healthz"]["get"]["security"], json!([{}]));

    // And every route in the list really is served (not a 404 from the fallback).
    for (path, methods) in ROUTES {
        let id = "0196a000-0000-7000-8000-000000000001";
        let mut concrete = path.replace("{code}", "USD").replace("{id}", id).replace("{delivery_id}", id);
        if *path == "/v1/events/stream" {
            // A bad filter answers at once; a good one would stream for ever.
            concrete.push_str("?types=none");
        }
        for method in *methods {
            let r = app.send(&method.to_uppercase(), &concrete, Some(ADMIN), None, &[]).await;
            assert!(
                r.status != 404 || r.body["detail"] != "no route matches this path",
                "{method} {path} is documented but not served"
            );
            assert!(r.status < 500, "{method} {path}: {}", r.text);
        }
    }
}

fn rfc3339_in(seconds: i64) -> String {
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(seconds);
    at.format(&time::format_description::well_known::Rfc3339).unwrap()
}

/// Polls until `token` is refused: an expiry takes effect by itself, to the microsecond.
async fn refused_within(app: &common::App, token: &str, seconds: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let r = app.get_as(token, "/v1/ledgers").await;
        if r.status == 401 {
            r.assert_problem(401, "unauthorized");
            return;
        }
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(std::time::Instant::now() < deadline, "the token still works after its expiry");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn keys_expire_by_themselves(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    app.post("/v1/keys", json!({"scopes": ["read"], "expires_at": rfc3339_in(-1)}))
        .await
        .assert_problem(400, "invalid_request");
    let r = app.post("/v1/keys", json!({"scopes": ["read"], "expires_at": rfc3339_in(1)})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.body["expires_at"].is_string(), "{}", r.text);
    let token = r.body["token"].as_str().unwrap();
    assert_eq!(app.get_as(token, "/v1/ledgers").await.status, 200);
    refused_within(&app, token, 10).await;
}

/// `POST /v1/keys/{id}/rotate`: a new token with the same powers at once, and the old one keeps
/// working until the overlap ends (24 hours unless told), then stops by itself.
async fn a_rotated_key_overlaps_then_the_old_token_stops(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (id, old) = app.key(&["write"], Some(500)).await;
    let r = app.send("POST", &format!("/v1/keys/{id}/rotate"), Some(ADMIN), None, &[]).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let new = r.body["key"]["token"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_ne!(r.body["key"]["id"], id.as_str());
    assert_eq!(r.body["key"]["scopes"], json!(["write"]));
    assert_eq!(r.body["key"]["rate_limit_per_second"], 500);
    assert_eq!(r.body["previous"]["id"], id.as_str());
    let overlap_end = r.body["previous"]["expires_at"].as_str().unwrap().to_owned();
    assert!(overlap_end > rfc3339_in(23 * 3600) && overlap_end < rfc3339_in(25 * 3600), "{overlap_end}");
    for token in [&old, &new] {
        assert_eq!(app.post_as(token, "/v1/accounts", json!({"ledger": "USD"})).await.status, 422);
    }

    // A shorter overlap: the old token stops at the given time; the new ones go on.
    let body = json!({"old_key_expires_at": rfc3339_in(1)});
    let r = app.post(&format!("/v1/keys/{id}/rotate"), body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    refused_within(&app, &old, 10).await;
    assert_eq!(app.get_as(&new, "/v1/ledgers").await.status, 200);
    let newest = r.body["key"]["token"].as_str().unwrap();
    assert_eq!(app.get_as(newest, "/v1/ledgers").await.status, 200);

    // An expired key cannot be rotated; nor can one that does not exist; the overlap is bounded.
    let rotate = |id: &str| format!("/v1/keys/{id}/rotate");
    app.post(&rotate(&id), json!({})).await.assert_problem(404, "not_found");
    app.post(&rotate(&common::uuid()), json!({})).await.assert_problem(404, "not_found");
    let (other, _) = app.key(&["read"], None).await;
    for days in [31 * 24 * 3600, -5] {
        let body = json!({"old_key_expires_at": rfc3339_in(days)});
        app.post(&rotate(&other), body).await.assert_problem(400, "invalid_request");
    }
}

/// DESIGN §5: junk tokens are refused without a look-up, and a client address that keeps
/// presenting unknown tokens is throttled (429 with Retry-After) while verified keys, even from
/// the same address, go on working.
async fn a_flood_of_bad_tokens_is_refused_and_throttled_without_failing_anyone(backend: Backend) {
    let burst = std::num::NonZeroU32::new(5).unwrap();
    let config = ApiConfig {
        auth_failures_per_second: std::num::NonZeroU32::MIN,
        auth_failure_burst: burst,
        ..ApiConfig::default()
    };
    let Some(app) = spawn_with(backend, config).await else { return };
    let (_, reader) = app.key(&["read"], None).await;
    assert_eq!(app.get_as(&reader, "/v1/ledgers").await.status, 200);
    // Coffer's prefix and shape, but not its checksum.
    let forged = format!("coffer_{}", "0".repeat(72));
    let (mut unauthorized, mut throttled) = (0, 0);
    for i in 0..20 {
        let token = if i % 2 == 0 { forged.clone() } else { format!("guess-{i}") };
        let r = app.get_as(&token, "/v1/ledgers").await;
        match r.status {
            401 => unauthorized += 1,
            429 => {
                r.assert_problem(429, "rate_limited");
                assert!(r.header("retry-after").is_some());
                throttled += 1;
            }
            other => panic!("a bad token got {other}: {}", r.text),
        }
        // The verified key from the same address is not affected.
        assert_eq!(app.get_as(&reader, "/v1/ledgers").await.status, 200);
    }
    assert!(throttled > 0, "20 bad tokens from one address within a burst of 5 were never throttled");
    assert!(unauthorized >= 5, "{unauthorized}");
    let metrics = app.get("/metrics").await.text;
    for reason in ["malformed", "unknown", "throttled"] {
        let line = format!("coffer_auth_failures_total{{reason=\"{reason}\"}}");
        assert!(metrics.contains(&line), "{line} missing from /metrics");
    }
}

/// Tokens without Coffer's prefix can only be an operator's bootstrap token: the store names
/// those keys' hashes, and the server refuses any other such token without looking it up.
async fn only_the_operators_own_tokens_are_taken_without_the_prefix(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let admin_hash = coffer_store::TokenHash::of(ADMIN);
    assert_eq!(app.store.bare_token_hashes().await.unwrap(), vec![admin_hash]);
    let (_, issued) = app.key(&["admin"], None).await;
    assert_eq!(
        app.store.bare_token_hashes().await.unwrap(),
        vec![admin_hash],
        "an issued token is not custom"
    );

    for guess in ["admin-test-tokem", "x", &"y".repeat(64)] {
        let r = app.get_as(guess, "/v1/ledgers").await;
        r.assert_problem(401, "unauthorized");
        assert!(r.body["detail"].as_str().unwrap().contains("not valid"), "{}", r.text);
    }
    assert_eq!(app.get_as(ADMIN, "/v1/ledgers").await.status, 200);

    // Revoking the bootstrap key takes its hash out of the list, and the token stops at once here.
    let keys = app.get_as(&issued, "/v1/keys").await;
    let bootstrap = keys.body["data"].as_array().unwrap().iter().find(|k| k["name"] == "bootstrap").unwrap();
    let path = format!("/v1/keys/{}", bootstrap["id"].as_str().unwrap());
    assert_eq!(app.send("DELETE", &path, Some(&issued), None, &[]).await.status, 204);
    assert!(app.store.bare_token_hashes().await.unwrap().is_empty());
    app.get_as(ADMIN, "/v1/ledgers").await.assert_problem(401, "unauthorized");
}
