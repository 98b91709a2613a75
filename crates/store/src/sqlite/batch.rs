//! The SQLite side of a batch: load what the commands touch, run the pure core, write its changes
//! (see `write`), commit once.
//!
//! SQLite has one writer, so the whole batch runs in one `BEGIN IMMEDIATE` transaction on the
//! single write connection; there is nothing to lock row by row. Every statement is a cached
//! prepared one and every lookup goes through a primary or unique key: in-process SQLite has no
//! round trip, so point lookups cost about a microsecond each, and the ones that almost always
//! miss (a new transfer's own id) are left to the UNIQUE index instead (see [`Lookup`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use async_trait::async_trait;
use coffer_ledger::{
    Account, AccountId, Command, Ledger, LedgerCode, Outcome, State, Submission, Timestamp, TransferId,
};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::codec::{self, ACCOUNT_COLUMNS, LEDGER_COLUMNS, TRANSFER_COLUMNS};
use super::db_error;
use super::postings::Postings;
use super::write::write_changes;
use crate::ledger::Core;
use crate::sequencer::Backend;
use crate::{StoreError, StoreResult};

/// Accounts cached at most; past that the cache starts over (a miss only costs a lookup).
const CACHED_ACCOUNTS: usize = 100_000;

/// The write connection and what may be cached beside it. Only this process writes money (the
/// data dir lock sees to that) and only through this writer, so the caches cannot go stale.
pub(crate) struct Writer {
    pub conn: Connection,
    /// Ledgers are immutable once created; a miss falls back to the table.
    ledgers: HashMap<LedgerCode, Ledger>,
    /// Accounts with their seq, as last committed: the busy ones are loaded once, not per batch.
    accounts: HashMap<AccountId, (i64, Account)>,
    /// `None` after a commit whose fate is unknown: rebuilt from the tables before the next batch.
    postings: Option<Postings>,
}

pub(crate) type SharedWriter = Arc<Mutex<Writer>>;

impl Writer {
    pub fn new(mut conn: Connection) -> StoreResult<Self> {
        let postings = Postings::catch_up(&mut conn).map_err(db_error)?;
        Ok(Self { conn, ledgers: HashMap::new(), accounts: HashMap::new(), postings: Some(postings) })
    }

    /// What a commit of unknown fate does to the postings buffer.
    #[cfg(test)]
    pub fn lose_postings(&mut self) {
        self.postings = None;
    }
}

/// Locks the writer. A panic while holding it unwound through the open transaction's `Drop`,
/// which rolled it back, so a poisoned lock still guards a consistent connection.
pub(crate) fn lock(writer: &Mutex<Writer>) -> MutexGuard<'_, Writer> {
    writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs batches on the write connection, off the async runtime.
pub(crate) struct SqliteBackend {
    pub writer: SharedWriter,
    pub core: Core,
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn apply_batch(
        &self,
        submissions: Arc<[Submission]>,
        now: Timestamp,
    ) -> StoreResult<Vec<Vec<Outcome>>> {
        let (writer, core) = (self.writer.clone(), self.core);
        match tokio::task::spawn_blocking(move || lock(&writer).apply(&submissions, now, core)).await {
            Ok(result) => result,
            // A panic in the core is a broken invariant: let it stop the writer rather than go on.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::unavailable("batch cancelled").because(e)),
        }
    }
}

/// Sequence numbers of the rows a batch loaded or created, so updates and postings go straight
/// to the row.
#[derive(Default)]
pub(super) struct RowIds {
    pub accounts: HashMap<AccountId, i64>,
    pub transfers: HashMap<TransferId, i64>,
}

/// Which of the transfers a batch names are looked up before the core runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// Only the holds the commands resolve. The commands' own ids are almost always new, and
    /// looking each one up was the largest part of loading a batch; a taken id shows up as a
    /// UNIQUE violation on insert, or in the check of the refused commands' ids.
    Resolved,
    /// Every id, as the core's rules assume.
    All,
}

impl Writer {
    fn apply(
        &mut self,
        submissions: &[Submission],
        now: Timestamp,
        core: Core,
    ) -> StoreResult<Vec<Vec<Outcome>>> {
        if let Some(outcomes) = self.attempt(submissions, now, Lookup::Resolved, core)? {
            return Ok(outcomes);
        }
        // A command reused an existing id (a client retrying): redo the batch the careful way.
        metrics::counter!("coffer_store_batch_retries_total").increment(1);
        self.attempt(submissions, now, Lookup::All, core)?
            .ok_or_else(|| StoreError::unavailable("a batch found a taken id after looking all up"))
    }

    /// Runs the batch in one transaction; `None` when `Lookup::Resolved` met a taken id, and
    /// nothing was written.
    fn attempt(
        &mut self,
        submissions: &[Submission],
        now: Timestamp,
        lookup: Lookup,
        core: Core,
    ) -> StoreResult<Option<Vec<Vec<Outcome>>>> {
        let started = Instant::now();
        let postings = match &mut self.postings {
            Some(postings) => postings,
            None => self.postings.insert(Postings::catch_up(&mut self.conn).map_err(db_error)?),
        };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_error)?;
        let mut state = State::new();
        let mut rows = RowIds::default();
        load_ledgers(&tx, &mut self.ledgers, submissions, &mut state).map_err(db_error)?;
        load_transfers(&tx, submissions, lookup, &mut state, &mut rows).map_err(db_error)?;
        load_accounts(&tx, &mut self.accounts, submissions, &mut state, &mut rows).map_err(db_error)?;
        let loaded = started.elapsed();

        let outcomes = core.apply(&mut state, submissions, now)?;
        // A refused command never reaches the insert that would reveal its id as taken, and the
        // core answers a taken id before any refusal: check those ids now.
        if lookup == Lookup::Resolved && refused_ids_taken(&tx, submissions, &outcomes).map_err(db_error)? {
            return Ok(None);
        }
        let changes = state.take_changes();
        let applied = started.elapsed();
        let staged = match write_changes(&tx, &changes, &mut rows, postings, now) {
            Ok(staged) => staged,
            Err(e) if lookup == Lookup::Resolved && is_taken_transfer_id(&e) => return Ok(None),
            Err(e) => return Err(db_error(e)),
        };
        let written = started.elapsed();
        // The transaction is complete; only the commit's own failure leaves its fate unknown
        // (an I/O error during the WAL write or fsync).
        if let Err(e) = tx.commit() {
            self.postings = None;
            self.accounts.clear();
            return Err(StoreError::outcome_unknown("commit failed").because(e));
        }
        postings.committed(staged);
        for account in changes.accounts_created.iter().chain(&changes.balances) {
            self.accounts.insert(account.id, (rows.accounts[&account.id], account.clone()));
        }
        tracing::debug!(
            transfers = changes.transfers_created.len(),
            load_us = loaded.as_micros(),
            apply_us = (applied - loaded).as_micros(),
            write_us = (written - applied).as_micros(),
            commit_us = (started.elapsed() - written).as_micros(),
            "batch committed"
        );

        for ledger in changes.ledgers {
            self.ledgers.insert(ledger.code, ledger);
        }
        Ok(Some(outcomes))
    }
}

/// The id a command gives the transfer it creates.
fn own_id(command: &Command) -> Option<TransferId> {
    match command {
        Command::CreateTransfer(t) => Some(t.id),
        Command::PostPending(r) | Command::VoidPending(r) => Some(r.id),
        _ => None,
    }
}

/// The hold a command resolves.
fn resolved_id(command: &Command) -> Option<TransferId> {
    match command {
        Command::PostPending(r) | Command::VoidPending(r) => Some(r.pending_id),
        Command::ExpirePending(id) => Some(*id),
        _ => None,
    }
}

/// Whether any refused command's own id names an existing transfer.
fn refused_ids_taken(
    tx: &Transaction<'_>,
    submissions: &[Submission],
    outcomes: &[Vec<Outcome>],
) -> rusqlite::Result<bool> {
    let commands = submissions.iter().flat_map(|s| &s.commands);
    let mut exists = tx.prepare_cached("SELECT 1 FROM transfers WHERE id = ?1")?;
    for (command, outcome) in commands.zip(outcomes.iter().flatten()) {
        if let (Some(id), Outcome::Rejected(_)) = (own_id(command), outcome)
            && exists.exists([id.0.as_bytes()])?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn is_taken_transfer_id(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, Some(message))
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE && message.contains("transfers.id"))
}

fn load_ledgers(
    tx: &Transaction<'_>,
    cache: &mut HashMap<LedgerCode, Ledger>,
    submissions: &[Submission],
    state: &mut State,
) -> rusqlite::Result<()> {
    let mut select = tx.prepare_cached(&format!("SELECT {LEDGER_COLUMNS} FROM ledgers WHERE code = ?1"))?;
    let codes = submissions.iter().flat_map(|s| &s.commands).filter_map(|c| c.ledger_code());
    for code in codes {
        if state.ledger(&code).is_some() {
            continue;
        }
        if let Some(ledger) = cache.get(&code) {
            state.load_ledger(ledger.clone());
            continue;
        }
        if let Some((_, ledger)) = select.query_row([code.as_str()], codec::ledger).optional()? {
            cache.insert(code, ledger.clone());
            state.load_ledger(ledger);
        }
    }
    Ok(())
}

/// Loads the transfers the commands resolve and, with `Lookup::All`, those their own ids name.
fn load_transfers(
    tx: &Transaction<'_>,
    submissions: &[Submission],
    lookup: Lookup,
    state: &mut State,
    rows: &mut RowIds,
) -> rusqlite::Result<()> {
    let commands = submissions.iter().flat_map(|s| &s.commands);
    let mut ids: Vec<TransferId> = match lookup {
        Lookup::Resolved => commands.filter_map(resolved_id).collect(),
        Lookup::All => commands.flat_map(|c| c.transfer_ids()).collect(),
    };
    ids.sort_unstable();
    ids.dedup();
    let mut select = tx.prepare_cached(&format!("SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = ?1"))?;
    for id in ids {
        if let Some((seq, transfer)) = select.query_row([id.0.as_bytes()], codec::transfer).optional()? {
            rows.transfers.insert(id, seq);
            state.load_transfer(transfer);
        }
    }
    Ok(())
}

/// Loads the accounts the commands name and those of the loaded pending transfers, in id order,
/// from the cache or else the table (what the table holds is committed, so it may be cached at
/// once, whatever becomes of this batch).
fn load_accounts(
    tx: &Transaction<'_>,
    cache: &mut HashMap<AccountId, (i64, Account)>,
    submissions: &[Submission],
    state: &mut State,
    rows: &mut RowIds,
) -> rusqlite::Result<()> {
    let mut ids: Vec<AccountId> = submissions
        .iter()
        .flat_map(|s| &s.commands)
        .flat_map(|c| c.account_ids())
        .chain(state.pending_account_ids())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if cache.len() + ids.len() > CACHED_ACCOUNTS {
        cache.clear();
    }
    let mut select = tx.prepare_cached(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1"))?;
    for id in ids {
        let found = match cache.get(&id) {
            Some(cached) => Some(cached.clone()),
            None => select.query_row([id.0.as_bytes()], codec::account).optional()?,
        };
        if let Some((seq, account)) = found {
            rows.accounts.insert(id, seq);
            cache.entry(id).or_insert_with(|| (seq, account.clone()));
            state.load_account(account);
        }
    }
    Ok(())
}
