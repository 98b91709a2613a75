//! The outbox as the relay reads it: concurrent writers (several processes' stores on
//! PostgreSQL) commit transfers with random ids while a reader tails `events_after`. Positions
//! only ever grow, no event is skipped or repeated, and replaying the events in position order
//! never overdraws a wallet — so they are in the order the changes were made.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use coffer_ledger::{AccountId, Outcome, Submission, TransferId};
use coffer_store::{OutboxEvent, PageRequest, Store, StoreConfig, TransferFilter};
use coffer_testkit::Backend;
use common::*;
use serde_json::Value;

coffer_testkit::on_each_backend! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    a_tailing_reader_sees_every_event_once_in_commit_order,
    relay_positions_start_at_zero_and_only_move_forward,
    small_and_large_batches_link_into_one_chain,
}

const WORKERS: usize = 8;
const PER_WORKER: usize = 150;
const WALLETS: usize = 6;

/// Reads everything after `position` to the current end.
async fn drain(store: &dyn Store, position: &mut i64, into: &mut Vec<OutboxEvent>) {
    loop {
        let page = store.events_after(*position, 500).await.expect("read the outbox");
        let Some(last) = page.last() else { return };
        for event in &page {
            assert!(event.position > *position, "position {} after {}", event.position, *position);
            *position = event.position;
        }
        *position = last.position;
        into.extend(page);
    }
}

async fn a_tailing_reader_sees_every_event_once_in_commit_order(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    // Several writers on PostgreSQL; on SQLite the one store, with all the concurrency in its queue.
    let mut writers: Vec<Arc<dyn Store>> = vec![store.store.clone()];
    for _ in 0..2 {
        if let Some(other) = store.another_writer(StoreConfig::default()).await {
            writers.push(other);
        }
    }
    let funding = AccountId::generate();
    created(store.as_ref(), ledger("USD")).await;
    created(store.as_ref(), account(funding, "USD", None)).await;
    let wallets: Vec<AccountId> = (0..WALLETS).map(|_| AccountId::generate()).collect();
    for id in &wallets {
        created(store.as_ref(), wallet(*id, "USD")).await;
    }

    let done = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn({
        let (store, done) = (store.store.clone(), done.clone());
        async move {
            let (mut position, mut seen) = (0, Vec::new());
            while !done.load(Ordering::SeqCst) {
                drain(store.as_ref(), &mut position, &mut seen).await;
                // A relay's polling pace: often enough to read while the writers write.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            drain(store.as_ref(), &mut position, &mut seen).await;
            seen
        }
    });
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let (writers, wallets) = (writers.clone(), wallets.clone());
        tasks.spawn(async move {
            for i in 0..PER_WORKER {
                let writer = &writers[(w + i) % writers.len()];
                // Random (v4) ids: commits happen far out of id order.
                let id = TransferId(uuid::Uuid::new_v4());
                let wallet = wallets[(w + i) % WALLETS];
                let command = if i % 3 == 0 {
                    transfer(id, funding, wallet, 5, "USD")
                } else {
                    transfer(id, wallet, wallets[(w + i + 1) % WALLETS], 1 + (i % 4) as u64, "USD")
                };
                // Refusals (insufficient funds) are part of the load; they write no event.
                writer.submit(coffer_ledger::Submission::one(command)).await.expect("submit");
            }
        });
    }
    while let Some(task) = tasks.join_next().await {
        task.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let events = reader.await.unwrap();

    // Every event once.
    let ids: BTreeSet<_> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), events.len(), "an event was read twice");
    let created_transfers: Vec<Value> = events
        .iter()
        .filter(|e| e.kind == "coffer.transfer.created")
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    let mut stored = BTreeSet::new();
    let mut page = PageRequest::default();
    loop {
        let found = store.transfers(TransferFilter::default(), page).await.unwrap();
        stored.extend(found.items.iter().map(|t| t.id.0.to_string()));
        match found.next_cursor {
            Some(cursor) => page = PageRequest::new(Some(100), Some(cursor)).unwrap(),
            None => break,
        }
    }
    let announced: BTreeSet<String> =
        created_transfers.iter().map(|t| t["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(announced.len(), created_transfers.len(), "a transfer was announced twice");
    assert_eq!(announced, stored, "every transfer, and only those, has its event");
    assert!(stored.len() > WORKERS * PER_WORKER / 3, "too few transfers went through: {}", stored.len());

    // In position order, no wallet ever goes below zero, and each ends at its stored balance.
    let mut balances: HashMap<String, i128> = HashMap::new();
    let flagged: BTreeSet<String> = wallets.iter().map(|w| w.0.to_string()).collect();
    for t in &created_transfers {
        let amount = i128::from(t["amount"].as_u64().unwrap());
        *balances.entry(t["credit_account_id"].as_str().unwrap().to_owned()).or_default() += amount;
        let debit = t["debit_account_id"].as_str().unwrap().to_owned();
        let balance = balances.entry(debit.clone()).or_default();
        *balance -= amount;
        assert!(!flagged.contains(&debit) || *balance >= 0, "events out of order: {debit} overdrawn at {t}");
    }
    for w in &wallets {
        let b = balance_of(store.as_ref(), *w).await;
        let stored = i128::from(b.credits_posted) - i128::from(b.debits_posted);
        assert_eq!(balances.get(&w.0.to_string()).copied().unwrap_or(0), stored, "wallet {w:?}");
    }
    // Every event is linked into one hash chain, in position order, whichever writer wrote it.
    let chained = whole_chain(store.as_ref()).await;
    assert_eq!(chained, events, "the chain holds exactly the events the reader saw");
    for writer in writers.iter().skip(1) {
        writer.shutdown().await;
    }
    store.shutdown().await;
}

async fn relay_positions_start_at_zero_and_only_move_forward(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    assert_eq!(store.position("jetstream").await.unwrap(), 0);
    store.save_position("jetstream", 10, None).await.unwrap();
    store.save_position("jetstream", 7, None).await.unwrap();
    store.save_position("other", 3, None).await.unwrap();
    assert_eq!(store.position("jetstream").await.unwrap(), 10, "a stale position is ignored");
    assert_eq!(store.position("other").await.unwrap(), 3);
    let store = store.reopen(StoreConfig::default()).await;
    assert_eq!(store.position("jetstream").await.unwrap(), 10, "positions are durable");
    store.shutdown().await;
}

/// Small batches link their events on the writer's thread, large ones beside it (SQLite): the
/// chain runs on unbroken across both, and holds every event once.
async fn small_and_large_batches_link_into_one_chain(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let [a, b] = setup(store.as_ref(), 2).await[..] else { unreachable!() };
    for size in [3, 2_000, 1, 700, 5] {
        let commands = (0..size).map(|i| transfer(TransferId::generate(), a, b, 1 + i % 7, "USD")).collect();
        let outcomes = store.submit(Submission::new(commands, false)).await.unwrap();
        assert!(outcomes.iter().all(|o| matches!(o, Outcome::Created(_))), "{size}: {outcomes:?}");
    }
    let chain = whole_chain(store.as_ref()).await;
    let transfers = chain.iter().filter(|e| e.kind == "coffer.transfer.created").count();
    assert_eq!(transfers, 3 + 2_000 + 1 + 700 + 5);
    store.shutdown().await;
}
