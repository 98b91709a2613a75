//! Reads on pooled connections. Lists are keyset-paginated on each table's `seq`.

use coffer_ledger::{Account, AccountId, Ledger, LedgerCode, Timestamp, Transfer, TransferId};
use deadpool_postgres::Client;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{codec, pg_error};
use crate::columns::{ACCOUNT_COLUMNS, LEDGER_COLUMNS, TRANSFER_COLUMNS};
use crate::{AccountFilter, Cursor, OutboxEvent, Page, PageRequest, StoreResult, TransferFilter};

type Decode<T> = fn(&Row) -> StoreResult<(i64, T)>;

/// Runs a list query whose last two parameters are the cursor and `limit + 1`: the extra row
/// only says another page exists, so `next_cursor` is never set on the last page.
async fn page<T>(
    client: &Client,
    sql: &str,
    filters: &[&(dyn ToSql + Sync)],
    req: PageRequest,
    decode: Decode<T>,
) -> StoreResult<Page<T>> {
    let after = req.after.map_or(0, |c| c.0);
    let fetch = i64::from(req.limit()) + 1;
    let mut params: Vec<&(dyn ToSql + Sync)> = filters.to_vec();
    params.extend([&after as &(dyn ToSql + Sync), &fetch]);
    let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
    let rows = client.query(&statement, &params).await.map_err(pg_error)?;
    let limit = req.limit() as usize;
    let mut items = Vec::with_capacity(rows.len().min(limit));
    let mut last_seq = None;
    for row in rows.iter().take(limit) {
        let (seq, item) = decode(row)?;
        last_seq = Some(seq);
        items.push(item);
    }
    let next_cursor = if rows.len() > limit { last_seq.map(Cursor) } else { None };
    Ok(Page { items, next_cursor })
}

async fn one<T>(
    client: &Client,
    sql: &str,
    param: &(dyn ToSql + Sync),
    decode: Decode<T>,
) -> StoreResult<Option<T>> {
    let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
    let row = client.query_opt(&statement, &[param]).await.map_err(pg_error)?;
    row.map(|row| decode(&row).map(|(_, item)| item)).transpose()
}

pub(super) async fn ledger(client: &Client, code: LedgerCode) -> StoreResult<Option<Ledger>> {
    let sql = format!("SELECT {LEDGER_COLUMNS} FROM ledgers WHERE code = $1");
    one(client, &sql, &code.as_str(), codec::ledger).await
}

pub(super) async fn ledgers(client: &Client, req: PageRequest) -> StoreResult<Page<Ledger>> {
    let sql = format!("SELECT {LEDGER_COLUMNS} FROM ledgers WHERE seq > $1 ORDER BY seq LIMIT $2");
    page(client, &sql, &[], req, codec::ledger).await
}

pub(super) async fn account(client: &Client, id: AccountId) -> StoreResult<Option<Account>> {
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1");
    one(client, &sql, &id.0, codec::account).await
}

pub(super) async fn accounts(
    client: &Client,
    filter: AccountFilter,
    req: PageRequest,
) -> StoreResult<Page<Account>> {
    let ledger = filter.ledger.as_ref().map(|l| l.as_str());
    let external_ref = filter.external_ref.as_ref().map(|r| r.as_str());
    // One statement per filter shape, so each one's plan walks the matching (column, seq) index.
    let (condition, filters): (&str, Vec<&(dyn ToSql + Sync)>) = match (&ledger, &external_ref) {
        (Some(ledger), Some(external_ref)) => {
            ("external_ref = $1 AND ledger = $2 AND seq > $3", vec![external_ref, ledger])
        }
        (Some(ledger), None) => ("ledger = $1 AND seq > $2", vec![ledger]),
        (None, Some(external_ref)) => ("external_ref = $1 AND seq > $2", vec![external_ref]),
        (None, None) => ("seq > $1", vec![]),
    };
    let n = filters.len() + 2;
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE {condition} ORDER BY seq LIMIT ${n}");
    page(client, &sql, &filters, req, codec::account).await
}

pub(super) async fn transfer(client: &Client, id: TransferId) -> StoreResult<Option<Transfer>> {
    let sql = format!("SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = $1");
    one(client, &sql, &id.0, codec::transfer).await
}

pub(super) async fn transfers(
    client: &Client,
    filter: TransferFilter,
    req: PageRequest,
) -> StoreResult<Page<Transfer>> {
    let ledger = filter.ledger.as_ref().map(|l| l.as_str());
    if let Some(account) = filter.account_id {
        // Every transfer of an account is on the account's ledger: a ledger filter keeps all or none.
        let on = client
            .query_opt("SELECT ledger FROM accounts WHERE id = $1", &[&account.0])
            .await
            .map_err(pg_error)?
            .map(|row| row.get::<_, String>(0));
        if on.is_none_or(|on| ledger.is_some_and(|l| l != on)) {
            return Ok(Page { items: Vec::new(), next_cursor: None });
        }
        // Each side walks its own (account, seq) index; the union is cut to the page again.
        let sql = format!(
            "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE seq IN ( \
               (SELECT seq FROM transfers WHERE debit_account_id = $1 AND seq > $2 ORDER BY seq LIMIT $3) \
               UNION ALL \
               (SELECT seq FROM transfers WHERE credit_account_id = $1 AND seq > $2 ORDER BY seq LIMIT $3)) \
             ORDER BY seq LIMIT $3"
        );
        return page(client, &sql, &[&account.0], req, codec::transfer).await;
    }
    let (condition, filters): (&str, Vec<&(dyn ToSql + Sync)>) = match &ledger {
        Some(ledger) => ("ledger = $1 AND seq > $2", vec![ledger]),
        None => ("seq > $1", vec![]),
    };
    let n = filters.len() + 2;
    let sql = format!("SELECT {TRANSFER_COLUMNS} FROM transfers WHERE {condition} ORDER BY seq LIMIT ${n}");
    page(client, &sql, &filters, req, codec::transfer).await
}

/// Pending transfers whose timeout is at or before `now`, oldest first, through the partial index.
pub(super) async fn due_pending(
    client: &Client,
    now: Timestamp,
    limit: usize,
) -> StoreResult<Vec<TransferId>> {
    let rows = client
        .query(
            "SELECT id FROM transfers WHERE status = 'pending' AND timeout_at <= $1 ORDER BY timeout_at LIMIT $2",
            &[&now.as_micros(), &(limit as i64)],
        )
        .await
        .map_err(pg_error)?;
    Ok(rows.iter().map(|row| TransferId(row.get(0))).collect())
}

pub(super) async fn events_after(
    client: &Client,
    position: i64,
    limit: usize,
) -> StoreResult<Vec<OutboxEvent>> {
    let statement = client
        .prepare_cached(
            "SELECT position, id, source, type, subject, time, data, traceparent FROM outbox \
             WHERE position > $1 ORDER BY position LIMIT $2",
        )
        .await
        .map_err(pg_error)?;
    let rows = client.query(&statement, &[&position, &(limit as i64)]).await.map_err(pg_error)?;
    rows.iter()
        .map(|row| {
            Ok(OutboxEvent {
                position: codec::get(row, 0)?,
                id: codec::get(row, 1)?,
                source: codec::get(row, 2)?,
                kind: codec::get(row, 3)?,
                subject: codec::get(row, 4)?,
                time: Timestamp::from_micros(codec::get(row, 5)?),
                data: codec::get(row, 6)?,
                traceparent: codec::traceparent(row, 7)?,
            })
        })
        .collect()
}
