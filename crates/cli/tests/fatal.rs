//! A row that does not decode, or an invariant found broken, stops `coffer serve` for good: the
//! request that met it is answered 500 `internal` (never a 503 to retry against the same
//! process), and the process exits at once with code 70 after one line naming the cause, for
//! its supervisor to restart it — on the embedded store and on PostgreSQL.
//!
//! The broken invariant comes from the test-only fault `store.test_break_invariant`, which only
//! a test build of the binary knows (see crates/store/src/ledger.rs).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use coffer_testkit::TestDatabase;
use common::{Http, Server};
use serde_json::{Value, json};

/// The exit code of a process whose store stopped after a fatal error (`EX_SOFTWARE`).
const HALTED: i32 = 70;
/// How soon after the fatal answer the process must be gone.
const PROMPTLY: Duration = Duration::from_secs(5);

/// Where a test server keeps its data: the embedded store, or a database of its own.
enum Place {
    Sqlite,
    Postgres(TestDatabase),
}

impl Place {
    /// The embedded store, or (with `postgres`) a fresh database; `None` when PostgreSQL is
    /// missing and the test is skipped.
    async fn new(postgres: bool) -> Option<Place> {
        match postgres {
            false => Some(Place::Sqlite),
            true => TestDatabase::create().await.map(Place::Postgres),
        }
    }

    fn url(&self) -> Option<&str> {
        match self {
            Place::Sqlite => None,
            Place::Postgres(db) => Some(&db.url),
        }
    }

    /// Runs `sql` on the server's database behind its back.
    async fn tamper(&self, dir: &Path, sql: &str) {
        match self {
            Place::Sqlite => coffer_testkit::sqlite_execute(dir, sql),
            Place::Postgres(db) => coffer_testkit::postgres_execute(&db.url, sql).await,
        }
    }
}

/// A ledger and two accounts, the second with `external_ref: "victim"`; answers their ids.
async fn two_accounts(http: &Http) -> (String, String) {
    http.post_ok("/v1/ledgers", json!({"code": "USD", "scale": 2})).await;
    let mut ids = Vec::new();
    for account in [json!({"ledger": "USD"}), json!({"ledger": "USD", "external_ref": "victim"})] {
        ids.push(http.post_ok("/v1/accounts", account).await["id"].as_str().unwrap().to_owned());
    }
    (ids.remove(0), ids.remove(0))
}

/// Asserts `(status, body)` is a 500 `internal` problem.
fn assert_internal((status, body): (u16, Value)) {
    assert_eq!((status, body["code"].as_str()), (500, Some("internal")), "{body}");
}

/// Asserts the server exits on its own, promptly, with [`HALTED`], its last words one line
/// that names the cause (every word of `cause`).
fn assert_halted(mut server: Server, stderr: &Path, cause: &[&str]) {
    let started = Instant::now();
    let status = server
        .wait_exit(PROMPTLY)
        .unwrap_or_else(|| panic!("still running {PROMPTLY:?} after the fatal error"));
    assert_eq!(status.code(), Some(HALTED), "{status:?} after {:?}", started.elapsed());
    let said = std::fs::read_to_string(stderr).unwrap();
    let last: Vec<&str> = said.lines().filter(|line| line.starts_with("coffer: ")).collect();
    assert_eq!(last.len(), 1, "one line with the cause: {said}");
    assert!(last[0].starts_with("coffer: stopped after a fatal error: "), "{said}");
    for word in cause {
        assert!(last[0].contains(word), "the line names the cause ({word}): {said}");
    }
    assert_eq!(said.lines().last(), Some(last[0]), "nothing is said after it: {said}");
}

async fn a_damaged_row_stops_the_server(postgres: bool) {
    let Some(place) = Place::new(postgres).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr.log");
    let server =
        Server::start_with_stderr(dir.path(), place.url(), &[], std::fs::File::create(&stderr).unwrap())
            .await;
    let http = server.client();
    let (payer, victim) = two_accounts(&http).await;
    place.tamper(dir.path(), "UPDATE accounts SET metadata = 'not json' WHERE external_ref = 'victim'").await;

    assert_eq!(http.get(&format!("/v1/accounts/{payer}")).await.0, 200, "an intact row reads as before");
    assert_internal(http.get(&format!("/v1/accounts/{victim}")).await);
    assert_halted(server, &stderr, &["a stored row is damaged"]);
}

async fn a_broken_invariant_stops_the_server(postgres: bool) {
    let Some(place) = Place::new(postgres).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr.log");
    let fault = [("COFFER_STORE__TEST_BREAK_INVARIANT", "true")];
    let server =
        Server::start_with_stderr(dir.path(), place.url(), &fault, std::fs::File::create(&stderr).unwrap())
            .await;
    let http = server.client();
    // Creating records loads no account; moving money between them does, and the fault hands
    // the core both accounts overdrawn.
    let (payer, victim) = two_accounts(&http).await;
    let transfer =
        json!({"debit_account_id": payer, "credit_account_id": victim, "amount": 1, "ledger": "USD"});
    assert_internal(http.post("/v1/transfers", &transfer).await.unwrap());
    assert_halted(server, &stderr, &["a ledger invariant is broken", "debits exceed credits"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_row_stops_the_server_on_the_embedded_store() {
    a_damaged_row_stops_the_server(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_row_stops_the_server_on_postgres() {
    a_damaged_row_stops_the_server(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_invariant_stops_the_server_on_the_embedded_store() {
    a_broken_invariant_stops_the_server(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_invariant_stops_the_server_on_postgres() {
    a_broken_invariant_stops_the_server(true).await;
}
