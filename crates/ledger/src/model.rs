//! The records the ledger keeps: ledgers, accounts with their balances, and transfers.
//! Their serde form is the API's and the events' JSON form.

use serde::{Deserialize, Serialize};

use crate::scalar::{AccountId, Amount, ExternalRef, LedgerCode, Metadata, Scale, Timestamp, TransferId};

/// A unit of account (a currency or any countable asset) that accounts and transfers belong to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Ledger {
    pub code: LedgerCode,
    pub scale: Scale,
    pub created_at: Timestamp,
}

/// The two optional balance constraints of an account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AccountFlags {
    /// debits_pending + debits_posted may never exceed credits_posted (a wallet that cannot go negative).
    #[serde(default)]
    pub debits_must_not_exceed_credits: bool,
    /// credits_pending + credits_posted may never exceed debits_posted.
    #[serde(default)]
    pub credits_must_not_exceed_debits: bool,
}

/// An account's four running totals, in minor units. Each stays within 0..=2^63−1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Balance {
    pub debits_pending: u64,
    pub debits_posted: u64,
    pub credits_pending: u64,
    pub credits_posted: u64,
}

/// An account: where a ledger's money sits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Account {
    pub id: AccountId,
    pub ledger: LedgerCode,
    pub code: u16,
    pub flags: AccountFlags,
    pub external_ref: Option<ExternalRef>,
    pub metadata: Option<Metadata>,
    pub balance: Balance,
    pub created_at: Timestamp,
}

/// Where a transfer stands. Only a pending transfer ever changes status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TransferStatus {
    /// Moved into the posted balances.
    Posted,
    /// Held in the pending balances until posted, voided or expired.
    Pending,
    /// A pending transfer released by a void (or the void transfer itself).
    Voided,
    /// A pending transfer released because its timeout passed.
    Expired,
}

impl TransferStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Posted => "posted",
            Self::Pending => "pending",
            Self::Voided => "voided",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "posted" => Self::Posted,
            "pending" => Self::Pending,
            "voided" => Self::Voided,
            "expired" => Self::Expired,
            _ => return None,
        })
    }
}

/// A movement of `amount` from the debit account to the credit account.
///
/// A post or void of a pending transfer is itself a transfer whose `pending_id` names the pending one;
/// a post's `amount` is what it posted, a void's is the amount it released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Transfer {
    pub id: TransferId,
    pub debit_account_id: AccountId,
    pub credit_account_id: AccountId,
    pub amount: Amount,
    pub ledger: LedgerCode,
    pub code: u16,
    /// True when the transfer was created as a hold (two-phase), whatever its status now.
    pub pending: bool,
    pub status: TransferStatus,
    pub pending_id: Option<TransferId>,
    pub timeout_at: Option<Timestamp>,
    pub external_ref: Option<ExternalRef>,
    pub metadata: Option<Metadata>,
    pub created_at: Timestamp,
}
