//! `coffer events republish --from <position>`: re-drives the outbox into JetStream from a
//! position, for a broker that lost messages it had acknowledged (DESIGN §1: the outbox, not the
//! broker, is the source of truth). Events still inside the stream's duplicate window are
//! dropped by the server; older ones are stored again and consumers skip what they processed.

use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use coffer_events::{Bus, JetStreamBus, StreamRole};
use coffer_store::Store;
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;

#[derive(Subcommand)]
pub enum EventsCommand {
    /// Publish the outbox again from a position (inclusive) to its end.
    Republish {
        /// The first outbox position (the CloudEvents `sequence`) to publish again.
        #[arg(long)]
        from: i64,
    },
}

const PAGE: usize = 1000;

pub async fn run(config: &Config, command: EventsCommand) -> anyhow::Result<()> {
    let EventsCommand::Republish { from } = command;
    if from < 1 {
        bail!("--from must be a position of 1 or more");
    }
    let Some(nats) = config.nats() else {
        bail!(
            "nats_url is not set: the in-process bus reads the outbox itself, there is nothing to republish"
        );
    };
    let store: Arc<dyn Store> = crate::store::open(config).await?;
    // Republishing is the relay's work, done with the relay's NATS user.
    let bus = JetStreamBus::connect_with(&nats, &config.events.stream_settings(), StreamRole::Manage)
        .await
        .context("cannot reach NATS JetStream (nats_url)")?;
    let progress = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} republished {pos} events ({per_sec}), at position {msg}")
            .expect("a valid template"),
    );
    let mut position = from - 1;
    let result = async {
        loop {
            let events = store.events_after(position, PAGE).await?;
            let Some(last) = events.last() else { break };
            bus.publish(&events).await?;
            position = last.position;
            progress.inc(events.len() as u64);
            progress.set_message(position.to_string());
        }
        anyhow::Ok(())
    }
    .await;
    progress.finish();
    store.shutdown().await;
    result?;
    println!("republished {} events from position {from} to {position}", progress.position());
    Ok(())
}
