//! The CLI as a newcomer meets it: mistakes answered with what to do, no store made in the wrong
//! directory, listings as tables or JSON, no secret in any help text, one rule for environment
//! names, completions. The real binary, no service needed.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{Server, TOKEN};

fn coffer(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coffer"))
        .current_dir(dir)
        .args(args)
        .env("COFFER_LOG_LEVEL", "warn")
        .envs(env.iter().copied())
        .output()
        .expect("the coffer binary runs")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn offline_commands_make_no_store_in_the_wrong_directory() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["keys", "list"][..], &["keys", "create", "--scope", "read"], &["migrate"]] {
        let refused = coffer(dir.path(), args, &[]);
        let (_, err) = text(&refused);
        assert_eq!(refused.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("no store in") && err.contains("--create"), "{args:?}: {err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{args:?} left files behind");
    }

    let created =
        coffer(dir.path(), &["keys", "create", "--scope", "read", "--name", "first", "--create"], &[]);
    let (out, err) = text(&created);
    assert!(created.status.success(), "{err}");
    let id = out.lines().find_map(|l| l.strip_prefix("id:")).expect("the id is printed").trim().to_owned();
    assert!(coffer(dir.path(), &["migrate"], &[]).status.success(), "the store exists now");

    let (table, _) = text(&coffer(dir.path(), &["keys", "list"], &[]));
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["ID", "STATE", "SCOPES", "CREATED", "NAME"], "{table}");
    assert!(lines.any(|l| l.starts_with(&id) && l.ends_with("first")), "{table}");

    let (json, _) = text(&coffer(dir.path(), &["keys", "list", "--json"], &[]));
    let key: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!((key["id"].as_str(), key["name"].as_str()), (Some(id.as_str()), Some("first")));
    assert_eq!(key["scopes"], serde_json::json!(["read"]));
}

#[test]
fn no_help_text_shows_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "coffer-secret-that-must-not-print";
    for args in [&["bench", "--help"][..], &["dlq", "--help"], &["dlq", "list", "--help"], &["--help"]] {
        let env = [("COFFER_TOKEN", secret), ("COFFER_URL", "http://127.0.0.1:1")];
        let (out, err) = text(&coffer(dir.path(), args, &env));
        assert!(!out.contains(secret) && !err.contains(secret), "{args:?} printed the token:\n{out}{err}");
    }
    let (help, _) = text(&coffer(dir.path(), &["bench", "--help"], &[]));
    assert!(help.contains("COFFER_URL") && help.contains("COFFER_TOKEN"), "bench takes both: {help}");
    // And acts on them: the server it tries is COFFER_URL's (nothing listens on port 1).
    let env = [("COFFER_TOKEN", secret), ("COFFER_URL", "http://127.0.0.1:1")];
    let tried = coffer(dir.path(), &["bench", "--seconds", "1"], &env);
    let (_, err) = text(&tried);
    assert!(!tried.status.success() && err.contains("127.0.0.1:1"), "{err}");
}

#[test]
fn a_misspelt_variable_or_log_level_stops_with_a_suggestion_and_check_prints_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let refused = coffer(dir.path(), &["config", "check"], &[("COFFER_STORE_BATCH_WAIT_US", "5")]);
    let (_, err) = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains("did you mean COFFER_STORE__BATCH_WAIT_US?"), "{err}");
    assert!(!err.contains("stack backtrace"), "{err}");

    let loud = coffer(dir.path(), &["config", "check"], &[("COFFER_LOG_LEVEL", "loud")]);
    assert_eq!(loud.status.code(), Some(1), "{}", text(&loud).1);
    assert!(text(&loud).1.contains("log_level"), "{}", text(&loud).1);

    let token = "operator-token-0123456789abcdefghijklmnop";
    let env = [
        ("COFFER_BOOTSTRAP_TOKEN", token),
        ("COFFER_STORE__BATCH_WAIT_US", "7"),
        ("COFFER_DATABASE_URL", "postgres://coffer:db-pa55word@db.invalid:5432/coffer"),
    ];
    let checked = coffer(dir.path(), &["config", "check"], &env);
    let (out, err) = text(&checked);
    assert!(checked.status.success(), "{err}");
    assert!(out.contains("batch_wait_us: 7"), "the effective configuration is printed: {out}");
    assert!(!out.contains(token) && !out.contains("db-pa55word"), "a secret was printed: {out}");
    assert!(err.contains("valid"), "{err}");
}

#[test]
fn completions_are_printed_for_each_shell() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, mark) in [("bash", "complete -F"), ("zsh", "#compdef coffer"), ("fish", "complete -c coffer")]
    {
        let (out, err) = text(&coffer(dir.path(), &["completions", shell], &[]));
        assert!(out.contains(mark) && out.contains("keys"), "{shell}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coffer_status_shows_what_the_running_server_reports() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let url = format!("http://127.0.0.1:{}", server.port());
    let here = dir.path();
    let status = coffer(here, &["status"], &[("COFFER_URL", &url), ("COFFER_TOKEN", TOKEN)]);
    let (out, err) = text(&status);
    assert!(status.status.success(), "{err}");
    let field = |name: &str| {
        let line = out.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {out}"));
        line[name.len()..].trim().to_owned()
    };
    assert_eq!(field("ready"), "yes");
    assert_eq!(field("store"), "sqlite");
    assert_eq!(field("bus"), "in-process");
    assert_eq!(field("roles"), "api, relay, worker");
    assert_eq!(field("dead letters"), "0");

    let (json, _) = text(&coffer(here, &["status", "--json", "--url", &url, "--token", TOKEN], &[]));
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["ready"], true);
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    assert!(json["queues"]["outbox_head"].is_i64(), "{json}");

    for (env, says) in [
        (vec![("COFFER_URL", url.as_str())], "an API token is needed"),
        (vec![("COFFER_URL", url.as_str()), ("COFFER_TOKEN", "not-a-key")], "(unauthorized, HTTP 401)"),
        (vec![("COFFER_URL", "http://127.0.0.1:1"), ("COFFER_TOKEN", TOKEN)], "cannot reach a server at"),
    ] {
        let refused = Command::new(env!("CARGO_BIN_EXE_coffer"))
            .current_dir(here)
            .arg("status")
            .env_remove("COFFER_TOKEN")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let (_, err) = text(&refused);
        assert!(!refused.status.success() && err.contains(says), "{env:?}: {err}");
    }
}
