//! Cursor pagination: every filter, page after page, no item twice and none missed.

mod common;

use std::future::Future;

use coffer_ledger::{Account, AccountId, Command, Submission, Transfer, TransferId};
use coffer_store::{AccountFilter, Cursor, Page, PageRequest, StoreResult, TransferFilter};
use coffer_testkit::Backend;
use common::*;

coffer_testkit::on_each_backend! {
    accounts_page_through_each_filter,
    transfers_page_by_account_on_both_sides_and_by_ledger,
}

/// Reads every page of `limit` items, checking that only a full page points further.
async fn all_pages<T, F, Fut>(limit: u32, mut read: F) -> Vec<T>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: Future<Output = StoreResult<Page<T>>>,
{
    let mut items = Vec::new();
    let mut after: Option<Cursor> = None;
    loop {
        let page = read(PageRequest::new(Some(limit), after).unwrap()).await.unwrap();
        assert!(page.items.len() <= limit as usize);
        if page.next_cursor.is_some() {
            assert_eq!(page.items.len(), limit as usize, "only a full page has a next cursor");
        }
        items.extend(page.items);
        match page.next_cursor {
            Some(cursor) => after = Some(cursor),
            None => return items,
        }
    }
}

fn ids(accounts: &[Account]) -> Vec<AccountId> {
    accounts.iter().map(|a| a.id).collect()
}

fn transfer_ids(transfers: &[Transfer]) -> Vec<TransferId> {
    transfers.iter().map(|t| t.id).collect()
}

async fn accounts_page_through_each_filter(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    created(store.as_ref(), ledger("USD")).await;
    created(store.as_ref(), ledger("EUR")).await;
    let mut usd = Vec::new();
    let mut team = Vec::new();
    let mut all = Vec::new();
    let mut commands = Vec::new();
    for i in 0..37 {
        let id = AccountId::generate();
        let (on, tagged) = (if i % 3 == 0 { "EUR" } else { "USD" }, i % 4 == 0);
        commands.push(account(id, on, tagged.then_some("team-a")));
        all.push(id);
        if on == "USD" {
            usd.push(id);
        }
        if tagged {
            team.push((id, on));
        }
    }
    // Two submissions in separate batches, so sequence numbers span commits.
    let second = commands.split_off(20);
    store.submit(Submission::new(commands, false)).await.unwrap();
    store.submit(Submission::new(second, false)).await.unwrap();

    let s = store.clone();
    let listed =
        all_pages(4, |p| s.accounts(AccountFilter { ledger: Some(code("USD")), external_ref: None }, p))
            .await;
    assert_eq!(ids(&listed), usd);

    let by_ref = || Some(coffer_ledger::ExternalRef::try_from("team-a".to_owned()).unwrap());
    let listed =
        all_pages(2, |p| s.accounts(AccountFilter { ledger: None, external_ref: by_ref() }, p)).await;
    assert_eq!(ids(&listed), team.iter().map(|(id, _)| *id).collect::<Vec<_>>());

    let both = AccountFilter { ledger: Some(code("EUR")), external_ref: by_ref() };
    let listed = all_pages(1, |p| s.accounts(both.clone(), p)).await;
    let expected: Vec<AccountId> = team.iter().filter(|(_, on)| *on == "EUR").map(|(id, _)| *id).collect();
    assert_eq!(ids(&listed), expected);

    let listed = all_pages(5, |p| s.accounts(AccountFilter::default(), p)).await;
    assert_eq!(ids(&listed), all);
    assert_eq!(listed.len(), 37);
    store.shutdown().await;
}

async fn transfers_page_by_account_on_both_sides_and_by_ledger(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let accounts = setup(store.as_ref(), 4).await;
    created(store.as_ref(), ledger("EUR")).await;
    let (e1, e2) = (AccountId::generate(), AccountId::generate());
    created(store.as_ref(), account(e1, "EUR", None)).await;
    created(store.as_ref(), account(e2, "EUR", None)).await;

    let me = accounts[0];
    let (mut mine, mut usd, mut everything) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..6 {
        let mut commands: Vec<Command> = Vec::new();
        for i in 0..9usize {
            let id = TransferId::generate();
            let (debit, credit) = (accounts[(i + round) % 4], accounts[(i + round + 1) % 4]);
            commands.push(transfer(id, debit, credit, 1, "USD"));
            usd.push(id);
            everything.push(id);
            if debit == me || credit == me {
                mine.push(id);
            }
            if i % 4 == 0 {
                let id = TransferId::generate();
                commands.push(transfer(id, e1, e2, 1, "EUR"));
                everything.push(id);
            }
        }
        store.submit(Submission::new(commands, false)).await.unwrap();
    }
    assert!(mine.len() > 10);

    let s = store.clone();
    for limit in [1, 3, 5, mine.len() as u32, 1000] {
        let filter = TransferFilter { account_id: Some(me), ledger: None };
        let listed = all_pages(limit, |p| s.transfers(filter.clone(), p)).await;
        assert_eq!(transfer_ids(&listed), mine, "limit {limit}");
    }
    let filter = TransferFilter { account_id: Some(me), ledger: Some(code("USD")) };
    assert_eq!(transfer_ids(&all_pages(4, |p| s.transfers(filter.clone(), p)).await), mine);
    let filter = TransferFilter { account_id: Some(me), ledger: Some(code("EUR")) };
    assert!(all_pages(4, |p| s.transfers(filter.clone(), p)).await.is_empty());

    let filter = TransferFilter { account_id: None, ledger: Some(code("USD")) };
    assert_eq!(transfer_ids(&all_pages(7, |p| s.transfers(filter.clone(), p)).await), usd);
    let listed = all_pages(10, |p| s.transfers(TransferFilter::default(), p)).await;
    assert_eq!(transfer_ids(&listed), everything);

    let nobody = TransferFilter { account_id: Some(AccountId::generate()), ledger: None };
    assert!(all_pages(3, |p| s.transfers(nobody.clone(), p)).await.is_empty());
    store.shutdown().await;
}
