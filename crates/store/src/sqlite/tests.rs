//! Account listings across postings flushes (tiny in unit tests), a reopen and a lost buffer.

use coffer_ledger::{
    AccountFlags, AccountId, Amount, Command, LedgerCode, NewAccount, NewLedger, NewTransfer, Outcome, Scale,
};

use super::*;
use crate::Cursor;

fn code() -> LedgerCode {
    LedgerCode::try_from("USD").unwrap()
}

fn new_account(id: AccountId) -> Command {
    Command::CreateAccount(NewAccount {
        id,
        ledger: code(),
        code: 0,
        flags: AccountFlags::default(),
        external_ref: None,
        metadata: None,
    })
}

fn new_transfer(debit: AccountId, credit: AccountId) -> Command {
    Command::CreateTransfer(NewTransfer {
        id: TransferId::generate(),
        debit_account_id: debit,
        credit_account_id: credit,
        amount: Amount::try_from(1).unwrap(),
        ledger: code(),
        code: 0,
        pending: None,
        external_ref: None,
        metadata: None,
    })
}

async fn list_all(store: &SqliteStore, account: AccountId, limit: u32) -> Vec<TransferId> {
    let mut ids = Vec::new();
    let mut after: Option<Cursor> = None;
    loop {
        let filter = TransferFilter { account_id: Some(account), ledger: None };
        let page = store.transfers(filter, PageRequest::new(Some(limit), after).unwrap()).await.unwrap();
        ids.extend(page.items.iter().map(|t| t.id));
        match page.next_cursor {
            Some(cursor) => after = Some(cursor),
            None => return ids,
        }
    }
}

/// Transfers the postings table must hold (those up to `postings_through`), and all transfers.
fn postings_state(dir: &Path) -> (i64, i64) {
    let conn = schema::open_reader(dir).unwrap();
    conn.query_row(
        "SELECT (SELECT count(*) FROM transfers WHERE seq <= (SELECT transfer_seq FROM postings_through)), \
         (SELECT count(*) FROM transfers)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_listings_are_complete_on_both_sides_of_the_postings_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), StoreConfig::default()).await.unwrap();
    let ledger = Command::CreateLedger(NewLedger { code: code(), scale: Scale::try_from(2).unwrap() });
    let accounts: Vec<AccountId> = (0..5).map(|_| AccountId::generate()).collect();
    let mut commands = vec![ledger];
    commands.extend(accounts.iter().map(|id| new_account(*id)));
    store.submit(Submission::new(commands, false)).await.unwrap();

    // Batches of 1 to 7 transfers; every flush point falls somewhere inside a batch.
    let mut expected: Vec<Vec<TransferId>> = vec![Vec::new(); accounts.len()];
    for round in 0..40usize {
        let commands: Vec<Command> = (0..round % 7 + 1)
            .map(|i| new_transfer(accounts[(round + i) % 5], accounts[(round + 2 * i + 1) % 5]))
            .filter(|c| !matches!(c, Command::CreateTransfer(t) if t.debit_account_id == t.credit_account_id))
            .collect();
        for (command, outcome) in
            commands.iter().zip(store.submit(Submission::new(commands.clone(), false)).await.unwrap())
        {
            assert!(matches!(outcome, Outcome::Created(_)));
            if let Command::CreateTransfer(t) = command {
                for (n, account) in accounts.iter().enumerate() {
                    if *account == t.debit_account_id || *account == t.credit_account_id {
                        expected[n].push(t.id);
                    }
                }
            }
        }
    }
    // End with some postings still buffered (a flush empties the buffer, one transfer refills it).
    while postings_state(dir.path()).0 == postings_state(dir.path()).1 {
        let command = new_transfer(accounts[0], accounts[1]);
        store.submit(Submission::one(command.clone())).await.unwrap();
        if let Command::CreateTransfer(t) = command {
            expected[0].push(t.id);
            expected[1].push(t.id);
        }
    }
    assert!(postings_state(dir.path()).0 > 0, "no flush happened");
    for (n, account) in accounts.iter().enumerate() {
        for limit in [1, 2, 3, 7, 100] {
            assert_eq!(list_all(&store, *account, limit).await, expected[n], "account {n}, limit {limit}");
        }
    }
    store.shutdown().await;
    drop(store);

    // A new process writes what the old one held in memory, and lists the same.
    let store = SqliteStore::open(dir.path(), StoreConfig::default()).await.unwrap();
    let (covered, all) = postings_state(dir.path());
    assert_eq!(covered, all);
    for (n, account) in accounts.iter().enumerate() {
        assert_eq!(list_all(&store, *account, 4).await, expected[n]);
    }

    // A lost buffer (a commit of unknown fate) is rebuilt from the tables before the next batch.
    lock(&store.writer).lose_postings();
    store.submit(Submission::one(new_transfer(accounts[0], accounts[1]))).await.unwrap();
    for (n, account) in accounts.iter().enumerate().skip(2) {
        assert_eq!(list_all(&store, *account, 3).await, expected[n]);
    }
    store.shutdown().await;
}
