//! What the events tests share: a ledger with accounts, transfer commands, and a JetStream
//! stream of the test's own on the local server (`COFFER_TEST_NATS_URL`).
#![allow(dead_code)] // each test binary uses its own part

use std::time::Duration;

use coffer_events::{JetStreamBus, StreamSettings};
use coffer_ledger::{
    AccountFlags, AccountId, Amount, Command, LedgerCode, NewAccount, NewLedger, NewTransfer, Scale,
    Submission, TransferId,
};
use coffer_store::Store;
use uuid::Uuid;

pub fn usd() -> LedgerCode {
    LedgerCode::try_from("USD").unwrap()
}

/// The ledger `USD` and `n` accounts on it that may go negative.
pub async fn ledger_with_accounts(store: &dyn Store, n: usize) -> Vec<AccountId> {
    let ids: Vec<AccountId> = (0..n).map(|_| AccountId::generate()).collect();
    let mut commands =
        vec![Command::CreateLedger(NewLedger { code: usd(), scale: Scale::try_from(2).unwrap() })];
    commands.extend(ids.iter().map(|id| {
        Command::CreateAccount(NewAccount {
            id: *id,
            ledger: usd(),
            code: 1,
            flags: AccountFlags::default(),
            external_ref: None,
            metadata: None,
        })
    }));
    store.submit(Submission::new(commands, true)).await.unwrap();
    ids
}

/// A transfer with a random (v4) id: transfers commit out of id order.
pub fn transfer(from: AccountId, to: AccountId, amount: u64, code: u16) -> Command {
    Command::CreateTransfer(NewTransfer {
        id: TransferId(Uuid::new_v4()),
        debit_account_id: from,
        credit_account_id: to,
        amount: Amount::try_from(amount).unwrap(),
        ledger: usd(),
        code,
        pending: None,
        external_ref: None,
        metadata: None,
    })
}

/// `count` transfers from `from` to `to` (amounts 1, 2, …) in submissions of 50.
pub async fn transfers(store: &dyn Store, from: AccountId, to: AccountId, count: u64) {
    for chunk in (1..=count).collect::<Vec<_>>().chunks(50) {
        let commands = chunk.iter().map(|amount| transfer(from, to, *amount, 1)).collect();
        store.submit(Submission::new(commands, false)).await.unwrap();
    }
}

/// A stream and subject prefix no other test uses, `replicas` copies.
pub fn unique_stream(prefix: &str, replicas: usize) -> StreamSettings {
    let tag = Uuid::new_v4().simple().to_string();
    StreamSettings {
        name: format!("{}_{}", prefix.to_uppercase(), tag.to_uppercase()),
        subject_prefix: format!("{}_{tag}", prefix.to_lowercase()),
        duplicate_window: Duration::from_secs(120),
        replicas,
    }
}

/// The local JetStream with `settings`' stream; None (skipped) when NATS is not there.
pub async fn local_jetstream(settings: &StreamSettings) -> Option<JetStreamBus> {
    let url = std::env::var("COFFER_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    match JetStreamBus::connect(&url, settings).await {
        Ok(bus) => Some(bus),
        Err(e) => coffer_testkit::missing(&format!("NATS JetStream at {url}"), e),
    }
}
