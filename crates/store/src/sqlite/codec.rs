//! How records map onto SQLite rows: UUIDs as 16-byte BLOBs, amounts and balances as INTEGER
//! (they never exceed 2^63−1), times as INTEGER microseconds, metadata as its JSON text.
//!
//! Every read goes back through the ledger's checked constructors, so a damaged row is an error,
//! never a record holding an impossible value.

use coffer_ledger::{
    Account, AccountId, Amount, Balance, ExternalRef, InvalidValue, Ledger, LedgerCode, Metadata, Scale,
    Timestamp, TraceParent, Transfer, TransferId, TransferStatus,
};
use rusqlite::Row;
use rusqlite::types::Type;
use uuid::Uuid;

use crate::OutboxEvent;
use crate::chain::ChainHash;

pub(crate) use crate::columns::{
    ACCOUNT_COLUMNS, LEDGER_COLUMNS, TRANSFER_COLUMNS, flags, flags_bits, int, metadata_json,
};

pub(super) fn invalid(column: usize, why: InvalidValue) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, Type::Integer, Box::new(why))
}

pub(super) fn uuid(row: &Row<'_>, column: usize) -> rusqlite::Result<Uuid> {
    let bytes: [u8; 16] = row.get(column)?;
    Ok(Uuid::from_bytes(bytes))
}

/// A stored chain link: exactly 32 bytes, anything else is damage.
pub(super) fn chain_hash(row: &Row<'_>, column: usize) -> rusqlite::Result<ChainHash> {
    optional_chain_hash(row, column)?.ok_or(rusqlite::Error::InvalidColumnType(
        column,
        "hash".into(),
        Type::Null,
    ))
}

/// A chain link that may be absent (an event written before the chain existed).
pub(super) fn optional_chain_hash(row: &Row<'_>, column: usize) -> rusqlite::Result<Option<ChainHash>> {
    let Some(bytes) = row.get::<_, Option<Vec<u8>>>(column)? else { return Ok(None) };
    ChainHash::from_slice(&bytes).map(Some).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(column, Type::Blob, "a chain hash is 32 bytes".into())
    })
}

/// A stored `traceparent`: the store writes only valid ones, so one that does not parse is damage.
pub(super) fn traceparent(row: &Row<'_>, column: usize) -> rusqlite::Result<Option<TraceParent>> {
    let text: Option<String> = row.get(column)?;
    text.map(|text| TraceParent::try_from(text.as_str()).map_err(|why| invalid(column, why))).transpose()
}

fn optional_uuid(row: &Row<'_>, column: usize) -> rusqlite::Result<Option<Uuid>> {
    Ok(row.get::<_, Option<[u8; 16]>>(column)?.map(Uuid::from_bytes))
}

fn ledger_code(row: &Row<'_>, column: usize) -> rusqlite::Result<LedgerCode> {
    let text = row.get_ref(column)?.as_str()?;
    LedgerCode::try_from(text).map_err(|e| invalid(column, e))
}

fn unsigned(row: &Row<'_>, column: usize) -> rusqlite::Result<u64> {
    u64::try_from(row.get::<_, i64>(column)?).map_err(|_| invalid(column, InvalidValue("negative amount")))
}

pub(super) fn small(row: &Row<'_>, column: usize) -> rusqlite::Result<u16> {
    u16::try_from(row.get::<_, i64>(column)?).map_err(|_| invalid(column, InvalidValue("code out of range")))
}

pub(super) fn timestamp(row: &Row<'_>, column: usize) -> rusqlite::Result<Timestamp> {
    Ok(Timestamp::from_micros(row.get(column)?))
}

fn external_ref(row: &Row<'_>, column: usize) -> rusqlite::Result<Option<ExternalRef>> {
    row.get::<_, Option<String>>(column)?
        .map(|s| ExternalRef::try_from(s).map_err(|e| invalid(column, e)))
        .transpose()
}

fn metadata(row: &Row<'_>, column: usize) -> rusqlite::Result<Option<Metadata>> {
    let Some(text) = row.get_ref(column)?.as_str_or_null()? else {
        return Ok(None);
    };
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(column, Type::Text, Box::new(e)))
}

/// The outbox's columns in the order [`outbox_event`] reads them.
pub(crate) const OUTBOX_COLUMNS: &str = "seq, id, source, type, subject, time, data, traceparent, hash";

/// An outbox row of [`OUTBOX_COLUMNS`].
pub(crate) fn outbox_event(row: &Row<'_>) -> rusqlite::Result<OutboxEvent> {
    Ok(OutboxEvent {
        position: row.get(0)?,
        id: uuid(row, 1)?,
        source: row.get(2)?,
        kind: row.get(3)?,
        subject: uuid(row, 4)?,
        time: timestamp(row, 5)?,
        data: row.get(6)?,
        traceparent: traceparent(row, 7)?,
        hash: optional_chain_hash(row, 8)?,
    })
}

/// A ledger row of [`LEDGER_COLUMNS`], with its sequence number.
pub(crate) fn ledger(row: &Row<'_>) -> rusqlite::Result<(i64, Ledger)> {
    let scale = u64::try_from(row.get::<_, i64>(2)?).unwrap_or(u64::MAX);
    let ledger = Ledger {
        code: ledger_code(row, 1)?,
        scale: Scale::try_from(scale).map_err(|e| invalid(2, e))?,
        created_at: timestamp(row, 3)?,
    };
    Ok((row.get(0)?, ledger))
}

/// An account row of [`ACCOUNT_COLUMNS`], with its sequence number.
pub(crate) fn account(row: &Row<'_>) -> rusqlite::Result<(i64, Account)> {
    let bits: i64 = row.get(4)?;
    let account = Account {
        id: AccountId(uuid(row, 1)?),
        ledger: ledger_code(row, 2)?,
        code: small(row, 3)?,
        flags: flags(bits),
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
    Ok((row.get(0)?, account))
}

/// A transfer row of [`TRANSFER_COLUMNS`], with its sequence number.
pub(crate) fn transfer(row: &Row<'_>) -> rusqlite::Result<(i64, Transfer)> {
    let status = row.get_ref(8)?.as_str()?;
    let transfer = Transfer {
        id: TransferId(uuid(row, 1)?),
        debit_account_id: AccountId(uuid(row, 2)?),
        credit_account_id: AccountId(uuid(row, 3)?),
        amount: Amount::try_from(unsigned(row, 4)?).map_err(|e| invalid(4, e))?,
        ledger: ledger_code(row, 5)?,
        code: small(row, 6)?,
        pending: row.get(7)?,
        status: TransferStatus::parse(status).ok_or_else(|| invalid(8, InvalidValue("unknown status")))?,
        pending_id: optional_uuid(row, 9)?.map(TransferId),
        timeout_at: row.get::<_, Option<i64>>(10)?.map(Timestamp::from_micros),
        external_ref: external_ref(row, 11)?,
        metadata: metadata(row, 12)?,
        created_at: timestamp(row, 13)?,
    };
    Ok((row.get(0)?, transfer))
}
