//! The one typed configuration: defaults, then an optional TOML file, then `COFFER_*` environment
//! variables, then command-line flags. Validated once at start and passed down explicitly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use coffer_api::ApiConfig;
use coffer_events::{EventsConfig, NatsConnection, Secret};
use coffer_gateway::GatewayConfig;
use coffer_store::StoreConfig;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

mod env_names;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// JSON, unless standard error is a terminal.
    #[default]
    Auto,
    Json,
    Text,
}

/// What a `coffer serve` process does (DESIGN §1); every role unless told otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The HTTP API.
    Api,
    /// Publishes the outbox to NATS JetStream (with `nats_url`; the in-process bus needs none).
    Relay,
    /// Runs the consumers: the projection and the webhook deliveries.
    Worker,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The roles this process runs: a list, or a comma-separated string (`COFFER_ROLES=api,worker`).
    #[serde(deserialize_with = "roles")]
    pub roles: Vec<Role>,
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// The API over TLS (https only): a PEM certificate chain and its PEM private key, both or
    /// neither (`COFFER_TLS_CERT_PATH`, `COFFER_TLS_KEY_PATH`).
    pub tls_cert_path: Option<PathBuf>,
    pub tls_key_path: Option<PathBuf>,
    /// When set, `/metrics` is served here alone and no longer on `listen` (which answers it
    /// 404): scrapes stay on an internal address, and a process without the api role has
    /// metrics too.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the embedded store keeps its files.
    pub data_dir: PathBuf,
    /// PostgreSQL connection string (several hosts allowed); when set, the store is PostgreSQL
    /// and `data_dir` is not used.
    pub database_url: Option<String>,
    /// NATS URL; when set, events go through NATS JetStream instead of the in-process bus.
    pub nats_url: Option<String>,
    /// This process's NATS user and password (both or neither). The shipped server
    /// configurations have one user for the relay and one for workers (deploy/nats/).
    pub nats_user: Option<String>,
    pub nats_password: Option<Secret>,
    /// The authorities (PEM) the NATS servers' certificates must chain to.
    pub nats_tls_ca_path: Option<PathBuf>,
    /// A client certificate and key (PEM) for servers that verify clients; both or neither.
    pub nats_tls_cert_path: Option<PathBuf>,
    pub nats_tls_key_path: Option<PathBuf>,
    /// Refuse NATS servers that do not speak TLS.
    pub nats_require_tls: bool,
    /// Redis URL: `coffer gateway` shares its rate limits through it (local limits without it,
    /// and while it is down).
    pub redis_url: Option<String>,
    /// The authorities (PEM) a `rediss://` server's certificate must chain to; unset, the
    /// system's.
    pub redis_tls_ca_path: Option<PathBuf>,
    /// Lets webhook URLs point at loopback and private addresses (refused by default against
    /// server-side request forgery): for tests and closed networks.
    pub webhook_allow_private_networks: bool,
    /// Lets webhook URLs be plain `http://` (refused by default: a delivery in clear can be
    /// read and its receiver impersonated on the way): for tests and local setups.
    pub webhook_allow_insecure_http: bool,
    /// The keys that seal webhook signing secrets at rest, each `<id>:<base64 of 32 bytes>`, a
    /// list or one comma-separated string; the first seals, all open (key rotation). Or:
    pub webhook_secret_keys: SecretKeyList,
    /// a file of such keys, one a line, readable by its owner only. With neither, the embedded
    /// store makes `webhook-secret-keys` in `data_dir`; PostgreSQL refuses to start.
    pub webhook_secret_key_file: Option<PathBuf>,
    /// Becomes an admin key when the store has none.
    pub bootstrap_token: Option<String>,
    pub log_format: LogFormat,
    /// `tracing` filter, e.g. `info` or `coffer_store=debug,info`.
    pub log_level: String,
    /// How long a shutdown waits for in-flight requests before it gives up.
    pub shutdown_timeout_ms: u64,
    pub store: StoreConfig,
    pub api: ApiConfig,
    pub events: EventsConfig,
    /// `coffer gateway`'s settings (`[gateway]` in the file, `COFFER_GATEWAY_*` in the
    /// environment); checked only when the gateway runs.
    pub gateway: GatewayConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            roles: vec![Role::Api, Role::Relay, Role::Worker],
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_cert_path: None,
            tls_key_path: None,
            metrics_listen: None,
            data_dir: PathBuf::from("./coffer-data"),
            database_url: None,
            nats_url: None,
            nats_user: None,
            nats_password: None,
            nats_tls_ca_path: None,
            nats_tls_cert_path: None,
            nats_tls_key_path: None,
            nats_require_tls: false,
            redis_url: None,
            redis_tls_ca_path: None,
            webhook_allow_private_networks: false,
            webhook_allow_insecure_http: false,
            webhook_secret_keys: SecretKeyList::default(),
            webhook_secret_key_file: None,
            bootstrap_token: None,
            log_format: LogFormat::Auto,
            log_level: "info".to_owned(),
            shutdown_timeout_ms: 30_000,
            store: StoreConfig::default(),
            api: ApiConfig::default(),
            events: EventsConfig::default(),
            gateway: GatewayConfig::default(),
        }
    }
}

/// Roles from a list (`roles = ["api"]`) or from one comma-separated string (the environment).
fn roles<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Role>, D::Error> {
    coffer_gateway::list_setting(d)?
        .iter()
        .map(|role| Role::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(role.trim())))
        .collect()
}

/// The configured webhook secret keys, as text. Its `Debug` shows how many there are and
/// nothing of them, so a logged configuration holds no key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretKeyList(pub Vec<String>);

impl std::fmt::Debug for SecretKeyList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKeyList({} keys)", self.0.len())
    }
}

impl<'de> Deserialize<'de> for SecretKeyList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        coffer_gateway::list_setting(d).map(SecretKeyList)
    }
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<Role>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "GatewayOverrides::is_empty")]
    pub gateway: GatewayOverrides,
}

/// `coffer gateway`'s flags.
#[derive(Debug, Default, Serialize)]
pub struct GatewayOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<Vec<String>>,
}

impl GatewayOverrides {
    fn is_empty(&self) -> bool {
        self.listen.is_none() && self.admin_listen.is_none() && self.upstreams.is_none()
    }
}

impl Config {
    /// Reads the configuration: `file` (or `COFFER_CONFIG`), then the environment, then `overrides`.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> anyhow::Result<Self> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                bail!("configuration file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file(path));
        }
        let keys = Self::keys();
        for (variable, _) in std::env::vars_os() {
            if let Some(variable) = variable.to_str() {
                keys.key_of(variable).map_err(anyhow::Error::msg)?;
            }
        }
        // Every variable was checked above: here each is only mapped to its key.
        let env = Env::raw().filter_map(move |name| {
            keys.key_of(&name.as_str().to_ascii_uppercase()).ok().flatten().map(Into::into)
        });
        let config: Config = figment
            .merge(env)
            .merge(Serialized::defaults(overrides))
            .extract()
            .context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }

    /// The keys the file and the environment may set.
    fn keys() -> env_names::Keys {
        env_names::Keys {
            top: env_names::fields_of::<Config>(),
            sections: vec![
                ("store", env_names::fields_of::<StoreConfig>()),
                ("api", env_names::fields_of::<ApiConfig>()),
                ("events", env_names::fields_of::<EventsConfig>()),
                ("gateway", env_names::fields_of::<GatewayConfig>()),
            ],
        }
    }

    /// The same configuration with every secret masked, for printing: the bootstrap token, and
    /// the password a URL may carry (`postgres://coffer:…@db/coffer`). The other secrets'
    /// types print masked already.
    pub fn masked(&self) -> Config {
        let mut masked = self.clone();
        masked.bootstrap_token = masked.bootstrap_token.map(|_| MASK.to_owned());
        for url in [&mut masked.database_url, &mut masked.nats_url, &mut masked.redis_url] {
            *url = url.as_deref().map(mask_password);
        }
        masked
    }

    /// How this process reaches NATS, when `nats_url` is set.
    pub fn nats(&self) -> Option<NatsConnection> {
        let url = self.nats_url.as_ref()?;
        Some(NatsConnection {
            url: url.clone(),
            user: self.nats_user.clone().zip(self.nats_password.clone()),
            tls_ca_path: self.nats_tls_ca_path.clone(),
            tls_client: self.nats_tls_cert_path.clone().zip(self.nats_tls_key_path.clone()),
            require_tls: self.nats_require_tls,
        })
    }

    fn validate(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            bail!("redis_url must be a redis:// or rediss:// URL");
        }
        if self.tls_cert_path.is_some() != self.tls_key_path.is_some() {
            bail!("tls_cert_path and tls_key_path must be set together");
        }
        if self.roles.is_empty() {
            bail!("roles must name at least one of api, relay, worker");
        }
        if let Some(url) = &self.nats_url
            && !(url.starts_with("nats://") || url.starts_with("tls://"))
        {
            bail!("nats_url must be a nats:// or tls:// URL");
        }
        if self.nats_user.is_some() != self.nats_password.is_some() {
            bail!("nats_user and nats_password must be set together");
        }
        if self.nats_tls_cert_path.is_some() != self.nats_tls_key_path.is_some() {
            bail!("nats_tls_cert_path and nats_tls_key_path must be set together");
        }
        self.events.validate().map_err(anyhow::Error::msg)?;
        if let Some(url) = &self.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            bail!("database_url must be a postgres:// or postgresql:// URL");
        }
        if !self.webhook_secret_keys.0.is_empty() && self.webhook_secret_key_file.is_some() {
            bail!("set webhook_secret_keys or webhook_secret_key_file, not both");
        }
        if self.bootstrap_token.as_deref().is_some_and(str::is_empty) {
            bail!("bootstrap_token must not be empty");
        }
        // An operator's own admin token is compared, not checksummed: reachable from the network
        // it must be as hard to guess as one Coffer makes. On loopback a short one is a
        // convenience for a laptop (the README's `t`).
        let short = self
            .bootstrap_token
            .as_ref()
            .is_some_and(|t| t.len() < coffer_api::MIN_EXPOSED_BOOTSTRAP_TOKEN_LEN);
        if short && !self.listen.ip().is_loopback() {
            bail!(
                "bootstrap_token must be at least {} characters when listen ({}) is not a loopback address",
                coffer_api::MIN_EXPOSED_BOOTSTRAP_TOKEN_LEN,
                self.listen
            );
        }
        check_log_level(&self.log_level)?;
        self.store.validate()?;
        self.api.validate()?;
        Ok(())
    }
}

const MASK: &str = "<masked>";

/// `url` with the password of its user information masked; several hosts
/// (`postgres://u:p@h1,h2/db`) are one authority here, as they are to PostgreSQL.
fn mask_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let authority_end = url[scheme_end..].find(['/', '?', '#']).map_or(url.len(), |i| scheme_end + i);
    let Some(at) = url[scheme_end..authority_end].rfind('@').map(|i| scheme_end + i) else {
        return url.to_owned();
    };
    match url[scheme_end..at].find(':').map(|i| scheme_end + i) {
        Some(colon) => format!("{}{MASK}{}", &url[..=colon], &url[at..]),
        None => url.to_owned(),
    }
}

/// A `tracing` filter whose every directive ends in a level: `info`, `coffer_store=debug,warn`.
/// A bare word that is no level (`loud`) would be taken for a module's name and silence every
/// other log line, so it is refused.
fn check_log_level(filter: &str) -> anyhow::Result<()> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let directives: Vec<&str> = filter.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    if directives.is_empty() {
        bail!("log_level is empty: use one of {}, or target=level", LEVELS.join(", "));
    }
    for directive in directives {
        let level = directive.rsplit_once('=').map_or(directive, |(_, level)| level);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            bail!(
                "log_level {filter:?}: {directive:?} is no level; use one of {}, or target=level",
                LEVELS.join(", ")
            );
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter).with_context(|| format!("log_level {filter:?}"))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail fixes the closure's error type
mod tests {
    use super::*;

    #[test]
    fn file_then_environment_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("coffer.toml", "listen = \"127.0.0.1:9000\"\n[store]\nbatch_wait_us = 7\n")?;
            jail.set_env("COFFER_DATA_DIR", "/tmp/from-env");
            jail.set_env("COFFER_STORE__QUEUE_CAPACITY", "12");
            jail.set_env("COFFER_TEST_REQUIRE_SERVICES", "1");
            jail.set_env("COFFER_ROLES", "api, worker");
            let overrides = Overrides { data_dir: Some("/tmp/from-flag".into()), ..Default::default() };
            let config =
                Config::load(Some(Path::new("coffer.toml")), overrides).map_err(|e| e.to_string())?;
            assert_eq!(config.listen.port(), 9000);
            assert_eq!(config.store.batch_wait_us, 7);
            assert_eq!(config.store.queue_capacity, 12);
            assert_eq!(config.data_dir, PathBuf::from("/tmp/from-flag"));
            assert_eq!(config.roles, vec![Role::Api, Role::Worker]);
            assert!(config.gateway.upstreams.0.is_empty(), "serve does not need upstreams");
            Ok(())
        });
    }

    #[test]
    fn webhook_settings_from_file_and_environment_and_keys_stay_out_of_debug() {
        figment::Jail::expect_with(|jail| {
            let key = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
            jail.set_env("COFFER_WEBHOOK_ALLOW_INSECURE_HTTP", "true");
            jail.set_env("COFFER_WEBHOOK_SECRET_KEYS", format!("{key}, k0:AAAA"));
            let config = Config::load(None, Overrides::default()).map_err(|e| e.to_string())?;
            assert!(config.webhook_allow_insecure_http && !config.webhook_allow_private_networks);
            assert_eq!(config.webhook_secret_keys.0, vec![key.to_owned(), " k0:AAAA".to_owned()]);
            assert!(!format!("{config:?}").contains("AAECAwQF"), "no key in the Debug text");
            jail.create_file("both.toml", "webhook_secret_key_file = \"keys\"\n")?;
            assert!(Config::load(Some(Path::new("both.toml")), Overrides::default()).is_err(), "both");
            Ok(())
        });
        figment::Jail::expect_with(|_| {
            let config = Config::load(None, Overrides::default()).map_err(|e| e.to_string())?;
            assert!(!config.webhook_allow_insecure_http, "https only by default");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "lisen = \"127.0.0.1:9000\"\n")?;
            assert!(Config::load(Some(Path::new("bad.toml")), Overrides::default()).is_err());
            jail.create_file("zero.toml", "[store]\nqueue_capacity = 0\n")?;
            jail.create_file("roles.toml", "roles = [\"api\", \"cook\"]\n")?;
            assert!(Config::load(Some(Path::new("roles.toml")), Overrides::default()).is_err());
            jail.create_file("no_roles.toml", "roles = []\n")?;
            assert!(Config::load(Some(Path::new("no_roles.toml")), Overrides::default()).is_err());
            assert!(Config::load(Some(Path::new("zero.toml")), Overrides::default()).is_err());
            assert!(Config::load(Some(Path::new("missing.toml")), Overrides::default()).is_err());
            jail.create_file("half_tls.toml", "tls_cert_path = \"cert.pem\"\n")?;
            let half = Config::load(Some(Path::new("half_tls.toml")), Overrides::default()).unwrap_err();
            assert!(format!("{half:#}").contains("tls_key_path"), "{half:#}");
            jail.set_env("COFFER_DATABASE_URL", "mysql://localhost/x");
            assert!(Config::load(None, Overrides::default()).is_err());
            jail.set_env(
                "COFFER_DATABASE_URL",
                "postgres://h1:5432,h2:5432/coffer?target_session_attrs=read-write",
            );
            assert!(Config::load(None, Overrides::default()).unwrap().database_url.is_some());
            Ok(())
        });
    }

    /// Every section's settings are checked at start: a zero that would start a server that
    /// cannot serve (no event stream, no rate) stops it instead.
    #[test]
    fn zeros_that_cannot_run_are_refused_in_every_section() {
        figment::Jail::expect_with(|jail| {
            for (file, body) in [
                ("burst.toml", "[api]\nrate_limit_burst = 0\n"),
                ("rate.toml", "[api]\nrate_limit_per_second = 0\n"),
                ("streams.toml", "[api]\nmax_event_streams = 0\n"),
                ("timeout.toml", "[api]\nrequest_timeout_ms = 0\n"),
                ("gateway_rate.toml", "[gateway]\nip_rate_limit_burst = 0\n"),
            ] {
                jail.create_file(file, body)?;
                let refused = Config::load(Some(Path::new(file)), Overrides::default());
                assert!(refused.is_err(), "{file} started");
            }
            jail.set_env("COFFER_API__MAX_EVENT_STREAMS", "0");
            assert!(Config::load(None, Overrides::default()).is_err());
            Ok(())
        });
    }

    #[test]
    fn every_section_follows_one_rule_and_a_misspelt_variable_stops_the_start() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("COFFER_STORE__BATCH_WAIT_US", "9");
            jail.set_env("COFFER_GATEWAY__LISTEN", "127.0.0.1:7001");
            jail.set_env("COFFER_GATEWAY_ADMIN_LISTEN", "127.0.0.1:7002");
            jail.set_env("COFFER_TEST_ANYTHING", "the test suite's own");
            let config = Config::load(None, Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(config.store.batch_wait_us, 9);
            assert_eq!(config.gateway.listen.port(), 7001, "two underscores, as every section");
            assert_eq!(config.gateway.admin_listen.map(|a| a.port()), Some(7002), "the old name");
            jail.set_env("COFFER_STORE_BATCH_WAIT_US", "9");
            let refused = Config::load(None, Overrides::default()).unwrap_err().to_string();
            assert!(refused.contains("did you mean COFFER_STORE__BATCH_WAIT_US?"), "{refused}");
            Ok(())
        });
    }

    #[test]
    fn a_printed_configuration_shows_no_secret() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("COFFER_BOOTSTRAP_TOKEN", "t0ken-of-the-operator");
            jail.set_env(
                "COFFER_DATABASE_URL",
                "postgres://coffer:pa55word@db-1:5432,db-2:5432/coffer?sslmode=require",
            );
            jail.set_env("COFFER_REDIS_URL", "rediss://:r3dis@cache:6380/0");
            jail.set_env("COFFER_NATS_URL", "nats://bus:4222");
            let config = Config::load(None, Overrides::default()).map_err(|e| e.to_string())?;
            let printed = format!("{:#?}", config.masked());
            for secret in ["t0ken", "pa55word", "r3dis"] {
                assert!(!printed.contains(secret), "{secret} in {printed}");
            }
            assert!(
                printed.contains("postgres://coffer:<masked>@db-1:5432,db-2:5432/coffer?sslmode=require")
            );
            assert!(printed.contains("nats://bus:4222"), "a URL without a password is shown whole");
            Ok(())
        });
    }

    #[test]
    fn a_log_level_is_parsed_at_start() {
        figment::Jail::expect_with(|jail| {
            for good in ["info", "coffer_store=debug,warn", "OFF"] {
                jail.set_env("COFFER_LOG_LEVEL", good);
                assert!(Config::load(None, Overrides::default()).is_ok(), "{good}");
            }
            for bad in ["loud", "coffer_store=loud", "", "info,[x"] {
                jail.set_env("COFFER_LOG_LEVEL", bad);
                let refused = Config::load(None, Overrides::default());
                assert!(refused.is_err(), "{bad:?} was accepted");
            }
            Ok(())
        });
    }

    #[test]
    fn a_short_bootstrap_token_is_only_for_a_server_on_loopback() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("COFFER_BOOTSTRAP_TOKEN", "t");
            assert!(Config::load(None, Overrides::default()).is_ok(), "127.0.0.1 by default");
            jail.set_env("COFFER_LISTEN", "[::1]:8080");
            assert!(Config::load(None, Overrides::default()).is_ok());
            jail.set_env("COFFER_LISTEN", "0.0.0.0:8080");
            let refused = Config::load(None, Overrides::default()).unwrap_err();
            assert!(format!("{refused:#}").contains("at least 32 characters"), "{refused:#}");
            jail.set_env("COFFER_BOOTSTRAP_TOKEN", "x".repeat(32));
            assert!(Config::load(None, Overrides::default()).is_ok());
            Ok(())
        });
    }

    /// `coffer serve` and `coffer gateway` in front of it run side by side on their defaults.
    #[test]
    fn the_gateway_and_the_server_listen_on_different_ports_by_default() {
        let defaults = Config::default();
        assert_ne!(defaults.gateway.listen, defaults.listen);
        assert_eq!(defaults.gateway.listen.to_string(), "127.0.0.1:8000");
    }

    #[test]
    fn gateway_settings_from_file_environment_and_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "gw.toml",
                "[gateway]\ncheck_interval_ms = 250\nupstreams = [\"http://a:1\"]\n",
            )?;
            jail.set_env("COFFER_GATEWAY_UPSTREAMS", "http://127.0.0.1:8081, http://api-2.internal:8082");
            jail.set_env("COFFER_GATEWAY_EJECT_MS", "900");
            jail.set_env("COFFER_GATEWAY_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1");
            let overrides = Overrides {
                gateway: GatewayOverrides {
                    listen: Some("127.0.0.1:7000".parse().unwrap()),
                    ..Default::default()
                },
                ..Default::default()
            };
            let config = Config::load(Some(Path::new("gw.toml")), overrides).map_err(|e| e.to_string())?;
            let gateway = &config.gateway;
            assert_eq!(gateway.listen.port(), 7000);
            assert_eq!(gateway.check_interval_ms, 250);
            assert_eq!(gateway.eject_ms, 900);
            let upstreams: Vec<String> = gateway.upstreams.0.iter().map(ToString::to_string).collect();
            assert_eq!(upstreams, ["http://127.0.0.1:8081", "http://api-2.internal:8082"]);
            assert!(gateway.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
            assert!(gateway.trusted_proxies.contains("192.0.2.1".parse().unwrap()));
            assert!(!gateway.trusted_proxies.contains("192.0.2.2".parse().unwrap()));
            assert!(gateway.validate().is_ok());
            jail.set_env("COFFER_GATEWAY_ADMIN_LISTEN", "127.0.0.1:9090");
            let config = Config::load(None, Overrides::default()).map_err(|e| e.to_string())?;
            assert!(config.gateway.validate().is_err(), "an admin listener needs a token");
            jail.set_env("COFFER_GATEWAY_ADMIN_TOKEN", "too-short");
            assert!(Config::load(None, Overrides::default()).is_err(), "a short admin token");
            jail.set_env("COFFER_GATEWAY_ADMIN_TOKEN", "an-admin-token-of-forty-characters-00000");
            let config = Config::load(None, Overrides::default()).map_err(|e| e.to_string())?;
            assert!(config.gateway.validate().is_ok());
            assert!(!format!("{:?}", config.gateway).contains("forty"), "the token is not printed");
            Ok(())
        });
    }

    #[test]
    fn nats_credentials_and_tls_come_in_pairs_and_the_password_is_never_printed() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("COFFER_NATS_URL", "nats://nats-1:4222,nats://nats-2:4222");
            jail.set_env("COFFER_NATS_USER", "coffer-relay");
            assert!(Config::load(None, Overrides::default()).is_err(), "a user without a password");
            jail.set_env("COFFER_NATS_PASSWORD", "hunter2-but-longer");
            jail.set_env("COFFER_NATS_TLS_CERT_PATH", "client.pem");
            assert!(Config::load(None, Overrides::default()).is_err(), "a certificate without its key");
            jail.set_env("COFFER_NATS_TLS_KEY_PATH", "client.key");
            jail.set_env("COFFER_NATS_TLS_CA_PATH", "ca.pem");
            jail.set_env("COFFER_NATS_REQUIRE_TLS", "true");
            let config = Config::load(None, Overrides::default()).map_err(|e| e.to_string())?;
            let nats = config.nats().expect("nats_url is set");
            assert_eq!(nats.user.as_ref().map(|(user, _)| user.as_str()), Some("coffer-relay"));
            assert_eq!(nats.tls_ca_path.as_deref(), Some(Path::new("ca.pem")));
            assert!(nats.tls_client.is_some() && nats.require_tls);
            assert!(!format!("{config:?} {nats:?}").contains("hunter2"), "the password is not printed");
            Ok(())
        });
    }

    #[test]
    fn roles_come_as_a_list_or_as_one_comma_separated_string() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("roles.toml", "roles = [\"relay\"]\n")?;
            let from_file = Config::load(Some(Path::new("roles.toml")), Overrides::default());
            assert_eq!(from_file.map_err(|e| e.to_string())?.roles, [Role::Relay]);
            jail.set_env("COFFER_ROLES", "api, worker,");
            let from_env = Config::load(Some(Path::new("roles.toml")), Overrides::default());
            assert_eq!(from_env.map_err(|e| e.to_string())?.roles, [Role::Api, Role::Worker]);
            jail.set_env("COFFER_ROLES", "api,bogus");
            assert!(Config::load(None, Overrides::default()).is_err(), "an unknown role is refused");
            Ok(())
        });
    }

    #[test]
    fn a_bad_upstream_list_is_a_configuration_error() {
        figment::Jail::expect_with(|jail| {
            for bad in ["http://a:1,ftp://b:2", "http://a:1/v1", "a:1", "http://a:1,http://a:1"] {
                jail.set_env("COFFER_GATEWAY_UPSTREAMS", bad);
                let refused = Config::load(None, Overrides::default())
                    .map_err(|e| format!("{e:#}"))
                    .and_then(|config| config.gateway.validate().map_err(|e| e.to_string()));
                assert!(refused.is_err(), "{bad:?} was accepted");
            }
            jail.set_env("COFFER_GATEWAY_UPSTREAMS", "");
            let config = Config::load(None, Overrides::default()).map_err(|e| e.to_string())?;
            assert!(config.gateway.validate().is_err(), "no upstream at all");
            jail.set_env("COFFER_GATEWAY_TRUSTED_PROXIES", "10.0.0.0/8, lb.internal");
            let refused = Config::load(None, Overrides::default()).map(|_| ()).map_err(|e| format!("{e:#}"));
            assert!(refused.unwrap_err().contains("lb.internal"), "a name is not a trusted proxy");
            jail.set_env("COFFER_GATEWAY_UPSTREAMS", "http://a:1");
            jail.set_env("COFFER_GATEWAY_LISTN", "127.0.0.1:1");
            assert!(Config::load(None, Overrides::default()).is_err(), "a misspelt gateway setting");
            Ok(())
        });
    }
}
