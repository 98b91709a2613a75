//! Hostile traffic (DESIGN §5, isolation): while honest clients move money, other clients send
//! bodies, queries and paths built to break the store. Honest clients never see a 5xx, hostile
//! ones get a 4xx (or a 2xx when what they sent happens to be valid), and the books balance.
//! Runs on both stores: on PostgreSQL, U+0000 once failed whole group commits.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use coffer_testkit::Backend;
use common::{ADMIN, App, spawn_with_services};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};

coffer_testkit::on_each_backend! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_nul_byte_fails_its_sender_alone,
    #[test]
    hostile_requests_never_fail_honest_clients_nor_answer_5xx,
}

/// An honest client: `count` transfers of 1 from `from` to `to` (or until `stop`), answering
/// the status of each.
async fn honest(app: Arc<App>, from: String, to: String, count: usize, stop: Arc<AtomicBool>) -> Vec<u16> {
    let mut statuses = Vec::new();
    while statuses.len() < count && !stop.load(Ordering::Relaxed) {
        let body = json!({"debit_account_id": from, "credit_account_id": to, "amount": 1, "ledger": "USD",
                          "external_ref": "honest-ref", "metadata": {"note": "ordinary"}});
        let r = app.post("/v1/transfers", body).await;
        assert!(r.status < 500, "an honest client got {}: {}", r.status, r.text);
        statuses.push(r.status);
    }
    statuses
}

/// Spawns `n` honest clients, each moving money between its own two accounts.
async fn honest_clients(app: &Arc<App>, n: usize, count: usize, stop: &Arc<AtomicBool>) -> Vec<HonestClient> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let (from, to) = (app.account("USD", json!({})).await, app.account("USD", json!({})).await);
        let task = tokio::spawn(honest(app.clone(), from.clone(), to.clone(), count, stop.clone()));
        clients.push(HonestClient { from, to, task });
    }
    clients
}

struct HonestClient {
    from: String,
    to: String,
    task: tokio::task::JoinHandle<Vec<u16>>,
}

impl HonestClient {
    /// Waits for the client, checks every request applied, and that the two balances are exactly
    /// what it moved.
    async fn check(self, app: &App) -> usize {
        let statuses = self.task.await.unwrap();
        assert!(statuses.iter().all(|s| *s == 201), "honest statuses: {statuses:?}");
        let moved = statuses.len() as u64;
        assert_eq!(app.balance(&self.from).await["debits_posted"], moved);
        assert_eq!(app.balance(&self.to).await["credits_posted"], moved);
        statuses.len()
    }
}

/// Debits equal credits over every account of `ledger`.
async fn books_balance(app: &App, ledger: &str) {
    let (mut debits, mut credits, mut cursor) = (0u64, 0u64, None::<String>);
    loop {
        let mut path = format!("/v1/accounts?ledger={ledger}&limit=1000");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = app.get(&path).await;
        assert_eq!(page.status, 200, "{}", page.text);
        for account in page.body["data"].as_array().unwrap() {
            debits += account["balance"]["debits_posted"].as_u64().unwrap();
            credits += account["balance"]["credits_posted"].as_u64().unwrap();
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(debits, credits, "the books of {ledger} do not balance");
}

async fn app(backend: Backend) -> Option<Arc<App>> {
    let app = spawn_with_services(
        backend,
        coffer_api::ApiConfig::default(),
        coffer_events::TargetPolicy::default(),
    )
    .await?;
    app.ledger("USD").await;
    Some(Arc::new(app))
}

/// The case found under attack: on PostgreSQL a transfer whose `external_ref` held U+0000 was
/// answered 503, and so was every honest request of its group commit; other fields and query
/// parameters holding it were 503 too. Now each is a 400 naming the field, and nobody else notices.
async fn a_nul_byte_fails_its_sender_alone(backend: Backend) {
    let Some(app) = app(backend).await else { return };
    let (h1, h2) = (app.account("USD", json!({})).await, app.account("USD", json!({})).await);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = honest_clients(&app, 8, 25, &stop).await;

    let hostile: Vec<(&str, String, Option<Value>, &str)> = vec![
        (
            "POST",
            "/v1/transfers".into(),
            Some(
                json!({"debit_account_id": h1, "credit_account_id": h2, "amount": 1, "ledger": "USD", "external_ref": "a\u{0}b"}),
            ),
            "external_ref",
        ),
        (
            "POST",
            "/v1/accounts".into(),
            Some(json!({"ledger": "USD", "external_ref": "\u{0}"})),
            "external_ref",
        ),
        (
            "POST",
            "/v1/accounts".into(),
            Some(json!({"ledger": "USD", "metadata": {"k\u{0}": 1}})),
            "metadata",
        ),
        (
            "POST",
            "/v1/transfers/batch".into(),
            Some(
                json!({"transfers": [{"debit_account_id": h1, "credit_account_id": h2, "amount": 1, "ledger": "USD", "metadata": {"k": ["\u{0}"]}}]}),
            ),
            "transfers[0].metadata",
        ),
        ("POST", "/v1/keys".into(), Some(json!({"name": "k\u{0}", "scopes": ["read"]})), "name"),
        ("GET", "/v1/accounts?external_ref=%00".into(), None, "external_ref"),
        ("GET", "/v1/admin/dead-letters?consumer=%00".into(), None, "consumer"),
    ];
    let mut attackers = Vec::new();
    for _ in 0..2 {
        let (app, hostile) = (app.clone(), hostile.clone());
        attackers.push(tokio::spawn(async move {
            for round in 0..5 {
                for (method, path, body, field) in &hostile {
                    let body = body.as_ref().map(|b| b.to_string().into_bytes());
                    let r = app.send(method, path, Some(ADMIN), body, &[]).await;
                    r.assert_problem(400, "invalid_request");
                    let named = r.body["errors"].as_array().unwrap().iter().any(|e| e["field"] == *field);
                    assert!(
                        named,
                        "round {round}, {method} {path}: the field {field} is not named: {}",
                        r.text
                    );
                }
            }
        }));
    }
    for attacker in attackers {
        attacker.await.unwrap();
    }
    for client in clients {
        assert_eq!(client.check(&app).await, 25);
    }
    books_balance(&app, "USD").await;
}

/// JSON text of a value built to hurt: odd strings, huge and odd numbers, deep nesting, types
/// where none is expected.
fn hostile_value() -> impl Strategy<Value = String> {
    let text = prop_oneof![
        any::<String>(),
        "[\\x00-\\x1f\\x7f-\\x9f]{1,8}",
        "\\PC{100,3000}",
        Just("\u{0}".to_owned()),
        Just("\u{202e}\u{0301}\u{fffe}\u{ffff}\u{10ffff}".to_owned()),
        Just("'; DROP TABLE accounts; --".to_owned()),
    ];
    prop_oneof![
        text.prop_map(|s| Value::String(s).to_string()),
        // A lone surrogate is valid JSON text but no Unicode scalar value.
        Just(r#""\ud800""#.to_owned()),
        Just(r#""\udfff\u0000""#.to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        Just("18446744073709551616".to_owned()),
        Just("-9223372036854775809".to_owned()),
        Just("1e400".to_owned()),
        Just("-0".to_owned()),
        Just("0.5".to_owned()),
        Just("true".to_owned()),
        Just("null".to_owned()),
        (1usize..400).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth))),
        (1usize..400).prop_map(|depth| format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))),
        Just(r#"{"":{"\u0000":[null,{"x":"\u0000"}]}}"#.to_owned()),
        Just("[]".to_owned()),
    ]
}

/// A request: method, path, body.
#[derive(Debug, Clone)]
struct Hostile {
    method: &'static str,
    path: String,
    body: Option<Vec<u8>>,
}

/// A valid body of each write endpoint, as (path, fields of JSON text).
fn templates(h1: &str, h2: &str, pending: &str) -> Vec<(String, Vec<(&'static str, String)>)> {
    let transfer = vec![
        ("debit_account_id", json!(h1).to_string()),
        ("credit_account_id", json!(h2).to_string()),
        ("amount", "1".to_owned()),
        ("ledger", r#""USD""#.to_owned()),
        ("code", "1".to_owned()),
        ("external_ref", r#""r""#.to_owned()),
        ("metadata", r#"{"k":"v"}"#.to_owned()),
    ];
    let item = object(&transfer);
    vec![
        ("/v1/ledgers".into(), vec![("code", r#""HX""#.into()), ("scale", "2".into())]),
        (
            "/v1/accounts".into(),
            vec![
                ("ledger", r#""USD""#.into()),
                ("code", "7".into()),
                ("flags", r#"{"debits_must_not_exceed_credits":false}"#.into()),
                ("external_ref", r#""r""#.into()),
                ("metadata", r#"{"k":"v"}"#.into()),
            ],
        ),
        ("/v1/transfers".into(), transfer.clone()),
        ("/v1/transfers/batch".into(), vec![("atomic", "false".into()), ("transfers", format!("[{item}]"))]),
        (format!("/v1/transfers/{pending}/post"), vec![("amount", "1".into())]),
        (format!("/v1/transfers/{pending}/void"), vec![]),
        (
            "/v1/keys".into(),
            vec![
                ("name", r#""n""#.into()),
                ("scopes", r#"["read"]"#.into()),
                ("rate_limit_per_second", "10".into()),
            ],
        ),
        (
            "/v1/webhooks".into(),
            vec![
                ("url", r#""https://hooks.example.invalid/coffer""#.into()),
                ("event_types", r#"["coffer.transfer.created"]"#.into()),
            ],
        ),
    ]
}

fn object(fields: &[(&str, String)]) -> String {
    let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{}:{v}", json!(k))).collect();
    format!("{{{}}}", fields.join(","))
}

/// Hostile requests: a write endpoint's valid body with a field replaced, added or the whole body
/// swapped for a hostile value or broken bytes; or a read whose query or path holds one.
fn hostile_requests(h1: String, h2: String, pending: String) -> impl Strategy<Value = Hostile> {
    let writes = templates(&h1, &h2, &pending);
    let count = writes.len();
    let write = (0..count, any::<prop::sample::Index>(), hostile_value(), 0..4u8, any::<Vec<u8>>()).prop_map(
        move |(which, field, value, how, bytes)| {
            let (path, mut fields) = writes[which].clone();
            let body = match how {
                0 if !fields.is_empty() => {
                    let i = field.index(fields.len());
                    fields[i].1 = value;
                    object(&fields)
                }
                1 => {
                    fields.push(("unexpected", value));
                    object(&fields)
                }
                2 => value,
                _ => return Hostile { method: "POST", path, body: Some(bytes) },
            };
            Hostile { method: "POST", path, body: Some(body.into_bytes()) }
        },
    );
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let read = (0..6u8, any::<String>(), "[\\x00-\\x1f]{0,3}").prop_map(move |(which, text, controls)| {
        let value = format!("{text}{controls}");
        let (q, seg) = (encode(&value), encode(&value).replace('+', "%20"));
        let path = match which {
            0 => format!("/v1/accounts?external_ref={q}"),
            1 => format!("/v1/accounts?ledger={q}"),
            2 => format!("/v1/transfers?account_id={q}"),
            3 => format!("/v1/admin/dead-letters?consumer={q}"),
            4 => format!("/v1/accounts/{seg}"),
            _ => format!("/v1/ledgers/{seg}/stats?from={q}"),
        };
        Hostile { method: "GET", path, body: None }
    });
    prop_oneof![4 => write, 1 => read]
}

/// The property of item 1 of the hostile-traffic work: generated hostile requests at every
/// endpoint, while honest clients write. No 5xx for anyone; the books balance.
fn hostile_requests_never_fail_honest_clients_nor_answer_5xx(backend: Backend) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let Some(app) = runtime.block_on(app(backend)) else { return };
    let (h1, h2, pending, clients, stop) = runtime.block_on(async {
        let (h1, h2) = (app.account("USD", json!({})).await, app.account("USD", json!({})).await);
        let hold = json!({"debit_account_id": h1, "credit_account_id": h2, "amount": 1000, "ledger": "USD", "pending": true});
        let r = app.post("/v1/transfers", hold).await;
        assert_eq!(r.status, 201, "{}", r.text);
        let pending = r.body["id"].as_str().unwrap().to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let clients = honest_clients(&app, 4, usize::MAX, &stop).await;
        (h1, h2, pending, clients, stop)
    });

    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let result = runner.run(&hostile_requests(h1, h2, pending), |request| {
        let r =
            runtime.block_on(app.send(request.method, &request.path, Some(ADMIN), request.body.clone(), &[]));
        if r.status >= 500 {
            return Err(TestCaseError::fail(format!(
                "{} {} answered {}: {}",
                request.method, request.path, r.status, r.text
            )));
        }
        Ok(())
    });
    stop.store(true, Ordering::Relaxed);
    let moved: usize = runtime.block_on(async {
        let mut moved = 0;
        for client in clients {
            moved += client.check(&app).await;
        }
        books_balance(&app, "USD").await;
        moved
    });
    result.unwrap();
    assert!(moved > 0, "the honest clients moved nothing");
}
