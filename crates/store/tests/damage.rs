//! A row that does not decode, or a record that breaks one of the ledger's invariants, stops the
//! store for good, on both backends: the call that meets it gets the fatal error, every later
//! write gets it too, `ping` fails with it, and reads of intact rows go on.

mod common;

use coffer_ledger::{AccountId, Submission, TransferId};
use coffer_store::{Store, StoreConfig, StoreError};
use coffer_testkit::Backend;
use common::*;

coffer_testkit::on_each_backend! {
    #![tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_row_that_does_not_decode_stops_the_store_at_its_first_read,
    a_row_a_batch_loads_that_does_not_decode_stops_the_writer,
    an_account_past_its_limit_stops_the_writer_with_a_broken_invariant,
    a_damaged_event_stops_the_store_from_the_event_reader,
}

/// Asserts the store is stopped by a fatal error that `is_kind` accepts.
async fn assert_stopped(store: &dyn Store, is_kind: fn(&StoreError) -> bool) {
    let cause = store.halt().cause().expect("the store stopped");
    assert!(cause.is_fatal() && is_kind(&cause), "{cause:?}");
    let write = store.submit(Submission::one(ledger("EUR"))).await;
    assert!(write.as_ref().is_err_and(is_kind), "a later write: {write:?}");
    let ping = store.ping().await;
    assert!(ping.as_ref().is_err_and(is_kind), "ping: {ping:?}");
}

fn corrupt(e: &StoreError) -> bool {
    matches!(e, StoreError::Corrupt { .. })
}

fn broken(e: &StoreError) -> bool {
    matches!(e, StoreError::InvariantBroken { .. })
}

/// Ledger USD, an account `external_ref = "damaged"` and a plain one.
async fn two_accounts(store: &dyn Store) -> (AccountId, AccountId) {
    created(store, ledger("USD")).await;
    let (damaged, sound) = (AccountId::generate(), AccountId::generate());
    created(store, account(damaged, "USD", Some("damaged"))).await;
    created(store, account(sound, "USD", None)).await;
    (damaged, sound)
}

const DAMAGE_METADATA: &str = "UPDATE accounts SET metadata = 'not json' WHERE external_ref = 'damaged'";

async fn a_row_that_does_not_decode_stops_the_store_at_its_first_read(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let (damaged, sound) = two_accounts(&**store).await;
    store.tamper(DAMAGE_METADATA).await;

    assert!(store.account(sound).await.is_ok_and(|a| a.is_some()), "an intact row reads as before");
    assert!(store.halt().cause().is_none(), "nothing damaged was read yet");
    let read = store.account(damaged).await;
    assert!(read.as_ref().is_err_and(corrupt), "{read:?}");
    let cause = coffer_store::report(&read.unwrap_err());
    assert!(cause.contains("metadata") || cause.contains("does not decode"), "the cause is named: {cause}");
    assert_stopped(&**store, corrupt).await;
    assert!(store.account(sound).await.is_ok(), "reads of intact rows go on");
}

async fn a_row_a_batch_loads_that_does_not_decode_stops_the_writer(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let (damaged, sound) = two_accounts(&**store).await;
    store.tamper(DAMAGE_METADATA).await;
    // A restart: SQLite's writer would otherwise still hold the row as it wrote it.
    let store = store.reopen(StoreConfig::default()).await;

    let write =
        store.submit(Submission::one(transfer(TransferId::generate(), damaged, sound, 5, "USD"))).await;
    assert!(write.as_ref().is_err_and(corrupt), "{write:?}");
    assert_stopped(&**store, corrupt).await;
    assert_eq!(balance_of(&**store, sound).await.credits_posted, 0, "nothing of the batch applied");
}

async fn an_account_past_its_limit_stops_the_writer_with_a_broken_invariant(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    created(&**store, ledger("USD")).await;
    let (overdrawn, payer) = (AccountId::generate(), AccountId::generate());
    created(&**store, wallet(overdrawn, "USD")).await;
    created(&**store, account(payer, "USD", None)).await;
    // Debits with no credits on a wallet: a row that decodes but that no rule could have made.
    store.tamper("UPDATE accounts SET debits_posted = 5 WHERE code = 2").await;
    let store = store.reopen(StoreConfig::default()).await;

    // Paying into the wallet would be allowed by every rule; the core still refuses the state.
    let write =
        store.submit(Submission::one(transfer(TransferId::generate(), payer, overdrawn, 9, "USD"))).await;
    assert!(write.as_ref().is_err_and(broken), "{write:?}");
    let cause = coffer_store::report(&write.unwrap_err());
    assert!(cause.contains(&overdrawn.to_string()) && cause.contains("debits exceed credits"), "{cause}");
    assert_stopped(&**store, broken).await;
    assert_eq!(balance_of(&**store, payer).await.debits_posted, 0, "nothing of the batch applied");
}

async fn a_damaged_event_stops_the_store_from_the_event_reader(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    two_accounts(&**store).await;
    store.tamper("UPDATE outbox SET traceparent = 'not a traceparent'").await;
    let events = store.events_after(0, 10).await;
    assert!(events.as_ref().is_err_and(corrupt), "{events:?}");
    assert_stopped(&**store, corrupt).await;
}
