//! The API's main flows end to end over HTTP: the README walk-through, holds, batches, lists.

mod common;

use std::time::{Duration, Instant};

use coffer_testkit::Backend;
use common::{spawn, uuid};
use serde_json::json;

coffer_testkit::on_each_backend! {
    #![tokio::test(flavor = "multi_thread", worker_threads = 2)]
    readme_walk_through,
    holds_post_void_and_their_rules,
    a_hold_expires_after_its_timeout,
    batches_atomic_and_not,
    lists_page_with_cursors_and_filters,
}

async fn readme_walk_through(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let r = app.post("/v1/ledgers", json!({"code": "USD", "scale": 2})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["code"], "USD");
    assert_eq!(r.body["scale"], 2);

    let wallet = "0196a000-0000-7000-8000-000000000001";
    let funding = "0196a000-0000-7000-8000-000000000002";
    let r = app
        .post(
            "/v1/accounts",
            json!({"id": wallet, "ledger": "USD", "flags": {"debits_must_not_exceed_credits": true}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["flags"]["debits_must_not_exceed_credits"], true);
    assert_eq!(r.body["balance"]["credits_posted"], 0);
    let r = app.post("/v1/accounts", json!({"id": funding, "ledger": "USD"})).await;
    assert_eq!(r.status, 201, "{}", r.text);

    let fund = json!({"id": "0196a000-0000-7000-8000-0000000000a1", "debit_account_id": funding,
        "credit_account_id": wallet, "amount": 10000, "ledger": "USD"});
    let r = app.post("/v1/transfers", fund.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "posted");
    assert!(r.header("idempotent-replayed").is_none());
    let again = app.post("/v1/transfers", fund).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, r.body);

    let hold = "0196a000-0000-7000-8000-0000000000b1";
    let r = app
        .post(
            "/v1/transfers",
            json!({"id": hold, "debit_account_id": wallet, "credit_account_id": funding, "amount": 2500,
                "ledger": "USD", "pending": true, "timeout_seconds": 300}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "pending");
    assert!(r.body["timeout_at"].is_string());
    let balance = app.balance(wallet).await;
    assert_eq!(balance["debits_pending"], 2500);

    let r =
        app.post_keyed(&format!("/v1/transfers/{hold}/post"), "post-b1-once", json!({"amount": 2000})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["pending_id"], hold);
    assert_eq!(r.body["amount"], 2000);
    assert_eq!(r.body["status"], "posted");

    let balance = app.balance(wallet).await;
    assert_eq!(
        balance,
        json!({"debits_pending": 0, "debits_posted": 2000, "credits_pending": 0, "credits_posted": 10000})
    );
    assert_eq!(app.get(&format!("/v1/transfers/{hold}")).await.body["status"], "posted");

    let r = app.get(&format!("/v1/accounts/{wallet}/transfers?limit=10")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["data"].as_array().unwrap().len(), 3);
    assert_eq!(r.body["next_cursor"], serde_json::Value::Null);

    // Overdrawing the wallet is refused by the rule, as a problem with its code.
    let r = app
        .post(
            "/v1/transfers",
            json!({"debit_account_id": wallet, "credit_account_id": funding, "amount": 8001, "ledger": "USD"}),
        )
        .await;
    r.assert_problem(422, "insufficient_funds");

    let r = app.get("/v1/ledgers/USD").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["code"], "USD");
    app.get("/v1/ledgers/EUR").await.assert_problem(404, "not_found");
    app.get(&format!("/v1/accounts/{}", uuid())).await.assert_problem(404, "not_found");
    app.get(&format!("/v1/transfers/{}", uuid())).await.assert_problem(404, "not_found");
}

async fn holds_post_void_and_their_rules(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (a, b) = app.two_accounts("USD").await;
    let hold = |amount: u64| {
        json!({"debit_account_id": a, "credit_account_id": b, "amount": amount,
        "ledger": "USD", "pending": true})
    };

    // Post part of a hold; the rest is released. Posting again is refused.
    let h1 = app.post("/v1/transfers", hold(100)).await.body["id"].as_str().unwrap().to_owned();
    let r = app.post(&format!("/v1/transfers/{h1}/post"), json!({"amount": 60})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    app.post(&format!("/v1/transfers/{h1}/post"), json!({}))
        .await
        .assert_problem(422, "pending_transfer_already_posted");
    app.post(&format!("/v1/transfers/{h1}/void"), json!({}))
        .await
        .assert_problem(422, "pending_transfer_already_posted");

    // Void a hold; it cannot be posted afterwards. The body may be left out entirely.
    let h2 = app.post("/v1/transfers", hold(50)).await.body["id"].as_str().unwrap().to_owned();
    let r = app.send("POST", &format!("/v1/transfers/{h2}/void"), Some(common::ADMIN), None, &[]).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "voided");
    app.post(&format!("/v1/transfers/{h2}/post"), json!({}))
        .await
        .assert_problem(422, "pending_transfer_already_voided");

    // Too much, or a transfer that is not a hold, or none at all.
    let h3 = app.post("/v1/transfers", hold(10)).await.body["id"].as_str().unwrap().to_owned();
    app.post(&format!("/v1/transfers/{h3}/post"), json!({"amount": 11}))
        .await
        .assert_problem(422, "amount_exceeds_pending_amount");
    let plain = app
        .post(
            "/v1/transfers",
            json!({"debit_account_id": a, "credit_account_id": b, "amount": 1,
        "ledger": "USD"}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.post(&format!("/v1/transfers/{plain}/post"), json!({}))
        .await
        .assert_problem(422, "pending_transfer_not_pending");
    app.post(&format!("/v1/transfers/{}/post", uuid()), json!({}))
        .await
        .assert_problem(422, "pending_transfer_not_found");

    let balance = app.balance(&a).await;
    assert_eq!(balance["debits_pending"], 10);
    assert_eq!(balance["debits_posted"], 61);
}

async fn a_hold_expires_after_its_timeout(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (a, b) = app.two_accounts("USD").await;
    let r = app
        .post(
            "/v1/transfers",
            json!({"debit_account_id": a, "credit_account_id": b, "amount": 70,
            "ledger": "USD", "pending": true, "timeout_seconds": 1}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(app.balance(&a).await["debits_pending"], 70);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = app.get(&format!("/v1/transfers/{id}")).await.body["status"].clone();
        if status == "expired" {
            break;
        }
        assert!(Instant::now() < deadline, "the hold never expired: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.balance(&a).await["debits_pending"], 0);
    app.post(&format!("/v1/transfers/{id}/post"), json!({}))
        .await
        .assert_problem(422, "pending_transfer_expired");
}

async fn batches_atomic_and_not(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (a, b) = app.two_accounts("USD").await;
    let guarded = app.account("USD", json!({"debits_must_not_exceed_credits": true})).await;
    let t = |from: &str, to: &str, amount: u64| {
        json!({"debit_account_id": from, "credit_account_id": to,
        "amount": amount, "ledger": "USD"})
    };

    // Not atomic: the failing item fails alone.
    let hold_id = uuid();
    let mut held = t(&a, &b, 30);
    held["id"] = json!(hold_id);
    held["pending"] = json!(true);
    let r =
        app.post("/v1/transfers/batch", json!({"transfers": [t(&a, &b, 5), t(&guarded, &b, 1), held]})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let results = r.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["status"], "created");
    assert_eq!(results[0]["index"], 0);
    assert_eq!(results[0]["transfer"]["amount"], 5);
    assert_eq!(results[1]["status"], "failed");
    assert_eq!(results[1]["error"]["code"], "insufficient_funds");
    assert!(results[1].get("transfer").is_none());
    assert_eq!(results[2]["status"], "created");

    // Posts and voids ride in batches too.
    let r = app
        .post("/v1/transfers/batch", json!({"transfers": [{"post_pending_id": hold_id, "amount": 10}]}))
        .await;
    assert_eq!(r.body["results"][0]["status"], "created", "{}", r.text);
    assert_eq!(r.body["results"][0]["transfer"]["pending_id"], hold_id);

    // Atomic: one failure and nothing applies; the others say linked_item_failed.
    let before = app.balance(&a).await;
    let r = app
        .post(
            "/v1/transfers/batch",
            json!({"atomic": true, "transfers": [t(&a, &b, 7), t(&guarded, &b, 1), t(&b, &a, 3)]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let codes: Vec<_> =
        r.body["results"].as_array().unwrap().iter().map(|x| x["error"]["code"].clone()).collect();
    assert_eq!(
        codes,
        vec![json!("linked_item_failed"), json!("insufficient_funds"), json!("linked_item_failed")]
    );
    assert_eq!(app.balance(&a).await, before);

    // The same batch with client ids twice: the second run reports "exists".
    let mut item = t(&a, &b, 1);
    item["id"] = json!(uuid());
    let body = json!({"atomic": true, "transfers": [item]});
    assert_eq!(app.post("/v1/transfers/batch", body.clone()).await.body["results"][0]["status"], "created");
    assert_eq!(app.post("/v1/transfers/batch", body).await.body["results"][0]["status"], "exists");
}

async fn lists_page_with_cursors_and_filters(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (a, b) = app.two_accounts("USD").await;
    app.ledger("EUR").await;
    let _other = app.account("EUR", json!({})).await;
    for amount in 1..=7u64 {
        let r = app
            .post(
                "/v1/transfers",
                json!({"debit_account_id": a, "credit_account_id": b, "amount": amount,
                "ledger": "USD"}),
            )
            .await;
        assert_eq!(r.status, 201);
    }

    let mut seen = Vec::new();
    let mut path = format!("/v1/transfers?account_id={a}&limit=3");
    loop {
        let r = app.get(&path).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let data = r.body["data"].as_array().unwrap();
        assert!(data.len() <= 3);
        seen.extend(data.iter().map(|t| t["amount"].as_u64().unwrap()));
        match r.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/transfers?account_id={a}&limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, (1..=7).collect::<Vec<_>>());

    let r = app.get("/v1/accounts?ledger=USD").await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 2, "{}", r.text);
    let r = app.get("/v1/accounts?ledger=EUR&limit=1").await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 1);
    let r = app.get("/v1/ledgers?limit=1").await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 1);
    let cursor = r.body["next_cursor"].as_str().expect("a second ledger page").to_owned();
    let r = app.get(&format!("/v1/ledgers?limit=1&cursor={cursor}")).await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 1);
    let r = app.get(&format!("/v1/accounts/{b}/transfers?limit=1000")).await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 7);

    let r = app.post("/v1/accounts", json!({"ledger": "USD", "external_ref": "user-42"})).await;
    let r2 = app.get("/v1/accounts?external_ref=user-42").await;
    assert_eq!(r2.body["data"][0]["id"], r.body["id"]);
}
