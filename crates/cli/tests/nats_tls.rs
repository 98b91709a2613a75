//! NATS as we ship it (`deploy/nats/single.conf` and its `coffer-accounts.conf`, loaded as they
//! are, with the test's own certificate, port and directory put in): clients speak TLS only,
//! nobody connects without a user, only the relay's user can put an event into the stream, and
//! the whole pipeline — a relay process and an api+worker process, each with its own user —
//! runs over TLS on those users.
//!
//! On nats-server 2.9 the `sync_interval` line (2.10 and later) is dropped, as the file says.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{Event, jetstream};
use coffer_events::{JetStreamBus, NatsConnection, Secret, StreamRole};
use coffer_testkit::TestDatabase;
use common::{Headless, Server};
use serde_json::json;

const RELAY: (&str, &str) = ("coffer-relay", "relay-password-for-the-test");
const WORKER: (&str, &str) = ("coffer-worker", "worker-password-for-the-test");
const STREAM: &str = "COFFER_EVENTS";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A certificate authority of the test's own, and a server certificate it signed for
/// 127.0.0.1 (and localhost), written as `ca.pem`, `server.pem`, `server.key` in `dir`.
fn certificates(dir: &Path) -> PathBuf {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let cert = rcgen::CertificateParams::new(names).unwrap().signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    dir.join("ca.pem")
}

/// The server's version as (major, minor), e.g. (2, 9); None when nats-server is missing.
fn nats_version() -> Option<(u32, u32)> {
    let output = Command::new("nats-server").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.trim().rsplit(" v").next()?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// The shipped configuration in `dir`, with this machine's port, directory and certificates.
fn shipped_config(dir: &Path, port: u16, keep_sync: bool) -> PathBuf {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats");
    let accounts = std::fs::read_to_string(deploy.join("coffer-accounts.conf")).unwrap();
    std::fs::write(dir.join("coffer-accounts.conf"), accounts).unwrap();
    let shipped = std::fs::read_to_string(deploy.join("single.conf")).unwrap();
    let config = shipped
        .replace("listen: 0.0.0.0:4222", &format!("listen: 127.0.0.1:{port}"))
        .replace("/etc/nats/tls/", &format!("{}/", dir.display()))
        .replace("store_dir: /var/lib/nats-server", &format!("store_dir: {:?}", dir.join("store")));
    let keep = |line: &&str| {
        !line.trim_start().starts_with("http:") && (keep_sync || !line.contains("sync_interval"))
    };
    let config = config.lines().filter(keep).collect::<Vec<_>>().join("\n");
    assert!(config.contains(&format!("{}/server.pem", dir.display())), "the file names its certificate");
    let path = dir.join("single.conf");
    std::fs::write(&path, config).unwrap();
    path
}

/// nats-server on the shipped configuration; killed when dropped.
struct Nats {
    child: Child,
    port: u16,
    ca: PathBuf,
}

impl Nats {
    fn start(dir: &Path, version: (u32, u32)) -> Nats {
        let ca = certificates(dir);
        let port = free_port();
        let config = shipped_config(dir, port, version >= (2, 10));
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .env("COFFER_NATS_RELAY_PASSWORD", RELAY.1)
            .env("COFFER_NATS_WORKER_PASSWORD", WORKER.1)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start on the shipped configuration");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nats { child, port, ca }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A connection as `user` (none: anonymous) over TLS, and the server errors it was sent.
    async fn connect(
        &self,
        user: Option<(&str, &str)>,
    ) -> Result<(async_nats::Client, Arc<Mutex<Vec<String>>>), async_nats::ConnectError> {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let seen = errors.clone();
        let options = self.connection(user).options().unwrap().event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let Event::ServerError(error) = event {
                    seen.lock().unwrap().push(error.to_string());
                }
            }
        });
        options.connect(self.url()).await.map(|client| (client, errors))
    }

    /// Coffer's settings for a connection as `user` (none: anonymous), TLS required.
    fn connection(&self, user: Option<(&str, &str)>) -> NatsConnection {
        NatsConnection {
            user: user.map(|(name, password)| (name.to_owned(), Secret::new(password))),
            tls_ca_path: Some(self.ca.clone()),
            require_tls: true,
            ..NatsConnection::to(&self.url())
        }
    }

    /// The settings a `coffer serve` process needs to reach this server as `user`.
    fn env(&self, user: (&'static str, &'static str)) -> Vec<(&'static str, String)> {
        vec![
            ("COFFER_NATS_URL", self.url()),
            ("COFFER_NATS_USER", user.0.to_owned()),
            ("COFFER_NATS_PASSWORD", user.1.to_owned()),
            ("COFFER_NATS_TLS_CA_PATH", self.ca.display().to_string()),
            ("COFFER_NATS_REQUIRE_TLS", "true".to_owned()),
        ]
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn stream_messages(js: &jetstream::Context) -> u64 {
    js.get_stream(STREAM).await.unwrap().info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_relay_user_puts_events_in_the_stream_and_the_pipeline_runs_over_tls() {
    let Some(version) = nats_version() else {
        return coffer_testkit::missing("nats-server on the PATH", "not found").unwrap_or(());
    };
    let Some(db) = TestDatabase::create().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), version);

    // Nobody without a user, and nobody without TLS.
    let anonymous = nats.connect(None).await;
    assert!(anonymous.is_err(), "an anonymous client was let in");
    let mut greeting = String::new();
    let mut raw = std::io::BufReader::new(std::net::TcpStream::connect(("127.0.0.1", nats.port)).unwrap());
    std::io::BufRead::read_line(&mut raw, &mut greeting).unwrap();
    assert!(greeting.contains("\"tls_required\":true"), "the server lets clients in without TLS: {greeting}");
    let plain = NatsConnection { require_tls: false, ..nats.connection(Some(RELAY)) }.options().unwrap();
    assert!(plain.connect(nats.url()).await.is_ok(), "TLS is required, so the client takes it unasked");

    // The relay's user makes the stream and publishes into it.
    let (relay, _) = nats.connect(Some(RELAY)).await.expect("the relay's user connects over TLS");
    let relay_js = jetstream::new(relay);
    let settings = coffer_events::EventsConfig::default().stream_settings();
    JetStreamBus::connect_with(&nats.connection(Some(RELAY)), &settings, StreamRole::Manage)
        .await
        .expect("the relay's user manages the stream");
    relay_js.publish("coffer.transfer.created", "{}".into()).await.unwrap().await.expect("stored");
    assert_eq!(stream_messages(&relay_js).await, 1);

    // The worker's user cannot put anything into it: refused as a permissions violation.
    let (worker, errors) = nats.connect(Some(WORKER)).await.expect("the worker's user connects");
    let worker_js = jetstream::new(worker.clone());
    let published = tokio::time::timeout(Duration::from_secs(3), async {
        worker_js.publish("coffer.transfer.created", "{}".into()).await?.await
    })
    .await;
    assert!(!matches!(published, Ok(Ok(_))), "the worker's user published an event");
    worker.publish("coffer.account.created", "{}".into()).await.unwrap();
    worker.flush().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !errors.lock().unwrap().iter().any(|e| e.contains("Permissions Violation for Publish to \"coffer."))
    {
        assert!(Instant::now() < deadline, "no permissions violation reported: {:?}", errors.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nor reconfigure the stream to take subjects it may publish to.
    let widened = jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec!["coffer.>".into(), "coffer_dlq.>".into()],
        ..Default::default()
    };
    let update = tokio::time::timeout(Duration::from_secs(3), worker_js.update_stream(widened)).await;
    assert!(!matches!(update, Ok(Ok(_))), "the worker's user changed the stream");
    assert_eq!(stream_messages(&relay_js).await, 1, "the stream holds the relay's message only");

    // The pipeline: a relay process and an api+worker process, each with its own user.
    // The api starts first: it makes the bootstrap key the test's client uses.
    let worker_env = nats.env(WORKER);
    let mut env: Vec<(&str, &str)> = worker_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("COFFER_ROLES", "api,worker"));
    let api = Server::start_on_database_with(&dir.path().join("api"), &db.url, &env).await;
    let relay_env = nats.env(RELAY);
    let mut env: Vec<(&str, &str)> = relay_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("COFFER_ROLES", "relay"));
    let _relay = Headless::start(&db.url, &env);
    let http = api.client();
    let (from, to) = http.ledger_with_two_accounts("TLS").await;
    for amount in 1..=20u64 {
        let transfer =
            json!({"debit_account_id": from, "credit_account_id": to, "amount": amount, "ledger": "TLS"});
        http.post_ok("/v1/transfers", transfer).await;
    }
    // The projection is kept by the worker from the stream the relay fills.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, stats) = http.get("/v1/ledgers/TLS/stats").await;
        assert_eq!(status, 200, "{stats}");
        let count: u64 = stats["data"].as_array().unwrap().iter().map(|r| r["count"].as_u64().unwrap()).sum();
        if count == 20 {
            break;
        }
        assert!(Instant::now() < deadline, "the projection counted {count} of 20 transfers: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The probe from before, then at least the two accounts and twenty transfers.
    let stored = stream_messages(&relay_js).await;
    assert!(stored >= 1 + 2 + 20, "{stored} messages in the stream");
}
