//! The worker role in real `coffer serve` processes: webhooks signed and delivered from an
//! embedded server, the projection it keeps, and `coffer dlq` replaying a dead letter to the
//! projection's consumer exactly once.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use coffer_events::{OutboxSource, SignatureHeaders, SigningSecret, VOLUMES_CONSUMER, verify};
use coffer_ledger::Timestamp;
use coffer_store::{
    Coordination, DeadLetter, DeadLetters, Outbox, PgStore, Store, StoreConfig, Webhooks as _,
};
use coffer_testkit::TestDatabase;
use common::{Headless, Http, Server, TOKEN};
use serde_json::{Value, json};
use uuid::Uuid;

/// A webhook receiver on 127.0.0.1: every delivery's headers and body.
async fn receiver() -> (String, Arc<Mutex<Vec<(HeaderMap, Bytes)>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let received = received.clone();
            move |headers: HeaderMap, body: Bytes| async move {
                received.lock().unwrap().push((headers, body));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ledger_and_accounts(http: &Http) -> (String, String) {
    http.post_ok("/v1/ledgers", json!({"code": "WRK", "scale": 2})).await;
    let a = http.post_ok("/v1/accounts", json!({"ledger": "WRK"})).await["id"].as_str().unwrap().to_owned();
    let b = http.post_ok("/v1/accounts", json!({"ledger": "WRK"})).await["id"].as_str().unwrap().to_owned();
    (a, b)
}

async fn transfer(http: &Http, from: &str, to: &str, amount: u64) -> String {
    let body = json!({"debit_account_id": from, "credit_account_id": to, "amount": amount, "ledger": "WRK", "code": 9});
    http.post_ok("/v1/transfers", body).await["id"].as_str().unwrap().to_owned()
}

/// (count, volume) of code 9 in the projection.
async fn volume(http: &Http) -> (u64, String) {
    let (status, body) = http.get("/v1/ledgers/WRK/stats").await;
    assert_eq!(status, 200, "{body}");
    let rows = body["data"].as_array().unwrap();
    rows.iter()
        .find(|r| r["code"] == 9)
        .map_or((0, "0".into()), |r| (r["count"].as_u64().unwrap(), r["volume"].as_str().unwrap().to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_server_delivers_signed_webhooks_and_keeps_the_projection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        dir.path(),
        &[("COFFER_WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true"), ("COFFER_WEBHOOK_ALLOW_INSECURE_HTTP", "true")],
    )
    .await;
    let http = server.client();
    let (url, received) = receiver().await;
    let hook =
        http.post_ok("/v1/webhooks", json!({"url": url, "event_types": ["coffer.transfer.created"]})).await;
    let secret = SigningSecret::parse(hook["secret"].as_str().unwrap()).unwrap();

    let (a, b) = ledger_and_accounts(&http).await;
    let sent = [
        transfer(&http, &a, &b, 100).await,
        transfer(&http, &b, &a, 40).await,
        transfer(&http, &a, &b, 5).await,
    ];

    let deliveries = eventually("three deliveries", async || {
        let got = received.lock().unwrap().clone();
        (got.len() >= 3).then_some(got)
    })
    .await;
    let mut delivered = Vec::new();
    for (headers, body) in &deliveries {
        let header = |name: &str| headers[name].to_str().unwrap().to_owned();
        let (id, timestamp, signature) =
            (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
        let signed = SignatureHeaders { id: &id, timestamp: &timestamp, signature: &signature };
        let now = Timestamp::now().as_micros() / 1_000_000;
        verify(&secret, signed, body, now, Duration::from_secs(300))
            .expect("a valid Standard Webhooks signature");
        let event: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(event["type"], "coffer.transfer.created");
        delivered.push(event["data"]["id"].as_str().unwrap().to_owned());
    }
    delivered.sort();
    let mut expected = sent.to_vec();
    expected.sort();
    assert_eq!(delivered, expected, "each transfer delivered once");

    let (status, list) = http.get(&format!("/v1/webhooks/{}/deliveries", hook["id"].as_str().unwrap())).await;
    assert_eq!(status, 200);
    assert!(list["data"].as_array().unwrap().iter().all(|d| d["status"] == "succeeded"), "{list}");
    eventually("the projection", async || (volume(&http).await == (3, "145".into())).then_some(())).await;

    // The pipeline's metrics: nothing behind, nothing dead, three deliveries that succeeded.
    let metrics_url = format!("http://127.0.0.1:{}/metrics", server.port());
    let wanted = [
        "coffer_consumer_lag_events{consumer=\"ledger-volumes\"} 0",
        "coffer_dlq_depth 0",
        "coffer_webhook_deliveries_total{result=\"succeeded\"} 3",
    ];
    eventually("the pipeline metrics", async || {
        let text = reqwest::get(&metrics_url).await.ok()?.text().await.ok()?;
        wanted.iter().all(|line| text.lines().any(|l| l == *line)).then_some(())
    })
    .await;
}

/// An embedded store from before secrets were sealed: its endpoint's secret is in clear. The
/// first start makes the data dir's key file (owner-only), seals the secret under it, and
/// signs with it as before; the row then holds no trace of the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_kept_in_clear_is_sealed_at_start_and_still_signs() {
    let dir = tempfile::tempdir().unwrap();
    let (url, received) = receiver().await;
    let secret = coffer_events::new_secret();
    let id = Uuid::new_v4();
    {
        let store = coffer_store::SqliteStore::open(dir.path(), StoreConfig::default()).await.unwrap();
        let webhook = coffer_store::Webhook {
            id,
            url,
            event_types: vec!["coffer.transfer.created".to_owned()],
            secret: secret.as_str().to_owned(),
            previous_secret: None,
            previous_secret_expires_at: None,
            created_at: Timestamp::now(),
        };
        store.create_webhook(webhook).await.unwrap();
        store.shutdown().await;
    }

    let server = Server::start_with_env(
        dir.path(),
        &[("COFFER_WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true"), ("COFFER_WEBHOOK_ALLOW_INSECURE_HTTP", "true")],
    )
    .await;
    let http = server.client();
    let (a, b) = ledger_and_accounts(&http).await;
    transfer(&http, &a, &b, 7).await;
    let (headers, body) = eventually("a delivery", async || received.lock().unwrap().first().cloned()).await;
    let header = |name: &str| headers[name].to_str().unwrap().to_owned();
    let (id_header, timestamp, signature) =
        (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
    let signed = SignatureHeaders { id: &id_header, timestamp: &timestamp, signature: &signature };
    let now = Timestamp::now().as_micros() / 1_000_000;
    verify(&secret, signed, &body, now, Duration::from_secs(300)).expect("signed with the same secret");
    drop(server);

    let key_file = dir.path().join("webhook-secret-keys");
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let store = coffer_store::SqliteStore::open(dir.path(), StoreConfig::default()).await.unwrap();
    let stored = store.webhook(id).await.unwrap().unwrap().secret;
    assert!(stored.starts_with("whenc1.") && !stored.contains(&secret.as_str()[6..]), "{stored}");
    store.shutdown().await;
}

fn dlq(server: &Server, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .arg("dlq")
        .args(args)
        .args(["--url", &format!("http://127.0.0.1:{}", server.port()), "--token", TOKEN])
        .output()
        .expect("coffer runs");
    let text =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coffer_dlq_replays_a_dead_letter_to_its_consumer_exactly_once() {
    let Some(db) = TestDatabase::create().await else { return };
    let dir = tempfile::tempdir().unwrap();
    // The API alone first: nothing consumes yet.
    let api = Server::start_on_database_with(dir.path(), &db.url, &[("COFFER_ROLES", "api")]).await;
    let http = api.client();
    let (a, b) = ledger_and_accounts(&http).await;
    let lost = transfer(&http, &a, &b, 700).await;

    // The projection's consumer gave up on that transfer's event: it is a dead letter, and the
    // consumer has moved past it.
    let store = PgStore::connect(&db.url, StoreConfig::default()).await.unwrap();
    let event = store
        .events_after(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.kind == "coffer.transfer.created" && e.data.contains(&lost))
        .unwrap();
    let letter = DeadLetter {
        id: Uuid::now_v7(),
        consumer: VOLUMES_CONSUMER.into(),
        event,
        error: "the projection's database was read-only".into(),
        attempts: 8,
        failed_at: Timestamp::now(),
        replay_requested: false,
    };
    store.add_dead_letter(letter.clone()).await.unwrap();
    let end = store.last_event_position().await.unwrap();
    store.save_position(&OutboxSource::position_name(VOLUMES_CONSUMER), end, None).await.unwrap();
    store.shutdown().await;

    let _worker = Headless::start(&db.url, &[("COFFER_ROLES", "worker")]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(volume(&http).await, (0, "0".into()), "the dead letter is not in the projection");

    let (ok, listed) = dlq(&api, &["list", "--consumer", VOLUMES_CONSUMER]);
    assert!(ok, "{listed}");
    assert!(listed.contains(&letter.id.to_string()) && listed.contains("read-only"), "{listed}");
    assert!(listed.starts_with("ID") && listed.contains("CONSUMER"), "a table with a header: {listed}");
    let (ok, json) = dlq(&api, &["list", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|_| panic!("JSON: {json}"));
    assert!(ok && json["data"][0]["id"] == letter.id.to_string(), "{json}");
    let (ok, shown) = dlq(&api, &["show", &letter.id.to_string()]);
    assert!(ok && shown.contains(&lost), "{shown}");

    let (ok, replayed) = dlq(&api, &["replay", &letter.id.to_string()]);
    assert!(ok, "{replayed}");
    eventually("the replayed event", async || (volume(&http).await == (1, "700".into())).then_some(())).await;
    let (_, listed) = dlq(&api, &["list"]);
    assert!(!listed.contains(&letter.id.to_string()), "the letter is gone after its replay: {listed}");
    let (ok, again) = dlq(&api, &["replay", &letter.id.to_string()]);
    assert!(!ok && again.contains("404"), "a second replay finds nothing: {again}");
    assert!(
        again.contains("not_found") && !again.contains("\"type\""),
        "detail and code, not the body: {again}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(volume(&http).await, (1, "700".into()), "applied exactly once");

    let (ok, refused) = dlq(&api, &["show", "not-an-id!"]);
    assert!(!ok && refused.contains("400"), "{refused}");
}
