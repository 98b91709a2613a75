//! The webhook engine against the real store and a real HTTP receiver (axum on 127.0.0.1, so
//! the dispatcher runs with `allow_private_networks`): signed deliveries that an independent
//! verifier — written here from the Standard Webhooks spec, not our `verify` — accepts; every
//! event delivered once per delivery id through an outage; dead deliveries and redelivery;
//! subscriptions by event type; the SSRF guard; and the signature's known vectors.

#[path = "webhooks/receiver.rs"]
mod receiver;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::HeaderMap;
use coffer_events::{
    Consumer, Dispatcher, GuardedResolver, Handler, Lookup, LookupFuture, OutboxSource, RetryPolicy,
    SecretKeys, SignatureHeaders, SigningSecret, TargetPolicy, UrlError, VerifyError, WEBHOOKS_CONSUMER,
    WebhookFanout, WebhookSettings, new_secret, ranges, sign, validate_url, verify,
};
use coffer_ledger::{
    AccountFlags, AccountId, Amount, Command, LedgerCode, NewAccount, NewLedger, NewTransfer, Scale,
    Submission, Timestamp, TraceParent, TransferId,
};
use coffer_store::{Delivery, DeliveryStatus, OutboxEvent, Store, StoreConfig, Webhook};
use coffer_testkit::{Backend, TestStore};
use receiver::{Mode, Receiver, spec_verify};
use tokio::net::TcpListener;
use uuid::Uuid;

coffer_testkit::on_each_backend! {
    #![tokio::test(flavor = "multi_thread", worker_threads = 2)]
    every_event_reaches_a_verifying_receiver_signed_and_intact,
    an_endpoint_that_was_down_gets_every_event_once_per_delivery_after_it_returns,
    a_delivery_dies_after_its_last_attempt_and_redelivery_sends_it_again,
    endpoints_get_only_the_event_types_they_subscribed_to,
    a_private_endpoint_is_never_contacted_without_the_flag,
    a_name_that_resolves_to_this_machine_is_never_contacted,
}

const ACCOUNT_CREATED: &str = "coffer.account.created";
const TRANSFER_CREATED: &str = "coffer.transfer.created";

// ---------------------------------------------------------------------------------------------
// The store side: events from real submissions, endpoints, and waiting for deliveries.

async fn open_store(backend: Backend) -> Option<TestStore> {
    TestStore::open(backend, StoreConfig::default()).await
}

/// The trace the workload is sent in.
const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Two accounts and `transfers` transfers between them, sent in [`TRACE`]; answers the outbox's
/// events.
async fn workload(store: &dyn Store, transfers: usize) -> Vec<OutboxEvent> {
    let usd = LedgerCode::try_from("USD").unwrap();
    let (a, b) = (AccountId::generate(), AccountId::generate());
    let mut commands =
        vec![Command::CreateLedger(NewLedger { code: usd, scale: Scale::try_from(2).unwrap() })];
    for id in [a, b] {
        let (flags, external_ref, metadata) = (AccountFlags::default(), None, None);
        commands.push(Command::CreateAccount(NewAccount {
            id,
            ledger: usd,
            code: 1,
            flags,
            external_ref,
            metadata,
        }));
    }
    for i in 0..transfers {
        commands.push(Command::CreateTransfer(NewTransfer {
            id: TransferId(Uuid::new_v4()),
            debit_account_id: a,
            credit_account_id: b,
            amount: Amount::try_from(i as u64 + 1).unwrap(),
            ledger: usd,
            code: 1,
            pending: None,
            external_ref: None,
            metadata: None,
        }));
    }
    let trace = TraceParent::try_from(TRACE).unwrap();
    store.submit(Submission::new(commands, true).traced(Some(trace))).await.unwrap();
    let events = store.events_after(0, 10_000).await.unwrap();
    assert_eq!(events.len(), 2 + transfers, "two accounts created and the transfers");
    events
}

/// The keys this test binary seals secrets with, shared by the endpoints and the dispatchers.
fn keys() -> Arc<SecretKeys> {
    static KEYS: OnceLock<Arc<SecretKeys>> = OnceLock::new();
    KEYS.get_or_init(|| Arc::new(SecretKeys::ephemeral())).clone()
}

fn dispatcher(store: &TestStore, settings: WebhookSettings) -> Dispatcher {
    Dispatcher::new(store.store.clone(), settings, keys()).unwrap()
}

async fn endpoint(store: &dyn Store, url: String, types: &[&str], secret: &SigningSecret) -> Webhook {
    let id = Uuid::new_v4();
    let webhook = Webhook {
        id,
        url,
        event_types: types.iter().map(|t| t.to_string()).collect(),
        secret: keys().seal(id, secret),
        previous_secret: None,
        previous_secret_expires_at: None,
        created_at: Timestamp::now(),
    };
    store.create_webhook(webhook.clone()).await.unwrap();
    webhook
}

/// Fast settings for tests: short timeouts and backoff, loopback and plain http allowed.
fn test_settings(max_attempts: u32) -> WebhookSettings {
    WebhookSettings {
        allow_private_networks: true,
        allow_insecure_http: true,
        request_timeout: Duration::from_secs(2),
        retry: RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(40),
            max_backoff: Duration::from_millis(160),
        },
        claim: Duration::from_secs(10),
        concurrency: 8,
        batch: 32,
        poll_interval: Duration::from_millis(20),
    }
}

async fn deliveries(store: &dyn Store, webhook: &Webhook) -> Vec<Delivery> {
    store.deliveries(webhook.id, None, 1000).await.unwrap()
}

/// Waits (at most 30 s) until every delivery of `webhook` has `status`.
async fn all_reach(
    store: &dyn Store,
    webhook: &Webhook,
    status: DeliveryStatus,
    expected: usize,
) -> Vec<Delivery> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = deliveries(store, webhook).await;
        if now.len() == expected && now.iter().all(|d| d.status == status) {
            return now;
        }
        assert!(tokio::time::Instant::now() < deadline, "deliveries never all {status:?}: {now:#?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Rounds of the dispatcher until `done` holds (at most 30 s).
async fn dispatch_until(dispatcher: &Dispatcher, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "the dispatcher never got there");
        dispatcher.dispatch_due().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids_of_type(events: &[OutboxEvent], kind: &str) -> BTreeSet<String> {
    events.iter().filter(|e| e.kind == kind).map(|e| e.id.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// (a)–(d): deliveries end to end.

/// The whole pipeline as a server wires it: the outbox consumer runs the fan-out, the
/// dispatcher posts; a receiver that checks every signature on its own accepts them all.
async fn every_event_reaches_a_verifying_receiver_signed_and_intact(backend: Backend) {
    let Some(store) = open_store(backend).await else { return };
    let events = workload(store.as_ref(), 40).await;
    let secret = new_secret();
    let receiver = Receiver::start(secret.as_str()).await;
    let webhook =
        endpoint(store.as_ref(), receiver.url(), &[ACCOUNT_CREATED, TRANSFER_CREATED], &secret).await;

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let source =
        OutboxSource::open(store.store.clone(), WEBHOOKS_CONSUMER, Vec::new(), Duration::from_millis(20))
            .await
            .unwrap();
    let fanout = WebhookFanout::new(store.store.clone());
    let consumer = Consumer::new(WEBHOOKS_CONSUMER, source, fanout, RetryPolicy::default());
    let dispatcher = dispatcher(&store, test_settings(5));
    let tasks = [tokio::spawn(consumer.run(stop.clone())), tokio::spawn(dispatcher.run(stop))];

    let delivered = all_reach(store.as_ref(), &webhook, DeliveryStatus::Succeeded, events.len()).await;
    stop_tx.send(true).unwrap();
    for task in tasks {
        task.await.unwrap();
    }

    let received = receiver.received();
    assert!(received.iter().all(|r| r.signature_valid), "every signature verifies: {received:#?}");
    assert_eq!(received.len(), events.len(), "one request per event, none retried");
    let event_of: HashMap<String, &OutboxEvent> = events.iter().map(|e| (e.id.to_string(), e)).collect();
    let delivery_of: HashMap<String, &Delivery> = delivered.iter().map(|d| (d.id.to_string(), d)).collect();
    for request in &received {
        let event = event_of[&request.event_id];
        assert_eq!(request.body, coffer_events::encode(event).unwrap(), "the body is the CloudEvent");
        assert_eq!(request.content_type, "application/json");
        let trace = event.traceparent.as_ref().map_or("", |trace| trace.as_str());
        assert_eq!(
            (request.traceparent.as_str(), trace),
            (TRACE, TRACE),
            "the event's trace, as a header too"
        );
        assert_eq!(delivery_of[&request.delivery_id].event_id, event.id, "webhook-id names its delivery");
        assert_eq!(request.event_type, event.kind);
    }
    let ids: BTreeSet<String> = received.iter().map(|r| r.event_id.clone()).collect();
    assert_eq!(ids, events.iter().map(|e| e.id.to_string()).collect());
    assert!(delivered.iter().all(|d| d.attempts == 1 && d.last_status_code == Some(200)));
}

/// An endpoint that is down — connections refused, then 503s — gets every event once it is
/// back, and accepts each delivery id exactly once.
async fn an_endpoint_that_was_down_gets_every_event_once_per_delivery_after_it_returns(backend: Backend) {
    let Some(store) = open_store(backend).await else { return };
    let events = workload(store.as_ref(), 20).await;
    let secret = new_secret();
    // A port that nothing listens on (yet): connections are refused.
    let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let webhook = endpoint(
        store.as_ref(),
        format!("http://{addr}/hook"),
        &[ACCOUNT_CREATED, TRANSFER_CREATED],
        &secret,
    )
    .await;
    WebhookFanout::new(store.store.clone()).handle(&events).await.unwrap();
    let dispatcher = dispatcher(&store, test_settings(100));

    dispatch_until(&dispatcher, async || {
        deliveries(store.as_ref(), &webhook).await.iter().all(|d| d.attempts >= 2)
    })
    .await;
    let refused = deliveries(store.as_ref(), &webhook).await;
    assert!(refused.iter().all(|d| d.status == DeliveryStatus::Pending && d.last_status_code.is_none()));
    assert!(refused[0].last_error.is_some(), "the connection error is recorded");

    let receiver = Receiver::start_on(addr, secret.as_str()).await;
    receiver.set_mode(Mode::Answer(503));
    dispatch_until(&dispatcher, async || receiver.received().len() >= 2 * events.len()).await;
    assert!(receiver.accepted().is_empty());
    let unavailable = deliveries(store.as_ref(), &webhook).await;
    assert!(
        unavailable.iter().all(|d| d.status == DeliveryStatus::Pending && d.last_status_code == Some(503))
    );

    receiver.set_mode(Mode::Accept);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(dispatcher.run(stop));
    all_reach(store.as_ref(), &webhook, DeliveryStatus::Succeeded, events.len()).await;
    // Rounds after the last success post nothing more.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send(true).unwrap();
    running.await.unwrap();

    let accepted = receiver.accepted();
    let mut per_delivery: HashMap<String, usize> = HashMap::new();
    for request in &accepted {
        *per_delivery.entry(request.delivery_id.clone()).or_default() += 1;
    }
    assert_eq!(per_delivery.len(), events.len(), "one delivery id per event");
    assert!(per_delivery.values().all(|&n| n == 1), "each delivery accepted once: {per_delivery:?}");
    let ids: BTreeSet<String> = accepted.iter().map(|r| r.event_id.clone()).collect();
    assert_eq!(ids, events.iter().map(|e| e.id.to_string()).collect());
}

/// After its last attempt a delivery is dead and left alone; a redelivery sends it again.
async fn a_delivery_dies_after_its_last_attempt_and_redelivery_sends_it_again(backend: Backend) {
    let Some(store) = open_store(backend).await else { return };
    let events = workload(store.as_ref(), 0).await;
    let secret = new_secret();
    let receiver = Receiver::start(secret.as_str()).await;
    receiver.set_mode(Mode::Answer(500));
    let webhook = endpoint(store.as_ref(), receiver.url(), &[ACCOUNT_CREATED], &secret).await;
    WebhookFanout::new(store.store.clone()).handle(&events[..1]).await.unwrap();
    let dispatcher = dispatcher(&store, test_settings(3));

    dispatch_until(&dispatcher, async || {
        deliveries(store.as_ref(), &webhook).await[0].status == DeliveryStatus::Dead
    })
    .await;
    let dead = deliveries(store.as_ref(), &webhook).await.remove(0);
    assert_eq!((dead.attempts, dead.last_status_code), (3, Some(500)));
    assert!(dead.last_error.as_deref().is_some_and(|e| e.contains("500")), "{dead:?}");

    receiver.set_mode(Mode::Accept);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(dispatcher.dispatch_due().await.unwrap(), 0, "a dead delivery is not retried");
    }
    assert_eq!(receiver.received().len(), 3);
    assert!(receiver.received().iter().all(|r| r.delivery_id == dead.id.to_string()));

    assert!(store.redeliver(dead.id, Timestamp::now()).await.unwrap());
    dispatch_until(&dispatcher, async || {
        store.delivery(dead.id).await.unwrap().unwrap().status == DeliveryStatus::Succeeded
    })
    .await;
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].delivery_id, dead.id.to_string(), "the same webhook-id as before");
    assert!(!store.redeliver(Uuid::new_v4(), Timestamp::now()).await.unwrap());
}

/// Each endpoint gets the types it subscribed to and nothing else; an event handled twice
/// makes no second delivery.
async fn endpoints_get_only_the_event_types_they_subscribed_to(backend: Backend) {
    let Some(store) = open_store(backend).await else { return };
    let events = workload(store.as_ref(), 10).await;
    let secret = new_secret();
    let (accounts, transfers) =
        (Receiver::start(secret.as_str()).await, Receiver::start(secret.as_str()).await);
    let accounts_hook = endpoint(store.as_ref(), accounts.url(), &[ACCOUNT_CREATED], &secret).await;
    let transfers_hook = endpoint(store.as_ref(), transfers.url(), &[TRANSFER_CREATED], &secret).await;
    let fanout = WebhookFanout::new(store.store.clone());
    fanout.handle(&events).await.unwrap();
    fanout.handle(&events[..5]).await.unwrap();

    let dispatcher = dispatcher(&store, test_settings(5));
    let expected_accounts = ids_of_type(&events, ACCOUNT_CREATED);
    let expected_transfers = ids_of_type(&events, TRANSFER_CREATED);
    dispatch_until(&dispatcher, async || {
        accounts.accepted().len() >= expected_accounts.len()
            && transfers.accepted().len() >= expected_transfers.len()
    })
    .await;
    dispatcher.dispatch_due().await.unwrap();

    let got = |r: &Receiver| r.received().iter().map(|r| r.event_id.clone()).collect::<Vec<_>>();
    assert_eq!(got(&accounts).len(), expected_accounts.len(), "no duplicates, nothing else");
    assert_eq!(got(&accounts).into_iter().collect::<BTreeSet<_>>(), expected_accounts);
    assert_eq!(got(&transfers).len(), expected_transfers.len(), "no duplicates, nothing else");
    assert_eq!(got(&transfers).into_iter().collect::<BTreeSet<_>>(), expected_transfers);
    assert_eq!(deliveries(store.as_ref(), &accounts_hook).await.len(), expected_accounts.len());
    assert_eq!(deliveries(store.as_ref(), &transfers_hook).await.len(), expected_transfers.len());
}

/// Without `allow_private_networks` the dispatcher never connects to a loopback endpoint: the
/// attempt fails, naming why, and the receiver hears nothing.
async fn a_private_endpoint_is_never_contacted_without_the_flag(backend: Backend) {
    let Some(store) = open_store(backend).await else { return };
    let events = workload(store.as_ref(), 0).await;
    let secret = new_secret();
    let receiver = Receiver::start(secret.as_str()).await;
    let webhook = endpoint(store.as_ref(), receiver.url(), &[ACCOUNT_CREATED], &secret).await;
    WebhookFanout::new(store.store.clone()).handle(&events).await.unwrap();
    let settings = WebhookSettings { allow_private_networks: false, ..test_settings(5) };
    let dispatcher = dispatcher(&store, settings);

    assert_eq!(dispatcher.dispatch_due().await.unwrap(), 2);
    for delivery in deliveries(store.as_ref(), &webhook).await {
        assert_eq!((delivery.status, delivery.attempts), (DeliveryStatus::Pending, 1));
        let error = delivery.last_error.unwrap_or_default();
        assert!(error.contains("loopback"), "{error}");
    }
    assert!(receiver.received().is_empty());
}

/// A table of names and their addresses: what a DNS server would answer, without one. Names
/// not in it do not resolve (they end in `.invalid`, which no resolver answers, RFC 6761).
struct Hosts(HashMap<String, Vec<IpAddr>>);

impl Lookup for Hosts {
    fn lookup(&self, host: &str) -> LookupFuture {
        let found = self.0.get(host).cloned();
        Box::pin(async move {
            found.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such test host"))
        })
    }
}

/// A name that resolves, at delivery time, into any special-purpose range is refused by the
/// resolver the webhook client uses — before any connection — naming the range. Every range
/// of the table is tried through the resolver alone, so that a guard that regressed still sends
/// nothing off this machine; the end-to-end test below posts for real, to on-host addresses.
#[tokio::test]
async fn a_name_resolving_into_any_special_range_is_refused_at_delivery() {
    let mut hosts = HashMap::new();
    let mut expected = Vec::new();
    for (i, range) in ranges().enumerate() {
        let name = format!("range-{i}.invalid");
        // The range's last address: not the network address, which a wider range may hold first.
        let addr = match range.network {
            IpAddr::V4(net) => {
                let host_bits = u32::MAX.checked_shr(u32::from(range.prefix_len)).unwrap_or(0);
                IpAddr::V4((u32::from(net) | host_bits).into())
            }
            IpAddr::V6(net) => {
                let host_bits = u128::MAX.checked_shr(u32::from(range.prefix_len)).unwrap_or(0);
                IpAddr::V6((u128::from(net) | host_bits).into())
            }
        };
        hosts.insert(name.clone(), vec![addr]);
        expected.push((name, addr));
    }
    // One private answer among public ones spoils the name.
    hosts.insert("mixed.invalid".into(), vec!["8.8.8.8".parse().unwrap(), "10.1.2.3".parse().unwrap()]);
    expected.push(("mixed.invalid".into(), "10.1.2.3".parse().unwrap()));
    hosts.insert(
        "public.invalid".into(),
        vec!["8.8.8.8".parse().unwrap(), "2606:4700::1111".parse().unwrap()],
    );
    let resolver = GuardedResolver::new(false, Arc::new(Hosts(hosts)));

    for (name, addr) in expected {
        let refused = resolver.resolve_host(&name).await.expect_err(&name);
        assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied, "{name}: {refused}");
        let range = coffer_events::special_range(addr).unwrap();
        assert!(refused.to_string().contains(&range.to_string()), "{name} ({addr}): {refused}");
    }
    let public = resolver.resolve_host("public.invalid").await.unwrap();
    assert_eq!(public.len(), 2, "public addresses pass");
}

/// End to end: names that resolve (through the dispatcher's injectable lookup) to this
/// machine's own special-purpose addresses — loopback, "this network", IPv4-mapped loopback —
/// are refused at delivery though the receiver is listening there and the URL passed when it
/// was registered. The receiver hears nothing; each attempt's error names the range.
async fn a_name_that_resolves_to_this_machine_is_never_contacted(backend: Backend) {
    let Some(store) = open_store(backend).await else { return };
    let secret = new_secret();
    let receiver = Receiver::start(secret.as_str()).await;
    let port = receiver.url().rsplit(':').next().unwrap().split('/').next().unwrap().to_owned();
    let on_host: [(&str, &str, &str); 4] = [
        ("loopback.invalid", "127.0.0.1", "loopback (127.0.0.0/8)"),
        ("loopback-2.invalid", "127.0.0.2", "loopback (127.0.0.0/8)"),
        ("this-network.invalid", "0.0.0.0", "\"this network\" (0.0.0.0/8)"),
        ("mapped.invalid", "::ffff:127.0.0.1", "IPv4-mapped (::ffff:0.0.0.0/96)"),
    ];
    let hosts = on_host.iter().map(|(name, ip, _)| (name.to_string(), vec![ip.parse().unwrap()])).collect();
    let mut endpoints = Vec::new();
    for (name, _, range) in on_host {
        let url = format!("http://{name}:{port}/hook");
        let policy = TargetPolicy { allow_private_networks: false, allow_insecure_http: true };
        assert!(validate_url(&url, policy).is_ok(), "a name passes registration: {url}");
        endpoints.push((endpoint(store.as_ref(), url, &[ACCOUNT_CREATED], &secret).await, range));
    }
    let events = workload(store.as_ref(), 0).await;
    WebhookFanout::new(store.store.clone()).handle(&events[..1]).await.unwrap();
    let settings = WebhookSettings { allow_private_networks: false, ..test_settings(5) };
    let dispatcher =
        Dispatcher::with_lookup(store.store.clone(), settings, keys(), Arc::new(Hosts(hosts))).unwrap();

    assert_eq!(dispatcher.dispatch_due().await.unwrap(), on_host.len());
    for (webhook, range) in &endpoints {
        let delivery = deliveries(store.as_ref(), webhook).await.remove(0);
        assert_eq!((delivery.status, delivery.attempts), (DeliveryStatus::Pending, 1));
        let error = delivery.last_error.unwrap_or_default();
        assert!(error.contains(range), "{}: {error}", webhook.url);
    }
    assert!(receiver.received().is_empty(), "nothing reached the receiver");
}

// ---------------------------------------------------------------------------------------------
// (e) URL validation.

/// The default: https to globally routable addresses only.
const STRICT: TargetPolicy = TargetPolicy { allow_private_networks: false, allow_insecure_http: false };
/// Plain http allowed, special addresses not.
const HTTP: TargetPolicy = TargetPolicy { allow_private_networks: false, allow_insecure_http: true };
/// Everything a test setup allows.
const OPEN: TargetPolicy = TargetPolicy { allow_private_networks: true, allow_insecure_http: true };

#[test]
fn public_https_urls_are_accepted_and_http_only_where_allowed() {
    for url in
        ["https://example.com/hooks/coffer", "https://hooks.example.org:8080/x?token=1", "https://8.8.8.8/"]
    {
        assert!(validate_url(url, STRICT).is_ok(), "{url}");
    }
    let http = "http://hooks.example.org:8080/x?token=1";
    assert_eq!(validate_url(http, STRICT), Err(UrlError::InsecureHttp));
    assert_eq!(
        validate_url(http, TargetPolicy { allow_private_networks: true, ..STRICT }),
        Err(UrlError::InsecureHttp)
    );
    assert!(validate_url(http, HTTP).is_ok());
}

#[test]
fn other_schemes_credentials_and_missing_hosts_are_refused() {
    for (url, scheme) in
        [("ftp://example.com/", "ftp"), ("file:///etc/passwd", "file"), ("javascript:alert(1)", "javascript")]
    {
        assert_eq!(validate_url(url, OPEN), Err(UrlError::Scheme(scheme.into())), "{url}");
    }
    for url in ["https://user:pass@example.com/", "https://user@example.com/", "https://:pass@example.com/"] {
        assert_eq!(validate_url(url, OPEN), Err(UrlError::Credentials), "{url}");
    }
    for url in ["https://", "http://:80/"] {
        assert_eq!(validate_url(url, OPEN), Err(UrlError::NoHost), "{url}");
    }
    assert!(matches!(validate_url("not a url", OPEN), Err(UrlError::Unparsable(_))));
}

#[test]
fn inside_addresses_are_refused_unless_private_networks_are_allowed() {
    for url in [
        "http://127.0.0.1:8080/",
        "http://localhost/",
        "http://api.LOCALHOST./",
        "http://0x7f000001/",
        "http://2130706433/",
        "http://0.0.0.0/",
        "http://10.0.0.1/",
        "http://172.20.1.1/",
        "http://192.168.1.10/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://255.255.255.255/",
        "http://224.0.0.251/",
        "http://[::1]/",
        "http://[::]/",
        "http://[fd00::1]/",
        "http://[fe80::1]/",
        "http://[ff02::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[::ffff:10.1.2.3]/",
        "http://[::ffff:1.1.1.1]/",
        "http://[64:ff9b::8.8.8.8]/",
        "http://192.0.2.1/",
        "http://198.18.0.1/",
        "http://240.0.0.1/",
        "http://[2001:db8::1]/",
        "http://[2002:c000:204::1]/",
        "http://[fec0::1]/",
        "http://[5f00::1]/",
    ] {
        assert!(matches!(validate_url(url, HTTP), Err(UrlError::NotPublic { .. })), "{url}");
        assert!(validate_url(url, OPEN).is_ok(), "{url} with private networks allowed");
    }
}

#[test]
fn the_refusal_names_the_host_and_the_kind_of_address() {
    let error = validate_url("https://[::ffff:192.168.0.1]/", STRICT).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the URL's host [::ffff:c0a8:1] is in a special-purpose range, IPv4-mapped (::ffff:0.0.0.0/96); \
         webhooks go only to globally routable addresses"
    );
    let error = validate_url("https://192.168.7.7/", STRICT).unwrap_err();
    assert!(error.to_string().contains("private-use (RFC 1918) (192.168.0.0/16)"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// (f) Signatures.

/// The spec's own example (secret, id, timestamp, body and signature), checked with Python's
/// `hmac` module too.
const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SPEC_TIMESTAMP: i64 = 1_614_265_330;
const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

fn headers<'a>(id: &'a str, timestamp: &'a str, signature: &'a str) -> SignatureHeaders<'a> {
    SignatureHeaders { id, timestamp, signature }
}

#[test]
fn signatures_match_independently_computed_vectors() {
    let spec = SigningSecret::parse(SPEC_SECRET).unwrap();
    assert_eq!(sign(&spec, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY.as_bytes()), SPEC_SIGNATURE);

    // Computed on this machine with Python 3.11:
    //   key = bytes(range(32)); secret = "whsec_" + base64.b64encode(key).decode()
    //   "v1," + base64.b64encode(hmac.new(key, f"{id}.{ts}.".encode() + body, hashlib.sha256).digest())
    let secret = SigningSecret::parse("whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    let body = br#"{"specversion":"1.0","id":"0190b6a2-7c4e-7000-8000-000000000001","type":"coffer.account.created"}"#;
    assert_eq!(
        sign(&secret, "0190b6a2-7c4e-7000-8000-00000000beef", 1_767_225_600, body),
        "v1,vS2QIPl1fttxrseaNrEWZJ39I3yoQpVwBUUQ6qY+1aM="
    );
}

#[test]
fn a_signed_delivery_verifies_and_any_change_breaks_it() {
    let secret = new_secret();
    let (id, now, body) = ("7b0e2c52-9d0a-4d43-8a8e-2f6c1b9b7c11", 1_767_225_600, br#"{"a":1}"#.as_slice());
    let signature = sign(&secret, id, now, body);
    let timestamp = now.to_string();
    let tolerance = Duration::from_secs(300);
    assert_eq!(verify(&secret, headers(id, &timestamp, &signature), body, now + 299, tolerance), Ok(()));
    assert_eq!(
        verify(&secret, headers(id, &timestamp, &signature), br#"{"a":2}"#, now, tolerance),
        Err(VerifyError::NoMatch)
    );
    assert_eq!(
        verify(&secret, headers("other", &timestamp, &signature), body, now, tolerance),
        Err(VerifyError::NoMatch)
    );
    assert_eq!(
        verify(&new_secret(), headers(id, &timestamp, &signature), body, now, tolerance),
        Err(VerifyError::NoMatch)
    );
    let later = (now + 1).to_string();
    assert_eq!(
        verify(&secret, headers(id, &later, &signature), body, now, tolerance),
        Err(VerifyError::NoMatch)
    );
    assert_eq!(
        verify(&secret, headers(id, &timestamp, &signature), body, now + 301, tolerance),
        Err(VerifyError::OutsideTolerance(301))
    );
    assert_eq!(
        verify(&secret, headers(id, "yesterday", &signature), body, now, tolerance),
        Err(VerifyError::BadTimestamp)
    );
}

#[test]
fn verification_takes_a_list_of_signatures_and_only_v1() {
    let spec = SigningSecret::parse(SPEC_SECRET).unwrap();
    let timestamp = SPEC_TIMESTAMP.to_string();
    let body = SPEC_BODY.as_bytes();
    let tolerance = Duration::from_secs(300);
    let rotated = format!("v1,Zm9yZ2VkIHNpZ25hdHVyZSBvZiAzMiBieXRlcyEhISE= {SPEC_SIGNATURE} v1a,abc");
    assert_eq!(
        verify(&spec, headers(SPEC_ID, &timestamp, &rotated), body, SPEC_TIMESTAMP, tolerance),
        Ok(())
    );
    let wrong_version = SPEC_SIGNATURE.replacen("v1,", "v2,", 1);
    assert_eq!(
        verify(&spec, headers(SPEC_ID, &timestamp, &wrong_version), body, SPEC_TIMESTAMP, tolerance),
        Err(VerifyError::NoMatch)
    );
    // The independent verifier of the receiver agrees with `sign` on the spec's example.
    let mut map = HeaderMap::new();
    map.insert("webhook-id", SPEC_ID.parse().unwrap());
    map.insert("webhook-timestamp", timestamp.parse().unwrap());
    map.insert("webhook-signature", sign(&spec, SPEC_ID, SPEC_TIMESTAMP, body).parse().unwrap());
    assert!(spec_verify(SPEC_SECRET, &map, body, SPEC_TIMESTAMP));
    assert!(!spec_verify(SPEC_SECRET, &map, b"{}", SPEC_TIMESTAMP));
}
