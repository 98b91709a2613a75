//! Holds expire by themselves at their timeout and release what they held.

mod common;

use std::time::{Duration, Instant};

use coffer_ledger::{Outcome, RejectCode, TransferId, TransferStatus};
use coffer_store::{Books, Store, StoreConfig};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_expires_at_its_timeout_and_releases_the_balances() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig { expiry_interval_ms: 100, ..StoreConfig::default() };
    let store = open_with(dir.path(), config).await;
    let [a, b] = setup(store.as_ref(), 2).await[..] else { unreachable!() };
    let expiring =
        created_transfer(store.as_ref(), hold(TransferId::generate(), a, b, 40, "USD", Some(1))).await;
    let kept = created_transfer(store.as_ref(), hold(TransferId::generate(), a, b, 7, "USD", Some(1))).await;
    let forever = created_transfer(store.as_ref(), hold(TransferId::generate(), a, b, 3, "USD", None)).await;
    created(store.as_ref(), post(TransferId::generate(), kept.id, None)).await;
    assert_eq!(balance_of(store.as_ref(), a).await.debits_pending, 43);

    let started = Instant::now();
    loop {
        let status = store.transfer(expiring.id).await.unwrap().unwrap().status;
        if status == TransferStatus::Expired {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the hold never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let debit = balance_of(store.as_ref(), a).await;
    let credit = balance_of(store.as_ref(), b).await;
    assert_eq!((debit.debits_pending, debit.debits_posted), (3, 7));
    assert_eq!((credit.credits_pending, credit.credits_posted), (3, 7));
    assert_eq!(store.transfer(kept.id).await.unwrap().unwrap().status, TransferStatus::Posted);
    assert_eq!(store.transfer(forever.id).await.unwrap().unwrap().status, TransferStatus::Pending);
    assert_eq!(
        one(store.as_ref(), post(TransferId::generate(), expiring.id, None)).await,
        Outcome::Rejected(RejectCode::PendingTransferExpired)
    );
    store.shutdown().await;

    let conn = rusqlite::Connection::open(dir.path().join("coffer.db")).unwrap();
    let expired_events: i64 = conn
        .query_row("SELECT count(*) FROM outbox WHERE type = 'coffer.transfer.expired'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(expired_events, 1);
}
