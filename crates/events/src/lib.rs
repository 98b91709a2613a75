//! Coffer's events (DESIGN.md §1 and §3): every change the store commits is an outbox row; this
//! crate turns those rows into CloudEvents and relays them, in commit order and at least once,
//! to the bus (NATS JetStream). The in-process bus and the consumer runtime come next.

mod bus;
mod envelope;
mod relay;

pub use bus::{Bus, BusError, JetStreamBus, StreamSettings};
pub use envelope::{EVENT_TYPES, encode, sequence};
pub use relay::{Relay, RelayError};
