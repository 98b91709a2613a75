//! The domain events a change emits; the store writes them to the outbox in the same transaction.

use crate::model::{Account, Transfer};
use crate::scalar::TraceParent;

/// What happened. Names map one to one onto the CloudEvents `type`s of DESIGN.md §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    AccountCreated,
    TransferCreated,
    TransferPosted,
    TransferVoided,
    TransferExpired,
}

impl EventKind {
    /// The CloudEvents `type` of this kind, versioned by its schema.
    pub fn cloud_event_type(self) -> &'static str {
        match self {
            Self::AccountCreated => "coffer.account.created",
            Self::TransferCreated => "coffer.transfer.created",
            Self::TransferPosted => "coffer.transfer.posted",
            Self::TransferVoided => "coffer.transfer.voided",
            Self::TransferExpired => "coffer.transfer.expired",
        }
    }
}

/// One event: its kind and the record as it stands right after the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Account(EventKind, Account),
    Transfer(EventKind, Transfer),
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Self::Account(kind, _) | Self::Transfer(kind, _) => *kind,
        }
    }

    /// The id of the record the event is about (the CloudEvents `subject`).
    pub fn subject(&self) -> uuid::Uuid {
        match self {
            Self::Account(_, a) => a.id.0,
            Self::Transfer(_, t) => t.id.0,
        }
    }
}

/// An event as a batch emitted it: with the trace of the submission whose command caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    pub event: Event,
    pub trace: Option<TraceParent>,
}
