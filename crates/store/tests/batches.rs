//! Submissions through the sequencer on a real SQLite store: outcomes, atomicity, back-pressure.

mod common;

use coffer_ledger::{
    AccountId, Command, ExternalRef, NewTransfer, Outcome, Record, RejectCode, Submission, TransferId,
};
use coffer_store::{StoreConfig, StoreError};
use coffer_testkit::Backend;
use common::*;

coffer_testkit::on_each_backend! {
    one_outcome_per_command_in_order_and_a_rejection_does_not_fail_the_batch,
    an_atomic_submission_that_fails_applies_nothing,
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    concurrent_submissions_are_all_applied,
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_full_queue_answers_overloaded_and_applies_the_rest,
    a_batch_bigger_than_the_limit_still_applies_whole,
    ledgers_are_created_once_and_listed,
    a_reused_id_is_answered_as_existing_even_where_it_would_now_be_refused,
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_command_the_store_cannot_hold_fails_alone_and_its_batch_applies,
}

async fn one_outcome_per_command_in_order_and_a_rejection_does_not_fail_the_batch(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let [a, b] = setup(store.as_ref(), 2).await[..] else { unreachable!() };
    let (t1, t2) = (TransferId::generate(), TransferId::generate());
    let commands = vec![
        transfer(t1, a, b, 10, "USD"),
        transfer(TransferId::generate(), a, AccountId::generate(), 10, "USD"),
        transfer(t2, b, a, 3, "USD"),
        transfer(TransferId::generate(), a, a, 1, "USD"),
        transfer(t1, a, b, 10, "USD"),
        transfer(t1, a, b, 11, "USD"),
    ];
    let outcomes = store.submit(Submission::new(commands, false)).await.unwrap();
    assert!(matches!(&outcomes[0], Outcome::Created(Record::Transfer(t)) if t.id == t1));
    assert_eq!(outcomes[1], Outcome::Rejected(RejectCode::AccountNotFound));
    assert!(matches!(&outcomes[2], Outcome::Created(Record::Transfer(t)) if t.id == t2));
    assert_eq!(outcomes[3], Outcome::Rejected(RejectCode::AccountsMustBeDifferent));
    assert!(matches!(&outcomes[4], Outcome::Exists(Record::Transfer(t)) if t.id == t1));
    assert_eq!(outcomes[5], Outcome::Rejected(RejectCode::ExistsWithDifferentFields));
    assert_eq!(outcomes.len(), 6);

    let balance = balance_of(store.as_ref(), a).await;
    assert_eq!((balance.debits_posted, balance.credits_posted), (10, 3));
    // Resent in a later batch, the transfer is found on disk.
    assert!(matches!(one(store.as_ref(), transfer(t2, b, a, 3, "USD")).await, Outcome::Exists(_)));
    store.shutdown().await;
}

async fn an_atomic_submission_that_fails_applies_nothing(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let [bank, shop] = setup(store.as_ref(), 2).await[..] else { unreachable!() };
    let alice = AccountId::generate();
    created(store.as_ref(), wallet(alice, "USD")).await;
    created(store.as_ref(), transfer(TransferId::generate(), bank, alice, 100, "USD")).await;

    let (t1, t2, t3) = (TransferId::generate(), TransferId::generate(), TransferId::generate());
    let commands = vec![
        transfer(t1, alice, shop, 60, "USD"),
        transfer(t2, bank, shop, 5, "USD"),
        transfer(t3, alice, shop, 60, "USD"),
    ];
    let outcomes = store.submit(Submission::new(commands, true)).await.unwrap();
    assert_eq!(
        outcomes,
        vec![
            Outcome::Rejected(RejectCode::LinkedItemFailed),
            Outcome::Rejected(RejectCode::LinkedItemFailed),
            Outcome::Rejected(RejectCode::InsufficientFunds),
        ]
    );
    for id in [t1, t2, t3] {
        assert!(store.transfer(id).await.unwrap().is_none());
    }
    assert_eq!(balance_of(store.as_ref(), alice).await.debits_posted, 0);
    assert_eq!(balance_of(store.as_ref(), shop).await.credits_posted, 0);

    // The same legs without the overdraft apply together.
    let commands = vec![transfer(t1, alice, shop, 60, "USD"), transfer(t2, bank, shop, 5, "USD")];
    let outcomes = store.submit(Submission::new(commands, true)).await.unwrap();
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Created(_))));
    assert_eq!(balance_of(store.as_ref(), shop).await.credits_posted, 65);
    store.shutdown().await;
}

async fn concurrent_submissions_are_all_applied(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let accounts = setup(store.as_ref(), 2).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..500 {
        let store = store.clone();
        let (a, b) = (accounts[0], accounts[1]);
        tasks.spawn(
            async move { one(store.as_ref(), transfer(TransferId::generate(), a, b, 2, "USD")).await },
        );
    }
    let outcomes = tasks.join_all().await;
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Created(_))));
    assert_eq!(balance_of(store.as_ref(), accounts[1]).await.credits_posted, 1000);
    store.shutdown().await;
}

async fn a_full_queue_answers_overloaded_and_applies_the_rest(backend: Backend) {
    let config = StoreConfig { queue_capacity: 1, batch_size_max: 1, ..StoreConfig::default() };
    let Some(store) = fresh_with(backend, config).await else { return };
    let accounts = setup(store.as_ref(), 2).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..400 {
        let store = store.clone();
        let (a, b) = (accounts[0], accounts[1]);
        tasks.spawn(async move {
            store.submit(Submission::one(transfer(TransferId::generate(), a, b, 1, "USD"))).await
        });
    }
    let results = tasks.join_all().await;
    let overloaded = results.iter().filter(|r| matches!(r, Err(StoreError::Overloaded))).count();
    let applied =
        results.iter().filter(|r| matches!(r, Ok(o) if matches!(o[0], Outcome::Created(_)))).count();
    assert!(overloaded > 0, "a queue of one must overflow under 400 concurrent submissions");
    assert_eq!(overloaded + applied, 400);
    assert_eq!(balance_of(store.as_ref(), accounts[1]).await.credits_posted, applied as u64);
    store.shutdown().await;
}

async fn a_batch_bigger_than_the_limit_still_applies_whole(backend: Backend) {
    let config = StoreConfig { batch_size_max: 4, ..StoreConfig::default() };
    let Some(store) = fresh_with(backend, config).await else { return };
    let [a, b] = setup(store.as_ref(), 2).await[..] else { unreachable!() };
    let commands = (0..10).map(|_| transfer(TransferId::generate(), a, b, 1, "USD")).collect();
    let outcomes = store.submit(Submission::new(commands, true)).await.unwrap();
    assert_eq!(outcomes.iter().filter(|o| matches!(o, Outcome::Created(_))).count(), 10);
    store.shutdown().await;
}

async fn ledgers_are_created_once_and_listed(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    created(store.as_ref(), ledger("USD")).await;
    assert!(matches!(one(store.as_ref(), ledger("USD")).await, Outcome::Exists(_)));
    created(store.as_ref(), ledger("EUR")).await;
    assert_eq!(
        one(store.as_ref(), account(AccountId::generate(), "GBP", None)).await,
        Outcome::Rejected(RejectCode::LedgerNotFound)
    );
    let usd = store.ledger(code("USD")).await.unwrap().unwrap();
    assert_eq!(usd.scale.get(), 2);
    let page = store.ledgers(coffer_store::PageRequest::new(Some(1), None).unwrap()).await.unwrap();
    assert_eq!(page.items, vec![usd]);
    let rest =
        store.ledgers(coffer_store::PageRequest::new(Some(1), page.next_cursor).unwrap()).await.unwrap();
    assert_eq!(rest.items[0].code, code("EUR"));
    assert_eq!(rest.next_cursor, None);
    store.shutdown().await;
}

/// The store looks transfer ids up only when it must (see `Lookup` in the SQLite backend); a
/// reused id must still be answered as the core's rules say, whatever else the command meets.
async fn a_reused_id_is_answered_as_existing_even_where_it_would_now_be_refused(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let [bank, shop] = setup(store.as_ref(), 2).await[..] else { unreachable!() };
    let alice = AccountId::generate();
    created(store.as_ref(), wallet(alice, "USD")).await;
    created(store.as_ref(), transfer(TransferId::generate(), bank, alice, 100, "USD")).await;
    let spent = TransferId::generate();
    created(store.as_ref(), transfer(spent, alice, shop, 100, "USD")).await;

    // Alice has nothing left, yet the retry of what she spent is the same transfer.
    assert!(matches!(
        one(store.as_ref(), transfer(spent, alice, shop, 100, "USD")).await,
        Outcome::Exists(_)
    ));
    assert_eq!(
        one(store.as_ref(), transfer(spent, alice, shop, 99, "USD")).await,
        Outcome::Rejected(RejectCode::ExistsWithDifferentFields)
    );

    // A retry among new transfers: the new ones still apply, once.
    let (t1, t2) = (TransferId::generate(), TransferId::generate());
    let commands = vec![
        transfer(t1, bank, shop, 1, "USD"),
        transfer(spent, alice, shop, 100, "USD"),
        transfer(t2, bank, shop, 2, "USD"),
    ];
    let outcomes = store.submit(Submission::new(commands.clone(), false)).await.unwrap();
    assert!(matches!(outcomes[..], [Outcome::Created(_), Outcome::Exists(_), Outcome::Created(_)]));
    let outcomes = store.submit(Submission::new(commands, true)).await.unwrap();
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Exists(_))));
    assert_eq!(balance_of(store.as_ref(), shop).await.credits_posted, 103);
    store.shutdown().await;
}

/// DESIGN §5, isolation: a command holding text the store cannot keep (PostgreSQL refuses
/// U+0000) fails alone. The group commit it shared runs again in halves, so every other
/// submission of the batch is applied, and an atomic submission holding it applies nothing.
async fn a_command_the_store_cannot_hold_fails_alone_and_its_batch_applies(backend: Backend) {
    // A long wait gathers every concurrent submission below into one group commit.
    let config = StoreConfig { batch_wait_us: 200_000, ..StoreConfig::default() };
    let Some(store) = fresh_with(backend, config).await else { return };
    let [a, b] = setup(store.as_ref(), 2).await[..] else { unreachable!() };
    let poisoned = |id| match transfer(id, a, b, 1000, "USD") {
        Command::CreateTransfer(t) => {
            let external_ref = Some(ExternalRef::try_from("nul\u{0}byte".to_owned()).unwrap());
            Command::CreateTransfer(NewTransfer { external_ref, ..t })
        }
        _ => unreachable!(),
    };
    let honest: Vec<TransferId> = (0..9).map(|_| TransferId::generate()).collect();
    let (bad, bad_atomic) = (TransferId::generate(), TransferId::generate());
    let mut submissions: Vec<Submission> =
        honest.iter().map(|id| Submission::one(transfer(*id, a, b, 1, "USD"))).collect();
    submissions.insert(4, Submission::one(poisoned(bad)));
    submissions.push(Submission::new(
        vec![transfer(bad_atomic, a, b, 100, "USD"), poisoned(TransferId::generate())],
        true,
    ));
    let tasks: Vec<_> = submissions
        .into_iter()
        .map(|s| {
            let store = store.clone();
            tokio::spawn(async move { store.submit(s).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }

    for (i, result) in results.iter().enumerate() {
        let guilty = i == 4 || i == results.len() - 1;
        match result {
            Ok(outcomes) => assert!(
                outcomes.iter().all(|o| matches!(o, Outcome::Created(_))),
                "submission {i}: {outcomes:?}"
            ),
            // SQLite keeps U+0000; PostgreSQL must refuse the guilty submissions and them alone.
            Err(StoreError::Invalid { .. }) if guilty && backend == Backend::Postgres => {}
            Err(e) => panic!("submission {i} (guilty: {guilty}): {e}"),
        }
    }
    let expected = match backend {
        Backend::Postgres => 9,
        Backend::Sqlite => 9 + 1000 + 100 + 1000,
    };
    assert_eq!(balance_of(store.as_ref(), b).await.credits_posted, expected);
    for id in &honest {
        assert!(store.transfer(*id).await.unwrap().is_some());
    }
    store.shutdown().await;
}
