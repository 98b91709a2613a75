//! The per-account index of transfers, written in bulk.
//!
//! Listing an account's transfers needs an index keyed by account. Kept up to date in every
//! batch, such an index dirties one B-tree page per account the batch touches, and each dirty
//! page costs a full page in the WAL and again in the checkpoint: with a thousand busy accounts
//! that was most of a batch's I/O. So postings (one per side of each transfer) wait in memory and
//! are written, sorted, once `FLUSH_AT` have gathered, in the transaction of the batch that
//! reached it. `postings_through` records how far the table is complete; a listing reads the
//! table up to there and scans the few transfers after it (see `read::transfers`).
//!
//! The buffer is derived data: at start, and after a batch whose commit failed, it is rebuilt
//! from the tables, so it can never disagree with what was committed.

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::write::insert_rows;

/// Postings gathered before they are written: at most half as many transfers are left for a
/// listing to scan, and a flush takes a few tens of milliseconds. Tiny in unit tests, so they
/// cross many flushes.
pub(crate) const FLUSH_AT: usize = if cfg!(test) { 16 } else { 65_536 };

/// Postings not yet in the table, as `[account seq, transfer seq]`.
pub(crate) struct Postings {
    pending: Vec<[i64; 2]>,
}

/// What a batch did with its postings, to make true once it committed.
pub(crate) enum Staged {
    /// Added to the buffer.
    Buffered(Vec<[i64; 2]>),
    /// The buffer and these were written.
    Flushed,
}

impl Postings {
    /// Writes the postings of every transfer after `postings_through` (those a previous process
    /// held in memory), and starts with an empty buffer.
    pub fn catch_up(conn: &mut Connection) -> rusqlite::Result<Self> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "INSERT INTO postings (account_seq, transfer_seq) \
             SELECT a.seq, t.seq FROM transfers t JOIN accounts a ON a.id IN (t.debit_account_id, t.credit_account_id) \
             WHERE t.seq > (SELECT transfer_seq FROM postings_through) ORDER BY 1, 2; \
             UPDATE postings_through SET transfer_seq = (SELECT coalesce(max(seq), 0) FROM transfers);",
        )?;
        tx.commit()?;
        Ok(Self { pending: Vec::new() })
    }

    /// Adds the postings of a batch whose last new transfer is `last_seq`, writing all of them
    /// in `tx` when the buffer is full.
    pub fn stage(&self, tx: &Transaction<'_>, new: Vec<[i64; 2]>, last_seq: i64) -> rusqlite::Result<Staged> {
        if self.pending.len() + new.len() < FLUSH_AT {
            return Ok(Staged::Buffered(new));
        }
        let mut all = Vec::with_capacity(self.pending.len() + new.len());
        all.extend_from_slice(&self.pending);
        all.extend(new);
        // In key order, consecutive inserts descend the same, already cached B-tree path.
        all.sort_unstable();
        insert_rows(tx, "INSERT INTO postings (account_seq, transfer_seq) VALUES ", 2, &all, |s, o, p| {
            s.raw_bind_parameter(o + 1, p[0])?;
            s.raw_bind_parameter(o + 2, p[1])
        })?;
        tx.prepare_cached("UPDATE postings_through SET transfer_seq = ?1")?.execute([last_seq])?;
        Ok(Staged::Flushed)
    }

    /// Makes a committed batch's staging true in memory.
    pub fn committed(&mut self, staged: Staged) {
        match staged {
            Staged::Buffered(new) => self.pending.extend(new),
            Staged::Flushed => self.pending.clear(),
        }
    }
}
