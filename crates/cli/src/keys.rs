//! `coffer keys create|list|revoke`: manage API keys directly in the store, server running or not.

use std::path::Path;

use anyhow::{Context, bail};
use clap::Subcommand;
use coffer_store::{KeyId, NewApiKey, Scope, sqlite_admin};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its token (shown only this once).
    Create {
        /// read, write or admin; repeat for several.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        #[arg(long)]
        name: Option<String>,
        /// Requests per second for this key (default: the server's).
        #[arg(long)]
        rate_limit_per_second: Option<u32>,
    },
    /// List keys (never their tokens).
    List,
    /// Revoke a key at once.
    Revoke { id: uuid::Uuid },
}

pub fn run(data_dir: &Path, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create { scopes, name, rate_limit_per_second } => {
            let scopes = scopes
                .iter()
                .map(|s| {
                    Scope::parse(s).with_context(|| format!("unknown scope {s:?}: use read, write or admin"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            if rate_limit_per_second == Some(0) {
                bail!("--rate-limit-per-second must be at least 1");
            }
            let token = coffer_api::generate_token();
            let key = sqlite_admin::create_key(
                data_dir,
                NewApiKey {
                    id: KeyId(uuid::Uuid::now_v7()),
                    name,
                    scopes,
                    rate_limit_per_second,
                    token_hash: coffer_api::hash_token(&token),
                },
            )?;
            println!("id:    {}", key.id.0);
            println!("token: {token}");
        }
        KeysCommand::List => {
            for key in sqlite_admin::list_keys(data_dir)? {
                let scopes: Vec<&str> = key.scopes.iter().map(|s| s.as_str()).collect();
                let state = if key.revoked_at.is_some() { "revoked" } else { "active" };
                println!(
                    "{}  {:<8} {:<18} {}  created {}",
                    key.id.0,
                    state,
                    scopes.join(","),
                    key.name.as_deref().unwrap_or("-"),
                    key.created_at.to_rfc3339()
                );
            }
        }
        KeysCommand::Revoke { id } => {
            if !sqlite_admin::revoke_key(data_dir, KeyId(id))? {
                bail!("no key with id {id}");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}
