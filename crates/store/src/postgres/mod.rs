//! The PostgreSQL backend: many `coffer serve` processes on one database, each with its own
//! sequencer, and a database that may fail over underneath them.
//!
//! Connections come from one deadpool pool built on a `tokio_postgres::Config` we parse
//! ourselves, so that a multi-host URL with `target_session_attrs=read-write` is honoured: after
//! a failover, new connections find the promoted primary. Every call is bounded: a connect
//! timeout per host, a server-side `statement_timeout`, and a client-side timeout on COMMIT —
//! past which the outcome is reported unknown and settled by the client's idempotent retry.

mod audit;
mod batch;
mod codec;
mod idempotency;
mod keys;
mod pipeline;
mod read;
mod schema;
mod tls;
pub mod verify;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use coffer_ledger::{
    Account, AccountId, Ledger, LedgerCode, Outcome, Submission, Timestamp, Transfer, TransferId,
};
use deadpool_postgres::{Client, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use self::batch::PgBackend;
use crate::OutboxEvent;
use crate::expiry::DueHolds;
use crate::ledger::Core;
use crate::sequencer::{BatchLimits, Sequencer};
use crate::{
    AccountFilter, ApiKey, Books, Fingerprint, Halt, IdempotencyBegin, IdempotencyRecords, IdempotencyScope,
    KeyAdmin, KeyDirectory, KeyId, NewApiKey, Outbox, Page, PageRequest, Store, StoreConfig, StoreError,
    StoreResult, StoredResponse, TokenHash, TransferFilter,
};

/// A database error before any commit: the statement did not apply.
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) if refuses_the_data(db.code()) => {
            StoreError::invalid(format!("database error {}: {}", db.code().code(), db.message())).because(e)
        }
        Some(db) => StoreError::unavailable(format!("database error {}", db.code().code())).because(e),
        None => StoreError::unavailable("database unreachable").because(e),
    }
}

/// Whether an error of this SQLSTATE is about the values a statement carried rather than the
/// server's state: class 22 (data exception: U+0000 in text, a number out of range, …), 23
/// (integrity constraint violation) but for unique violations, which are conflicts with another
/// writer, and 54 (program limit exceeded: a value too large to store).
fn refuses_the_data(code: &tokio_postgres::error::SqlState) -> bool {
    let code = code.code();
    code != tokio_postgres::error::SqlState::UNIQUE_VIOLATION.code()
        && (code.starts_with("22") || code.starts_with("23") || code.starts_with("54"))
}

pub(crate) fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::unavailable("no database connection").because(e)
}

/// How often old idempotency answers are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// The PostgreSQL-backed [`Store`].
pub struct PgStore {
    pool: Pool,
    /// Key look-ups only.
    keys: Pool,
    sequencer: Arc<Sequencer>,
    halt: Halt,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// `host:port` of every host `pg` names, for messages: never the user or the password.
fn address(pg: &tokio_postgres::Config) -> String {
    let ports = pg.get_ports();
    let hosts = pg.get_hosts();
    if hosts.is_empty() {
        return "no host (the database URL names none)".to_owned();
    }
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let shown: Vec<String> = hosts
        .iter()
        .enumerate()
        .map(|(i, host)| match host {
            tokio_postgres::config::Host::Tcp(name) if name.contains(':') => format!("[{name}]:{}", port(i)),
            tokio_postgres::config::Host::Tcp(name) => format!("{name}:{}", port(i)),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => format!("{}:{}", path.display(), port(i)),
        })
        .collect();
    shown.join(",")
}

/// Why the first connection to the servers at `at` failed, in the server's own words when it
/// answered (`database "x" does not exist`, `password authentication failed for user "y"`).
fn connect_error(at: &str, e: deadpool_postgres::PoolError) -> StoreError {
    let why = match &e {
        deadpool_postgres::PoolError::Backend(pg) => match pg.as_db_error() {
            Some(db) => db.message().to_owned(),
            // tokio-postgres says "error performing TLS handshake" and keeps the reason (an
            // unknown authority, a certificate for another name) in its source.
            None => crate::report(pg),
        },
        deadpool_postgres::PoolError::Timeout(_) => "no answer within the connect timeout".to_owned(),
        other => crate::report(other),
    };
    StoreError::unavailable(format!("cannot connect to PostgreSQL at {at}: {why}"))
}

/// A first connection from `pool`, whose servers are at `at`.
async fn first_connection(pool: &Pool, at: &str) -> StoreResult<Client> {
    pool.get().await.map_err(|e| connect_error(at, e))
}

/// Builds the pool for `url` (`postgres://…`, several hosts allowed) with the configured timeouts.
fn pool(url: &str, config: &StoreConfig) -> StoreResult<Pool> {
    pool_at(url, config).map(|(pool, _)| pool)
}

/// [`pool`], and where its servers are ([`address`]).
fn pool_at(url: &str, config: &StoreConfig) -> StoreResult<(Pool, String)> {
    let tls = tls::from_url(url)?;
    let mut pg = tokio_postgres::Config::from_str(&tls.url)
        .map_err(|e| StoreError::unavailable(format!("invalid database URL: {e}")))?;
    let at = address(&pg);
    if let Some(mode) = tls.mode {
        pg.ssl_mode(mode);
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_millis(config.connect_timeout_ms));
    }
    // Server-side bounds on every statement and on a transaction left open by a vanished client.
    // And plans that go by key: every statement Coffer runs reads rows by an index, but with a
    // batch's arrays of ids a small or freshly loaded table looks cheaper to scan whole, and a
    // generic plan cached then scans it forever after (that was most of the server's CPU under
    // load). So plans are made per execution, and never with a sequential scan. No JIT either:
    // it pays off for long analytic queries, never for Coffer's short ones, and the inflated
    // cost of a plan without a better path than a scan would trigger it (120 ms a statement).
    let options = format!(
        "{} -c statement_timeout={} -c idle_in_transaction_session_timeout={} \
         -c plan_cache_mode=force_custom_plan -c enable_seqscan=off -c jit=off",
        pg.get_options().unwrap_or_default(),
        config.statement_timeout_ms,
        config.statement_timeout_ms.saturating_mul(2),
    );
    pg.options(options.trim());
    if pg.get_application_name().is_none() {
        pg.application_name("coffer");
    }
    let recycling = ManagerConfig { recycling_method: RecyclingMethod::Fast };
    let manager = match tls.connector {
        Some(connector) => Manager::from_config(pg, connector, recycling),
        None => Manager::from_config(pg, tokio_postgres::NoTls, recycling),
    };
    let connect = Duration::from_millis(config.connect_timeout_ms);
    Pool::builder(manager)
        // The batches in flight, reads and keys, and background work.
        .max_size(config.write_connections + config.read_connections + 1)
        .runtime(Runtime::Tokio1)
        // Waiting for a connection is bounded too: a pool starved by a dead database answers 503.
        .wait_timeout(Some(connect * 2))
        .create_timeout(Some(connect * 2))
        .recycle_timeout(Some(connect))
        .build()
        .map(|pool| (pool, at))
        .map_err(|e| StoreError::unavailable(format!("cannot build the connection pool: {e}")))
}

/// Creates or upgrades the schema at `url` and answers its version (`coffer migrate`).
pub async fn migrate(url: &str) -> StoreResult<i64> {
    let (pool, at) = pool_at(url, &StoreConfig::default())?;
    let mut client = first_connection(&pool, &at).await?;
    schema::migrate(&mut client).await
}

/// The key table at `url` and nothing else: how the gateway checks tokens. No migration, no
/// background work; a handful of connections at most.
pub fn key_directory(url: &str) -> StoreResult<Arc<dyn KeyDirectory>> {
    let config = StoreConfig { write_connections: 1, read_connections: 2, ..StoreConfig::default() };
    Ok(Arc::new(pool(url, &config)?))
}

#[async_trait]
impl KeyDirectory for Pool {
    async fn key_by_token(&self, hash: TokenHash) -> StoreResult<Option<ApiKey>> {
        keys::by_token(&self.get().await.map_err(pool_error)?, hash).await
    }

    async fn bare_token_hashes(&self) -> StoreResult<Vec<TokenHash>> {
        keys::bare_token_hashes(&self.get().await.map_err(pool_error)?).await
    }
}

#[async_trait]
impl KeyDirectory for PgStore {
    async fn key_by_token(&self, hash: TokenHash) -> StoreResult<Option<ApiKey>> {
        self.keys.key_by_token(hash).await
    }

    async fn bare_token_hashes(&self) -> StoreResult<Vec<TokenHash>> {
        self.keys.bare_token_hashes().await
    }
}

/// The pool that looks keys up: a few connections of its own (`auth_connections`), opened only
/// when needed. Bad tokens queue here, never in front of a batch or a read.
fn key_pool(url: &str, config: &StoreConfig) -> StoreResult<Pool> {
    let keys = pool(url, config)?;
    keys.resize(config.auth_connections);
    Ok(keys)
}

impl PgStore {
    /// Connects to `url`, migrates, and starts the sequencer and the background tasks on the
    /// current tokio runtime.
    pub async fn connect(url: &str, config: StoreConfig) -> StoreResult<Arc<PgStore>> {
        config.validate()?;
        let (pool, at) = pool_at(url, &config)?;
        let keys = key_pool(url, &config)?;
        schema::migrate(&mut first_connection(&pool, &at).await?).await?;
        let limits = BatchLimits {
            commands: config.batch_size_max,
            wait: Duration::from_micros(config.batch_wait_us),
            in_flight: config.write_connections,
        };
        let backend = PgBackend {
            pool: pool.clone(),
            commit_timeout: Duration::from_millis(config.commit_timeout_ms),
            ledgers: Mutex::new(HashMap::new()),
            core: Core::new(&config),
        };
        let halt = Halt::default();
        let sequencer = Arc::new(Sequencer::start(backend, limits, config.queue_capacity, halt.clone()));
        let retention = Duration::from_secs(config.idempotency_retention_hours.saturating_mul(3600));
        let tasks = vec![
            crate::expiry::spawn(
                sequencer.clone(),
                pool.clone(),
                Duration::from_millis(config.expiry_interval_ms),
                config.batch_size_max,
            ),
            spawn_purge(pool.clone(), retention),
        ];
        Ok(Arc::new(PgStore { pool, keys, sequencer, halt, tasks: Mutex::new(tasks) }))
    }

    async fn client(&self) -> StoreResult<Client> {
        self.pool.get().await.map_err(pool_error)
    }

    fn stop_tasks(&self) {
        for task in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            task.abort();
        }
    }
}

#[async_trait]
impl DueHolds for Pool {
    async fn due_holds(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<TransferId>> {
        read::due_pending(&self.get().await.map_err(pool_error)?, now, limit).await
    }
}

fn spawn_purge(pool: Pool, retention: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(PURGE_INTERVAL);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let age = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
            let before = Timestamp::from_micros(Timestamp::now().as_micros().saturating_sub(age));
            let purged = match pool.get().await {
                Ok(client) => idempotency::purge(&client, before).await,
                Err(e) => Err(pool_error(e)),
            };
            match purged {
                Ok(0) => {}
                Ok(purged) => tracing::debug!(purged, "purged old idempotency answers"),
                Err(e) => tracing::warn!(error = %e, "cannot purge idempotency answers"),
            }
        }
    })
}

/// Dropping the store without `shutdown` stops new work; what was committed stays committed.
impl Drop for PgStore {
    fn drop(&mut self) {
        self.sequencer.close();
        self.stop_tasks();
    }
}

#[async_trait]
impl Books for PgStore {
    async fn submit(&self, submission: Submission) -> StoreResult<Vec<Outcome>> {
        self.sequencer.submit(submission).await
    }

    // The reads of money and events stop the store themselves when they meet a damaged row
    // (`Halt::watch`); the API stops it for any other read a request makes.

    async fn ledger(&self, code: LedgerCode) -> StoreResult<Option<Ledger>> {
        self.halt.watch(read::ledger(&self.client().await?, code).await)
    }

    async fn ledgers(&self, page: PageRequest) -> StoreResult<Page<Ledger>> {
        self.halt.watch(read::ledgers(&self.client().await?, page).await)
    }

    async fn account(&self, id: AccountId) -> StoreResult<Option<Account>> {
        self.halt.watch(read::account(&self.client().await?, id).await)
    }

    async fn accounts(&self, filter: AccountFilter, page: PageRequest) -> StoreResult<Page<Account>> {
        self.halt.watch(read::accounts(&self.client().await?, filter, page).await)
    }

    async fn transfer(&self, id: TransferId) -> StoreResult<Option<Transfer>> {
        self.halt.watch(read::transfer(&self.client().await?, id).await)
    }

    async fn transfers(&self, filter: TransferFilter, page: PageRequest) -> StoreResult<Page<Transfer>> {
        self.halt.watch(read::transfers(&self.client().await?, filter, page).await)
    }
}

#[async_trait]
impl KeyAdmin for PgStore {
    async fn create_key(&self, key: NewApiKey) -> StoreResult<ApiKey> {
        keys::create(&self.client().await?, key, Timestamp::now()).await
    }

    async fn bootstrap_key(&self, key: NewApiKey) -> StoreResult<bool> {
        keys::bootstrap(&mut self.client().await?, key, Timestamp::now()).await
    }

    async fn keys(&self) -> StoreResult<Vec<ApiKey>> {
        keys::list(&self.client().await?).await
    }

    async fn revoke_key(&self, id: KeyId) -> StoreResult<bool> {
        keys::revoke(&self.client().await?, id, Timestamp::now()).await
    }

    async fn expire_key(&self, id: KeyId, at: Timestamp) -> StoreResult<Option<ApiKey>> {
        keys::expire(&self.client().await?, id, at).await
    }
}

#[async_trait]
impl IdempotencyRecords for PgStore {
    async fn idempotency_begin(
        &self,
        scope: &IdempotencyScope,
        fingerprint: Fingerprint,
    ) -> StoreResult<IdempotencyBegin> {
        idempotency::begin(&self.client().await?, scope, fingerprint).await
    }

    async fn idempotency_complete(
        &self,
        scope: &IdempotencyScope,
        response: StoredResponse,
    ) -> StoreResult<()> {
        idempotency::complete(&self.client().await?, scope, response).await
    }

    async fn idempotency_abandon(&self, scope: &IdempotencyScope) -> StoreResult<()> {
        idempotency::abandon(&self.client().await?, scope).await
    }
}

#[async_trait]
impl Outbox for PgStore {
    async fn events_after(&self, position: i64, limit: usize) -> StoreResult<Vec<OutboxEvent>> {
        self.halt.watch(read::events_after(&self.client().await?, position, limit).await)
    }

    async fn last_event_position(&self) -> StoreResult<i64> {
        let client = self.client().await?;
        let row =
            client.query_one("SELECT coalesce(max(position), 0) FROM outbox", &[]).await.map_err(pg_error)?;
        Ok(row.get(0))
    }

    async fn outbox_chain(&self) -> StoreResult<crate::chain::OutboxChain> {
        read::outbox_chain(&self.client().await?).await
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> StoreResult<()> {
        if let Some(cause) = self.halt.cause() {
            return Err(cause);
        }
        if !self.sequencer.is_open() {
            return Err(StoreError::unavailable("the store's writer is stopped"));
        }
        // Only a primary can take writes: a replica still connected to a demoted node is not ready.
        let row =
            self.client().await?.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(pg_error)?;
        if row.get::<_, bool>(0) {
            return Err(StoreError::unavailable("the database is a read-only standby"));
        }
        Ok(())
    }

    fn halt(&self) -> &Halt {
        &self.halt
    }

    async fn shutdown(&self) {
        self.sequencer.shutdown().await;
        self.stop_tasks();
    }
}
