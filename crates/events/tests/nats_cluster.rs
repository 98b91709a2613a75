//! The three-node JetStream cluster we ship (`deploy/nats/cluster/`), started from those very
//! files (ports, hosts and directories rewritten for one machine): an R3 stream, the relay
//! publishing into it, and one node killed with SIGKILL in the middle — every event is in the
//! stream exactly once, read back from the two survivors.
//!
//! On nats-server 2.9 the `sync_interval` line (2.10 and later) is dropped, as the files say.

mod common;

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use coffer_events::{JetStreamBus, Relay};
use coffer_store::StoreConfig;
use coffer_testkit::{Backend, TestStore};
use common::{ledger_with_accounts, transfers, unique_stream};
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

/// Node `i`'s shipped config, rewritten to run on this machine.
fn node_config(i: usize, clients: &[u16], routes: &[u16], dir: &Path, keep_sync: bool) -> String {
    let shipped = std::fs::read_to_string(format!(
        "{}/../../deploy/nats/cluster/node{}.conf",
        env!("CARGO_MANIFEST_DIR"),
        i + 1
    ))
    .expect("the shipped cluster config");
    let mut config = shipped
        .replace("listen: 0.0.0.0:4222", &format!("listen: 127.0.0.1:{}", clients[i]))
        .replace("listen: 0.0.0.0:6222", &format!("listen: 127.0.0.1:{}", routes[i]))
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
    config.lines().filter(keep).collect::<Vec<_>>().join("\n")
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
    let (clients, routes): (Vec<u16>, Vec<u16>) = (0..3).map(|_| (free_port(), free_port())).unzip();
    let mut nodes: Vec<Option<Node>> = (0..3)
        .map(|i| {
            let path = dir.path().join(format!("node{i}.conf"));
            std::fs::write(&path, node_config(i, &clients, &routes, dir.path(), version >= (2, 10))).unwrap();
            let child = Command::new("nats-server")
                .arg("-c")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            Some(Node(child.expect("nats-server runs")))
        })
        .collect();
    let url = clients.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");

    let settings = unique_stream("cluster", 3);
    // The cluster elects its JetStream leader first; until then the stream cannot be made.
    let deadline = Instant::now() + Duration::from_secs(30);
    let bus = loop {
        match JetStreamBus::connect(&url, &settings).await {
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
    let js = jetstream::new(async_nats::connect(&survivor).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = js.get_stream(&settings.name).await.map(|s| s.cached_info().state.messages).unwrap_or(0);
        if stored as usize == outbox.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{stored} of {} events in the stream", outbox.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Read back by sequence from a survivor: what the stream holds, in its order.
    let stream = js.get_stream(&settings.name).await.unwrap();
    let mut ids = Vec::new();
    for sequence in 1..=outbox.len() as u64 {
        let message = stream.get_raw_message(sequence).await.unwrap();
        let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        ids.push(event["id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    let expected: Vec<Uuid> = outbox.iter().map(|e| e.id).collect();
    assert_eq!(ids, expected, "every event once, in outbox order");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());

    let _ = stop.send(true);
    relaying.await.unwrap();
    let _ = bus.context().delete_stream(&settings.name).await;
}
