//! Persisting what a batch changed: new records with multi-row INSERTs, changed balances and
//! statuses with one UPDATE per row (by its sequence number), and the outbox.
//!
//! Executing a statement costs more than inserting a narrow row, so new rows go 64 to a
//! statement. New transfers and accounts get their sequence numbers here, explicitly, so their
//! postings are known without asking SQLite which rowid each row got.

use coffer_ledger::{Account, Changes, Emitted, Timestamp, Transfer};
use rusqlite::{Statement, Transaction, params};

use super::batch::RowIds;
use super::codec::{self, int};
use super::postings::{Postings, Staged};
use crate::chain::ChainHash;
use crate::outbox::{Envelope, Envelopes};

/// Rows per multi-row INSERT; 64 rows of at most 14 columns stay far below SQLite's limit on
/// parameters.
const ROWS_PER_STATEMENT: usize = 64;

/// Writes `changes`; answers what became of the new transfers' postings, for the caller to make
/// true in `postings` once the transaction committed.
pub(super) fn write_changes(
    tx: &Transaction<'_>,
    changes: &Changes,
    rows: &mut RowIds,
    postings: &Postings,
    now: Timestamp,
) -> rusqlite::Result<Staged> {
    let head = outbox_head(tx)?;
    let events = &changes.events;
    if events.len() < LINK_ASIDE_FROM {
        let staged = write_records(tx, changes, rows, postings)?;
        write_events(tx, &Linked::new(events, now, head), now)?;
        return Ok(staged);
    }
    // The writer's thread is the store's bottleneck, and the envelopes and their links are
    // computation alone: a large batch makes them on a second thread while this one writes
    // the records, so the chain costs the writer little more than the outbox's inserts.
    std::thread::scope(|scope| {
        let linking = scope.spawn(|| Linked::new(events, now, head));
        let staged = write_records(tx, changes, rows, postings);
        let linked = linking.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        write_events(tx, &linked, now)?;
        staged
    })
}

/// Batches with at least this many events link them on a thread of their own: below it, the
/// thread would cost more than it saves.
const LINK_ASIDE_FROM: usize = 512;

fn write_records(
    tx: &Transaction<'_>,
    changes: &Changes,
    rows: &mut RowIds,
    postings_buffer: &Postings,
) -> rusqlite::Result<Staged> {
    let mut staged = Staged::Buffered(Vec::new());
    if !changes.ledgers.is_empty() {
        let mut insert =
            tx.prepare_cached("INSERT INTO ledgers (code, scale, created_at) VALUES (?1, ?2, ?3)")?;
        for l in &changes.ledgers {
            insert.execute(params![l.code.as_str(), l.scale.get(), l.created_at.as_micros()])?;
        }
    }
    if !changes.accounts_created.is_empty() {
        let first = next_seq(tx, "accounts")?;
        let numbered: Vec<(i64, &Account)> = (first..).zip(&changes.accounts_created).collect();
        insert_rows(tx, ACCOUNT_INSERT, 12, &numbered, bind_account)?;
        rows.accounts.extend(numbered.iter().map(|(seq, a)| (a.id, *seq)));
    }
    if !changes.balances.is_empty() {
        let mut update = tx.prepare_cached(
            "UPDATE accounts SET debits_pending = ?2, debits_posted = ?3, credits_pending = ?4, \
             credits_posted = ?5 WHERE seq = ?1",
        )?;
        for a in &changes.balances {
            let b = &a.balance;
            let seq = rows.accounts[&a.id];
            update.execute([
                seq,
                int(b.debits_pending),
                int(b.debits_posted),
                int(b.credits_pending),
                int(b.credits_posted),
            ])?;
        }
    }
    if !changes.transfers_created.is_empty() {
        let first = next_seq(tx, "transfers")?;
        let numbered: Vec<(i64, &Transfer)> = (first..).zip(&changes.transfers_created).collect();
        insert_rows(tx, TRANSFER_INSERT, 14, &numbered, bind_transfer)?;
        let last = numbered.last().map_or(0, |(seq, _)| *seq);
        let postings = numbered
            .iter()
            .flat_map(|(seq, t)| {
                [[rows.accounts[&t.debit_account_id], *seq], [rows.accounts[&t.credit_account_id], *seq]]
            })
            .collect();
        staged = postings_buffer.stage(tx, postings, last)?;
    }
    if !changes.statuses.is_empty() {
        let mut update = tx.prepare_cached("UPDATE transfers SET status = ?2 WHERE seq = ?1")?;
        for (id, status) in &changes.statuses {
            update.execute(params![rows.transfers[id], status.as_str()])?;
        }
    }
    Ok(staged)
}

/// The sequence number the next row of `table` gets: rows are never deleted, so one past the
/// largest, found by a single descent to the rightmost leaf.
fn next_seq(tx: &Transaction<'_>, table: &str) -> rusqlite::Result<i64> {
    let largest: Option<i64> =
        tx.prepare_cached(&format!("SELECT max(seq) FROM {table}"))?.query_row([], |r| r.get(0))?;
    Ok(largest.unwrap_or(0) + 1)
}

const ACCOUNT_INSERT: &str = "INSERT INTO accounts (seq, id, ledger, code, flags, external_ref, metadata, \
     debits_pending, debits_posted, credits_pending, credits_posted, created_at) VALUES ";

fn bind_account(s: &mut Statement<'_>, o: usize, (seq, a): &(i64, &Account)) -> rusqlite::Result<()> {
    let b = &a.balance;
    s.raw_bind_parameter(o + 1, seq)?;
    s.raw_bind_parameter(o + 2, a.id.0.as_bytes())?;
    s.raw_bind_parameter(o + 3, a.ledger.as_str())?;
    s.raw_bind_parameter(o + 4, a.code)?;
    s.raw_bind_parameter(o + 5, codec::flags_bits(a.flags))?;
    s.raw_bind_parameter(o + 6, a.external_ref.as_ref().map(|r| r.as_str()))?;
    s.raw_bind_parameter(o + 7, codec::metadata_json(&a.metadata))?;
    s.raw_bind_parameter(o + 8, int(b.debits_pending))?;
    s.raw_bind_parameter(o + 9, int(b.debits_posted))?;
    s.raw_bind_parameter(o + 10, int(b.credits_pending))?;
    s.raw_bind_parameter(o + 11, int(b.credits_posted))?;
    s.raw_bind_parameter(o + 12, a.created_at.as_micros())
}

const TRANSFER_INSERT: &str = "INSERT INTO transfers (seq, id, debit_account_id, credit_account_id, amount, \
     ledger, code, pending, status, pending_id, timeout_at, external_ref, metadata, created_at) VALUES ";

fn bind_transfer(s: &mut Statement<'_>, o: usize, (seq, t): &(i64, &Transfer)) -> rusqlite::Result<()> {
    s.raw_bind_parameter(o + 1, seq)?;
    s.raw_bind_parameter(o + 2, t.id.0.as_bytes())?;
    s.raw_bind_parameter(o + 3, t.debit_account_id.0.as_bytes())?;
    s.raw_bind_parameter(o + 4, t.credit_account_id.0.as_bytes())?;
    s.raw_bind_parameter(o + 5, int(t.amount.get()))?;
    s.raw_bind_parameter(o + 6, t.ledger.as_str())?;
    s.raw_bind_parameter(o + 7, t.code)?;
    s.raw_bind_parameter(o + 8, t.pending)?;
    s.raw_bind_parameter(o + 9, t.status.as_str())?;
    s.raw_bind_parameter(o + 10, t.pending_id.as_ref().map(|id| id.0.as_bytes()))?;
    s.raw_bind_parameter(o + 11, t.timeout_at.map(|at| at.as_micros()))?;
    s.raw_bind_parameter(o + 12, t.external_ref.as_ref().map(|r| r.as_str()))?;
    s.raw_bind_parameter(o + 13, codec::metadata_json(&t.metadata))?;
    s.raw_bind_parameter(o + 14, t.created_at.as_micros())
}

/// `insert` (ending in `VALUES `) followed by `rows` groups of `columns` placeholders.
fn values_sql(insert: &str, columns: usize, rows: usize) -> String {
    let group = format!("({})", vec!["?"; columns].join(", "));
    format!("{insert}{}", vec![group; rows].join(", "))
}

/// Inserts `items` with full multi-row statements and single-row ones for the remainder, so a
/// table has only two statements in the cache. `bind` binds one item's columns after parameter
/// `offset`.
pub(super) fn insert_rows<T>(
    tx: &Transaction<'_>,
    insert: &str,
    columns: usize,
    items: &[T],
    bind: impl Fn(&mut Statement<'_>, usize, &T) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let mut chunks = items.chunks_exact(ROWS_PER_STATEMENT);
    if items.len() >= ROWS_PER_STATEMENT {
        let mut many = tx.prepare_cached(&values_sql(insert, columns, ROWS_PER_STATEMENT))?;
        for chunk in &mut chunks {
            for (i, item) in chunk.iter().enumerate() {
                bind(&mut many, i * columns, item)?;
            }
            many.raw_execute()?;
        }
    }
    if !chunks.remainder().is_empty() {
        let mut one = tx.prepare_cached(&values_sql(insert, columns, 1))?;
        for item in chunks.remainder() {
            bind(&mut one, 0, item)?;
            one.raw_execute()?;
        }
    }
    Ok(())
}

/// A batch's events as envelopes (see [`Envelopes`]), numbered and linked after the outbox's
/// head as it stood when the batch began.
struct Linked<'a> {
    envelopes: Envelopes<'a>,
    /// Each envelope's position and link, in order.
    links: Vec<(i64, ChainHash)>,
}

impl<'a> Linked<'a> {
    fn new(events: &'a [Emitted], now: Timestamp, (mut position, mut head): (i64, ChainHash)) -> Self {
        let envelopes = Envelopes::encode(events, now);
        let links = envelopes
            .iter()
            .map(|envelope| {
                position += 1;
                head = envelope.link(&head, position);
                (position, head)
            })
            .collect();
        Self { envelopes, links }
    }
}

/// Writes the linked envelopes and moves the outbox's head to the last of them.
fn write_events(tx: &Transaction<'_>, linked: &Linked<'_>, now: Timestamp) -> rusqlite::Result<()> {
    let Some((position, head)) = linked.links.last() else { return Ok(()) };
    tx.prepare_cached("UPDATE outbox_head SET position = ?1, hash = ?2")?
        .execute(params![position, &head.0[..]])?;
    let rows: Vec<(&(i64, ChainHash), Envelope<'_>)> =
        linked.links.iter().zip(linked.envelopes.iter()).collect();
    let insert = "INSERT INTO outbox (seq, id, type, subject, time, data, traceparent, hash) VALUES ";
    insert_rows(tx, insert, 8, &rows, |s, o, ((position, hash), e)| {
        s.raw_bind_parameter(o + 1, position)?;
        s.raw_bind_parameter(o + 2, e.id.as_bytes())?;
        s.raw_bind_parameter(o + 3, e.kind)?;
        s.raw_bind_parameter(o + 4, e.subject.as_bytes())?;
        s.raw_bind_parameter(o + 5, now.as_micros())?;
        s.raw_bind_parameter(o + 6, e.data)?;
        s.raw_bind_parameter(o + 7, e.traceparent)?;
        s.raw_bind_parameter(o + 8, &hash.0[..])
    })
}

/// The outbox chain's last link and its position, read in the writing transaction.
pub(super) fn outbox_head(conn: &rusqlite::Connection) -> rusqlite::Result<(i64, ChainHash)> {
    conn.prepare_cached("SELECT position, hash FROM outbox_head")?
        .query_row([], |row| Ok((row.get(0)?, codec::chain_hash(row, 1)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_lists_hold_one_group_per_row() {
        assert_eq!(
            values_sql("INSERT INTO t (a, b) VALUES ", 2, 3),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?)"
        );
    }
}
