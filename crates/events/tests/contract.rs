//! Contract test: every event Coffer produces validates against its JSON Schema in docs/events/.
//! A workload makes every type (an account, transfers, a hold posted, one voided, one that
//! expires, an audit record); each outbox row is encoded as the bus will carry it and checked
//! against the schema named by its `type`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use coffer_ledger::{
    AccountFlags, AccountId, Amount, Command, LedgerCode, NewAccount, NewLedger, NewTransfer, Resolution,
    Scale, Submission, TraceParent, TransferId,
};
use coffer_store::{AdminChange, AuditContext, KeyId, NewApiKey, Scope, StoreConfig, TokenHash};
use coffer_testkit::{Backend, TestStore};
use serde_json::Value;

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/events")
}

fn read_schema(file: &str) -> Value {
    let path = schemas_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Resolves the schemas' `$ref`s (`https://coffer.dev/events/<file>`) to the files beside them.
struct DocsEvents;

impl jsonschema::Retrieve for DocsEvents {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let file = uri.path().as_str().rsplit('/').next().unwrap_or_default().to_owned();
        Ok(read_schema(&file))
    }
}

fn validator(kind: &str) -> jsonschema::Validator {
    jsonschema::options()
        .with_retriever(DocsEvents)
        .build(&read_schema(&format!("{kind}.json")))
        .unwrap_or_else(|e| panic!("the schema of {kind} does not compile: {e}"))
}

fn usd() -> LedgerCode {
    LedgerCode::try_from("USD").unwrap()
}

fn transfer(
    id: TransferId,
    debit: AccountId,
    credit: AccountId,
    amount: u64,
    pending: Option<Option<u32>>,
) -> Command {
    Command::CreateTransfer(NewTransfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount: Amount::try_from(amount).unwrap(),
        ledger: usd(),
        code: 1,
        pending,
        external_ref: None,
        metadata: None,
    })
}

fn resolve(pending_id: TransferId) -> Resolution {
    Resolution {
        id: TransferId::generate(),
        pending_id,
        amount: None,
        code: None,
        external_ref: None,
        metadata: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_matches_the_schema_of_its_type() {
    let config = StoreConfig { expiry_interval_ms: 50, ..StoreConfig::default() };
    let Some(store) = TestStore::open(Backend::Sqlite, config).await else { return };
    let (a, b) = (AccountId::generate(), AccountId::generate());
    let (posted, voided, expiring) = (TransferId::generate(), TransferId::generate(), TransferId::generate());
    let mut commands =
        vec![Command::CreateLedger(NewLedger { code: usd(), scale: Scale::try_from(2).unwrap() })];
    for id in [a, b] {
        commands.push(Command::CreateAccount(NewAccount {
            id,
            ledger: usd(),
            code: 1,
            flags: AccountFlags::default(),
            external_ref: Some("customer-7".to_owned().try_into().unwrap()),
            metadata: Some(serde_json::from_str(r#"{"tier": "gold"}"#).unwrap()),
        }));
    }
    commands.push(transfer(TransferId::generate(), a, b, 100, None));
    commands.push(transfer(posted, a, b, 10, Some(None)));
    commands.push(transfer(voided, a, b, 20, Some(Some(3600))));
    commands.push(transfer(expiring, a, b, 30, Some(Some(1))));
    commands.push(Command::PostPending(resolve(posted)));
    commands.push(Command::VoidPending(resolve(voided)));
    // An administrative action: its audit record is an event too.
    let by = AuditContext::key(KeyId(uuid::Uuid::now_v7()), Some("192.0.2.1".into()), Some("req-7".into()));
    let key = NewApiKey {
        id: KeyId(uuid::Uuid::now_v7()),
        name: Some("reports".into()),
        scopes: vec![Scope::Read],
        rate_limit_per_second: None,
        expires_at: None,
        token_hash: TokenHash([7; 32]),
        bare_token: false,
    };
    store.administer(AdminChange::CreateKey(key), &by).await.expect("the key is made");
    let trace = TraceParent::try_from("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    store
        .submit(Submission::new(commands, true).traced(Some(trace.clone())))
        .await
        .expect("the workload applies");

    // Wait for the expiry task to release the last hold.
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = store.events_after(0, 1000).await.unwrap();
        if events.iter().any(|e| e.kind == "coffer.transfer.expired") || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let kinds: BTreeSet<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, coffer_events::EVENT_TYPES.into_iter().collect(), "every type is produced");
    for event in &events {
        let json: Value = serde_json::from_slice(&coffer_events::encode(event).unwrap()).unwrap();
        let errors: Vec<String> = validator(&event.kind).iter_errors(&json).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{} does not match its schema: {errors:?}\n{json:#}", event.kind);
        // The expiry task's own change was sent by no request, so it has no trace; an audit
        // record carries its request's id instead.
        let traced = !["coffer.transfer.expired", "coffer.audit.recorded"].contains(&event.kind.as_str());
        let expected = traced.then(|| trace.as_str());
        assert_eq!(json.get("traceparent").and_then(Value::as_str), expected, "{json:#}");
    }

    // The schemas have teeth: a wrong sequence, status or amount, or a missing field, is refused.
    let posted_event = events.iter().find(|e| e.kind == "coffer.transfer.posted").unwrap();
    let good: Value = serde_json::from_slice(&coffer_events::encode(posted_event).unwrap()).unwrap();
    let posted_schema = validator("coffer.transfer.posted");
    for (pointer, replacement) in [
        ("/sequence", Value::from("42")),
        ("/data/status", Value::from("voided")),
        ("/data/amount", Value::from(-1)),
    ] {
        let mut bad = good.clone();
        *bad.pointer_mut(pointer).unwrap() = replacement;
        assert!(!posted_schema.is_valid(&bad), "{pointer} should be refused");
    }
    let mut bad = good.clone();
    bad["data"].as_object_mut().unwrap().remove("ledger");
    assert!(!posted_schema.is_valid(&bad), "a transfer without its ledger should be refused");
    let audit_event = events.iter().find(|e| e.kind == "coffer.audit.recorded").unwrap();
    let good: Value = serde_json::from_slice(&coffer_events::encode(audit_event).unwrap()).unwrap();
    let audit_schema = validator("coffer.audit.recorded");
    for (pointer, replacement) in [
        ("/data/hash", Value::from("00")),
        ("/data/position", Value::from(0)),
        ("/data/action", Value::from("x")),
    ] {
        let mut bad = good.clone();
        *bad.pointer_mut(pointer).unwrap() = replacement;
        assert!(!audit_schema.is_valid(&bad), "{pointer} should be refused");
    }
    store.shutdown().await;
}
