//! `coffer serve`, in this order: check the configuration, bind every listener, then open the
//! store, make sure an admin key exists and start the roles asked for (the API, the relay, the
//! worker). A mistake found at any step stops the process before the next one, so a port in use
//! neither creates a key nor starts a worker. Then it runs until a signal and finishes what is in
//! flight; a second signal ends it at once. A fatal error of the store (a damaged row, a broken
//! invariant) ends it too, promptly and with an error ([`Halted`]), for its supervisor to
//! restart it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use coffer_api::Shutdown;
use coffer_events::{SecretKeys, TargetPolicy, reseal};
use coffer_gateway::tls::{ServingCertificate, TlsListener};
use coffer_ledger::Timestamp;
use coffer_store::{Halt, Store, StoreError};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::api_server::{self, ServerLimits};
use crate::config::{Config, Role};
use crate::pipeline::Pipeline;

pub async fn run(config: Config) -> anyhow::Result<()> {
    // 1. What can be checked without creating anything (`Config::load` checked the rest).
    let tls = match (&config.tls_cert_path, &config.tls_key_path) {
        (Some(cert), Some(key)) => Some(ServingCertificate::load(cert, key).with_context(|| {
            format!("cannot load the TLS certificate {} and key {}", cert.display(), key.display())
        })?),
        _ => None,
    };
    let webhook_keys = match crate::webhook_keys::needed(&config) && crate::webhook_keys::configured(&config)
    {
        true => Some(crate::webhook_keys::load(&config)?),
        false => None,
    };
    // 2. Every listener.
    let api_listener = match config.roles.contains(&Role::Api) {
        true => Some(bind(config.listen, "--listen or COFFER_LISTEN").await?),
        false => None,
    };
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(bind(addr, "metrics_listen or COFFER_METRICS_LISTEN").await?),
        None => None,
    };
    // 3. From here a signal stops the process in order, and a second one at once.
    let shutdown = watch_signals()?;
    // Installed before the roles start, so that their first measurements are kept.
    let metrics = coffer_api::install_metrics();
    let metrics_server =
        metrics_listener.map(|listener| serve_metrics(listener, coffer_api::metrics_router(metrics.clone())));
    // 4. The store, the first admin key, the roles.
    let started = tokio::select! {
        started = start(&config, webhook_keys) => started?,
        () = shutdown.begun() => {
            info!("stopped during start-up");
            return Ok(());
        }
    };
    let Started { store, pipeline, webhook_keys } = started;
    info!(roles = ?config.roles, bus = if config.nats_url.is_some() { "jetstream" } else { "in-process" }, "roles started");
    match api_listener {
        Some(listener) => {
            let dead_letters =
                pipeline.dead_letters.clone().context("the api role opens the dead letters")?;
            let services = coffer_api::Services {
                dead_letters,
                webhook_targets: webhook_targets(&config),
                webhook_keys,
                metrics_on_api: config.metrics_listen.is_none(),
                about: about(&config),
                shutdown: shutdown.clone(),
            };
            let app = coffer_api::router_with(store.clone(), config.api.clone(), metrics, services);
            serve_http(&config, listener, tls, app, &shutdown, store.halt()).await?;
        }
        None => tokio::select! {
            () = shutdown.begun() => info!("shutting down"),
            _ = store.halt().tripped() => {}
        },
    }
    // Nothing more is wound down after a fatal error: what was committed is safe, and the roles'
    // work in flight is redone after the restart, as after a crash.
    if let Some(cause) = store.halt().cause() {
        return Err(Halted(cause).into());
    }
    pipeline.shutdown().await;
    if let Some(server) = metrics_server {
        server.abort();
    }
    store.shutdown().await;
    info!("stopped");
    Ok(())
}

/// The store stopped after a fatal error, and so does the process: `main` prints this on one line
/// and exits with [`Halted::EXIT_CODE`], which tells a supervisor to restart it (and a person
/// to look at the cause) apart from a mistake in the configuration (1).
#[derive(Debug)]
pub struct Halted(pub StoreError);

impl Halted {
    /// `EX_SOFTWARE` of sysexits.h: an internal error.
    pub const EXIT_CODE: i32 = 70;
}

impl std::fmt::Display for Halted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped after a fatal error: {}", coffer_store::report(&self.0))
    }
}

impl std::error::Error for Halted {}

/// How long requests in flight get to be answered once the store stopped: their answers are
/// already decided (a 500 for a write, the record for a read), they only need sending.
const HALT_DRAIN: Duration = Duration::from_secs(1);

/// What this process is, as `GET /v1/admin/status` reports it.
fn about(config: &Config) -> coffer_api::ServerAbout {
    coffer_api::ServerAbout {
        store: if config.database_url.is_some() { "postgresql" } else { "sqlite" },
        bus: if config.nats_url.is_some() { "jetstream" } else { "in-process" },
        roles: config.roles.iter().map(|role| format!("{role:?}").to_lowercase()).collect(),
        started: std::time::Instant::now(),
    }
}

/// What start-up made.
struct Started {
    store: Arc<dyn Store>,
    pipeline: Pipeline,
    webhook_keys: Arc<SecretKeys>,
}

/// Opens the store, makes the first admin key when there is none, and starts the background roles.
async fn start(config: &Config, webhook_keys: Option<SecretKeys>) -> anyhow::Result<Started> {
    let store: Arc<dyn Store> = crate::store::open(config).await?;
    if let Some(token) = coffer_api::bootstrap(store.as_ref(), config.bootstrap_token.as_deref()).await? {
        // Printed once, on standard output and never in a log line.
        println!("Created the first admin key. Its token, shown only now: {token}");
    }
    let webhook_keys = Arc::new(webhook_keys_for(config, store.as_ref(), webhook_keys).await?);
    let pipeline = crate::pipeline::start(config, store.clone(), webhook_keys.clone()).await?;
    Ok(Started { store, pipeline, webhook_keys })
}

/// Binds `addr`; the error says what to do about it, `setting` being where another address is
/// chosen.
async fn bind(addr: SocketAddr, setting: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                format!("address in use (another coffer? choose another with {setting})")
            }
            std::io::ErrorKind::PermissionDenied => {
                format!("permission denied (ports below 1024 need privileges; choose another with {setting})")
            }
            std::io::ErrorKind::AddrNotAvailable => {
                format!("no such address on this machine (choose another with {setting})")
            }
            _ => format!("{e} (choose another with {setting})"),
        };
        anyhow::anyhow!("cannot listen on {addr}: {why}")
    })
}

/// The first SIGINT or SIGTERM begins the shutdown that the answer reports; a second one ends
/// the process at once, saying so, with the shell's code for death by that signal (130 for
/// SIGINT, 143 for SIGTERM), without waiting for anything in flight.
pub(crate) fn watch_signals() -> anyhow::Result<Shutdown> {
    use tokio::signal::unix::{SignalKind, signal};
    // Both handlers before anything is started, so no signal can slip between the two waits.
    let mut interrupts = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminations = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let shutdown = Shutdown::default();
    let begin = shutdown.clone();
    tokio::spawn(async move {
        let (first, _) = next_signal(&mut interrupts, &mut terminations).await;
        info!(signal = first, "shutting down; a second signal stops at once");
        begin.begin();
        let (second, code) = next_signal(&mut interrupts, &mut terminations).await;
        eprintln!("coffer: {second} during shutdown: exiting at once, without finishing work in flight");
        std::process::exit(code);
    });
    Ok(shutdown)
}

/// The next SIGINT or SIGTERM: its name and the exit code of a process it ends.
async fn next_signal(
    interrupts: &mut tokio::signal::unix::Signal,
    terminations: &mut tokio::signal::unix::Signal,
) -> (&'static str, i32) {
    tokio::select! {
        _ = interrupts.recv() => ("SIGINT", 130),
        _ = terminations.recv() => ("SIGTERM", 143),
    }
}

/// Until the first SIGINT or SIGTERM (a second one ends the process at once).
pub(crate) async fn shutdown_signal() {
    match watch_signals() {
        Ok(shutdown) => shutdown.begun().await,
        Err(e) => {
            warn!(error = %e, "no signal handling: stop this process with SIGKILL");
            std::future::pending().await
        }
    }
}

/// Where webhooks may be sent, as configured.
fn webhook_targets(config: &Config) -> TargetPolicy {
    TargetPolicy {
        allow_private_networks: config.webhook_allow_private_networks,
        allow_insecure_http: config.webhook_allow_insecure_http,
    }
}

/// The keys that seal webhook secrets, when a role of this process handles them (the API makes
/// and rotates secrets, the worker signs with them): `loaded` when they were read from the
/// configuration before start-up, else the embedded store's own. The secrets in the store are
/// then sealed under the first key before anything else runs: rows from before sealing existed,
/// and rows sealed under a key that has since been rotated.
async fn webhook_keys_for(
    config: &Config,
    store: &dyn Store,
    loaded: Option<SecretKeys>,
) -> anyhow::Result<SecretKeys> {
    if !crate::webhook_keys::needed(config) {
        // A relay alone never touches a secret: it needs no key.
        return Ok(SecretKeys::ephemeral());
    }
    let keys = match loaded {
        Some(keys) => keys,
        None => crate::webhook_keys::load(config)?,
    };
    let done = reseal(store, &keys, Timestamp::now()).await.context("cannot re-seal the webhook secrets")?;
    if done.resealed > 0 || done.unreadable > 0 {
        info!(
            resealed = done.resealed,
            unreadable = done.unreadable,
            key_id = keys.sealing_id(),
            "webhook secrets sealed under the current key"
        );
    }
    Ok(keys)
}

/// Serves `/metrics` alone on `listener` (`metrics_listen`), in the background until stopped.
fn serve_metrics(listener: TcpListener, app: axum::Router) -> tokio::task::JoinHandle<()> {
    if let Ok(addr) = listener.local_addr() {
        info!(metrics_listen = %addr, "metrics are served on their own listener");
    }
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            error!(error = %err, "the metrics listener failed");
        }
    })
}

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the API on `listener` (over TLS when configured) until the shutdown begins or the
/// store stops, then lets in-flight requests finish.
async fn serve_http(
    config: &Config,
    listener: TcpListener,
    tls: Option<Arc<ServingCertificate>>,
    app: axum::Router,
    shutdown: &Shutdown,
    halt: &Halt,
) -> anyhow::Result<()> {
    let _reloads = tls.clone().map(|certificate| tokio::spawn(reload_certificate_on_hangup(certificate)));
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(listen = %config.listen, scheme, store = %crate::store::describe(config), "coffer is serving");

    let drain = Duration::from_millis(config.shutdown_timeout_ms);
    let stopping = {
        let (shutdown, halt) = (shutdown.clone(), halt.clone());
        async move {
            tokio::select! {
                () = shutdown.begun() => {
                    info!("shutting down: not ready any more, finishing in-flight requests");
                    drain
                }
                // Event streams end and `/readyz` stays 503 while the answers go out.
                _ = halt.tripped() => {
                    shutdown.begin();
                    drain.min(HALT_DRAIN)
                }
            }
        }
    };
    let api = &config.api;
    let limits = ServerLimits {
        header_read_timeout: Duration::from_millis(api.header_read_timeout_ms),
        max_connections: api.max_connections,
        http2_max_concurrent_streams: api.http2_max_concurrent_streams,
        max_header_bytes: api.max_header_bytes,
    };
    let finished = match tls {
        Some(certificate) => {
            let listener = TlsListener::new(listener, certificate, TLS_HANDSHAKE_TIMEOUT)?;
            api_server::serve(listener, app, limits, stopping).await
        }
        None => api_server::serve(listener, app, limits, stopping).await,
    };
    if !finished {
        warn!("in-flight requests did not finish in time");
    }
    Ok(())
}

/// On each SIGHUP the certificate and key are read again (a renewal); new connections get the
/// new certificate, open ones keep theirs. A pair that does not load changes nothing.
async fn reload_certificate_on_hangup(certificate: Arc<ServingCertificate>) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return warn!("cannot listen for SIGHUP: the TLS certificate is read at start only");
    };
    while hangups.recv().await.is_some() {
        if let Err(err) = certificate.reload() {
            error!(error = %err, "TLS certificate not reloaded; the current one stays");
        }
    }
}
