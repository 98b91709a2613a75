//! The gateway's acceptance test (issue 5): three `coffer serve` replicas on one PostgreSQL
//! database behind one `coffer gateway` process, under steady load of idempotent requests
//! (transfers with client-chosen ids, and reads) from clients that never retry. One replica is
//! killed with SIGKILL mid-way and later restarted on its port: no request fails, the gateway
//! reports the replica unhealthy within 2 s and re-admits it, and every acknowledged transfer
//! exists exactly once.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_testkit::TestDatabase;
use common::{GatewayProcess, Http, Server, invariants_hold, list_all};
use serde_json::{Value, json};
use uuid::Uuid;

const CLIENTS: usize = 8;
const WALLETS: usize = 8;
const LOAD: Duration = Duration::from_secs(8);
const KILL_AFTER: Duration = Duration::from_secs(3);

struct World {
    http: Http,
    funding: Uuid,
    wallets: Vec<Uuid>,
    acknowledged: Mutex<HashSet<Uuid>>,
    failures: Mutex<Vec<String>>,
}

/// One client: a new transfer with its own id, then a read of it and of a wallet; it never
/// retries, so any failure the gateway lets through is counted.
async fn client(world: Arc<World>, c: usize) -> usize {
    let end = Instant::now() + LOAD;
    let mut sent = 0;
    while Instant::now() < end {
        let id = Uuid::now_v7();
        let wallet = world.wallets[(c + sent) % WALLETS];
        let body = json!({"id": id, "debit_account_id": world.funding, "credit_account_id": wallet,
                          "amount": 1 + (sent % 3) as u64, "ledger": "GW"});
        sent += 1;
        match world.http.post("/v1/transfers", &body).await {
            // 200 is a replay: the killed replica committed it, the gateway's retry found it.
            Ok((200 | 201, _)) => {
                world.acknowledged.lock().unwrap().insert(id);
            }
            Ok((status, answer)) => {
                world.failures.lock().unwrap().push(format!("POST {id}: {status} {answer}"))
            }
            Err(err) => world.failures.lock().unwrap().push(format!("POST {id}: {err}")),
        }
        for path in [format!("/v1/transfers/{id}"), format!("/v1/accounts/{wallet}")] {
            sent += 1;
            let (status, answer) = world.http.get(&path).await;
            if status != 200 {
                world.failures.lock().unwrap().push(format!("GET {path}: {status} {answer}"));
            }
        }
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_under_load_behind_the_gateway_fails_no_request() {
    let Some(database) = TestDatabase::create().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut replicas = Vec::new();
    for n in 0..3 {
        replicas
            .push(Server::start_on_database(&dir.path().join(format!("replica-{n}")), &database.url).await);
    }
    let urls: Vec<String> = replicas.iter().map(|r| format!("http://127.0.0.1:{}", r.port())).collect();
    let log_path = dir.path().join("gateway.log");
    // The gateway checks tokens against the replicas' own key table.
    let env = [("COFFER_DATABASE_URL", database.url.as_str())];
    let gateway = GatewayProcess::start_with(&urls, &env, std::fs::File::create(&log_path).unwrap()).await;
    let http = Http::at(gateway.base.clone());

    http.post_ok("/v1/ledgers", json!({"code": "GW", "scale": 2})).await;
    let funding = Uuid::now_v7();
    http.post_ok("/v1/accounts", json!({"id": funding, "ledger": "GW"})).await;
    let wallets: Vec<Uuid> = (0..WALLETS).map(|_| Uuid::now_v7()).collect();
    for id in &wallets {
        http.post_ok("/v1/accounts", json!({"id": id, "ledger": "GW"})).await;
    }
    let world = Arc::new(World {
        http: http.clone(),
        funding,
        wallets,
        acknowledged: Mutex::default(),
        failures: Mutex::default(),
    });
    let clients: Vec<_> = (0..CLIENTS).map(|c| tokio::spawn(client(world.clone(), c))).collect();

    tokio::time::sleep(KILL_AFTER).await;
    let victim = &urls[1];
    let stopped = replicas.remove(1).kill_9();
    let killed = Instant::now();
    while gateway.healthy(victim).await {
        assert!(killed.elapsed() < Duration::from_secs(2), "the killed replica is still reported healthy");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ejected_after = killed.elapsed();
    println!("the killed replica was reported unhealthy after {} ms", ejected_after.as_millis());

    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted = stopped.restart_on_database(&database.url).await;
    let back = Instant::now();
    while !gateway.healthy(victim).await {
        assert!(back.elapsed() < Duration::from_secs(10), "the restarted replica was not re-admitted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("the restarted replica was re-admitted {} ms after it was ready", back.elapsed().as_millis());
    replicas.push(restarted);

    let mut sent = 0;
    for c in clients {
        sent += c.await.expect("a client panicked");
    }
    let failures = world.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(sent > 300, "the load was too light to prove anything: {sent} requests");
    let metrics = gateway.metrics().await;
    let retries: Vec<&str> =
        metrics.lines().filter(|l| l.starts_with("coffer_gateway_retries_total")).collect();
    println!("{sent} requests, none failed; {retries:?}");

    // Every acknowledged transfer exactly once, and nothing nobody saw acknowledged.
    let acknowledged = world.acknowledged.lock().unwrap().clone();
    let transfers = list_all(&http, "/v1/transfers?ledger=GW").await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for t in &transfers {
        *seen.entry(t["id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "a transfer is listed twice");
    for id in &acknowledged {
        assert_eq!(seen.get(&id.to_string()), Some(&1), "acknowledged transfer {id} missing");
    }
    assert_eq!(transfers.len(), acknowledged.len(), "a transfer was applied that no client saw acknowledged");
    invariants_hold(&http, "GW").await;

    assert!(gateway.terminate().success(), "a drained gateway exits cleanly");

    // The access log: one JSON line per request, with the fields operators search by.
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("gateway drained"), "the drain is logged");
    let line: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["target"] == "coffer_gateway::access")
        .expect("an access log line");
    let fields = [
        "request_id",
        "client",
        "key_id",
        "method",
        "path",
        "status",
        "bytes",
        "latency_ms",
        "upstream",
        "retries",
    ];
    for field in fields {
        assert!(line["fields"].get(field).is_some(), "{field} missing in {line}");
    }
    assert_eq!(line["fields"]["client"], "127.0.0.1");
}
