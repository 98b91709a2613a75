//! The event pipeline's roles in a `coffer serve` process: the relay (outbox → JetStream) and
//! the worker (the consumers — the ledger-volumes projection and the webhook fan-out — and the
//! webhook dispatcher), each on the bus the configuration picks: JetStream when `nats_url` is
//! set, else the in-process bus that tails the outbox.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use coffer_events::{
    BusError, Consumer, DeadLetterQueue, DeadLetterStream, Dispatcher, EventsConfig, Handler, JetStreamBus,
    JetStreamSource, JetStreamSourceSettings, LedgerVolumes, OutboxSource, Relay, SecretKeys,
    StoreDeadLetters, StreamRole, VOLUMES_CONSUMER, VOLUMES_EVENT_TYPE, WEBHOOKS_CONSUMER, WebhookFanout,
    WebhookSettings, watch_depth,
};
use coffer_ledger::Timestamp;
use coffer_store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, Role};

/// The relay's name: its position and its lease in the store.
pub const RELAY_NAME: &str = "jetstream";

/// The running background roles.
pub struct Pipeline {
    /// Where the API finds the dead letters (none in a relay-only process).
    pub dead_letters: Option<Arc<dyn DeadLetterQueue>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// What each consumer is: its durable name, the event types it reads, and its handler.
fn consumers(store: &Arc<dyn Store>) -> Vec<(&'static str, Vec<String>, Arc<dyn Handler>)> {
    vec![
        (VOLUMES_CONSUMER, vec![VOLUMES_EVENT_TYPE.to_owned()], Arc::new(LedgerVolumes::new(store.clone()))),
        (WEBHOOKS_CONSUMER, Vec::new(), Arc::new(WebhookFanout::new(store.clone()))),
    ]
}

pub async fn start(
    config: &Config,
    store: Arc<dyn Store>,
    webhook_keys: Arc<SecretKeys>,
) -> anyhow::Result<Pipeline> {
    let (stop, stopped) = watch::channel(false);
    let events = &config.events;
    let mut tasks = Vec::new();
    if config.roles.contains(&Role::Worker) {
        let settings = WebhookSettings {
            allow_private_networks: config.webhook_allow_private_networks,
            allow_insecure_http: config.webhook_allow_insecure_http,
            ..Default::default()
        };
        let dispatcher = Dispatcher::new(store.clone(), settings, webhook_keys)
            .context("cannot start the webhook dispatcher")?;
        tasks.push(tokio::spawn(dispatcher.run(stopped.clone())));
    }
    let dead_letters: Option<Arc<dyn DeadLetterQueue>> = match config.nats() {
        None => {
            if config.roles.contains(&Role::Worker) {
                for (name, types, handler) in consumers(&store) {
                    let source = OutboxSource::open(store.clone(), name, types, events.poll_interval())
                        .await?
                        .exclusive(Duration::from_millis(events.relay_lease_ms));
                    let consumer = Consumer::new(name, source, handler, events.retry_policy());
                    tasks.push(tokio::spawn(consumer.run(stopped.clone())));
                }
                tasks.push(tokio::spawn(prune(
                    store.clone(),
                    events.clone(),
                    in_process_readers(&store),
                    stopped.clone(),
                )));
            }
            Some(Arc::new(StoreDeadLetters(store.clone())))
        }
        Some(nats) => {
            let settings = events.stream_settings();
            // The relay keeps the stream's settings; a process without it only reads the stream,
            // as the worker user of deploy/nats/ may.
            let role = match config.roles.contains(&Role::Relay) {
                true => StreamRole::Manage,
                false => StreamRole::Use,
            };
            // Its error says where (hosts and ports, never a password) and what NATS said.
            let bus = JetStreamBus::connect_with(&nats, &settings, role).await.map_err(|e| match e {
                BusError::Unavailable(why) => anyhow::anyhow!("{why} (nats_url)"),
                other => anyhow::Error::new(other).context("cannot reach NATS JetStream (nats_url)"),
            })?;
            if config.roles.contains(&Role::Relay) {
                let relay = Relay::new(store.clone(), Arc::new(bus.clone()), RELAY_NAME)
                    .with_lease(Duration::from_millis(events.relay_lease_ms));
                tasks.push(tokio::spawn(relay.run(events.poll_interval(), stopped.clone())));
                tasks.push(tokio::spawn(prune(
                    store.clone(),
                    events.clone(),
                    vec![RELAY_NAME.into()],
                    stopped.clone(),
                )));
            }
            if config.roles.contains(&Role::Worker) {
                for (name, types, handler) in consumers(&store) {
                    let source_settings = JetStreamSourceSettings {
                        consumer: name.to_owned(),
                        types,
                        ack_wait: Duration::from_millis(events.ack_wait_ms),
                        max_ack_pending: events.max_ack_pending,
                    };
                    let source = JetStreamSource::open(bus.context(), &settings, source_settings).await?;
                    let consumer = Consumer::new(name, source, handler, events.retry_policy());
                    tasks.push(tokio::spawn(consumer.run(stopped.clone())));
                }
            }
            // A relay alone has no use for the dead letters, and its user no access to them.
            match config.roles.iter().any(|role| matches!(role, Role::Api | Role::Worker)) {
                true => Some(Arc::new(DeadLetterStream::open(bus.context(), &settings).await?)),
                false => None,
            }
        }
    };
    if let (true, Some(dead_letters)) = (config.roles.contains(&Role::Worker), &dead_letters) {
        let depth = watch_depth(dead_letters.clone(), Duration::from_secs(10), stopped.clone());
        tasks.push(tokio::spawn(depth));
    }
    Ok(Pipeline { dead_letters, stop, tasks })
}

/// The positions the in-process bus's readers keep: the outbox is pruned below the lowest.
fn in_process_readers(store: &Arc<dyn Store>) -> Vec<String> {
    consumers(store).iter().map(|(name, ..)| OutboxSource::position_name(name)).collect()
}

/// Deletes outbox rows every reader has passed once they are older than the retention window.
async fn prune(
    store: Arc<dyn Store>,
    events: EventsConfig,
    readers: Vec<String>,
    mut stop: watch::Receiver<bool>,
) {
    const EVERY: Duration = Duration::from_secs(60);
    let retention_micros =
        i64::try_from(events.outbox_retention_hours.saturating_mul(3_600_000_000)).unwrap_or(i64::MAX);
    while !*stop.borrow() {
        let mut lowest = i64::MAX;
        for reader in &readers {
            match store.position(reader).await {
                Ok(position) => lowest = lowest.min(position),
                Err(e) => {
                    tracing::warn!(error = %e, "outbox retention: could not read a position");
                    lowest = 0;
                }
            }
        }
        let older_than = Timestamp::now().as_micros().saturating_sub(retention_micros);
        match store.prune_outbox(lowest, older_than).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "outbox retention: deleted relayed rows past the window"),
            Err(e) => tracing::warn!(error = %e, "outbox retention: prune failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.changed() => {}
        }
    }
}

impl Pipeline {
    /// Stops the roles and waits for them: a relay gives its lease up, consumers finish the
    /// batch in hand.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
