//! Helpers shared by the store's integration tests: a store in a temp dir and command builders.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;
use std::sync::Arc;

use coffer_ledger::{
    Account, AccountFlags, AccountId, Amount, Command, ExternalRef, LedgerCode, NewAccount, NewLedger,
    NewTransfer, Outcome, Record, Resolution, Scale, Submission, Transfer, TransferId,
};
use coffer_store::{SqliteStore, Store, StoreConfig};
use coffer_testkit::{Backend, TestStore};

pub async fn open(dir: &Path) -> Arc<SqliteStore> {
    open_with(dir, StoreConfig::default()).await
}

pub async fn open_with(dir: &Path, config: StoreConfig) -> Arc<SqliteStore> {
    SqliteStore::open(dir, config).await.expect("open the store")
}

/// A fresh store on `backend`; `None` when that backend's service is missing and the test is
/// skipped.
pub async fn fresh(backend: Backend) -> Option<TestStore> {
    fresh_with(backend, StoreConfig::default()).await
}

pub async fn fresh_with(backend: Backend, config: StoreConfig) -> Option<TestStore> {
    TestStore::open(backend, config).await
}

pub fn code(s: &str) -> LedgerCode {
    LedgerCode::try_from(s).unwrap()
}

pub fn amount(n: u64) -> Amount {
    Amount::try_from(n).unwrap()
}

pub fn ledger(c: &str) -> Command {
    Command::CreateLedger(NewLedger { code: code(c), scale: Scale::try_from(2).unwrap() })
}

pub fn account(id: AccountId, ledger: &str, external_ref: Option<&str>) -> Command {
    Command::CreateAccount(NewAccount {
        id,
        ledger: code(ledger),
        code: 1,
        flags: AccountFlags::default(),
        external_ref: external_ref.map(|r| ExternalRef::try_from(r.to_owned()).unwrap()),
        metadata: None,
    })
}

/// An account that cannot spend more than it received.
pub fn wallet(id: AccountId, ledger: &str) -> Command {
    Command::CreateAccount(NewAccount {
        id,
        ledger: code(ledger),
        code: 2,
        flags: AccountFlags { debits_must_not_exceed_credits: true, credits_must_not_exceed_debits: false },
        external_ref: None,
        metadata: None,
    })
}

pub fn transfer(id: TransferId, debit: AccountId, credit: AccountId, n: u64, ledger: &str) -> Command {
    Command::CreateTransfer(NewTransfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount: amount(n),
        ledger: code(ledger),
        code: 7,
        pending: None,
        external_ref: None,
        metadata: None,
    })
}

/// A hold, expiring after `timeout` seconds when given.
pub fn hold(
    id: TransferId,
    debit: AccountId,
    credit: AccountId,
    n: u64,
    ledger: &str,
    timeout: Option<u32>,
) -> Command {
    match transfer(id, debit, credit, n, ledger) {
        Command::CreateTransfer(t) => Command::CreateTransfer(NewTransfer { pending: Some(timeout), ..t }),
        _ => unreachable!(),
    }
}

pub fn resolution(id: TransferId, pending_id: TransferId, n: Option<u64>) -> Resolution {
    Resolution { id, pending_id, amount: n.map(amount), code: None, external_ref: None, metadata: None }
}

pub fn post(id: TransferId, pending_id: TransferId, n: Option<u64>) -> Command {
    Command::PostPending(resolution(id, pending_id, n))
}

pub fn void(id: TransferId, pending_id: TransferId) -> Command {
    Command::VoidPending(resolution(id, pending_id, None))
}

/// Submits one command and answers its outcome.
pub async fn one(store: &dyn Store, command: Command) -> Outcome {
    let mut outcomes = store.submit(Submission::one(command)).await.expect("submit");
    assert_eq!(outcomes.len(), 1);
    outcomes.pop().unwrap()
}

/// Submits one command that must apply.
pub async fn created(store: &dyn Store, command: Command) -> Record {
    match one(store, command).await {
        Outcome::Created(record) => record,
        other => panic!("expected Created, got {other:?}"),
    }
}

pub async fn created_transfer(store: &dyn Store, command: Command) -> Transfer {
    match created(store, command).await {
        Record::Transfer(t) => t,
        other => panic!("expected a transfer, got {other:?}"),
    }
}

pub async fn balance_of(store: &dyn Store, id: AccountId) -> coffer_ledger::Balance {
    let account: Account = store.account(id).await.unwrap().expect("account exists");
    account.balance
}

/// A ledger `USD` with `n` plain accounts on it.
pub async fn setup(store: &dyn Store, n: usize) -> Vec<AccountId> {
    created(store, ledger("USD")).await;
    let ids: Vec<AccountId> = (0..n).map(|_| AccountId::generate()).collect();
    let commands = ids.iter().map(|id| account(*id, "USD", None)).collect();
    let outcomes = store.submit(Submission::new(commands, true)).await.unwrap();
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Created(_))));
    ids
}

/// Walks the outbox's chain from its anchor to its head: every event the outbox holds follows
/// the one before, positions leave no gap, and the last is the head. Answers the events.
pub async fn whole_chain(store: &dyn Store) -> Vec<coffer_store::OutboxEvent> {
    let ends = store.outbox_chain().await.expect("read the chain's ends");
    let (mut previous, mut events) = (ends.anchor, Vec::new());
    loop {
        let page = store.events_after(previous.position, 500).await.expect("read the outbox");
        let Some(last) = page.last().cloned() else { break };
        for event in &page {
            assert_eq!(event.position, previous.position + 1, "a gap in the outbox after {previous:?}");
            assert!(event.follows(&previous.hash), "event {} does not follow {previous:?}", event.position);
            previous = coffer_store::chain::ChainLink { position: event.position, hash: event.hash.unwrap() };
        }
        events.extend(page);
        assert_eq!(previous.position, last.position);
    }
    assert_eq!(previous, ends.head, "the chain's head is its last event");
    events
}
