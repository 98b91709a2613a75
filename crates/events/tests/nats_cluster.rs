//! The three-node JetStream cluster we ship (`deploy/nats/cluster/`), started from those very
//! files (ports, hosts, directories and certificates rewritten for one machine; TLS to clients
//! and mutual TLS between the nodes, the shipped users): an R3 stream, the relay publishing
//! into it as the relay's user, and one node killed with SIGKILL in the middle — every event is
//! in the stream exactly once, read back from the two survivors as the worker's user reads it.
//!
//! On nats-server 2.9 the `sync_interval` line (2.10 and later) is dropped, as the files say.

mod common;

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use coffer_events::{EventsConfig, JetStreamBus, NatsConnection, Relay, Secret, StreamRole, StreamSettings};
use coffer_store::StoreConfig;
use coffer_testkit::{Backend, TestStore};
use common::{ledger_with_accounts, transfers};
use futures::StreamExt;
use uuid::Uuid;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The server's version as (major, minor), e.g. (2, 9).
fn nats_version() -> Option<(u32, u32)> {
    let output = Command::new("nats-server").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.trim().rsplit(" v").next()?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

const USERS: [(&str, &str); 2] = [("coffer-relay", "relay-secret"), ("coffer-worker", "worker-secret")];

/// A CA of the test's own, and one certificate it signed for 127.0.0.1 that serves the nodes
/// both to clients and to each other (no extended key usage: server and client alike).
fn certificates(dir: &Path) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for name in ["server", "route"] {
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

/// Node `i`'s shipped config, rewritten to run on this machine, written as
/// `dir/cluster/node<i>.conf`; it includes `dir/coffer-accounts.conf` ([`accounts`]).
fn node_config(i: usize, clients: &[u16], routes: &[u16], dir: &Path, keep_sync: bool) -> PathBuf {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats");
    let shipped = std::fs::read_to_string(deploy.join(format!("cluster/node{}.conf", i + 1)))
        .expect("the shipped cluster config");
    let mut config = shipped
        .replace("listen: 0.0.0.0:4222", &format!("listen: 127.0.0.1:{}", clients[i]))
        .replace("listen: 0.0.0.0:6222", &format!("listen: 127.0.0.1:{}", routes[i]))
        .replace("/etc/nats/tls/", &format!("{}/", dir.display()))
        .replace(
            "store_dir: /var/lib/nats-server",
            &format!("store_dir: {:?}", dir.join(format!("node{i}"))),
        );
    for (n, port) in routes.iter().enumerate() {
        config = config
            .replace(&format!("nats-route://nats-{}:6222", n + 1), &format!("nats-route://127.0.0.1:{port}"));
    }
    let keep = |line: &&str| {
        !line.trim_start().starts_with("http:") && (keep_sync || !line.contains("sync_interval"))
    };
    let path = dir.join(format!("cluster/node{i}.conf"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, config.lines().filter(keep).collect::<Vec<_>>().join("\n")).unwrap();
    path
}

/// The shipped users, where every node's config includes them: written once, before any node
/// starts (a node reading the file while it is written again would find no users).
fn accounts(dir: &Path) {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats");
    std::fs::copy(deploy.join("coffer-accounts.conf"), dir.join("coffer-accounts.conf")).unwrap();
}

/// How Coffer reaches the cluster as `user`: TLS required, the test's CA.
fn connection(url: &str, user: (&str, &str), dir: &Path) -> NatsConnection {
    NatsConnection {
        user: Some((user.0.to_owned(), Secret::new(user.1))),
        tls_ca_path: Some(dir.join("ca.pem")),
        require_tls: true,
        ..NatsConnection::to(url)
    }
}

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r3_stream_on_the_shipped_cluster_loses_nothing_when_a_node_dies() {
    let Some(version) = nats_version() else {
        return coffer_testkit::missing("nats-server on the PATH", "not found").unwrap_or(());
    };
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    accounts(dir.path());
    let (clients, routes): (Vec<u16>, Vec<u16>) = (0..3).map(|_| (free_port(), free_port())).unzip();
    let mut nodes: Vec<Option<Node>> = (0..3)
        .map(|i| {
            let path = node_config(i, &clients, &routes, dir.path(), version >= (2, 10));
            let child = Command::new("nats-server")
                .arg("-c")
                .arg(&path)
                .env("COFFER_NATS_RELAY_PASSWORD", USERS[0].1)
                .env("COFFER_NATS_WORKER_PASSWORD", USERS[1].1)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            Some(Node(child.expect("nats-server runs")))
        })
        .collect();
    let url = clients.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");

    // The stream and subjects the shipped users are allowed.
    let settings = StreamSettings { replicas: 3, ..EventsConfig::default().stream_settings() };
    // The cluster elects its JetStream leader first; until then the stream cannot be made.
    let deadline = Instant::now() + Duration::from_secs(30);
    let bus = loop {
        match JetStreamBus::connect_with(
            &connection(&url, USERS[0], dir.path()),
            &settings,
            StreamRole::Manage,
        )
        .await
        {
            Ok(bus) => break bus,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("the cluster never took an R3 stream: {e}"),
        }
    };
    let info = bus.context().get_stream(&settings.name).await.unwrap().cached_info().clone();
    assert_eq!(info.config.num_replicas, 3);
    assert_eq!(info.config.storage, jetstream::stream::StorageType::File);

    let Some(store) = TestStore::open(Backend::Sqlite, StoreConfig::default()).await else { return };
    let accounts = ledger_with_accounts(store.as_ref(), 2).await;
    let relay = Relay::new(store.store.clone(), Arc::new(bus.clone()), "jetstream");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relaying = tokio::spawn(relay.run(Duration::from_millis(10), stopped));

    transfers(store.as_ref(), accounts[0], accounts[1], 500).await;
    // Kill the node the client is most likely on, while the relay is publishing.
    drop(nodes[0].take());
    transfers(store.as_ref(), accounts[0], accounts[1], 500).await;

    let outbox = store.events_after(0, 10_000).await.unwrap();
    let survivor = format!("nats://127.0.0.1:{}", clients[1]);
    let reader = connection(&survivor, USERS[1], dir.path()).connect().await.unwrap();
    let js = jetstream::new(reader);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = js.get_stream(&settings.name).await.map(|s| s.cached_info().state.messages).unwrap_or(0);
        if stored as usize == outbox.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{stored} of {} events in the stream", outbox.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Read back from a survivor through a durable pull consumer, as a worker reads: what the
    // stream holds, in its order.
    // A new consumer of an R3 stream with a member gone waits for the survivors to elect its
    // leader, which may outlast one API call's timeout: ask again, within a bound.
    let stream = js.get_stream(&settings.name).await.unwrap();
    let config = jetstream::consumer::pull::Config {
        durable_name: Some("cluster-check".into()),
        filter_subject: format!("{}.>", settings.subject_prefix),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let consumer = loop {
        match stream.get_or_create_consumer("cluster-check", config.clone()).await {
            Ok(consumer) => break consumer,
            Err(e) => assert!(Instant::now() < deadline, "no consumer on the survivors: {e}"),
        }
    };
    let mut messages = consumer.messages().await.unwrap();
    let mut ids = Vec::new();
    while ids.len() < outbox.len() {
        let message =
            tokio::time::timeout(Duration::from_secs(10), messages.next()).await.unwrap().unwrap().unwrap();
        let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        ids.push(event["id"].as_str().unwrap().parse::<Uuid>().unwrap());
        message.ack().await.unwrap();
    }
    let expected: Vec<Uuid> = outbox.iter().map(|e| e.id).collect();
    assert_eq!(ids, expected, "every event once, in outbox order");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());

    let _ = stop.send(true);
    relaying.await.unwrap();
}
