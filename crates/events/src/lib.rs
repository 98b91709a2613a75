//! Coffer's events (DESIGN.md §1 and §3): every change the store commits is an outbox row, and
//! this crate turns those rows into CloudEvents for the bus. The relay, the in-process and
//! JetStream buses and the consumer runtime come next (see the events issue).

mod envelope;

pub use envelope::{EVENT_TYPES, encode, sequence};
