//! The relay against a real NATS JetStream (`COFFER_TEST_NATS_URL`, default the local server):
//! every outbox event lands in the stream once, in position order, with its id as the message
//! id; a second relay that starts from the beginning — a relay that crashed after publishing but
//! before saving its position — adds nothing, because the stream drops the duplicates.

use std::sync::Arc;
use std::time::Duration;

use coffer_events::{Bus, JetStreamBus, Relay, StreamSettings};
use coffer_ledger::{
    AccountFlags, AccountId, Amount, Command, LedgerCode, NewAccount, NewLedger, NewTransfer, Scale,
    Submission, TransferId,
};
use coffer_store::{Store, StoreConfig};
use coffer_testkit::{Backend, TestStore};
use serde_json::Value;

const TRANSFERS: usize = 300;

async fn bus(settings: &StreamSettings) -> Option<JetStreamBus> {
    let url = std::env::var("COFFER_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    match JetStreamBus::connect(&url, settings).await {
        Ok(bus) => Some(bus),
        Err(e) => coffer_testkit::missing(&format!("NATS JetStream at {url}"), e),
    }
}

async fn workload(store: &dyn Store) {
    let usd = LedgerCode::try_from("USD").unwrap();
    let (a, b) = (AccountId::generate(), AccountId::generate());
    let mut commands =
        vec![Command::CreateLedger(NewLedger { code: usd, scale: Scale::try_from(2).unwrap() })];
    for id in [a, b] {
        let flags = AccountFlags::default();
        commands.push(Command::CreateAccount(NewAccount {
            id,
            ledger: usd,
            code: 1,
            flags,
            external_ref: None,
            metadata: None,
        }));
    }
    store.submit(Submission { commands, atomic: true }).await.unwrap();
    for chunk in 0..TRANSFERS / 50 {
        let commands = (0..50)
            .map(|i| {
                Command::CreateTransfer(NewTransfer {
                    id: TransferId(uuid::Uuid::new_v4()),
                    debit_account_id: a,
                    credit_account_id: b,
                    amount: Amount::try_from((chunk * 50 + i + 1) as u64).unwrap(),
                    ledger: usd,
                    code: 1,
                    pending: None,
                    external_ref: None,
                    metadata: None,
                })
            })
            .collect();
        store.submit(Submission { commands, atomic: false }).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_the_stream_once_and_in_order() {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let settings = StreamSettings {
        name: format!("COFFER_TEST_{}", tag.to_uppercase()),
        subject_prefix: format!("coffer_test_{tag}"),
        duplicate_window: Duration::from_secs(120),
        replicas: 1,
    };
    let Some(bus) = bus(&settings).await else { return };
    let bus = Arc::new(bus);
    let Some(store) = TestStore::open(Backend::Sqlite, StoreConfig::default()).await else { return };
    workload(store.as_ref()).await;
    let outbox = store.events_after(0, 10_000).await.unwrap();
    assert_eq!(outbox.len(), 2 + TRANSFERS);

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
    }
    bus.context().delete_stream(&settings.name).await.unwrap();
    store.shutdown().await;
}
