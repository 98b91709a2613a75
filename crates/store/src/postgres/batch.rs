//! The PostgreSQL side of a batch: lock what the commands touch, run the pure core, write its
//! changes with set-based statements, commit once.
//!
//! Several processes may write the same database, each with its own sequencer, so nothing about
//! money is cached between batches (ledgers are, being immutable). Every batch locks the rows it
//! reads with `SELECT … FOR UPDATE`, in one global order — first the transfers it names, then
//! the accounts, each sorted by id — so two batches never wait on each other in a cycle. A new
//! row whose id another process is inserting at the same moment shows up as a unique violation;
//! a deadlock between two batches inserting the same new ids in different orders is broken by
//! PostgreSQL. Both roll the batch back, and it runs again: by then the other process's rows are
//! committed and the core answers `exists` like for any retry.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use coffer_ledger::{
    AccountId, Changes, Ledger, LedgerCode, Outcome, State, Submission, Timestamp, TransferId,
};
use deadpool_postgres::{Client, Object, Pool};
use tokio_postgres::Statement;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::{codec, pg_error, pool_error};
use crate::columns::{ACCOUNT_COLUMNS, LEDGER_COLUMNS, TRANSFER_COLUMNS, flags_bits, int, metadata_json};
use crate::ledger::Core;
use crate::outbox::Envelopes;
use crate::sequencer::Backend;
use crate::{StoreError, StoreResult};

/// Times a batch runs again after a conflict with another process before it gives up (503).
const CONFLICT_RETRIES: usize = 8;

pub(super) struct PgBackend {
    pub pool: Pool,
    pub commit_timeout: Duration,
    /// Ledgers never change once created; a miss falls back to the table.
    pub ledgers: Mutex<HashMap<LedgerCode, Ledger>>,
    pub core: Core,
}

/// Why an attempt at a batch did not commit.
enum Failed {
    /// Another process got in the way (a unique violation, a deadlock): run the batch again.
    Conflict(String),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Failed {
    fn from(e: tokio_postgres::Error) -> Self {
        let conflict = [
            SqlState::UNIQUE_VIOLATION,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::T_R_SERIALIZATION_FAILURE,
        ];
        match e.code() {
            Some(code) if conflict.contains(code) => Failed::Conflict(e.to_string()),
            _ => Failed::Store(pg_error(e)),
        }
    }
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Failed::Store(e)
    }
}

#[async_trait]
impl Backend for PgBackend {
    async fn apply_batch(
        &self,
        submissions: Arc<[Submission]>,
        now: Timestamp,
    ) -> StoreResult<Vec<Vec<Outcome>>> {
        let mut conflicts = 0;
        loop {
            match self.attempt(&submissions, now).await {
                Ok(outcomes) => return Ok(outcomes),
                Err(Failed::Conflict(why)) if conflicts < CONFLICT_RETRIES => {
                    conflicts += 1;
                    metrics::counter!("coffer_store_batch_retries_total").increment(1);
                    tracing::debug!(%why, conflicts, "batch conflicted with another writer; running it again");
                }
                Err(Failed::Conflict(why)) => {
                    return Err(StoreError::unavailable(format!("batch kept conflicting: {why}")));
                }
                Err(Failed::Store(e)) => return Err(e),
            }
        }
    }
}

impl PgBackend {
    async fn attempt(&self, submissions: &[Submission], now: Timestamp) -> Result<Vec<Vec<Outcome>>, Failed> {
        let client = self.pool.get().await.map_err(pool_error)?;
        match self.in_transaction(&client, submissions, now).await {
            Ok(outcomes) => Ok(outcomes),
            Err(Failed::Store(e @ StoreError::OutcomeUnknown { .. })) => Err(unknown(client, e)),
            Err(failed) => {
                // The transaction failed before its COMMIT: end it before the connection goes
                // back to the pool, or drop the connection if even that fails.
                if client.batch_execute("ROLLBACK").await.is_err() {
                    drop(Object::take(client));
                }
                Err(failed)
            }
        }
    }

    /// One transaction, driven by hand rather than through `Transaction` so that BEGIN travels
    /// with the first query: a batch costs four round trips (BEGIN and the transfers, the
    /// accounts, the writes, COMMIT).
    async fn in_transaction(
        &self,
        client: &Client,
        submissions: &[Submission],
        now: Timestamp,
    ) -> Result<Vec<Vec<Outcome>>, Failed> {
        let started = Instant::now();
        let mut state = State::new();
        let begin = async { client.batch_execute("BEGIN").await.map_err(Failed::from) };
        let prepare = async { Writes::prepare(client).await.map_err(Failed::from) };
        let (_, (), writes) =
            tokio::try_join!(begin, lock_transfers(client, submissions, &mut state), prepare)?;
        self.load_ledgers(client, submissions, &mut state).await?;
        lock_accounts(client, submissions, &mut state).await?;
        let loaded = started.elapsed();

        let outcomes = self.core.apply(&mut state, submissions, now)?;
        let changes = state.take_changes();

        // The writes and the COMMIT go out together, so the batch holds its row locks for one
        // round trip less. The first poll sends every write; only then is the COMMIT sent.
        let commit = || tokio::time::timeout(self.commit_timeout, client.batch_execute("COMMIT"));
        let (written, committed) = in_order(write_changes(client, &writes, &changes, now), commit).await;
        match written {
            Ok(()) => {}
            // A statement the server refused aborted the transaction: the COMMIT behind it
            // could only roll back.
            Err(e) if e.code().is_some() => return Err(e.into()),
            Err(e) => return Err(Failed::Store(StoreError::outcome_unknown("commit lost").because(e))),
        }
        // Only the server's answer to the COMMIT says whether it happened.
        match committed {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.code().is_some() => return Err(e.into()),
            Ok(Err(e)) => return Err(Failed::Store(StoreError::outcome_unknown("commit lost").because(e))),
            Err(_) => {
                let why = format!("commit unanswered after {:?}", self.commit_timeout);
                return Err(Failed::Store(StoreError::outcome_unknown(why)));
            }
        }
        tracing::debug!(
            transfers = changes.transfers_created.len(),
            load_us = loaded.as_micros(),
            write_and_commit_us = (started.elapsed() - loaded).as_micros(),
            "batch committed"
        );
        let mut cache = self.ledgers.lock().unwrap_or_else(|p| p.into_inner());
        cache.extend(changes.ledgers.iter().map(|l| (l.code, l.clone())));
        Ok(outcomes)
    }

    async fn load_ledgers(
        &self,
        client: &Client,
        submissions: &[Submission],
        state: &mut State,
    ) -> Result<(), Failed> {
        let mut codes: Vec<LedgerCode> =
            submissions.iter().flat_map(|s| &s.commands).filter_map(|c| c.ledger_code()).collect();
        codes.sort_unstable();
        codes.dedup();
        let missing: Vec<&str> = {
            let cache = self.ledgers.lock().unwrap_or_else(|p| p.into_inner());
            for code in &codes {
                if let Some(ledger) = cache.get(code) {
                    state.load_ledger(ledger.clone());
                }
            }
            codes.iter().filter(|c| !cache.contains_key(c)).map(|c| c.as_str()).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let sql = format!("SELECT {LEDGER_COLUMNS} FROM ledgers WHERE code = ANY($1)");
        let rows = client.query(&client.prepare_cached(&sql).await?, &[&missing]).await?;
        let mut cache = self.ledgers.lock().unwrap_or_else(|p| p.into_inner());
        for row in rows {
            let (_, ledger) = codec::ledger(&row)?;
            cache.insert(ledger.code, ledger.clone());
            state.load_ledger(ledger);
        }
        Ok(())
    }
}

/// A commit whose answer never came: the connection cannot be trusted again, so it leaves the
/// pool, and the client settles the outcome by retrying with the same ids.
fn unknown(client: Client, e: StoreError) -> Failed {
    drop(Object::take(client));
    Failed::Store(e)
}

/// Locks and loads every transfer the commands name: the holds they resolve (which must not
/// change under them) and their own ids (which, when taken, make the command a retry).
async fn lock_transfers(
    client: &Client,
    submissions: &[Submission],
    state: &mut State,
) -> Result<(), Failed> {
    let mut ids: Vec<Uuid> =
        submissions.iter().flat_map(|s| &s.commands).flat_map(|c| c.transfer_ids()).map(|id| id.0).collect();
    if ids.is_empty() {
        return Ok(());
    }
    ids.sort_unstable();
    ids.dedup();
    let sql = format!("SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = ANY($1) ORDER BY id FOR UPDATE");
    for row in client.query(&client.prepare_cached(&sql).await?, &[&ids]).await? {
        state.load_transfer(codec::transfer(&row)?.1);
    }
    Ok(())
}

/// Locks and loads the accounts the commands name and those of the loaded holds, in id order.
async fn lock_accounts(client: &Client, submissions: &[Submission], state: &mut State) -> Result<(), Failed> {
    let mut ids: Vec<Uuid> = submissions
        .iter()
        .flat_map(|s| &s.commands)
        .flat_map(|c| c.account_ids())
        .chain(state.pending_account_ids())
        .map(|id: AccountId| id.0)
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    ids.sort_unstable();
    ids.dedup();
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE");
    for row in client.query(&client.prepare_cached(&sql).await?, &[&ids]).await? {
        state.load_account(codec::account(&row)?.1);
    }
    Ok(())
}

const INSERT_LEDGERS: &str =
    "INSERT INTO ledgers (code, scale, created_at) SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[])";
const INSERT_ACCOUNTS: &str = "INSERT INTO accounts (id, ledger, code, flags, external_ref, metadata, debits_pending, \
               debits_posted, credits_pending, credits_posted, created_at) \
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::text[], \
               $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[])";
const UPDATE_BALANCES: &str = "UPDATE accounts AS a SET debits_pending = u.dp, debits_posted = u.dpo, \
               credits_pending = u.cp, credits_posted = u.cpo \
               FROM unnest($1::uuid[], $2::int8[], $3::int8[], $4::int8[], $5::int8[]) AS u(id, dp, dpo, cp, cpo) \
               WHERE a.id = u.id";
const INSERT_TRANSFERS: &str = "INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, ledger, code, pending, \
               status, pending_id, timeout_at, external_ref, metadata, created_at) \
               SELECT id, dr, cr, amount, ledger, code, pending, status, pending_id, timeout_at, ext, meta, created \
               FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::int8[], $5::text[], $6::int8[], $7::bool[], \
               $8::text[], $9::uuid[], $10::int8[], $11::text[], $12::text[], $13::int8[]) WITH ORDINALITY \
               AS u(id, dr, cr, amount, ledger, code, pending, status, pending_id, timeout_at, ext, meta, created, n) \
               ORDER BY n";
const UPDATE_STATUSES: &str = "UPDATE transfers AS t SET status = u.status FROM unnest($1::uuid[], $2::text[]) AS u(id, status) \
               WHERE t.id = u.id";
/// Numbers, links and inserts the events (see `coffer_append_events` in the schema).
const INSERT_EVENTS: &str = "SELECT coffer_append_events($1, $2, $3, $4, $5, $6, $7, $8)";

/// The statements a batch writes with, prepared before the batch sends any of them (see
/// [`write_changes`]).
struct Writes([Statement; 6]);

impl Writes {
    async fn prepare(client: &Client) -> Result<Writes, tokio_postgres::Error> {
        let [a, b, c, d, e, f] = [
            INSERT_LEDGERS,
            INSERT_ACCOUNTS,
            UPDATE_BALANCES,
            INSERT_TRANSFERS,
            UPDATE_STATUSES,
            INSERT_EVENTS,
        ];
        let (a, b, c, d, e, f) = tokio::try_join!(
            client.prepare_cached(a),
            client.prepare_cached(b),
            client.prepare_cached(c),
            client.prepare_cached(d),
            client.prepare_cached(e),
            client.prepare_cached(f),
        )?;
        Ok(Writes([a, b, c, d, e, f]))
    }
}

/// Writes a batch's changes: one statement per kind of change, each row set passed as arrays.
/// Every statement is already prepared, so each one goes out on the connection the first time
/// its future is polled, without waiting for anything: the caller relies on that to send the
/// COMMIT right behind them.
async fn write_changes(
    client: &Client,
    writes: &Writes,
    changes: &Changes,
    now: Timestamp,
) -> Result<(), tokio_postgres::Error> {
    let [ledgers, accounts, balances, transfers, statuses, events] = &writes.0;
    let records = async {
        tokio::try_join!(
            insert_ledgers(client, ledgers, changes),
            insert_accounts(client, accounts, changes),
            update_balances(client, balances, changes),
            insert_transfers(client, transfers, changes),
            update_statuses(client, statuses, changes),
        )
    };
    // The events go last: their statement takes the outbox clock, which must come after every
    // other lock the batch takes (a new transfer id's index entry included), or two batches
    // racing on one id could wait on each other.
    let (records, events) = in_order(records, || write_events(client, events, changes, now)).await;
    records?;
    events
}

/// Runs `first` and `then()` concurrently, but polls `first` once before `then()` is even made,
/// so whatever `first` sends on its first poll — every statement here sends at once — reaches
/// the connection before anything `then` sends. tokio-postgres runs requests in the order sent.
async fn in_order<A: Future, B: Future>(first: A, then: impl FnOnce() -> B) -> (A::Output, B::Output) {
    let mut first = pin!(first);
    let early = poll_fn(|cx| Poll::Ready(first.as_mut().poll(cx))).await;
    let then = then();
    match early {
        Poll::Ready(done) => (done, then.await),
        Poll::Pending => tokio::join!(first, then),
    }
}

/// New ledgers.
async fn insert_ledgers(
    client: &Client,
    statement: &Statement,
    changes: &Changes,
) -> Result<(), tokio_postgres::Error> {
    if changes.ledgers.is_empty() {
        return Ok(());
    }
    let codes: Vec<&str> = changes.ledgers.iter().map(|l| l.code.as_str()).collect();
    let scales: Vec<i64> = changes.ledgers.iter().map(|l| i64::from(l.scale.get())).collect();
    let created: Vec<i64> = changes.ledgers.iter().map(|l| l.created_at.as_micros()).collect();
    client.execute(statement, &[&codes, &scales, &created]).await?;
    Ok(())
}

/// New accounts.
async fn insert_accounts(
    client: &Client,
    statement: &Statement,
    changes: &Changes,
) -> Result<(), tokio_postgres::Error> {
    if changes.accounts_created.is_empty() {
        return Ok(());
    }
    let a = &changes.accounts_created;
    let ids: Vec<Uuid> = a.iter().map(|a| a.id.0).collect();
    let ledgers: Vec<&str> = a.iter().map(|a| a.ledger.as_str()).collect();
    let codes: Vec<i64> = a.iter().map(|a| i64::from(a.code)).collect();
    let flags: Vec<i64> = a.iter().map(|a| flags_bits(a.flags)).collect();
    let refs: Vec<Option<&str>> = a.iter().map(|a| a.external_ref.as_ref().map(|r| r.as_str())).collect();
    let metadata: Vec<Option<String>> = a.iter().map(|a| metadata_json(&a.metadata)).collect();
    let [dp, dpo, cp, cpo] = balance_columns(a.iter().map(|a| &a.balance));
    let created: Vec<i64> = a.iter().map(|a| a.created_at.as_micros()).collect();
    client
        .execute(
            statement,
            &[&ids, &ledgers, &codes, &flags, &refs, &metadata, &dp, &dpo, &cp, &cpo, &created],
        )
        .await?;
    Ok(())
}

/// The balances of accounts that existed before the batch.
async fn update_balances(
    client: &Client,
    statement: &Statement,
    changes: &Changes,
) -> Result<(), tokio_postgres::Error> {
    if changes.balances.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = changes.balances.iter().map(|a| a.id.0).collect();
    let [dp, dpo, cp, cpo] = balance_columns(changes.balances.iter().map(|a| &a.balance));
    client.execute(statement, &[&ids, &dp, &dpo, &cp, &cpo]).await?;
    Ok(())
}

/// New transfers, with sequence numbers in the order the core made them.
async fn insert_transfers(
    client: &Client,
    statement: &Statement,
    changes: &Changes,
) -> Result<(), tokio_postgres::Error> {
    if changes.transfers_created.is_empty() {
        return Ok(());
    }
    let t = &changes.transfers_created;
    let ids: Vec<Uuid> = t.iter().map(|t| t.id.0).collect();
    let debits: Vec<Uuid> = t.iter().map(|t| t.debit_account_id.0).collect();
    let credits: Vec<Uuid> = t.iter().map(|t| t.credit_account_id.0).collect();
    let amounts: Vec<i64> = t.iter().map(|t| int(t.amount.get())).collect();
    let ledgers: Vec<&str> = t.iter().map(|t| t.ledger.as_str()).collect();
    let codes: Vec<i64> = t.iter().map(|t| i64::from(t.code)).collect();
    let pending: Vec<bool> = t.iter().map(|t| t.pending).collect();
    let statuses: Vec<&str> = t.iter().map(|t| t.status.as_str()).collect();
    let pending_ids: Vec<Option<Uuid>> = t.iter().map(|t| t.pending_id.map(|id| id.0)).collect();
    let timeouts: Vec<Option<i64>> = t.iter().map(|t| t.timeout_at.map(|at| at.as_micros())).collect();
    let refs: Vec<Option<&str>> = t.iter().map(|t| t.external_ref.as_ref().map(|r| r.as_str())).collect();
    let metadata: Vec<Option<String>> = t.iter().map(|t| metadata_json(&t.metadata)).collect();
    let created: Vec<i64> = t.iter().map(|t| t.created_at.as_micros()).collect();
    // WITH ORDINALITY and ORDER BY: sequence numbers follow the order the core created them.
    client
        .execute(
            statement,
            &[
                &ids,
                &debits,
                &credits,
                &amounts,
                &ledgers,
                &codes,
                &pending,
                &statuses,
                &pending_ids,
                &timeouts,
                &refs,
                &metadata,
                &created,
            ],
        )
        .await?;
    Ok(())
}

/// Holds the batch posted, voided or expired.
async fn update_statuses(
    client: &Client,
    statement: &Statement,
    changes: &Changes,
) -> Result<(), tokio_postgres::Error> {
    if changes.statuses.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = changes.statuses.iter().map(|(id, _): &(TransferId, _)| id.0).collect();
    let statuses: Vec<&str> = changes.statuses.iter().map(|(_, s)| s.as_str()).collect();
    client.execute(statement, &[&ids, &statuses]).await?;
    Ok(())
}

fn balance_columns<'a>(balances: impl Iterator<Item = &'a coffer_ledger::Balance>) -> [Vec<i64>; 4] {
    let mut columns: [Vec<i64>; 4] = Default::default();
    for b in balances {
        columns[0].push(int(b.debits_pending));
        columns[1].push(int(b.debits_posted));
        columns[2].push(int(b.credits_pending));
        columns[3].push(int(b.credits_posted));
    }
    columns
}

async fn write_events(
    client: &Client,
    statement: &Statement,
    changes: &Changes,
    now: Timestamp,
) -> Result<(), tokio_postgres::Error> {
    let envelopes = Envelopes::encode(&changes.events, now);
    if envelopes.is_empty() {
        return Ok(());
    }
    let n = envelopes.len();
    let (mut ids, mut kinds, mut subjects, mut data, mut traces, mut heads, mut tails) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for e in envelopes.iter() {
        ids.push(e.id);
        kinds.push(e.kind);
        subjects.push(e.subject);
        data.push(e.data);
        traces.push(e.traceparent);
        heads.push(e.chain.0);
        tails.push(e.chain.1);
    }
    client
        .execute(statement, &[&ids, &kinds, &subjects, &now.as_micros(), &data, &traces, &heads, &tails])
        .await?;
    Ok(())
}
