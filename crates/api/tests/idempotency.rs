//! Safe to retry, always: client-chosen ids, Idempotency-Key replays, and concurrent retries that
//! must move the money exactly once.

mod common;

use std::sync::Arc;

use coffer_testkit::Backend;
use common::{ADMIN, App, spawn, uuid};
use serde_json::{Value, json};

coffer_testkit::on_each_backend! {
    #![tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_client_id_applies_once_and_refuses_different_fields,
    an_idempotency_key_replays_the_first_answer,
    a_replayed_key_creation_never_shows_the_token,
    sixty_four_concurrent_retries_move_the_money_once,
}

async fn a_client_id_applies_once_and_refuses_different_fields(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (a, b) = app.two_accounts("USD").await;
    let id = uuid();
    let body =
        json!({"id": id, "debit_account_id": a, "credit_account_id": b, "amount": 40, "ledger": "USD"});
    let first = app.post("/v1/transfers", body.clone()).await;
    assert_eq!(first.status, 201);
    let retry = app.post("/v1/transfers", body.clone()).await;
    assert_eq!(retry.status, 200);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.body, first.body);
    let mut other = body;
    other["amount"] = json!(41);
    app.post("/v1/transfers", other).await.assert_problem(409, "exists_with_different_fields");
    assert_eq!(app.balance(&a).await["debits_posted"], 40);

    // The same holds for accounts.
    let account = json!({"id": uuid(), "ledger": "USD", "code": 3});
    assert_eq!(app.post("/v1/accounts", account.clone()).await.status, 201);
    assert_eq!(app.post("/v1/accounts", account.clone()).await.status, 200);
    let mut changed = account;
    changed["code"] = json!(4);
    app.post("/v1/accounts", changed).await.assert_problem(409, "exists_with_different_fields");
}

async fn an_idempotency_key_replays_the_first_answer(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (a, b) = app.two_accounts("USD").await;
    let body = json!({"debit_account_id": a, "credit_account_id": b, "amount": 9, "ledger": "USD"});

    let first = app.post_keyed("/v1/transfers", "pay-1", body.clone()).await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert!(first.header("idempotent-replayed").is_none());
    // Without an id in the body, the id is derived from the key (UUIDv8), not random.
    let id = uuid::Uuid::parse_str(first.body["id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 8);

    let again = app.post_keyed("/v1/transfers", "pay-1", body.clone()).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.text, first.text);
    assert_eq!(app.balance(&a).await["debits_posted"], 9);

    let mut different = body.clone();
    different["amount"] = json!(10);
    app.post_keyed("/v1/transfers", "pay-1", different).await.assert_problem(422, "idempotency_key_reused");
    // The key covers the path too.
    app.post_keyed("/v1/accounts", "pay-1", json!({"ledger": "USD"}))
        .await
        .assert_problem(422, "idempotency_key_reused");

    // 4xx answers are kept as well: the retry gets the same refusal, replayed.
    let guarded = app.account("USD", json!({"debits_must_not_exceed_credits": true})).await;
    let overdraw = json!({"debit_account_id": guarded, "credit_account_id": b, "amount": 1, "ledger": "USD"});
    let refused = app.post_keyed("/v1/transfers", "overdraw", overdraw.clone()).await;
    refused.assert_problem(422, "insufficient_funds");
    let replayed = app.post_keyed("/v1/transfers", "overdraw", overdraw).await;
    replayed.assert_problem(422, "insufficient_funds");
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));

    // Keys are per principal: another key's "pay-1" is its own request.
    let (_, writer) = app.key(&["write"], None).await;
    let body_text = Some(body.to_string().into_bytes());
    let theirs =
        app.send("POST", "/v1/transfers", Some(&writer), body_text, &[("idempotency-key", "pay-1")]).await;
    assert_eq!(theirs.status, 201, "{}", theirs.text);
    assert!(theirs.header("idempotent-replayed").is_none());
    assert_ne!(theirs.body["id"], first.body["id"]);
}

async fn a_replayed_key_creation_never_shows_the_token(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let body = json!({"name": "ci", "scopes": ["write"]});
    let first = app.post_keyed("/v1/keys", "make-ci-key", body.clone()).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let token = first.body["token"].as_str().unwrap().to_owned();
    let again = app.post_keyed("/v1/keys", "make-ci-key", body).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(again.body["token"], Value::Null);
    assert!(!again.text.contains(&token));
    // One key was made, and it works.
    assert_eq!(app.get("/v1/keys").await.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(app.get_as(&token, "/v1/ledgers").await.status, 200);
}

/// Sends `body` to `path` from `n` clients at once, each on its own connection.
async fn concurrently(
    app: &Arc<App>,
    n: usize,
    path: &'static str,
    body: Value,
    key: Option<&'static str>,
) -> Vec<(u16, Option<String>)> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let app = app.clone();
        let body = body.to_string();
        tasks.spawn(async move {
            let client = reqwest::Client::new();
            let mut req =
                client.post(app.url(path)).bearer_auth(ADMIN).header("content-type", "application/json");
            if let Some(key) = key {
                req = req.header("idempotency-key", key);
            }
            let res = req.body(body).send().await.unwrap();
            let replayed = res.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap().to_owned());
            (res.status().as_u16(), replayed)
        });
    }
    tasks.join_all().await
}

async fn sixty_four_concurrent_retries_move_the_money_once(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let app = Arc::new(app);
    let (a, b) = app.two_accounts("USD").await;

    // The same transfer (same id) from 64 clients at once.
    let body =
        json!({"id": uuid(), "debit_account_id": a, "credit_account_id": b, "amount": 100, "ledger": "USD"});
    let answers = concurrently(&app, 64, "/v1/transfers", body, None).await;
    let created = answers.iter().filter(|(s, _)| *s == 201).count();
    let replayed = answers.iter().filter(|(s, r)| *s == 200 && r.as_deref() == Some("true")).count();
    assert_eq!((created, replayed), (1, 63), "{answers:?}");
    assert_eq!(app.balance(&a).await["debits_posted"], 100);

    // The same Idempotency-Key without an id from 64 clients at once: one runs, the others are
    // told it is in flight or get its answer replayed.
    let body = json!({"debit_account_id": a, "credit_account_id": b, "amount": 1000, "ledger": "USD"});
    let answers = concurrently(&app, 64, "/v1/transfers", body, Some("same-key")).await;
    for (status, replayed) in &answers {
        match status {
            201 | 200 => {}
            409 => assert!(replayed.is_none()),
            other => panic!("unexpected {other}: {answers:?}"),
        }
    }
    let first_runs = answers.iter().filter(|(s, r)| *s == 201 && r.is_none()).count();
    assert_eq!(first_runs, 1, "{answers:?}");
    assert_eq!(app.balance(&a).await["debits_posted"], 1100);
    let list = app.get(&format!("/v1/transfers?account_id={a}")).await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 2, "{}", list.text);
}
