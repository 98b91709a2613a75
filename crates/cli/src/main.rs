//! `coffer`: the one binary. It parses the configuration and wires the roles together; the work
//! itself lives in the library crates.

mod api_server;
mod bench;
mod bench_events;
mod config;
mod dlq;
mod events;
mod gateway;
mod keys;
mod logging;
mod pipeline;
mod serve;
mod server_args;
mod status;
mod store;
mod table;
mod verify;
mod webhook_keys;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};
use coffer_store::AuditContext;

use crate::config::{Config, Overrides};

#[derive(Parser)]
#[command(name = "coffer", version, about = "Coffer: a wallet and transaction backend")]
struct Cli {
    /// Optional TOML configuration file (env COFFER_CONFIG).
    #[arg(long, global = true, env = "COFFER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (default 127.0.0.1:8080, data in ./coffer-data).
    Serve {
        /// Address to listen on (env COFFER_LISTEN).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Directory of the embedded store (env COFFER_DATA_DIR).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Roles to run, comma-separated (default all: api,relay,worker).
        #[arg(long, value_delimiter = ',')]
        roles: Option<Vec<config::Role>>,
    },
    /// Check the configuration (file, environment, flags) and print it with secrets masked;
    /// exit 1 on a problem, naming it.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Create or upgrade the store's schema, then exit.
    Migrate {
        /// Directory of the embedded store (env COFFER_DATA_DIR).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Make a new store when the data dir holds none (PostgreSQL: the database must exist,
        /// and migrate makes the schema in it).
        #[arg(long)]
        create: bool,
    },
    /// Manage API keys offline, directly in the store.
    Keys {
        /// Directory of the embedded store (env COFFER_DATA_DIR).
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Check that no record was changed behind the API: walk the outbox's hash chain, replay the
    /// events against the tables, check every balance and ledger. Safe beside a running server.
    /// Exit 0 when all holds; otherwise every discrepancy is printed and the exit code is 1.
    Verify {
        /// Directory of the embedded store (env COFFER_DATA_DIR); COFFER_DATABASE_URL for PostgreSQL.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure the event pipeline: relay throughput into JetStream and commit → consumer latency.
    BenchEvents(bench_events::BenchEventsArgs),
    /// Dead letters of the consumers, through a running server's admin endpoints.
    Dlq(dlq::DlqArgs),
    /// The outbox and the bus.
    Events {
        /// Directory of the embedded store (env COFFER_DATA_DIR).
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
        #[command(subcommand)]
        command: events::EventsCommand,
    },
    /// Load-test a running Coffer over HTTP and report throughput and latency.
    Bench(bench::BenchArgs),
    /// What a running server reports: version, store, bus, roles, readiness, queue depths.
    Status(status::StatusArgs),
    /// Print a shell completion script: `coffer completions bash > /etc/bash_completion.d/coffer`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Run the edge proxy in front of api replicas (default 127.0.0.1:8000).
    Gateway {
        /// Address clients connect to (env COFFER_GATEWAY__LISTEN).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Address of the gateway's own endpoints, /gateway/* (env COFFER_GATEWAY__ADMIN_LISTEN);
        /// needs an admin token (COFFER_GATEWAY__ADMIN_TOKEN or COFFER_GATEWAY__ADMIN_TOKEN_FILE).
        #[arg(long)]
        admin_listen: Option<std::net::SocketAddr>,
        /// The api replicas, comma-separated http:// URLs (env COFFER_GATEWAY__UPSTREAMS).
        #[arg(long, value_delimiter = ',')]
        upstreams: Option<Vec<String>>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load and validate the configuration as `coffer serve` would, and print it.
    Check {
        /// Check it as `coffer gateway` would (which needs upstreams) instead.
        #[arg(long)]
        gateway: bool,
    },
}

/// mimalloc instead of the system allocator: a proxied request or a ledger batch makes many
/// small, short-lived allocations across threads, where glibc's arenas spend their time in
/// locks and consolidation (it was a tenth of the gateway's profile under load).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A mistake of the user's (a setting, a port in use, a database that refuses) is one line on
/// standard error, `coffer: ` and the error with its causes, and exit code 1: never anyhow's
/// report with a backtrace, whatever `RUST_BACKTRACE` says. A panic is a bug and keeps Rust's
/// report, backtrace included when asked for.
fn main() {
    // One rustls crypto provider for the whole process, ring, as every TLS setup of Coffer's
    // names explicitly: libraries that build their TLS with rustls's process-wide default (the
    // redis client) need one chosen, and this binary links more than one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Err(err) = run(Cli::parse()) {
        fail(&err);
    }
}

/// Says what went wrong on one line and exits at once, with code 1 (or 70 when the store
/// stopped after a fatal error, see [`serve::Halted`]): background tasks are not wound down, so
/// nothing they would say on the way follows the line.
fn fail(err: &anyhow::Error) -> ! {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    eprintln!("coffer: {err:#}");
    let code = if err.downcast_ref::<serve::Halted>().is_some() { serve::Halted::EXIT_CODE } else { 1 };
    std::process::exit(code)
}

/// Who runs this process, for the audit trail's `cli:<user>`: the login name the shell
/// exported (`USER`, else `LOGNAME`), read here once and passed down. It names the operator; it
/// proves nothing (whoever can run `coffer keys` against the store can set it).
fn os_user() -> String {
    ["USER", "LOGNAME"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|user| !user.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Runs `work` on a new runtime; an error ends the process before the runtime (and the tasks
/// it still holds) is dropped.
fn block_on(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = runtime()?;
    match runtime.block_on(work) {
        Ok(()) => Ok(()),
        Err(err) => fail(&err),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let load_with = |overrides| Config::load(cli.config.as_deref(), overrides);
    let load = |listen, data_dir| load_with(Overrides { listen, data_dir, ..Default::default() });
    match cli.command {
        Command::Serve { listen, data_dir, roles } => {
            let config = load_with(Overrides { listen, data_dir, roles, ..Default::default() })?;
            logging::init(config.log_format, &config.log_level)?;
            block_on(serve::run(config))
        }
        Command::Config { command: ConfigCommand::Check { gateway } } => {
            let config = load(None, None)?;
            if gateway {
                config.gateway.validate()?;
            }
            println!("{:#?}", config.masked());
            eprintln!("the configuration is valid");
            Ok(())
        }
        Command::Migrate { data_dir, create } => {
            let config = load(None, data_dir)?;
            let version = match &config.database_url {
                Some(url) => runtime()?.block_on(coffer_store::postgres_migrate(url))?,
                None => {
                    store::require_existing(&config.data_dir, create)?;
                    i64::from(coffer_store::sqlite_admin::migrate(&config.data_dir)?)
                }
            };
            println!("store at {} is at schema version {version}", store::describe(&config));
            Ok(())
        }
        Command::Keys { data_dir, command } => {
            block_on(keys::run(&load(None, data_dir)?, command, &AuditContext::cli(&os_user())))
        }
        Command::Verify { data_dir, json } => {
            let config = load(None, data_dir)?;
            let holds = runtime()?.block_on(verify::run(&config, json))?;
            if !holds {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Dlq(args) => block_on(dlq::run(args)),
        Command::BenchEvents(args) => {
            let config = load(None, None)?;
            logging::init(config.log_format, &config.log_level)?;
            block_on(bench_events::run(&config, args))
        }
        Command::Events { data_dir, command } => {
            let config = load(None, data_dir)?;
            logging::init(config.log_format, &config.log_level)?;
            block_on(events::run(&config, command))
        }
        Command::Bench(args) => block_on(bench::run(args)),
        Command::Status(args) => block_on(status::run(args)),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "coffer", &mut std::io::stdout());
            Ok(())
        }
        Command::Gateway { listen, admin_listen, upstreams } => {
            let file = cli.config.clone();
            let load = move || {
                let gateway = config::GatewayOverrides { listen, admin_listen, upstreams: upstreams.clone() };
                Config::load(file.as_deref(), Overrides { gateway, ..Default::default() })
            };
            let config = load()?;
            logging::init(config.log_format, &config.log_level)?;
            block_on(gateway::run(config, load))
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// `coffer help <anything>` explains every flag and argument it accepts.
    #[test]
    fn every_flag_and_argument_has_help_text() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let command = Cli::command();
        command.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&command, "coffer", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:?}");
    }
}
