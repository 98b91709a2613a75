//! `coffer migrate` and `coffer keys` against PostgreSQL (`COFFER_DATABASE_URL`), and a server
//! on the same database honouring the keys they made.

mod common;

use std::process::Command;

use coffer_testkit::TestDatabase;
use common::Server;

fn coffer(database_url: &str, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .args(args)
        .env("COFFER_DATABASE_URL", database_url)
        .env("COFFER_LOG_LEVEL", "warn")
        .output()
        .expect("the coffer binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "coffer {args:?}: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_and_keys_work_on_postgres() {
    let Some(database) = TestDatabase::create().await else { return };
    let url = database.url.as_str();
    // Twice: the second run finds the schema current and reports the same version.
    let version = || {
        let printed = coffer(url, &["migrate"]);
        let number = printed.split("schema version ").nth(1).and_then(|rest| rest.trim().parse::<u32>().ok());
        number.unwrap_or_else(|| panic!("`coffer migrate` names the schema version: {printed}"))
    };
    let first = version();
    assert!(first >= 7, "every migration ran (bare tokens came with version 7): {first}");
    assert_eq!(version(), first);
    let created = coffer(url, &["keys", "create", "--scope", "read", "--name", "dashboard"]);
    let field = |name: &str| {
        created.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned()).expect(name)
    };
    let (id, token) = (field("id:"), field("token:"));
    assert!(coffer(url, &["keys", "list"]).contains(&id));

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_on_database(dir.path(), url).await;
    let ledgers = |token: String| {
        let base = format!("http://127.0.0.1:{}/v1/ledgers", server.port());
        async move { reqwest::Client::new().get(base).bearer_auth(token).send().await.unwrap().status() }
    };
    assert_eq!(ledgers(token.clone()).await, 200, "the key made by `coffer keys` works on the server");
    assert!(coffer(url, &["keys", "revoke", &id]).contains("revoked"));
    // The server trusts a verified key for its cache TTL (1 s), then sees the revocation.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(ledgers(token).await, 401, "a revoked key is refused");
}
