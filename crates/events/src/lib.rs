//! Coffer's events (DESIGN.md §1 and §3): every change the store commits is an outbox row; this
//! crate turns those rows into CloudEvents, relays them in commit order and at least once to the
//! bus (NATS JetStream), and runs consumers — over JetStream, or straight off the outbox in the
//! embedded mode — with retries, dead letters and replay; and the webhook engine, which posts
//! events to the endpoints subscribed to them.

mod bus;
mod config;
mod connection;
mod consumer;
mod dlq;
mod envelope;
mod projection;
mod relay;
mod webhooks;

pub use bus::{Bus, BusError, JetStreamBus, StreamRole, StreamSettings};
pub use config::EventsConfig;
pub use connection::{NatsConnection, Secret};
pub use consumer::{
    Consumer, DEAD_LETTERED, Delivery, Handler, HandlerError, JetStreamSource, JetStreamSourceSettings, LAG,
    OutboxSource, REDELIVERIES, RetryPolicy, Source,
};
pub use dlq::{
    DLQ_DEPTH, DeadLetterEntry, DeadLetterQueue, DeadLetterStream, Handled, StoreDeadLetters, watch_depth,
};
pub use envelope::{EVENT_TYPES, decode, encode, sequence};
pub use projection::{LedgerVolumes, VOLUMES_CONSUMER, VOLUMES_EVENT_TYPE, day_of};
pub use relay::{Relay, RelayError};
pub use webhooks::{
    DEFAULT_OVERLAP, Dispatcher, DispatcherError, GuardedResolver, Lookup, LookupFuture, MAX_OVERLAP,
    RefusedAddress, Resealed, RotateError, Rotated, SealError, SecretError, SecretKey, SecretKeys,
    SettingsError, SignatureHeaders, SigningSecret, SpecialRange, SystemLookup, TargetPolicy, UrlError,
    VerifyError, WEBHOOK_DELIVERIES, WEBHOOKS_CONSUMER, WebhookFanout, WebhookSettings, new_secret, ranges,
    reseal, rotate_secret, sign, sign_all, signing_secrets, special_range, validate_url, verify,
};
