//! The audit trail (DESIGN.md §5, "Evidence"): a record of every administrative and security
//! action, in a hash chain of its own.
//!
//! An action that changes the store (a key made, a webhook deleted, a projection reset) is an
//! [`AdminChange`] handed to [`AuditTrail::administer`], which makes the change and appends its
//! record in ONE transaction: there is no change without its record, and no record of a change
//! that rolled back. An event that changes nothing here (a client address crossing the failed
//! authentication threshold, a refusal, a dead letter replayed on JetStream) is appended on its
//! own with [`AuditTrail::record_audit`].
//!
//! Records are numbered 1, 2, 3… in commit order with no gap, and each one's `hash` is
//! `previous.next(canonical(record))` ([`crate::chain`]), the first following
//! [`ChainHash::GENESIS`]. Both stores keep the last position and hash in a head row that every
//! append locks and moves, so concurrent appends (several replicas on PostgreSQL) take turns and
//! a deleted last record still shows: the next record links to the head, not to the row before.
//! [`canonical`] defines the bytes a hash covers; a verifier reads the rows back in position
//! order and checks each with [`link`].
//!
//! Each record is also a CloudEvent `coffer.audit.recorded` in the outbox, written in the same
//! transaction, whose `data` is the record's JSON ([`AuditRecord`]'s `Serialize`, hash included).

use async_trait::async_trait;
use coffer_ledger::Timestamp;
use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::chain::{ChainHash, canonical_json};
use crate::{ApiKey, KeyId, NewApiKey, StoreResult, Webhook, WebhookSecrets};

/// The CloudEvents type of an audit record's event.
pub const AUDIT_EVENT_TYPE: &str = "coffer.audit.recorded";

/// What was done. The action's name (`as_str`) is what records and filters hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    KeyCreated,
    KeyRotated,
    KeyRevoked,
    /// The keys a store already held when its audit trail began (a store older than the trail).
    KeysAdopted,
    WebhookCreated,
    WebhookSecretRotated,
    WebhookDeleted,
    WebhookRedelivered,
    DeadLetterReplayed,
    DeadLetterDiscarded,
    ProjectionRebuilt,
    /// A client address ran out of its allowance of failed authentications.
    AuthFailureThreshold,
    /// An authenticated key was refused an administrative route for lack of scope.
    AccessDenied,
    /// The gateway's upstream list was replaced (logged by the gateway, which has no store).
    GatewayUpstreamsChanged,
}

impl AuditAction {
    pub const ALL: [AuditAction; 14] = [
        Self::KeyCreated,
        Self::KeyRotated,
        Self::KeyRevoked,
        Self::KeysAdopted,
        Self::WebhookCreated,
        Self::WebhookSecretRotated,
        Self::WebhookDeleted,
        Self::WebhookRedelivered,
        Self::DeadLetterReplayed,
        Self::DeadLetterDiscarded,
        Self::ProjectionRebuilt,
        Self::AuthFailureThreshold,
        Self::AccessDenied,
        Self::GatewayUpstreamsChanged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyCreated => "key.created",
            Self::KeyRotated => "key.rotated",
            Self::KeyRevoked => "key.revoked",
            Self::KeysAdopted => "keys.adopted",
            Self::WebhookCreated => "webhook.created",
            Self::WebhookSecretRotated => "webhook.secret_rotated",
            Self::WebhookDeleted => "webhook.deleted",
            Self::WebhookRedelivered => "webhook.redelivered",
            Self::DeadLetterReplayed => "dead_letter.replayed",
            Self::DeadLetterDiscarded => "dead_letter.discarded",
            Self::ProjectionRebuilt => "projection.rebuilt",
            Self::AuthFailureThreshold => "auth.failure_threshold_crossed",
            Self::AccessDenied => "access.denied",
            Self::GatewayUpstreamsChanged => "gateway.upstreams_changed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// How the action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditOutcome {
    /// It was done.
    Succeeded,
    /// It was refused (no scope; too many failed authentications).
    Denied,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Denied => "denied",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Succeeded, Self::Denied].into_iter().find(|o| o.as_str() == s)
    }
}

/// Who acted, from where, in which request: what an API request, the offline CLI or the
/// server's own start carries into the records of what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditContext {
    /// `key:<uuid>` (an API key), `cli:<os user>` (the offline CLI), `bootstrap` (the first
    /// key a server makes), `anonymous` (no key: a failed authentication), or the gateway's
    /// `gateway:admin` / `gateway:reload`.
    pub actor: String,
    /// The client's IP address (the TCP peer), when the action came over the network.
    pub client_address: Option<String>,
    /// The request's `x-request-id`, when the action came in a request.
    pub request_id: Option<String>,
}

impl AuditContext {
    /// An API request made with key `id`.
    pub fn key(id: KeyId, client_address: Option<String>, request_id: Option<String>) -> Self {
        Self { actor: format!("key:{}", id.0), client_address, request_id }
    }

    /// The offline CLI, run by the operating-system user `user`.
    pub fn cli(user: &str) -> Self {
        Self { actor: format!("cli:{user}"), client_address: None, request_id: None }
    }

    /// The server making the first admin key of an empty store.
    pub fn bootstrap() -> Self {
        Self { actor: "bootstrap".into(), client_address: None, request_id: None }
    }

    /// The record of `action` on `target` by this actor, now, with a fresh id.
    pub fn entry(
        &self,
        action: AuditAction,
        target: String,
        outcome: AuditOutcome,
        details: Value,
    ) -> AuditEntry {
        AuditEntry {
            id: Uuid::now_v7(),
            time: Timestamp::now(),
            actor: self.actor.clone(),
            action,
            target,
            client_address: self.client_address.clone(),
            request_id: self.request_id.clone(),
            outcome,
            details: match details {
                Value::Object(map) => map,
                _ => Map::new(),
            },
        }
    }
}

/// A record before it has its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: Uuid,
    pub time: Timestamp,
    pub actor: String,
    pub action: AuditAction,
    /// What was acted on: `key:<uuid>`, `webhook:<uuid>`, `dead_letter:<id>`,
    /// `projection:<name>`, `address:<ip or /64>`, `route:<METHOD> <template>`, `gateway:upstreams`.
    pub target: String,
    pub client_address: Option<String>,
    pub request_id: Option<String>,
    pub outcome: AuditOutcome,
    /// Facts an auditor wants beside the target (a new key's scopes, a webhook's URL).
    pub details: Map<String, Value>,
}

impl AuditEntry {
    /// The record this entry becomes at `position`, following `previous` in the chain.
    pub fn chained(self, position: i64, previous: &ChainHash) -> AuditRecord {
        let mut record = AuditRecord {
            position,
            id: self.id,
            time: self.time,
            actor: self.actor,
            action: self.action.as_str().to_owned(),
            target: self.target,
            client_address: self.client_address,
            request_id: self.request_id,
            outcome: self.outcome.as_str().to_owned(),
            details: self.details,
            hash: ChainHash::GENESIS,
        };
        record.hash = link(previous, &record);
        record
    }
}

/// A record as stored. Action and outcome are kept as the text stored, so a record written by
/// a newer version (an action this one does not know) still reads and verifies.
///
/// Its JSON (`Serialize`) is what `GET /v1/audit` answers and the CloudEvent carries:
/// `position`, `id`, `time` (RFC 3339), `actor`, `action`, `target`, `client_address`,
/// `request_id`, `outcome`, `details` and `hash` (64 lowercase hex digits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    pub position: i64,
    pub id: Uuid,
    pub time: Timestamp,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub client_address: Option<String>,
    pub request_id: Option<String>,
    pub outcome: String,
    pub details: Map<String, Value>,
    #[serde(serialize_with = "hex_hash")]
    pub hash: ChainHash,
}

fn hex_hash<S: serde::Serializer>(hash: &ChainHash, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hash.to_hex())
}

/// The bytes an audit record's hash covers: the RFC 8785 canonical JSON (keys sorted, no
/// whitespace, integers exact; [`canonical_json`]) of the object
///
/// `{"action", "actor", "client_address", "details", "id", "outcome", "position",
///   "request_id", "target", "time"}`
///
/// holding the record's fields as stored, with `id` the hyphenated lowercase UUID, `time` the
/// integer number of microseconds since 1970-01-01T00:00:00Z (not the RFC 3339 text the API
/// shows, whose spelling is a display choice), `client_address` and `request_id` a string or
/// null, and `details` the JSON object (canonical like the rest). The `hash` itself is not in
/// it. Every field a verifier needs is in the row, so this can be called on a row read back.
pub fn canonical(record: &AuditRecord) -> Vec<u8> {
    let object = json!({
        "action": record.action,
        "actor": record.actor,
        "client_address": record.client_address,
        "details": record.details,
        "id": record.id,
        "outcome": record.outcome,
        "position": record.position,
        "request_id": record.request_id,
        "target": record.target,
        "time": record.time.as_micros(),
    });
    canonical_json(&object).expect("a JSON value always serializes")
}

/// The hash `record` must have when it follows `previous`: `previous.next(canonical(record))`.
pub fn link(previous: &ChainHash, record: &AuditRecord) -> ChainHash {
    previous.next(&canonical(record))
}

/// The last record's position and hash (0 and [`ChainHash::GENESIS`] before the first), as
/// the store's head row holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditHead {
    pub position: i64,
    pub hash: ChainHash,
}

/// Which records a listing wants; every filter given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub actor: Option<String>,
    pub target: Option<String>,
    pub outcome: Option<String>,
    /// At or after this time.
    pub since: Option<Timestamp>,
    /// Before this time.
    pub until: Option<Timestamp>,
}

/// A change that an administrator (or the server's own bootstrap) makes, recorded with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminChange {
    CreateKey(NewApiKey),
    /// Creates the key only when the store holds none.
    BootstrapKey(NewApiKey),
    /// A new key in place of `old`, which expires at `old_expires_at` (or sooner if it
    /// already would); only a live key is rotated.
    RotateKey {
        old: KeyId,
        new: NewApiKey,
        old_expires_at: Timestamp,
    },
    RevokeKey(KeyId),
    /// Registers the endpoint; an id already taken changes nothing and records nothing.
    CreateWebhook(Webhook),
    /// Replaces the endpoint's secrets if its secret is still `expected` (compare and set).
    RotateWebhookSecret {
        id: Uuid,
        expected: String,
        secrets: WebhookSecrets,
    },
    DeleteWebhook(Uuid),
    /// Makes a delivery of endpoint `webhook` pending again, due at `now`.
    Redeliver {
        webhook: Uuid,
        delivery: Uuid,
        now: Timestamp,
    },
    /// Marks an in-process bus dead letter for replay.
    ReplayDeadLetter(Uuid),
    /// Deletes an in-process bus dead letter.
    DiscardDeadLetter(Uuid),
    /// Forgets the ledger-volumes projection and `consumer`'s processed records: the start of
    /// its rebuild.
    ResetProjection {
        consumer: String,
    },
}

/// What an [`AdminChange`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminEffect {
    /// A key was made (a create; a bootstrap into an empty store).
    Key(ApiKey),
    /// A key was rotated: the new key, and the old one as it is now.
    Rotated { new: ApiKey, old: ApiKey },
    /// The endpoint under the id, and whether this change registered it.
    Webhook { webhook: Webhook, created: bool },
    /// Whether the thing acted on was there (and so the change applied): false for a key,
    /// endpoint, delivery or dead letter that does not exist, a rotation of a key that is not
    /// live, a secret that changed meanwhile, a bootstrap into a store that has keys.
    Applied(bool),
}

impl AdminEffect {
    /// The key a create or a bootstrap made.
    pub fn made_key(self) -> Option<ApiKey> {
        match self {
            Self::Key(key) => Some(key),
            _ => None,
        }
    }

    pub fn applied(&self) -> bool {
        match self {
            Self::Key(_) | Self::Rotated { .. } => true,
            Self::Webhook { created, .. } => *created,
            Self::Applied(applied) => *applied,
        }
    }
}

/// A change's effect and, when it applied, its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Administered {
    pub effect: AdminEffect,
    pub record: Option<AuditRecord>,
}

impl AdminChange {
    /// The record of this change having had `effect`, or `None` when it changed nothing.
    /// `dead_letter` names the letter's consumer and event, read in the change's transaction.
    pub fn entry(
        &self,
        effect: &AdminEffect,
        by: &AuditContext,
        dead_letter: Option<(&str, Uuid)>,
    ) -> Option<AuditEntry> {
        if !effect.applied() {
            return None;
        }
        let succeeded = |action, target: String, details| {
            Some(by.entry(action, target, AuditOutcome::Succeeded, details))
        };
        match (self, effect) {
            (Self::CreateKey(_) | Self::BootstrapKey(_), AdminEffect::Key(key)) => {
                succeeded(AuditAction::KeyCreated, key_target(key.id), key_details(key))
            }
            (Self::RotateKey { .. }, AdminEffect::Rotated { new, old }) => succeeded(
                AuditAction::KeyRotated,
                key_target(old.id),
                json!({"new_key_id": new.id.0, "old_key_expires_at": old.expires_at}),
            ),
            (Self::RevokeKey(id), _) => succeeded(AuditAction::KeyRevoked, key_target(*id), json!({})),
            (Self::CreateWebhook(_), AdminEffect::Webhook { webhook, .. }) => succeeded(
                AuditAction::WebhookCreated,
                webhook_target(webhook.id),
                json!({"url": webhook.url, "event_types": webhook.event_types}),
            ),
            (Self::RotateWebhookSecret { id, secrets, .. }, _) => succeeded(
                AuditAction::WebhookSecretRotated,
                webhook_target(*id),
                json!({"previous_secret_expires_at": secrets.previous_secret_expires_at}),
            ),
            (Self::DeleteWebhook(id), _) => {
                succeeded(AuditAction::WebhookDeleted, webhook_target(*id), json!({}))
            }
            (Self::Redeliver { webhook, delivery, .. }, _) => succeeded(
                AuditAction::WebhookRedelivered,
                webhook_target(*webhook),
                json!({"delivery_id": delivery}),
            ),
            (Self::ReplayDeadLetter(id), _) => succeeded(
                AuditAction::DeadLetterReplayed,
                dead_letter_target(&id.to_string()),
                letter(dead_letter),
            ),
            (Self::DiscardDeadLetter(id), _) => succeeded(
                AuditAction::DeadLetterDiscarded,
                dead_letter_target(&id.to_string()),
                letter(dead_letter),
            ),
            (Self::ResetProjection { consumer }, _) => {
                succeeded(AuditAction::ProjectionRebuilt, format!("projection:{consumer}"), json!({}))
            }
            _ => None,
        }
    }
}

/// The record that opens the trail of a store holding keys already: a store older than its
/// audit trail has keys that no record made, and `coffer verify` would name them. Written in
/// the transaction of the trail's first record, just before it; the actor is `bootstrap`, as
/// for the first key of a new store.
pub(crate) fn adoption(keys: &[ApiKey]) -> AuditEntry {
    let keys: Vec<Value> =
        keys.iter().map(|key| json!({"id": key.id.0, "revoked": key.revoked_at.is_some()})).collect();
    AuditContext::bootstrap().entry(
        AuditAction::KeysAdopted,
        "keys".into(),
        AuditOutcome::Succeeded,
        json!({"keys": keys}),
    )
}

/// `key:<uuid>`.
pub fn key_target(id: KeyId) -> String {
    format!("key:{}", id.0)
}

/// `webhook:<uuid>`.
pub fn webhook_target(id: Uuid) -> String {
    format!("webhook:{id}")
}

/// `dead_letter:<id>`: a UUID on the in-process bus, a stream sequence on JetStream.
pub fn dead_letter_target(id: &str) -> String {
    format!("dead_letter:{id}")
}

/// A dead letter's details: whose it was and which event it held.
pub fn dead_letter_details(consumer: &str, event_id: Uuid) -> Value {
    json!({"consumer": consumer, "event_id": event_id})
}

fn letter(dead_letter: Option<(&str, Uuid)>) -> Value {
    dead_letter.map_or_else(|| json!({}), |(consumer, event)| dead_letter_details(consumer, event))
}

fn key_details(key: &ApiKey) -> Value {
    json!({
        "name": key.name,
        "scopes": key.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "rate_limit_per_second": key.rate_limit_per_second,
        "expires_at": key.expires_at,
    })
}

/// The audit trail of a store.
#[async_trait]
pub trait AuditTrail: Send + Sync {
    /// Makes `change` and, when it applied, appends its record by `by`, in one transaction.
    async fn administer(&self, change: AdminChange, by: &AuditContext) -> StoreResult<Administered>;

    /// Appends a record of something that changed nothing in the store, in a transaction of
    /// its own.
    async fn record_audit(&self, entry: AuditEntry) -> StoreResult<AuditRecord>;

    /// The records after position `after` that match `filter`, in position order, at most
    /// `limit`.
    async fn audit_records(
        &self,
        filter: &AuditFilter,
        after: i64,
        limit: usize,
    ) -> StoreResult<Vec<AuditRecord>>;

    /// The position and hash of the last record: what the chain's tail must end at.
    async fn audit_head(&self) -> StoreResult<AuditHead>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> AuditEntry {
        let by = AuditContext::key(KeyId(Uuid::from_u128(7)), Some("192.0.2.1".into()), Some("req-1".into()));
        let mut entry = by.entry(
            AuditAction::KeyRevoked,
            key_target(KeyId(Uuid::from_u128(9))),
            AuditOutcome::Succeeded,
            json!({"b": 1, "a": [true, null]}),
        );
        entry.id = Uuid::from_u128(1);
        entry.time = Timestamp::from_micros(1_700_000_000_123_456);
        entry
    }

    #[test]
    fn the_canonical_form_is_sorted_compact_and_writes_time_in_microseconds() {
        let record = entry().chained(1, &ChainHash::GENESIS);
        let text = String::from_utf8(canonical(&record)).unwrap();
        assert_eq!(
            text,
            r#"{"action":"key.revoked","actor":"key:00000000-0000-0000-0000-000000000007","client_address":"192.0.2.1","details":{"a":[true,null],"b":1},"id":"00000000-0000-0000-0000-000000000001","outcome":"succeeded","position":1,"request_id":"req-1","target":"key:00000000-0000-0000-0000-000000000009","time":1700000000123456}"#
        );
        assert_eq!(record.hash, ChainHash::GENESIS.next(text.as_bytes()));
    }

    #[test]
    fn every_field_and_the_previous_link_are_covered() {
        let first = entry().chained(1, &ChainHash::GENESIS);
        let second = entry().chained(2, &first.hash);
        assert_eq!(link(&first.hash, &second), second.hash);
        assert_ne!(link(&ChainHash::GENESIS, &second), second.hash, "a record is tied to its predecessor");
        let edits: [fn(&mut AuditRecord); 10] = [
            |r| r.position += 1,
            |r| r.id = Uuid::from_u128(2),
            |r| r.time = Timestamp::from_micros(r.time.as_micros() + 1),
            |r| r.actor.push('x'),
            |r| r.action = "key.created".into(),
            |r| r.target.push('x'),
            |r| r.client_address = None,
            |r| r.request_id = None,
            |r| r.outcome = "denied".into(),
            |r| {
                r.details.insert("c".into(), json!(1));
            },
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut edited = second.clone();
            edit(&mut edited);
            assert_ne!(link(&first.hash, &edited), second.hash, "edit {i} went unnoticed");
        }
    }

    #[test]
    fn the_json_form_is_the_canonical_fields_with_rfc3339_time_and_the_hash() {
        let record = entry().chained(1, &ChainHash::GENESIS);
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["time"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(json["hash"], record.hash.to_hex());
        let mut fields: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "action",
                "actor",
                "client_address",
                "details",
                "hash",
                "id",
                "outcome",
                "position",
                "request_id",
                "target",
                "time"
            ]
        );
    }

    #[test]
    fn action_and_outcome_names_read_back() {
        for action in AuditAction::ALL {
            assert_eq!(AuditAction::parse(action.as_str()), Some(action));
        }
        assert_eq!(AuditOutcome::parse("denied"), Some(AuditOutcome::Denied));
        assert_eq!(AuditAction::parse("key.eaten"), None);
    }
}
