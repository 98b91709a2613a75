//! `GET /v1/audit` and what lands in it: every administrative action through the API with its
//! actor, target, client address and request id; refusals and failed-authentication floods,
//! throttled; filters and the cursor; the scope; the chain, recomputed from the answers alone;
//! and the `coffer.audit.recorded` event of each record.

mod common;

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use coffer_api::ApiConfig;
use coffer_events::TargetPolicy;
use coffer_ledger::Timestamp;
use coffer_store::audit::{AUDIT_EVENT_TYPE, link};
use coffer_store::chain::ChainHash;
use coffer_store::{AuditRecord, DeadLetter, OutboxEvent, WebhookEvent};
use coffer_testkit::Backend;
use common::{ADMIN, App, spawn, spawn_with, spawn_with_services, uuid};
use serde_json::{Map, Value, json};

coffer_testkit::on_each_backend! {
    #![tokio::test(flavor = "multi_thread", worker_threads = 2)]
    every_admin_action_is_recorded_with_who_where_and_which_request,
    the_trail_needs_the_audit_scope_and_filters_strictly,
    refusals_for_scope_are_recorded_once_per_key_and_route,
    an_address_running_out_of_failed_authentications_is_recorded_once,
    only_audit_keys_see_audit_events_on_the_stream,
}

/// Every record, page by page through the cursor.
async fn trail(app: &App, token: &str, query: &str) -> Vec<Value> {
    let (mut records, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let after = cursor.map(|c| format!("&cursor={c}")).unwrap_or_default();
        let r = app.get_as(token, &format!("/v1/audit?limit=3{query}{after}")).await;
        assert_eq!(r.status, 200, "{}", r.text);
        records.extend(r.body["data"].as_array().unwrap().iter().cloned());
        match r.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return records,
        }
    }
}

/// A record as the API shows it, read back into the store's type to recompute its hash.
fn record(json: &Value) -> AuditRecord {
    let text = |field: &str| json[field].as_str().map(str::to_owned);
    AuditRecord {
        position: json["position"].as_i64().unwrap(),
        id: json["id"].as_str().unwrap().parse().unwrap(),
        time: serde_json::from_value::<Timestamp>(json["time"].clone()).unwrap(),
        actor: text("actor").unwrap(),
        action: text("action").unwrap(),
        target: text("target").unwrap(),
        client_address: text("client_address"),
        request_id: text("request_id"),
        outcome: text("outcome").unwrap(),
        details: json["details"].as_object().cloned().unwrap_or_else(Map::new),
        hash: ChainHash::from_hex(json["hash"].as_str().unwrap()).unwrap(),
    }
}

/// Recomputes every hash from the answers: each record links to the one before it.
fn assert_chained(records: &[Value]) {
    let mut previous = ChainHash::GENESIS;
    for (i, json) in records.iter().enumerate() {
        let record = record(json);
        assert_eq!(record.position, i as i64 + 1, "{json}");
        assert_eq!(
            link(&previous, &record).to_hex(),
            json["hash"],
            "record {} does not link",
            record.position
        );
        previous = record.hash;
    }
}

/// Waits for a record written off the request path.
async fn eventually(app: &App, query: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = trail(app, ADMIN, query).await;
        if !found.is_empty() || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn every_admin_action_is_recorded_with_who_where_and_which_request(backend: Backend) {
    let targets = TargetPolicy { allow_private_networks: true, allow_insecure_http: true };
    let Some(app) = spawn_with_services(backend, ApiConfig::default(), targets).await else { return };
    let admin_id = app.get("/v1/keys").await.body["data"][0]["id"].as_str().unwrap().to_owned();
    let req = |id: &'static str| [("x-request-id", id)];

    let r = app
        .send("POST", "/v1/keys", Some(ADMIN), Some(br#"{"scopes":["audit"]}"#.to_vec()), &req("r-create"))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let key = r.body["id"].as_str().unwrap().to_owned();
    let r = app.send("POST", &format!("/v1/keys/{key}/rotate"), Some(ADMIN), None, &req("r-rotate")).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let rotated = r.body["key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.send("DELETE", &format!("/v1/keys/{rotated}"), Some(ADMIN), None, &req("r-revoke")).await.status,
        204
    );
    let missing = app.send("DELETE", &format!("/v1/keys/{}", uuid()), Some(ADMIN), None, &[]).await;
    missing.assert_problem(404, "not_found");

    let body = json!({"url": "http://127.0.0.1:9/hook", "event_types": [AUDIT_EVENT_TYPE]});
    let r = app
        .send("POST", "/v1/webhooks", Some(ADMIN), Some(body.to_string().into_bytes()), &req("r-hook"))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let hook = r.body["id"].as_str().unwrap().to_owned();
    let r = app
        .send("POST", &format!("/v1/webhooks/{hook}/rotate-secret"), Some(ADMIN), None, &req("r-secret"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let event =
        WebhookEvent { id: uuid::Uuid::now_v7(), kind: AUDIT_EVENT_TYPE.into(), payload: "{}".into() };
    assert_eq!(app.store.enqueue_deliveries("webhooks", &[event], Timestamp::now()).await.unwrap(), 1);
    let delivery = app.get(&format!("/v1/webhooks/{hook}/deliveries")).await.body["data"][0]["id"].clone();
    let path = format!("/v1/webhooks/{hook}/deliveries/{}/redeliver", delivery.as_str().unwrap());
    assert_eq!(app.send("POST", &path, Some(ADMIN), None, &req("r-redeliver")).await.status, 202);

    let letter = dead_letter(&app).await;
    let r = app
        .send("POST", &format!("/v1/admin/dead-letters/{letter}/replay"), Some(ADMIN), None, &req("r-replay"))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let other = dead_letter(&app).await;
    let r = app
        .send("DELETE", &format!("/v1/admin/dead-letters/{other}"), Some(ADMIN), None, &req("r-discard"))
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = app
        .send("POST", "/v1/admin/projections/ledger-volumes/rebuild", Some(ADMIN), None, &req("r-rebuild"))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(
        eventually(&app, "&action=projection.rebuilt").await.len(),
        1,
        "the rebuild's reset is recorded"
    );
    let r = app.send("DELETE", &format!("/v1/webhooks/{hook}"), Some(ADMIN), None, &req("r-unhook")).await;
    assert_eq!(r.status, 204, "{}", r.text);

    let records = trail(&app, ADMIN, "").await;
    assert_chained(&records);
    let seen: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["target"].as_str().unwrap(),
                r["request_id"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    let admin_target = format!("key:{admin_id}");
    let (key_t, hook_t) = (format!("key:{key}"), format!("webhook:{hook}"));
    let (letter_t, other_t) = (format!("dead_letter:{letter}"), format!("dead_letter:{other}"));
    assert_eq!(
        seen,
        [
            ("key.created", admin_target.as_str(), "-"),
            ("key.created", key_t.as_str(), "r-create"),
            ("key.rotated", key_t.as_str(), "r-rotate"),
            ("key.revoked", &format!("key:{rotated}"), "r-revoke"),
            ("webhook.created", hook_t.as_str(), "r-hook"),
            ("webhook.secret_rotated", hook_t.as_str(), "r-secret"),
            ("webhook.redelivered", hook_t.as_str(), "r-redeliver"),
            ("dead_letter.replayed", letter_t.as_str(), "r-replay"),
            ("dead_letter.discarded", other_t.as_str(), "r-discard"),
            ("projection.rebuilt", "projection:ledger-volumes", "r-rebuild"),
            ("webhook.deleted", hook_t.as_str(), "r-unhook"),
        ]
    );
    assert_eq!(records[0]["actor"], "bootstrap");
    for r in &records[1..] {
        assert_eq!(r["actor"], format!("key:{admin_id}"), "{r}");
        assert_eq!(r["client_address"], "127.0.0.1", "{r}");
        assert_eq!(r["outcome"], "succeeded", "{r}");
    }
    assert_eq!(records[1]["details"]["scopes"], json!(["audit"]));
    assert_eq!(records[2]["details"]["new_key_id"], rotated.as_str());
    assert_eq!(records[4]["details"]["url"], "http://127.0.0.1:9/hook");
    assert_eq!(records[6]["details"]["delivery_id"], delivery);
    assert_eq!(records[7]["details"]["consumer"], "ledger-volumes");
    assert!(!serde_json::to_string(&records).unwrap().contains("whsec_"), "no secret in the trail");

    // Each record is a CloudEvent too, its data the record as listed.
    let events: Vec<OutboxEvent> = app
        .store
        .events_after(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == AUDIT_EVENT_TYPE)
        .collect();
    assert_eq!(events.len(), records.len());
    for (event, record) in events.iter().zip(&records) {
        assert_eq!(event.subject.to_string(), record["id"].as_str().unwrap());
        assert_eq!(&serde_json::from_str::<Value>(&event.data).unwrap(), record);
    }
}

/// A dead letter of the ledger-volumes consumer in the store, answering its id.
async fn dead_letter(app: &App) -> String {
    let letter = DeadLetter {
        id: uuid::Uuid::now_v7(),
        consumer: "ledger-volumes".into(),
        event: OutboxEvent {
            position: 1,
            id: uuid::Uuid::now_v7(),
            source: "coffer".into(),
            kind: "coffer.transfer.created".into(),
            subject: uuid::Uuid::now_v7(),
            time: Timestamp::now(),
            data: "{}".into(),
            traceparent: None,
            hash: None,
        },
        error: "boom".into(),
        attempts: 1,
        failed_at: Timestamp::now(),
        replay_requested: false,
    };
    app.store.add_dead_letter(letter.clone()).await.unwrap();
    letter.id.to_string()
}

async fn the_trail_needs_the_audit_scope_and_filters_strictly(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (_, reader) = app.key(&["read"], None).await;
    let (_, writer) = app.key(&["write"], None).await;
    let (auditor_id, auditor) = app.key(&["audit"], None).await;
    app.get_as(&reader, "/v1/audit").await.assert_problem(403, "forbidden");
    app.get_as(&writer, "/v1/audit").await.assert_problem(403, "forbidden");
    assert_eq!(app.get_as(&auditor, "/v1/audit").await.status, 200);
    assert_eq!(app.get("/v1/audit").await.status, 200, "admin implies audit");
    // The audit scope reads the trail and nothing else.
    app.get_as(&auditor, "/v1/ledgers").await.assert_problem(403, "forbidden");
    app.get_as(&auditor, "/v1/keys").await.assert_problem(403, "forbidden");

    for bad in [
        "action=key.eaten",
        "outcome=maybe",
        "since=yesterday",
        "limit=0",
        "limit=1001",
        "cursor=42",
        "actor=",
        "target=%07",
        "colour=blue",
    ] {
        app.get(&format!("/v1/audit?{bad}")).await.assert_problem(400, "invalid_request");
    }

    // Filters: by actor, target, action, outcome and time.
    let by_auditor = format!("&actor=key:{auditor_id}");
    let creates = trail(&app, &auditor, "&action=key.created").await;
    assert_eq!(creates.len(), 4, "the bootstrap key and three more");
    assert_eq!(trail(&app, &auditor, "&actor=bootstrap").await.len(), 1);
    let target = creates[2]["target"].as_str().unwrap();
    let one = trail(&app, &auditor, &format!("&target={target}")).await;
    assert_eq!(one, [creates[2].clone()]);
    let since = creates[3]["time"].as_str().unwrap().replace('+', "%2B");
    assert_eq!(trail(&app, &auditor, &format!("&since={since}")).await.first(), Some(&creates[3]));
    assert!(
        trail(&app, &auditor, &format!("&until={}", creates[0]["time"].as_str().unwrap())).await.is_empty()
    );
    // Reading the trail is no action; the auditor's try at the key list (admin) is a refusal.
    let deadline = Instant::now() + Duration::from_secs(10);
    while trail(&app, &auditor, &by_auditor).await.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = trail(&app, &auditor, &by_auditor).await;
    let refused: Vec<&str> = refused.iter().map(|r| r["target"].as_str().unwrap()).collect();
    assert_eq!(refused, ["route:GET /v1/keys"]);
    assert!(trail(&app, &auditor, "&outcome=denied&action=key.created").await.is_empty());
    assert_chained(&trail(&app, &auditor, "").await);
}

async fn refusals_for_scope_are_recorded_once_per_key_and_route(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (reader_id, reader) = app.key(&["read"], None).await;
    for _ in 0..5 {
        app.send("GET", "/v1/audit", Some(&reader), None, &[("x-request-id", "probe")])
            .await
            .assert_problem(403, "forbidden");
    }
    let r = app.send("DELETE", &format!("/v1/keys/{reader_id}"), Some(&reader), None, &[]).await;
    r.assert_problem(403, "forbidden");
    // Not an administrative route: no record.
    app.post_as(&reader, "/v1/accounts", json!({"ledger": "USD"})).await.assert_problem(403, "forbidden");

    let actor = format!("&actor=key:{reader_id}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let denied = loop {
        let denied = trail(&app, ADMIN, &format!("&action=access.denied{actor}")).await;
        if denied.len() >= 2 || Instant::now() > deadline {
            break denied;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Each refusal is written on a task of its own, so the two records may land in either order.
    let mut targets: Vec<&str> = denied.iter().map(|r| r["target"].as_str().unwrap()).collect();
    targets.sort_unstable();
    assert_eq!(
        targets,
        ["route:DELETE /v1/keys/{id}", "route:GET /v1/audit"],
        "one record per key and route"
    );
    let of = |target: &str| denied.iter().find(|r| r["target"] == target).unwrap();
    let (audit, key) = (of("route:GET /v1/audit"), of("route:DELETE /v1/keys/{id}"));
    assert_eq!(audit["outcome"], "denied");
    assert_eq!(audit["request_id"], "probe");
    assert_eq!(audit["details"]["needed_scope"], "audit");
    assert_eq!(key["details"]["path"], format!("/v1/keys/{reader_id}"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(trail(&app, ADMIN, &format!("&action=access.denied{actor}")).await.len(), 2, "no more came");
    assert_chained(&trail(&app, ADMIN, "").await);
}

async fn an_address_running_out_of_failed_authentications_is_recorded_once(backend: Backend) {
    let n = |n| NonZeroU32::new(n).unwrap();
    let config =
        ApiConfig { auth_failures_per_second: n(1), auth_failure_burst: n(3), ..ApiConfig::default() };
    let Some(app) = spawn_with(backend, config).await else { return };
    // The admin's key is verified first, so the address running out does not shut it out.
    assert_eq!(app.get("/v1/audit").await.status, 200);
    for i in 0..12 {
        let token = coffer_api::generate_token();
        let r = app
            .send("GET", "/v1/ledgers", Some(&token), None, &[("x-request-id", &format!("guess-{i}"))])
            .await;
        assert!(r.status == 401 || r.status == 429, "{}", r.text);
    }
    let crossed = eventually(&app, "&action=auth.failure_threshold_crossed").await;
    assert_eq!(crossed.len(), 1, "{crossed:?}");
    let record = &crossed[0];
    assert_eq!(record["actor"], "anonymous");
    assert_eq!(record["target"], "address:127.0.0.1");
    assert_eq!(record["client_address"], "127.0.0.1");
    assert_eq!(record["outcome"], "denied");
    assert!(record["request_id"].as_str().unwrap().starts_with("guess-"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..6 {
        let _ = app.get_as(&coffer_api::generate_token(), "/v1/ledgers").await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        trail(&app, ADMIN, "&action=auth.failure_threshold_crossed").await.len(),
        1,
        "once per window"
    );
}

async fn only_audit_keys_see_audit_events_on_the_stream(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (_, reader) = app.key(&["read"], None).await;
    let r = app.get_as(&reader, &format!("/v1/events/stream?types={AUDIT_EVENT_TYPE}")).await;
    r.assert_problem(403, "forbidden");
    // From the start, a reader's stream skips the audit events; an auditor's has them.
    let first = |token: String| {
        let url = app.url("/v1/events/stream?after=0");
        let client = app.client.clone();
        async move {
            let mut res = client.get(url).bearer_auth(token).send().await.unwrap();
            let mut text = String::new();
            let deadline = Instant::now() + Duration::from_secs(5);
            while !text.contains("\n\n") && Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_millis(500), res.chunk()).await {
                    Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
                    _ => break,
                }
            }
            text
        }
    };
    let (_, auditor) = app.key(&["read", "audit"], None).await;
    assert!(first(auditor).await.contains(&format!("event: {AUDIT_EVENT_TYPE}")));
    app.ledger("USD").await;
    app.account("USD", json!({})).await;
    let seen = first(reader).await;
    assert!(seen.contains("event: coffer.account.created"), "{seen}");
    assert!(!seen.contains(AUDIT_EVENT_TYPE), "{seen}");
}
