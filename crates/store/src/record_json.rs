//! The canonical JSON (RFC 8785) of the ledger's records and of a fresh event's CloudEvent,
//! written member by member in canonical order.
//!
//! The outbox writes one of each per event inside the writer's transaction. A general
//! canonicalizer buffers every object's members in a sorted map before writing them, which cost
//! the embedded store's batch path a quarter of its throughput; here the members are listed in
//! sorted order once, in code. Every member name is ASCII, where UTF-16 order (RFC 8785's) is
//! byte order, and every value is written by serde_json, whose strings and integers already
//! have their canonical form. Metadata, which is the client's own JSON and may hold numbers
//! that are not integers, still goes through the general canonicalizer. The tests compare
//! both ways on arbitrary records, so a field added to a record and not here fails them.

use std::ops::Range;

use coffer_ledger::{Account, AccountFlags, Balance, Event, Metadata, Transfer};
use serde::Serialize;

use crate::chain::write_canonical_json;

/// Appends the canonical JSON of the record `event` carries, its `data`.
pub(crate) fn write_record(out: &mut Vec<u8>, event: &Event) -> serde_json::Result<()> {
    match event {
        Event::Account(_, account) => write_account(out, account),
        Event::Transfer(_, transfer) => write_transfer(out, transfer),
    }
}

/// A fresh event's CloudEvents attributes, other than its `data`, `sequence` and `chainhash`.
pub(crate) struct Attributes<'a> {
    pub id: uuid::Uuid,
    pub kind: &'a str,
    pub subject: uuid::Uuid,
    /// RFC 3339.
    pub time: &'a str,
    pub traceparent: Option<&'a str>,
}

/// Where a fresh event's parts lie in the buffer its chain bytes were appended to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChainBytes {
    /// The whole of the chain bytes.
    pub all: Range<usize>,
    /// The `data` member's value, the record's canonical JSON.
    pub data: Range<usize>,
    /// Where the position's digits go: just inside the empty `sequence` string, as positions
    /// are known only once the batch holds the outbox's head.
    pub split: usize,
}

/// Appends a fresh event's chain bytes: its CloudEvent without `chainhash` and with an empty
/// `sequence`, canonical when `write_data` appends canonical JSON.
pub(crate) fn write_chain_bytes(
    out: &mut Vec<u8>,
    write_data: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
    attributes: &Attributes<'_>,
) -> serde_json::Result<ChainBytes> {
    let start = out.len();
    let mut members = Members::open(out);
    let mut data = 0..0;
    members.raw("data", |out| {
        data.start = out.len();
        write_data(out)?;
        data.end = out.len();
        Ok(())
    })?;
    members.member("datacontenttype", "application/json")?;
    members.member("id", &attributes.id)?;
    members.member("sequence", "")?;
    let split = members.out.len() - 1;
    members.member("source", "coffer")?;
    members.member("specversion", "1.0")?;
    members.member("subject", &attributes.subject)?;
    members.member("time", attributes.time)?;
    if let Some(traceparent) = attributes.traceparent {
        members.member("traceparent", traceparent)?;
    }
    members.member("type", attributes.kind)?;
    members.close();
    Ok(ChainBytes { all: start..out.len(), data, split })
}

fn write_account(out: &mut Vec<u8>, account: &Account) -> serde_json::Result<()> {
    let mut members = Members::open(out);
    members.raw("balance", |out| write_balance(out, &account.balance))?;
    members.member("code", &account.code)?;
    members.member("created_at", &account.created_at)?;
    members.member("external_ref", &account.external_ref)?;
    members.raw("flags", |out| write_flags(out, &account.flags))?;
    members.member("id", &account.id)?;
    members.member("ledger", &account.ledger)?;
    members.raw("metadata", |out| write_metadata(out, account.metadata.as_ref()))?;
    members.close();
    Ok(())
}

fn write_balance(out: &mut Vec<u8>, balance: &Balance) -> serde_json::Result<()> {
    let mut members = Members::open(out);
    members.member("credits_pending", &balance.credits_pending)?;
    members.member("credits_posted", &balance.credits_posted)?;
    members.member("debits_pending", &balance.debits_pending)?;
    members.member("debits_posted", &balance.debits_posted)?;
    members.close();
    Ok(())
}

fn write_flags(out: &mut Vec<u8>, flags: &AccountFlags) -> serde_json::Result<()> {
    let mut members = Members::open(out);
    members.member("credits_must_not_exceed_debits", &flags.credits_must_not_exceed_debits)?;
    members.member("debits_must_not_exceed_credits", &flags.debits_must_not_exceed_credits)?;
    members.close();
    Ok(())
}

fn write_transfer(out: &mut Vec<u8>, transfer: &Transfer) -> serde_json::Result<()> {
    let mut members = Members::open(out);
    members.member("amount", &transfer.amount)?;
    members.member("code", &transfer.code)?;
    members.member("created_at", &transfer.created_at)?;
    members.member("credit_account_id", &transfer.credit_account_id)?;
    members.member("debit_account_id", &transfer.debit_account_id)?;
    members.member("external_ref", &transfer.external_ref)?;
    members.member("id", &transfer.id)?;
    members.member("ledger", &transfer.ledger)?;
    members.raw("metadata", |out| write_metadata(out, transfer.metadata.as_ref()))?;
    members.member("pending", &transfer.pending)?;
    members.member("pending_id", &transfer.pending_id)?;
    members.member("status", &transfer.status)?;
    members.member("timeout_at", &transfer.timeout_at)?;
    members.close();
    Ok(())
}

fn write_metadata(out: &mut Vec<u8>, metadata: Option<&Metadata>) -> serde_json::Result<()> {
    match metadata {
        Some(metadata) => write_canonical_json(out, metadata),
        None => {
            out.extend_from_slice(b"null");
            Ok(())
        }
    }
}

/// An object being written, its members given in canonical order.
struct Members<'o> {
    out: &'o mut Vec<u8>,
    /// The last member's name; `None` before the first.
    last: Option<&'static str>,
}

impl<'o> Members<'o> {
    fn open(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, last: None }
    }

    /// A member whose value serde_json writes.
    fn member<T: Serialize + ?Sized>(&mut self, name: &'static str, value: &T) -> serde_json::Result<()> {
        self.raw(name, |out| serde_json::to_writer(out, value))
    }

    /// A member whose value `write` appends, in canonical form.
    fn raw(
        &mut self,
        name: &'static str,
        write: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
    ) -> serde_json::Result<()> {
        debug_assert!(name.is_ascii() && self.last.is_none_or(|last| last < name), "{name} out of order");
        if self.last.is_some() {
            self.out.push(b',');
        }
        self.last = Some(name);
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        write(self.out)
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::chain::canonical_json;

    fn uuid() -> impl Strategy<Value = String> {
        any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string())
    }

    fn time() -> impl Strategy<Value = String> {
        (0i64..4_000_000_000_000_000)
            .prop_map(|micros| coffer_ledger::Timestamp::from_micros(micros).to_rfc3339())
    }

    /// Any text a client may send, control characters, quotes and characters beyond the BMP
    /// included.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{1,20}",
            "[\"\\\\\u{0}-\u{1f}\u{7f}\u{2028}\u{e000}-\u{ffff}\u{10000}-\u{10ffff}a-z]{1,12}"
        ]
    }

    fn metadata() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            text().prop_map(Value::from),
        ];
        let value = leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(text(), inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        });
        prop_oneof![
            Just(Value::Null),
            prop::collection::btree_map(text(), value, 0..5)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    }

    fn balance() -> impl Strategy<Value = Value> {
        [0..=i64::MAX as u64, 0..=i64::MAX as u64, 0..=i64::MAX as u64, 0..=i64::MAX as u64].prop_map(|[a, b, c, d]| {
            json!({"debits_pending": a, "debits_posted": b, "credits_pending": c, "credits_posted": d})
        })
    }

    fn account() -> impl Strategy<Value = Account> {
        (uuid(), any::<u16>(), any::<[bool; 2]>(), prop::option::of(text()), metadata(), balance(), time()).prop_map(
            |(id, code, [debits, credits], external_ref, metadata, balance, created_at)| {
                serde_json::from_value(json!({
                    "id": id, "ledger": "USD_2", "code": code,
                    "flags": {"debits_must_not_exceed_credits": debits, "credits_must_not_exceed_debits": credits},
                    "external_ref": external_ref, "metadata": metadata, "balance": balance, "created_at": created_at,
                }))
                .unwrap()
            },
        )
    }

    fn transfer() -> impl Strategy<Value = Transfer> {
        let ids = (uuid(), uuid(), uuid(), prop::option::of(uuid()));
        let status = prop::sample::select(vec!["posted", "pending", "voided", "expired"]);
        let rest = (1..=i64::MAX as u64, any::<u16>(), any::<bool>(), status, prop::option::of(time()));
        (ids, rest, prop::option::of(text()), metadata(), time()).prop_map(
            |(
                (id, debit, credit, pending_id),
                (amount, code, pending, status, timeout_at),
                external_ref,
                metadata,
                created_at,
            )| {
                serde_json::from_value(json!({
                    "id": id, "debit_account_id": debit, "credit_account_id": credit, "amount": amount,
                    "ledger": "EUR", "code": code, "pending": pending, "status": status,
                    "pending_id": pending_id, "timeout_at": timeout_at, "external_ref": external_ref,
                    "metadata": metadata, "created_at": created_at,
                }))
                .unwrap()
            },
        )
    }

    fn written(event: &Event) -> Vec<u8> {
        let mut out = Vec::new();
        write_record(&mut out, event).unwrap();
        out
    }

    proptest! {
        #[test]
        fn accounts_are_written_as_the_canonicalizer_writes_them(account in account()) {
            let expected = canonical_json(&account).unwrap();
            prop_assert_eq!(
                String::from_utf8(written(&Event::Account(coffer_ledger::EventKind::AccountCreated, account))).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }

        #[test]
        fn transfers_are_written_as_the_canonicalizer_writes_them(transfer in transfer()) {
            let expected = canonical_json(&transfer).unwrap();
            prop_assert_eq!(
                String::from_utf8(written(&Event::Transfer(coffer_ledger::EventKind::TransferCreated, transfer))).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
    }
}
