//! The webhook engine (the notification service): every event, posted to each endpoint
//! subscribed to its type, signed, at least once, retried for about a day.
//!
//! Two halves meet in the store's delivery table (`coffer_store::Webhooks`):
//! - [`WebhookFanout`] is a consumer [`Handler`](crate::Handler): events in, one pending
//!   delivery per subscribed endpoint out, in the store's transaction;
//! - [`Dispatcher`] claims the due deliveries and posts them ([`transport`]), with the
//!   Standard Webhooks signature ([`signature`]), to addresses checked against SSRF
//!   ([`target`], [`ranges`]), and records each attempt, retrying on the [`WebhookSettings`]
//!   schedule.
//!
//! Signing secrets are sealed at rest ([`sealing`]) and rotate with an overlap ([`rotation`]).

mod dispatcher;
mod fanout;
mod ranges;
mod rotation;
mod sealing;
mod settings;
mod signature;
mod target;
mod transport;

pub use dispatcher::{Dispatcher, DispatcherError, WEBHOOK_DELIVERIES};
pub use fanout::{WEBHOOKS_CONSUMER, WebhookFanout};
pub use ranges::{SpecialRange, ranges, special_range};
pub use rotation::{
    DEFAULT_OVERLAP, MAX_OVERLAP, Resealed, RotateError, Rotated, reseal, rotate_secret, signing_secrets,
};
pub use sealing::{SealError, SecretKey, SecretKeys};
pub use settings::{SettingsError, WebhookSettings};
pub use signature::{
    SecretError, SignatureHeaders, SigningSecret, VerifyError, new_secret, sign, sign_all, verify,
};
pub use target::{
    GuardedResolver, Lookup, LookupFuture, RefusedAddress, SystemLookup, TargetPolicy, UrlError, validate_url,
};
