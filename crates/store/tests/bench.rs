//! Rough throughput of the store alone, without HTTP. Ignored by default; run with
//! `cargo test --release -p coffer-store --test bench -- --ignored --nocapture --test-threads 1`.
//! They print numbers and assert nothing about time; `RUST_LOG=coffer_store=debug` adds each
//! batch's phase timings.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_ledger::{AccountId, Command, Outcome, Submission, TransferId};
use coffer_store::{Books, SqliteStore, Store};
use common::*;

fn log() {
    let filter = tracing_subscriber::EnvFilter::from_default_env();
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

async fn accounts(store: &SqliteStore, n: usize) -> Vec<AccountId> {
    log();
    created(store, ledger("USD")).await;
    let ids: Vec<AccountId> = (0..n).map(|_| AccountId::generate()).collect();
    for chunk in ids.chunks(5000) {
        let commands = chunk.iter().map(|id| account(*id, "USD", None)).collect();
        store.submit(Submission::new(commands, false)).await.unwrap();
    }
    ids
}

fn random_transfer(accounts: &[AccountId], i: usize) -> Command {
    let a = (i.wrapping_mul(7919)) % accounts.len();
    let b = (a + 1 + i % (accounts.len() - 1)) % accounts.len();
    transfer(TransferId::generate(), accounts[a], accounts[b], 1 + (i % 100) as u64, "USD")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_batches_of_8000() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let ids = Arc::new(accounts(&store, 1_000).await);
    let (clients, batches_each, size) = (4, 25, 8000);
    // Built beforehand, so the clients take no CPU from the store while it is timed.
    let work: Vec<Vec<Submission>> = (0..clients)
        .map(|c| {
            (0..batches_each)
                .map(|b| {
                    let base = (c * batches_each + b) * size;
                    Submission::new((0..size).map(|i| random_transfer(&ids, base + i)).collect(), false)
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for submissions in work {
        let store = store.clone();
        tasks.spawn(async move {
            for submission in submissions {
                let outcomes = store.submit(submission).await.unwrap();
                assert!(outcomes.iter().all(|o| matches!(o, Outcome::Created(_))));
            }
        });
    }
    tasks.join_all().await;
    let total = clients * batches_each * size;
    let took = started.elapsed();
    let wal = std::fs::metadata(dir.path().join("coffer.db-wal")).map_or(0, |m| m.len());
    println!(
        "batches: {total} transfers in {took:?} = {:.0}/s, WAL {} MiB",
        total as f64 / took.as_secs_f64(),
        wal >> 20
    );
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_single_transfers_64_clients() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let ids = Arc::new(accounts(&store, 1_000).await);
    let (clients, each) = (64, 1500);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (store, ids) = (store.clone(), ids.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(each);
            for i in 0..each {
                let sent = Instant::now();
                let outcome = one(store.as_ref(), random_transfer(&ids, c * each + i)).await;
                assert!(matches!(outcome, Outcome::Created(_)));
                latencies.push(sent.elapsed());
            }
            latencies
        });
    }
    let mut latencies: Vec<Duration> = tasks.join_all().await.into_iter().flatten().collect();
    let took = started.elapsed();
    latencies.sort_unstable();
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "singles: {} in {took:?} = {:.0}/s, p50 {:?} p99 {:?} max {:?}",
        latencies.len(),
        latencies.len() as f64 / took.as_secs_f64(),
        p(0.5),
        p(0.99),
        p(1.0)
    );
    store.shutdown().await;
}
