//! `coffer dlq list|show|replay|discard`: the consumers' dead letters, through a running
//! server's admin endpoints (`/v1/admin/dead-letters`). Going through the API gives one command
//! for every deployment — the embedded store is locked by its server, and JetStream's dead
//! letters are the server's to reach — and the same authentication as everything else.

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::server_args::refusal;
use crate::table;

#[derive(Args)]
pub struct DlqArgs {
    /// The server and an admin API token.
    #[command(flatten)]
    server: crate::server_args::ServerArgs,
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
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print the server's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter with its event, as JSON.
    Show {
        /// The dead letter's id, as `list` shows it.
        id: String,
    },
    /// Hand a dead letter back to its consumer.
    Replay {
        /// The dead letter's id, as `list` shows it.
        id: String,
    },
    /// Delete a dead letter for good.
    Discard {
        /// The dead letter's id, as `list` shows it.
        id: String,
    },
}

pub async fn run(args: DlqArgs) -> anyhow::Result<()> {
    let token = args.server.token()?;
    let base = format!("{}/v1/admin/dead-letters", args.server.base());
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build()?;
    let request = match &args.command {
        DlqCommand::List { consumer, limit, .. } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(consumer.iter().map(|c| ("consumer", c.clone())));
            client.get(&base).query(&query)
        }
        DlqCommand::Show { id } => client.get(format!("{base}/{id}")),
        DlqCommand::Replay { id } => client.post(format!("{base}/{id}/replay")),
        DlqCommand::Discard { id } => client.delete(format!("{base}/{id}")),
    };
    let response = request
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach the server at {}", args.server.base()))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(refusal(status, &body));
    }
    match args.command {
        DlqCommand::Replay { id } => println!("dead letter {id} handed back to its consumer"),
        DlqCommand::Discard { id } => println!("dead letter {id} discarded"),
        DlqCommand::List { json: false, .. } => print_table(&parse(&body)?),
        _ => println!("{}", serde_json::to_string_pretty(&parse(&body)?)?),
    }
    Ok(())
}

fn parse(body: &str) -> anyhow::Result<Value> {
    serde_json::from_str(body).context("the server answered something other than JSON")
}

/// One dead letter a line: the error cut to one line, so the table stays a table.
fn print_table(list: &Value) {
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let rows: Vec<Vec<String>> = list["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let error = text(&d["error"]).lines().next().unwrap_or_default().to_owned();
            let event = text(&d["event"]["type"]);
            vec![
                text(&d["id"]),
                text(&d["consumer"]),
                d["attempts"].to_string(),
                text(&d["failed_at"]),
                event,
                error,
            ]
        })
        .collect();
    table::print(&["ID", "CONSUMER", "ATTEMPTS", "FAILED AT", "EVENT", "ERROR"], &rows);
    if list["next_cursor"].is_string() {
        eprintln!("(more: raise --limit, or page with the API's cursor)");
    }
}
