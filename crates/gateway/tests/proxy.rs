//! The gateway in process, in front of fake upstreams on random ports: what reaches an upstream,
//! what is retried and what is not, bodies too big to hold, and the drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use coffer_gateway::{
    AdminToken, Gateway, GatewayConfig, KeyDirectory, Limits, Resolve, UpstreamUrl, Upstreams, tls,
};
use coffer_store::{KeyAdmin, KeyId, NewApiKey, Scope, SqliteStore, StoreConfig, TokenHash};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An upstream that answers every request with what it received, and counts them.
async fn echo(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    echo_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), delay)
}

/// The same, on a listener already bound.
fn echo_on(listener: TcpListener, delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let (app, count) = echo_app(delay);
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, count)
}

/// The same over TLS only, with `certified`'s certificate.
async fn echo_tls(certified: &Certified) -> (SocketAddr, Arc<AtomicUsize>) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let certificate = tls::ServingCertificate::load(&certified.cert_path, &certified.key_path).unwrap();
    let listener = tls::TlsListener::new(tcp, certificate, Duration::from_secs(5)).unwrap();
    let (app, count) = echo_app(Duration::ZERO);
    let addr = axum::serve::Listener::local_addr(&listener).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, count)
}

/// Answers every request with what it received, and counts them.
fn echo_app(delay: Duration) -> (Router, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let app = Router::new().route("/readyz", axum::routing::get(|| async { "ready" })).fallback(
        move |request: Request| {
            let count = counted.clone();
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                let (parts, body) = request.into_parts();
                let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let headers: serde_json::Map<String, Value> = parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("?"))))
                    .collect();
                axum::Json(json!({
                    "method": parts.method.as_str(),
                    "path": parts.uri.path(),
                    "query": parts.uri.query(),
                    "headers": headers,
                    "body_len": body.len(),
                    "body": String::from_utf8_lossy(&body),
                }))
            }
        },
    );
    (app, count)
}

/// An upstream that passes its health checks but reads every other request and then drops the
/// connection without answering: the request reached it, the outcome is unknown.
async fn dropper() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let count = counted.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                if buf[..n].starts_with(b"GET /readyz") {
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                    let _ = socket.write_all(ok).await;
                } else if n > 0 {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, count)
}

/// A port nothing listens on.
fn dead_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The admin listener's token in these tests.
const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdefghij";

struct Running {
    base: String,
    admin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(upstreams: &[SocketAddr], tune: impl FnOnce(&mut GatewayConfig)) -> Running {
        Self::start_with_keys(upstreams, tune, None).await
    }

    /// The same, checking tokens against `keys` at the edge.
    async fn start_with_keys(
        upstreams: &[SocketAddr],
        tune: impl FnOnce(&mut GatewayConfig),
        keys: Option<Arc<dyn KeyDirectory>>,
    ) -> Running {
        let urls = upstreams.iter().map(|a| UpstreamUrl::try_from(format!("http://{a}")).unwrap()).collect();
        Self::launch(urls, tune, keys, None).await
    }

    async fn launch(
        urls: Vec<UpstreamUrl>,
        tune: impl FnOnce(&mut GatewayConfig),
        keys: Option<Arc<dyn KeyDirectory>>,
        resolve: Option<Resolve>,
    ) -> Running {
        let mut config = GatewayConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: Some("127.0.0.1:0".parse().unwrap()),
            admin_token: Some(AdminToken::try_from(ADMIN_TOKEN.to_owned()).unwrap()),
            upstreams: Upstreams(urls),
            ..GatewayConfig::default()
        };
        tune(&mut config);
        let config_tls = config.tls_cert_path.is_some();
        let mut gateway =
            Gateway::bind_with(config, Limits::local(), keys).await.expect("the gateway starts");
        if let Some(resolve) = resolve {
            gateway = gateway.resolve_with(resolve);
        }
        let scheme = if config_tls { "https" } else { "http" };
        let base = format!("{scheme}://{}", gateway.local_addr());
        let admin = format!("http://{}", gateway.admin_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            gateway.serve(async { stopped.await.unwrap_or(()) }).await.expect("the gateway serves");
        });
        Running { base, admin, stop: Some(stop), done }
    }

    async fn upstreams(&self) -> Vec<Value> {
        self.admin_get("/gateway/upstreams").await.json::<Vec<Value>>().await.unwrap()
    }

    /// `GET` of an admin endpoint, with the admin token.
    async fn admin_get(&self, path: &str) -> reqwest::Response {
        client().get(format!("{}{path}", self.admin)).bearer_auth(ADMIN_TOKEN).send().await.unwrap()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn requests_pass_through_with_ids_and_without_hop_by_hop_headers() {
    let (upstream, _) = echo(Duration::ZERO).await;
    let gateway = Running::start(&[upstream], |_| {}).await;
    let response = client()
        .post(format!("{}/v1/things/7?limit=3&cursor=a%20b", gateway.base))
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("authorization", "Bearer t")
        .body("{\"amount\": 5}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/v1/things/7");
    assert_eq!(seen["query"], "limit=3&cursor=a%20b");
    assert_eq!(seen["body"], "{\"amount\": 5}");
    let headers = &seen["headers"];
    assert_eq!(headers["x-request-id"], request_id.as_str(), "the id the client gets is the id passed on");
    assert_eq!(headers["authorization"], "Bearer t");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert!(headers.get("x-hop").is_none(), "a header named by Connection is hop-by-hop");
    let traceparent = headers["traceparent"].as_str().unwrap();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!((parts[0], parts[1].len(), parts[2].len(), parts[3]), ("00", 32, 16, "01"));

    // The client's own ids are passed on unchanged.
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = client()
        .get(format!("{}/v1/ledgers", gateway.base))
        .header("x-request-id", "client-chosen-1")
        .header("traceparent", given)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-chosen-1");
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["headers"]["traceparent"], given);
    assert_eq!(seen["headers"]["x-request-id"], "client-chosen-1");
}

#[tokio::test]
async fn an_upstream_down_at_start_is_routed_around_and_reported() {
    let (live, served) = echo(Duration::ZERO).await;
    let dead = dead_port();
    let started = Instant::now();
    let gateway = Running::start(&[dead, live], |_| {}).await;
    for i in 0..40 {
        let body = if i % 2 == 0 { "{\"amount\": 1}" } else { "{\"id\": \"x\"}" };
        let response =
            client().post(format!("{}/v1/transfers", gateway.base)).body(body).send().await.unwrap();
        assert_eq!(response.status(), 200, "request {i}");
    }
    assert_eq!(served.load(Ordering::SeqCst), 40, "a refused connection sent nothing: no duplicates");
    loop {
        let upstreams = gateway.upstreams().await;
        if upstreams[0]["healthy"] == false {
            assert_eq!(upstreams[1]["healthy"], true);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the dead upstream is still healthy: {upstreams:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = gateway.admin_get("/gateway/metrics").await.text().await.unwrap();
    let gauge = format!("coffer_gateway_upstream_healthy{{upstream=\"http://{dead}\"}} 0");
    assert!(metrics.contains(&gauge), "{metrics}");
    // Every request is counted by its status, and timed. The recorder is the process's, which
    // other tests of this file may share (`cargo test` runs them as threads of one process): at
    // least this test's 40.
    let value = |series: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("no {series}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("coffer_gateway_requests_total{status=\"200\"} ") >= 40.0, "{metrics}");
    assert!(value("coffer_gateway_request_duration_seconds_count ") >= 40.0, "{metrics}");
}

#[tokio::test]
async fn a_post_without_id_or_key_is_not_sent_again_after_it_reached_an_upstream() {
    let (a, count_a) = dropper().await;
    let (b, count_b) = dropper().await;
    let gateway = Running::start(&[a, b], |c| c.eject_after_failures = 1000).await;
    let sent = || count_a.load(Ordering::SeqCst) + count_b.load(Ordering::SeqCst);
    let post = |body: &'static str, key: Option<&'static str>| {
        let mut request = client().post(format!("{}/v1/transfers", gateway.base)).body(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send()
    };

    let response = post("{\"amount\": 1}", None).await.unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "bad_gateway");
    assert_eq!(problem["status"], 502);
    assert!(problem["detail"].as_str().unwrap().contains("may or may not"), "{problem}");
    assert_eq!(sent(), 1, "a non-idempotent request that reached an upstream is not repeated");

    let response =
        post("{\"id\": \"0190f7e2-0000-7000-8000-000000000001\", \"amount\": 1}", None).await.unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(sent(), 3, "with a client-chosen id it is retried, on the other upstream only");

    let response = post("{\"amount\": 1}", Some("key-1")).await.unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(sent(), 5, "with an Idempotency-Key it is retried");
}

#[tokio::test]
async fn a_body_too_big_to_hold_streams_through_and_survives_a_refused_connection() {
    let (live, served) = echo(Duration::ZERO).await;
    let dead = dead_port();
    // Checks far apart and no ejection: the dead upstream keeps being picked.
    let gateway = Running::start(&[dead, live], |c| {
        c.retry_body_limit_bytes = 16;
        c.check_interval_ms = 60_000;
        c.eject_after_failures = 1000;
    })
    .await;
    let big = "x".repeat(100_000);
    for i in 0..10 {
        let response =
            client().post(format!("{}/v1/transfers", gateway.base)).body(big.clone()).send().await.unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        let seen: Value = response.json().await.unwrap();
        assert_eq!(seen["body_len"], 100_000);
    }
    assert_eq!(served.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn no_healthy_upstream_is_a_503_problem() {
    let gateway = Running::start(&[dead_port(), dead_port()], |c| c.check_interval_ms = 50).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = client().get(format!("{}/v1/ledgers", gateway.base)).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], "unavailable");
    let ready = gateway.admin_get("/gateway/readyz").await;
    assert_eq!(ready.status(), 503);
}

#[tokio::test]
async fn a_drain_finishes_requests_in_flight_and_takes_no_new_ones() {
    let (slow, _) = echo(Duration::from_millis(600)).await;
    let mut gateway = Running::start(&[slow], |_| {}).await;
    let url = format!("{}/v1/ledgers", gateway.base);
    let in_flight = tokio::spawn(client().get(url.clone()).send());
    tokio::time::sleep(Duration::from_millis(150)).await;
    gateway.stop.take().unwrap().send(()).unwrap();
    let response = in_flight.await.unwrap().expect("the request in flight is answered");
    assert_eq!(response.status(), 200);
    let body: Bytes = response.bytes().await.unwrap();
    assert!(!body.is_empty());
    tokio::time::timeout(Duration::from_secs(5), &mut gateway.done).await.expect("drained").unwrap();
    assert!(client().get(url).send().await.is_err(), "a drained gateway takes no new connection");
}

/// An upstream that passes its checks and answers everything else 503 with a body of its own.
async fn overloaded() -> (SocketAddr, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let app = Router::new().route("/readyz", axum::routing::get(|| async { "ready" })).fallback(move || {
        let count = counted.clone();
        async move {
            count.fetch_add(1, Ordering::SeqCst);
            (http::StatusCode::SERVICE_UNAVAILABLE, "busy upstream")
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, count)
}

#[tokio::test]
async fn a_503_is_retried_elsewhere_once_per_upstream_then_passed_on_as_answered() {
    let (a, count_a) = overloaded().await;
    let (b, count_b) = overloaded().await;
    let gateway = Running::start(&[a, b], |c| c.eject_after_failures = 1000).await;
    let response = client().get(format!("{}/v1/ledgers", gateway.base)).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.text().await.unwrap(),
        "busy upstream",
        "the upstream's own answer, not the gateway's"
    );
    assert_eq!(count_a.load(Ordering::SeqCst) + count_b.load(Ordering::SeqCst), 2, "each upstream once");

    let response = client().post(format!("{}/v1/transfers", gateway.base)).body("{}").send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(count_a.load(Ordering::SeqCst) + count_b.load(Ordering::SeqCst), 3, "a POST without id: once");
}

#[tokio::test]
async fn load_beyond_the_concurrency_limit_is_shed_with_503_and_never_sent() {
    let (slow, seen) = echo(Duration::from_millis(500)).await;
    let gateway = Running::start(&[slow], |c| c.max_concurrent_requests = 2).await;
    let url = format!("{}/v1/ledgers", gateway.base);
    let requests: Vec<_> = (0..5).map(|_| tokio::spawn(client().get(url.clone()).send())).collect();
    let mut statuses = Vec::new();
    for request in requests {
        let response = request.await.unwrap().unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 503 {
            assert_eq!(response.headers()["retry-after"], "1");
            assert_eq!(response.json::<Value>().await.unwrap()["code"], "overloaded");
        }
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 503, 503, 503]);
    assert_eq!(seen.load(Ordering::SeqCst), 2, "the shed requests reached no upstream");
}

#[tokio::test]
async fn a_body_declared_too_large_is_413_and_sent_nowhere() {
    let (upstream, seen) = echo(Duration::ZERO).await;
    let gateway = Running::start(&[upstream], |c| c.max_body_bytes = 1024).await;
    let url = format!("{}/v1/transfers", gateway.base);
    let response = client().post(&url).body(vec![b'x'; 2048]).send().await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], "payload_too_large");
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    let response = client().post(&url).body(vec![b'x'; 1000]).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

/// Runs `attempt` until one run's requests fit within the limits' refill interval (a second,
/// at one a second), and answers that run's result. `attempt` measures from its first request
/// to its last answer: on a machine slow enough to span a refill, a spent burst is spent no
/// more, and that run proves nothing either way, so it is run again on a fresh gateway.
async fn within_a_refill<T, F: std::future::Future<Output = (T, Duration)>>(attempt: impl Fn() -> F) -> T {
    for _ in 0..5 {
        let (result, took) = attempt().await;
        if took < Duration::from_millis(900) {
            return result;
        }
    }
    panic!("five runs in a row spanned a refill of the limits");
}

/// What a request through the gateway got: its status, `retry-after` and problem `code`.
async fn outcome(response: reqwest::Response) -> (u16, Option<u64>, Option<String>) {
    let status = response.status().as_u16();
    let retry = response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, retry, body["code"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn a_key_or_an_address_over_its_rate_is_429_and_sent_nowhere() {
    let (upstream, seen) = echo(Duration::ZERO).await;
    let (answers, reached) = within_a_refill(|| async {
        let gateway = Running::start(&[upstream], |c| {
            (c.rate_limit_per_second, c.rate_limit_burst) = (rate(1), rate(1));
            (c.ip_rate_limit_per_second, c.ip_rate_limit_burst) = (rate(1), rate(3));
        })
        .await;
        let get =
            |token: &str| client().get(format!("{}/v1/ledgers", gateway.base)).bearer_auth(token).send();
        let before = seen.load(Ordering::SeqCst);
        let started = Instant::now();
        let mut answers = Vec::new();
        for token in ["key-a", "key-a", "key-b", "key-c"] {
            answers.push(outcome(get(token).await.unwrap()).await);
        }
        ((answers, seen.load(Ordering::SeqCst) - before), started.elapsed())
    })
    .await;
    assert_eq!(answers[0].0, 200);
    let (status, retry, code) = &answers[1];
    assert_eq!((*status, code.as_deref()), (429, Some("rate_limited")), "key-a's burst of 1 is spent");
    assert!(retry.is_some_and(|seconds| seconds >= 1), "{answers:?}");
    // Another key has its own allowance, until the address runs out of its own.
    assert_eq!(answers[2].0, 200);
    assert_eq!(answers[3].0, 429, "the address's burst of 3 is spent");
    assert_eq!(reached, 2, "limited requests reached no upstream");
}

#[tokio::test]
async fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    let (upstream, seen) = echo(Duration::ZERO).await;
    let forwarded = |base: String, chain: &'static str| async move {
        let response = client()
            .get(format!("{base}/v1/ledgers"))
            .bearer_auth("key-a")
            .header("x-forwarded-for", chain)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        (status, body["headers"]["x-forwarded-for"].as_str().map(str::to_owned))
    };

    // Nobody trusted: a client's own x-forwarded-for is dropped, and it cannot escape its
    // address limit by claiming other addresses.
    let open = within_a_refill(|| async {
        let open = Running::start(&[upstream], |c| {
            (c.ip_rate_limit_per_second, c.ip_rate_limit_burst) = (rate(1), rate(2))
        })
        .await;
        let started = Instant::now();
        let mut answers = Vec::new();
        for claimed in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
            answers.push(forwarded(open.base.clone(), claimed).await);
        }
        (answers, started.elapsed())
    })
    .await;
    assert_eq!(open[0], (200, Some("127.0.0.1".into())));
    assert_eq!(open[1].1.as_deref(), Some("127.0.0.1"));
    assert_eq!(open[2].0, 429, "one address, whatever it claims");

    // Behind a trusted proxy (here, the loopback peer): the chain is kept and extended, and
    // each forwarded client has its own address limit.
    let chain = "198.51.100.7, 203.0.113.1, 10.0.0.9";
    let (behind, reached) = within_a_refill(|| async {
        let behind = Running::start(&[upstream], |c| {
            (c.ip_rate_limit_per_second, c.ip_rate_limit_burst) = (rate(1), rate(2));
            c.trusted_proxies = serde_json::from_str(r#""127.0.0.0/8, 10.0.0.0/8""#).unwrap();
        })
        .await;
        let before = seen.load(Ordering::SeqCst);
        let started = Instant::now();
        let mut answers = Vec::new();
        for sent in [chain, "203.0.113.1", "203.0.113.1", "198.51.100.7, 203.0.113.2"] {
            answers.push(forwarded(behind.base.clone(), sent).await);
        }
        ((answers, seen.load(Ordering::SeqCst) - before), started.elapsed())
    })
    .await;
    assert_eq!(behind[0], (200, Some(format!("{chain}, 127.0.0.1"))));
    assert_eq!(behind[1].0, 200);
    assert_eq!(behind[2].0, 429, "203.0.113.1's burst of 2 is spent");
    assert_eq!(behind[3].0, 200, "another client");
    assert_eq!(reached, 3, "limited requests reached no upstream");
}

#[tokio::test]
async fn a_body_sent_one_byte_at_a_time_is_408_and_sent_nowhere() {
    let (upstream, seen) = echo(Duration::ZERO).await;
    let gateway = Running::start(&[upstream], |c| c.body_read_timeout_ms = 500).await;
    let addr = gateway.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/transfers HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    // One byte every 200 ms: the 20 bytes would take 4 s.
    let mut answer = Vec::new();
    for byte in b"{\"amount\":1,\"x\":12}" {
        if socket.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut buf = [0u8; 1024];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), socket.read(&mut buf)).await {
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || !answer.is_empty() {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "a slow body is a 408: {text}");
    assert!(started.elapsed() < Duration::from_secs(2), "answered after {:?}", started.elapsed());
    assert!(text.contains("request_timeout"), "{text}");
    assert_eq!(seen.load(Ordering::SeqCst), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn oversized_headers_odd_methods_and_odd_paths_get_clean_4xx_and_reach_nothing() {
    let (upstream, seen) = echo(Duration::ZERO).await;
    let gateway = Running::start(&[upstream], |c| c.max_header_bytes = 4096).await;
    let url = format!("{}/v1/ledgers", gateway.base);
    let response = client().get(&url).header("x-padding", "p".repeat(8000)).send().await.unwrap();
    assert_eq!(response.status(), 431);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], "headers_too_large");
    assert_eq!(seen.load(Ordering::SeqCst), 0, "nothing reached the upstream");
    for method in ["PURGE", "TRACE", "CONNECT"] {
        let odd = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = client().request(odd, &url).send().await.unwrap();
        assert_eq!(response.status(), 405, "{method}");
    }
    // Sent raw: an HTTP client library would normalise these paths before sending them.
    let addr = gateway.base.trim_start_matches("http://").to_owned();
    for path in ["/v1/%2e%2e/admin", "/v1/../keys", "/v1/..%2fkeys", "/v1/ledgers%2fUSD", "/v1/a\\b"] {
        let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        socket.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("invalid_request"), "{path}: {answer}");
    }
    assert_eq!(seen.load(Ordering::SeqCst), 0, "none of them reached the upstream");
    assert_eq!(client().get(&url).send().await.unwrap().status(), 200);
}

/// A key table in a fresh SQLite data dir: one live key and one revoked, with their tokens.
async fn key_table(dir: &std::path::Path) -> (Arc<dyn KeyDirectory>, String, String) {
    let store = SqliteStore::open(dir, StoreConfig::default()).await.unwrap();
    let mut tokens = Vec::new();
    for name in ["live", "revoked"] {
        let token = coffer_store::issue_token();
        let key = NewApiKey {
            id: KeyId(uuid::Uuid::now_v7()),
            name: Some(name.into()),
            scopes: vec![Scope::Read],
            rate_limit_per_second: None,
            expires_at: None,
            token_hash: TokenHash::of(&token),
            bare_token: false,
        };
        let id = key.id;
        store.create_key(key).await.unwrap();
        if name == "revoked" {
            assert!(store.revoke_key(id).await.unwrap());
        }
        tokens.push(token);
    }
    let keys = coffer_store::sqlite_key_directory(dir).await.unwrap();
    let revoked = tokens.pop().unwrap();
    (keys, tokens.pop().unwrap(), revoked)
}

#[tokio::test]
async fn bad_tokens_are_401_at_the_edge_and_never_reach_an_upstream() {
    let (upstream, seen) = echo(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let (keys, live, revoked) = key_table(dir.path()).await;
    let gateway = Running::start_with_keys(&[upstream], |_| {}, Some(keys)).await;
    let url = format!("{}/v1/ledgers", gateway.base);
    let bad = [
        None,
        Some("Bearer coffer_not_a_key".to_owned()),
        Some(format!("Bearer {revoked}")),
        Some(format!("Basic {live}")),
        Some("Bearer ".to_owned()),
        Some(format!("Bearer {live} extra")),
        Some(format!("Bearer {}", "x".repeat(600))),
    ];
    for header in &bad {
        // Twice: the second answer comes from the cache and must be the same.
        for _ in 0..2 {
            let mut request = client().get(&url);
            if let Some(header) = header {
                request = request.header("authorization", header);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{header:?}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            assert_eq!(response.json::<Value>().await.unwrap()["code"], "unauthorized");
        }
    }
    assert_eq!(seen.load(Ordering::SeqCst), 0, "no request with a bad token reached the upstream");
    let response = client().get(&url).bearer_auth(&live).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["headers"]["authorization"], format!("Bearer {live}"), "the token is passed on");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    // Liveness and readiness need no key, as on the replicas.
    assert_eq!(client().get(format!("{}/readyz", gateway.base)).send().await.unwrap().status(), 200);
}

/// A chunked POST to the gateway at `addr`, written by hand: chunks of the sizes in `first`,
/// then, once `go` fires, those in `then` and the end. Returns the raw answer. Stops writing
/// when the gateway has closed the connection (it may answer before the body ends).
async fn chunked_post(
    addr: String,
    first: Vec<usize>,
    go: tokio::sync::oneshot::Receiver<()>,
    then: Vec<usize>,
) -> String {
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/transfers HTTP/1.1\r\nhost: {addr}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let chunk = |n: &usize| format!("{n:x}\r\n{}\r\n", "x".repeat(*n));
    let mut open = true;
    for n in &first {
        open = open && socket.write_all(chunk(n).as_bytes()).await.is_ok();
    }
    let _ = go.await;
    for n in &then {
        open = open && socket.write_all(chunk(n).as_bytes()).await.is_ok();
    }
    if open {
        let _ = socket.write_all(b"0\r\n\r\n").await;
    }
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// A signal that has already fired.
fn at_once() -> tokio::sync::oneshot::Receiver<()> {
    let (fire, fired) = tokio::sync::oneshot::channel();
    fire.send(()).unwrap();
    fired
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413_and_sent_nowhere() {
    let (upstream, seen) = echo(Duration::ZERO).await;
    let gateway = Running::start(&[upstream], |c| c.max_body_bytes = 10_000).await;
    let addr = gateway.base.trim_start_matches("http://").to_owned();
    let send_chunked = |total: usize| chunked_post(addr.clone(), vec![1000; total / 1000], at_once(), vec![]);
    let answer = send_chunked(20_000).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    assert_eq!(seen.load(Ordering::SeqCst), 0, "nothing reached the upstream");
    let answer = send_chunked(5_000).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"body_len\":5000"), "{answer}");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bodies_beyond_the_held_body_budget_are_shed_and_the_budget_comes_back() {
    let (upstream, seen) = echo(Duration::ZERO).await;
    let gateway = Running::start(&[upstream], |c| {
        (c.max_body_bytes, c.retry_body_limit_bytes, c.max_held_body_bytes) = (1_000, 1_000, 1_000);
    })
    .await;
    let addr = gateway.base.trim_start_matches("http://").to_owned();

    // The first request holds 700 bytes and waits; the second needs 600 more than the 300 left.
    let (finish_first, first_waits) = tokio::sync::oneshot::channel();
    let first = tokio::spawn(chunked_post(addr.clone(), vec![700], first_waits, vec![100]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = chunked_post(addr.clone(), vec![600], at_once(), vec![]).await;
    assert!(second.starts_with("HTTP/1.1 503"), "{second}");
    assert!(second.contains("overloaded") && second.contains("retry-after"), "{second}");
    assert_eq!(seen.load(Ordering::SeqCst), 0, "the shed request reached nothing");

    finish_first.send(()).unwrap();
    let first = first.await.unwrap();
    assert!(first.starts_with("HTTP/1.1 200") && first.contains("\"body_len\":800"), "{first}");
    // The first request's bytes are back in the budget.
    let again = chunked_post(addr, vec![600], at_once(), vec![]).await;
    assert!(again.starts_with("HTTP/1.1 200") && again.contains("\"body_len\":600"), "{again}");
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn headers_sent_one_byte_at_a_time_are_cut_off_and_sent_nowhere() {
    let (upstream, seen) = echo(Duration::ZERO).await;
    let gateway = Running::start(&[upstream], |c| c.header_read_timeout_ms = 500).await;
    let addr = gateway.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = Instant::now();
    let head = format!("GET /v1/ledgers HTTP/1.1\r\nhost: {addr}\r\nx-slow: {}\r\n\r\n", "s".repeat(40));
    let mut closed = false;
    for byte in head.as_bytes() {
        if socket.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(100), socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => {
                // hyper may say 408 before it closes; anything else is wrong.
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
            }
            Err(_) => {}
        }
    }
    assert!(closed, "the connection stayed open while headers trickled in for {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(3), "cut off after {:?}", started.elapsed());
    assert_eq!(seen.load(Ordering::SeqCst), 0, "nothing reached the upstream");
}

/// A certificate authority of a test's own.
type TestCa = rcgen::CertifiedIssuer<'static, rcgen::KeyPair>;

fn test_ca() -> TestCa {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for `names` signed by `ca`, and its key, in PEM files.
struct Certified {
    cert_path: std::path::PathBuf,
    key_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn certify(ca: &TestCa, names: &[&str]) -> Certified {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names).unwrap().signed_by(&key, ca).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    Certified { cert_path, key_path, _dir: dir }
}

/// A resolver that knows one name, `host:port`, at one address.
fn resolving(name: &str, address: SocketAddr) -> Resolve {
    let name = name.to_owned();
    Arc::new(move |authority: String| {
        let known = authority == name;
        Box::pin(
            async move { if known { Ok(vec![address]) } else { Err(std::io::Error::other("no such name")) } },
        )
    })
}

#[tokio::test]
async fn tls_is_terminated_at_the_gateway() {
    let (upstream, seen) = echo(Duration::ZERO).await;
    let ca = test_ca();
    let certified = certify(&ca, &["localhost"]);
    let gateway = Running::start(&[upstream], |c| {
        c.tls_cert_path = Some(certified.cert_path.clone());
        c.tls_key_path = Some(certified.key_path.clone());
    })
    .await;
    let port = gateway.base.rsplit(':').next().unwrap().to_owned();
    let root = reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap();
    let tls_client = reqwest::Client::builder().no_proxy().add_root_certificate(root).build().unwrap();
    let response = tls_client.get(format!("https://localhost:{port}/v1/ledgers")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["path"], "/v1/ledgers");
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https");
    // Plain HTTP on the TLS port gets no answer and reaches nothing.
    let plain = client().get(format!("http://127.0.0.1:{port}/v1/ledgers")).send().await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_https_upstream_must_show_a_certificate_for_its_configured_name_from_a_trusted_authority() {
    let ca = test_ca();
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_path = ca_dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let trust = |c: &mut GatewayConfig| c.upstream_ca_path = Some(ca_path.clone());
    let https = |authority: String| vec![UpstreamUrl::try_from(format!("https://{authority}")).unwrap()];

    // The certificate names the replica only by its DNS name. The name resolves to the
    // replica's address, which the gateway dials, and still checks the certificate against
    // the name and sends it as Host.
    let (replica, seen) = echo_tls(&certify(&ca, &["replicas.coffer.test"])).await;
    let name = format!("replicas.coffer.test:{}", replica.port());
    let gateway = Running::launch(https(name.clone()), trust, None, Some(resolving(&name, replica))).await;
    let url = format!("{}/v1/ledgers", gateway.base);
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["headers"]["host"], name.as_str(), "the replica is addressed by its name");
    assert_eq!(gateway.upstreams().await[0]["url"], format!("https://{replica}"));
    assert_eq!(seen.load(Ordering::SeqCst), 1);

    // The same replica configured by its address: its certificate does not name the address.
    let by_address = Running::launch(https(replica.to_string()), trust, None, None).await;
    let refused = client().get(format!("{}/v1/ledgers", by_address.base)).send().await.unwrap();
    assert!([502, 503].contains(&refused.status().as_u16()), "{}", refused.status());

    // A replica with a certificate for the right name from an authority nobody trusts.
    let (stranger, stranger_seen) = echo_tls(&certify(&test_ca(), &["replicas.coffer.test"])).await;
    let name = format!("replicas.coffer.test:{}", stranger.port());
    let gateway = Running::launch(https(name.clone()), trust, None, Some(resolving(&name, stranger))).await;
    let refused = client().get(format!("{}/v1/ledgers", gateway.base)).send().await.unwrap();
    assert!([502, 503].contains(&refused.status().as_u16()), "{}", refused.status());
    assert_eq!(stranger_seen.load(Ordering::SeqCst), 0);
    assert_eq!(seen.load(Ordering::SeqCst), 1, "nothing reached a replica it could not verify");
}

#[tokio::test]
async fn an_upstream_removed_from_the_list_drains_its_requests_and_takes_no_new_ones() {
    let (slow, slow_seen) = echo(Duration::from_millis(800)).await;
    let (fast, fast_seen) = echo(Duration::ZERO).await;
    let gateway = Running::start(&[slow], |_| {}).await;
    let url = format!("{}/v1/ledgers", gateway.base);
    let in_flight = tokio::spawn(client().get(&url).send());
    while slow_seen.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let admin = format!("{}/gateway/upstreams", gateway.admin);
    let replaced = client()
        .put(&admin)
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!([format!("http://{fast}")]))
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.status(), 200);
    assert_eq!(replaced.json::<Value>().await.unwrap(), json!({"added": 1, "removed": 1}));
    let listed = gateway.upstreams().await;
    assert_eq!(listed.len(), 2);
    assert_eq!(
        (listed[1]["url"].as_str(), listed[1]["draining"].as_bool()),
        (Some(&*format!("http://{slow}")), Some(true))
    );
    for _ in 0..5 {
        assert_eq!(client().get(&url).send().await.unwrap().status(), 200);
    }
    assert_eq!(fast_seen.load(Ordering::SeqCst), 5, "new requests go to the list as it is now");
    assert_eq!(in_flight.await.unwrap().unwrap().status(), 200, "the request in flight finished");
    assert_eq!(slow_seen.load(Ordering::SeqCst), 1);
    let deadline = Instant::now() + Duration::from_secs(3);
    while gateway.upstreams().await.len() == 2 {
        assert!(Instant::now() < deadline, "the drained upstream was not forgotten");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for bad in
        [json!([]), json!("ftp://x:1"), json!([format!("http://{fast}"), format!("http://{fast}")]), json!(7)]
    {
        let refused = client().put(&admin).bearer_auth(ADMIN_TOKEN).json(&bad).send().await.unwrap();
        assert_eq!(refused.status(), 400, "{bad}");
    }
    assert_eq!(gateway.upstreams().await.len(), 1, "a refused list changes nothing");
}

#[tokio::test]
async fn the_admin_endpoints_answer_only_to_the_admin_token() {
    let (upstream, _) = echo(Duration::ZERO).await;
    let gateway = Running::start(&[upstream], |_| {}).await;
    let list = format!("{}/gateway/upstreams", gateway.admin);
    let elsewhere = json!([format!("http://{}", dead_port())]);
    // The right length with the last character changed, another scheme, and nothing at all.
    let wrong = format!("{}X", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]);
    let refusals = [
        client().get(&list),
        client().get(&list).bearer_auth(&wrong),
        client().get(&list).basic_auth("admin", Some(ADMIN_TOKEN)),
        client().put(&list).json(&elsewhere),
        client().put(&list).bearer_auth(&wrong).json(&elsewhere),
        client().get(format!("{}/gateway/metrics", gateway.admin)),
        client().get(format!("{}/gateway/readyz", gateway.admin)),
        client().get(format!("{}/no/such/path", gateway.admin)),
    ];
    for request in refusals {
        let refused = request.send().await.unwrap();
        assert_eq!(refused.status(), 401, "{}", refused.url());
        assert_eq!(refused.headers()["www-authenticate"], "Bearer");
        assert_eq!(refused.headers()["content-type"], "application/problem+json");
        let problem: Value = refused.json().await.unwrap();
        assert_eq!((problem["status"].as_u64(), problem["code"].as_str()), (Some(401), Some("unauthorized")));
    }
    let listed = gateway.upstreams().await;
    assert_eq!(listed.len(), 1, "a refused PUT changed nothing: {listed:?}");
    assert_eq!(listed[0]["url"], format!("http://{upstream}"));
    assert_eq!(gateway.admin_get("/gateway/readyz").await.status(), 200);
}

#[tokio::test]
async fn the_admin_listener_does_not_start_without_a_long_enough_token() {
    let (upstream, _) = echo(Duration::ZERO).await;
    let config = |token: Option<AdminToken>, file: Option<std::path::PathBuf>| GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        admin_token: token,
        admin_token_file: file,
        upstreams: Upstreams(vec![UpstreamUrl::try_from(format!("http://{upstream}")).unwrap()]),
        ..GatewayConfig::default()
    };
    let refused = Gateway::bind(config(None, None)).await.err().expect("no token, no admin listener");
    assert!(refused.to_string().contains("admin_token"), "{refused}");
    assert!(AdminToken::try_from("x".repeat(31)).is_err(), "31 characters are too few");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-token");
    std::fs::write(&file, "too-short\n").unwrap();
    let refused = Gateway::bind(config(None, Some(file.clone()))).await.err().expect("a short token file");
    assert!(refused.to_string().contains("32 characters"), "{refused}");
    std::fs::write(&file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let gateway = Gateway::bind(config(None, Some(file))).await.expect("a token file is read");
    assert!(gateway.admin_addr().is_some());
}

/// Listeners on one port of three loopback addresses: the replicas behind one name.
fn one_port_on_three_addresses() -> [std::net::TcpListener; 3] {
    loop {
        let first = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = first.local_addr().unwrap().port();
        let rest = ["127.0.0.3", "127.0.0.4"].map(|ip| std::net::TcpListener::bind((ip, port)));
        if let [Ok(second), Ok(third)] = rest {
            return [first, second, third];
        }
    }
}

#[tokio::test]
async fn a_name_is_one_upstream_per_address_it_resolves_to_followed_as_the_answer_changes() {
    let [a, b, c] = one_port_on_three_addresses().map(|listener| {
        listener.set_nonblocking(true).unwrap();
        echo_on(TcpListener::from_std(listener).unwrap(), Duration::ZERO)
    });
    let port = a.0.port();
    // What the name resolves to; an empty answer is a failed lookup.
    let answer = Arc::new(std::sync::Mutex::new(vec![a.0, b.0]));
    let name = format!("replicas.coffer.test:{port}");
    let resolve: Resolve = {
        let (answer, name) = (answer.clone(), name.clone());
        Arc::new(move |authority: String| {
            let addresses = answer.lock().unwrap().clone();
            let known = authority == name && !addresses.is_empty();
            Box::pin(
                async move { if known { Ok(addresses) } else { Err(std::io::Error::other("no such name")) } },
            )
        })
    };
    let urls = vec![UpstreamUrl::try_from(format!("http://{name}")).unwrap()];
    let gateway = Running::launch(urls, |c| c.dns_refresh_ms = 50, None, Some(resolve)).await;
    let listed = |expected: Vec<SocketAddr>| {
        let expected: Vec<String> = expected.iter().map(|a| format!("http://{a}")).collect();
        let gateway = &gateway;
        async move {
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                let now: Vec<String> = gateway
                    .upstreams()
                    .await
                    .iter()
                    .filter(|u| u["draining"] == false)
                    .map(|u| u["url"].as_str().unwrap().to_owned())
                    .collect();
                if now == expected {
                    return;
                }
                assert!(Instant::now() < deadline, "the gateway lists {now:?}, not {expected:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let send = |n: usize| {
        let url = format!("{}/v1/ledgers", gateway.base);
        async move {
            for _ in 0..n {
                assert_eq!(client().get(&url).send().await.unwrap().status(), 200);
            }
        }
    };

    listed(vec![a.0, b.0]).await;
    send(40).await;
    let seen = |echo: &(SocketAddr, Arc<AtomicUsize>)| echo.1.load(Ordering::SeqCst);
    assert!(seen(&a) > 0 && seen(&b) > 0, "both addresses take requests: {} and {}", seen(&a), seen(&b));

    // The name moves from a to c: c joins, a drains and takes nothing new.
    *answer.lock().unwrap() = vec![c.0, b.0];
    listed(vec![b.0, c.0]).await;
    let a_before = seen(&a);
    send(40).await;
    assert_eq!(seen(&a), a_before, "a left the answer");
    assert!(seen(&c) > 0, "c joined");

    // A failed lookup keeps the addresses the name had.
    answer.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_millis(200)).await;
    listed(vec![b.0, c.0]).await;
    send(4).await;
}

fn rate(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n).unwrap()
}
