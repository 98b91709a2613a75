//! Webhook signing secrets over their life, against the real store and real receivers:
//! - a rotated endpoint signs every delivery with the new and the old secret during the
//!   overlap, and a receiver built on the Standard Webhooks reference library for Python
//!   (`standardwebhooks`, from PyPI) verifies the delivery with either secret alone;
//! - secrets are stored sealed, rows kept in clear from before sealing are sealed at start, and
//!   a key rotation (new key first, old one kept to open) keeps every secret readable.

#[path = "webhooks/receiver.rs"]
#[allow(dead_code)] // shared with tests/webhooks.rs, which uses all of it
mod receiver;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver as Lines, channel};
use std::time::Duration;

use coffer_events::{
    Dispatcher, RetryPolicy, SecretKey, SecretKeys, SigningSecret, WEBHOOKS_CONSUMER, WebhookSettings,
    new_secret, reseal, rotate_secret,
};
use coffer_ledger::Timestamp;
use coffer_store::{AuditContext, DeliveryStatus, Store, StoreConfig, Webhook, WebhookEvent};
use coffer_testkit::{Backend, TestStore, services_required};
use receiver::Receiver;
use uuid::Uuid;

coffer_testkit::on_each_backend! {
    #![tokio::test(flavor = "multi_thread", worker_threads = 2)]
    during_the_overlap_either_secret_alone_verifies_with_the_reference_library,
    secrets_are_sealed_at_rest_and_stay_readable_across_a_key_rotation,
}

const ACCOUNT_CREATED: &str = "coffer.account.created";

async fn open_store(backend: Backend) -> Option<TestStore> {
    TestStore::open(backend, StoreConfig::default()).await
}

/// Loopback receivers over plain http, quick retries.
fn settings() -> WebhookSettings {
    WebhookSettings {
        allow_private_networks: true,
        allow_insecure_http: true,
        request_timeout: Duration::from_secs(2),
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(40),
            max_backoff: Duration::from_millis(80),
        },
        claim: Duration::from_secs(10),
        concurrency: 4,
        batch: 16,
        poll_interval: Duration::from_millis(20),
    }
}

async fn endpoint(store: &dyn Store, url: String, stored_secret: impl FnOnce(Uuid) -> String) -> Webhook {
    let id = Uuid::new_v4();
    let webhook = Webhook {
        id,
        url,
        event_types: vec![ACCOUNT_CREATED.to_owned()],
        secret: stored_secret(id),
        previous_secret: None,
        previous_secret_expires_at: None,
        created_at: Timestamp::now(),
    };
    store.create_webhook(webhook.clone()).await.unwrap();
    webhook
}

/// One new event, enqueued for every subscribed endpoint.
async fn one_event(store: &dyn Store) {
    let id = Uuid::now_v7();
    let payload = format!(r#"{{"specversion":"1.0","id":"{id}","type":"{ACCOUNT_CREATED}","data":{{}}}}"#);
    let event = WebhookEvent { id, kind: ACCOUNT_CREATED.to_owned(), payload };
    store.enqueue_deliveries(WEBHOOKS_CONSUMER, &[event], Timestamp::now()).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Rotation, verified by the Python reference library.

/// What the Python receiver printed for one delivery.
#[derive(Debug, serde::Deserialize)]
struct Verified {
    signature: String,
    /// Whether each secret it was given, alone, verified the delivery.
    verified: Vec<bool>,
}

/// `standard_receiver.py` on 127.0.0.1:`port`, verifying with each of `secrets`.
struct PythonReceiver {
    child: Child,
    lines: Lines<String>,
}

impl PythonReceiver {
    /// `None` (after saying why) when Python or the library is missing and the test may skip.
    fn start(port: u16, secrets: &[&SigningSecret]) -> Option<Self> {
        let importable = Command::new("python3").args(["-c", "import standardwebhooks"]).status();
        if !importable.is_ok_and(|status| status.success()) {
            let why = "python3 with `standardwebhooks` is missing (scripts/python-test-deps.sh installs it)";
            assert!(!services_required(), "{why}");
            eprintln!("skipped: {why}");
            return None;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webhooks/standard_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .args(secrets.iter().map(|s| s.as_str()))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let (send, lines) = channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = lines.recv_timeout(Duration::from_secs(20)).expect("the receiver starts");
        assert_eq!(ready, format!("listening {port}"));
        Some(Self { child, lines })
    }

    /// The next delivery's verdict, dispatching rounds until one arrives (at most 20 s).
    async fn next(&self, dispatcher: &Dispatcher) -> Verified {
        for _ in 0..200 {
            dispatcher.dispatch_due().await.unwrap();
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                return serde_json::from_str(&line).expect("a JSON line");
            }
        }
        panic!("no delivery reached the Python receiver");
    }
}

impl Drop for PythonReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// During the overlap each delivery carries `v1,<new> v1,<old>`, and the reference library
/// accepts it with the new secret alone and with the old one alone; after a rotation with no
/// overlap only the newest secret signs, and the one before it no longer verifies.
async fn during_the_overlap_either_secret_alone_verifies_with_the_reference_library(backend: Backend) {
    let Some(store) = open_store(backend).await else { return };
    let keys = Arc::new(SecretKeys::ephemeral());
    let by = AuditContext::cli("test");
    let port = free_port();
    let old = new_secret();
    let webhook =
        endpoint(store.as_ref(), format!("http://127.0.0.1:{port}/hook"), |id| keys.seal(id, &old)).await;
    let rotated =
        rotate_secret(store.as_ref(), &keys, webhook.id, Duration::from_secs(3600), Timestamp::now(), &by)
            .await
            .unwrap();
    let new = rotated.secret;
    assert_ne!(new, old);
    let dispatcher = Dispatcher::new(store.store.clone(), settings(), keys.clone()).unwrap();

    let Some(python) = PythonReceiver::start(port, &[&new, &old]) else { return };
    one_event(store.as_ref()).await;
    let both = python.next(&dispatcher).await;
    assert_eq!(both.verified, [true, true], "each secret alone verifies: {both:?}");
    let signatures: Vec<&str> = both.signature.split(' ').collect();
    assert_eq!(signatures.len(), 2, "{both:?}");
    assert!(signatures.iter().all(|s| s.starts_with("v1,")), "{both:?}");
    drop(python);

    // A leaked secret is cut off at once: no overlap.
    let newest = rotate_secret(store.as_ref(), &keys, webhook.id, Duration::ZERO, Timestamp::now(), &by)
        .await
        .unwrap()
        .secret;
    let Some(python) = PythonReceiver::start(port, &[&newest, &new]) else { return };
    one_event(store.as_ref()).await;
    let single = python.next(&dispatcher).await;
    assert_eq!(single.verified, [true, false], "only the newest secret signs: {single:?}");
    assert_eq!(single.signature.split(' ').count(), 1, "{single:?}");
}

// ---------------------------------------------------------------------------------------------
// Sealing at rest and key rotation.

fn ring(keys: &[&SecretKey]) -> Arc<SecretKeys> {
    let copies = keys.iter().map(|k| SecretKey::parse(&k.encoded()).unwrap()).collect();
    Arc::new(SecretKeys::new(copies).unwrap())
}

/// Dispatches until every delivery of `webhook` has `status` (at most 20 s).
async fn settle(store: &dyn Store, dispatcher: &Dispatcher, webhook: &Webhook, status: DeliveryStatus) {
    for _ in 0..400 {
        dispatcher.dispatch_due().await.unwrap();
        let deliveries = store.deliveries(webhook.id, None, 100).await.unwrap();
        if !deliveries.is_empty() && deliveries.iter().all(|d| d.status == status) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the deliveries of {} never all became {status:?}", webhook.url);
}

/// The stored column, as the database holds it.
async fn stored_secret(store: &dyn Store, webhook: &Webhook) -> String {
    store.webhook(webhook.id).await.unwrap().unwrap().secret
}

async fn secrets_are_sealed_at_rest_and_stay_readable_across_a_key_rotation(backend: Backend) {
    let Some(store) = open_store(backend).await else { return };
    let (k1, k2) = (SecretKey::generate("k1").unwrap(), SecretKey::generate("k2").unwrap());
    let (legacy_secret, sealed_secret) = (new_secret(), new_secret());
    let (legacy_receiver, sealed_receiver) =
        (Receiver::start(legacy_secret.as_str()).await, Receiver::start(sealed_secret.as_str()).await);
    // A row written before sealing existed holds its secret in clear.
    let legacy = endpoint(store.as_ref(), legacy_receiver.url(), |_| legacy_secret.as_str().to_owned()).await;
    let sealed =
        endpoint(store.as_ref(), sealed_receiver.url(), |id| ring(&[&k1]).seal(id, &sealed_secret)).await;
    let secrets = [(&legacy, &legacy_secret), (&sealed, &sealed_secret)];

    // Start with k1: the row in clear is sealed, the other one was already.
    let done = reseal(store.as_ref(), &ring(&[&k1]), Timestamp::now()).await.unwrap();
    assert_eq!((done.resealed, done.unreadable), (1, 0));
    for (webhook, secret) in secrets {
        let column = stored_secret(store.as_ref(), webhook).await;
        assert!(column.starts_with("whenc1.k1."), "{column}");
        assert!(!column.contains(&secret.as_str()[6..]), "no secret in clear in the row");
    }

    // The key is rotated: k2 first, k1 kept to open. Deliveries are signed as before.
    let rotated = ring(&[&k2, &k1]);
    let dispatcher = Dispatcher::new(store.store.clone(), settings(), rotated.clone()).unwrap();
    one_event(store.as_ref()).await;
    for webhook in [&legacy, &sealed] {
        settle(store.as_ref(), &dispatcher, webhook, DeliveryStatus::Succeeded).await;
    }
    // Started with the rotated keys, every secret is sealed under k2.
    let done = reseal(store.as_ref(), &rotated, Timestamp::now()).await.unwrap();
    assert_eq!((done.resealed, done.unreadable), (2, 0));
    for (webhook, secret) in secrets {
        let column = stored_secret(store.as_ref(), webhook).await;
        assert!(column.starts_with("whenc1.k2.") && !column.contains(&secret.as_str()[6..]), "{column}");
    }
    assert_eq!(reseal(store.as_ref(), &rotated, Timestamp::now()).await.unwrap().resealed, 0, "nothing left");

    // k1 retired: k2 alone signs everything.
    let dispatcher = Dispatcher::new(store.store.clone(), settings(), ring(&[&k2])).unwrap();
    one_event(store.as_ref()).await;
    for webhook in [&legacy, &sealed] {
        settle(store.as_ref(), &dispatcher, webhook, DeliveryStatus::Succeeded).await;
    }
    for receiver in [&legacy_receiver, &sealed_receiver] {
        let received = receiver.received();
        assert_eq!(received.len(), 2, "one delivery per event");
        assert!(received.iter().all(|r| r.signature_valid), "{received:#?}");
    }

    // With only the retired key nothing can be signed; the error names the key, not a secret.
    let dispatcher = Dispatcher::new(store.store.clone(), settings(), ring(&[&k1])).unwrap();
    one_event(store.as_ref()).await;
    dispatcher.dispatch_due().await.unwrap();
    let failed = store.deliveries(sealed.id, None, 1).await.unwrap().remove(0);
    let error = failed.last_error.unwrap_or_default();
    assert!(error.contains("\"k2\", which is not configured"), "{error}");
    assert!(!error.contains(&sealed_secret.as_str()[6..]));
    assert_eq!(sealed_receiver.received().len(), 2, "nothing unsigned was sent");
}
