//! The server's JSON logs: every line a request causes carries its request id, and no secret —
//! a bearer token, a newly issued key's token — is ever written.

mod common;

use common::{Server, TOKEN};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_request_ids_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // Debug level, so that every request writes at least its own line.
    let server = Server::start_logging(
        &dir.path().join("data"),
        "coffer=debug,coffer_api=debug,coffer_store=debug,info",
        log,
    )
    .await;
    let base = format!("http://127.0.0.1:{}", server.port());
    let client = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, token: &str, body: Option<Value>| {
        let mut request = client.request(method, format!("{base}{path}")).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send()
    };

    let created =
        send(reqwest::Method::POST, "/v1/keys", TOKEN, Some(json!({"name": "logged", "scopes": ["write"]})))
            .await
            .unwrap();
    assert_eq!(created.status(), 201);
    let issued: Value = created.json().await.unwrap();
    let issued_token = issued["token"].as_str().unwrap().to_owned();

    let mut request_ids = Vec::new();
    let wrong_token = "cf_never-issued-but-secret-looking-0123456789";
    for (method, path, token, body) in [
        (
            reqwest::Method::POST,
            "/v1/ledgers",
            issued_token.as_str(),
            Some(json!({"code": "LOG", "scale": 2})),
        ),
        (reqwest::Method::GET, "/v1/ledgers/LOG", issued_token.as_str(), None),
        (reqwest::Method::GET, "/v1/ledgers", wrong_token, None),
        (
            reqwest::Method::POST,
            "/v1/ledgers",
            issued_token.as_str(),
            Some(json!({"code": "LOG", "scale": "x"})),
        ),
    ] {
        let response = send(method, path, token, body).await.unwrap();
        assert!(response.status().as_u16() < 500);
        request_ids.push(response.headers()["x-request-id"].to_str().unwrap().to_owned());
    }
    drop(server);

    let text = std::fs::read_to_string(&log_path).unwrap();
    for secret in [TOKEN_IN_HEADER, &issued_token, wrong_token] {
        assert!(!text.contains(secret), "the log holds a secret ({secret})");
    }
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")))
        .collect();
    for line in lines.iter().filter(|l| l["span"]["name"] == "request") {
        assert!(
            line["span"]["request_id"].as_str().is_some_and(|id| !id.is_empty()),
            "no request id: {line}"
        );
    }
    for id in &request_ids {
        assert!(
            lines.iter().any(|l| l["span"]["request_id"] == id.as_str()),
            "no log line for request {id}:\n{text}"
        );
    }
}

/// The bootstrap token as it travels; the token itself (`t`) is too short to search for.
const TOKEN_IN_HEADER: &str = "Bearer t\"";
