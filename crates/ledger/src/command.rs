//! What a client asks the ledger to do, and what it answers for each request.

use crate::model::{Account, AccountFlags, Ledger, Transfer};
use crate::scalar::{AccountId, Amount, ExternalRef, LedgerCode, Metadata, Scale, TraceParent, TransferId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLedger {
    pub code: LedgerCode,
    pub scale: Scale,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccount {
    pub id: AccountId,
    pub ledger: LedgerCode,
    pub code: u16,
    pub flags: AccountFlags,
    pub external_ref: Option<ExternalRef>,
    pub metadata: Option<Metadata>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTransfer {
    pub id: TransferId,
    pub debit_account_id: AccountId,
    pub credit_account_id: AccountId,
    pub amount: Amount,
    pub ledger: LedgerCode,
    pub code: u16,
    /// `None`: post at once. `Some(None)`: hold with no timeout. `Some(Some(s))`: hold, expire after `s` seconds.
    pub pending: Option<Option<u32>>,
    pub external_ref: Option<ExternalRef>,
    pub metadata: Option<Metadata>,
}

/// A post or a void of a pending transfer; it is recorded as a transfer of its own, `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub id: TransferId,
    pub pending_id: TransferId,
    /// Post only: how much of the pending amount to post; `None` posts all of it.
    pub amount: Option<Amount>,
    /// `None` takes the pending transfer's code.
    pub code: Option<u16>,
    pub external_ref: Option<ExternalRef>,
    pub metadata: Option<Metadata>,
}

/// One request to change the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    CreateLedger(NewLedger),
    CreateAccount(NewAccount),
    CreateTransfer(NewTransfer),
    PostPending(Resolution),
    VoidPending(Resolution),
    /// Issued by the store's expiry task, never by a client: release a hold whose timeout passed.
    ExpirePending(TransferId),
}

impl Command {
    /// The transfers this command reads: its own id (for idempotency) and the pending one it resolves.
    pub fn transfer_ids(&self) -> impl Iterator<Item = TransferId> {
        let (own, pending) = match self {
            Command::CreateTransfer(t) => (Some(t.id), None),
            Command::PostPending(r) | Command::VoidPending(r) => (Some(r.id), Some(r.pending_id)),
            Command::ExpirePending(id) => (None, Some(*id)),
            Command::CreateLedger(_) | Command::CreateAccount(_) => (None, None),
        };
        own.into_iter().chain(pending)
    }

    /// The accounts this command names directly (a post or void touches its pending transfer's
    /// accounts too; the store finds those once it has loaded the pending transfer).
    pub fn account_ids(&self) -> impl Iterator<Item = AccountId> {
        let (a, b) = match self {
            Command::CreateAccount(a) => (Some(a.id), None),
            Command::CreateTransfer(t) => (Some(t.debit_account_id), Some(t.credit_account_id)),
            _ => (None, None),
        };
        a.into_iter().chain(b)
    }

    /// The ledger this command names directly, if any.
    pub fn ledger_code(&self) -> Option<LedgerCode> {
        match self {
            Command::CreateLedger(l) => Some(l.code),
            Command::CreateAccount(a) => Some(a.ledger),
            Command::CreateTransfer(t) => Some(t.ledger),
            _ => None,
        }
    }
}

/// The commands of one request. With `atomic`, all of them apply or none does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub commands: Vec<Command>,
    pub atomic: bool,
    /// The trace of the request, carried by every event the commands cause.
    pub trace: Option<TraceParent>,
}

impl Submission {
    /// Commands with no trace.
    pub fn new(commands: Vec<Command>, atomic: bool) -> Self {
        Self { commands, atomic, trace: None }
    }

    /// A request of a single command.
    pub fn one(command: Command) -> Self {
        Self::new(vec![command], false)
    }

    /// The same commands, sent in `trace`.
    pub fn traced(self, trace: Option<TraceParent>) -> Self {
        Self { trace, ..self }
    }
}

/// A record as a command left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Ledger(Ledger),
    Account(Account),
    Transfer(Transfer),
}

/// The answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The command applied; the record as it now stands.
    Created(Record),
    /// The same record with the same fields already existed: nothing changed (idempotent replay).
    Exists(Record),
    /// Nothing changed, for this reason.
    Rejected(RejectCode),
}

/// Why a command was refused. Each maps to one stable snake_case API code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectCode {
    ExistsWithDifferentFields,
    LedgerNotFound,
    AccountNotFound,
    AccountsMustBeDifferent,
    LedgerMismatch,
    InsufficientFunds,
    ExceedsDebits,
    Overflow,
    PendingTransferNotFound,
    PendingTransferNotPending,
    PendingTransferAlreadyPosted,
    PendingTransferAlreadyVoided,
    PendingTransferExpired,
    AmountExceedsPendingAmount,
    /// In an atomic submission: this command was fine, another one failed.
    LinkedItemFailed,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExistsWithDifferentFields => "exists_with_different_fields",
            Self::LedgerNotFound => "ledger_not_found",
            Self::AccountNotFound => "account_not_found",
            Self::AccountsMustBeDifferent => "accounts_must_be_different",
            Self::LedgerMismatch => "ledger_mismatch",
            Self::InsufficientFunds => "insufficient_funds",
            Self::ExceedsDebits => "exceeds_debits",
            Self::Overflow => "overflow",
            Self::PendingTransferNotFound => "pending_transfer_not_found",
            Self::PendingTransferNotPending => "pending_transfer_not_pending",
            Self::PendingTransferAlreadyPosted => "pending_transfer_already_posted",
            Self::PendingTransferAlreadyVoided => "pending_transfer_already_voided",
            Self::PendingTransferExpired => "pending_transfer_expired",
            Self::AmountExceedsPendingAmount => "amount_exceeds_pending_amount",
            Self::LinkedItemFailed => "linked_item_failed",
        }
    }

    /// A sentence for the problem's `detail`.
    pub fn detail(self) -> &'static str {
        match self {
            Self::ExistsWithDifferentFields => "a record with this id exists with different fields",
            Self::LedgerNotFound => "the ledger does not exist",
            Self::AccountNotFound => "an account of the transfer does not exist",
            Self::AccountsMustBeDifferent => "the debit and credit accounts must differ",
            Self::LedgerMismatch => "the accounts and the transfer must be on the same ledger",
            Self::InsufficientFunds => "the debit account's debits would exceed its credits",
            Self::ExceedsDebits => "the credit account's credits would exceed its debits",
            Self::Overflow => "a balance would exceed 2^63-1",
            Self::PendingTransferNotFound => "the pending transfer does not exist",
            Self::PendingTransferNotPending => "the transfer named is not a pending transfer",
            Self::PendingTransferAlreadyPosted => "the pending transfer was already posted",
            Self::PendingTransferAlreadyVoided => "the pending transfer was already voided",
            Self::PendingTransferExpired => "the pending transfer has expired",
            Self::AmountExceedsPendingAmount => "the amount exceeds the pending amount",
            Self::LinkedItemFailed => "another item of the atomic batch failed",
        }
    }
}
