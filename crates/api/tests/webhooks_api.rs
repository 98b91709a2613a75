//! The webhook endpoints (`/v1/webhooks…`, admin only): what a user relies on — the signing
//! secret shown once and never again, the endpoint's lifecycle, the URL guard against
//! server-side request forgery, the deliveries list and the manual redelivery — and their
//! answers to bad input, each a clean 4xx problem, never a 500.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use coffer_api::{ApiConfig, derived_id};
use coffer_events::{TargetPolicy, WEBHOOKS_CONSUMER};
use coffer_ledger::Timestamp;
use coffer_store::{AttemptResult, DeliveryAttempt, KeyId, Webhook, WebhookEvent};
use coffer_testkit::Backend;
use common::*;
use serde_json::{Value, json};

coffer_testkit::on_each_backend! {
    a_keyed_create_whose_first_run_registered_the_endpoint_finds_it_on_retry,
    the_secret_is_shown_at_creation_and_never_again,
    endpoints_are_listed_oldest_first_and_their_event_types_deduplicated,
    a_deleted_endpoint_is_gone,
    an_idempotency_key_retry_replays_the_same_endpoint_without_its_secret,
    bad_bodies_are_refused_naming_the_field,
    urls_are_guarded_against_request_forgery,
    a_literal_address_in_each_special_range_is_refused_at_creation,
    plain_http_is_refused_unless_the_deployment_allows_it,
    private_addresses_are_accepted_where_the_deployment_allows_them,
    rotating_a_secret_answers_a_new_one_and_keeps_the_old_one_for_the_overlap,
    an_oversized_body_is_413,
    bad_paths_unknown_ids_and_bad_queries_are_refused,
    only_admins_manage_webhooks,
    deliveries_are_listed_newest_first_in_pages,
    a_dead_delivery_is_redelivered_from_attempt_one,
}

const TRANSFER: &str = "coffer.transfer.created";
const ACCOUNT: &str = "coffer.account.created";

/// Registers an endpoint for `event_types`, answering the whole 201 body.
async fn create(app: &App, url: &str, event_types: &[&str]) -> Value {
    let r = app.post("/v1/webhooks", json!({"url": url, "event_types": event_types})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.body
}

/// POSTs an endpoint for transfers at `url` with Idempotency-Key `key`.
async fn create_keyed(app: &App, url: &str, key: &str) -> Resp {
    let body = json!({"url": url, "event_types": [TRANSFER]}).to_string().into_bytes();
    app.send("POST", "/v1/webhooks", Some(ADMIN), Some(body), &[("idempotency-key", key)]).await
}

fn id_of(body: &Value) -> String {
    body["id"].as_str().unwrap().to_owned()
}

/// A 400 `invalid_request` whose errors name `field`.
fn assert_names(r: &Resp, field: &str, case: &str) {
    assert_eq!(r.status, 400, "{case}: {}", r.text);
    r.assert_problem(400, "invalid_request");
    let fields: Vec<&str> =
        r.body["errors"].as_array().unwrap().iter().filter_map(|e| e["field"].as_str()).collect();
    assert!(fields.contains(&field), "{case}: expected an error on {field}, got {}", r.text);
}

async fn delete(app: &App, path: &str) -> Resp {
    app.send("DELETE", path, Some(ADMIN), None, &[]).await
}

async fn redeliver(app: &App, webhook: &str, delivery: &str) -> Resp {
    let path = format!("/v1/webhooks/{webhook}/deliveries/{delivery}/redeliver");
    app.send("POST", &path, Some(ADMIN), None, &[]).await
}

async fn a_keyed_create_whose_first_run_registered_the_endpoint_finds_it_on_retry(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let keys = app.get("/v1/keys").await;
    let admin = KeyId(keys.body["data"][0]["id"].as_str().unwrap().parse().unwrap());
    // A first run under this key registered the endpoint, then lost its answer before storing it
    // (a crash, a timeout): the key holds nothing, and the retry runs the create again.
    let first = Webhook {
        id: derived_id(admin, "register-once", 0),
        url: "https://example.com/hooks/once".to_owned(),
        event_types: vec![TRANSFER.to_owned()],
        // In clear, as rows from before secrets were sealed hold them: they are still read.
        secret: format!("whsec_{}", BASE64.encode([7u8; 32])),
        previous_secret: None,
        previous_secret_expires_at: None,
        created_at: Timestamp::now(),
    };
    app.store.create_webhook(first.clone()).await.unwrap();

    let retry = create_keyed(&app, &first.url, "register-once").await;
    assert_eq!(retry.status, 201, "{}", retry.text);
    assert_eq!(retry.body["id"], first.id.to_string());
    assert_eq!(retry.body["secret"], first.secret, "the first run's endpoint, secret and all");
    let list = app.get("/v1/webhooks").await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 1, "one endpoint, not two: {}", list.text);

    // A key whose id is taken by a different endpoint is a conflict, not a silent second answer.
    let mut other = first.clone();
    other.id = derived_id(admin, "register-other", 0);
    app.store.create_webhook(other).await.unwrap();
    create_keyed(&app, "https://example.com/hooks/elsewhere", "register-other")
        .await
        .assert_problem(409, "exists_with_different_fields");
}

async fn the_secret_is_shown_at_creation_and_never_again(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let created = create(&app, "https://example.com/hooks/coffer", &[TRANSFER]).await;
    let id = id_of(&created);
    assert!(uuid::Uuid::try_parse(&id).is_ok(), "{created}");
    assert_eq!(created["url"], "https://example.com/hooks/coffer");
    assert_eq!(created["event_types"], json!([TRANSFER]));
    assert!(created["created_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{created}");
    let secret = created["secret"].as_str().unwrap();
    let key = BASE64.decode(secret.strip_prefix("whsec_").expect("a whsec_ secret")).unwrap();
    assert!((24..=64).contains(&key.len()), "a {}-byte key", key.len());

    let got = app.get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let mut without_secret = created.clone();
    without_secret.as_object_mut().unwrap().remove("secret");
    assert_eq!(got.body, without_secret);
    let list = app.get("/v1/webhooks").await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.body, json!({"data": [without_secret]}));
    let deliveries = app.get(&format!("/v1/webhooks/{id}/deliveries")).await;
    assert_eq!(deliveries.body, json!({"data": [], "next_cursor": null}));
    for r in [&got, &list, &deliveries] {
        assert!(!r.text.contains(&secret[6..]), "the secret leaked: {}", r.text);
    }

    let other = create(&app, "https://example.com/other", &[TRANSFER]).await;
    assert_ne!(other["secret"], created["secret"], "every endpoint has its own secret");
}

async fn endpoints_are_listed_oldest_first_and_their_event_types_deduplicated(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let first = create(&app, "https://a.example.com/", &[TRANSFER, ACCOUNT, TRANSFER, TRANSFER]).await;
    assert_eq!(first["event_types"], json!([TRANSFER, ACCOUNT]), "repeats collapse, order kept");
    let second = create(&app, "https://b.example.com/", &[ACCOUNT]).await;
    let third = create(&app, "https://c.example.com/", &["coffer.transfer.expired"]).await;

    let list = app.get("/v1/webhooks").await;
    let ids: Vec<&str> =
        list.body["data"].as_array().unwrap().iter().map(|w| w["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id_of(&first), id_of(&second), id_of(&third)]);
    assert_eq!(list.body["data"][0]["event_types"], json!([TRANSFER, ACCOUNT]));
    let got = app.get(&format!("/v1/webhooks/{}", id_of(&first))).await;
    assert_eq!(got.body["event_types"], json!([TRANSFER, ACCOUNT]), "stored without repeats");
}

async fn a_deleted_endpoint_is_gone(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (doomed, kept) = (
        id_of(&create(&app, "https://a.example.com/", &[TRANSFER]).await),
        create(&app, "https://b.example.com/", &[TRANSFER]).await,
    );

    let r = delete(&app, &format!("/v1/webhooks/{doomed}")).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(r.text.is_empty(), "{}", r.text);
    app.get(&format!("/v1/webhooks/{doomed}")).await.assert_problem(404, "not_found");
    app.get(&format!("/v1/webhooks/{doomed}/deliveries")).await.assert_problem(404, "not_found");
    delete(&app, &format!("/v1/webhooks/{doomed}")).await.assert_problem(404, "not_found");
    let mut kept_view = kept.clone();
    kept_view.as_object_mut().unwrap().remove("secret");
    assert_eq!(app.get("/v1/webhooks").await.body, json!({"data": [kept_view]}));
}

async fn an_idempotency_key_retry_replays_the_same_endpoint_without_its_secret(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let body = json!({"url": "https://example.com/hook", "event_types": [TRANSFER]});
    let first = app.post_keyed("/v1/webhooks", "create-hook-1", body.clone()).await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(first.header("idempotent-replayed"), None);
    let retry = app.post_keyed("/v1/webhooks", "create-hook-1", body.clone()).await;
    assert_eq!(retry.status, 201, "{}", retry.text);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    // The same endpoint; the secret is shown to the first answer only, as a key's token is, so
    // it is never written down in clear (the idempotency table keeps the answer without it).
    let mut replayed = first.body.clone();
    replayed["secret"] = Value::Null;
    assert_eq!(retry.body, replayed, "the same endpoint, its secret not shown again");
    assert!(first.body["secret"].as_str().is_some_and(|s| s.starts_with("whsec_")), "{}", first.text);
    assert_eq!(app.get("/v1/webhooks").await.body["data"].as_array().unwrap().len(), 1, "made once");

    let other = json!({"url": "https://example.com/elsewhere", "event_types": [TRANSFER]});
    app.post_keyed("/v1/webhooks", "create-hook-1", other)
        .await
        .assert_problem(422, "idempotency_key_reused");
    let fresh = app.post_keyed("/v1/webhooks", "create-hook-2", body).await;
    assert_eq!(fresh.status, 201, "{}", fresh.text);
    assert_ne!(fresh.body["id"], first.body["id"], "a new key is a new endpoint");
}

async fn bad_bodies_are_refused_naming_the_field(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let raw = |body: &'static [u8]| app.send("POST", "/v1/webhooks", Some(ADMIN), Some(body.to_vec()), &[]);
    for (case, body) in [
        ("malformed", &br#"{"url": "https://example.com/","#[..]),
        ("not json", b"hello"),
        ("an array", b"[]"),
        ("empty", b""),
        (
            "trailing garbage",
            br#"{"url": "https://example.com/", "event_types": ["coffer.transfer.created"]} x"#,
        ),
    ] {
        let r = raw(body).await;
        assert_eq!(r.status, 400, "{case}: {}", r.text);
        r.assert_problem(400, "invalid_request");
    }

    let url = "https://example.com/";
    for (case, body, field) in [
        ("url a number", json!({"url": 5, "event_types": [TRANSFER]}), "url"),
        ("url null", json!({"url": null, "event_types": [TRANSFER]}), "url"),
        ("types a string", json!({"url": url, "event_types": "x"}), "event_types"),
        ("a type a number", json!({"url": url, "event_types": [1]}), "event_types[0]"),
        ("no url", json!({"event_types": [TRANSFER]}), "url"),
        ("no types", json!({"url": url}), "event_types"),
        ("unknown field", json!({"url": url, "event_types": [TRANSFER], "secret": "whsec_x"}), "secret"),
        ("no types given", json!({"url": url, "event_types": []}), "event_types"),
        ("unknown type", json!({"url": url, "event_types": [TRANSFER, "coffer.nope"]}), "event_types[1]"),
        (
            "type in other case",
            json!({"url": url, "event_types": ["COFFER.TRANSFER.CREATED"]}),
            "event_types[0]",
        ),
    ] {
        assert_names(&app.post("/v1/webhooks", body).await, field, case);
    }
    assert_eq!(app.get("/v1/webhooks").await.body, json!({"data": []}), "nothing was created");
}

/// URLs refused whatever the deployment: wrong scheme, credentials, no host, too long.
fn always_refused() -> Vec<String> {
    vec![
        "ftp://example.com/hook".into(),
        "file:///etc/passwd".into(),
        "javascript:alert(1)".into(),
        "https://user:pass@example.com/hook".into(),
        "https://user@example.com/hook".into(),
        "http://".into(),
        "https://:443/hook".into(),
        "example.com/hook".into(),
        "".into(),
        "not a url".into(),
        format!("https://example.com/{}", "a".repeat(2048)),
        // 2020 bytes as sent, 4017 once its spaces are percent-encoded: the limit is the URL kept.
        format!("https://example.com/{}", "a ".repeat(1000)),
    ]
}

/// Addresses inside the operator's network: refused unless private networks are allowed.
const PRIVATE: &[&str] = &[
    "https://127.0.0.1/",
    "https://127.0.0.1:5432/",
    "https://10.0.0.1/",
    "https://192.168.1.10/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://[::1]/",
    "https://[::ffff:127.0.0.1]/",
    "https://localhost/",
    "https://LOCALHOST./",
    "https://api.localhost:8080/",
    "https://0.0.0.0/",
];

/// A 422 `webhook_target_refused` whose error on `url` says `why`.
fn assert_target_refused(r: &Resp, why: &str, case: &str) {
    assert_eq!(r.status, 422, "{case}: {}", r.text);
    r.assert_problem(422, "webhook_target_refused");
    let errors = r.body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{case}: {}", r.text);
    assert_eq!(errors[0]["field"], "url", "{case}: {}", r.text);
    let message = errors[0]["message"].as_str().unwrap();
    assert!(message.contains(why), "{case}: expected {why:?} in {message:?}");
}

const ALLOW_PRIVATE: TargetPolicy = TargetPolicy { allow_private_networks: true, allow_insecure_http: false };
const ALLOW_HTTP: TargetPolicy = TargetPolicy { allow_private_networks: false, allow_insecure_http: true };

async fn urls_are_guarded_against_request_forgery(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    for url in always_refused() {
        let r = app.post("/v1/webhooks", json!({"url": url, "event_types": [TRANSFER]})).await;
        assert_names(&r, "url", &url);
    }
    for url in PRIVATE {
        let r = app.post("/v1/webhooks", json!({"url": url, "event_types": [TRANSFER]})).await;
        assert_target_refused(&r, "special-purpose range", url);
    }
    assert_eq!(app.get("/v1/webhooks").await.body, json!({"data": []}), "nothing was created");

    let longest = format!("https://example.com/{}", "a".repeat(2048 - "https://example.com/".len()));
    assert_eq!(longest.len(), 2048);
    assert_eq!(create(&app, &longest, &[TRANSFER]).await["url"], longest.as_str(), "2048 bytes is fine");
    for public in
        ["https://example.com/hook", "https://93.184.215.14:8443/x?y=1", "https://[2606:4700::1111]/"]
    {
        create(&app, public, &[TRANSFER]).await;
    }
}

/// A literal address in any range of the refused table — every IANA special-purpose entry,
/// multicast, and IPv6 outside 2000::/3 — is refused when the endpoint is registered, with a
/// 422 naming the range. Nothing is connected to: the check is on the URL's text.
async fn a_literal_address_in_each_special_range_is_refused_at_creation(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let mut tried = 0;
    for range in coffer_events::ranges() {
        // An address inside: the network's second address, or the network itself for a /32 or /128.
        let (url, addr) = match range.network {
            IpAddr::V4(net) => {
                let addr = Ipv4Addr::from(u32::from(net) | u32::from(range.prefix_len < 32));
                (format!("https://{addr}/hook"), IpAddr::V4(addr))
            }
            IpAddr::V6(net) => {
                let addr = Ipv6Addr::from(u128::from(net) | u128::from(range.prefix_len < 128));
                (format!("https://[{addr}]/hook"), IpAddr::V6(addr))
            }
        };
        let naming = coffer_events::special_range(addr).expect("refused").to_string();
        let r = app.post("/v1/webhooks", json!({"url": url, "event_types": [TRANSFER]})).await;
        assert_target_refused(&r, &naming, &url);
        tried += 1;
    }
    assert!(tried > 40, "the whole table: {tried} ranges");
    assert_eq!(app.get("/v1/webhooks").await.body, json!({"data": []}), "nothing was created");
}

async fn plain_http_is_refused_unless_the_deployment_allows_it(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let r =
        app.post("/v1/webhooks", json!({"url": "http://example.com/hook", "event_types": [TRANSFER]})).await;
    assert_target_refused(&r, "plain http", "http by default");
    let Some(app) = spawn_with_services(backend, ApiConfig::default(), ALLOW_HTTP).await else { return };
    create(&app, "http://example.com/hook", &[TRANSFER]).await;
    let r = app.post("/v1/webhooks", json!({"url": "http://10.0.0.1/hook", "event_types": [TRANSFER]})).await;
    assert_target_refused(&r, "private-use", "http allowed, private networks not");
}

async fn private_addresses_are_accepted_where_the_deployment_allows_them(backend: Backend) {
    let Some(app) = spawn_with_services(backend, ApiConfig::default(), ALLOW_PRIVATE).await else { return };
    for url in PRIVATE {
        let r = app.post("/v1/webhooks", json!({"url": url, "event_types": [TRANSFER]})).await;
        assert_eq!(r.status, 201, "{url}: {}", r.text);
    }
    for url in always_refused() {
        let r = app.post("/v1/webhooks", json!({"url": url, "event_types": [TRANSFER]})).await;
        assert_names(&r, "url", &url);
    }
    let r = app.post("/v1/webhooks", json!({"url": "http://127.0.0.1/", "event_types": [TRANSFER]})).await;
    assert_target_refused(&r, "plain http", "private allowed, http not");
    assert_eq!(app.get("/v1/webhooks").await.body["data"].as_array().unwrap().len(), PRIVATE.len());
}

async fn rotate(app: &App, id: &str, body: Option<Value>) -> Resp {
    let body = body.map(|b| b.to_string().into_bytes());
    app.send("POST", &format!("/v1/webhooks/{id}/rotate-secret"), Some(ADMIN), body, &[]).await
}

/// A rotation answers a new secret (shown only then); the old one is kept, sealed, for the
/// overlap (24 h by default, 0 to drop it at once, at most 7 days), and no answer but the
/// rotation's shows a secret.
async fn rotating_a_secret_answers_a_new_one_and_keeps_the_old_one_for_the_overlap(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let created = create(&app, "https://example.com/hook", &[TRANSFER]).await;
    let (id, first) = (id_of(&created), created["secret"].as_str().unwrap().to_owned());

    let before = Timestamp::now();
    let rotated = rotate(&app, &id, None).await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    let second = rotated.body["secret"].as_str().unwrap().to_owned();
    assert!(second.starts_with("whsec_") && second != first, "{}", rotated.text);
    assert_eq!((&rotated.body["id"], &rotated.body["url"]), (&created["id"], &created["url"]));
    let stored = app.store.webhook(id.parse().unwrap()).await.unwrap().unwrap();
    let until = stored.previous_secret_expires_at.expect("the old secret is kept");
    let day = 24 * 3600 * 1_000_000;
    assert!((before.as_micros() + day..=Timestamp::now().as_micros() + day).contains(&until.as_micros()));
    assert_eq!(rotated.body["previous_secret_expires_at"], json!(until), "the answer says until when");
    for sealed in [&stored.secret, stored.previous_secret.as_ref().unwrap()] {
        assert!(sealed.starts_with("whenc1."), "{sealed}");
        assert!(!sealed.contains(&first[6..]) && !sealed.contains(&second[6..]), "sealed, not in clear");
    }
    let shown = app.get(&format!("/v1/webhooks/{id}")).await;
    assert!(!shown.text.contains(&second[6..]) && !shown.text.contains("whenc1"), "{}", shown.text);
    assert_eq!(shown.body["previous_secret_expires_at"], json!(until), "the overlap is shown");

    let cut = rotate(&app, &id, Some(json!({"overlap_seconds": 0}))).await;
    assert_eq!(cut.status, 200, "{}", cut.text);
    assert_eq!(cut.body["previous_secret_expires_at"], Value::Null);
    let stored = app.store.webhook(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!((stored.previous_secret, stored.previous_secret_expires_at), (None, None));
    assert_eq!(app.get(&format!("/v1/webhooks/{id}")).await.body["previous_secret_expires_at"], Value::Null);

    let week = rotate(&app, &id, Some(json!({"overlap_seconds": 604800}))).await;
    assert_eq!(week.status, 200, "{}", week.text);
    for (body, field) in [
        (json!({"overlap_seconds": 604801}), "overlap_seconds"),
        (json!({"overlap_seconds": -1}), "overlap_seconds"),
        (json!({"overlap": 5}), "overlap"),
    ] {
        assert_names(&rotate(&app, &id, Some(body)).await, field, field);
    }
    rotate(&app, &uuid::Uuid::now_v7().to_string(), None).await.assert_problem(404, "not_found");
    let reader = app.post("/v1/keys", json!({"scopes": ["read", "write"]})).await;
    let token = reader.body["token"].as_str().unwrap();
    let path = format!("/v1/webhooks/{id}/rotate-secret");
    app.send("POST", &path, Some(token), None, &[]).await.assert_problem(403, "forbidden");
}

/// The signing secrets are nowhere on disk in clear: not in the database file, not in its
/// write-ahead log, not in the answers the idempotency layer keeps for a retry. Only the sealed
/// text is stored, under the key the app was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        coffer_store::SqliteStore::open(dir.path(), coffer_store::StoreConfig::default()).await.unwrap();
    let app = serve_with(store, ApiConfig::default(), TargetPolicy::default(), None).await;
    let created = create_keyed(&app, "https://example.com/hook", "at-rest-create").await;
    assert_eq!(created.status, 201, "{}", created.text);
    let created = created.body;
    let path = format!("/v1/webhooks/{}/rotate-secret", id_of(&created));
    let rotated = app.send("POST", &path, Some(ADMIN), None, &[("idempotency-key", "at-rest-rotate")]).await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    let replayed = app.send("POST", &path, Some(ADMIN), None, &[("idempotency-key", "at-rest-rotate")]).await;
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
    assert_eq!(replayed.body["secret"], Value::Null, "a replay does not show the secret again");
    let secrets = [created["secret"].as_str().unwrap(), rotated.body["secret"].as_str().unwrap()];

    let stored = app.store.webhook(id_of(&created).parse().unwrap()).await.unwrap().unwrap();
    assert!(stored.secret.starts_with("whenc1."), "{}", stored.secret);
    let mut files = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        for secret in secrets {
            // The key's base64, and the key's bytes themselves.
            let key = BASE64.decode(&secret[6..]).unwrap();
            assert!(
                !contains(&bytes, &secret.as_bytes()[6..]) && !contains(&bytes, &key),
                "a secret in clear"
            );
        }
        files += 1;
    }
    assert!(files >= 2, "the database and its log were read");
    assert!(
        contains(&std::fs::read(dir.path().join("coffer.db-wal")).unwrap(), b"whenc1."),
        "rows were read"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn an_oversized_body_is_413(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    for chunked in [false, true] {
        let head = oversized_post(&app, "/v1/webhooks", 2 * 1024 * 1024, chunked).await;
        assert!(head.starts_with("HTTP/1.1 413 "), "chunked: {chunked}: {head}");
        assert!(head.contains("content-type: application/problem+json"), "{head}");
    }
}

/// POSTs `total` bytes of whitespace over a raw connection, reading the answer while still
/// sending: the server answers (and closes) before the end, so an ordinary client might see a
/// broken pipe instead of the answer. Answers the response head.
async fn oversized_post(app: &App, path: &str, total: usize, chunked: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.base.trim_start_matches("http://");
    let (mut read, mut write) = tokio::net::TcpStream::connect(addr).await.unwrap().into_split();
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = read.read(&mut chunk).await {
            buf.extend_from_slice(&chunk[..n]);
            if n == 0 || buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    });
    let framing =
        if chunked { "transfer-encoding: chunked".to_owned() } else { format!("content-length: {total}") };
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {ADMIN}\r\n\
         content-type: application/json\r\n{framing}\r\n\r\n"
    );
    let piece = vec![b' '; 64 * 1024];
    let mut ok = write.write_all(head.as_bytes()).await.is_ok();
    let mut sent = 0;
    while ok && sent < total {
        ok = if chunked {
            let framed = [format!("{:x}\r\n", piece.len()).as_bytes(), &piece, b"\r\n"].concat();
            write.write_all(&framed).await.is_ok()
        } else {
            write.write_all(&piece).await.is_ok()
        };
        sent += piece.len();
    }
    if ok && chunked {
        let _ = write.write_all(b"0\r\n\r\n").await;
    }
    reader.await.unwrap()
}

async fn bad_paths_unknown_ids_and_bad_queries_are_refused(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let hook = id_of(&create(&app, "https://example.com/", &[TRANSFER]).await);
    let missing = uuid();
    // A list that takes no parameters refuses them rather than ignoring them.
    for path in ["/v1/webhooks?limit=5", "/v1/keys?cursor=x"] {
        app.get(path).await.assert_problem(400, "invalid_request");
    }

    for (method, path, field) in [
        ("GET", "/v1/webhooks/not-a-uuid".to_owned(), "id"),
        ("DELETE", "/v1/webhooks/123".to_owned(), "id"),
        ("GET", "/v1/webhooks/xyz/deliveries".to_owned(), "id"),
        ("POST", format!("/v1/webhooks/xyz/deliveries/{missing}/redeliver"), "id"),
        ("POST", format!("/v1/webhooks/{hook}/deliveries/xyz/redeliver"), "delivery_id"),
    ] {
        assert_names(&app.send(method, &path, Some(ADMIN), None, &[]).await, field, &path);
    }

    app.get(&format!("/v1/webhooks/{missing}")).await.assert_problem(404, "not_found");
    delete(&app, &format!("/v1/webhooks/{missing}")).await.assert_problem(404, "not_found");
    app.get(&format!("/v1/webhooks/{missing}/deliveries")).await.assert_problem(404, "not_found");
    redeliver(&app, &missing, &uuid()).await.assert_problem(404, "not_found");
    redeliver(&app, &hook, &uuid()).await.assert_problem(404, "not_found");

    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=-1", "limit"),
        ("limit=x", "limit"),
        ("limit=", "limit"),
        ("cursor=x", "cursor"),
        ("limit=1&limit=2", "query"),
        ("colour=red", "colour"),
    ] {
        assert_names(&app.get(&format!("/v1/webhooks/{hook}/deliveries?{query}")).await, field, query);
    }
    for query in ["limit=1".to_owned(), "limit=1000".to_owned(), format!("cursor={missing}")] {
        let r = app.get(&format!("/v1/webhooks/{hook}/deliveries?{query}")).await;
        assert_eq!(r.status, 200, "{query}: {}", r.text);
    }
    app.send("PUT", "/v1/webhooks", Some(ADMIN), None, &[]).await.assert_problem(405, "method_not_allowed");
}

async fn only_admins_manage_webhooks(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let hook = id_of(&create(&app, "https://example.com/", &[TRANSFER]).await);
    let (_, reader) = app.key(&["read"], None).await;
    let (_, writer) = app.key(&["write"], None).await;
    let body = json!({"url": "https://example.com/x", "event_types": [TRANSFER]}).to_string().into_bytes();
    let routes = [
        ("POST", "/v1/webhooks".to_owned(), Some(body)),
        ("GET", "/v1/webhooks".to_owned(), None),
        ("GET", format!("/v1/webhooks/{hook}"), None),
        ("DELETE", format!("/v1/webhooks/{hook}"), None),
        ("GET", format!("/v1/webhooks/{hook}/deliveries"), None),
        ("POST", format!("/v1/webhooks/{hook}/deliveries/{}/redeliver", uuid()), None),
    ];
    for (method, path, body) in &routes {
        for token in [&reader, &writer] {
            let r = app.send(method, path, Some(token), body.clone(), &[]).await;
            r.assert_problem(403, "forbidden");
        }
        app.send(method, path, None, body.clone(), &[]).await.assert_problem(401, "unauthorized");
        app.send(method, path, Some("not-a-key"), body.clone(), &[])
            .await
            .assert_problem(401, "unauthorized");
    }
    let list = app.get("/v1/webhooks").await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 1, "nothing created or deleted: {}", list.text);
}

/// `n` events of `kind`, as the webhook consumer hands them to the store.
fn events(kind: &str, n: usize) -> Vec<WebhookEvent> {
    (0..n)
        .map(|i| WebhookEvent {
            id: uuid::Uuid::now_v7(),
            kind: kind.to_owned(),
            payload: json!({"type": kind, "n": i}).to_string(),
        })
        .collect()
}

async fn deliveries_are_listed_newest_first_in_pages(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let hook = id_of(&create(&app, "https://example.com/", &[TRANSFER]).await);
    let other = id_of(&create(&app, "https://example.com/accounts", &[ACCOUNT]).await);
    let batch = events(TRANSFER, 5);
    let enqueued = app.store.enqueue_deliveries(WEBHOOKS_CONSUMER, &batch, Timestamp::now()).await.unwrap();
    assert_eq!(enqueued, 5);

    let all = app.get(&format!("/v1/webhooks/{hook}/deliveries")).await;
    assert_eq!(all.status, 200, "{}", all.text);
    assert_eq!(all.body["next_cursor"], Value::Null);
    let listed = all.body["data"].as_array().unwrap();
    let event_ids: Vec<&str> = listed.iter().map(|d| d["event_id"].as_str().unwrap()).collect();
    let newest_first: Vec<String> = batch.iter().rev().map(|e| e.id.to_string()).collect();
    assert_eq!(event_ids, newest_first);
    let first = &listed[0];
    assert_eq!(first["event_type"], TRANSFER);
    assert_eq!(first["status"], "pending");
    assert_eq!(first["attempts"], 0);
    assert!(first["next_attempt_at"].is_string(), "{first}");
    assert_eq!(first["last_status_code"], Value::Null);
    assert_eq!(first["last_error"], Value::Null);
    assert!(first["created_at"].is_string() && first["updated_at"].is_string(), "{first}");
    assert!(first.get("payload").is_none(), "{first}");

    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    for expected_len in [2, 2, 1] {
        let query = cursor.as_ref().map_or(String::new(), |c| format!("&cursor={c}"));
        let page = app.get(&format!("/v1/webhooks/{hook}/deliveries?limit=2{query}")).await;
        assert_eq!(page.status, 200, "{}", page.text);
        let data = page.body["data"].as_array().unwrap();
        assert_eq!(data.len(), expected_len, "{}", page.text);
        paged.extend(data.iter().map(|d| d["id"].clone()));
        cursor = page.body["next_cursor"].as_str().map(str::to_owned);
        if expected_len == 2 {
            assert_eq!(page.body["next_cursor"], data[1]["id"]);
        }
    }
    assert_eq!(cursor, None, "the last page has no next cursor");
    let all_ids: Vec<Value> = listed.iter().map(|d| d["id"].clone()).collect();
    assert_eq!(paged, all_ids, "the pages are the whole list, in order, without repeats");

    let other_list = app.get(&format!("/v1/webhooks/{other}/deliveries")).await;
    assert_eq!(other_list.body["data"], json!([]), "not subscribed to transfers");
}

async fn a_dead_delivery_is_redelivered_from_attempt_one(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let hook = id_of(&create(&app, "https://example.com/", &[TRANSFER]).await);
    let other = id_of(&create(&app, "https://example.com/other", &[TRANSFER]).await);
    app.store.enqueue_deliveries(WEBHOOKS_CONSUMER, &events(TRANSFER, 1), Timestamp::now()).await.unwrap();
    let delivery = app.store.deliveries(hook.parse().unwrap(), None, 10).await.unwrap().pop().unwrap();
    let dead = DeliveryAttempt {
        at: Timestamp::now(),
        status_code: Some(500),
        error: Some("the receiver answered 500".into()),
        next: AttemptResult::Dead,
    };
    app.store.record_attempt(delivery.id, dead).await.unwrap();
    let id = delivery.id.to_string();

    let listed = app.get(&format!("/v1/webhooks/{hook}/deliveries")).await;
    let shown = &listed.body["data"][0];
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["status"], "dead");
    assert_eq!(shown["attempts"], 1);
    assert_eq!(shown["last_status_code"], 500);
    assert_eq!(shown["last_error"], "the receiver answered 500");

    redeliver(&app, &other, &id).await.assert_problem(404, "not_found");
    assert_eq!(app.store.delivery(delivery.id).await.unwrap().unwrap().attempts, 1, "untouched");

    let r = redeliver(&app, &hook, &id).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let listed = app.get(&format!("/v1/webhooks/{hook}/deliveries")).await;
    let shown = &listed.body["data"][0];
    assert_eq!(shown["status"], "pending", "{shown}");
    assert_eq!(shown["attempts"], 0, "{shown}");
    assert!(shown["next_attempt_at"].is_string(), "due now: {shown}");

    let r = redeliver(&app, &hook, &id).await;
    assert_eq!(r.status, 202, "a pending delivery may be hurried too: {}", r.text);
    assert_eq!(delete(&app, &format!("/v1/webhooks/{hook}")).await.status, 204);
    redeliver(&app, &hook, &id).await.assert_problem(404, "not_found");
    assert_eq!(app.store.delivery(delivery.id).await.unwrap(), None, "deleted with its endpoint");
}
