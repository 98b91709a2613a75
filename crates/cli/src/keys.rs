//! `coffer keys create|list|revoke`: manage API keys directly in the store, server running or not.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use coffer_store::{
    AdminChange, ApiKey, AuditContext, AuditTrail, KeyAdmin, KeyId, NewApiKey, PgStore, Scope, Store,
    StoreError, StoreResult, sqlite_admin,
};

use crate::config::Config;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its token (shown only this once).
    Create {
        /// read, write, admin or audit; repeat for several.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// A name to recognise the key by in listings.
        #[arg(long)]
        name: Option<String>,
        /// Requests per second for this key (default: the server's).
        #[arg(long)]
        rate_limit_per_second: Option<u32>,
        /// Make a new, empty store when the data dir holds none (without it, a missing store
        /// is an error: a mistyped directory should not get a store of its own).
        #[arg(long)]
        create: bool,
    },
    /// List keys (never their tokens).
    List {
        /// One JSON object a key instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key at once.
    Revoke {
        /// The key's id, as `list` shows it.
        id: uuid::Uuid,
    },
}

/// Where the keys are: a SQLite data dir, written beside a running server without its lock, or
/// the PostgreSQL database every replica shares.
enum Keys {
    DataDir(PathBuf),
    Database(Arc<PgStore>),
}

/// Every change is recorded in the audit trail, as `by`'s, in the transaction that makes it.
impl Keys {
    async fn create(&self, key: NewApiKey, by: &AuditContext) -> StoreResult<ApiKey> {
        match self {
            Keys::DataDir(dir) => sqlite_admin::create_key(dir, key, by),
            Keys::Database(store) => store
                .administer(AdminChange::CreateKey(key), by)
                .await?
                .effect
                .made_key()
                .ok_or_else(|| StoreError::unavailable("a key create made no key")),
        }
    }

    async fn list(&self) -> StoreResult<Vec<ApiKey>> {
        match self {
            Keys::DataDir(dir) => sqlite_admin::list_keys(dir),
            Keys::Database(store) => store.keys().await,
        }
    }

    async fn revoke(&self, id: KeyId, by: &AuditContext) -> StoreResult<bool> {
        match self {
            Keys::DataDir(dir) => sqlite_admin::revoke_key(dir, id, by),
            Keys::Database(store) => {
                Ok(store.administer(AdminChange::RevokeKey(id), by).await?.effect.applied())
            }
        }
    }
}

/// Runs `command`; `by` names the operating-system user in the audit trail.
pub async fn run(config: &Config, command: KeysCommand, by: &AuditContext) -> anyhow::Result<()> {
    let keys = match &config.database_url {
        Some(url) => Keys::Database(
            PgStore::connect(url, config.store.clone()).await.context("cannot open the PostgreSQL store")?,
        ),
        None => {
            let create = matches!(command, KeysCommand::Create { create: true, .. });
            crate::store::require_existing(&config.data_dir, create)?;
            Keys::DataDir(config.data_dir.clone())
        }
    };
    let result = manage(&keys, command, by).await;
    if let Keys::Database(store) = &keys {
        store.shutdown().await;
    }
    result
}

async fn manage(keys: &Keys, command: KeysCommand, by: &AuditContext) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create { scopes, name, rate_limit_per_second, .. } => {
            let scopes = scopes
                .iter()
                .map(|s| {
                    Scope::parse(s)
                        .with_context(|| format!("unknown scope {s:?}: use read, write, admin or audit"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            if rate_limit_per_second == Some(0) {
                bail!("--rate-limit-per-second must be at least 1");
            }
            let token = coffer_api::generate_token();
            let key = keys
                .create(
                    NewApiKey {
                        id: KeyId(uuid::Uuid::now_v7()),
                        name,
                        scopes,
                        rate_limit_per_second,
                        expires_at: None,
                        token_hash: coffer_store::TokenHash::of(&token),
                        bare_token: false,
                    },
                    by,
                )
                .await?;
            println!("id:    {}", key.id.0);
            println!("token: {token}");
        }
        KeysCommand::List { json } => {
            let keys = keys.list().await?;
            if json {
                for key in &keys {
                    println!("{}", serde_json::to_string(&key_json(key))?);
                }
                return Ok(());
            }
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|key| {
                    let scopes: Vec<&str> = key.scopes.iter().map(|s| s.as_str()).collect();
                    let state = if key.revoked_at.is_some() { "revoked" } else { "active" };
                    vec![
                        key.id.0.to_string(),
                        state.to_owned(),
                        scopes.join(","),
                        key.created_at.to_rfc3339(),
                        key.name.clone().unwrap_or_else(|| "-".to_owned()),
                    ]
                })
                .collect();
            crate::table::print(&["ID", "STATE", "SCOPES", "CREATED", "NAME"], &rows);
        }
        KeysCommand::Revoke { id } => {
            if !keys.revoke(KeyId(id), by).await? {
                bail!("no key with id {id}");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}

/// A key as `keys list --json` prints it: what the API's `GET /v1/keys` shows, never a token.
fn key_json(key: &ApiKey) -> serde_json::Value {
    serde_json::json!({
        "id": key.id.0,
        "name": key.name,
        "scopes": key.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "rate_limit_per_second": key.rate_limit_per_second,
        "created_at": key.created_at.to_rfc3339(),
        "expires_at": key.expires_at.map(|t| t.to_rfc3339()),
        "revoked_at": key.revoked_at.map(|t| t.to_rfc3339()),
    })
}
