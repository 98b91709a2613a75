//! The per-account index of transfers, written in bulk.
//!
//! Listing an account's transfers needs an index keyed by account. Kept up to date in every
//! batch, such an index dirties one B-tree page per account the batch touches, and each dirty page
//! costs a full page in the WAL and again in the checkpoint: with a thousand busy accounts that
//! was most of a batch's I/O, and one B-tree insert per transfer side was a fifth of its CPU.
//! So postings (an account and a transfer on either side of it) wait in memory and are written
//! once `FLUSH_AT` have gathered, in the transaction of the batch that reached it, as one row per
//! account and run of up to `CHUNK` transfers: the transfers' sequence numbers, delta-encoded.
//! `postings_through` records how far the table is complete; a listing reads the table up to
//! there and scans the few transfers after it.
//!
//! The buffer is derived data: at start, and after a batch whose commit failed, it is rebuilt
//! from the tables, so it never disagrees with what was committed.

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::write::insert_rows;

/// Postings gathered before they are written: at most half as many transfers are left for a
/// listing to scan. Tiny in unit tests, so they cross many flushes.
pub(crate) const FLUSH_AT: usize = if cfg!(test) { 16 } else { 65_536 };

/// Transfers per row at most, so a listing of a hot account decodes little it does not return.
const CHUNK: usize = if cfg!(test) { 3 } else { 256 };

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
        let missing: Vec<[i64; 2]> = tx
            .prepare(
                "SELECT a.seq, t.seq FROM transfers t \
                 JOIN accounts a ON a.id IN (t.debit_account_id, t.credit_account_id) \
                 WHERE t.seq > (SELECT transfer_seq FROM postings_through)",
            )?
            .query_map([], |row| Ok([row.get(0)?, row.get(1)?]))?
            .collect::<rusqlite::Result<_>>()?;
        if let Some(last) = missing.iter().map(|[_, transfer]| *transfer).max() {
            write(&tx, missing, last)?;
        }
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
        write(tx, all, last_seq)?;
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

/// Writes `postings` as rows of up to `CHUNK` transfers per account, and moves the watermark to
/// `through`.
fn write(tx: &Transaction<'_>, mut postings: Vec<[i64; 2]>, through: i64) -> rusqlite::Result<()> {
    postings.sort_unstable();
    let mut rows: Vec<(i64, i64, Vec<u8>)> = Vec::new();
    for account in postings.chunk_by(|a, b| a[0] == b[0]) {
        for run in account.chunks(CHUNK) {
            let seqs: Vec<i64> = run.iter().map(|[_, transfer]| *transfer).collect();
            rows.push((run[0][0], seqs[seqs.len() - 1], encode(&seqs)));
        }
    }
    let insert = "INSERT INTO postings (account_seq, last_transfer_seq, transfer_seqs) VALUES ";
    insert_rows(tx, insert, 3, &rows, |s, o, (account, last, seqs)| {
        s.raw_bind_parameter(o + 1, account)?;
        s.raw_bind_parameter(o + 2, last)?;
        s.raw_bind_parameter(o + 3, seqs.as_slice())
    })?;
    tx.prepare_cached("UPDATE postings_through SET transfer_seq = ?1")?.execute([through])?;
    Ok(())
}

/// Up to `want` sequence numbers of the account's transfers after `after`, in order, as of the
/// snapshot `conn` reads in (the caller holds one read transaction for the whole listing).
pub(crate) fn account_transfers(
    conn: &Connection,
    account: (i64, &[u8; 16]),
    after: i64,
    want: usize,
) -> rusqlite::Result<Vec<i64>> {
    let through: i64 =
        conn.prepare_cached("SELECT transfer_seq FROM postings_through")?.query_row([], |r| r.get(0))?;
    let mut seqs = Vec::with_capacity(want);
    if after < through {
        let mut chunks = conn.prepare_cached(
            "SELECT transfer_seqs FROM postings WHERE account_seq = ?1 AND last_transfer_seq > ?2 \
             ORDER BY last_transfer_seq",
        )?;
        let mut rows = chunks.query([account.0, after])?;
        while seqs.len() < want
            && let Some(row) = rows.next()?
        {
            let chunk = decode(row.get_ref(0)?.as_blob()?);
            seqs.extend(chunk.into_iter().filter(|seq| *seq > after).take(want - seqs.len()));
        }
    }
    if seqs.len() < want {
        // The transfers the table does not hold yet: a scan of the table's tail.
        let mut tail = conn.prepare_cached(
            "SELECT seq FROM transfers WHERE seq > ?1 AND (debit_account_id = ?2 OR credit_account_id = ?2) \
             ORDER BY seq LIMIT ?3",
        )?;
        let from = after.max(through);
        let left = (want - seqs.len()) as i64;
        let more = tail.query_map(rusqlite::params![from, account.1, left], |row| row.get(0))?;
        for seq in more {
            seqs.push(seq?);
        }
    }
    Ok(seqs)
}

/// Increasing numbers as LEB128 varints: the first, then each one's distance from the previous.
fn encode(seqs: &[i64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(seqs.len() * 2 + 8);
    let mut previous = 0;
    for &seq in seqs {
        let mut delta = (seq - previous) as u64;
        previous = seq;
        loop {
            let byte = (delta & 0x7f) as u8;
            delta >>= 7;
            if delta == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
    out
}

fn decode(bytes: &[u8]) -> Vec<i64> {
    let mut seqs = Vec::with_capacity(bytes.len());
    let (mut value, mut shift, mut previous) = (0u64, 0, 0i64);
    for &byte in bytes {
        value |= u64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            previous += value as i64;
            seqs.push(previous);
            (value, shift) = (0, 0);
        }
    }
    seqs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_round_trip_through_the_encoding() {
        for seqs in [vec![], vec![1], vec![1, 2, 3], vec![127, 128, 16_511, 16_512, 1 << 40, i64::MAX]] {
            assert_eq!(decode(&encode(&seqs)), seqs);
        }
        assert_eq!(encode(&[5, 6, 8]).len(), 3);
    }
}
