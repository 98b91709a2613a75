//! `coffer status`: what a running server reports about itself (`GET /v1/admin/status`), for a
//! person (one fact a line) or a machine (`--json`).

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use crate::server_args::{ServerArgs, refusal};

#[derive(Args)]
pub struct StatusArgs {
    /// The server and an admin API token.
    #[command(flatten)]
    server: ServerArgs,
    /// Print the server's JSON as it is.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let url = format!("{}/v1/admin/status", args.server.base());
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build()?;
    let response = client.get(&url).bearer_auth(args.server.token()?).send().await.with_context(|| {
        format!("cannot reach a server at {} (is it running? --url or COFFER_URL)", args.server.base())
    })?;
    let code = response.status();
    let body = response.text().await.unwrap_or_default();
    if !code.is_success() {
        return Err(refusal(code, &body));
    }
    let status: Value =
        serde_json::from_str(&body).context("the server answered something other than JSON")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let roles: Vec<String> = status["roles"].as_array().into_iter().flatten().map(text).collect();
    let queues = &status["queues"];
    let lines = [
        ("server", format!("{} (coffer {})", args.server.base(), text(&status["version"]))),
        (
            "ready",
            if status["ready"] == true { "yes".into() } else { "no: the store does not answer".into() },
        ),
        ("store", text(&status["store"])),
        ("bus", text(&status["bus"])),
        ("roles", roles.join(", ")),
        ("uptime", format!("{} s", status["uptime_seconds"])),
        ("outbox head", text(&queues["outbox_head"])),
        ("dead letters", text(&queues["dead_letters"])),
        (
            "event streams",
            format!("{} open of {}", queues["event_streams_open"], queues["event_streams_max"]),
        ),
    ];
    for (name, value) in lines {
        println!("{name:<14} {value}");
    }
    Ok(())
}
