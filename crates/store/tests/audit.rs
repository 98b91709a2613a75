//! The audit trail on both stores: every administrative change is recorded in its own
//! transaction with its record and event, the records chain (each hash recomputed here from the
//! record as read back), positions come out gap-free even from concurrent writers, listings
//! filter and page, and the table refuses edits.

mod common;

use std::collections::BTreeSet;

use coffer_ledger::Timestamp;
use coffer_store::audit::{AUDIT_EVENT_TYPE, canonical, link};
use coffer_store::chain::ChainHash;
use coffer_store::{
    AdminChange, AdminEffect, AuditAction, AuditContext, AuditFilter, AuditOutcome, AuditRecord, AuditTrail,
    DeadLetter, KeyAdmin, KeyId, NewApiKey, OutboxEvent, Scope, Store, TokenHash, Webhook, WebhookSecrets,
};
use coffer_testkit::Backend;
use common::*;
use serde_json::{Value, json};
use uuid::Uuid;

coffer_testkit::on_each_backend! {
    #![tokio::test(flavor = "multi_thread", worker_threads = 2)]
    every_administrative_change_is_recorded_with_it_and_chained,
    a_change_that_fails_leaves_no_record,
    listings_filter_and_page_in_position_order,
    concurrent_appends_take_turns_on_the_head,
    keys_older_than_the_trail_are_recorded_before_its_first_record,
}

fn new_key(hash: u8) -> NewApiKey {
    NewApiKey {
        id: KeyId(Uuid::now_v7()),
        name: Some(format!("key {hash}")),
        scopes: vec![Scope::Read, Scope::Audit],
        rate_limit_per_second: None,
        expires_at: None,
        token_hash: TokenHash([hash; 32]),
        bare_token: false,
    }
}

fn admin() -> AuditContext {
    AuditContext::key(KeyId(Uuid::now_v7()), Some("192.0.2.7".into()), Some("req-1".into()))
}

fn webhook() -> Webhook {
    Webhook {
        id: Uuid::now_v7(),
        url: "https://hooks.example/in".into(),
        event_types: vec![AUDIT_EVENT_TYPE.into()],
        secret: "whenc1.k.first".into(),
        previous_secret: None,
        previous_secret_expires_at: None,
        created_at: Timestamp::now(),
    }
}

fn letter() -> DeadLetter {
    DeadLetter {
        id: Uuid::now_v7(),
        consumer: "ledger-volumes".into(),
        event: OutboxEvent {
            position: 1,
            id: Uuid::now_v7(),
            source: "coffer".into(),
            kind: "coffer.transfer.created".into(),
            subject: Uuid::now_v7(),
            time: Timestamp::now(),
            data: "{}".into(),
            traceparent: None,
            hash: None,
        },
        error: "boom".into(),
        attempts: 3,
        failed_at: Timestamp::now(),
        replay_requested: false,
    }
}

/// Every record from the first, in order.
async fn all(store: &dyn Store) -> Vec<AuditRecord> {
    store.audit_records(&AuditFilter::default(), 0, 1000).await.unwrap()
}

/// Checks what a verifier checks: positions 1, 2, 3… and each hash recomputed from the record
/// and the one before, ending at the head.
async fn assert_chained(store: &dyn Store) -> Vec<AuditRecord> {
    let records = all(store).await;
    let mut previous = ChainHash::GENESIS;
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.position, i as i64 + 1, "positions have no gap");
        assert_eq!(link(&previous, record), record.hash, "record {} does not link", record.position);
        previous = record.hash;
    }
    let head = store.audit_head().await.unwrap();
    assert_eq!((head.position, head.hash), (records.len() as i64, previous), "the head is the last record");
    records
}

async fn every_administrative_change_is_recorded_with_it_and_chained(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let by = admin();
    let bootstrap = new_key(1);
    let done =
        store.administer(AdminChange::BootstrapKey(bootstrap.clone()), &AuditContext::bootstrap()).await;
    assert!(done.unwrap().effect.applied());
    let again =
        store.administer(AdminChange::BootstrapKey(new_key(2)), &AuditContext::bootstrap()).await.unwrap();
    assert_eq!((again.effect.applied(), again.record), (false, None), "a store with keys bootstraps nothing");

    let key = store.administer(AdminChange::CreateKey(new_key(3)), &by).await.unwrap();
    let record = key.record.clone().expect("a create is recorded");
    let key = key.effect.made_key().unwrap();
    assert_eq!(record.target, format!("key:{}", key.id.0));
    assert_eq!(record.details["scopes"], json!(["read", "audit"]));
    let rotate = AdminChange::RotateKey {
        old: key.id,
        new: new_key(4),
        old_expires_at: Timestamp::now().plus_seconds(60),
    };
    let AdminEffect::Rotated { new, old } = store.administer(rotate, &by).await.unwrap().effect else {
        panic!("a live key rotates")
    };
    assert!(old.expires_at.is_some() && new.id != old.id);
    assert!(store.administer(AdminChange::RevokeKey(new.id), &by).await.unwrap().effect.applied());
    let ghost = AdminChange::RevokeKey(KeyId(Uuid::now_v7()));
    assert_eq!(store.administer(ghost, &by).await.unwrap().record, None, "no key, no change, no record");
    let revoked_rotation =
        AdminChange::RotateKey { old: new.id, new: new_key(5), old_expires_at: Timestamp::now() };
    assert!(
        !store.administer(revoked_rotation, &by).await.unwrap().effect.applied(),
        "a revoked key does not rotate"
    );

    let hook = webhook();
    assert!(store.administer(AdminChange::CreateWebhook(hook.clone()), &by).await.unwrap().effect.applied());
    let retry = store.administer(AdminChange::CreateWebhook(hook.clone()), &by).await.unwrap();
    assert_eq!((retry.effect.applied(), retry.record), (false, None), "a retried create changes nothing");
    let secrets = WebhookSecrets {
        secret: "whenc1.k.second".into(),
        previous_secret: None,
        previous_secret_expires_at: None,
    };
    let rotate = AdminChange::RotateWebhookSecret {
        id: hook.id,
        expected: hook.secret.clone(),
        secrets: secrets.clone(),
    };
    assert!(store.administer(rotate.clone(), &by).await.unwrap().effect.applied());
    assert!(!store.administer(rotate, &by).await.unwrap().effect.applied(), "the compare and set holds");

    let (replayed, discarded) = (letter(), letter());
    let replayed = DeadLetter { consumer: "webhooks".into(), ..replayed };
    store.add_dead_letter(replayed.clone()).await.unwrap();
    store.add_dead_letter(discarded.clone()).await.unwrap();
    assert!(
        store.administer(AdminChange::ReplayDeadLetter(replayed.id), &by).await.unwrap().effect.applied()
    );
    assert!(store.dead_letter(replayed.id).await.unwrap().unwrap().replay_requested);
    assert!(
        store.administer(AdminChange::DiscardDeadLetter(discarded.id), &by).await.unwrap().effect.applied()
    );
    assert_eq!(store.dead_letter(discarded.id).await.unwrap(), None);
    let reset = AdminChange::ResetProjection { consumer: "ledger-volumes".into() };
    assert!(store.administer(reset, &by).await.unwrap().effect.applied());
    assert!(store.administer(AdminChange::DeleteWebhook(hook.id), &by).await.unwrap().effect.applied());
    assert_eq!(store.webhook(hook.id).await.unwrap(), None);

    let records = assert_chained(store.as_ref()).await;
    let actions: Vec<&str> = records.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "key.created",
            "key.created",
            "key.rotated",
            "key.revoked",
            "webhook.created",
            "webhook.secret_rotated",
            "dead_letter.replayed",
            "dead_letter.discarded",
            "projection.rebuilt",
            "webhook.deleted",
        ]
    );
    assert_eq!(records[0].actor, "bootstrap");
    assert_eq!(records[0].target, format!("key:{}", bootstrap.id.0));
    let by_admin = &records[1..];
    assert!(by_admin.iter().all(|r| r.actor == by.actor && r.outcome == "succeeded"));
    assert!(by_admin.iter().all(|r| r.client_address.as_deref() == Some("192.0.2.7")));
    assert!(by_admin.iter().all(|r| r.request_id.as_deref() == Some("req-1")));
    assert_eq!(records[2].details["new_key_id"], json!(new.id.0));
    assert_eq!(
        records[6].details,
        json!({"consumer": "webhooks", "event_id": replayed.event.id}).as_object().unwrap().clone()
    );
    assert_eq!(records[8].target, "projection:ledger-volumes");

    // Each record is an event of its own in the outbox, whose data is the record with its hash.
    let events: Vec<OutboxEvent> = store
        .events_after(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == AUDIT_EVENT_TYPE)
        .collect();
    assert_eq!(events.len(), records.len());
    for (event, record) in events.iter().zip(&records) {
        assert_eq!(event.subject, record.id);
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(data, serde_json::to_value(record).unwrap());
        assert_eq!(data["hash"], record.hash.to_hex());
    }
    store.shutdown().await;
}

async fn a_change_that_fails_leaves_no_record(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let by = admin();
    store.administer(AdminChange::CreateKey(new_key(7)), &by).await.unwrap();
    // The same token hash again: the insert fails, and neither key nor record stays.
    let twin = store.administer(AdminChange::CreateKey(new_key(7)), &by).await;
    assert!(twin.is_err(), "{twin:?}");
    assert_eq!(store.keys().await.unwrap().len(), 1);
    assert_eq!(assert_chained(store.as_ref()).await.len(), 1);
    // The next record takes the next position: the failed one gave its position back.
    store.administer(AdminChange::CreateKey(new_key(8)), &by).await.unwrap();
    assert_eq!(assert_chained(store.as_ref()).await.len(), 2);
    store.shutdown().await;
}

async fn listings_filter_and_page_in_position_order(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let (alice, bob) = (admin(), AuditContext::cli("bob"));
    let start = Timestamp::now();
    for i in 0..5 {
        let by = if i % 2 == 0 { &alice } else { &bob };
        store.administer(AdminChange::CreateKey(new_key(10 + i)), by).await.unwrap();
    }
    let denied =
        alice.entry(AuditAction::AccessDenied, "route:GET /v1/audit".into(), AuditOutcome::Denied, json!({}));
    let denied = store.record_audit(denied).await.unwrap();
    assert_eq!(denied.position, 6);

    let filter = |f: AuditFilter| {
        let store = store.store.clone();
        async move {
            store.audit_records(&f, 0, 100).await.unwrap().iter().map(|r| r.position).collect::<Vec<_>>()
        }
    };
    assert_eq!(filter(AuditFilter { actor: Some("cli:bob".into()), ..Default::default() }).await, [2, 4]);
    assert_eq!(
        filter(AuditFilter { actor: Some(alice.actor.clone()), ..Default::default() }).await,
        [1, 3, 5, 6]
    );
    assert_eq!(filter(AuditFilter { action: Some("access.denied".into()), ..Default::default() }).await, [6]);
    assert_eq!(filter(AuditFilter { outcome: Some("denied".into()), ..Default::default() }).await, [6]);
    let target = all(store.as_ref()).await[2].target.clone();
    assert_eq!(filter(AuditFilter { target: Some(target), ..Default::default() }).await, [3]);
    assert_eq!(filter(AuditFilter { since: Some(start), ..Default::default() }).await.len(), 6);
    assert_eq!(filter(AuditFilter { until: Some(start), ..Default::default() }).await, Vec::<i64>::new());
    let later = Timestamp::from_micros(denied.time.as_micros() + 1);
    assert_eq!(filter(AuditFilter { since: Some(later), ..Default::default() }).await, Vec::<i64>::new());

    // Pages of two, each after the last position of the one before.
    let (mut after, mut seen) = (0, Vec::new());
    loop {
        let page = store.audit_records(&AuditFilter::default(), after, 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        seen.extend(page.iter().map(|r| r.position));
    }
    assert_eq!(seen, [1, 2, 3, 4, 5, 6]);
    assert_chained(store.as_ref()).await;
    store.shutdown().await;
}

/// Several writers (other replicas on PostgreSQL; one process on SQLite) append at once: the
/// head row makes them take turns, so positions are 1..=N with no gap and the chain holds.
async fn concurrent_appends_take_turns_on_the_head(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    let mut writers = vec![store.store.clone()];
    for _ in 0..2 {
        writers.extend(store.another_writer(coffer_store::StoreConfig::default()).await);
    }
    let tasks: Vec<_> = (0..24u8)
        .map(|i| {
            let writer = writers[usize::from(i) % writers.len()].clone();
            tokio::spawn(async move {
                let by = AuditContext::cli(&format!("writer-{i}"));
                writer.administer(AdminChange::CreateKey(new_key(100 + i)), &by).await.unwrap()
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let records = assert_chained(store.as_ref()).await;
    assert_eq!(records.len(), 24);
    let actors: BTreeSet<&str> = records.iter().map(|r| r.actor.as_str()).collect();
    assert_eq!(actors.len(), 24, "every append is there once");
    for writer in &writers[1..] {
        writer.shutdown().await;
    }
    store.shutdown().await;
}

/// The canonical form is what a verifier recomputes from a row, so it is pinned here: a change
/// to it would make every stored record fail verification.
#[test]
fn the_canonical_form_of_a_record_is_pinned() {
    let record = AuditRecord {
        position: 2,
        id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
        time: Timestamp::from_micros(1_767_225_600_000_001),
        actor: "cli:root".into(),
        action: "key.revoked".into(),
        target: "key:0190a000-0000-7000-8000-000000000002".into(),
        client_address: None,
        request_id: None,
        outcome: "succeeded".into(),
        details: serde_json::Map::new(),
        hash: ChainHash::GENESIS,
    };
    assert_eq!(
        String::from_utf8(canonical(&record)).unwrap(),
        r#"{"action":"key.revoked","actor":"cli:root","client_address":null,"details":{},"id":"01900000-0000-7000-8000-000000000001","outcome":"succeeded","position":2,"request_id":null,"target":"key:0190a000-0000-7000-8000-000000000002","time":1767225600000001}"#
    );
    let previous = ChainHash([7; 32]);
    assert_eq!(
        link(&previous, &record),
        previous.next(&canonical(&record)),
        "the hash is SHA-256 of the previous hash and the canonical bytes"
    );
}

/// SQLite alone: the rows are reached with SQL from outside, as an intruder would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_edits_are_refused_and_a_forced_deletion_breaks_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let by = admin();
    for i in 0..3 {
        store.administer(AdminChange::CreateKey(new_key(40 + i)), &by).await.unwrap();
    }
    let db = rusqlite::Connection::open(dir.path().join("coffer.db")).unwrap();
    for sql in
        ["DELETE FROM audit_log WHERE position = 2", "UPDATE audit_log SET actor = 'x' WHERE position = 2"]
    {
        let refused = db.execute(sql, []).unwrap_err().to_string();
        assert!(refused.contains("append-only"), "{sql}: {refused}");
    }

    // An append that cannot be written takes its change with it.
    db.execute_batch(
        "CREATE TRIGGER no_more BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'full'); END;",
    )
    .unwrap();
    assert!(store.administer(AdminChange::CreateKey(new_key(50)), &by).await.is_err());
    assert_eq!(store.keys().await.unwrap().len(), 3, "no change without its record");
    db.execute_batch("DROP TRIGGER no_more;").unwrap();

    // Whoever drops the guard can delete a record, and the chain names where.
    db.execute_batch("DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE position = 2;").unwrap();
    let records = all(store.as_ref()).await;
    assert_eq!(records.iter().map(|r| r.position).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(link(&ChainHash::GENESIS, &records[0]), records[0].hash);
    assert_ne!(link(&records[0].hash, &records[1]), records[1].hash, "record 3 no longer links to record 1");
    store.shutdown().await;
}

/// A store upgraded from before the audit trail holds keys that no record made: the trail's
/// first record names them (and which were revoked), once, before whatever opened it.
async fn keys_older_than_the_trail_are_recorded_before_its_first_record(backend: Backend) {
    let Some(store) = fresh(backend).await else { return };
    // Written without records, as a version without the trail wrote keys.
    let (kept, revoked) =
        (store.create_key(new_key(1)).await.unwrap(), store.create_key(new_key(2)).await.unwrap());
    assert!(store.revoke_key(revoked.id).await.unwrap());

    let made = store.administer(AdminChange::CreateKey(new_key(3)), &admin()).await.unwrap();
    let made = made.effect.made_key().unwrap();
    store.administer(AdminChange::RevokeKey(made.id), &admin()).await.unwrap();
    let records = assert_chained(store.as_ref()).await;
    let actions: Vec<&str> = records.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["keys.adopted", "key.created", "key.revoked"], "adopted once, first");
    let adopted = &records[0];
    assert_eq!((adopted.actor.as_str(), adopted.target.as_str()), ("bootstrap", "keys"));
    let mut listed: Vec<(String, bool)> = adopted.details["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["id"].as_str().unwrap().to_owned(), k["revoked"].as_bool().unwrap()))
        .collect();
    listed.sort();
    let mut expected = vec![(kept.id.0.to_string(), false), (revoked.id.0.to_string(), true)];
    expected.sort();
    assert_eq!(listed, expected, "the keys held before the trail, and only those");

    // A store whose first key came through the trail adopts nothing.
    let Some(fresh_store) = fresh(backend).await else { return };
    fresh_store.administer(AdminChange::CreateKey(new_key(4)), &admin()).await.unwrap();
    let first: Vec<String> = all(fresh_store.as_ref()).await.into_iter().map(|r| r.action).collect();
    assert_eq!(first, ["key.created"]);
}
