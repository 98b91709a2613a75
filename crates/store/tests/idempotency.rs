//! Idempotency-Key records: proceed, in flight, replay, mismatch, and exactly one winner.

mod common;

use std::sync::Arc;

use coffer_store::{
    Fingerprint, IdempotencyBegin, IdempotencyScope, KeyId, Store, StoreError, StoredResponse,
};
use coffer_testkit::Backend;
use common::*;

coffer_testkit::on_each_backend! {
    begin_complete_replay_and_mismatch,
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    of_64_concurrent_begins_exactly_one_proceeds,
}

fn scope(key: &str) -> IdempotencyScope {
    IdempotencyScope { principal: KeyId(uuid::Uuid::from_u128(42)), key: key.to_owned() }
}

fn response(status: u16) -> StoredResponse {
    StoredResponse { status, content_type: "application/json".into(), body: br#"{"ok":true}"#.to_vec() }
}

const FP: Fingerprint = Fingerprint([1; 32]);
const OTHER: Fingerprint = Fingerprint([2; 32]);

async fn begin_complete_replay_and_mismatch(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let k = scope("order-1");
    assert_eq!(store.idempotency_begin(&k, FP).await.unwrap(), IdempotencyBegin::Proceed);
    assert_eq!(store.idempotency_begin(&k, FP).await.unwrap(), IdempotencyBegin::InFlight);
    assert_eq!(store.idempotency_begin(&k, OTHER).await.unwrap(), IdempotencyBegin::Mismatch);
    store.idempotency_complete(&k, response(201)).await.unwrap();
    assert_eq!(store.idempotency_begin(&k, FP).await.unwrap(), IdempotencyBegin::Replay(response(201)));
    assert_eq!(store.idempotency_begin(&k, OTHER).await.unwrap(), IdempotencyBegin::Mismatch);

    // The same key under another principal is another key.
    let theirs = IdempotencyScope { principal: KeyId(uuid::Uuid::from_u128(7)), ..k.clone() };
    assert_eq!(store.idempotency_begin(&theirs, OTHER).await.unwrap(), IdempotencyBegin::Proceed);

    // An abandoned request frees its key for a retry.
    let k2 = scope("order-2");
    assert_eq!(store.idempotency_begin(&k2, FP).await.unwrap(), IdempotencyBegin::Proceed);
    store.idempotency_abandon(&k2).await.unwrap();
    assert_eq!(store.idempotency_begin(&k2, OTHER).await.unwrap(), IdempotencyBegin::Proceed);

    // Completing without a request in flight is refused, not stored.
    let stray = store.idempotency_complete(&scope("never-begun"), response(200)).await;
    assert!(matches!(stray, Err(StoreError::Unavailable { .. })));

    // Answers are durable.
    let store = store.reopen(Default::default()).await;
    assert_eq!(store.idempotency_begin(&k, FP).await.unwrap(), IdempotencyBegin::Replay(response(201)));
    store.shutdown().await;
}

async fn begin_all(store: &Arc<dyn Store>, key: &IdempotencyScope, n: usize) -> Vec<IdempotencyBegin> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (store, key) = (store.clone(), key.clone());
        tasks.spawn(async move { store.idempotency_begin(&key, FP).await.unwrap() });
    }
    tasks.join_all().await
}

async fn of_64_concurrent_begins_exactly_one_proceeds(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    for round in 0..5 {
        let key = scope(&format!("race-{round}"));
        let answers = begin_all(&store, &key, 64).await;
        let proceeds = answers.iter().filter(|a| **a == IdempotencyBegin::Proceed).count();
        assert_eq!(proceeds, 1, "{answers:?}");
        assert!(answers.iter().all(|a| matches!(a, IdempotencyBegin::Proceed | IdempotencyBegin::InFlight)));

        // Completion racing with more retries: each sees the mark or the answer, never neither.
        let racing = {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move { begin_all(&store, &key, 64).await })
        };
        store.idempotency_complete(&key, response(201)).await.unwrap();
        let answers = racing.await.unwrap();
        assert!(
            answers.iter().all(|a| matches!(a, IdempotencyBegin::InFlight | IdempotencyBegin::Replay(_))),
            "{answers:?}"
        );
        let after = begin_all(&store, &key, 64).await;
        assert!(after.iter().all(|a| *a == IdempotencyBegin::Replay(response(201))));
    }
    store.shutdown().await;
}
