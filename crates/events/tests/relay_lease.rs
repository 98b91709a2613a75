//! Several relays on one store (`COFFER_TEST_NATS_URL`, default the local server): one
//! publishes, a standby takes over within about a lease when the active one dies without
//! giving the lease up, and a relay that stalled past its lease is fenced out — it cannot move
//! the position of the relay that replaced it.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_events::{JetStreamBus, Relay, RelayError, StreamSettings};
use coffer_store::StoreConfig;
use coffer_testkit::{Backend, TestStore};
use common::{ledger_with_accounts, local_jetstream, transfers, unique_stream};
use tokio::sync::watch;

coffer_testkit::on_each_backend! {
    #![tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_standby_relay_takes_over_when_the_active_one_dies,
    a_relay_that_stalled_past_its_lease_is_fenced_out,
}

const LEASE: Duration = Duration::from_millis(1000);

async fn bus() -> Option<(JetStreamBus, StreamSettings)> {
    let settings = unique_stream("lease", 1);
    Some((local_jetstream(&settings).await?, settings))
}

/// Messages in the stream.
async fn stored(bus: &JetStreamBus, settings: &StreamSettings) -> u64 {
    bus.context().get_stream(&settings.name).await.unwrap().cached_info().state.messages
}

async fn until_stored(bus: &JetStreamBus, settings: &StreamSettings, count: u64) -> Duration {
    let started = Instant::now();
    while stored(bus, settings).await < count {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "only {} of {count} events",
            stored(bus, settings).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

async fn a_standby_relay_takes_over_when_the_active_one_dies(backend: Backend) {
    let Some((bus, settings)) = bus().await else { return };
    let Some(store) = TestStore::open(backend, StoreConfig::default()).await else {
        return;
    };
    let pair = ledger_with_accounts(store.as_ref(), 2).await;
    let relay = |stop: watch::Receiver<bool>| {
        let relay = Relay::new(store.store.clone(), Arc::new(bus.clone()), "jetstream").with_lease(LEASE);
        tokio::spawn(relay.run(Duration::from_millis(10), stop))
    };
    let (stop, stopped) = watch::channel(false);
    let active = relay(stopped.clone());
    transfers(store.as_ref(), pair[0], pair[1], 100).await;
    until_stored(&bus, &settings, 102).await;

    let standby = relay(stopped);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The active relay dies without giving its lease up.
    active.abort();
    let _ = active.await;
    transfers(store.as_ref(), pair[0], pair[1], 100).await;
    let takeover = until_stored(&bus, &settings, 202).await;
    assert!(takeover < LEASE + Duration::from_secs(2), "the standby took {takeover:?} to take over");

    let outbox = store.events_after(0, 1000).await.unwrap();
    assert_eq!(stored(&bus, &settings).await, outbox.len() as u64, "every event once");
    // The position is saved right after the acks: give the standby that moment.
    let last = outbox.last().unwrap().position;
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.position("jetstream").await.unwrap() != last {
        assert!(Instant::now() < deadline, "the standby never saved its position");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    standby.await.unwrap();
    let _ = bus.context().delete_stream(&settings.name).await;
}

async fn a_relay_that_stalled_past_its_lease_is_fenced_out(backend: Backend) {
    let Some((bus, settings)) = bus().await else { return };
    let Some(store) = TestStore::open(backend, StoreConfig::default()).await else {
        return;
    };
    let pair = ledger_with_accounts(store.as_ref(), 2).await;
    let stale = store.acquire_lease("jetstream", "stalled", LEASE).await.unwrap().unwrap();
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    let current = store.acquire_lease("jetstream", "successor", LEASE * 10).await.unwrap().unwrap();
    assert!(current > stale);
    transfers(store.as_ref(), pair[0], pair[1], 10).await;

    let stalled = Relay::new(store.store.clone(), Arc::new(bus.clone()), "jetstream");
    assert!(matches!(stalled.catch_up(Some(stale)).await, Err(RelayError::Fenced)));
    assert_eq!(store.position("jetstream").await.unwrap(), 0, "the stalled relay moved nothing");
    let successor = Relay::new(store.store.clone(), Arc::new(bus.clone()), "jetstream");
    assert_eq!(successor.catch_up(Some(current)).await.unwrap(), 12);
    assert_eq!(
        stored(&bus, &settings).await,
        12,
        "what the stalled relay published was dropped as duplicates"
    );
    let _ = bus.context().delete_stream(&settings.name).await;
}
