//! `coffer verify` on both stores: after a mixed workload (holds, posts, voids, an expiry,
//! batches, refused requests) it exits 0 — with the server still running — and after each edit
//! made directly in the database it exits non-zero and names the edited record.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use coffer_testkit::TestDatabase;
use common::{Http, Server, WEBHOOK_SECRET_KEY};
use serde_json::{Value, json};

/// What the workload left, for the edits to aim at.
struct Made {
    wallet: String,
    transfer: String,
}

async fn workload(http: &Http) -> Made {
    http.post_ok("/v1/ledgers", json!({"code": "USD", "scale": 2})).await;
    let funding =
        http.post_ok("/v1/accounts", json!({"ledger": "USD"})).await["id"].as_str().unwrap().to_owned();
    let wallet = http
        .post_ok("/v1/accounts", json!({"ledger": "USD", "flags": {"debits_must_not_exceed_credits": true}, "metadata": {"b": 1.5, "a": "x"}}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let move_ = |from: &str, to: &str, amount: u64| json!({"debit_account_id": from, "credit_account_id": to, "amount": amount, "ledger": "USD"});
    let transfer = http.post_ok("/v1/transfers", move_(&funding, &wallet, 10_000)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Refused: the wallet cannot go below zero.
    let (status, _) = http.post("/v1/transfers", &move_(&wallet, &funding, 1_000_000)).await.unwrap();
    assert_eq!(status, 422);
    for i in 0..6_u64 {
        let mut hold = move_(&wallet, &funding, 100 + i);
        hold["pending"] = json!(true);
        let hold = http.post_ok("/v1/transfers", hold).await["id"].as_str().unwrap().to_owned();
        let action = if i % 2 == 0 { "post" } else { "void" };
        http.post_ok(&format!("/v1/transfers/{hold}/{action}"), json!({})).await;
    }
    // A batch that goes through and an atomic one that does not.
    let items: Vec<Value> = (1..=20).map(|n| move_(&funding, &wallet, n)).collect();
    http.post_ok("/v1/transfers/batch", json!({"atomic": false, "transfers": items})).await;
    let doomed = json!({"atomic": true, "transfers": [move_(&funding, &wallet, 5), move_(&wallet, &funding, 1_000_000_000)]});
    let (status, answer) = http.post("/v1/transfers/batch", &doomed).await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert!(answer["results"].as_array().unwrap().iter().all(|r| r["status"] == "failed"), "{answer}");
    // A hold that expires on its own.
    let mut hold = move_(&wallet, &funding, 7);
    hold["pending"] = json!(true);
    hold["timeout_seconds"] = json!(1);
    let hold = http.post_ok("/v1/transfers", hold).await["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(&format!("/v1/transfers/{hold}")).await.1["status"] != "expired" {
        assert!(Instant::now() < deadline, "the hold did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Made { wallet, transfer }
}

/// Runs `coffer verify` with `args` and `env`.
fn verify(args: &[&str], env: &[(&str, &str)]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_coffer"))
        .arg("verify")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("coffer runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The edits of the acceptance list, each as SQL for the store's dialect, and what the report
/// must name. `outbox` is the outbox's position column; ids are written by `id`.
fn edits(
    made: &Made,
    outbox: &str,
    id: &dyn Fn(&str) -> String,
    bytes: &dyn Fn(&str) -> String,
    drop_trigger: &str,
) -> Vec<(&'static str, String, String)> {
    let (wallet, transfer) = (id(&made.wallet), id(&made.transfer));
    let rogue = "0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeee";
    vec![
        (
            "an admin key inserted",
            format!(
                "INSERT INTO api_keys (id, name, scopes, token_hash, created_at) VALUES ({}, 'rogue', 'admin', {}, 0)",
                id(rogue),
                bytes(&"ab".repeat(32))
            ),
            format!("key:{rogue}"),
        ),
        (
            "an audit record deleted",
            format!("{drop_trigger}; DELETE FROM audit_log WHERE position = 1"),
            "audit 1".into(),
        ),
        (
            "an account's balance",
            format!("UPDATE accounts SET credits_posted = credits_posted + 1 WHERE id = {wallet}"),
            format!("account {}", made.wallet),
        ),
        (
            "a transfer's amount",
            format!("UPDATE transfers SET amount = amount + 1 WHERE id = {transfer}"),
            format!("transfer {}", made.transfer),
        ),
        (
            "a deleted transfer",
            format!("DELETE FROM transfers WHERE id = {transfer}"),
            format!("transfer {}", made.transfer),
        ),
        (
            "a deleted outbox row",
            format!("DELETE FROM outbox WHERE {outbox} = 5"),
            "position 5 is missing".into(),
        ),
        (
            "two events swapped",
            format!(
                "UPDATE outbox SET data = (SELECT data FROM outbox o WHERE o.{outbox} = 11 - outbox.{outbox}) \
                 WHERE {outbox} IN (5, 6)"
            ),
            "outbox 5".into(),
        ),
    ]
}

fn assert_named(what: &str, output: &Output, expected: &str) {
    let text = text(output);
    eprintln!("--- {what}:\n{text}");
    assert!(!output.status.success(), "{what}: verify passed:\n{text}");
    assert!(text.contains(expected), "{what}: the report does not name {expected:?}:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_holds_on_the_embedded_store_and_names_every_edit() {
    let base = tempfile::tempdir().unwrap();
    let server = Server::start(base.path()).await;
    let made = workload(&server.client()).await;
    let dir = base.path().to_str().unwrap();
    let output = verify(&["--data-dir", dir], &[]);
    assert!(output.status.success(), "beside the running server: {}", text(&output));
    assert!(text(&output).starts_with("verified: "), "{}", text(&output));
    let json: Value = serde_json::from_slice(&verify(&["--data-dir", dir, "--json"], &[]).stdout).unwrap();
    assert_eq!(json["holds"], true, "{json}");
    drop(server);

    let blob = |uuid: &str| format!("X'{}'", uuid.replace('-', ""));
    let hex = |text: &str| format!("X'{text}'");
    let drop_triggers = "DROP TRIGGER audit_log_no_delete";
    for (what, sql, expected) in edits(&made, "seq", &blob, &hex, drop_triggers) {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(base.path(), copy.path());
        rusqlite::Connection::open(copy.path().join("coffer.db")).unwrap().execute_batch(&sql).unwrap();
        let output = verify(&["--data-dir", copy.path().to_str().unwrap()], &[]);
        assert_named(what, &output, &expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_holds_on_postgres_and_names_every_edit() {
    let Some(database) = TestDatabase::create().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_on_database(dir.path(), &database.url).await;
    let made = workload(&server.client()).await;
    let env =
        [("COFFER_DATABASE_URL", database.url.as_str()), ("COFFER_WEBHOOK_SECRET_KEYS", WEBHOOK_SECRET_KEY)];
    let output = verify(&[], &env);
    assert!(output.status.success(), "beside the running server: {}", text(&output));
    drop(server);

    let quoted = |uuid: &str| format!("'{uuid}'");
    let hex = |text: &str| format!("'\\x{text}'");
    let drop_trigger = "DROP TRIGGER audit_log_append_only ON audit_log";
    for (what, sql, expected) in edits(&made, "position", &quoted, &hex, drop_trigger) {
        let copy = database.copy().await;
        let (client, connection) = tokio_postgres::connect(&copy.url, tokio_postgres::NoTls).await.unwrap();
        let driver = tokio::spawn(connection);
        client.batch_execute(&sql).await.unwrap();
        drop(client);
        let _ = driver.await;
        let env =
            [("COFFER_DATABASE_URL", copy.url.as_str()), ("COFFER_WEBHOOK_SECRET_KEYS", WEBHOOK_SECRET_KEY)];
        assert_named(what, &verify(&[], &env), &expected);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A store from before the audit trail holds keys no record made: `coffer verify` names them
/// until a server starts on it, which opens the trail with a record of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_before_the_audit_trail_are_adopted_when_a_server_starts() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().to_str().unwrap();
    let migrated = std::process::Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(["migrate", "--create", "--data-dir", dir])
        .output()
        .expect("coffer runs");
    assert!(migrated.status.success(), "{}", text(&migrated));
    let old = "0190aaaa-bbbb-7ccc-8ddd-000000000001";
    let insert = format!(
        "INSERT INTO api_keys (id, name, scopes, token_hash, created_at, revoked_at) \
         VALUES (X'{}', 'old', 'admin', X'{}', 0, 5)",
        old.replace('-', ""),
        "cd".repeat(32)
    );
    rusqlite::Connection::open(base.path().join("coffer.db")).unwrap().execute_batch(&insert).unwrap();
    assert_named("a key from before the trail", &verify(&["--data-dir", dir], &[]), &format!("key:{old}"));

    let server = Server::start(base.path()).await;
    drop(server);
    let output = verify(&["--data-dir", dir], &[]);
    assert!(output.status.success(), "after the adoption: {}", text(&output));
}
