//! `metrics_listen`: `/metrics` on a listener of its own, and no longer on the API's, which
//! answers it like any unknown path.

mod common;

use common::{Server, free_port};

#[tokio::test]
async fn metrics_move_to_their_own_listener_and_leave_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let server = Server::start_with_env(dir.path(), &[("COFFER_METRICS_LISTEN", &listen)]).await;
    let http = server.client();
    // A request to count.
    let (status, _) = http.get("/v1/ledgers").await;
    assert_eq!(status, 200);

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let on_api = client.get(format!("http://127.0.0.1:{}/metrics", server.port())).send().await.unwrap();
    assert_eq!(on_api.status(), 404, "the API no longer serves /metrics");
    let problem: serde_json::Value = on_api.json().await.unwrap();
    assert_eq!(problem["code"], "not_found");

    let scraped = client.get(format!("http://{listen}/metrics")).send().await.unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(scraped.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = scraped.text().await.unwrap();
    assert!(text.contains("coffer_http_requests_total"), "{text}");
    let elsewhere = client.get(format!("http://{listen}/v1/ledgers")).send().await.unwrap();
    assert_eq!(elsewhere.status(), 404, "the metrics listener serves nothing else");
}
