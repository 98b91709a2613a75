//! The embedded SQLite backend: one file in the data dir, one writer (the sequencer's), a few
//! read-only connections, and the background tasks.
//!
//! `coffer.lock` beside the database is held with an exclusive OS lock for the store's lifetime,
//! so only one server ever writes a data dir; that is what lets the writer cache ledgers and keep
//! in-flight idempotency marks in memory.

pub mod admin;
mod audit;
mod background;
mod batch;
mod checkpoint;
mod codec;
mod idempotency;
mod keys;
mod pipeline;
mod postings;
mod read;
mod schema;
#[cfg(test)]
mod tests;
pub mod verify;
mod write;

use std::fs::{File, TryLockError};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use coffer_ledger::{
    Account, AccountId, Ledger, LedgerCode, Outcome, Submission, Timestamp, Transfer, TransferId,
};
use rusqlite::Connection;
use tokio::task::JoinHandle;

use self::batch::{SharedWriter, SqliteBackend, Writer, lock};
use self::idempotency::Idempotency;
use self::read::ReadPool;
use crate::ledger::Core;
use crate::sequencer::{BatchLimits, Sequencer};
use crate::{
    AccountFilter, ApiKey, Books, Fingerprint, Halt, IdempotencyBegin, IdempotencyRecords, IdempotencyScope,
    KeyAdmin, KeyDirectory, KeyId, NewApiKey, Outbox, OutboxEvent, Page, PageRequest, Store, StoreConfig,
    StoreError, StoreResult, StoredResponse, TokenHash, TransferFilter,
};

/// A database error: the statement did not apply.
pub(crate) fn db_error(e: rusqlite::Error) -> StoreError {
    use rusqlite::{Error, ErrorCode, ffi};
    // A value that does not decode into its record (the codec refused it, or it has the wrong
    // type) or a file SQLite finds malformed is damage: fatal, never a "try again".
    let damaged =
        matches!(
            e,
            Error::FromSqlConversionFailure(..)
                | Error::InvalidColumnType(..)
                | Error::IntegralValueOutOfRange(..)
                | Error::Utf8Error(..)
        ) || matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase));
    if damaged {
        return StoreError::corrupt("a value read from the database does not decode").because(e);
    }
    // Errors about the values a statement carried (a string or blob over SQLite's size limit, a
    // CHECK or NOT NULL constraint) are the request's fault; the rest are the database's state.
    let refuses_the_data = matches!(
        e.sqlite_error(),
        Some(f) if f.code == ErrorCode::TooBig
            || f.extended_code == ffi::SQLITE_CONSTRAINT_CHECK
            || f.extended_code == ffi::SQLITE_CONSTRAINT_NOTNULL
    );
    if refuses_the_data {
        StoreError::invalid(format!("database error: {e}")).because(e)
    } else {
        StoreError::unavailable("database error").because(e)
    }
}

/// The SQLite-backed [`Store`].
pub struct SqliteStore {
    sequencer: Arc<Sequencer>,
    halt: Halt,
    writer: SharedWriter,
    reads: Arc<ReadPool>,
    idempotency: Idempotency,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Held, never read: the OS lock lives as long as this handle.
    _lock: File,
}

/// The key table of the data dir `dir` and nothing else: how the gateway checks tokens. Takes
/// no lock and writes nothing, so it runs beside the server that owns the dir.
pub async fn key_directory(dir: &Path) -> StoreResult<Arc<dyn KeyDirectory>> {
    let dir = dir.to_owned();
    let reads = tokio::task::spawn_blocking(move || ReadPool::open(&dir, 2, Halt::default()))
        .await
        .map_err(|e| StoreError::unavailable("open failed").because(e))??;
    Ok(Arc::new(reads))
}

#[async_trait]
impl KeyDirectory for Arc<ReadPool> {
    async fn key_by_token(&self, hash: TokenHash) -> StoreResult<Option<ApiKey>> {
        self.run(move |c| keys::by_token(c, hash)).await
    }

    async fn bare_token_hashes(&self) -> StoreResult<Vec<TokenHash>> {
        self.run(keys::bare_token_hashes).await
    }
}

#[async_trait]
impl KeyDirectory for SqliteStore {
    async fn key_by_token(&self, hash: TokenHash) -> StoreResult<Option<ApiKey>> {
        self.reads.key_by_token(hash).await
    }

    async fn bare_token_hashes(&self) -> StoreResult<Vec<TokenHash>> {
        self.reads.bare_token_hashes().await
    }
}

impl SqliteStore {
    /// Opens (creating and migrating) `dir/coffer.db`, takes an exclusive lock on
    /// `dir/coffer.lock` so only one server uses a data dir, and starts the sequencer and the
    /// background tasks on the current tokio runtime.
    pub async fn open(dir: &Path, config: StoreConfig) -> StoreResult<Arc<SqliteStore>> {
        config.validate()?;
        let dir = dir.to_owned();
        let halt = Halt::default();
        // Opening and migrating block on the file system: keep that off the async workers.
        let (lock_file, writer, reads) = tokio::task::spawn_blocking({
            let halt = halt.clone();
            move || -> StoreResult<_> {
                let lock_file = lock_data_dir(&dir)?;
                let mut conn = schema::open_writer(&dir)?;
                checkpoint::offload(&mut conn, &dir)?;
                let writer = Writer::new(conn)?;
                let reads = ReadPool::open(&dir, config.read_connections, halt)?;
                Ok((lock_file, writer, reads))
            }
        })
        .await
        .map_err(|e| StoreError::unavailable("open failed").because(e))??;

        let writer: SharedWriter = Arc::new(Mutex::new(writer));
        let limits = BatchLimits {
            commands: config.batch_size_max,
            wait: Duration::from_micros(config.batch_wait_us),
            in_flight: 1,
        };
        let backend = SqliteBackend { writer: writer.clone(), core: Core::new(&config) };
        let sequencer = Arc::new(Sequencer::start(backend, limits, config.queue_capacity, halt.clone()));
        let (idempotency, answers) = Idempotency::start(writer.clone());
        let retention = Duration::from_secs(config.idempotency_retention_hours.saturating_mul(3600));
        let tasks = vec![
            answers,
            crate::expiry::spawn(
                sequencer.clone(),
                reads.clone(),
                Duration::from_millis(config.expiry_interval_ms),
                config.batch_size_max,
            ),
            background::spawn_purge(writer.clone(), retention),
        ];
        Ok(Arc::new(SqliteStore {
            sequencer,
            halt,
            writer,
            reads,
            idempotency,
            tasks: Mutex::new(tasks),
            _lock: lock_file,
        }))
    }

    /// Runs a rare write (API keys) on the write connection, between batches.
    async fn write<T, F>(&self, write: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || write(&lock(&writer).conn))
            .await
            .map_err(|e| StoreError::unavailable("write failed").because(e))?
            .map_err(db_error)
    }

    fn stop_tasks(&self) {
        for task in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            task.abort();
        }
    }
}

fn lock_data_dir(dir: &Path) -> StoreResult<File> {
    std::fs::create_dir_all(dir).map_err(|e| {
        StoreError::unavailable(format!("cannot create data dir {}", dir.display())).because(e)
    })?;
    let path = dir.join("coffer.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::unavailable(format!("cannot open {}", path.display())).because(e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::unavailable(format!(
            "data dir {} is in use by another coffer process",
            dir.display()
        ))),
        Err(TryLockError::Error(e)) => {
            Err(StoreError::unavailable(format!("cannot lock {}", path.display())).because(e))
        }
    }
}

/// Dropping the store without `shutdown` (a crash, a test) stops new work; what was committed
/// stays committed, and what was queued is still applied by the writer as it winds down.
impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.sequencer.close();
        self.stop_tasks();
    }
}

#[async_trait]
impl Books for SqliteStore {
    async fn submit(&self, submission: Submission) -> StoreResult<Vec<Outcome>> {
        self.sequencer.submit(submission).await
    }

    async fn ledger(&self, code: LedgerCode) -> StoreResult<Option<Ledger>> {
        self.reads.run(move |c| read::ledger(c, code)).await
    }

    async fn ledgers(&self, page: PageRequest) -> StoreResult<Page<Ledger>> {
        self.reads.run(move |c| read::ledgers(c, page)).await
    }

    async fn account(&self, id: AccountId) -> StoreResult<Option<Account>> {
        self.reads.run(move |c| read::account(c, id)).await
    }

    async fn accounts(&self, filter: AccountFilter, page: PageRequest) -> StoreResult<Page<Account>> {
        self.reads.run(move |c| read::accounts(c, filter, page)).await
    }

    async fn transfer(&self, id: TransferId) -> StoreResult<Option<Transfer>> {
        self.reads.run(move |c| read::transfer(c, id)).await
    }

    async fn transfers(&self, filter: TransferFilter, page: PageRequest) -> StoreResult<Page<Transfer>> {
        self.reads.run(move |c| read::transfers(c, filter, page)).await
    }
}

#[async_trait]
impl KeyAdmin for SqliteStore {
    async fn create_key(&self, key: NewApiKey) -> StoreResult<ApiKey> {
        self.write(move |c| keys::create(c, key, Timestamp::now())).await
    }

    async fn bootstrap_key(&self, key: NewApiKey) -> StoreResult<bool> {
        self.write(move |c| keys::bootstrap(c, key, Timestamp::now())).await
    }

    async fn keys(&self) -> StoreResult<Vec<ApiKey>> {
        self.reads.run(keys::list).await
    }

    async fn revoke_key(&self, id: KeyId) -> StoreResult<bool> {
        self.write(move |c| keys::revoke(c, id, Timestamp::now())).await
    }

    async fn expire_key(&self, id: KeyId, at: Timestamp) -> StoreResult<Option<ApiKey>> {
        self.write(move |c| keys::expire(c, id, at)).await
    }
}

#[async_trait]
impl IdempotencyRecords for SqliteStore {
    async fn idempotency_begin(
        &self,
        scope: &IdempotencyScope,
        fingerprint: Fingerprint,
    ) -> StoreResult<IdempotencyBegin> {
        self.idempotency.begin(&self.reads, scope, fingerprint).await
    }

    async fn idempotency_complete(
        &self,
        scope: &IdempotencyScope,
        response: StoredResponse,
    ) -> StoreResult<()> {
        self.idempotency.complete(scope, response).await
    }

    async fn idempotency_abandon(&self, scope: &IdempotencyScope) -> StoreResult<()> {
        self.idempotency.abandon(scope);
        Ok(())
    }
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn events_after(&self, position: i64, limit: usize) -> StoreResult<Vec<OutboxEvent>> {
        self.reads.run(move |c| read::events_after(c, position, limit)).await
    }

    async fn last_event_position(&self) -> StoreResult<i64> {
        self.reads
            .run(|c| c.query_row("SELECT coalesce(max(seq), 0) FROM outbox", [], |row| row.get(0)))
            .await
    }

    async fn outbox_chain(&self) -> StoreResult<crate::chain::OutboxChain> {
        self.reads.run(read::outbox_chain).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        if let Some(cause) = self.halt.cause() {
            return Err(cause);
        }
        if !self.sequencer.is_open() {
            return Err(StoreError::unavailable("the store's writer is stopped"));
        }
        self.reads.run(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
    }

    fn halt(&self) -> &Halt {
        &self.halt
    }

    async fn shutdown(&self) {
        self.sequencer.shutdown().await;
        self.stop_tasks();
    }
}
