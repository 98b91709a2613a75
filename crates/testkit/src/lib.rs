//! Test support shared by the crates' integration tests: a fresh, empty store on either backend,
//! so one conformance suite runs the same test code against SQLite and PostgreSQL.
//!
//! PostgreSQL tests connect to `COFFER_TEST_DATABASE_URL` (default: the local server,
//! `postgres://postgres@127.0.0.1:5432/postgres`) and create a database of their own, dropped
//! when the test ends. When the server cannot be reached the test is skipped with a message
//! naming it — unless `COFFER_TEST_REQUIRE_SERVICES=1` (CI), which makes that a failure.

use std::path::Path;
use std::sync::Arc;

use coffer_store::{PgStore, SqliteStore, Store, StoreConfig};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Which store a conformance test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a test binary runs on: test targets whose name ends in `_postgres` (the
    /// conformance suite compiled a second time) use PostgreSQL, all others SQLite.
    pub fn of_test_target(crate_name: &str) -> Backend {
        if crate_name.ends_with("_postgres") { Backend::Postgres } else { Backend::Sqlite }
    }
}

/// A store that lives as long as this value: its temp dir or its database goes with it.
pub struct TestStore {
    pub store: Arc<dyn Store>,
    _place: Place,
}

/// Where the store lives; its `Drop` removes the files or the database.
enum Place {
    Dir(tempfile::TempDir),
    Database(TestDatabase),
}

impl std::ops::Deref for TestStore {
    type Target = Arc<dyn Store>;

    fn deref(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

impl TestStore {
    /// Shuts the store down and opens it again on the same files or database: what a restart
    /// of the server sees.
    pub async fn reopen(self, config: StoreConfig) -> TestStore {
        self.store.shutdown().await;
        let TestStore { store, _place: place } = self;
        // The SQLite store's data dir lock is released with its last handle.
        drop(store);
        let store: Arc<dyn Store> = match &place {
            Place::Dir(dir) => SqliteStore::open(dir.path(), config).await.expect("reopen the SQLite store"),
            Place::Database(db) => {
                PgStore::connect(&db.url, config).await.expect("reconnect the PostgreSQL store")
            }
        };
        TestStore { store, _place: place }
    }

    /// Another process's view of the same store, for tests of several writers: on PostgreSQL a
    /// second `PgStore` (its own pool and sequencer) on the same database; `None` on SQLite,
    /// where one process owns a data dir.
    pub async fn another_writer(&self, config: StoreConfig) -> Option<Arc<dyn Store>> {
        match &self._place {
            Place::Dir(_) => None,
            Place::Database(db) => {
                Some(PgStore::connect(&db.url, config).await.expect("connect another store"))
            }
        }
    }

    /// Runs `sql` on the store's database behind the store's back: how a test damages a row or
    /// breaks an invariant that no request could.
    pub async fn tamper(&self, sql: &str) {
        match &self._place {
            Place::Dir(dir) => sqlite_execute(dir.path(), sql),
            Place::Database(db) => postgres_execute(&db.url, sql).await,
        }
    }

    /// A fresh store on `backend`, or `None` (after printing why) when its service is missing
    /// and the test may be skipped.
    pub async fn open(backend: Backend, config: StoreConfig) -> Option<TestStore> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("a temp dir");
                let store = SqliteStore::open(dir.path(), config).await.expect("open the SQLite store");
                Some(TestStore { store, _place: Place::Dir(dir) })
            }
            Backend::Postgres => {
                let database = TestDatabase::create().await?;
                let store =
                    PgStore::connect(&database.url, config).await.expect("connect the PostgreSQL store");
                Some(TestStore { store, _place: Place::Database(database) })
            }
        }
    }
}

/// Whether a missing service fails the test (CI) instead of skipping it.
pub fn services_required() -> bool {
    std::env::var("COFFER_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Skips (prints and answers `None`) or fails, as [`services_required`] says.
pub fn missing<T>(service: &str, why: impl std::fmt::Display) -> Option<T> {
    if services_required() {
        panic!("{service} is required (COFFER_TEST_REQUIRE_SERVICES=1) but unreachable: {why}");
    }
    eprintln!(
        "SKIPPED: {service} is unreachable ({why}); set COFFER_TEST_REQUIRE_SERVICES=1 to fail instead"
    );
    None
}

/// A database of its own on the test PostgreSQL server, dropped on drop.
pub struct TestDatabase {
    pub url: String,
    pub name: String,
    admin_url: String,
}

impl TestDatabase {
    pub async fn create() -> Option<TestDatabase> {
        let admin_url =
            std::env::var("COFFER_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
        let name = format!("coffer_test_{}", uuid::Uuid::new_v4().simple());
        if let Err(e) = admin(&admin_url, &format!("CREATE DATABASE {name}")).await {
            return missing(&format!("PostgreSQL at {admin_url}"), e);
        }
        let url = with_database(&admin_url, &name);
        Some(TestDatabase { url, name, admin_url })
    }

    /// A new database with this one's contents (`CREATE DATABASE … TEMPLATE`, so nothing may be
    /// connected to this one), dropped on drop like any other.
    pub async fn copy(&self) -> TestDatabase {
        let name = format!("coffer_test_{}", uuid::Uuid::new_v4().simple());
        admin(&self.admin_url, &format!("CREATE DATABASE {name} TEMPLATE {}", self.name))
            .await
            .unwrap_or_else(|e| panic!("cannot copy database {}: {e}", self.name));
        let url = with_database(&self.admin_url, &name);
        TestDatabase { url, name, admin_url: self.admin_url.clone() }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside any async context we could borrow: a thread with its own runtime.
        let (admin_url, sql) =
            (self.admin_url.clone(), format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(admin(&admin_url, &sql)).ok()
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// Runs `sql` on the embedded store of `data_dir`, beside the server that may hold it (SQLite
/// lets a second connection write between the server's transactions).
pub fn sqlite_execute(data_dir: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(data_dir.join("coffer.db")).expect("open coffer.db");
    conn.busy_timeout(std::time::Duration::from_secs(10)).expect("set a busy timeout");
    conn.execute_batch(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Runs `sql` on the PostgreSQL database at `url`.
pub async fn postgres_execute(url: &str, sql: &str) {
    admin(url, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Runs one statement on a short-lived connection.
async fn admin(url: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let result = client.batch_execute(sql).await;
    drop(client);
    let _ = driver.await;
    result
}

/// `url` with its database path replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_end..].find('/').map_or(base.len(), |i| authority_end + i);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A redis-server of the test's own on a free port, to stop and start again (the shared local
/// Redis must not be stopped); killed when dropped. Needs `redis-server` on the `PATH`.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts one; `None` (the test skipped) when `redis-server` cannot be run.
    pub fn start() -> Option<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let mut redis = RedisServer { port, child: None };
        redis.spawn().then_some(redis)
    }

    /// Starts it again on its port after [`RedisServer::stop`]; answers whether it runs.
    pub fn spawn(&mut self) -> bool {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) => return missing::<()>("redis-server on the PATH", e).is_some(),
        };
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        true
    }

    /// SIGKILL: what it held is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced_in_urls() {
        assert_eq!(with_database("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h1:1,h2:2?a=b", "x"), "postgres://u@h1:1,h2:2/x?a=b");
    }
}
