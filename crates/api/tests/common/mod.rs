//! The HTTP test harness: the real router on 127.0.0.1:0 over a fresh, empty store, with a
//! bootstrap admin token, and a small reqwest client around it.
//!
//! This is the conformance suite of the API contract: each test takes the backend it runs on and
//! is listed in its file's `coffer_testkit::on_each_backend!`, which runs it on SQLite
//! (`sqlite::<test>`) and on PostgreSQL (`postgres::<test>`).
#![allow(dead_code)] // each test binary uses its own part of the harness

use std::sync::Arc;

use coffer_api::ApiConfig;
use coffer_events::{SecretKeys, TargetPolicy};
use coffer_store::{Store, StoreConfig};
use coffer_testkit::{Backend, TestStore};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

pub const ADMIN: &str = "admin-test-token";

pub struct App {
    pub base: String,
    pub client: reqwest::Client,
    pub store: Arc<dyn Store>,
    _store: Option<TestStore>,
}

/// A response, its body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem response with this status and code.
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{}", self.text);
        assert_eq!(self.body["code"], code, "{}", self.text);
        assert_eq!(self.body["status"], status, "{}", self.text);
        assert!(
            self.body["type"].is_string()
                && self.body["title"].is_string()
                && self.body["detail"].is_string()
        );
    }
}

/// The app on `backend`; `None` when its database is missing and the test is skipped.
pub async fn spawn(backend: Backend) -> Option<App> {
    spawn_with(backend, ApiConfig::default()).await
}

pub async fn spawn_with(backend: Backend, config: ApiConfig) -> Option<App> {
    let store_config = StoreConfig { expiry_interval_ms: 100, ..StoreConfig::default() };
    let test_store = TestStore::open(backend, store_config).await?;
    let store = test_store.store.clone();
    assert_eq!(coffer_api::bootstrap(store.as_ref(), Some(ADMIN)).await.unwrap(), None);
    let router = coffer_api::router(store.clone(), config, coffer_api::install_metrics());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Some(App { base, client: reqwest::Client::new(), store, _store: Some(test_store) })
}

/// The app with these services: `targets` may let webhook URLs point at loopback and private
/// addresses, or be plain http. The default [`spawn`] refuses both, like `coffer_api::router`.
pub async fn spawn_with_services(backend: Backend, config: ApiConfig, targets: TargetPolicy) -> Option<App> {
    let store_config = StoreConfig { expiry_interval_ms: 100, ..StoreConfig::default() };
    let test_store = TestStore::open(backend, store_config).await?;
    let store = test_store.store.clone();
    Some(serve_with(store, config, targets, Some(test_store)).await)
}

/// The app on `store`, with the webhook targets `targets` and secrets sealed under a key of
/// this process; `test_store` is kept alive as long as the app.
pub async fn serve_with(
    store: Arc<dyn Store>,
    config: ApiConfig,
    targets: TargetPolicy,
    test_store: Option<TestStore>,
) -> App {
    assert_eq!(coffer_api::bootstrap(store.as_ref(), Some(ADMIN)).await.unwrap(), None);
    let services = coffer_api::Services {
        dead_letters: Arc::new(coffer_events::StoreDeadLetters(store.clone())),
        webhook_targets: targets,
        webhook_keys: Arc::new(SecretKeys::ephemeral()),
        metrics_on_api: true,
        about: coffer_api::ServerAbout::default(),
        shutdown: coffer_api::Shutdown::default(),
    };
    let router = coffer_api::router_with(store.clone(), config, coffer_api::install_metrics(), services);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    App { base, client: reqwest::Client::new(), store, _store: test_store }
}

impl App {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request with optional token, JSON content type and extra headers.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(method, self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp { status, headers, text, body }
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.post_as(ADMIN, path, body).await
    }

    pub async fn post_as(&self, token: &str, path: &str, body: Value) -> Resp {
        self.send("POST", path, Some(token), Some(body.to_string().into_bytes()), &[]).await
    }

    pub async fn post_keyed(&self, path: &str, key: &str, body: Value) -> Resp {
        self.send("POST", path, Some(ADMIN), Some(body.to_string().into_bytes()), &[("idempotency-key", key)])
            .await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send("GET", path, Some(ADMIN), None, &[]).await
    }

    pub async fn get_as(&self, token: &str, path: &str) -> Resp {
        self.send("GET", path, Some(token), None, &[]).await
    }

    /// Runs `sql` on the store's database behind the store's back (see `TestStore::tamper`).
    pub async fn tamper(&self, sql: &str) {
        self._store.as_ref().expect("a store of the test's own").tamper(sql).await;
    }

    /// A ledger `code` with scale 2.
    pub async fn ledger(&self, code: &str) {
        let r = self.post("/v1/ledgers", json!({"code": code, "scale": 2})).await;
        assert!(r.status == 201 || r.status == 200, "{}", r.text);
    }

    /// A new account on `ledger`, answering its id.
    pub async fn account(&self, ledger: &str, flags: Value) -> String {
        let r = self.post("/v1/accounts", json!({"ledger": ledger, "flags": flags})).await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.body["id"].as_str().unwrap().to_owned()
    }

    /// A ledger and two plain accounts on it.
    pub async fn two_accounts(&self, ledger: &str) -> (String, String) {
        self.ledger(ledger).await;
        (self.account(ledger, json!({})).await, self.account(ledger, json!({})).await)
    }

    pub async fn balance(&self, account: &str) -> Value {
        let r = self.get(&format!("/v1/accounts/{account}")).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["balance"].clone()
    }

    /// A new key with these scopes (and rate limit), answering its token.
    pub async fn key(&self, scopes: &[&str], rate_limit: Option<u32>) -> (String, String) {
        let mut body = json!({"name": "test", "scopes": scopes});
        if let Some(rate) = rate_limit {
            body["rate_limit_per_second"] = json!(rate);
        }
        let r = self.post("/v1/keys", body).await;
        assert_eq!(r.status, 201, "{}", r.text);
        (r.body["id"].as_str().unwrap().to_owned(), r.body["token"].as_str().unwrap().to_owned())
    }
}

pub fn uuid() -> String {
    uuid::Uuid::now_v7().to_string()
}
