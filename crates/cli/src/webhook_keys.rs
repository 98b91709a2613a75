//! Where the keys that seal webhook signing secrets come from (docs/DECISIONS.md, "Webhook
//! hardening"):
//! - `webhook_secret_keys`, or `webhook_secret_key_file` (one key a line), when set;
//! - otherwise, on the embedded store, a key file in `data_dir` made on first start, readable
//!   by its owner only: a single process owns the data dir, so its key is where the data is and
//!   backs up with it, and a development setup needs no step;
//! - otherwise (PostgreSQL) nothing: the server refuses to start. Every replica must open what
//!   any other sealed, and a key made on one replica's disk would leave the others unable to
//!   sign, so the key is the operator's to provision, like the database password.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use coffer_events::{SecretKey, SecretKeys};

use crate::config::{Config, Role};

/// The key file the embedded store makes in its data dir.
pub const DATA_DIR_KEY_FILE: &str = "webhook-secret-keys";

/// Whether a role of this process handles webhook secrets: the API makes and rotates them, the
/// worker signs with them. A relay alone never touches one.
pub fn needed(config: &Config) -> bool {
    config.roles.iter().any(|role| matches!(role, Role::Api | Role::Worker))
}

/// Whether [`load`] only reads the configuration (keys set, a key file, or PostgreSQL, which
/// refuses to start without one) rather than making the embedded store's key file in
/// `data_dir`: then it can run before anything is created.
pub fn configured(config: &Config) -> bool {
    !config.webhook_secret_keys.0.is_empty()
        || config.webhook_secret_key_file.is_some()
        || config.database_url.is_some()
}

/// The configured keys, or the embedded store's own; an error says what to configure.
pub fn load(config: &Config) -> anyhow::Result<SecretKeys> {
    if !config.webhook_secret_keys.0.is_empty() {
        let keys = config.webhook_secret_keys.0.iter().map(|text| SecretKey::parse(text));
        let keys = keys.collect::<Result<Vec<_>, _>>().context("invalid webhook_secret_keys")?;
        return SecretKeys::new(keys).context("invalid webhook_secret_keys");
    }
    if let Some(path) = &config.webhook_secret_key_file {
        return read(path);
    }
    if config.database_url.is_some() {
        bail!(
            "webhook signing secrets are encrypted at rest, and with PostgreSQL every replica needs \
             the same key: set webhook_secret_keys or webhook_secret_key_file (a line `<id>:<base64 of \
             32 random bytes>`, e.g. `echo \"k1:$(head -c32 /dev/urandom | base64)\"`)"
        );
    }
    let path = config.data_dir.join(DATA_DIR_KEY_FILE);
    if !path.exists() {
        create(&path)?;
    }
    read(&path)
}

/// Reads a key file, refusing one that others may read.
fn read(path: &Path) -> anyhow::Result<SecretKeys> {
    check_private(path)?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the webhook secret key file {}", path.display()))?;
    SecretKeys::parse_file(&text)
        .with_context(|| format!("invalid webhook secret key file {}", path.display()))
}

/// A new key file with one fresh key, created only if none is there, owner-only from the start
/// (never a moment world-readable), and on disk before any secret is sealed with it.
fn create(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let id = format!("k{}", coffer_ledger::Timestamp::now().as_micros() / 1_000_000);
    let key = SecretKey::generate(&id).expect("a valid key id");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create the webhook key file {}", path.display()))?;
    let text = format!(
        "# Seals the webhook signing secrets of this data dir. Keep it with the data dir's backups:\n\
         # without it no endpoint's deliveries can be signed. The first key seals; all open.\n{}\n",
        key.encoded().as_str()
    );
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .context("cannot write the webhook key file")?;
    tracing::info!(path = %path.display(), key_id = key.id(), "made a webhook secret key file");
    Ok(())
}

#[cfg(unix)]
fn check_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read the webhook secret key file {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "the webhook secret key file {} may be read by others (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o777
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretKeyList;

    #[test]
    fn the_embedded_store_makes_an_owner_only_key_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { data_dir: dir.path().join("data"), ..Config::default() };
        let first = load(&config).unwrap();
        let path = config.data_dir.join(DATA_DIR_KEY_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(load(&config).unwrap().sealing_id(), first.sealing_id(), "the same key on restart");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let refused = load(&config).unwrap_err().to_string();
            assert!(refused.contains("chmod 600"), "{refused}");
        }
    }

    #[test]
    fn postgresql_needs_a_configured_key_and_configured_keys_win() {
        let dir = tempfile::tempdir().unwrap();
        let on_postgres = Config {
            data_dir: dir.path().to_owned(),
            database_url: Some("postgres://db/coffer".into()),
            ..Config::default()
        };
        let refused = load(&on_postgres).unwrap_err().to_string();
        assert!(refused.contains("webhook_secret_keys"), "{refused}");
        assert!(!dir.path().join(DATA_DIR_KEY_FILE).exists(), "no key made for PostgreSQL");

        let key = SecretKey::generate("2026-12").unwrap().encoded().to_string();
        let old = SecretKey::generate("2026-06").unwrap().encoded().to_string();
        let configured = Config { webhook_secret_keys: SecretKeyList(vec![key, old]), ..on_postgres };
        assert_eq!(load(&configured).unwrap().sealing_id(), "2026-12");
        let bad = Config { webhook_secret_keys: SecretKeyList(vec!["k:short".into()]), ..configured };
        assert!(load(&bad).is_err());
    }
}
