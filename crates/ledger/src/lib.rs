//! The pure core of Coffer: ledgers, accounts, transfers and the rules that decide money.
//!
//! Nothing here does IO, awaits, or knows SQL. The store loads the records a batch touches into a
//! [`State`], calls [`apply`], and persists the [`Changes`] it returns in one transaction — unless
//! `apply` found an invariant broken ([`InvariantBroken`]), when it persists nothing. Because
//! the core is a function of its inputs, it is property-tested in isolation: replaying the same
//! commands on the same state gives the same outcomes.

mod apply;
mod command;
mod event;
mod invariant;
mod model;
mod scalar;
mod state;

/// The core's maps and sets, keyed by ids and codes. They are read and written for every command
/// on the writer's path, where SipHash was a visible share of a batch; foldhash is seeded at
/// random per process, so client-chosen ids still cannot be made to collide on purpose.
pub(crate) type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type Set<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

pub use apply::apply;
pub use command::{
    Command, NewAccount, NewLedger, NewTransfer, Outcome, Record, RejectCode, Resolution, Submission,
};
pub use event::{Emitted, Event, EventKind};
pub use invariant::InvariantBroken;
pub use model::{Account, AccountFlags, Balance, Ledger, Transfer, TransferStatus};
pub use scalar::{
    AccountId, Amount, ExternalRef, InvalidValue, LedgerCode, Metadata, Scale, Timestamp, TraceParent,
    TransferId,
};
pub use state::{Changes, State};
