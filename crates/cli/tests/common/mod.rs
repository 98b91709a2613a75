//! Spawns the real `coffer` binary on a free port with its own data directory, and checks the
//! ledger's invariants through the HTTP API.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The README's bootstrap token, so that its walk-through runs against these servers verbatim.
/// The key servers on PostgreSQL seal webhook secrets with (PostgreSQL has no default key:
/// every replica must share one). All the servers of a test share it, like a deployment's.
pub const WEBHOOK_SECRET_KEY: &str = "test:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

pub const TOKEN: &str = "t";

pub struct Server {
    child: Child,
    data_dir: PathBuf,
    port: u16,
}

/// Sends `signal` (`-HUP`, say) to a child process.
fn send_signal(child: &Child, signal: &str) {
    let pid = child.id().to_string();
    assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success());
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Server {
    pub async fn start(data_dir: &Path) -> Self {
        Self::spawn(data_dir.to_path_buf(), free_port()).await
    }

    /// A server that writes JSON logs at `level` into `log` (its stderr).
    pub async fn start_logging(data_dir: &Path, level: &str, log: std::fs::File) -> Self {
        let port = free_port();
        let mut command = Self::command(data_dir, port);
        command.env("COFFER_LOG_LEVEL", level).env("COFFER_LOG_FORMAT", "json").stderr(log);
        Self::run(command, data_dir.to_path_buf(), port).await
    }

    /// A server on the embedded store with more settings in the environment.
    pub async fn start_with_env(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut command = Self::command(data_dir, port);
        command.envs(env.iter().copied());
        Self::run(command, data_dir.to_path_buf(), port).await
    }

    /// A server on the PostgreSQL database at `database_url` (`data_dir` only holds nothing).
    pub async fn start_on_database(data_dir: &Path, database_url: &str) -> Self {
        Self::start_on_database_with(data_dir, database_url, &[]).await
    }

    /// The same, with more settings in the environment (`COFFER_STORE__…`).
    pub async fn start_on_database_with(data_dir: &Path, database_url: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut command = Self::command(data_dir, port);
        command
            .env("COFFER_DATABASE_URL", database_url)
            .env("COFFER_WEBHOOK_SECRET_KEYS", WEBHOOK_SECRET_KEY)
            .envs(env.iter().copied());
        Self::run(command, data_dir.to_path_buf(), port).await
    }

    /// A server on the PostgreSQL database at `database_url` (or, with none, on the embedded
    /// store in `data_dir`) with more settings in the environment, writing its standard error
    /// into `stderr`.
    pub async fn start_with_stderr(
        data_dir: &Path,
        database_url: Option<&str>,
        env: &[(&str, &str)],
        stderr: std::fs::File,
    ) -> Self {
        let port = free_port();
        let mut command = Self::command(data_dir, port);
        if let Some(url) = database_url {
            command.env("COFFER_DATABASE_URL", url).env("COFFER_WEBHOOK_SECRET_KEYS", WEBHOOK_SECRET_KEY);
        }
        command.envs(env.iter().copied()).stderr(stderr);
        Self::run(command, data_dir.to_path_buf(), port).await
    }

    /// A server that speaks only TLS, with the PEM certificate and key at these paths; its
    /// readiness is asked over TLS, trusting `root` (PEM), the authority of its certificate.
    pub async fn start_tls(data_dir: &Path, cert: &Path, key: &Path, root: &str) -> Self {
        let port = free_port();
        let mut command = Self::command(data_dir, port);
        command.env("COFFER_TLS_CERT_PATH", cert).env("COFFER_TLS_KEY_PATH", key);
        let child = command.spawn().expect("coffer binary runs");
        let server = Self { child, data_dir: data_dir.to_path_buf(), port };
        let root = reqwest::Certificate::from_pem(root.as_bytes()).unwrap();
        let client = reqwest::Client::builder().add_root_certificate(root).build().unwrap();
        server.wait_ready_at(&client, &format!("https://localhost:{port}/readyz")).await;
        server
    }

    async fn spawn(data_dir: PathBuf, port: u16) -> Self {
        Self::run(Self::command(&data_dir, port), data_dir, port).await
    }

    fn command(data_dir: &Path, port: u16) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_coffer"));
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data_dir)
            .env("COFFER_BOOTSTRAP_TOKEN", TOKEN)
            .env("COFFER_LOG_LEVEL", "warn")
            .stdout(Stdio::null());
        command
    }

    async fn run(mut command: Command, data_dir: PathBuf, port: u16) -> Self {
        let child = command.spawn().expect("coffer binary runs");
        let server = Self { child, data_dir, port };
        let url = format!("http://127.0.0.1:{port}/readyz");
        server.wait_ready_at(&reqwest::Client::new(), &url).await;
        server
    }

    async fn wait_ready_at(&self, client: &reqwest::Client, url: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if client.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("coffer serve did not become ready on port {}", self.port);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn client(&self) -> Http {
        Http { base: format!("http://127.0.0.1:{}", self.port), inner: reqwest::Client::new() }
    }

    /// Waits up to `within` for the process to end on its own; how it ended, if it did.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("the child can be waited for") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGHUP: a server with TLS reads its certificate again.
    pub fn hang_up(&self) {
        send_signal(&self.child, "-HUP");
    }

    /// SIGKILL: no shutdown, no flush; what is not on disk is gone.
    pub fn kill_9(mut self) -> Stopped {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
        Stopped { data_dir: self.data_dir.clone(), port: self.port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Stopped {
    data_dir: PathBuf,
    port: u16,
}

impl Stopped {
    pub async fn restart(self) -> Server {
        Server::spawn(self.data_dir, self.port).await
    }

    /// Starts it again on the same port, on the PostgreSQL database at `database_url`.
    pub async fn restart_on_database(self, database_url: &str) -> Server {
        let mut command = Server::command(&self.data_dir, self.port);
        command
            .env("COFFER_DATABASE_URL", database_url)
            .env("COFFER_WEBHOOK_SECRET_KEYS", WEBHOOK_SECRET_KEY);
        Server::run(command, self.data_dir, self.port).await
    }
}

/// The admin token every test gateway is started with (`COFFER_GATEWAY_ADMIN_TOKEN`).
pub const GATEWAY_ADMIN_TOKEN: &str = "test-gateway-admin-token-0123456789";

/// The real `coffer gateway` binary; killed when dropped.
pub struct GatewayProcess {
    child: Child,
    pub base: String,
    pub admin: String,
}

impl GatewayProcess {
    /// A gateway in front of `upstreams` (none: the list comes from the configuration), with
    /// more settings in the environment (the replicas' store for the token check,
    /// `COFFER_GATEWAY_…`, `COFFER_REDIS_URL`, `COFFER_CONFIG`).
    pub async fn start_with(
        upstreams: &[String],
        env: &[(&str, &str)],
        log: std::fs::File,
    ) -> GatewayProcess {
        let (port, admin_port) = (free_port(), free_port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_coffer"));
        command
            .args(["gateway", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")]);
        if !upstreams.is_empty() {
            command.args(["--upstreams", &upstreams.join(",")]);
        }
        let child = command
            .env("COFFER_LOG_LEVEL", "info")
            .env("COFFER_LOG_FORMAT", "json")
            .env("COFFER_GATEWAY_ADMIN_TOKEN", GATEWAY_ADMIN_TOKEN)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("coffer gateway runs");
        let gateway = GatewayProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            admin: format!("http://127.0.0.1:{admin_port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let ready = gateway.admin_get("/gateway/readyz").await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return gateway;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("coffer gateway did not become ready");
    }

    /// Whether the gateway reports `upstream` healthy.
    pub async fn healthy(&self, upstream: &str) -> bool {
        let list: Vec<Value> = self.upstreams().await;
        let entry = list.iter().find(|u| u["url"] == upstream).expect("the upstream is listed");
        entry["healthy"] == true
    }

    pub async fn metrics(&self) -> String {
        self.admin_get("/gateway/metrics").await.unwrap().text().await.unwrap()
    }

    /// The upstream list the admin listener shows.
    pub async fn upstreams(&self) -> Vec<Value> {
        self.admin_get("/gateway/upstreams").await.unwrap().json().await.unwrap()
    }

    /// `GET` of an admin endpoint, with the admin token.
    pub async fn admin_get(&self, path: &str) -> reqwest::Result<reqwest::Response> {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        client.get(format!("{}{path}", self.admin)).bearer_auth(GATEWAY_ADMIN_TOKEN).send().await
    }
}

impl GatewayProcess {
    /// SIGHUP: the gateway reads its configuration again.
    pub fn hang_up(&self) {
        send_signal(&self.child, "-HUP");
    }

    /// SIGTERM: the gateway drains and exits on its own.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the gateway did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `coffer serve` whose roles leave out the API: it has no port to be ready on.
pub struct Headless(Child);

impl Headless {
    /// `coffer serve` on the PostgreSQL database at `database_url`, its roles and the rest of
    /// its settings in `env` (`COFFER_ROLES`, …).
    pub fn start(database_url: &str, env: &[(&str, &str)]) -> Headless {
        let child = Command::new(env!("CARGO_BIN_EXE_coffer"))
            .arg("serve")
            .env("COFFER_DATABASE_URL", database_url)
            .env("COFFER_WEBHOOK_SECRET_KEYS", WEBHOOK_SECRET_KEY)
            .env("COFFER_LOG_LEVEL", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .expect("coffer runs");
        Headless(child)
    }

    /// SIGKILL.
    pub fn kill_9(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Headless {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Clone)]
pub struct Http {
    base: String,
    inner: reqwest::Client,
}

impl Http {
    /// A client of the Coffer API served at `base` (`http://127.0.0.1:8080`), say a gateway.
    pub fn at(base: String) -> Http {
        Self::with_client(base, reqwest::Client::new())
    }

    /// The same through `client` (say, one that trusts a test's own certificate authority).
    pub fn with_client(base: String, client: reqwest::Client) -> Http {
        Http { base, inner: client }
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Result<(u16, Value)> {
        self.post_with_headers(path, body).await.map(|(status, _, answer)| (status, answer))
    }

    /// A POST answered with its headers too (say, to read Retry-After).
    pub async fn post_with_headers(
        &self,
        path: &str,
        body: &Value,
    ) -> reqwest::Result<(u16, reqwest::header::HeaderMap, Value)> {
        let response =
            self.inner.post(format!("{}{path}", self.base)).bearer_auth(TOKEN).json(body).send().await?;
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        Ok((status, headers, response.json().await.unwrap_or(Value::Null)))
    }

    pub async fn post_ok(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.post(path, &body).await.expect("request sent");
        assert!(status == 200 || status == 201, "POST {path} answered {status}: {answer}");
        answer
    }

    /// A new ledger `code` (scale 2) with two accounts in it; answers their ids.
    pub async fn ledger_with_two_accounts(&self, code: &str) -> (Value, Value) {
        self.post_ok("/v1/ledgers", serde_json::json!({"code": code, "scale": 2})).await;
        let account = serde_json::json!({"ledger": code, "code": 1});
        let a = self.post_ok("/v1/accounts", account.clone()).await["id"].clone();
        let b = self.post_ok("/v1/accounts", account).await["id"].clone();
        (a, b)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .inner
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// Every item of a list endpoint, following the cursors.
pub async fn list_all(http: &Http, path: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let page_path = match &cursor {
            Some(c) => format!("{path}{sep}limit=1000&cursor={c}"),
            None => format!("{path}{sep}limit=1000"),
        };
        let (status, page) = http.get(&page_path).await;
        assert_eq!(status, 200, "GET {page_path}: {page}");
        items.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return items,
        }
    }
}

fn field(value: &Value, name: &str) -> u128 {
    value[name].as_u64().unwrap_or_else(|| panic!("{name} missing in {value}")) as u128
}

/// Double entry per ledger, and every balance equal to the sum of the transfers that touched it.
pub async fn invariants_hold(http: &Http, ledger: &str) {
    let accounts = list_all(http, &format!("/v1/accounts?ledger={ledger}")).await;
    let transfers = list_all(http, &format!("/v1/transfers?ledger={ledger}")).await;
    let (mut debits, mut credits) = (0u128, 0u128);
    for account in &accounts {
        let balance = &account["balance"];
        debits += field(balance, "debits_posted");
        credits += field(balance, "credits_posted");
        let id = account["id"].as_str().unwrap();
        let posted = |side: &str| -> u128 {
            transfers
                .iter()
                .filter(|t| {
                    t[side] == id && t["status"] == "posted" && !t["pending"].as_bool().unwrap_or(false)
                })
                .map(|t| field(t, "amount"))
                .sum()
        };
        assert_eq!(field(balance, "debits_posted"), posted("debit_account_id"), "debits of {id}");
        assert_eq!(field(balance, "credits_posted"), posted("credit_account_id"), "credits of {id}");
        if account["flags"]["debits_must_not_exceed_credits"] == true {
            let total = field(balance, "debits_posted") + field(balance, "debits_pending");
            assert!(total <= field(balance, "credits_posted"), "{id} overdrawn");
        }
    }
    assert_eq!(debits, credits, "double entry broken on {ledger}");
}
