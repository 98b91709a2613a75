//! The event-facing endpoints: the live stream (`/v1/events/stream`), the ledger-volumes
//! projection (`/v1/ledgers/{code}/stats`, fed by its consumer running beside the app), and the
//! admin dead-letter endpoints — their behaviour and their answers to bad input.

mod common;

use std::time::{Duration, Instant};

use coffer_events::{
    Consumer, LedgerVolumes, OutboxSource, RetryPolicy, VOLUMES_CONSUMER, VOLUMES_EVENT_TYPE,
};
use coffer_ledger::Timestamp;
use coffer_store::{DeadLetter, OutboxEvent};
use coffer_testkit::Backend;
use common::*;
use futures::StreamExt;
use serde_json::{Value, json};

coffer_testkit::on_each_backend! {
    the_stream_resumes_after_a_disconnect_without_a_gap_or_a_duplicate,
    events_carry_the_traceparent_of_the_request_that_caused_them,
    streams_opened_while_money_moves_each_get_every_event_once_in_order,
    a_stream_without_a_position_starts_at_the_end,
    bad_stream_requests_are_refused,
    stats_count_posted_volume_per_day_and_code,
    bad_stats_requests_are_refused,
    dead_letters_are_listed_shown_replayed_and_discarded_by_admins,
    bad_dead_letter_requests_are_refused,
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_revoked_or_expired_keys_event_stream_closes,
}

/// One SSE event as received.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    id: String,
    event: String,
    data: Value,
}

/// An open event stream.
struct Stream {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl Stream {
    async fn open(app: &App, query: &str, last_event_id: Option<&str>) -> Stream {
        Self::open_as(app, ADMIN, query, last_event_id).await
    }

    async fn open_as(app: &App, token: &str, query: &str, last_event_id: Option<&str>) -> Stream {
        let mut request = app.client.get(app.url(&format!("/v1/events/stream{query}"))).bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Stream { body: response.bytes_stream().boxed(), buffer: String::new() }
    }

    /// The next `n` events (keep-alive comments skipped).
    async fn take(&mut self, n: usize) -> Vec<Sse> {
        let mut events = Vec::new();
        while events.len() < n {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                events.extend(parse(&block));
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("an event within 10 s")
                .expect("the stream stays open")
                .unwrap();
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        events
    }
}

impl Stream {
    /// The events up to and including the one with id `last`.
    async fn take_through(&mut self, last: &str) -> Vec<Sse> {
        let mut events = Vec::new();
        while events.last().is_none_or(|e: &Sse| e.id != last) {
            events.extend(self.take(1).await);
        }
        events
    }
}

fn parse(block: &str) -> Option<Sse> {
    let (mut id, mut event, mut data) = (None, None, String::new());
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("event:") {
            event = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
    Some(Sse { id: id?, event: event?, data: serde_json::from_str(&data).unwrap() })
}

async fn transfer(app: &App, from: &str, to: &str, amount: u64, code: u16) -> String {
    let r = app
        .post(
            "/v1/transfers",
            json!({"debit_account_id": from, "credit_account_id": to, "amount": amount, "ledger": "USD", "code": code}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.body["id"].as_str().unwrap().to_owned()
}

async fn the_stream_resumes_after_a_disconnect_without_a_gap_or_a_duplicate(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (a, b) = app.two_accounts("USD").await;
    let (c, d) = (app.account("USD", json!({})).await, app.account("USD", json!({})).await);
    let query = format!("?after=0&types=coffer.transfer.created&account={a}");

    let mut stream = Stream::open(&app, &query, None).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(transfer(&app, &a, &b, 10 + i, 1).await);
        transfer(&app, &c, &d, 1, 1).await; // another account's: filtered out
    }
    let first = stream.take(3).await;
    drop(stream);

    for i in 0..5 {
        sent.push(transfer(&app, &b, &a, 20 + i, 1).await);
        transfer(&app, &d, &c, 1, 1).await;
    }
    let mut resumed = Stream::open(&app, &query, Some(&first.last().unwrap().id)).await;
    let rest = resumed.take(7).await;

    let got: Vec<Sse> = first.into_iter().chain(rest).collect();
    let ids: Vec<&str> = got.iter().map(|e| e.data["data"]["id"].as_str().unwrap()).collect();
    assert_eq!(ids, sent, "every transfer of the account once, in order, across the reconnect");
    for event in &got {
        assert_eq!(event.event, "coffer.transfer.created");
        assert_eq!(event.data["type"], "coffer.transfer.created");
        assert_eq!(
            event.id.parse::<i64>().unwrap(),
            event.data["sequence"].as_str().unwrap().parse::<i64>().unwrap()
        );
    }
    let positions: Vec<i64> = got.iter().map(|e| e.id.parse().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "ids grow: {positions:?}");
}

/// POSTs `body` to `path` with `traceparent` set to `trace`; answers the created record's id.
async fn post_traced(app: &App, path: &str, trace: &str, body: Value) -> Value {
    let response = app
        .client
        .post(app.url(path))
        .bearer_auth(ADMIN)
        .header("traceparent", trace)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{path}: {}", response.status());
    response.json().await.unwrap()
}

async fn events_carry_the_traceparent_of_the_request_that_caused_them(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (a, b) = app.two_accounts("USD").await;
    let mut stream = Stream::open(&app, &format!("?after=0&account={a}"), None).await;
    let _ = stream.take(1).await; // a's own creation, sent untraced

    let single = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let transfer =
        json!({"debit_account_id": a, "credit_account_id": b, "amount": 5, "ledger": "USD", "code": 1});
    post_traced(&app, "/v1/transfers", single, transfer.clone()).await;

    let hold = json!({"debit_account_id": a, "credit_account_id": b, "amount": 9, "ledger": "USD", "code": 1, "pending": true});
    let hold_id = post_traced(&app, "/v1/transfers", single, hold).await["id"].as_str().unwrap().to_owned();
    let posting = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    post_traced(&app, &format!("/v1/transfers/{hold_id}/post"), posting, json!({})).await;

    let batch = "00-11111111111111111111111111111111-2222222222222222-00";
    post_traced(
        &app,
        "/v1/transfers/batch",
        batch,
        json!({"transfers": [transfer.clone(), transfer.clone()]}),
    )
    .await;

    // A malformed traceparent is ignored, not refused: the write goes through, untraced.
    post_traced(&app, "/v1/transfers", "00-not-a-trace-01", transfer).await;

    let traces: Vec<(String, Value)> = stream
        .take(7)
        .await
        .into_iter()
        .map(|event| (event.event, event.data.get("traceparent").cloned().unwrap_or(Value::Null)))
        .collect();
    let expected = [
        ("coffer.transfer.created", json!(single)),
        ("coffer.transfer.created", json!(single)),
        ("coffer.transfer.created", json!(posting)),
        ("coffer.transfer.posted", json!(posting)),
        ("coffer.transfer.created", json!(batch)),
        ("coffer.transfer.created", json!(batch)),
        ("coffer.transfer.created", Value::Null),
    ];
    assert_eq!(traces, expected.map(|(kind, trace)| (kind.to_owned(), trace)));
}

async fn streams_opened_while_money_moves_each_get_every_event_once_in_order(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (a, b) = app.two_accounts("USD").await;
    let query = "?types=coffer.transfer.created";
    let mut from_start = Vec::new();
    for _ in 0..3 {
        from_start.push(Stream::open(&app, &format!("{query}&after=0"), None).await);
    }
    // Four writers; meanwhile streams open one after another at the outbox's end.
    let writers = futures::future::join_all((0..4).map(|_| async {
        let mut sent = Vec::new();
        for i in 0..15 {
            sent.push(transfer(&app, &a, &b, 1 + i, 1).await);
        }
        sent
    }));
    let opener = async {
        let mut from_now = Vec::new();
        for _ in 0..6 {
            from_now.push(Stream::open(&app, query, None).await);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        from_now
    };
    let (sent, mut from_now) = tokio::join!(writers, opener);
    let mut sent: Vec<String> = sent.into_iter().flatten().collect();
    // One more after every stream is open, so that each has at least one event to get.
    sent.push(transfer(&app, &a, &b, 1, 1).await);

    let reference = from_start[0].take(sent.len()).await;
    let positions: Vec<i64> = reference.iter().map(|e| e.id.parse().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "in outbox order: {positions:?}");
    let mut ids: Vec<String> =
        reference.iter().map(|e| e.data["data"]["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    sent.sort();
    assert_eq!(ids, sent, "every transfer once");
    let last = &reference.last().unwrap().id;
    for stream in &mut from_start[1..] {
        assert_eq!(stream.take_through(last).await, reference);
    }
    // A stream opened later gets the events after some point, all of them from there on.
    for stream in &mut from_now {
        let got = stream.take_through(last).await;
        let start = reference.iter().position(|e| e.id == got[0].id).expect("an event of the reference");
        assert_eq!(got, reference[start..]);
    }
}

async fn a_stream_without_a_position_starts_at_the_end(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (a, b) = app.two_accounts("USD").await;
    transfer(&app, &a, &b, 1, 1).await;
    let mut stream = Stream::open(&app, "?types=coffer.transfer.created", None).await;
    let new = transfer(&app, &a, &b, 2, 1).await;
    let got = stream.take(1).await;
    assert_eq!(got[0].data["data"]["id"], new.as_str(), "older events are not replayed");
}

async fn bad_stream_requests_are_refused(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    for query in ["?types=coffer.nope", "?types=", "?account=42", "?after=-1", "?after=x", "?colour=red"] {
        let r = app.get(&format!("/v1/events/stream{query}")).await;
        r.assert_problem(400, "invalid_request");
    }
    let r = app.send("GET", "/v1/events/stream", Some(ADMIN), None, &[("last-event-id", "abc")]).await;
    r.assert_problem(400, "invalid_request");
    let r = app.send("GET", "/v1/events/stream", None, None, &[]).await;
    r.assert_problem(401, "unauthorized");
}

/// Runs the projection's consumer beside the app until the test ends.
async fn projection_consumer(app: &App) {
    let source = OutboxSource::open(
        app.store.clone(),
        VOLUMES_CONSUMER,
        vec![VOLUMES_EVENT_TYPE.into()],
        Duration::from_millis(10),
    )
    .await
    .unwrap();
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let consumer = Consumer::new(
        VOLUMES_CONSUMER,
        source,
        LedgerVolumes::new(app.store.clone()),
        RetryPolicy::default(),
    );
    tokio::spawn(async move {
        let _stop = _stop;
        consumer.run(stopped).await
    });
}

async fn stats_count_posted_volume_per_day_and_code(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    projection_consumer(&app).await;
    let (a, b) = app.two_accounts("USD").await;
    transfer(&app, &a, &b, 100, 1).await;
    transfer(&app, &a, &b, 250, 1).await;
    transfer(&app, &a, &b, 7, 2).await;
    // A hold counts when posted (by the amount posted), never when held or voided.
    let hold = |amount| json!({"debit_account_id": a, "credit_account_id": b, "amount": amount, "ledger": "USD", "code": 3, "pending": true, "timeout_seconds": 60});
    let posted = app.post("/v1/transfers", hold(40)).await.body["id"].as_str().unwrap().to_owned();
    let voided = app.post("/v1/transfers", hold(99)).await.body["id"].as_str().unwrap().to_owned();
    assert_eq!(app.post(&format!("/v1/transfers/{posted}/post"), json!({"amount": 30})).await.status, 201);
    assert_eq!(app.post(&format!("/v1/transfers/{voided}/void"), json!({})).await.status, 201);

    let today = time_today();
    let expected = json!([
        {"date": today, "code": 1, "count": 2, "volume": "350"},
        {"date": today, "code": 2, "count": 1, "volume": "7"},
        {"date": today, "code": 3, "count": 1, "volume": "30"},
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.get("/v1/ledgers/USD/stats").await;
        assert_eq!(r.status, 200, "{}", r.text);
        if r.body["data"] == expected {
            assert_eq!(r.body["ledger"], "USD");
            assert_eq!(r.body["to"], today.as_str());
            break;
        }
        assert!(Instant::now() < deadline, "the projection never caught up: {}", r.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = app.get(&format!("/v1/ledgers/USD/stats?from={today}&to={today}")).await;
    assert_eq!(r.body["data"], expected);

    // Rebuilt from scratch by replaying the outbox, beside the running consumer: the same figures.
    let r = app.send("POST", "/v1/admin/projections/ledger-volumes/rebuild", Some(ADMIN), None, &[]).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let rebuilt = LedgerVolumes::new(app.store.clone())
        .rebuild(&coffer_store::AuditContext::cli("test"))
        .await
        .unwrap();
    assert!(rebuilt >= 9, "the replay read {rebuilt} events");
    assert_eq!(app.get("/v1/ledgers/USD/stats").await.body["data"], expected);
    let r = app.get("/v1/ledgers/USD/stats?from=2000-01-01&to=2000-12-31").await;
    assert_eq!(r.body["data"], json!([]));
}

fn time_today() -> String {
    Timestamp::now().to_rfc3339()[..10].to_owned()
}

async fn bad_stats_requests_are_refused(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    app.ledger("USD").await;
    for query in [
        "?from=2026-13-01",
        "?from=yesterday",
        "?from=2026-11-30&to=2026-11-01",
        "?from=2020-01-01&to=2026-01-01",
        "?day=1",
    ] {
        app.get(&format!("/v1/ledgers/USD/stats{query}")).await.assert_problem(400, "invalid_request");
    }
    app.get("/v1/ledgers/usd/stats").await.assert_problem(400, "invalid_request");
    app.get("/v1/ledgers/EUR/stats").await.assert_problem(404, "not_found");
}

fn letter(consumer: &str, position: i64) -> DeadLetter {
    let id = uuid::Uuid::now_v7();
    DeadLetter {
        id,
        consumer: consumer.into(),
        event: OutboxEvent {
            position,
            id: uuid::Uuid::now_v7(),
            source: "coffer".into(),
            kind: "coffer.transfer.created".into(),
            subject: uuid::Uuid::now_v7(),
            time: Timestamp::now(),
            data: r#"{"amount":5}"#.into(),
            traceparent: None,
            hash: None,
        },
        error: "boom".into(),
        attempts: 8,
        failed_at: Timestamp::now(),
        replay_requested: false,
    }
}

async fn dead_letters_are_listed_shown_replayed_and_discarded_by_admins(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (one, two) = (letter("mailer", 11), letter("ledger-volumes", 12));
    app.store.add_dead_letter(one.clone()).await.unwrap();
    app.store.add_dead_letter(two.clone()).await.unwrap();

    let r = app.get("/v1/admin/dead-letters").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["data"].as_array().unwrap().len(), 2);
    let r = app.get("/v1/admin/dead-letters?consumer=mailer&limit=1").await;
    let listed = &r.body["data"][0];
    assert_eq!(listed["id"], one.id.to_string());
    assert_eq!(listed["error"], "boom");
    assert_eq!(listed["attempts"], 8);
    assert_eq!(listed["event"]["sequence"], "0000000000000000011");
    assert_eq!(listed["event"]["data"], json!({"amount": 5}));
    assert_eq!(r.body["next_cursor"], one.id.to_string());
    let r = app.get(&format!("/v1/admin/dead-letters?consumer=mailer&cursor={}", one.id)).await;
    assert_eq!(r.body["data"], json!([]));

    let r = app.get(&format!("/v1/admin/dead-letters/{}", two.id)).await;
    assert_eq!(r.body["consumer"], "ledger-volumes");
    let r =
        app.send("POST", &format!("/v1/admin/dead-letters/{}/replay", one.id), Some(ADMIN), None, &[]).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert!(app.store.dead_letter(one.id).await.unwrap().unwrap().replay_requested);
    let r = app.send("DELETE", &format!("/v1/admin/dead-letters/{}", two.id), Some(ADMIN), None, &[]).await;
    assert_eq!(r.status, 204);
    assert!(app.store.dead_letter(two.id).await.unwrap().is_none());
    let r = app.send("DELETE", &format!("/v1/admin/dead-letters/{}", two.id), Some(ADMIN), None, &[]).await;
    r.assert_problem(404, "not_found");
}

async fn bad_dead_letter_requests_are_refused(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let missing = uuid::Uuid::now_v7();
    app.get(&format!("/v1/admin/dead-letters/{missing}")).await.assert_problem(404, "not_found");
    let r =
        app.send("POST", &format!("/v1/admin/dead-letters/{missing}/replay"), Some(ADMIN), None, &[]).await;
    r.assert_problem(404, "not_found");
    app.get("/v1/admin/dead-letters/not%20an%20id").await.assert_problem(400, "invalid_request");
    for query in ["?limit=0", "?limit=1001", "?limit=x", "?cursor=zz", "?cursor=abc", "?colour=red"] {
        app.get(&format!("/v1/admin/dead-letters{query}")).await.assert_problem(400, "invalid_request");
    }
    let (_, reader) = app.key(&["read"], None).await;
    app.get_as(&reader, "/v1/admin/dead-letters").await.assert_problem(403, "forbidden");
}

/// DESIGN §5: revocation reaches everything. A stream whose key is revoked, by this process or by
/// another one behind its key cache, ends within the cache's TTL; so does one whose key expires.
async fn a_revoked_or_expired_keys_event_stream_closes(backend: Backend) {
    let config = coffer_api::ApiConfig { key_cache_ttl_ms: 200, ..coffer_api::ApiConfig::default() };
    let Some(app) = common::spawn_with(backend, config).await else { return };
    let expires_at = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let expires_at = expires_at.format(&time::format_description::well_known::Rfc3339).unwrap();
    let mut tokens = Vec::new();
    for body in [json!({"scopes": ["read"]}), json!({"scopes": ["read"], "expires_at": expires_at})] {
        let r = app.post("/v1/keys", body).await;
        assert_eq!(r.status, 201, "{}", r.text);
        tokens
            .push((r.body["id"].as_str().unwrap().to_owned(), r.body["token"].as_str().unwrap().to_owned()));
    }
    let mut revoked = Stream::open_as(&app, &tokens[0].1, "", None).await;
    let mut expiring = Stream::open_as(&app, &tokens[1].1, "", None).await;
    let mut kept = Stream::open(&app, "", None).await;
    // Revoked behind this process's back (another replica, `coffer keys revoke`): its cache
    // still holds the key, so only the stream's own re-check can notice.
    let id = coffer_store::KeyId(tokens[0].0.parse().unwrap());
    assert!(app.store.revoke_key(id).await.unwrap());
    for stream in [&mut revoked, &mut expiring] {
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(chunk) = stream.body.next().await {
                chunk.unwrap();
            }
        })
        .await;
        assert!(ended.is_ok(), "the stream of a revoked or expired key stays open");
    }
    // Streams of live keys go on.
    app.ledger("USD").await;
    app.account("USD", json!({})).await;
    assert_eq!(kept.take(1).await.len(), 1);
}
