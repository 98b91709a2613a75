//! Reads: a small pool of read-only connections used off the async runtime.
//!
//! With WAL a reader sees the last committed state and never waits for the writer, so lookups and
//! lists stay fast while a batch commits. Lists are keyset-paginated on each table's `seq`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use coffer_ledger::{Account, AccountId, Ledger, LedgerCode, Transfer, TransferId};
use rusqlite::{Connection, OptionalExtension, Params, Row, Statement, ToSql, params_from_iter};
use tokio::sync::Semaphore;

use super::codec::{self, ACCOUNT_COLUMNS, LEDGER_COLUMNS, OUTBOX_COLUMNS, TRANSFER_COLUMNS};
use super::{db_error, postings, schema};
use crate::chain::{ChainLink, OutboxChain};
use crate::{
    AccountFilter, Cursor, Halt, OutboxEvent, Page, PageRequest, StoreError, StoreResult, TransferFilter,
};

/// Read-only connections, each used by one blocking task at a time.
pub(crate) struct ReadPool {
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection: a reader waits here (asynchronously) for a free connection.
    permits: Semaphore,
    /// Tripped by a read that meets a damaged row.
    halt: Halt,
}

impl ReadPool {
    pub fn open(dir: &Path, size: usize, halt: Halt) -> StoreResult<Arc<Self>> {
        let conns = (0..size).map(|_| schema::open_reader(dir)).collect::<StoreResult<Vec<_>>>()?;
        Ok(Arc::new(Self { idle: Mutex::new(conns), permits: Semaphore::new(size), halt }))
    }

    /// Runs `read` on a pooled connection in a blocking task.
    pub async fn run<T, F>(self: &Arc<Self>, read: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| StoreError::unavailable("no read connection").because(e))?;
        let pool = Arc::clone(self);
        let task = tokio::task::spawn_blocking(move || {
            let lease = Lease::take(&pool);
            read(lease.conn())
        });
        let result = task.await.map_err(|e| StoreError::unavailable("read failed").because(e))?;
        drop(permit);
        self.halt.watch(result.map_err(db_error))
    }
}

/// A connection out of the pool; it goes back even if the read panics.
struct Lease<'a> {
    pool: &'a ReadPool,
    conn: Option<Connection>,
}

impl<'a> Lease<'a> {
    fn take(pool: &'a ReadPool) -> Self {
        // The semaphore lets at most as many readers in as there are connections.
        let conn = pool.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        Self { pool, conn }
    }

    fn conn(&self) -> &Connection {
        self.conn.as_ref().expect("a permit always finds an idle connection")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        }
    }
}

type Decode<T> = fn(&Row<'_>) -> rusqlite::Result<(i64, T)>;

/// Runs a list query that selected at most `limit + 1` rows: the extra row only says another
/// page exists, so `next_cursor` is never set on the last page.
fn page<T>(
    stmt: &mut Statement<'_>,
    params: impl Params,
    limit: u32,
    decode: Decode<T>,
) -> rusqlite::Result<Page<T>> {
    let mut rows = stmt.query(params)?;
    let mut items = Vec::new();
    let mut last_seq = None;
    while let Some(row) = rows.next()? {
        if items.len() == limit as usize {
            return Ok(Page { items, next_cursor: last_seq.map(Cursor) });
        }
        let (seq, item) = decode(row)?;
        last_seq = Some(seq);
        items.push(item);
    }
    Ok(Page { items, next_cursor: None })
}

fn after(page: &PageRequest) -> i64 {
    page.after.map_or(0, |c| c.0)
}

fn fetch(page: &PageRequest) -> i64 {
    i64::from(page.limit()) + 1
}

pub(crate) fn ledger(conn: &Connection, code: LedgerCode) -> rusqlite::Result<Option<Ledger>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {LEDGER_COLUMNS} FROM ledgers WHERE code = ?1"))?;
    Ok(stmt.query_row([code.as_str()], codec::ledger).optional()?.map(|(_, l)| l))
}

pub(crate) fn ledgers(conn: &Connection, req: PageRequest) -> rusqlite::Result<Page<Ledger>> {
    let sql = format!("SELECT {LEDGER_COLUMNS} FROM ledgers WHERE seq > ?1 ORDER BY seq LIMIT ?2");
    page(&mut *conn.prepare_cached(&sql)?, [after(&req), fetch(&req)], req.limit(), codec::ledger)
}

pub(crate) fn account(conn: &Connection, id: AccountId) -> rusqlite::Result<Option<Account>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1"))?;
    Ok(stmt.query_row([id.0.as_bytes()], codec::account).optional()?.map(|(_, a)| a))
}

pub(crate) fn accounts(
    conn: &Connection,
    filter: AccountFilter,
    req: PageRequest,
) -> rusqlite::Result<Page<Account>> {
    let (after, fetch) = (after(&req), fetch(&req));
    let ledger = filter.ledger.as_ref().map(|l| l.as_str());
    let external_ref = filter.external_ref.as_ref().map(|r| r.as_str());
    let mut params: Vec<&dyn ToSql> = vec![&after, &fetch];
    // One statement per filter shape, so each one's plan walks the matching (column, seq) index.
    let condition = match (&ledger, &external_ref) {
        (Some(ledger), Some(external_ref)) => {
            params.extend([external_ref as &dyn ToSql, ledger]);
            "external_ref = ?3 AND ledger = ?4"
        }
        (Some(ledger), None) => {
            params.push(ledger);
            "ledger = ?3"
        }
        (None, Some(external_ref)) => {
            params.push(external_ref);
            "external_ref = ?3"
        }
        (None, None) => "1",
    };
    let sql = format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE {condition} AND seq > ?1 ORDER BY seq LIMIT ?2"
    );
    page(&mut *conn.prepare_cached(&sql)?, params_from_iter(params), req.limit(), codec::account)
}

pub(crate) fn transfer(conn: &Connection, id: TransferId) -> rusqlite::Result<Option<Transfer>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = ?1"))?;
    Ok(stmt.query_row([id.0.as_bytes()], codec::transfer).optional()?.map(|(_, t)| t))
}

pub(crate) fn transfers(
    conn: &Connection,
    filter: TransferFilter,
    req: PageRequest,
) -> rusqlite::Result<Page<Transfer>> {
    if let Some(account) = filter.account_id {
        return transfers_of_account(conn, account, filter.ledger, req);
    }
    let (after, fetch) = (after(&req), fetch(&req));
    let ledger = filter.ledger.as_ref().map(|l| l.as_str());
    let mut params: Vec<&dyn ToSql> = vec![&after, &fetch];
    let condition = match &ledger {
        Some(ledger) => {
            params.push(ledger);
            "ledger = ?3 AND seq > ?1"
        }
        None => "seq > ?1",
    };
    let sql = format!("SELECT {TRANSFER_COLUMNS} FROM transfers WHERE {condition} ORDER BY seq LIMIT ?2");
    page(&mut *conn.prepare_cached(&sql)?, params_from_iter(params), req.limit(), codec::transfer)
}

/// The transfers on either side of an account, in `seq` order, from its postings (see
/// `postings`), all read in one transaction so the postings and the tail after them meet exactly.
/// Every transfer of an account is on the account's ledger, so a ledger filter keeps all or none.
fn transfers_of_account(
    conn: &Connection,
    account: AccountId,
    ledger: Option<LedgerCode>,
    req: PageRequest,
) -> rusqlite::Result<Page<Transfer>> {
    let tx = conn.unchecked_transaction()?;
    let id = account.0.as_bytes();
    let found: Option<(i64, String)> = tx
        .prepare_cached("SELECT seq, ledger FROM accounts WHERE id = ?1")?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((account_seq, _)) = found.filter(|(_, on)| ledger.is_none_or(|l| l.as_str() == on)) else {
        return Ok(Page { items: Vec::new(), next_cursor: None });
    };
    let limit = req.limit() as usize;
    let seqs = postings::account_transfers(&tx, (account_seq, id), after(&req), limit + 1)?;
    let mut by_seq =
        tx.prepare_cached(&format!("SELECT {TRANSFER_COLUMNS} FROM transfers WHERE seq = ?1"))?;
    let items = seqs
        .iter()
        .take(limit)
        .map(|seq| by_seq.query_row([seq], codec::transfer).map(|(_, t)| t))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let next_cursor = (seqs.len() > limit).then(|| Cursor(seqs[limit - 1]));
    Ok(Page { items, next_cursor })
}

/// Pending transfers whose timeout is at or before `now`, oldest first, through the partial
/// index that only holds pending transfers.
pub(crate) fn due_pending(conn: &Connection, now: i64, limit: usize) -> rusqlite::Result<Vec<TransferId>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id FROM transfers WHERE status = 'pending' AND timeout_at <= ?1 ORDER BY timeout_at LIMIT ?2",
    )?;
    let ids = stmt.query_map(rusqlite::params![now, limit as i64], |row| row.get::<_, [u8; 16]>(0))?;
    ids.map(|id| id.map(|bytes| TransferId(uuid::Uuid::from_bytes(bytes)))).collect()
}

/// The outbox after `position`: one writer commits batches one after another, so the outbox's
/// `seq` is already in commit order and is the position.
pub(crate) fn events_after(
    conn: &Connection,
    position: i64,
    limit: usize,
) -> rusqlite::Result<Vec<OutboxEvent>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    ))?;
    let rows = stmt.query_map(rusqlite::params![position, limit as i64], codec::outbox_event)?;
    rows.collect()
}

pub(crate) fn outbox_chain(conn: &Connection) -> rusqlite::Result<OutboxChain> {
    let link = |table: &str| {
        conn.prepare_cached(&format!("SELECT position, hash FROM {table}"))?
            .query_row([], |row| Ok(ChainLink { position: row.get(0)?, hash: codec::chain_hash(row, 1)? }))
    };
    Ok(OutboxChain { anchor: link("outbox_anchor")?, head: link("outbox_head")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(conn: &Connection, sql: &str, params: impl Params) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt.query_map(params, |row| row.get::<_, String>(3)).unwrap();
        rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("\n")
    }

    /// Expiry must find due holds through the partial index, never by a scan.
    #[test]
    fn due_holds_are_found_through_their_index() {
        let dir = tempfile::tempdir().unwrap();
        let conn = schema::open_writer(dir.path()).unwrap();
        let expiry = plan(&conn, "SELECT id FROM transfers WHERE status = 'pending' AND timeout_at <= 1", []);
        assert!(expiry.contains("transfers_to_expire"), "{expiry}");
    }
}
