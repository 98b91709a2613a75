//! An endpoint's secrets over time: which ones sign a delivery now, a rotation that makes a
//! new one while the old one keeps signing for an overlap, and the re-sealing at start that
//! puts every stored secret under the current key.
//!
//! During an overlap a delivery carries both signatures, `v1,<new> v1,<old>` (Standard
//! Webhooks receivers accept a delivery when any one matches), so a receiver can switch to the
//! new secret whenever it likes within the overlap. Only two secrets are ever kept: a rotation
//! during an overlap ends the older one's overlap at once.

use std::time::Duration;

use coffer_ledger::Timestamp;
use coffer_store::{AdminChange, AuditContext, AuditTrail, StoreError, Webhook, WebhookSecrets, Webhooks};
use uuid::Uuid;

use super::dispatcher::later;
use super::sealing::{SealError, SecretKeys};
use super::signature::{SigningSecret, new_secret};

/// How long the old secret keeps signing when a rotation does not say.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);
/// The longest overlap: a leaked secret being rotated away stays valid for at most this long.
pub const MAX_OVERLAP: Duration = Duration::from_secs(7 * 24 * 3600);

/// The secrets that sign a delivery to `webhook` at `now`: its secret, then the one before the
/// last rotation while its overlap runs. An unusable previous secret is left out (the delivery
/// is still signed with the current one, which the receiver must accept by now or soon).
pub fn signing_secrets(
    keys: &SecretKeys,
    webhook: &Webhook,
    now: Timestamp,
) -> Result<Vec<SigningSecret>, SealError> {
    let mut secrets = vec![keys.open(webhook.id, &webhook.secret)?];
    if let (Some(previous), Some(until)) = (&webhook.previous_secret, webhook.previous_secret_expires_at)
        && now < until
    {
        match keys.open(webhook.id, previous) {
            Ok(secret) => secrets.push(secret),
            Err(e) => {
                tracing::warn!(webhook = %webhook.id, error = %e, "the previous webhook secret is unusable")
            }
        }
    }
    Ok(secrets)
}

/// Why a rotation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("no such webhook")]
    NotFound,
    #[error("the webhook's secret changed while it was being rotated; try again")]
    Raced,
    #[error("the overlap is {0:?}, more than the longest allowed ({MAX_OVERLAP:?})")]
    OverlapTooLong(Duration),
    #[error("the webhook's current secret cannot be kept for the overlap: {0}")]
    Sealing(#[from] SealError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a rotation made: the endpoint as stored now and its new secret, in clear, for the
/// one answer that shows it.
#[derive(Debug)]
pub struct Rotated {
    pub webhook: Webhook,
    pub secret: SigningSecret,
}

/// Gives endpoint `id` a new secret; the current one keeps signing until `now + overlap` (not
/// at all for a zero overlap: a secret known to have leaked is cut off at once). The rotation
/// is recorded in the audit trail as `by`'s, in the same transaction.
pub async fn rotate_secret<S: Webhooks + AuditTrail + ?Sized>(
    store: &S,
    keys: &SecretKeys,
    id: Uuid,
    overlap: Duration,
    now: Timestamp,
    by: &AuditContext,
) -> Result<Rotated, RotateError> {
    if overlap > MAX_OVERLAP {
        return Err(RotateError::OverlapTooLong(overlap));
    }
    let webhook = store.webhook(id).await?.ok_or(RotateError::NotFound)?;
    let secret = new_secret();
    let keep_previous = !overlap.is_zero();
    let secrets = WebhookSecrets {
        secret: keys.seal(id, &secret),
        previous_secret: if keep_previous { Some(sealed_now(keys, id, &webhook.secret)?) } else { None },
        previous_secret_expires_at: keep_previous.then(|| later(now, overlap)),
    };
    let change =
        AdminChange::RotateWebhookSecret { id, expected: webhook.secret.clone(), secrets: secrets.clone() };
    if !store.administer(change, by).await?.effect.applied() {
        return Err(RotateError::Raced);
    }
    let webhook = Webhook {
        secret: secrets.secret,
        previous_secret: secrets.previous_secret,
        previous_secret_expires_at: secrets.previous_secret_expires_at,
        ..webhook
    };
    Ok(Rotated { webhook, secret })
}

/// What re-sealing at start did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resealed {
    /// Endpoints whose secrets were sealed anew (in clear before, or under an older key).
    pub resealed: usize,
    /// Endpoints whose secrets no configured key opens: left as they are, and logged.
    pub unreadable: usize,
}

/// Seals every endpoint's secrets under the sealing key: rows from before sealing existed
/// (secrets in clear) and rows sealed under a key that has since been rotated. Expired
/// previous secrets are dropped on the way. An endpoint rotated meanwhile by another process is
/// left to that rotation, which sealed with its own keys.
pub async fn reseal(store: &dyn Webhooks, keys: &SecretKeys, now: Timestamp) -> Result<Resealed, StoreError> {
    let mut done = Resealed::default();
    for webhook in store.webhooks().await? {
        let previous_live = webhook.previous_secret_expires_at.is_some_and(|until| now < until);
        let stale_previous = webhook.previous_secret.is_some() && !previous_live;
        let previous_current = webhook.previous_secret.as_deref().is_none_or(|p| keys.is_current(p));
        if keys.is_current(&webhook.secret) && previous_current && !stale_previous {
            continue;
        }
        let resealed = resealed_secrets(keys, &webhook, previous_live);
        match resealed {
            Ok(secrets) => {
                if store.replace_webhook_secrets(webhook.id, &webhook.secret, secrets).await? {
                    done.resealed += 1;
                }
            }
            Err(e) => {
                done.unreadable += 1;
                tracing::error!(webhook = %webhook.id, error = %e, "a webhook's secret cannot be re-sealed");
            }
        }
    }
    Ok(done)
}

/// `webhook`'s secrets sealed under the sealing key, the previous one only while it is live.
fn resealed_secrets(
    keys: &SecretKeys,
    webhook: &Webhook,
    previous_live: bool,
) -> Result<WebhookSecrets, SealError> {
    let previous = match &webhook.previous_secret {
        Some(previous) if previous_live => Some(sealed_now(keys, webhook.id, previous)?),
        _ => None,
    };
    Ok(WebhookSecrets {
        secret: sealed_now(keys, webhook.id, &webhook.secret)?,
        previous_secret_expires_at: previous.as_ref().and(webhook.previous_secret_expires_at),
        previous_secret: previous,
    })
}

/// `stored` as it should be kept now: unchanged when sealed under the sealing key already,
/// else opened and sealed under it.
fn sealed_now(keys: &SecretKeys, id: Uuid, stored: &str) -> Result<String, SealError> {
    if keys.is_current(stored) {
        return Ok(stored.to_owned());
    }
    Ok(keys.seal(id, &keys.open(id, stored)?))
}
