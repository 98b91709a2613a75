//! The SQLite side of a batch: load what the commands touch, run the pure core, write its changes,
//! commit once.
//!
//! SQLite has one writer, so the whole batch runs in one `BEGIN IMMEDIATE` transaction on the
//! single write connection; there is nothing to lock row by row. Every statement is a cached
//! prepared one and every lookup goes through a primary or unique key: in-process SQLite has no
//! round trip, so point lookups cost about a microsecond each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use coffer_ledger::{
    AccountId, Changes, Event, Ledger, LedgerCode, Outcome, State, Submission, Timestamp, TransferId,
};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::codec::{self, ACCOUNT_COLUMNS, LEDGER_COLUMNS, TRANSFER_COLUMNS, int};
use super::db_error;
use crate::sequencer::Backend;
use crate::{StoreError, StoreResult};

/// The write connection and what may be cached beside it. Only this process writes money (the
/// data dir lock sees to that), so the ledger cache cannot go stale.
pub(crate) struct Writer {
    pub conn: Connection,
    /// Ledgers are immutable once created; a miss falls back to the table.
    ledgers: HashMap<LedgerCode, Ledger>,
}

pub(crate) type SharedWriter = Arc<Mutex<Writer>>;

impl Writer {
    pub fn new(conn: Connection) -> Self {
        Self { conn, ledgers: HashMap::new() }
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
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn apply_batch(
        &self,
        submissions: Vec<Submission>,
        now: Timestamp,
    ) -> StoreResult<Vec<Vec<Outcome>>> {
        let writer = self.writer.clone();
        match tokio::task::spawn_blocking(move || lock(&writer).apply(&submissions, now)).await {
            Ok(result) => result,
            // A panic in the core is a broken invariant: let it stop the writer rather than go on.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::Unavailable(format!("batch cancelled: {e}"))),
        }
    }
}

/// Sequence numbers of the rows loaded for a batch, so updates go straight to the row.
#[derive(Default)]
struct RowIds {
    accounts: HashMap<AccountId, i64>,
    transfers: HashMap<TransferId, i64>,
}

impl Writer {
    fn apply(&mut self, submissions: &[Submission], now: Timestamp) -> StoreResult<Vec<Vec<Outcome>>> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_error)?;
        let mut state = State::new();
        let mut rows = RowIds::default();
        load_ledgers(&tx, &mut self.ledgers, submissions, &mut state).map_err(db_error)?;
        load_transfers(&tx, submissions, &mut state, &mut rows).map_err(db_error)?;
        load_accounts(&tx, submissions, &mut state, &mut rows).map_err(db_error)?;

        let outcomes = coffer_ledger::apply(&mut state, submissions, now);
        let changes = state.take_changes();
        write_changes(&tx, &changes, &rows, now)?;
        // The transaction is complete; only the commit's own failure leaves its fate unknown
        // (an I/O error during the WAL write or fsync).
        tx.commit().map_err(|e| StoreError::OutcomeUnknown(format!("commit failed: {e}")))?;

        for ledger in changes.ledgers {
            self.ledgers.insert(ledger.code, ledger);
        }
        Ok(outcomes)
    }
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

/// Loads the transfers the commands name (their own ids, for idempotency, and the pending ones
/// they resolve).
fn load_transfers(
    tx: &Transaction<'_>,
    submissions: &[Submission],
    state: &mut State,
    rows: &mut RowIds,
) -> rusqlite::Result<()> {
    let mut ids: Vec<TransferId> =
        submissions.iter().flat_map(|s| &s.commands).flat_map(|c| c.transfer_ids()).collect();
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

/// Loads the accounts the commands name and those of the loaded pending transfers, in id order.
fn load_accounts(
    tx: &Transaction<'_>,
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
    let mut select = tx.prepare_cached(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1"))?;
    for id in ids {
        if let Some((seq, account)) = select.query_row([id.0.as_bytes()], codec::account).optional()? {
            rows.accounts.insert(id, seq);
            state.load_account(account);
        }
    }
    Ok(())
}

fn write_changes(tx: &Transaction<'_>, changes: &Changes, rows: &RowIds, now: Timestamp) -> StoreResult<()> {
    write_records(tx, changes, rows).map_err(db_error)?;
    write_events(tx, &changes.events, now)
}

fn write_records(tx: &Transaction<'_>, changes: &Changes, rows: &RowIds) -> rusqlite::Result<()> {
    if !changes.ledgers.is_empty() {
        let mut insert =
            tx.prepare_cached("INSERT INTO ledgers (code, scale, created_at) VALUES (?1, ?2, ?3)")?;
        for l in &changes.ledgers {
            insert.execute(params![l.code.as_str(), l.scale.get(), l.created_at.as_micros()])?;
        }
    }
    if !changes.accounts_created.is_empty() {
        let mut insert = tx.prepare_cached(
            "INSERT INTO accounts (id, ledger, code, flags, external_ref, metadata, debits_pending, \
             debits_posted, credits_pending, credits_posted, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        for a in &changes.accounts_created {
            let b = &a.balance;
            insert.execute(params![
                a.id.0.as_bytes(),
                a.ledger.as_str(),
                a.code,
                codec::flags_bits(a.flags),
                a.external_ref.as_ref().map(|r| r.as_str()),
                codec::metadata_json(&a.metadata),
                int(b.debits_pending),
                int(b.debits_posted),
                int(b.credits_pending),
                int(b.credits_posted),
                a.created_at.as_micros(),
            ])?;
        }
    }
    if !changes.balances.is_empty() {
        let mut update = tx.prepare_cached(
            "UPDATE accounts SET debits_pending = ?2, debits_posted = ?3, credits_pending = ?4, \
             credits_posted = ?5 WHERE seq = ?1",
        )?;
        for a in &changes.balances {
            let b = &a.balance;
            let seq = rows.accounts[&a.id];
            let values = [
                seq,
                int(b.debits_pending),
                int(b.debits_posted),
                int(b.credits_pending),
                int(b.credits_posted),
            ];
            update.execute(values)?;
        }
    }
    if !changes.transfers_created.is_empty() {
        let mut insert = tx.prepare_cached(
            "INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, ledger, code, pending, \
             status, pending_id, timeout_at, external_ref, metadata, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?;
        for t in &changes.transfers_created {
            insert.execute(params![
                t.id.0.as_bytes(),
                t.debit_account_id.0.as_bytes(),
                t.credit_account_id.0.as_bytes(),
                int(t.amount.get()),
                t.ledger.as_str(),
                t.code,
                t.pending,
                t.status.as_str(),
                t.pending_id.as_ref().map(|id| id.0.as_bytes()),
                t.timeout_at.map(|at| at.as_micros()),
                t.external_ref.as_ref().map(|r| r.as_str()),
                codec::metadata_json(&t.metadata),
                t.created_at.as_micros(),
            ])?;
        }
    }
    if !changes.statuses.is_empty() {
        let mut update = tx.prepare_cached("UPDATE transfers SET status = ?2 WHERE seq = ?1")?;
        for (id, status) in &changes.statuses {
            update.execute(params![rows.transfers[id], status.as_str()])?;
        }
    }
    Ok(())
}

/// Writes each event as a CloudEvents envelope; `data` is the record's JSON, which is already its
/// API form, so the relay publishes it without re-encoding.
fn write_events(tx: &Transaction<'_>, events: &[Event], now: Timestamp) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut insert = tx
        .prepare_cached("INSERT INTO outbox (id, type, subject, time, data) VALUES (?1, ?2, ?3, ?4, ?5)")
        .map_err(db_error)?;
    let mut data = Vec::with_capacity(1024);
    for event in events {
        data.clear();
        match event {
            Event::Account(_, account) => serde_json::to_writer(&mut data, account),
            Event::Transfer(_, transfer) => serde_json::to_writer(&mut data, transfer),
        }
        .map_err(|e| StoreError::Unavailable(format!("cannot encode an event: {e}")))?;
        let data = std::str::from_utf8(&data).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let id = uuid::Uuid::now_v7();
        insert
            .execute(params![
                id.as_bytes(),
                event.kind().cloud_event_type(),
                event.subject().as_bytes(),
                now.as_micros(),
                data,
            ])
            .map_err(db_error)?;
    }
    Ok(())
}
