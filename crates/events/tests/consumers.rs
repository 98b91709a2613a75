//! The consumer runtime on both buses — the in-process one that tails the outbox, and NATS
//! JetStream fed by the relay (`COFFER_TEST_NATS_URL`, default the local server) — with the
//! things a consumer must survive: concurrent writers committing out of id order, consumers
//! killed between their effect and their ack, and a handler that always fails.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use coffer_events::{
    Consumer, DeadLetterQueue, DeadLetterStream, Handler, HandlerError, JetStreamBus, JetStreamSource,
    JetStreamSourceSettings, LedgerVolumes, OutboxSource, Relay, RetryPolicy, StoreDeadLetters,
    StreamSettings, VOLUMES_CONSUMER, VOLUMES_EVENT_TYPE, day_of,
};
use coffer_ledger::{AccountId, Outcome, Submission, Timestamp};
use coffer_store::{AuditContext, OutboxEvent, Store, StoreConfig};
use coffer_testkit::{Backend, TestStore};
use common::{ledger_with_accounts, local_jetstream, transfer, unique_stream, usd};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Bus {
    InProcess,
    JetStream,
}

/// A store, and on JetStream a unique stream with a relay feeding it.
struct Harness {
    store: TestStore,
    jetstream: Option<(JetStreamBus, StreamSettings)>,
    stop: watch::Sender<bool>,
    relay: Option<JoinHandle<()>>,
}

impl Harness {
    async fn new(bus: Bus) -> Option<Harness> {
        let store = TestStore::open(Backend::Sqlite, StoreConfig::default()).await?;
        let (stop, stopped) = watch::channel(false);
        let mut harness = Harness { store, jetstream: None, stop, relay: None };
        if bus == Bus::JetStream {
            let settings = unique_stream("coffer_test", 1);
            let js = local_jetstream(&settings).await?;
            let relay = Relay::new(harness.store.store.clone(), Arc::new(js.clone()), "jetstream");
            harness.relay = Some(tokio::spawn(relay.run(Duration::from_millis(10), stopped)));
            harness.jetstream = Some((js, settings));
        }
        Some(harness)
    }

    /// Starts a consumer of `types` running `handler`.
    async fn consumer<H: Handler>(
        &self,
        name: &str,
        types: &[&str],
        handler: H,
        retry: RetryPolicy,
    ) -> JoinHandle<()> {
        let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
        let stopped = self.stop.subscribe();
        match &self.jetstream {
            None => {
                let source =
                    OutboxSource::open(self.store.store.clone(), name, types, Duration::from_millis(10))
                        .await
                        .unwrap();
                tokio::spawn(Consumer::new(name, source, handler, retry).run(stopped))
            }
            Some((js, settings)) => {
                let source_settings = JetStreamSourceSettings {
                    consumer: name.to_owned(),
                    types,
                    ack_wait: Duration::from_secs(1),
                    max_ack_pending: 1000,
                };
                let source = JetStreamSource::open(js.context(), settings, source_settings).await.unwrap();
                tokio::spawn(Consumer::new(name, source, handler, retry).run(stopped))
            }
        }
    }

    async fn dead_letters(&self) -> Arc<dyn DeadLetterQueue> {
        match &self.jetstream {
            None => Arc::new(StoreDeadLetters(self.store.store.clone())),
            Some((js, settings)) => Arc::new(DeadLetterStream::open(js.context(), settings).await.unwrap()),
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        if let Some(relay) = self.relay {
            relay.await.unwrap();
        }
        if let Some((js, settings)) = &self.jetstream {
            for name in [settings.name.clone(), format!("{}_DLQ", settings.name)] {
                let _ = js.context().delete_stream(&name).await;
            }
        }
    }
}

/// Expected projection rows: (day, code) → (count, volume).
type Volumes = BTreeMap<(i32, u16), (u64, u128)>;

/// `total` transfers from `writers` concurrent tasks, one submission each; answers what the
/// projection must end up holding.
async fn concurrent_transfers(
    store: Arc<dyn Store>,
    accounts: Vec<AccountId>,
    writers: usize,
    total: usize,
) -> Volumes {
    let expected = Arc::new(Mutex::new(Volumes::new()));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, accounts, expected) = (store.clone(), accounts.clone(), expected.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..total / writers {
                let n = w * 7919 + i * 31;
                let (from, to) = (accounts[n % accounts.len()], accounts[(n + 1) % accounts.len()]);
                let (amount, code) = (1 + (n as u64 % 997), 1 + (n % 3) as u16);
                let outcome = store.submit(Submission::one(transfer(from, to, amount, code))).await.unwrap();
                let Outcome::Created(coffer_ledger::Record::Transfer(t)) = &outcome[0] else {
                    panic!("transfer refused: {outcome:?}")
                };
                let mut expected = expected.lock().unwrap();
                let row = expected.entry((day_of(t.created_at), code)).or_default();
                row.0 += 1;
                row.1 += u128::from(amount);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(expected).unwrap().into_inner().unwrap()
}

async fn projection(store: &dyn Store) -> Volumes {
    let today = day_of(Timestamp::now());
    let rows = store.ledger_volumes(&usd(), today - 2, today + 2).await.unwrap();
    rows.into_iter().map(|r| ((r.day, r.code), (r.count, r.volume))).collect()
}

/// The projection ends exact although its consumer is killed again and again — at any await
/// point, so also after a batch's effect committed and before its ack — while eight writers
/// commit 1,000 transfers with random ids.
async fn projection_survives_crashes_and_out_of_order_writes(bus: Bus) {
    let Some(h) = Harness::new(bus).await else { return };
    let store = h.store.store.clone();
    let ids = ledger_with_accounts(store.as_ref(), 10).await;
    let retry = RetryPolicy::default();
    let types = [VOLUMES_EVENT_TYPE];

    let writes = tokio::spawn(concurrent_transfers(store.clone(), ids, 8, 1000));
    let mut kills = 0;
    while !writes.is_finished() {
        let consumer = h.consumer(VOLUMES_CONSUMER, &types, LedgerVolumes::new(store.clone()), retry).await;
        tokio::time::sleep(Duration::from_millis(40 + 30 * (kills % 5))).await;
        consumer.abort();
        let _ = consumer.await;
        kills += 1;
    }
    let expected = writes.await.unwrap();
    assert!(kills >= 3, "the consumer was killed only {kills} times");

    let consumer = h.consumer(VOLUMES_CONSUMER, &types, LedgerVolumes::new(store.clone()), retry).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = projection(store.as_ref()).await;
    while seen != expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = projection(store.as_ref()).await;
    }
    assert_eq!(seen, expected, "the projection after {kills} consumer kills");
    // Nothing arrives late and counts twice.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(projection(store.as_ref()).await, expected);
    assert_eq!(expected.values().map(|v| v.0).sum::<u64>(), 1000);
    consumer.abort();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_process_projection_survives_crashes_and_out_of_order_writes() {
    projection_survives_crashes_and_out_of_order_writes(Bus::InProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jetstream_projection_survives_crashes_and_out_of_order_writes() {
    projection_survives_crashes_and_out_of_order_writes(Bus::JetStream).await;
}

/// Fails while `broken`, and records when each event was tried and how often it was handled.
#[derive(Clone, Default)]
struct Flaky {
    broken: Arc<AtomicBool>,
    tries: Arc<Mutex<HashMap<Uuid, Vec<Instant>>>>,
    handled: Arc<Mutex<HashMap<Uuid, u32>>>,
}

#[async_trait]
impl Handler for Flaky {
    async fn handle(&self, events: &[OutboxEvent]) -> Result<(), HandlerError> {
        let mut tries = self.tries.lock().unwrap();
        for event in events {
            tries.entry(event.id).or_default().push(Instant::now());
        }
        if self.broken.load(Ordering::SeqCst) {
            return Err(HandlerError::new("the downstream service is down"));
        }
        let mut handled = self.handled.lock().unwrap();
        for event in events {
            *handled.entry(event.id).or_default() += 1;
        }
        Ok(())
    }
}

async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A handler that always fails: its event is tried `max_attempts` times with growing delays,
/// then dead-lettered with the error, the attempts and its position; after the fix a replay
/// delivers it exactly once.
async fn failing_handler_dead_letters_then_replay_delivers_once(bus: Bus) {
    let Some(h) = Harness::new(bus).await else { return };
    let store = h.store.store.clone();
    let ids = ledger_with_accounts(store.as_ref(), 2).await;
    let flaky = Flaky::default();
    flaky.broken.store(true, Ordering::SeqCst);
    let retry = RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(5),
    };
    let consumer = h.consumer("flaky", &[VOLUMES_EVENT_TYPE], flaky.clone(), retry).await;
    store.submit(Submission::one(transfer(ids[0], ids[1], 500, 7))).await.unwrap();

    let dlq = h.dead_letters().await;
    let letter =
        eventually("the dead letter", async || dlq.list(Some("flaky"), None, 10).await.unwrap().pop()).await;
    let event = letter.event.clone().expect("the dead letter holds the event");
    assert_eq!(letter.attempts, 4);
    assert_eq!(letter.error, "the downstream service is down");
    let original = store.events_after(0, 100).await.unwrap().into_iter().find(|e| e.id == event.id).unwrap();
    assert_eq!(event.position, original.position, "the dead letter keeps the original position");

    // The backoff schedule: 200, 400, 800 ms before attempts 2, 3, 4, each with up to half jitter.
    let tries = flaky.tries.lock().unwrap()[&event.id].clone();
    assert_eq!(tries.len(), 4, "one try per attempt");
    for (i, pair) in tries.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let full = Duration::from_millis(200 << i);
        assert!(gap >= full / 2, "gap {i} was {gap:?}, under half of {full:?}");
        assert!(gap <= full + Duration::from_millis(1500), "gap {i} was {gap:?}, far over {full:?}");
    }
    assert!(flaky.handled.lock().unwrap().is_empty());

    flaky.broken.store(false, Ordering::SeqCst);
    assert!(dlq.replay(&letter.id, &AuditContext::cli("test")).await.unwrap().found());
    eventually("the replayed delivery", async || flaky.handled.lock().unwrap().get(&event.id).copied()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(flaky.handled.lock().unwrap()[&event.id], 1, "delivered exactly once after the replay");
    assert!(dlq.list(Some("flaky"), None, 10).await.unwrap().is_empty(), "the dead letter is gone");
    assert!(
        !dlq.replay(&letter.id, &AuditContext::cli("test")).await.unwrap().found(),
        "a replayed letter cannot be replayed again"
    );
    consumer.abort();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_failing_handler_dead_letters_then_replay_delivers_once() {
    failing_handler_dead_letters_then_replay_delivers_once(Bus::InProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_failing_handler_dead_letters_then_replay_delivers_once() {
    failing_handler_dead_letters_then_replay_delivers_once(Bus::JetStream).await;
}

/// Counts the events one process's consumer handled, around the real handler.
struct Counted<H> {
    inner: H,
    handled: Arc<AtomicUsize>,
}

#[async_trait]
impl<H: Handler> Handler for Counted<H> {
    async fn handle(&self, events: &[OutboxEvent]) -> Result<(), HandlerError> {
        self.inner.handle(events).await?;
        self.handled.fetch_add(events.len(), Ordering::SeqCst);
        Ok(())
    }
}

/// Two processes run the same in-process consumer on one database, as two replicas with the
/// worker role do: one reads and handles every event, the other stands by; when the active one
/// goes away the standby takes over from the saved position, and the projection stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_process_consumers_of_one_name_run_one_at_a_time_and_a_standby_takes_over() {
    let Some(h) = Harness::new(Bus::InProcess).await else { return };
    let store = h.store.store.clone();
    let ids = ledger_with_accounts(store.as_ref(), 10).await;
    let start = async |handled: Arc<AtomicUsize>| {
        let types = vec![VOLUMES_EVENT_TYPE.to_owned()];
        let source = OutboxSource::open(store.clone(), VOLUMES_CONSUMER, types, Duration::from_millis(10))
            .await
            .unwrap()
            .exclusive(Duration::from_millis(600));
        let handler = Counted { inner: LedgerVolumes::new(store.clone()), handled };
        Consumer::new(VOLUMES_CONSUMER, source, handler, RetryPolicy::default())
    };
    let counts = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let mut running = Vec::new();
    for handled in &counts {
        running.push(tokio::spawn(start(handled.clone()).await.run(h.stop.subscribe())));
    }
    let reaches = |expected: Volumes| {
        let store = store.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while projection(store.as_ref()).await != expected {
                assert!(Instant::now() < deadline, "the projection did not reach {expected:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    let mut expected = concurrent_transfers(store.clone(), ids.clone(), 4, 200).await;
    reaches(expected.clone()).await;
    let handled = counts.each_ref().map(|c| c.load(Ordering::SeqCst));
    let active = if handled[0] > 0 { 0 } else { 1 };
    assert_eq!((handled[active], handled[1 - active]), (200, 0), "one process handled every event once");

    // The active one goes away once its position is saved (else the standby would handle its
    // last events again: harmless, but not what this counts); the standby takes over and
    // handles what follows.
    let end = store.last_event_position().await.unwrap();
    let position_name = OutboxSource::position_name(VOLUMES_CONSUMER);
    eventually("the position saved", async || {
        (store.position(&position_name).await.unwrap() == end).then_some(())
    })
    .await;
    running.remove(active).abort();
    for (key, (count, volume)) in concurrent_transfers(store.clone(), ids, 4, 100).await {
        let row = expected.entry(key).or_default();
        row.0 += count;
        row.1 += volume;
    }
    reaches(expected).await;
    assert_eq!(counts[1 - active].load(Ordering::SeqCst), 100, "the standby handled what followed, once");
    assert_eq!(counts[active].load(Ordering::SeqCst), 200);
    h.stop().await;
}
