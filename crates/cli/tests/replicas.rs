//! Three `coffer serve` processes on one PostgreSQL database, under concurrent load with
//! retries, uniform and on one hot account: every acknowledged transfer is there exactly once,
//! no retry applies twice, and the ledger's invariants hold.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_testkit::TestDatabase;
use common::{Http, Server, invariants_hold, list_all};
use serde_json::{Value, json};
use uuid::Uuid;

const REPLICAS: usize = 3;
const CLIENTS: usize = 12;
const WALLETS: usize = 16;
const PHASE: Duration = Duration::from_secs(4);

#[derive(Clone, Copy, PartialEq)]
enum Load {
    Uniform,
    Hot,
}

struct World {
    replicas: Vec<Http>,
    funding: Uuid,
    hot: Uuid,
    wallets: Vec<Uuid>,
    /// Every acknowledged transfer, with the body that created it.
    acknowledged: Mutex<HashMap<Uuid, Value>>,
}

impl World {
    fn body(&self, load: Load, client: usize, i: usize) -> Value {
        let wallet = self.wallets[(client * 7 + i) % WALLETS];
        let (debit, credit) = match (load, i % 3) {
            (Load::Uniform, 0) => (self.funding, wallet),
            (Load::Uniform, _) => (wallet, self.wallets[(client + i + 1) % WALLETS]),
            (Load::Hot, 0) => (wallet, self.hot),
            (Load::Hot, _) => (self.funding, self.hot),
        };
        json!({"id": Uuid::now_v7(), "debit_account_id": debit, "credit_account_id": credit,
               "amount": 1 + (i % 5) as u64, "ledger": "REPL"})
    }

    /// Sends `body` to `replica` until it gets an answer that is not 503 (the clients' retry).
    async fn send(&self, replica: usize, body: &Value) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, answer) =
                self.replicas[replica % REPLICAS].post("/v1/transfers", body).await.unwrap();
            if status != 503 || Instant::now() > deadline {
                return (status, answer);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn acknowledge(&self, body: &Value) {
        let id: Uuid = body["id"].as_str().unwrap().parse().unwrap();
        self.acknowledged.lock().unwrap().insert(id, body.clone());
    }
}

/// One client: new transfers round-robin over the replicas; every fifth is retried on another
/// replica, every seventh is sent to two replicas at once.
async fn client(world: Arc<World>, load: Load, c: usize) -> usize {
    let end = Instant::now() + PHASE;
    let mut i = 0;
    while Instant::now() < end {
        i += 1;
        let body = world.body(load, c, i);
        if i % 7 == 0 {
            let (first, second) = tokio::join!(world.send(c + i, &body), world.send(c + i + 1, &body));
            let mut statuses = [first.0, second.0];
            statuses.sort_unstable();
            // At most one creation. A refusal stores nothing, so the other replica may still
            // create it once funds arrived: [201, 422] is a refusal followed by a creation.
            assert!(
                matches!(statuses, [200, 201] | [201, 422] | [422, 422]),
                "a race on one id answered {statuses:?}: {first:?} {second:?}"
            );
            if statuses == [200, 201] {
                assert_eq!(first.1, second.1, "both replicas must describe the same transfer");
            }
            if statuses[1] == 201 || statuses[0] == 201 {
                world.acknowledge(&body);
            }
            continue;
        }
        let (status, answer) = world.send(c + i, &body).await;
        match status {
            201 => world.acknowledge(&body),
            422 => continue,
            _ => panic!("unexpected {status}: {answer}"),
        }
        if i % 5 == 0 {
            let (again, replayed) = world.send(c + i + 1, &body).await;
            assert_eq!(again, 200, "a retry on another replica answered {again}: {replayed}");
            assert_eq!(replayed, answer, "a retry must answer the transfer the first attempt made");
        }
    }
    i
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_one_database_apply_each_transfer_once() {
    let Some(database) = TestDatabase::create().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    for n in 0..REPLICAS {
        servers
            .push(Server::start_on_database(&dir.path().join(format!("replica-{n}")), &database.url).await);
    }
    let replicas: Vec<Http> = servers.iter().map(Server::client).collect();
    let setup = &replicas[0];
    setup.post_ok("/v1/ledgers", json!({"code": "REPL", "scale": 2})).await;
    let (funding, hot) = (Uuid::now_v7(), Uuid::now_v7());
    for id in [funding, hot] {
        setup.post_ok("/v1/accounts", json!({"id": id, "ledger": "REPL"})).await;
    }
    let wallets: Vec<Uuid> = (0..WALLETS).map(|_| Uuid::now_v7()).collect();
    for id in &wallets {
        let flags = json!({"debits_must_not_exceed_credits": true});
        setup.post_ok("/v1/accounts", json!({"id": id, "ledger": "REPL", "flags": flags})).await;
    }
    let world = Arc::new(World { replicas, funding, hot, wallets, acknowledged: Mutex::default() });

    for load in [Load::Uniform, Load::Hot] {
        let clients: Vec<_> = (0..CLIENTS).map(|c| tokio::spawn(client(world.clone(), load, c))).collect();
        let mut sent = 0;
        for c in clients {
            sent += c.await.expect("a client failed");
        }
        assert!(sent > 100, "the load was too light to prove anything: {sent} requests");
    }

    // Every replica sees the same ledger: each acknowledged transfer exactly once.
    let acknowledged = world.acknowledged.lock().unwrap().clone();
    for http in &world.replicas {
        let transfers = list_all(http, "/v1/transfers?ledger=REPL").await;
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for t in &transfers {
            *seen.entry(t["id"].as_str().unwrap()).or_default() += 1;
        }
        assert!(seen.values().all(|n| *n == 1), "a transfer is listed twice");
        for (id, body) in &acknowledged {
            assert_eq!(seen.get(id.to_string().as_str()), Some(&1), "acknowledged transfer {id} missing");
            let stored = transfers.iter().find(|t| t["id"] == id.to_string()).unwrap();
            assert_eq!(stored["amount"], body["amount"]);
        }
        assert_eq!(
            transfers.len(),
            acknowledged.len(),
            "a transfer was applied that no client saw acknowledged"
        );
        invariants_hold(http, "REPL").await;
    }
    let (_, hot_account) = world.replicas[2].get(&format!("/v1/accounts/{hot}")).await;
    let credited: u64 = acknowledged
        .values()
        .filter(|b| b["credit_account_id"] == hot.to_string())
        .map(|b| b["amount"].as_u64().unwrap())
        .sum();
    assert_eq!(hot_account["balance"]["credits_posted"], credited, "the hot account's balance");
}
