//! How records map onto columns, the same on every backend: the column lists in the order the
//! row decoders read them, account flags as bits, amounts as signed 64-bit integers, metadata as
//! its JSON text.

use coffer_ledger::{AccountFlags, Metadata};

pub(crate) const LEDGER_COLUMNS: &str = "seq, code, scale, created_at";

pub(crate) const ACCOUNT_COLUMNS: &str = "seq, id, ledger, code, flags, external_ref, metadata, \
     debits_pending, debits_posted, credits_pending, credits_posted, created_at";

pub(crate) const TRANSFER_COLUMNS: &str = "seq, id, debit_account_id, credit_account_id, amount, ledger, \
     code, pending, status, pending_id, timeout_at, external_ref, metadata, created_at";

const DEBITS_MUST_NOT_EXCEED_CREDITS: i64 = 1;
const CREDITS_MUST_NOT_EXCEED_DEBITS: i64 = 2;

pub(crate) fn flags_bits(flags: AccountFlags) -> i64 {
    let mut bits = 0;
    if flags.debits_must_not_exceed_credits {
        bits |= DEBITS_MUST_NOT_EXCEED_CREDITS;
    }
    if flags.credits_must_not_exceed_debits {
        bits |= CREDITS_MUST_NOT_EXCEED_DEBITS;
    }
    bits
}

pub(crate) fn flags(bits: i64) -> AccountFlags {
    AccountFlags {
        debits_must_not_exceed_credits: bits & DEBITS_MUST_NOT_EXCEED_CREDITS != 0,
        credits_must_not_exceed_debits: bits & CREDITS_MUST_NOT_EXCEED_DEBITS != 0,
    }
}

/// An amount or a balance as stored; the ledger keeps them within 0..=2^63−1.
pub(crate) fn int(value: u64) -> i64 {
    i64::try_from(value).expect("the ledger keeps amounts and balances within 2^63-1")
}

/// Metadata as stored: its JSON text.
pub(crate) fn metadata_json(metadata: &Option<Metadata>) -> Option<String> {
    // Serializing a JSON map to a string cannot fail.
    metadata.as_ref().map(|m| serde_json::to_string(m).unwrap_or_default())
}
