//! The relay against a real NATS JetStream (`COFFER_TEST_NATS_URL`, default the local server):
//! every outbox event lands in the stream once, in position order, with its id as the message
//! id and its trace, when it has one, as a `traceparent` header; a second relay that starts from the beginning — a relay that crashed after publishing but
//! before saving its position — adds nothing, because the stream drops the duplicates.

mod common;

use std::sync::Arc;

use coffer_events::{Bus, Relay};
use coffer_ledger::{Submission, TraceParent};
use coffer_store::StoreConfig;
use coffer_testkit::{Backend, TestStore};
use common::{ledger_with_accounts, local_jetstream, transfer, transfers, unique_stream};
use serde_json::Value;

const TRANSFERS: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_the_stream_once_and_in_order() {
    let settings = unique_stream("coffer_test", 1);
    let Some(bus) = local_jetstream(&settings).await else { return };
    let bus = Arc::new(bus);
    let Some(store) = TestStore::open(Backend::Sqlite, StoreConfig::default()).await else { return };
    let accounts = ledger_with_accounts(store.as_ref(), 2).await;
    transfers(store.as_ref(), accounts[0], accounts[1], TRANSFERS).await;
    let trace = TraceParent::try_from("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    let traced = Submission::one(transfer(accounts[0], accounts[1], 1, 1)).traced(Some(trace));
    store.submit(traced).await.unwrap();
    let outbox = store.events_after(0, 10_000).await.unwrap();
    assert_eq!(outbox.len(), 3 + TRANSFERS as usize);

    let relay = Relay::new(store.store.clone(), bus.clone() as Arc<dyn Bus>, "jetstream");
    assert_eq!(relay.catch_up(None).await.unwrap(), outbox.len());
    assert_eq!(relay.catch_up(None).await.unwrap(), 0, "nothing new to publish");
    assert_eq!(store.position("jetstream").await.unwrap(), outbox.last().unwrap().position);

    // A relay that lost its position publishes everything again: the stream keeps one of each.
    let again = Relay::new(store.store.clone(), bus.clone() as Arc<dyn Bus>, "jetstream-restarted");
    assert_eq!(again.catch_up(None).await.unwrap(), outbox.len());

    let mut stream = bus.context().get_stream(&settings.name).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.messages, outbox.len() as u64, "each event stored exactly once");
    for (n, event) in outbox.iter().enumerate() {
        let message = stream.get_raw_message(n as u64 + 1).await.unwrap();
        let body: Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(body["id"], event.id.to_string(), "stream order is outbox order");
        assert_eq!(body["sequence"], coffer_events::sequence(event.position));
        assert_eq!(message.subject.as_str(), bus.subject(&event.kind));
        assert_eq!(
            message.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some(event.id.to_string().as_str())
        );
        // The trace, when the event has one, as a header too (the last event's only).
        let trace = event.traceparent.as_ref().map(|trace| trace.as_str());
        assert_eq!(message.headers.get("traceparent").map(|v| v.as_str()), trace);
        assert_eq!(trace.is_some(), n + 1 == outbox.len());
    }
    bus.context().delete_stream(&settings.name).await.unwrap();
    store.shutdown().await;
}
