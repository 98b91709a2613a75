//! Decoding PostgreSQL rows into records, through the ledger's checked constructors, so a
//! damaged row is an error, never a record holding an impossible value. Column order is
//! [`crate::columns`]'s.

use coffer_ledger::{
    Account, AccountId, Amount, Balance, ExternalRef, InvalidValue, Ledger, LedgerCode, Metadata, Scale,
    Timestamp, TraceParent, Transfer, TransferId, TransferStatus,
};
use tokio_postgres::Row;

use crate::chain::ChainHash;
use crate::columns::flags;
use crate::{OutboxEvent, StoreError, StoreResult};

/// A value of `column` that is no valid value of its field: fatal damage.
pub(super) fn damaged(column: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::corrupt(format!("column {column}: {why}"))
}

/// Column `column` of `row`; one that does not convert to `T` (a NULL where there must be a
/// value, another type) is fatal damage.
pub(super) fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, column: usize) -> StoreResult<T> {
    row.try_get(column)
        .map_err(|e| StoreError::corrupt(format!("column {column} does not decode")).because(e))
}

/// A stored chain link, when there is one: exactly 32 bytes, anything else is damage.
pub(super) fn optional_chain_hash(row: &Row, column: usize) -> StoreResult<Option<ChainHash>> {
    let bytes: Option<&[u8]> = get(row, column)?;
    bytes
        .map(|bytes| ChainHash::from_slice(bytes).ok_or_else(|| damaged("hash", "a chain hash is 32 bytes")))
        .transpose()
}

/// A stored `traceparent`: the store writes only valid ones, so one that does not parse is damage.
pub(super) fn traceparent(row: &Row, column: usize) -> StoreResult<Option<TraceParent>> {
    let text: Option<&str> = get(row, column)?;
    text.map(|text| TraceParent::try_from(text).map_err(|e| damaged("traceparent", e))).transpose()
}

fn ledger_code(row: &Row, column: usize) -> StoreResult<LedgerCode> {
    let text: &str = get(row, column)?;
    LedgerCode::try_from(text).map_err(|e| damaged("ledger", e))
}

fn unsigned(row: &Row, column: usize) -> StoreResult<u64> {
    u64::try_from(get::<i64>(row, column)?).map_err(|_| damaged("amount", InvalidValue("negative")))
}

fn small(row: &Row, column: usize) -> StoreResult<u16> {
    u16::try_from(get::<i64>(row, column)?).map_err(|_| damaged("code", InvalidValue("out of range")))
}

fn timestamp(row: &Row, column: usize) -> StoreResult<Timestamp> {
    Ok(Timestamp::from_micros(get(row, column)?))
}

fn external_ref(row: &Row, column: usize) -> StoreResult<Option<ExternalRef>> {
    get::<Option<String>>(row, column)?
        .map(|s| ExternalRef::try_from(s).map_err(|e| damaged("external_ref", e)))
        .transpose()
}

fn metadata(row: &Row, column: usize) -> StoreResult<Option<Metadata>> {
    get::<Option<&str>>(row, column)?
        .map(|text| serde_json::from_str(text).map_err(|e| damaged("metadata", e)))
        .transpose()
}

/// The outbox's columns in the order [`outbox_event`] reads them.
pub(super) const OUTBOX_COLUMNS: &str = "position, id, source, type, subject, time, data, traceparent, hash";

/// An outbox row of [`OUTBOX_COLUMNS`].
pub(super) fn outbox_event(row: &Row) -> StoreResult<OutboxEvent> {
    Ok(OutboxEvent {
        position: get(row, 0)?,
        id: get(row, 1)?,
        source: get(row, 2)?,
        kind: get(row, 3)?,
        subject: get(row, 4)?,
        time: Timestamp::from_micros(get(row, 5)?),
        data: get(row, 6)?,
        traceparent: traceparent(row, 7)?,
        hash: optional_chain_hash(row, 8)?,
    })
}

pub(super) fn ledger(row: &Row) -> StoreResult<(i64, Ledger)> {
    let scale = u64::try_from(get::<i64>(row, 2)?).unwrap_or(u64::MAX);
    let ledger = Ledger {
        code: ledger_code(row, 1)?,
        scale: Scale::try_from(scale).map_err(|e| damaged("scale", e))?,
        created_at: timestamp(row, 3)?,
    };
    Ok((get(row, 0)?, ledger))
}

pub(super) fn account(row: &Row) -> StoreResult<(i64, Account)> {
    let account = Account {
        id: AccountId(get(row, 1)?),
        ledger: ledger_code(row, 2)?,
        code: small(row, 3)?,
        flags: flags(get(row, 4)?),
        external_ref: external_ref(row, 5)?,
        metadata: metadata(row, 6)?,
        balance: Balance {
            debits_pending: unsigned(row, 7)?,
            debits_posted: unsigned(row, 8)?,
            credits_pending: unsigned(row, 9)?,
            credits_posted: unsigned(row, 10)?,
        },
        created_at: timestamp(row, 11)?,
    };
    Ok((get(row, 0)?, account))
}

pub(super) fn transfer(row: &Row) -> StoreResult<(i64, Transfer)> {
    let status: &str = get(row, 8)?;
    let transfer = Transfer {
        id: TransferId(get(row, 1)?),
        debit_account_id: AccountId(get(row, 2)?),
        credit_account_id: AccountId(get(row, 3)?),
        amount: Amount::try_from(unsigned(row, 4)?).map_err(|e| damaged("amount", e))?,
        ledger: ledger_code(row, 5)?,
        code: small(row, 6)?,
        pending: get(row, 7)?,
        status: TransferStatus::parse(status).ok_or_else(|| damaged("status", status))?,
        pending_id: get::<Option<uuid::Uuid>>(row, 9)?.map(TransferId),
        timeout_at: get::<Option<i64>>(row, 10)?.map(Timestamp::from_micros),
        external_ref: external_ref(row, 11)?,
        metadata: metadata(row, 12)?,
        created_at: timestamp(row, 13)?,
    };
    Ok((get(row, 0)?, transfer))
}
