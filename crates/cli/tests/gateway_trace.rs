//! One trace from the client to the events: a write sent through `coffer gateway` reaches the
//! replica with a W3C `traceparent` (the client's own, or one the gateway starts), and the events
//! the write causes carry that same traceparent.

mod common;

use std::time::Duration;

use common::{GatewayProcess, Server, TOKEN};
use serde_json::{Value, json};

/// The first `n` events of the SSE stream at `url`.
async fn first_events(url: &str, n: usize) -> Vec<Value> {
    let client = reqwest::Client::new();
    let mut response = client.get(url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let (mut text, mut events) = (String::new(), Vec::new());
    while events.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream stays open");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let data = block.lines().find_map(|line| line.strip_prefix("data:"));
            events.extend(data.map(|data| serde_json::from_str::<Value>(data.trim()).unwrap()));
        }
    }
    events
}

#[tokio::test]
async fn a_write_through_the_gateway_has_its_trace_on_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let replica = Server::start(dir.path()).await;
    let upstream = format!("http://127.0.0.1:{}", replica.port());
    let env = [("COFFER_DATA_DIR", dir.path().to_str().unwrap())];
    let gateway = GatewayProcess::start_with(&[upstream], &env, tempfile::tempfile().unwrap()).await;
    let http = common::Http::at(gateway.base.clone());
    let (a, b) = http.ledger_with_two_accounts("TR").await;
    let transfer =
        json!({"debit_account_id": a, "credit_account_id": b, "amount": 1, "ledger": "TR", "code": 1});

    // No traceparent from the client: the gateway starts a trace, and the event carries it.
    http.post_ok("/v1/transfers", transfer.clone()).await;
    // The client's own traceparent passes through the gateway unchanged.
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let client = reqwest::Client::new();
    let answer = client
        .post(format!("{}/v1/transfers", gateway.base))
        .bearer_auth(TOKEN)
        .header("traceparent", given)
        .json(&transfer)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);

    let stream = format!("{}/v1/events/stream?after=0&types=coffer.transfer.created", gateway.base);
    let events = first_events(&stream, 2).await;
    let started = events[0]["traceparent"].as_str().expect("the gateway's trace on the first event");
    assert!(coffer_ledger::TraceParent::try_from(started).is_ok(), "{started}");
    assert_ne!(started, given);
    assert_eq!(events[1]["traceparent"], given);
}
