//! The README's curl walk-through, run as written (only the port differs) against the real binary.

mod common;

use std::process::Command;

use common::Server;
use serde_json::Value;

/// The first ```sh block after the walk-through's heading.
fn walk_through() -> String {
    let readme = include_str!("../../../README.md");
    let section = &readme[readme.find("## A walk through the API").expect("the README has a walk-through")..];
    let start = section.find("```sh\n").expect("the walk-through has a sh block") + "```sh\n".len();
    let end = start + section[start..].find("```").expect("the sh block is closed");
    section[start..end].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curl_walk_through_works_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let script = walk_through().replace("localhost:8080", &format!("127.0.0.1:{}", server.port()));
    assert!(script.matches("curl ").count() >= 8, "the walk-through lost its requests:\n{script}");

    // Twice: the second run replays every write, which must change nothing.
    for run in ["first", "second"] {
        let output = Command::new("sh").args(["-euc", &script]).output().expect("sh and curl are installed");
        assert!(output.status.success(), "{run} run failed: {}", String::from_utf8_lossy(&output.stderr));
        // curl prints the bodies back to back; each is one JSON document.
        let answers: Vec<Value> = serde_json::Deserializer::from_slice(&output.stdout)
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("every answer is JSON");
        assert_eq!(answers.len(), 8, "{run} run: {answers:#?}");
        assert!(
            answers.iter().all(|a| a.get("status").is_none_or(|s| !s.is_u64())),
            "an error: {answers:#?}"
        );

        let wallet = &answers[6];
        let balance = &wallet["balance"];
        assert_eq!(balance["credits_posted"], 10_000, "{run} run: {wallet}");
        assert_eq!(balance["debits_posted"], 2_000, "{run} run: {wallet}");
        assert_eq!(balance["debits_pending"], 0, "the unposted $5.00 is released: {wallet}");
        let listed: Vec<&str> =
            answers[7]["data"].as_array().unwrap().iter().map(|t| t["status"].as_str().unwrap()).collect();
        assert_eq!(listed, ["posted", "posted", "posted"], "{run} run: the funding, the hold, its post");
    }
}
