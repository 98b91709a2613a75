//! `coffer verify`: checks the store's history and tables against each other (see
//! `coffer_store::verify`), beside a running server. One line and exit 0 when all holds;
//! every discrepancy, one per line, and exit 1 otherwise. `--json` for machines.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::Config;

/// A progress bar on standard error when it is a terminal, nothing otherwise.
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Bar {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let style = ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} ({eta})")
            .expect("a valid template")
            .progress_chars("=> ");
        Bar(ProgressBar::with_draw_target(None, target).with_style(style))
    }
}

impl coffer_store::verify::Progress for Bar {
    fn stage(&self, name: &'static str, total: u64) {
        self.0.set_message(name);
        self.0.set_length(total);
        self.0.set_position(0);
    }

    fn advance(&self, rows: u64) {
        self.0.inc(rows);
    }
}

/// Verifies the configured store and reports; answers whether everything held.
pub async fn run(config: &Config, json: bool) -> anyhow::Result<bool> {
    let bar = Bar::new();
    let report = match &config.database_url {
        Some(url) => coffer_store::verify_postgres(url, &bar).await?,
        None => {
            let dir = config.data_dir.clone();
            let progress = Bar(bar.0.clone());
            tokio::task::spawn_blocking(move || coffer_store::verify_sqlite(&dir, &progress)).await??
        }
    };
    bar.0.finish_and_clear();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"holds": report.holds(), "report": report}))?
        );
    } else {
        for d in &report.discrepancies {
            println!("{} {}: {}", d.kind, d.record, d.detail);
        }
        println!("{}", report.summary());
    }
    Ok(report.holds())
}
