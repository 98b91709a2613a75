//! The API description says what the server does: Schemathesis generates requests from the
//! served `/openapi.json` (valid ones and, deliberately, invalid ones) against the real
//! `coffer serve`, on the embedded store and on PostgreSQL, and fails on any answer the
//! document does not describe — a 5xx, an undocumented status, content type, header or body,
//! invalid data accepted, or valid data refused.
//!
//! CI runs a short, seeded version (`COFFER_SCHEMATHESIS_EXAMPLES`, default 10 per operation,
//! one worker); `scripts/schemathesis.sh` runs the long one. Skipped, naming Schemathesis, when
//! it is not installed (`scripts/python-test-deps.sh` installs it), unless
//! `COFFER_TEST_REQUIRE_SERVICES=1`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use coffer_testkit::TestDatabase;
use common::{Server, TOKEN};
use serde_json::json;

/// The checks every answer is held to.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,response_headers_conformance,\
                      negative_data_rejection,positive_data_acceptance";

/// The operation left out: an endless `text/event-stream`, which a request-and-answer fuzzer
/// can only time out on. `crates/api/tests/events.rs` tests it.
const EXCLUDED_PATH: &str = "/v1/events/stream";

/// The server runs without the worker role, so nothing delivers webhooks: the endpoints the
/// generated requests register name public hosts, and a test sends traffic only to loopback.
const ROLES: (&str, &str) = ("COFFER_ROLES", "api,relay");

/// Fewer operations than this tested means the run tested nothing worth the name.
const MIN_OPERATIONS: usize = 30;

fn settings_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/schemathesis")
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}

/// `python3 -c …` running Schemathesis's command line, with `args`.
fn schemathesis(args: &[&str]) -> Command {
    let mut command = Command::new("python3");
    command
        .args(["-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"])
        .args(args)
        .env("SCHEMATHESIS_HOOKS", settings_dir().join("hooks.py"))
        .env("NO_COLOR", "1");
    command
}

/// Schemathesis's version, or `None` (after skipping or failing as the environment says).
fn installed() -> Option<String> {
    let output = schemathesis(&["--version"]).stderr(Stdio::null()).output();
    match output {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            Some(format!("schemathesis {}", text.trim().rsplit(' ').next().unwrap_or_default()))
        }
        Ok(out) => coffer_testkit::missing(
            "schemathesis (install it with scripts/python-test-deps.sh)",
            format!("python3 -c 'from schemathesis.cli import …' exited with {}", out.status),
        ),
        Err(e) => coffer_testkit::missing("schemathesis (install it with scripts/python-test-deps.sh)", e),
    }
}

/// Requests the server answered, from its own `coffer_http_requests_total`.
async fn requests_served(server: &Server) -> u64 {
    let url = format!("http://127.0.0.1:{}/metrics", server.port());
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|line| line.starts_with("coffer_http_requests_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Runs Schemathesis against `server` and fails on any finding.
async fn conforms(server: &Server, store: &str) {
    let version = installed().expect("checked by the caller");
    // A ledger the document's example (`USD`) names, so generated requests reach past a 404.
    server.client().post_ok("/v1/ledgers", json!({"code": "USD", "scale": 2})).await;

    let examples = env_or("COFFER_SCHEMATHESIS_EXAMPLES", "10");
    let seed = env_or("COFFER_SCHEMATHESIS_SEED", "20260501");
    let workers = env_or("COFFER_SCHEMATHESIS_WORKERS", "1");
    let url = format!("http://127.0.0.1:{}/openapi.json", server.port());
    let auth = format!("Authorization: Bearer {TOKEN}");
    let config = settings_dir().join("schemathesis.toml");
    let config = config.to_str().unwrap();
    let args: Vec<String> = [
        "--config-file",
        config,
        "run",
        &url,
        "-H",
        &auth,
        "--checks",
        CHECKS,
        "--exclude-path",
        EXCLUDED_PATH,
        "--max-examples",
        &examples,
        "--seed",
        &seed,
        "--workers",
        &workers,
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        "--no-color",
    ]
    .map(str::to_owned)
    .into();
    // Its working directory is a temporary one: nothing it writes lands in the repository.
    let workdir = tempfile::tempdir().unwrap();
    let cwd = workdir.path().to_path_buf();
    let started = std::time::Instant::now();
    let output = tokio::task::spawn_blocking(move || {
        schemathesis(&args.iter().map(String::as_str).collect::<Vec<_>>()).current_dir(cwd).output()
    })
    .await
    .unwrap()
    .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout);
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "Schemathesis found answers /openapi.json does not describe:\n{report}\n{errors}"
    );

    // Not vacuous: the operations were found and tested, and requests were made.
    let tested = report
        .lines()
        .find_map(|line| line.trim().strip_prefix("Tested: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    assert!(tested >= MIN_OPERATIONS, "only {tested} operations tested:\n{report}");
    let summary = report.lines().find(|line| line.contains(" generated, ")).unwrap_or_default().trim();
    assert!(summary.contains("passed"), "no test case passed:\n{report}");
    let served = requests_served(server).await;
    assert!(served as usize >= tested * 10, "only {served} requests served:\n{report}");
    println!(
        "{version}: {store}: {tested} operations, {summary}, {served} requests served, 0 findings, \
         {examples} examples per operation, seed {seed}, {workers} worker(s), {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn the_embedded_store_answers_as_documented() {
    if installed().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &[ROLES]).await;
    conforms(&server, "embedded store (SQLite)").await;
}

#[tokio::test]
async fn the_postgres_store_answers_as_documented() {
    if installed().is_none() {
        return;
    }
    let Some(database) = TestDatabase::create().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_on_database_with(dir.path(), &database.url, &[ROLES]).await;
    conforms(&server, "PostgreSQL store").await;
}
