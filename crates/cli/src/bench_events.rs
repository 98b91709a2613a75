//! `coffer bench-events`: the event pipeline's two figures, measured against a reference in the
//! same run.
//!
//! 1. **Relay throughput**: a backlog of transfers is committed, then the relay publishes it to
//!    a fresh JetStream stream (read the outbox, encode, publish, await the acks, save the
//!    position). The reference is a bare publisher sending the same encoded events, pipelined
//!    the same way, into another fresh stream: what the broker itself takes.
//! 2. **Commit → consumer latency** at a steady rate (5,000 transfers/s by default): writers
//!    submit single transfers on a fixed schedule, the relay publishes, and a durable consumer
//!    (the runtime, in batches, writing the ledger-volumes projection) records for each event
//!    the time from the transfer's commit batch to its handling.
//!
//! The store is PostgreSQL with `COFFER_DATABASE_URL`, else a temporary embedded store.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use coffer_events::{
    Bus, Consumer, Handler, HandlerError, JetStreamBus, JetStreamSource, JetStreamSourceSettings,
    LedgerVolumes, Relay, RetryPolicy, StreamSettings,
};
use coffer_ledger::{
    AccountFlags, AccountId, Amount, Command, LedgerCode, NewAccount, NewLedger, NewTransfer, Scale,
    Submission, Timestamp, TransferId,
};
use coffer_store::{OutboxEvent, Store};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use uuid::Uuid;

use crate::config::Config;

#[derive(clap::Args, Debug)]
pub struct BenchEventsArgs {
    /// Transfers in the backlog the relay publishes.
    #[arg(long, default_value_t = 100_000)]
    backlog: usize,
    /// Transfers per second during the latency run.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Length of the latency run, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

const ACCOUNTS: usize = 100;

pub async fn run(config: &Config, args: BenchEventsArgs) -> anyhow::Result<()> {
    let url = config.nats_url.clone().context("bench-events needs nats_url (COFFER_NATS_URL)")?;
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = match &config.database_url {
        Some(_) => crate::store::open(config).await?,
        None => coffer_store::SqliteStore::open(dir.path(), config.store.clone()).await?,
    };
    let tag = Uuid::now_v7().simple().to_string();
    let settings = |name: &str| StreamSettings {
        name: format!("BENCH_{name}_{}", tag.to_uppercase()),
        subject_prefix: format!("bench_{name}_{tag}").to_lowercase(),
        duplicate_window: Duration::from_secs(120),
        replicas: 1,
    };
    let accounts = setup(store.as_ref()).await?;

    // 1. Relay throughput against a bare publisher.
    let backlog = backlog(store.as_ref(), &accounts, args.backlog).await?;
    let relay_settings = settings("relay");
    let bus = Arc::new(JetStreamBus::connect(&url, &relay_settings).await?);
    let started = Instant::now();
    let relay = Relay::new(store.clone(), bus.clone(), format!("bench-{tag}"));
    let published = relay.catch_up(None).await?;
    let relay_rate = published as f64 / started.elapsed().as_secs_f64();
    let raw_settings = settings("raw");
    let raw = JetStreamBus::connect(&url, &raw_settings).await?;
    let started = Instant::now();
    for page in backlog.chunks(1000) {
        raw.publish(page).await?;
    }
    let raw_rate = backlog.len() as f64 / started.elapsed().as_secs_f64();

    // 2. Commit → consumer latency at a steady rate.
    let latency = latency_run(store.clone(), &url, settings("latency"), &accounts, &args, &tag).await?;

    for settings in [relay_settings, raw_settings] {
        let _ = bus.context().delete_stream(&settings.name).await;
    }
    store.shutdown().await;
    let report = serde_json::json!({
        "store": if config.database_url.is_some() { "postgresql" } else { "sqlite (temporary)" },
        "backlog_events": published,
        "relay_events_per_second": relay_rate.round(),
        "raw_publish_events_per_second": raw_rate.round(),
        "relay_vs_raw": (relay_rate / raw_rate * 100.0).round() / 100.0,
        "latency_rate_per_second": args.rate,
        "latency_events": latency.len(),
        "latency_ms": {
            "p50": latency.value_at_quantile(0.50) as f64 / 1000.0,
            "p90": latency.value_at_quantile(0.90) as f64 / 1000.0,
            "p99": latency.value_at_quantile(0.99) as f64 / 1000.0,
            "max": latency.max() as f64 / 1000.0,
        },
    });
    match args.json {
        true => println!("{report}"),
        false => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}

async fn setup(store: &dyn Store) -> anyhow::Result<Vec<AccountId>> {
    let ledger = LedgerCode::try_from("EVB").expect("a valid code");
    let ids: Vec<AccountId> = (0..ACCOUNTS).map(|_| AccountId::generate()).collect();
    let mut commands = vec![Command::CreateLedger(NewLedger { code: ledger, scale: Scale::try_from(2)? })];
    commands.extend(ids.iter().map(|id| {
        Command::CreateAccount(NewAccount {
            id: *id,
            ledger,
            code: 1,
            flags: AccountFlags::default(),
            external_ref: None,
            metadata: None,
        })
    }));
    store.submit(Submission::new(commands, true)).await?;
    Ok(ids)
}

fn transfer(accounts: &[AccountId], n: usize) -> Command {
    Command::CreateTransfer(NewTransfer {
        id: TransferId(Uuid::now_v7()),
        debit_account_id: accounts[n % ACCOUNTS],
        credit_account_id: accounts[(n + 1 + n / ACCOUNTS % (ACCOUNTS - 1)) % ACCOUNTS],
        amount: Amount::try_from(1 + (n % 1000) as u64).expect("a positive amount"),
        ledger: LedgerCode::try_from("EVB").expect("a valid code"),
        code: 1 + (n % 4) as u16,
        pending: None,
        external_ref: None,
        metadata: None,
    })
}

/// Commits `count` transfers in large batches; answers the outbox events they made.
async fn backlog(
    store: &dyn Store,
    accounts: &[AccountId],
    count: usize,
) -> anyhow::Result<Vec<OutboxEvent>> {
    let from = store.last_event_position().await?;
    let bar = ProgressBar::new(count as u64)
        .with_style(ProgressStyle::with_template("{bar:40} {pos}/{len} backlog transfers")?);
    for start in (0..count).step_by(5000) {
        let commands = (start..count.min(start + 5000)).map(|n| transfer(accounts, n)).collect();
        store.submit(Submission::new(commands, false)).await?;
        bar.set_position(count.min(start + 5000) as u64);
    }
    bar.finish_and_clear();
    let mut events = Vec::with_capacity(count);
    let mut position = from;
    loop {
        let page = store.events_after(position, 10_000).await?;
        let Some(last) = page.last() else { return Ok(events) };
        position = last.position;
        events.extend(page);
    }
}

/// Records commit → handling time of each event, then hands the batch to the projection.
struct Timed {
    histogram: Arc<Mutex<Histogram<u64>>>,
    inner: LedgerVolumes,
}

#[async_trait]
impl Handler for Timed {
    async fn handle(&self, events: &[OutboxEvent]) -> Result<(), HandlerError> {
        self.inner.handle(events).await?;
        let now = Timestamp::now().as_micros();
        let mut histogram = self.histogram.lock().unwrap_or_else(|p| p.into_inner());
        for event in events {
            histogram.saturating_record(u64::try_from(now - event.time.as_micros()).unwrap_or(0));
        }
        Ok(())
    }
}

async fn latency_run(
    store: Arc<dyn Store>,
    url: &str,
    settings: StreamSettings,
    accounts: &[AccountId],
    args: &BenchEventsArgs,
    tag: &str,
) -> anyhow::Result<Histogram<u64>> {
    let bus = JetStreamBus::connect(url, &settings).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relay_name = format!("bench-latency-{tag}");
    // Start after the backlog: only the paced transfers are timed.
    store.save_position(&relay_name, store.last_event_position().await?, None).await?;
    let relay = Relay::new(store.clone(), Arc::new(bus.clone()), relay_name);
    let relaying = tokio::spawn(relay.run(Duration::from_millis(5), stopped.clone()));
    let source_settings = JetStreamSourceSettings {
        consumer: format!("bench_{tag}"),
        types: vec!["coffer.transfer.created".into()],
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 10_000,
    };
    let source = JetStreamSource::open(bus.context(), &settings, source_settings).await?;
    let histogram = Arc::new(Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?));
    let handler = Timed { histogram: histogram.clone(), inner: LedgerVolumes::new(store.clone()) };
    let consuming =
        tokio::spawn(Consumer::new("bench", source, handler, RetryPolicy::default()).run(stopped));

    // Every millisecond, the transfers due by then, each its own submission.
    let total = (args.rate * args.seconds) as usize;
    let bar = ProgressBar::new(args.seconds)
        .with_style(ProgressStyle::with_template("{bar:40} {pos}/{len} s at the steady rate")?);
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    let started = Instant::now();
    let mut sent = 0;
    let mut writes = tokio::task::JoinSet::new();
    while sent < total {
        ticker.tick().await;
        let due = ((started.elapsed().as_secs_f64() * args.rate as f64) as usize).min(total);
        for n in sent..due {
            let (store, command) = (store.clone(), transfer(accounts, n));
            writes.spawn(async move { store.submit(Submission::one(command)).await });
        }
        sent = due;
        bar.set_position(started.elapsed().as_secs());
        while let Some(done) = writes.try_join_next() {
            done??;
        }
    }
    while let Some(done) = writes.join_next().await {
        done??;
    }
    bar.finish_and_clear();
    let deadline = Instant::now() + Duration::from_secs(30);
    while histogram.lock().unwrap_or_else(|p| p.into_inner()).len() < total as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    let _ = relaying.await;
    consuming.abort();
    let _ = bus.context().delete_stream(&settings.name).await;
    let histogram = histogram.lock().unwrap_or_else(|p| p.into_inner()).clone();
    anyhow::ensure!(
        histogram.len() == total as u64,
        "only {} of {total} events were consumed",
        histogram.len()
    );
    Ok(histogram)
}
