//! Database failover with nothing lost: `coffer serve` on a PostgreSQL primary with a synchronous
//! standby, under a steady load of transfers whose clients retry with the same ids. The primary
//! is killed with SIGKILL and the standby promoted; writes resume by themselves through the
//! multi-host URL, clients only ever see 503 with Retry-After meanwhile, every acknowledged
//! transfer exists exactly once, and the write outage is measured.

mod common;
mod pg_cluster;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Http, Server, invariants_hold, list_all};
use pg_cluster::PgCluster;
use serde_json::{Value, json};
use uuid::Uuid;

const CLIENTS: usize = 8;
const WALLETS: usize = 8;
/// The acceptance bound on the write outage.
const OUTAGE_MAX: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Seen {
    /// Acknowledged transfers: id → (body, when the answer came).
    acknowledged: HashMap<Uuid, (Value, Instant)>,
    /// Every body sent, acknowledged or not.
    sent: Vec<Value>,
    /// Answers other than 201/200 and 503-with-Retry-After; must stay empty.
    wrong: Vec<String>,
    unavailable: usize,
}

/// Sends one transfer until it is answered, retrying the same body on 503 or a lost connection.
async fn send_until_answered(http: &Http, body: &Value, stop: &AtomicBool, seen: &Mutex<Seen>) {
    seen.lock().unwrap().sent.push(body.clone());
    loop {
        match http.post_with_headers("/v1/transfers", body).await {
            Ok((200 | 201, _, _)) => {
                let id = body["id"].as_str().unwrap().parse().unwrap();
                seen.lock().unwrap().acknowledged.insert(id, (body.clone(), Instant::now()));
                return;
            }
            Ok((503, headers, _)) if headers.contains_key("retry-after") => {
                seen.lock().unwrap().unavailable += 1
            }
            Ok((status, headers, answer)) => {
                seen.lock().unwrap().wrong.push(format!("{status} {headers:?} {answer}"));
                return;
            }
            // The server itself stays up; a dropped connection is retried like a 503.
            Err(e) => seen.lock().unwrap().wrong.push(format!("request failed: {e}")),
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_to_the_synchronous_standby_loses_and_doubles_nothing() {
    if let Some(why) = PgCluster::binaries_missing() {
        return coffer_testkit::missing::<()>("PostgreSQL server binaries", why).unwrap_or(());
    }
    let mut cluster = PgCluster::start().await;
    cluster.create_database("failover").await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_on_database(dir.path(), &cluster.url("failover")).await;
    let http = server.client();
    http.post_ok("/v1/ledgers", json!({"code": "FAIL", "scale": 2})).await;
    let funding = Uuid::now_v7();
    http.post_ok("/v1/accounts", json!({"id": funding, "ledger": "FAIL"})).await;
    let wallets: Vec<Uuid> = (0..WALLETS).map(|_| Uuid::now_v7()).collect();
    for id in &wallets {
        http.post_ok("/v1/accounts", json!({"id": id, "ledger": "FAIL"})).await;
    }

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (http, seen, stop, wallets) = (server.client(), seen.clone(), stop.clone(), wallets.clone());
            tokio::spawn(async move {
                for i in 0usize.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let body = json!({"id": Uuid::now_v7(), "debit_account_id": funding,
                                      "credit_account_id": wallets[(c + i) % WALLETS],
                                      "amount": 1 + (i % 9) as u64, "ledger": "FAIL"});
                    send_until_answered(&http, &body, &stop, &seen).await;
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    // Blocks on process waits; let the runtime move the clients to the other workers.
    tokio::task::block_in_place(|| cluster.kill_primary());
    // With no writable node left, the replica says it is not ready.
    let (status, readiness) = http.get("/readyz").await;
    assert_eq!(status, 503, "/readyz with the primary gone: {readiness}");
    cluster.promote_standby().await;
    let promoted_at = Instant::now();
    // Keep the load on until writes have resumed for a while (or clearly never will).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resumed = seen.lock().unwrap().acknowledged.values().filter(|(_, at)| *at > killed_at).count();
        if resumed >= 200 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }

    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    assert!(
        seen.wrong.is_empty(),
        "clients saw answers other than 2xx or 503 + Retry-After: {:?}",
        seen.wrong
    );
    // The outage: the longest silence between two acknowledgements once the kill began — from
    // the last write the old primary took to the first one the promoted standby took.
    let mut times: Vec<Instant> = seen.acknowledged.values().map(|(_, at)| *at).collect();
    times.sort_unstable();
    let (last_before, first_after) = times
        .windows(2)
        .map(|w| (w[0], w[1]))
        .filter(|(_, next)| *next > killed_at)
        .max_by_key(|(at, next)| *next - *at)
        .expect("writes resumed after the failover");
    let outage = first_after - last_before;
    eprintln!(
        "write outage {outage:?} (kill began → promoted {:?}, → first write after the outage {:?}); \
         {} acknowledged, {} answers 503 during the failover",
        promoted_at - killed_at,
        first_after.saturating_duration_since(killed_at),
        seen.acknowledged.len(),
        seen.unavailable
    );
    assert!(outage <= OUTAGE_MAX, "the write outage was {outage:?}");
    assert_eq!(http.get("/readyz").await.0, 200, "ready again on the promoted node");

    // Every acknowledged transfer exactly once, and the retries of every body sent apply nothing new.
    for body in &seen.sent {
        let (status, answer) = http.post("/v1/transfers", body).await.unwrap();
        assert!(status == 200 || status == 201, "a retry after the failover answered {status}: {answer}");
    }
    let transfers = list_all(&http, "/v1/transfers?ledger=FAIL").await;
    let mut count: HashMap<&str, usize> = HashMap::new();
    for t in &transfers {
        *count.entry(t["id"].as_str().unwrap()).or_default() += 1;
    }
    assert!(count.values().all(|n| *n == 1), "a transfer is present twice");
    for (id, (body, _)) in &seen.acknowledged {
        assert_eq!(count.get(id.to_string().as_str()), Some(&1), "acknowledged transfer {id} was lost");
        let stored = transfers.iter().find(|t| t["id"] == id.to_string()).unwrap();
        assert_eq!(stored["amount"], body["amount"]);
    }
    assert_eq!(transfers.len(), seen.sent.len(), "every body sent is applied once, after its retries");
    invariants_hold(&http, "FAIL").await;
}

/// A COMMIT whose answer never comes — here because the synchronous standby is gone — is answered
/// 503 with Retry-After, never 500; once the primary may commit alone again, the client's retry
/// with the same id settles it: the transfer exists once and the money moved once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_of_unknown_outcome_is_a_503_settled_by_the_retry() {
    if let Some(why) = PgCluster::binaries_missing() {
        return coffer_testkit::missing::<()>("PostgreSQL server binaries", why).unwrap_or(());
    }
    let mut cluster = PgCluster::start().await;
    cluster.create_database("unknown").await;
    let dir = tempfile::tempdir().unwrap();
    let settings =
        [("COFFER_STORE__COMMIT_TIMEOUT_MS", "1000"), ("COFFER_STORE__STATEMENT_TIMEOUT_MS", "3000")];
    let server = Server::start_on_database_with(dir.path(), &cluster.url("unknown"), &settings).await;
    let http = server.client();
    http.post_ok("/v1/ledgers", json!({"code": "UNK", "scale": 2})).await;
    let (from, to) = (Uuid::now_v7(), Uuid::now_v7());
    for id in [from, to] {
        http.post_ok("/v1/accounts", json!({"id": id, "ledger": "UNK"})).await;
    }

    tokio::task::block_in_place(|| cluster.kill_standby());
    let body = json!({"id": Uuid::now_v7(), "debit_account_id": from, "credit_account_id": to,
                      "amount": 700, "ledger": "UNK"});
    let (status, headers, answer) = http.post_with_headers("/v1/transfers", &body).await.unwrap();
    assert_eq!(status, 503, "a commit the standby never confirmed: {answer}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert_eq!(answer["code"], "outcome_unknown", "{answer}");

    cluster.commit_without_standby().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let settled = loop {
        let (status, answer) = http.post("/v1/transfers", &body).await.unwrap();
        if status != 503 || Instant::now() > deadline {
            break (status, answer);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(settled.0 == 200 || settled.0 == 201, "the retry answered {settled:?}");
    assert_eq!(settled.1["amount"], 700);
    let transfers = list_all(&http, "/v1/transfers?ledger=UNK").await;
    assert_eq!(transfers.len(), 1, "{transfers:?}");
    let (_, account) = http.get(&format!("/v1/accounts/{to}")).await;
    assert_eq!(account["balance"]["credits_posted"], 700, "the money moved once: {account}");
    invariants_hold(&http, "UNK").await;
}
