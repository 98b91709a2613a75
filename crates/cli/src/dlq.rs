//! `coffer dlq list|show|replay|discard`: the consumers' dead letters, through a running
//! server's admin endpoints (`/v1/admin/dead-letters`). Going through the API gives one command
//! for every deployment — the embedded store is locked by its server, and JetStream's dead
//! letters are the server's to reach — and the same authentication as everything else.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Args)]
pub struct DlqArgs {
    /// The server's base URL.
    #[arg(long, env = "COFFER_URL", default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    /// An admin API token.
    #[arg(long, env = "COFFER_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        /// Only this consumer's.
        #[arg(long)]
        consumer: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one dead letter with its event.
    Show { id: String },
    /// Hand a dead letter back to its consumer.
    Replay { id: String },
    /// Delete a dead letter for good.
    Discard { id: String },
}

pub async fn run(args: DlqArgs) -> anyhow::Result<()> {
    let Some(token) = args.token else { bail!("an admin token is needed: --token or COFFER_TOKEN") };
    let base = format!("{}/v1/admin/dead-letters", args.url.trim_end_matches('/'));
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build()?;
    let request = match &args.command {
        DlqCommand::List { consumer, limit } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(consumer.iter().map(|c| ("consumer", c.clone())));
            client.get(&base).query(&query)
        }
        DlqCommand::Show { id } => client.get(format!("{base}/{id}")),
        DlqCommand::Replay { id } => client.post(format!("{base}/{id}/replay")),
        DlqCommand::Discard { id } => client.delete(format!("{base}/{id}")),
    };
    let response =
        request.bearer_auth(token).send().await.with_context(|| format!("cannot reach {}", args.url))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("the server answered {status}: {body}");
    }
    match args.command {
        DlqCommand::Replay { id } => println!("dead letter {id} handed back to its consumer"),
        DlqCommand::Discard { id } => println!("dead letter {id} discarded"),
        _ => {
            let json: Value =
                serde_json::from_str(&body).context("the server answered something other than JSON")?;
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
    }
    Ok(())
}
