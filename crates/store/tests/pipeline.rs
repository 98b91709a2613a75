//! The event pipeline's storage as its users rely on it: leases and fenced positions for the
//! relays, outbox pruning, the volume projection, dead letters and webhook deliveries. Run on
//! SQLite (`sqlite::…`) and on PostgreSQL (`postgres::…`).

mod common;

use std::time::Duration;

use coffer_ledger::{AccountId, Submission, Timestamp, TraceParent, TransferId};
use coffer_store::{
    AttemptResult, DeadLetter, Delivery, DeliveryAttempt, DeliveryStatus, OutboxEvent, VolumeEntry,
    VolumeRow, Webhook, WebhookEvent, WebhookSecrets,
};
use coffer_testkit::Backend;
use common::*;
use uuid::Uuid;

coffer_testkit::on_each_backend! {
    a_live_lease_refuses_other_holders_and_renewing_keeps_the_token,
    an_expired_lease_goes_to_the_next_holder_with_a_larger_token,
    a_released_lease_is_free_at_once_and_tokens_keep_growing,
    a_position_saved_with_a_stale_token_is_refused_and_does_not_move,
    pruning_deletes_only_old_events_at_or_below_the_position,
    events_carry_the_trace_of_the_submission_that_caused_them,
    each_event_counts_once_even_when_delivered_again,
    volumes_beyond_u64_add_exactly,
    volume_rows_are_one_ledgers_days_ordered_by_day_then_code,
    a_reset_forgets_the_projection_and_the_consumers_processed_events,
    rebuilds_running_at_once_still_count_each_event_once,
    dead_letters_are_listed_in_id_order_filtered_and_paged,
    replays_are_requested_per_letter_and_letters_are_removed,
    a_second_letter_for_the_same_event_replaces_the_first,
    creating_a_webhook_under_a_taken_id_answers_the_first_and_changes_nothing,
    webhook_secrets_are_replaced_by_compare_and_set,
    webhooks_are_created_listed_fetched_and_deleted,
    deliveries_are_enqueued_once_per_subscribed_endpoint_and_event,
    only_due_pending_deliveries_are_claimed_and_a_claim_runs_out,
    claims_take_the_oldest_due_first,
    attempts_end_in_success_a_retry_or_a_dead_delivery_that_can_be_redelivered,
    deliveries_are_listed_newest_first_and_paged_backwards,
}

/// Long enough never to run out during a test.
const LONG: Duration = Duration::from_secs(60);
/// Short enough to wait out.
const SHORT: Duration = Duration::from_millis(100);

async fn wait_out(ttl: Duration) {
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_micros(1_700_000_000_000_000 + seconds * 1_000_000)
}

// ---- leases and positions ----

async fn a_live_lease_refuses_other_holders_and_renewing_keeps_the_token(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let token = store.acquire_lease("relay", "a", LONG).await.unwrap().expect("a free lease is taken");
    assert_eq!(store.acquire_lease("relay", "b", LONG).await.unwrap(), None, "a live lease is a's");
    assert_eq!(
        store.acquire_lease("relay", "a", LONG).await.unwrap(),
        Some(token),
        "renewal keeps the token"
    );
    store.release_lease("relay", "b").await.unwrap();
    assert_eq!(store.acquire_lease("relay", "b", LONG).await.unwrap(), None, "b cannot release a's lease");
    let other = store.acquire_lease("other", "b", LONG).await.unwrap();
    assert!(other.is_some(), "leases of other names are independent");
    store.shutdown().await;
}

async fn an_expired_lease_goes_to_the_next_holder_with_a_larger_token(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let first = store.acquire_lease("relay", "a", SHORT).await.unwrap().unwrap();
    wait_out(SHORT).await;
    // Taking an expired lease is not a renewal, even for its last holder: whatever a did under
    // the old token while it was paused must not pass the fence.
    let retaken = store.acquire_lease("relay", "a", SHORT).await.unwrap().expect("a takes it back");
    assert!(retaken > first, "token {retaken} after {first}");
    wait_out(SHORT).await;
    let second = store.acquire_lease("relay", "b", LONG).await.unwrap().expect("an expired lease is free");
    assert!(second > retaken, "token {second} after {retaken}");
    assert_eq!(store.acquire_lease("relay", "a", LONG).await.unwrap(), None, "a lost it to b");
    store.shutdown().await;
}

async fn a_released_lease_is_free_at_once_and_tokens_keep_growing(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let first = store.acquire_lease("relay", "a", LONG).await.unwrap().unwrap();
    store.release_lease("relay", "a").await.unwrap();
    let second = store.acquire_lease("relay", "b", LONG).await.unwrap().expect("released: free at once");
    assert!(second > first);
    store.release_lease("relay", "b").await.unwrap();
    let third = store.acquire_lease("relay", "a", LONG).await.unwrap().unwrap();
    assert!(third > second, "a token is larger than any before, even after releases");
    store.shutdown().await;
}

async fn a_position_saved_with_a_stale_token_is_refused_and_does_not_move(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let old = store.acquire_lease("relay", "a", SHORT).await.unwrap().unwrap();
    assert!(store.save_position("relay", 4, Some(old)).await.unwrap());
    wait_out(SHORT).await;
    // Expired but not taken over: the token is still the current one.
    assert!(store.save_position("relay", 5, Some(old)).await.unwrap());
    let new = store.acquire_lease("relay", "b", LONG).await.unwrap().unwrap();

    assert!(!store.save_position("relay", 9, Some(old)).await.unwrap(), "the paused relay is fenced out");
    assert_eq!(store.position("relay").await.unwrap(), 5);
    assert!(store.save_position("relay", 9, Some(new)).await.unwrap());
    assert_eq!(store.position("relay").await.unwrap(), 9);
    assert!(store.save_position("relay", 7, Some(new)).await.unwrap(), "not fenced out, only older");
    assert_eq!(store.position("relay").await.unwrap(), 9, "positions only move forward");
    assert!(!store.save_position("nolease", 1, Some(new)).await.unwrap(), "no lease, no current token");
    assert_eq!(store.position("nolease").await.unwrap(), 0);
    store.shutdown().await;
}

// ---- outbox pruning ----

/// `n` events, each in its own batch a few milliseconds apart, so their times differ.
async fn events(store: &dyn coffer_store::Store, n: usize) -> Vec<OutboxEvent> {
    created(store, ledger("USD")).await;
    for _ in 0..n {
        created(store, account(AccountId::generate(), "USD", None)).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let events = store.events_after(0, 100).await.unwrap();
    assert_eq!(events.len(), n);
    assert!(events.windows(2).all(|w| w[0].time < w[1].time), "times must differ for this test");
    events
}

async fn pruning_deletes_only_old_events_at_or_below_the_position(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let all = events(store.as_ref(), 6).await;
    let positions = |events: &[OutboxEvent]| events.iter().map(|e| e.position).collect::<Vec<_>>();

    // Below e3's position but only the two older than e2: the time bound holds.
    let link =
        |e: &OutboxEvent| coffer_store::chain::ChainLink { position: e.position, hash: e.hash.unwrap() };
    assert_eq!(whole_chain(store.as_ref()).await, all);
    let pruned = store.prune_outbox(all[3].position, all[2].time.as_micros()).await.unwrap();
    assert_eq!(pruned, 2);
    assert_eq!(positions(&store.events_after(0, 100).await.unwrap()), positions(&all[2..]));
    let ends = store.outbox_chain().await.unwrap();
    assert_eq!(ends.anchor, link(&all[1]), "the anchor is the last deleted link");
    assert_eq!(whole_chain(store.as_ref()).await, all[2..], "the rest of the chain follows the anchor");

    // Everything is old enough now: the position bound holds, inclusive.
    let later = all[5].time.as_micros() + 1;
    assert_eq!(store.prune_outbox(all[3].position, later).await.unwrap(), 2);
    assert_eq!(positions(&store.events_after(0, 100).await.unwrap()), positions(&all[4..]));
    assert_eq!(positions(&store.events_after(all[1].position, 100).await.unwrap()), positions(&all[4..]));
    assert_eq!(store.prune_outbox(all[3].position, later).await.unwrap(), 0, "nothing left to prune");
    assert_eq!(store.outbox_chain().await.unwrap().anchor, link(&all[3]));
    assert_eq!(whole_chain(store.as_ref()).await, all[4..]);

    created(store.as_ref(), account(AccountId::generate(), "USD", None)).await;
    let fresh = store.events_after(all[5].position, 100).await.unwrap();
    assert_eq!(fresh.len(), 1);
    assert!(fresh[0].position > all[5].position, "pruned positions are never handed out again");
    store.shutdown().await;
}

// ---- traces ----

fn trace(n: u8) -> TraceParent {
    TraceParent::try_from(format!("00-{n:032x}-{n:016x}-01").as_str()).unwrap()
}

async fn events_carry_the_trace_of_the_submission_that_caused_them(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let (a, b) = (AccountId::generate(), AccountId::generate());
    created(store.as_ref(), ledger("USD")).await;
    let (traced, untraced, failed) = (TransferId::generate(), TransferId::generate(), TransferId::generate());
    // Submitted at once, so they can meet in one batch: each event must still get its own trace.
    let (first, second, third, fourth) = tokio::join!(
        store.submit(
            Submission::new(vec![account(a, "USD", None), account(b, "USD", None)], true)
                .traced(Some(trace(1)))
        ),
        store.submit(Submission::new(vec![transfer(traced, a, b, 5, "USD")], false).traced(Some(trace(2)))),
        store.submit(Submission::new(vec![transfer(untraced, a, b, 7, "USD")], false)),
        // Refused as a whole (its second leg names no account), so it leaves no event at all.
        store.submit(
            Submission::new(
                vec![
                    transfer(failed, a, b, 9, "USD"),
                    transfer(TransferId::generate(), a, AccountId::generate(), 1, "USD")
                ],
                true,
            )
            .traced(Some(trace(3))),
        ),
    );
    for outcomes in [first, second, third, fourth] {
        outcomes.expect("the store takes the submission");
    }
    let by_subject: std::collections::HashMap<Uuid, Option<TraceParent>> = store
        .events_after(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|event| (event.subject, event.traceparent))
        .collect();
    let expected =
        [(a.0, Some(trace(1))), (b.0, Some(trace(1))), (traced.0, Some(trace(2))), (untraced.0, None)];
    assert_eq!(by_subject, expected.into_iter().collect(), "events and their traces");
    store.shutdown().await;
}

// ---- the volume projection ----

fn entry(ledger: &str, day: i32, code: u16, amount: u64) -> VolumeEntry {
    VolumeEntry { event_id: Uuid::now_v7(), ledger: common::code(ledger), day, code, amount }
}

fn row(day: i32, code: u16, count: u64, volume: u128) -> VolumeRow {
    VolumeRow { day, code, count, volume }
}

async fn each_event_counts_once_even_when_delivered_again(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let (a, b) = (entry("USD", 100, 1, 10), entry("USD", 100, 1, 5));
    let applied = store.record_volumes("volumes", &[a.clone(), a.clone(), b.clone()]).await.unwrap();
    assert_eq!(applied, 2, "a repeat inside one call counts once");
    let c = entry("USD", 100, 2, 7);
    assert_eq!(store.record_volumes("volumes", &[b, c, a]).await.unwrap(), 1, "repeats across calls");
    let rows = store.ledger_volumes(&code("USD"), 100, 100).await.unwrap();
    assert_eq!(rows, vec![row(100, 1, 2, 15), row(100, 2, 1, 7)]);
    store.shutdown().await;
}

async fn volumes_beyond_u64_add_exactly(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let big = || entry("USD", 100, 1, u64::MAX);
    assert_eq!(store.record_volumes("volumes", &[big(), big()]).await.unwrap(), 2);
    assert_eq!(store.record_volumes("volumes", &[big(), entry("USD", 100, 1, 3)]).await.unwrap(), 2);
    let rows = store.ledger_volumes(&code("USD"), 100, 100).await.unwrap();
    assert_eq!(rows, vec![row(100, 1, 4, 3 * u128::from(u64::MAX) + 3)]);
    store.shutdown().await;
}

async fn volume_rows_are_one_ledgers_days_ordered_by_day_then_code(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let entries = [
        entry("USD", 101, 1, 1),
        entry("USD", 100, 2, 2),
        entry("USD", 99, 1, 3),
        entry("USD", 100, 1, 4),
        entry("USD", 102, 1, 5),
        entry("EUR", 100, 1, 6),
    ];
    assert_eq!(store.record_volumes("volumes", &entries).await.unwrap(), 6);
    let rows = store.ledger_volumes(&code("USD"), 100, 101).await.unwrap();
    assert_eq!(rows, vec![row(100, 1, 1, 4), row(100, 2, 1, 2), row(101, 1, 1, 1)]);
    assert_eq!(store.ledger_volumes(&code("EUR"), 0, 1000).await.unwrap(), vec![row(100, 1, 1, 6)]);
    assert_eq!(store.ledger_volumes(&code("GBP"), 0, 1000).await.unwrap(), vec![]);
    store.shutdown().await;
}

async fn a_reset_forgets_the_projection_and_the_consumers_processed_events(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let (a, b) = (entry("USD", 100, 1, 10), entry("EUR", 100, 1, 20));
    store.record_volumes("volumes", &[a.clone(), b.clone()]).await.unwrap();
    store.record_volumes("other", std::slice::from_ref(&a)).await.unwrap();
    store.reset_volumes("volumes").await.unwrap();
    assert_eq!(store.ledger_volumes(&code("USD"), 0, 1000).await.unwrap(), vec![]);
    assert_eq!(store.ledger_volumes(&code("EUR"), 0, 1000).await.unwrap(), vec![], "every ledger");

    assert_eq!(store.record_volumes("volumes", &[a.clone(), b]).await.unwrap(), 2, "a replay counts again");
    assert_eq!(store.ledger_volumes(&code("USD"), 0, 1000).await.unwrap(), vec![row(100, 1, 1, 10)]);
    assert_eq!(store.record_volumes("other", &[a]).await.unwrap(), 0, "other consumers' records stay");
    store.shutdown().await;
}

async fn rebuilds_running_at_once_still_count_each_event_once(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let entries: Vec<VolumeEntry> = (0..40).map(|_| entry("USD", 100, 1, 1)).collect();
    // A rebuild: a reset, then the events again in small pages, so two of them interleave.
    let rebuild = |store: std::sync::Arc<dyn coffer_store::Store>, entries: Vec<VolumeEntry>| async move {
        store.reset_volumes("volumes").await.unwrap();
        for page in entries.chunks(4) {
            store.record_volumes("volumes", page).await.unwrap();
        }
    };
    for round in 0..15 {
        let one = tokio::spawn(rebuild((*store).clone(), entries.clone()));
        let two = tokio::spawn(rebuild((*store).clone(), entries.clone()));
        one.await.unwrap();
        two.await.unwrap();
        let rows = store.ledger_volumes(&code("USD"), 100, 100).await.unwrap();
        assert_eq!(rows, vec![row(100, 1, 40, 40)], "round {round}");
    }
    store.shutdown().await;
}

// ---- dead letters ----

fn letter(consumer: &str, event_id: Uuid) -> DeadLetter {
    DeadLetter {
        id: Uuid::now_v7(),
        consumer: consumer.to_owned(),
        event: OutboxEvent {
            position: 42,
            id: event_id,
            source: "coffer".to_owned(),
            kind: "coffer.transfer.created".to_owned(),
            subject: Uuid::now_v7(),
            time: at(1),
            data: r#"{"amount":5}"#.to_owned(),
            traceparent: Some(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".try_into().expect("a traceparent"),
            ),
            hash: None,
        },
        error: "handler failed".to_owned(),
        attempts: 5,
        failed_at: at(2),
        replay_requested: false,
    }
}

async fn dead_letters_are_listed_in_id_order_filtered_and_paged(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let letters: Vec<DeadLetter> = ["volumes", "webhooks", "volumes", "volumes", "webhooks"]
        .iter()
        .map(|consumer| letter(consumer, Uuid::now_v7()))
        .collect();
    for i in [3, 0, 4, 1, 2] {
        store.add_dead_letter(letters[i].clone()).await.unwrap();
    }
    assert_eq!(store.dead_letters(None, None, 10).await.unwrap(), letters, "all, in id order");
    let volumes: Vec<DeadLetter> = [0, 2, 3].iter().map(|&i| letters[i].clone()).collect();
    assert_eq!(store.dead_letters(Some("volumes"), None, 10).await.unwrap(), volumes);
    assert_eq!(store.dead_letters(Some("volumes"), None, 2).await.unwrap(), volumes[..2]);
    assert_eq!(store.dead_letters(Some("volumes"), Some(volumes[1].id), 2).await.unwrap(), volumes[2..]);
    assert_eq!(store.dead_letters(None, Some(letters[2].id), 10).await.unwrap(), letters[3..]);
    assert_eq!(store.dead_letters(Some("nobody"), None, 10).await.unwrap(), vec![]);
    assert_eq!(store.dead_letter(letters[4].id).await.unwrap(), Some(letters[4].clone()));
    assert_eq!(store.dead_letter(Uuid::now_v7()).await.unwrap(), None);
    store.shutdown().await;
}

async fn replays_are_requested_per_letter_and_letters_are_removed(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let (first, second, other) = (
        letter("volumes", Uuid::now_v7()),
        letter("volumes", Uuid::now_v7()),
        letter("webhooks", Uuid::now_v7()),
    );
    for l in [&first, &second, &other] {
        store.add_dead_letter(l.clone()).await.unwrap();
    }
    assert_eq!(store.replays_requested("volumes", 10).await.unwrap(), vec![]);
    assert!(store.request_replay(second.id).await.unwrap());
    assert!(store.request_replay(other.id).await.unwrap());
    assert!(!store.request_replay(Uuid::now_v7()).await.unwrap(), "no such letter");
    let marked = DeadLetter { replay_requested: true, ..second.clone() };
    assert_eq!(store.replays_requested("volumes", 10).await.unwrap(), vec![marked.clone()]);
    assert_eq!(store.replays_requested("volumes", 0).await.unwrap(), vec![], "the limit holds");
    assert_eq!(store.dead_letter(second.id).await.unwrap(), Some(marked));

    assert!(store.remove_dead_letter(second.id).await.unwrap());
    assert!(!store.remove_dead_letter(second.id).await.unwrap(), "already gone");
    assert_eq!(store.dead_letter(second.id).await.unwrap(), None);
    assert_eq!(store.replays_requested("volumes", 10).await.unwrap(), vec![]);
    assert_eq!(
        store.dead_letters(None, None, 10).await.unwrap(),
        vec![first, DeadLetter { replay_requested: true, ..other }]
    );
    store.shutdown().await;
}

async fn a_second_letter_for_the_same_event_replaces_the_first(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let event_id = Uuid::now_v7();
    let first = letter("volumes", event_id);
    store.add_dead_letter(first.clone()).await.unwrap();
    store.request_replay(first.id).await.unwrap();
    let elsewhere = letter("webhooks", event_id);
    store.add_dead_letter(elsewhere.clone()).await.unwrap();

    // The replay failed again.
    let again = DeadLetter {
        error: "failed again".to_owned(),
        attempts: 10,
        failed_at: at(3),
        ..letter("volumes", event_id)
    };
    store.add_dead_letter(again.clone()).await.unwrap();
    assert_eq!(store.dead_letters(Some("volumes"), None, 10).await.unwrap(), vec![again.clone()]);
    assert_eq!(store.dead_letter(first.id).await.unwrap(), None, "the new letter took the old one's place");
    assert_eq!(store.dead_letter(again.id).await.unwrap(), Some(again));
    assert_eq!(
        store.replays_requested("volumes", 10).await.unwrap(),
        vec![],
        "replay_requested is the new one's"
    );
    assert_eq!(
        store.dead_letters(Some("webhooks"), None, 10).await.unwrap(),
        vec![elsewhere],
        "per consumer"
    );
    store.shutdown().await;
}

// ---- webhooks ----

fn endpoint(types: &[&str], created_at: Timestamp) -> Webhook {
    Webhook {
        id: Uuid::now_v7(),
        url: format!("https://example.com/hooks/{}", Uuid::now_v7()),
        event_types: types.iter().map(|t| (*t).to_owned()).collect(),
        secret: "whsec_c2VjcmV0".to_owned(),
        previous_secret: None,
        previous_secret_expires_at: None,
        created_at,
    }
}

fn event(kind: &str) -> WebhookEvent {
    let id = Uuid::now_v7();
    WebhookEvent { id, kind: kind.to_owned(), payload: format!(r#"{{"id":"{id}","type":"{kind}"}}"#) }
}

const TRANSFER: &str = "coffer.transfer.created";
const ACCOUNT: &str = "coffer.account.created";

fn failed(at: Timestamp, next: AttemptResult) -> DeliveryAttempt {
    DeliveryAttempt { at, status_code: Some(500), error: Some("HTTP 500".to_owned()), next }
}

/// The one delivery of `webhook`.
async fn only_delivery(store: &dyn coffer_store::Store, webhook: Uuid) -> Delivery {
    let mut all = store.deliveries(webhook, None, 10).await.unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    all.pop().unwrap()
}

async fn creating_a_webhook_under_a_taken_id_answers_the_first_and_changes_nothing(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let first = endpoint(&[TRANSFER], at(1));
    assert_eq!(store.create_webhook(first.clone()).await.unwrap(), first);
    // A retry of the same create (a new secret, a later time) and a different endpoint, same id.
    let retry = Webhook { secret: "whsec_b3RoZXI=".to_owned(), created_at: at(5), ..first.clone() };
    let other = Webhook { url: "https://elsewhere.example/hook".to_owned(), ..retry.clone() };
    for again in [retry, other] {
        assert_ne!(again, first);
        assert_eq!(store.create_webhook(again).await.unwrap(), first, "the first registration stands");
    }
    assert_eq!(store.webhooks().await.unwrap(), vec![first]);
    store.shutdown().await;
}

/// Secrets are replaced only while the current one is what the caller read: of two racing
/// rotations (or a rotation and a re-sealing) one loses rather than undoing the other.
async fn webhook_secrets_are_replaced_by_compare_and_set(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let webhook = endpoint(&[TRANSFER], at(1));
    store.create_webhook(webhook.clone()).await.unwrap();
    let rotated = WebhookSecrets {
        secret: "whenc1.k.new".to_owned(),
        previous_secret: Some(webhook.secret.clone()),
        previous_secret_expires_at: Some(at(9)),
    };
    assert!(store.replace_webhook_secrets(webhook.id, &webhook.secret, rotated.clone()).await.unwrap());
    let stored = store.webhook(webhook.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.secret.as_str(), stored.previous_secret.as_deref(), stored.previous_secret_expires_at),
        ("whenc1.k.new", Some(webhook.secret.as_str()), Some(at(9)))
    );
    let stale = WebhookSecrets { secret: "whenc1.k.lost".to_owned(), ..rotated };
    assert!(!store.replace_webhook_secrets(webhook.id, &webhook.secret, stale.clone()).await.unwrap());
    assert!(!store.replace_webhook_secrets(Uuid::now_v7(), "whenc1.k.new", stale).await.unwrap());
    assert_eq!(store.webhook(webhook.id).await.unwrap(), Some(stored.clone()), "unchanged");
    assert_eq!(store.webhooks().await.unwrap(), vec![stored], "listed with both secrets");
    store.shutdown().await;
}

async fn webhooks_are_created_listed_fetched_and_deleted(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let (older, newer) = (endpoint(&[TRANSFER, ACCOUNT], at(1)), endpoint(&[ACCOUNT], at(2)));
    assert_eq!(store.create_webhook(newer.clone()).await.unwrap(), newer);
    assert_eq!(store.create_webhook(older.clone()).await.unwrap(), older);
    assert_eq!(store.webhooks().await.unwrap(), vec![older.clone(), newer.clone()], "oldest first");
    assert_eq!(store.webhook(older.id).await.unwrap(), Some(older.clone()));
    assert_eq!(store.webhook(Uuid::now_v7()).await.unwrap(), None);

    store.enqueue_deliveries("webhooks", &[event(ACCOUNT)], at(3)).await.unwrap();
    let delivery = only_delivery(store.as_ref(), older.id).await;
    assert!(store.delete_webhook(older.id).await.unwrap());
    assert!(!store.delete_webhook(older.id).await.unwrap(), "already gone");
    assert_eq!(store.webhook(older.id).await.unwrap(), None);
    assert_eq!(store.delivery(delivery.id).await.unwrap(), None, "its deliveries went with it");
    assert_eq!(store.webhooks().await.unwrap(), vec![newer.clone()]);
    assert_eq!(store.deliveries(newer.id, None, 10).await.unwrap().len(), 1, "other endpoints' stay");
    store.shutdown().await;
}

async fn deliveries_are_enqueued_once_per_subscribed_endpoint_and_event(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let transfers = endpoint(&[TRANSFER], at(0));
    let both = endpoint(&[TRANSFER, ACCOUNT], at(0));
    let accounts = endpoint(&[ACCOUNT], at(0));
    for w in [&transfers, &both, &accounts] {
        store.create_webhook(w.clone()).await.unwrap();
    }
    let (transfer, account, posted) = (event(TRANSFER), event(ACCOUNT), event("coffer.transfer.posted"));
    let batch = [transfer.clone(), account.clone(), transfer.clone(), posted];
    assert_eq!(store.enqueue_deliveries("webhooks", &batch, at(5)).await.unwrap(), 4);
    assert_eq!(
        store.enqueue_deliveries("webhooks", &batch, at(6)).await.unwrap(),
        0,
        "repeats change nothing"
    );

    let delivery = only_delivery(store.as_ref(), transfers.id).await;
    let expected = Delivery {
        id: delivery.id,
        webhook_id: transfers.id,
        event_id: transfer.id,
        event_type: TRANSFER.to_owned(),
        payload: transfer.payload.clone(),
        status: DeliveryStatus::Pending,
        attempts: 0,
        next_attempt_at: Some(at(5)),
        last_status_code: None,
        last_error: None,
        created_at: at(5),
        updated_at: at(5),
    };
    assert_eq!(delivery, expected);
    assert_eq!(store.delivery(delivery.id).await.unwrap(), Some(expected));
    let types = |d: Vec<Delivery>| d.into_iter().map(|d| d.event_type).collect::<Vec<_>>();
    assert_eq!(types(store.deliveries(both.id, None, 10).await.unwrap()), [ACCOUNT, TRANSFER]);
    assert_eq!(types(store.deliveries(accounts.id, None, 10).await.unwrap()), [ACCOUNT]);
    assert_eq!(store.delivery(Uuid::now_v7()).await.unwrap(), None);
    store.shutdown().await;
}

async fn only_due_pending_deliveries_are_claimed_and_a_claim_runs_out(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let hook = endpoint(&[TRANSFER], at(0));
    store.create_webhook(hook.clone()).await.unwrap();
    store.enqueue_deliveries("webhooks", &[event(TRANSFER)], at(10)).await.unwrap();
    let first = only_delivery(store.as_ref(), hook.id).await;
    store.enqueue_deliveries("webhooks", &[event(TRANSFER), event(TRANSFER)], at(20)).await.unwrap();

    assert_eq!(store.claim_due_deliveries(at(9), at(100), 10).await.unwrap(), vec![], "nothing due yet");
    let claimed = store.claim_due_deliveries(at(10), at(100), 10).await.unwrap();
    let expected = Delivery { next_attempt_at: Some(at(100)), ..first.clone() };
    assert_eq!(claimed, vec![(expected.clone(), hook.clone())], "due at its time, with its endpoint");
    assert_eq!(store.delivery(first.id).await.unwrap(), Some(expected));

    let later = store.claim_due_deliveries(at(50), at(200), 1).await.unwrap();
    assert_eq!(later.len(), 1, "the limit holds");
    assert_ne!(later[0].0.id, first.id, "a claimed delivery is not claimed again before its claim ends");
    let rest = store.claim_due_deliveries(at(50), at(200), 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_ne!(rest[0].0.id, later[0].0.id);

    let again = store.claim_due_deliveries(at(100), at(300), 10).await.unwrap();
    assert_eq!(again.iter().map(|(d, _)| d.id).collect::<Vec<_>>(), vec![first.id], "the claim ran out");
    store.shutdown().await;
}

async fn claims_take_the_oldest_due_first(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let hook = endpoint(&[TRANSFER], at(0));
    store.create_webhook(hook.clone()).await.unwrap();
    for t in [30, 10, 20] {
        store.enqueue_deliveries("webhooks", &[event(TRANSFER)], at(t)).await.unwrap();
    }
    let claimed = store.claim_due_deliveries(at(40), at(100), 10).await.unwrap();
    let created: Vec<Timestamp> = claimed.iter().map(|(d, _)| d.created_at).collect();
    assert_eq!(created, [at(10), at(20), at(30)]);
    store.shutdown().await;
}

async fn attempts_end_in_success_a_retry_or_a_dead_delivery_that_can_be_redelivered(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let hook = endpoint(&[TRANSFER], at(0));
    store.create_webhook(hook.clone()).await.unwrap();
    store.enqueue_deliveries("webhooks", &[event(TRANSFER)], at(1)).await.unwrap();
    let delivery = only_delivery(store.as_ref(), hook.id).await;
    store.claim_due_deliveries(at(1), at(60), 10).await.unwrap();

    store.record_attempt(delivery.id, failed(at(2), AttemptResult::RetryAt(at(30)))).await.unwrap();
    let retrying = store.delivery(delivery.id).await.unwrap().unwrap();
    assert_eq!(
        (retrying.status, retrying.attempts, retrying.next_attempt_at, retrying.updated_at),
        (DeliveryStatus::Pending, 1, Some(at(30)), at(2))
    );
    assert_eq!((retrying.last_status_code, retrying.last_error.as_deref()), (Some(500), Some("HTTP 500")));
    assert_eq!(
        store.claim_due_deliveries(at(29), at(60), 10).await.unwrap(),
        vec![],
        "not due before the retry"
    );
    assert_eq!(store.claim_due_deliveries(at(30), at(60), 10).await.unwrap().len(), 1);

    let ok =
        DeliveryAttempt { at: at(31), status_code: Some(204), error: None, next: AttemptResult::Succeeded };
    store.record_attempt(delivery.id, ok).await.unwrap();
    let done = store.delivery(delivery.id).await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.attempts, done.next_attempt_at, done.last_status_code, done.last_error),
        (DeliveryStatus::Succeeded, 2, None, Some(204), None)
    );
    assert_eq!(store.claim_due_deliveries(at(1000), at(2000), 10).await.unwrap(), vec![], "done is done");

    store.enqueue_deliveries("webhooks", &[event(TRANSFER)], at(40)).await.unwrap();
    let doomed = store.deliveries(hook.id, None, 1).await.unwrap().remove(0);
    let unreachable = DeliveryAttempt {
        at: at(41),
        status_code: None,
        error: Some("timeout".into()),
        next: AttemptResult::Dead,
    };
    store.record_attempt(doomed.id, unreachable).await.unwrap();
    let dead = store.delivery(doomed.id).await.unwrap().unwrap();
    assert_eq!((dead.status, dead.attempts, dead.next_attempt_at), (DeliveryStatus::Dead, 1, None));
    assert_eq!((dead.last_status_code, dead.last_error.as_deref()), (None, Some("timeout")));
    assert_eq!(
        store.claim_due_deliveries(at(1000), at(2000), 10).await.unwrap(),
        vec![],
        "dead is not retried"
    );

    assert!(store.redeliver(doomed.id, at(50)).await.unwrap());
    assert!(!store.redeliver(Uuid::now_v7(), at(50)).await.unwrap(), "no such delivery");
    let again = store.delivery(doomed.id).await.unwrap().unwrap();
    assert_eq!(
        (again.status, again.attempts, again.next_attempt_at, again.updated_at),
        (DeliveryStatus::Pending, 0, Some(at(50)), at(50))
    );
    let claimed = store.claim_due_deliveries(at(50), at(60), 10).await.unwrap();
    assert_eq!(claimed.iter().map(|(d, _)| d.id).collect::<Vec<_>>(), vec![doomed.id]);
    store.shutdown().await;
}

async fn deliveries_are_listed_newest_first_and_paged_backwards(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let hook = endpoint(&[TRANSFER], at(0));
    store.create_webhook(hook.clone()).await.unwrap();
    for t in 1..=4 {
        store.enqueue_deliveries("webhooks", &[event(TRANSFER)], at(t)).await.unwrap();
    }
    let all = store.deliveries(hook.id, None, 10).await.unwrap();
    let created: Vec<Timestamp> = all.iter().map(|d| d.created_at).collect();
    assert_eq!(created, [at(4), at(3), at(2), at(1)], "newest first");
    assert!(all.windows(2).all(|w| w[0].id > w[1].id));
    assert_eq!(store.deliveries(hook.id, None, 2).await.unwrap(), all[..2]);
    assert_eq!(store.deliveries(hook.id, Some(all[1].id), 2).await.unwrap(), all[2..]);
    assert_eq!(store.deliveries(hook.id, Some(all[3].id), 2).await.unwrap(), vec![]);
    assert_eq!(store.deliveries(Uuid::now_v7(), None, 10).await.unwrap(), vec![]);
    store.shutdown().await;
}
