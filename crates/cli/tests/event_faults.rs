//! The event pipeline under faults, with real processes: `coffer serve` processes on one
//! PostgreSQL database and a NATS server of the test's own (temporary directory, free port).
//!
//! 1. Under steady load, the relay is killed with SIGKILL mid-publish and restarted, the
//!    worker (the consumers) is killed with SIGKILL and restarted, and the NATS server is
//!    restarted: every acknowledged transfer's event is in the stream exactly once, and the
//!    projection (kept by a JetStream consumer) ends exact.
//! 2. A broker that lost acknowledged messages (its storage wiped) is healed by
//!    `coffer events republish --from 1`: the stream holds every event again, once, and the
//!    running worker subscribes again and keeps the projection exact with what comes next.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use coffer_testkit::TestDatabase;
use common::{Headless, Http, Server, invariants_hold};
use futures::StreamExt;
use serde_json::{Value, json};
use uuid::Uuid;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A nats-server with JetStream, in its own directory, on its own port.
struct Nats {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Nats {
    fn start(dir: &Path) -> Nats {
        let mut nats = Nats { child: None, port: free_port(), dir: dir.to_owned() };
        nats.spawn();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is on the PATH");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A clean stop (SIGTERM), as a rolling restart does.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The settings every process of one test shares: the database, NATS, a stream of its own.
struct Deployment {
    database_url: String,
    env: Vec<(String, String)>,
    stream: String,
    prefix: String,
}

impl Deployment {
    fn new(database_url: &str, nats: &Nats) -> Deployment {
        let tag = Uuid::new_v4().simple().to_string();
        let (stream, prefix) = (format!("FAULTS_{}", tag.to_uppercase()), format!("faults_{tag}"));
        let env = vec![
            ("COFFER_NATS_URL".into(), nats.url()),
            ("COFFER_EVENTS__STREAM".into(), stream.clone()),
            ("COFFER_EVENTS__SUBJECT_PREFIX".into(), prefix.clone()),
            ("COFFER_EVENTS__ACK_WAIT_MS".into(), "2000".into()),
            // A standby relay takes over a dead one's lease quickly.
            ("COFFER_EVENTS__RELAY_LEASE_MS".into(), "1000".into()),
        ];
        Deployment { database_url: database_url.to_owned(), env, stream, prefix }
    }

    fn env<'a>(&'a self, roles: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.push(("COFFER_ROLES", roles));
        env
    }

    /// A `coffer serve` with the API (and the given other roles).
    async fn api(&self, dir: &Path, roles: &str) -> Server {
        Server::start_on_database_with(dir, &self.database_url, &self.env(roles)).await
    }

    /// A `coffer serve` without the API (it has no port to be ready on).
    fn headless(&self, roles: &str) -> Headless {
        Headless::start(&self.database_url, &self.env(roles))
    }

    fn republish(&self, from: i64) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_coffer"))
            .args(["events", "republish", "--from", &from.to_string()])
            .env("COFFER_DATABASE_URL", &self.database_url)
            .env("COFFER_LOG_LEVEL", "warn")
            .envs(self.env("api"))
            .output()
            .expect("coffer runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "republish failed: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// Every message in the stream, read start to end by an ordered consumer: (event id,
    /// CloudEvent).
    async fn stream_contents(&self, nats: &Nats) -> Vec<(Uuid, Value)> {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client);
        let stream = match js.get_stream(&self.stream).await {
            Ok(stream) => stream,
            Err(_) => return Vec::new(),
        };
        let total = stream.cached_info().state.messages as usize;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: format!("{}.>", self.prefix),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let mut events = Vec::with_capacity(total);
        while events.len() < total {
            let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .expect("the stream's messages arrive")
                .unwrap()
                .unwrap();
            let event: Value = serde_json::from_slice(&message.payload).unwrap();
            events.push((event["id"].as_str().unwrap().parse().unwrap(), event));
        }
        events
    }
}

async fn setup_ledger(http: &Http, wallets: usize) -> Vec<String> {
    http.post_ok("/v1/ledgers", json!({"code": "EVT", "scale": 2})).await;
    let mut ids = Vec::new();
    for _ in 0..wallets {
        ids.push(
            http.post_ok("/v1/accounts", json!({"ledger": "EVT"})).await["id"].as_str().unwrap().to_owned(),
        );
    }
    ids
}

/// Posts transfers from `clients` tasks until `until`, each retried with its id on a 503 or a
/// dropped connection; answers the acknowledged ones: id → (amount, code).
async fn load(
    http: Http,
    accounts: Vec<String>,
    clients: usize,
    until: Instant,
) -> HashMap<String, (u64, u64)> {
    let acknowledged = Arc::new(Mutex::new(HashMap::new()));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, accounts, acknowledged) = (http.clone(), accounts.clone(), acknowledged.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < until {
                let id = Uuid::now_v7().to_string();
                let (amount, code) = (1 + (i % 50) as u64, 1 + (c % 3) as u64);
                let body = json!({"id": id, "debit_account_id": accounts[i % accounts.len()],
                    "credit_account_id": accounts[(i + 1 + c % (accounts.len() - 1)) % accounts.len()], "amount": amount,
                    "ledger": "EVT", "code": code});
                loop {
                    match http.post("/v1/transfers", &body).await {
                        Ok((201 | 200, _)) => break,
                        Ok((503, _)) | Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        Ok((status, answer)) => panic!("transfer answered {status}: {answer}"),
                    }
                }
                acknowledged.lock().unwrap().insert(id, (amount, code));
                i += 1;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(acknowledged).unwrap().into_inner().unwrap()
}

/// code → (count, volume) as the stats endpoint reports it.
async fn stats(http: &Http) -> HashMap<u64, (u64, u128)> {
    let (status, body) = http.get("/v1/ledgers/EVT/stats").await;
    assert_eq!(status, 200, "{body}");
    let rows = body["data"].as_array().unwrap();
    let mut totals: HashMap<u64, (u64, u128)> = HashMap::new();
    for row in rows {
        let entry = totals.entry(row["code"].as_u64().unwrap()).or_default();
        entry.0 += row["count"].as_u64().unwrap();
        entry.1 += row["volume"].as_str().unwrap().parse::<u128>().unwrap();
    }
    totals
}

fn expected_stats(acknowledged: &HashMap<String, (u64, u64)>) -> HashMap<u64, (u64, u128)> {
    let mut totals: HashMap<u64, (u64, u128)> = HashMap::new();
    for (amount, code) in acknowledged.values() {
        let entry = totals.entry(*code).or_default();
        entry.0 += 1;
        entry.1 += u128::from(*amount);
    }
    totals
}

async fn projection_becomes(http: &Http, expected: &HashMap<u64, (u64, u128)>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = stats(http).await;
    while &seen != expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen = stats(http).await;
    }
    assert_eq!(&seen, expected, "the projection");
    // And it stays there: nothing arrives late to be counted twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(&stats(http).await, expected, "the projection, later");
}

/// The transfer ids of the stream's `transfer.created` events; asserts no event id repeats.
fn created_transfers(events: &[(Uuid, Value)]) -> HashSet<String> {
    let ids: HashSet<Uuid> = events.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), events.len(), "an event is in the stream twice");
    events
        .iter()
        .filter(|(_, e)| e["type"] == "coffer.transfer.created")
        .map(|(_, e)| e["data"]["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_and_worker_kills_and_a_nats_restart_under_load_lose_and_double_nothing() {
    let Some(db) = TestDatabase::create().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(&dir.path().join("nats"));
    let deployment = Deployment::new(&db.url, &nats);
    let api = deployment.api(&dir.path().join("api"), "api").await;
    let http = api.client();
    let mut relay = deployment.headless("relay");
    let mut worker = deployment.headless("worker");
    let accounts = setup_ledger(&http, 8).await;

    let start = Instant::now();
    let writes = tokio::spawn(load(http.clone(), accounts, 6, start + Duration::from_secs(9)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    relay.kill_9();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    relay = deployment.headless("relay");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // The consumers die between their effects and their acks, whatever they were doing.
    worker.kill_9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker = deployment.headless("worker");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    nats.restart();
    let acknowledged = writes.await.unwrap();
    assert!(acknowledged.len() > 200, "only {} transfers under load", acknowledged.len());

    projection_becomes(&http, &expected_stats(&acknowledged)).await;
    let in_stream = created_transfers(&deployment.stream_contents(&nats).await);
    let acked: HashSet<String> = acknowledged.keys().cloned().collect();
    assert_eq!(in_stream, acked, "the stream holds exactly the acknowledged transfers");
    invariants_hold(&http, "EVT").await;
    drop((relay, worker));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn republish_heals_a_broker_that_lost_acknowledged_messages() {
    let Some(db) = TestDatabase::create().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats_dir = dir.path().join("nats");
    let mut nats = Nats::start(&nats_dir);
    let deployment = Deployment::new(&db.url, &nats);
    let api = deployment.api(&dir.path().join("api"), "api,worker").await;
    let http = api.client();
    let relay = deployment.headless("relay");
    let accounts = setup_ledger(&http, 4).await;
    let mut acknowledged =
        load(http.clone(), accounts.clone(), 4, Instant::now() + Duration::from_secs(2)).await;
    let acked: HashSet<String> = acknowledged.keys().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while created_transfers(&deployment.stream_contents(&nats).await) != acked {
        assert!(Instant::now() < deadline, "the relay never published everything");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The broker loses what it had acknowledged: its storage is gone when it comes back.
    relay.kill_9();
    nats.stop();
    std::fs::remove_dir_all(&nats_dir).unwrap();
    nats.spawn();
    let relay = deployment.headless("relay");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let survivors = created_transfers(&deployment.stream_contents(&nats).await);
    assert!(survivors.is_empty(), "the relay alone does not re-send what it published: {}", survivors.len());

    let printed = deployment.republish(1);
    assert!(printed.contains("republished"), "{printed}");
    assert_eq!(
        created_transfers(&deployment.stream_contents(&nats).await),
        acked,
        "every event is back, once"
    );

    // The running worker subscribes again to the new broker state and takes what comes next.
    acknowledged.extend(load(http.clone(), accounts, 2, Instant::now() + Duration::from_secs(1)).await);
    projection_becomes(&http, &expected_stats(&acknowledged)).await;
    drop(relay);
}
