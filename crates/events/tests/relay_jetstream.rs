//! The relay against a real NATS JetStream (`COFFER_TEST_NATS_URL`, default the local server):
//! every outbox event lands in the stream once, in position order, with its id as the message
//! id and its trace, when it has one, as a `traceparent` header; a second relay that starts from the beginning — a relay that crashed after publishing but
//! before saving its position — adds nothing, because the stream drops the duplicates.

mod common;

use std::sync::Arc;

use coffer_events::{Bus, Relay};
use coffer_ledger::{Command, Submission, TraceParent, TransferId};
use coffer_store::StoreConfig;
use coffer_testkit::{Backend, TestStore};
use common::{ledger_with_accounts, local_jetstream, transfer, transfers, unique_stream};
use serde_json::Value;
use sha2::{Digest, Sha256};

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

/// An outside consumer — JetStream's own client, an RFC 8785 implementation nobody here wrote,
/// SHA-256 — checks the chain from the events alone: each message's `chainhash` is the hash of
/// the previous one's and the message without `chainhash`, canonical. On both stores, with
/// holds, posts and voids, and metadata that canonical form reorders and respells.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_consumer_recomputes_the_chain_from_the_events_alone() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let settings = unique_stream("coffer_chain", 1);
        let Some(bus) = local_jetstream(&settings).await else { return };
        let bus = Arc::new(bus);
        let Some(store) = TestStore::open(backend, StoreConfig::default()).await else { continue };
        let accounts = ledger_with_accounts(store.as_ref(), 3).await;
        let metadata: coffer_ledger::Metadata = serde_json::from_value(serde_json::json!({
            "zeta": 1.50, "\u{1F600}": "emoji sorts before U+E000 in UTF-16", "\u{E000}": [1e2, -0.0, true],
            // Within ±2^53, where RFC 8785's doubles are exact (beyond it see DECISIONS.md).
            "a": {"nested": "tab\there", "n": 9_007_199_254_740_991_u64}
        }))
        .unwrap();
        for round in 0..20_u64 {
            let mut hold = transfer(accounts[0], accounts[1], 10 + round, 2);
            let Command::CreateTransfer(new) = &mut hold else { unreachable!() };
            new.pending = Some(None);
            new.metadata = Some(metadata.clone());
            let hold_id = new.id;
            let mut plain = transfer(accounts[1], accounts[2], 1 + round, 1);
            let Command::CreateTransfer(new) = &mut plain else { unreachable!() };
            new.metadata = Some(metadata.clone());
            store.submit(Submission::new(vec![hold, plain], false)).await.unwrap();
            let resolution = coffer_ledger::Resolution {
                id: TransferId(uuid::Uuid::new_v4()),
                pending_id: hold_id,
                amount: None,
                code: None,
                external_ref: None,
                metadata: None,
            };
            let command = if round % 2 == 0 {
                Command::PostPending(resolution)
            } else {
                Command::VoidPending(resolution)
            };
            store.submit(Submission::one(command)).await.unwrap();
        }
        let outbox = store.events_after(0, 10_000).await.unwrap();
        let relay = Relay::new(store.store.clone(), bus.clone() as Arc<dyn Bus>, "jetstream");
        assert_eq!(relay.catch_up(None).await.unwrap(), outbox.len());

        let stream = bus.context().get_stream(&settings.name).await.unwrap();
        let mut previous = [0_u8; 32]; // a fresh store's chain starts at the genesis link
        for n in 1..=outbox.len() as u64 {
            let message = stream.get_raw_message(n).await.unwrap();
            let mut event: Value = serde_json::from_slice(&message.payload).unwrap();
            let Some(Value::String(claimed)) = event.as_object_mut().unwrap().remove("chainhash") else {
                panic!("message {n} has no chainhash: {event}")
            };
            let canonical = serde_json_canonicalizer::to_vec(&event).unwrap();
            let link: [u8; 32] =
                Sha256::new().chain_update(previous).chain_update(&canonical).finalize().into();
            assert_eq!(claimed, hex::encode(link), "{backend:?}: message {n} does not follow the one before");
            previous = link;
        }
        let head = store.outbox_chain().await.unwrap().head;
        assert_eq!(head.hash.0, previous, "{backend:?}: the last message's link is the outbox's head");
        bus.context().delete_stream(&settings.name).await.unwrap();
        store.shutdown().await;
    }
}
