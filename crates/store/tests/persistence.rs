//! What is acknowledged stays: across a clean close, a crash-like drop, and offline administration.

mod common;

use std::sync::Arc;

use coffer_ledger::{AccountId, Transfer, TransferId, TransferStatus};
use coffer_store::{
    AuditContext, AuditFilter, AuditTrail, Books, KeyAdmin, KeyDirectory, KeyId, NewApiKey, Scope, Store,
    StoreError, TokenHash, sqlite_admin,
};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_and_holds_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let [a, b, c] = setup(store.as_ref(), 3).await[..] else { unreachable!() };
    let paid = created_transfer(store.as_ref(), transfer(TransferId::generate(), a, b, 100, "USD")).await;
    let held = created_transfer(store.as_ref(), hold(TransferId::generate(), b, c, 50, "USD", None)).await;
    let partly = created_transfer(store.as_ref(), hold(TransferId::generate(), a, c, 30, "USD", None)).await;
    created(store.as_ref(), post(TransferId::generate(), partly.id, Some(20))).await;
    store.shutdown().await;
    drop(store);

    let store = open(dir.path()).await;
    assert_eq!(store.transfer(paid.id).await.unwrap(), Some(paid));
    assert_eq!(store.transfer(held.id).await.unwrap().unwrap().status, TransferStatus::Pending);
    assert_eq!(store.transfer(partly.id).await.unwrap().unwrap().status, TransferStatus::Posted);
    let balance = balance_of(store.as_ref(), c).await;
    assert_eq!((balance.credits_pending, balance.credits_posted), (50, 20));

    // The hold loaded from disk can still be voided, and that releases it.
    created(store.as_ref(), void(TransferId::generate(), held.id)).await;
    let balance = balance_of(store.as_ref(), b).await;
    assert_eq!((balance.debits_pending, balance.debits_posted, balance.credits_posted), (0, 0, 100));
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_keeps_every_committed_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let accounts = setup(store.as_ref(), 4).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u64 {
        let store = store.clone();
        let (debit, credit) = (accounts[(i % 4) as usize], accounts[((i + 1) % 4) as usize]);
        tasks.spawn(async move {
            created_transfer(store.as_ref(), transfer(TransferId::generate(), debit, credit, i + 1, "USD"))
                .await
        });
    }
    let acknowledged: Vec<Transfer> = tasks.join_all().await;
    drop(store); // no shutdown: as if the process died right after the answers went out

    let store = open(dir.path()).await;
    for t in &acknowledged {
        assert_eq!(store.transfer(t.id).await.unwrap().as_ref(), Some(t));
    }
    let total: u64 = acknowledged.iter().map(|t| t.amount.get()).sum();
    let mut posted = 0;
    for id in &accounts {
        posted += balance_of(store.as_ref(), *id).await.debits_posted;
    }
    assert_eq!(posted, total);
    store.shutdown().await;
}

#[tokio::test]
async fn only_one_store_opens_a_data_dir_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path()).await;
    let second = coffer_store::SqliteStore::open(dir.path(), Default::default()).await;
    assert!(matches!(second, Err(StoreError::Unavailable { context, .. }) if context.contains("in use")));
    first.shutdown().await;
    drop(first);
    let again = open(dir.path()).await;
    again.shutdown().await;
}

#[tokio::test]
async fn events_are_written_to_the_outbox_with_the_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let [a, b] = setup(store.as_ref(), 2).await[..] else { unreachable!() };
    let t = created_transfer(store.as_ref(), transfer(TransferId::generate(), a, b, 5, "USD")).await;
    store.shutdown().await;

    let conn = rusqlite::Connection::open(dir.path().join("coffer.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT seq, source, type, subject, datacontenttype, data FROM outbox ORDER BY seq")
        .unwrap();
    let rows: Vec<(i64, String, String, [u8; 16], String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let types: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(types, ["coffer.account.created", "coffer.account.created", "coffer.transfer.created"]);
    let (_, source, _, subject, content_type, data) = rows.last().unwrap();
    assert_eq!((source.as_str(), content_type.as_str()), ("coffer", "application/json"));
    assert_eq!(*subject, *t.id.0.as_bytes());
    assert_eq!(serde_json::from_str::<Transfer>(data).unwrap(), t);
    assert!(rows.windows(2).all(|w| w[0].0 < w[1].0));
}

fn new_key(scopes: Vec<Scope>, hash: u8) -> NewApiKey {
    NewApiKey {
        id: KeyId(uuid::Uuid::now_v7()),
        name: Some(format!("key {hash}")),
        scopes,
        rate_limit_per_second: Some(50),
        expires_at: None,
        token_hash: TokenHash([hash; 32]),
        bare_token: false,
    }
}

#[tokio::test]
async fn migrate_is_idempotent_and_admin_works_beside_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let version = sqlite_admin::migrate(dir.path()).unwrap();
    assert_eq!(sqlite_admin::migrate(dir.path()).unwrap(), version);

    let store = open(dir.path()).await;
    assert_eq!(sqlite_admin::migrate(dir.path()).unwrap(), version);
    let by = AuditContext::cli("operator");
    let offline = sqlite_admin::create_key(dir.path(), new_key(vec![Scope::Read], 1), &by).unwrap();
    let seen = store.key_by_token(TokenHash([1; 32])).await.unwrap().unwrap();
    assert_eq!(seen, offline);
    assert!(sqlite_admin::revoke_key(dir.path(), offline.id, &by).unwrap());
    assert!(!sqlite_admin::revoke_key(dir.path(), KeyId(uuid::Uuid::now_v7()), &by).unwrap());
    // Both offline changes are in the audit trail, as the CLI user's; the missing key is not.
    let records = store.audit_records(&AuditFilter::default(), 0, 10).await.unwrap();
    let done: Vec<(&str, &str)> = records.iter().map(|r| (r.action.as_str(), r.actor.as_str())).collect();
    assert_eq!(done, [("key.created", "cli:operator"), ("key.revoked", "cli:operator")]);
    let revoked = store.key_by_token(TokenHash([1; 32])).await.unwrap().unwrap();
    assert!(revoked.revoked_at.is_some() && !revoked.allows(Scope::Read));
    assert_eq!(sqlite_admin::list_keys(dir.path()).unwrap(), vec![revoked]);
    store.shutdown().await;
}

#[tokio::test]
async fn keys_bootstrap_only_into_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    assert!(store.key_by_token(TokenHash([9; 32])).await.unwrap().is_none());
    assert!(store.bootstrap_key(new_key(vec![Scope::Admin], 9)).await.unwrap());
    assert!(!store.bootstrap_key(new_key(vec![Scope::Admin], 8)).await.unwrap());
    let admin = store.key_by_token(TokenHash([9; 32])).await.unwrap().unwrap();
    assert!(admin.allows(Scope::Write) && admin.revoked_at.is_none());
    assert!(store.key_by_token(TokenHash([8; 32])).await.unwrap().is_none());

    let writer = store.create_key(new_key(vec![Scope::Read, Scope::Write], 7)).await.unwrap();
    assert_eq!(store.keys().await.unwrap().len(), 2);
    assert!(store.revoke_key(writer.id).await.unwrap());
    assert!(!store.revoke_key(KeyId(uuid::Uuid::now_v7())).await.unwrap());
    let first = store.key_by_token(TokenHash([7; 32])).await.unwrap().unwrap().revoked_at;
    assert!(store.revoke_key(writer.id).await.unwrap());
    assert_eq!(store.key_by_token(TokenHash([7; 32])).await.unwrap().unwrap().revoked_at, first);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_shutdown_submissions_are_refused_and_reads_still_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = open(dir.path()).await;
    let [a, b] = setup(store.as_ref(), 2).await[..] else { unreachable!() };
    store.shutdown().await;
    let late =
        store.submit(coffer_ledger::Submission::one(transfer(TransferId::generate(), a, b, 1, "USD"))).await;
    assert!(matches!(late, Err(StoreError::Unavailable { .. })));
    assert!(store.ping().await.is_err());
    assert!(store.account(a).await.unwrap().is_some());
    assert!(store.account(AccountId::generate()).await.unwrap().is_none());
}
