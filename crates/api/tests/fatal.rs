//! A damaged row or a broken invariant met by a request stops the server's store: that request
//! and every later write get 500 `internal` (never a 503 to retry against the same server),
//! `/readyz` turns 503 for good, and reads of intact records go on until the process exits.

mod common;

use coffer_store::StoreError;
use coffer_testkit::Backend;
use common::{Resp, spawn};
use serde_json::json;

coffer_testkit::on_each_backend! {
    #![tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_damaged_row_is_a_500_and_stops_writes_and_readiness_but_not_reads,
    any_read_a_request_makes_stops_the_store_on_damage,
}

fn assert_internal(r: &Resp) {
    r.assert_problem(500, "internal");
    assert!(r.header("retry-after").is_none(), "a fatal error is no invitation to retry here: {}", r.text);
    assert!(!r.text.contains("not json") && !r.text.contains("column"), "internals stay in: {}", r.text);
}

async fn a_damaged_row_is_a_500_and_stops_writes_and_readiness_but_not_reads(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    app.ledger("USD").await;
    let sound = app.account("USD", json!({})).await;
    let r = app.post("/v1/accounts", json!({"ledger": "USD", "external_ref": "damaged"})).await;
    let damaged = r.body["id"].as_str().unwrap().to_owned();
    app.tamper("UPDATE accounts SET metadata = 'not json' WHERE external_ref = 'damaged'").await;

    assert_internal(&app.get(&format!("/v1/accounts/{damaged}")).await);
    let cause = app.store.halt().cause().expect("the store stopped");
    assert!(matches!(cause, StoreError::Corrupt { .. }), "{cause:?}");

    let write =
        json!({"debit_account_id": sound, "credit_account_id": damaged, "amount": 1, "ledger": "USD"});
    assert_internal(&app.post("/v1/transfers", write).await);
    assert_internal(&app.post("/v1/ledgers", json!({"code": "EUR", "scale": 2})).await);
    assert_eq!(app.get(&format!("/v1/accounts/{sound}")).await.status, 200, "reads go on");
    let ready = app.send("GET", "/readyz", None, None, &[]).await;
    ready.assert_problem(503, "unavailable");
    assert_eq!(app.send("GET", "/healthz", None, None, &[]).await.status, 200, "the process is alive");
}

/// Reads the store does not watch itself (keys, webhooks, dead letters) stop it through the
/// API's outermost layer.
async fn any_read_a_request_makes_stops_the_store_on_damage(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let r = app.post("/v1/keys", json!({"name": "damaged", "scopes": ["read"]})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    app.tamper("UPDATE api_keys SET scopes = 'nonsense' WHERE name = 'damaged'").await;

    assert_internal(&app.get("/v1/keys").await);
    assert!(app.store.halt().cause().is_some_and(|e| e.is_fatal()), "the store stopped");
    assert_internal(&app.post("/v1/ledgers", json!({"code": "USD", "scale": 2})).await);
}
