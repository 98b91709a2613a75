//! The gateway's upstream list follows its configuration file: SIGHUP reads the file again and
//! applies the list (upstreams that stay keep their state, removed ones drain and go), while a
//! file that does not load changes nothing and the gateway keeps serving.

mod common;

use std::time::{Duration, Instant};

use common::{GatewayProcess, Server, TOKEN, free_port};
use serde_json::Value;

/// The upstream URLs the gateway lists.
async fn listed(gateway: &GatewayProcess) -> Vec<String> {
    let list: Vec<Value> = gateway.upstreams().await;
    list.iter().map(|u| u["url"].as_str().unwrap().to_owned()).collect()
}

/// Waits until the gateway lists exactly `expected`.
async fn until_listed(gateway: &GatewayProcess, expected: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = listed(gateway).await;
        if now == expected {
            return;
        }
        assert!(Instant::now() < deadline, "the gateway lists {now:?}, not {expected:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn served(gateway: &GatewayProcess) -> u16 {
    let client = reqwest::Client::new();
    let answer = client.get(format!("{}/v1/ledgers", gateway.base)).bearer_auth(TOKEN).send().await;
    answer.unwrap().status().as_u16()
}

#[tokio::test]
async fn sighup_applies_the_upstream_list_of_the_file_and_a_bad_file_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let replica = Server::start(dir.path()).await;
    let live = format!("http://127.0.0.1:{}", replica.port());
    let spare = format!("http://127.0.0.1:{}", free_port());
    let file = dir.path().join("gateway.toml");
    let write =
        |upstreams: &str| std::fs::write(&file, format!("[gateway]\nupstreams = {upstreams}\n")).unwrap();
    write(&format!("[\"{live}\"]"));
    let (file_path, data_dir) = (file.to_str().unwrap(), dir.path().to_str().unwrap());
    let env = [("COFFER_CONFIG", file_path), ("COFFER_DATA_DIR", data_dir)];
    let gateway = GatewayProcess::start_with(&[], &env, tempfile::tempfile().unwrap()).await;
    assert_eq!(listed(&gateway).await, [live.as_str()]);

    write(&format!("[\"{live}\", \"{spare}\"]"));
    gateway.hang_up();
    until_listed(&gateway, &[&live, &spare]).await;

    // A list the gateway cannot take, then a file that is no TOML: nothing changes, and
    // requests keep flowing.
    for bad in ["[]".to_owned(), format!("[\"{live}\", \"ftp://x:1\"]"), "[\"".to_owned()] {
        write(&bad);
        gateway.hang_up();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(listed(&gateway).await, [live.as_str(), spare.as_str()], "after {bad}");
        assert_eq!(served(&gateway).await, 200);
    }

    write(&format!("[\"{live}\"]"));
    gateway.hang_up();
    until_listed(&gateway, &[&live]).await;
    assert_eq!(served(&gateway).await, 200);
}
