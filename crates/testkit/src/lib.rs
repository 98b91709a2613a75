//! Test support shared by the crates' integration tests: a fresh, empty store on either backend,
//! so one conformance suite runs the same test code against SQLite and PostgreSQL. A test is
//! written once, taking the [`Backend`] as its argument, and [`on_each_backend!`] runs it on
//! each: as `sqlite::<test>` and `postgres::<test>`.
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

/// Runs each listed test on both backends. A test is a function of the same name written once,
/// beside the invocation, taking the backend: `async fn name(backend: Backend)` or, for a
/// `#[test]`, `fn name(backend: Backend)`. The macro adds two modules whose tests call it, one
/// per backend, so the test names are `sqlite::name` and `postgres::name`, and a filter runs one
/// backend (`cargo test -p coffer-api postgres::`).
///
/// Each entry is a test's name after its attributes. The first may say how the test runs,
/// `#[test]` or `#[tokio::test(…)]`; any others (`#[ignore = "…"]`, …) go on both copies. A test
/// that does not say runs as the list's first line says, `#![test]` or `#![tokio::test(…)]`,
/// and without that line as a plain `#[tokio::test]`.
///
/// ```text
/// coffer_testkit::on_each_backend! {
///     #![tokio::test(flavor = "multi_thread", worker_threads = 2)]
///     some_test,
///     #[tokio::test]
///     other_test,
///     #[test]
///     sync_test,
/// }
/// ```
///
/// The macro opens no store: the test opens its own with [`TestStore::open`]`(backend, …)` (or a
/// helper over it), whose `None` when PostgreSQL is missing makes the test return, skipped —
/// unless `COFFER_TEST_REQUIRE_SERVICES=1` makes that a failure. A function left out of the list
/// is dead code, which the lints refuse.
#[macro_export]
macro_rules! on_each_backend {
    (#!$run:tt $($(#$attr:tt)* $test:ident),* $(,)?) => {
        mod sqlite {
            $($crate::__backend_test!(Sqlite, $run, [$(#$attr)*], $test);)*
        }

        mod postgres {
            $($crate::__backend_test!(Postgres, $run, [$(#$attr)*], $test);)*
        }
    };
    ($($(#$attr:tt)* $test:ident),* $(,)?) => {
        $crate::on_each_backend!(#![tokio::test] $($(#$attr)* $test),*);
    };
}

/// One test of [`on_each_backend!`] on one backend: `$run` is how it runs unless its own first
/// attribute says otherwise.
#[doc(hidden)]
#[macro_export]
macro_rules! __backend_test {
    ($backend:ident, $run:tt, [#[test] $(#$attr:tt)*], $test:ident) => {
        $crate::__backend_test!($backend, [test], [$(#$attr)*], $test);
    };
    ($backend:ident, $run:tt, [#[tokio::test $($args:tt)?] $(#$attr:tt)*], $test:ident) => {
        $crate::__backend_test!($backend, [tokio::test $($args)?], [$(#$attr)*], $test);
    };
    ($backend:ident, [test], [$(#$attr:tt)*], $test:ident) => {
        #[test]
        $(#$attr)*
        pub(super) fn $test() {
            super::$test($crate::Backend::$backend)
        }
    };
    ($backend:ident, [tokio::test $($args:tt)?], [$(#$attr:tt)*], $test:ident) => {
        #[tokio::test $($args)?]
        $(#$attr)*
        pub(super) async fn $test() {
            super::$test($crate::Backend::$backend).await
        }
    };
    ($backend:ident, $run:tt, $attrs:tt, $test:ident) => {
        compile_error!("on_each_backend!: a test runs as #[test] or #[tokio::test(…)]");
    };
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
    use std::cell::Cell;

    use super::*;

    #[test]
    fn database_names_are_replaced_in_urls() {
        assert_eq!(with_database("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h1:1,h2:2?a=b", "x"), "postgres://u@h1:1,h2:2/x?a=b");
    }

    thread_local! {
        /// The backend the last test below ran with, on this thread, and how it ran.
        static RAN: Cell<Option<(Backend, &'static str)>> = const { Cell::new(None) };
    }

    fn record(backend: Backend) {
        let how = match tokio::runtime::Handle::try_current() {
            Err(_) => "sync",
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                "multi_thread"
            }
            Ok(_) => "current_thread",
        };
        RAN.set(Some((backend, how)));
    }

    fn sync_test(backend: Backend) {
        record(backend);
    }

    async fn by_default(backend: Backend) {
        record(backend);
    }

    async fn on_its_own(backend: Backend) {
        record(backend);
    }

    async fn ignored_test(backend: Backend) {
        record(backend);
    }

    on_each_backend! {
        #![tokio::test(flavor = "multi_thread", worker_threads = 1)]
        by_default,
        #[tokio::test]
        on_its_own,
        #[test]
        sync_test,
        #[ignore = "run by the test below"]
        ignored_test,
    }

    #[test]
    fn each_listed_test_runs_once_per_backend_as_its_attributes_say() {
        let cases: [(fn(), Backend, &str); 8] = [
            (sqlite::by_default, Backend::Sqlite, "multi_thread"),
            (postgres::by_default, Backend::Postgres, "multi_thread"),
            (sqlite::on_its_own, Backend::Sqlite, "current_thread"),
            (postgres::on_its_own, Backend::Postgres, "current_thread"),
            (sqlite::sync_test, Backend::Sqlite, "sync"),
            (postgres::sync_test, Backend::Postgres, "sync"),
            (sqlite::ignored_test, Backend::Sqlite, "multi_thread"),
            (postgres::ignored_test, Backend::Postgres, "multi_thread"),
        ];
        // Each runs on this thread, where it leaves its record.
        for (test, backend, how) in cases {
            RAN.set(None);
            test();
            assert_eq!(RAN.get(), Some((backend, how)));
        }
    }
}
