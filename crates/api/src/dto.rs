//! Request and response bodies of the API. The handlers deserialize these and `/openapi.json` is
//! generated from them, so the documentation cannot drift from what the server accepts.
//!
//! Records (ledgers, accounts, transfers) are answered in the ledger crate's own serde form.

use std::num::NonZeroU32;

use coffer_ledger::{
    AccountFlags, AccountId, Amount, ExternalRef, LedgerCode, Metadata, Scale, Timestamp, Transfer,
    TransferId,
};
use coffer_store::{ApiKey, Cursor, Page, PageRequest, Scope};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::client_text;
use crate::error::ApiError;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLedger {
    pub code: LedgerCode,
    pub scale: Scale,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// Chosen by the client to make the create idempotent; Coffer makes a UUIDv7 otherwise.
    pub id: Option<AccountId>,
    pub ledger: LedgerCode,
    /// A client-defined kind of account, 0..=65535.
    #[serde(default)]
    #[schema(maximum = 65535)]
    pub code: u16,
    #[serde(default)]
    pub flags: AccountFlags,
    #[serde(default, deserialize_with = "client_text::external_ref")]
    pub external_ref: Option<ExternalRef>,
    #[serde(default, deserialize_with = "client_text::metadata")]
    pub metadata: Option<Metadata>,
}

/// Seconds a hold lasts before it expires on its own: 1 to 4294967295 (2^32−1).
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[schema(value_type = i64, minimum = 1, maximum = 4294967295.0)]
#[serde(transparent)]
pub struct TimeoutSeconds(pub NonZeroU32);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTransfer {
    /// Chosen by the client to make the create idempotent; Coffer makes a UUIDv7 otherwise.
    pub id: Option<TransferId>,
    pub debit_account_id: AccountId,
    pub credit_account_id: AccountId,
    pub amount: Amount,
    pub ledger: LedgerCode,
    /// A client-defined kind of transfer, 0..=65535.
    #[serde(default)]
    #[schema(maximum = 65535)]
    pub code: u16,
    /// Hold the amount (two-phase) until it is posted, voided or expires.
    #[serde(default)]
    pub pending: bool,
    /// Only with `"pending": true`: expire the hold after this many seconds.
    pub timeout_seconds: Option<TimeoutSeconds>,
    #[serde(default, deserialize_with = "client_text::external_ref")]
    pub external_ref: Option<ExternalRef>,
    #[serde(default, deserialize_with = "client_text::metadata")]
    pub metadata: Option<Metadata>,
}

/// Posts all or part of a pending transfer.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostPending {
    /// The id of the posting transfer this creates.
    pub id: Option<TransferId>,
    /// At most the pending amount; omitted, all of it.
    pub amount: Option<Amount>,
}

/// Voids a pending transfer, releasing its amount.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidPending {
    /// The id of the voiding transfer this creates.
    pub id: Option<TransferId>,
}

/// One item of a batch: a new transfer, or (with `post_pending_id` or `void_pending_id`) a post
/// or void of a pending one, which takes only `id`, `amount` (post), `code`, `external_ref` and
/// `metadata`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    pub id: Option<TransferId>,
    pub debit_account_id: Option<AccountId>,
    pub credit_account_id: Option<AccountId>,
    pub amount: Option<Amount>,
    pub ledger: Option<LedgerCode>,
    #[schema(maximum = 65535)]
    pub code: Option<u16>,
    pub pending: Option<bool>,
    pub timeout_seconds: Option<TimeoutSeconds>,
    #[serde(default, deserialize_with = "client_text::external_ref")]
    pub external_ref: Option<ExternalRef>,
    #[serde(default, deserialize_with = "client_text::metadata")]
    pub metadata: Option<Metadata>,
    pub post_pending_id: Option<TransferId>,
    pub void_pending_id: Option<TransferId>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBatch {
    /// All items apply or none does.
    #[serde(default)]
    pub atomic: bool,
    /// 1 to 8189 items, applied in order.
    #[schema(min_items = 1, max_items = 8189)]
    pub transfers: Vec<BatchItem>,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Created,
    Exists,
    Failed,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ItemError {
    pub code: &'static str,
    pub detail: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResult {
    pub index: usize,
    pub status: BatchStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ItemError>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

/// A page of a list, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct List<T> {
    pub data: Vec<T>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

impl<T> From<Page<T>> for List<T> {
    fn from(page: Page<T>) -> Self {
        Self { data: page.items, next_cursor: page.next_cursor.map(|c| c.to_string()) }
    }
}

/// An opaque list position returned as `next_cursor`.
#[derive(Debug, Clone, Copy)]
pub struct CursorParam(pub Cursor);

impl<'de> Deserialize<'de> for CursorParam {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        // Only the spelling the server writes (the pattern `cursor` is documented with): `c` and at most 16
        // lowercase hex digits; `i64::from_str_radix` alone would also take `+`, `-0` and capitals.
        let digits = raw.strip_prefix('c').unwrap_or_default();
        let shaped = (1..=16).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !shaped {
            return Err(serde::de::Error::custom("cursor is not one this API returned"));
        }
        raw.parse().map(CursorParam).map_err(serde::de::Error::custom)
    }
}

/// The page a list request asks for: 400 for a limit outside 1..=1000.
fn page(limit: Option<u32>, cursor: Option<CursorParam>) -> Result<PageRequest, ApiError> {
    PageRequest::new(limit, cursor.map(|c| c.0)).map_err(|e| ApiError::invalid_field("limit", e.0))
}

/// A page size for lists with cursors of their own: the same default and bounds as every list.
pub fn page_limit(limit: Option<u32>) -> Result<usize, ApiError> {
    Ok(page(limit, None)?.limit() as usize)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1..=1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[param(value_type = Option<String>, pattern = "^c(?:[0-9a-f]{1,15}|[0-7][0-9a-f]{15})$")]
    pub cursor: Option<CursorParam>,
}

impl PageQuery {
    pub fn page(&self) -> Result<PageRequest, ApiError> {
        page(self.limit, self.cursor)
    }
}

/// The query of a route that takes none: any parameter is a 400, not silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AccountQuery {
    #[param(value_type = Option<String>, pattern = "^[A-Z0-9_]{1,16}$")]
    pub ledger: Option<LedgerCode>,
    /// 1 to 128 characters, no control characters.
    #[param(value_type = Option<String>, min_length = 1, max_length = 128, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    #[serde(default, deserialize_with = "client_text::external_ref")]
    pub external_ref: Option<ExternalRef>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(value_type = Option<String>, pattern = "^c(?:[0-9a-f]{1,15}|[0-7][0-9a-f]{15})$")]
    pub cursor: Option<CursorParam>,
}

impl AccountQuery {
    pub fn page(&self) -> Result<PageRequest, ApiError> {
        page(self.limit, self.cursor)
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TransferQuery {
    /// Transfers on either side of this account.
    #[param(value_type = Option<String>, format = Uuid)]
    pub account_id: Option<AccountId>,
    #[param(value_type = Option<String>, pattern = "^[A-Z0-9_]{1,16}$")]
    pub ledger: Option<LedgerCode>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(value_type = Option<String>, pattern = "^c(?:[0-9a-f]{1,15}|[0-7][0-9a-f]{15})$")]
    pub cursor: Option<CursorParam>,
}

impl TransferQuery {
    pub fn page(&self) -> Result<PageRequest, ApiError> {
        page(self.limit, self.cursor)
    }
}

/// What an API key may do; `admin` ⊇ `write` ⊇ `read`, and `admin` ⊇ `audit` (reading the
/// audit trail, which neither `read` nor `write` grants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScopeName {
    Read,
    Write,
    Admin,
    Audit,
}

impl From<ScopeName> for Scope {
    fn from(s: ScopeName) -> Self {
        match s {
            ScopeName::Read => Scope::Read,
            ScopeName::Write => Scope::Write,
            ScopeName::Admin => Scope::Admin,
            ScopeName::Audit => Scope::Audit,
        }
    }
}

impl From<Scope> for ScopeName {
    fn from(s: Scope) -> Self {
        match s {
            Scope::Read => ScopeName::Read,
            Scope::Write => ScopeName::Write,
            Scope::Admin => ScopeName::Admin,
            Scope::Audit => ScopeName::Audit,
        }
    }
}

/// A key's name: 1 to 128 characters, no control characters.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(value_type = String, min_length = 1, max_length = 128)]
#[serde(transparent)]
pub struct KeyName(pub String);

impl<'de> Deserialize<'de> for KeyName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        if name.is_empty() || name.chars().count() > 128 {
            return Err(serde::de::Error::custom("name must be 1 to 128 characters"));
        }
        client_text::check(&name).map_err(|why| serde::de::Error::custom(format!("name {why}")))?;
        Ok(Self(name))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: Option<KeyName>,
    /// At least one scope.
    #[schema(min_items = 1)]
    pub scopes: Vec<ScopeName>,
    /// Requests per second this key may make, 1 to 4294967295 (2^32−1); omitted, the server's default.
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 4294967295.0)]
    pub rate_limit_per_second: Option<NonZeroU32>,
    /// When the key stops working by itself (RFC 3339, in the future); omitted, never.
    pub expires_at: Option<Timestamp>,
}

/// Rotates a key: a new token for the same powers, while the old one keeps working until
/// `old_key_expires_at`, so every client can move to the new token without a gap.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// Until when the old token still works (RFC 3339, not in the past, at most 30 days ahead);
    /// omitted, 24 hours from now. Never later than the old key's own expiry.
    pub old_key_expires_at: Option<Timestamp>,
}

/// A rotation's outcome: the new key with its token, and the old key as it is now.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedKey {
    pub key: CreatedKey,
    pub previous: KeyView,
}

/// An API key as listed: never its token.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyView {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub name: Option<String>,
    pub scopes: Vec<ScopeName>,
    pub rate_limit_per_second: Option<u32>,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    /// When the key stops working by itself; null: never.
    pub expires_at: Option<Timestamp>,
}

impl From<ApiKey> for KeyView {
    fn from(key: ApiKey) -> Self {
        Self {
            id: key.id.0,
            name: key.name,
            scopes: key.scopes.into_iter().map(ScopeName::from).collect(),
            rate_limit_per_second: key.rate_limit_per_second,
            created_at: key.created_at,
            revoked_at: key.revoked_at,
            expires_at: key.expires_at,
        }
    }
}

/// A new API key with its token, which is shown only in this response. A replay of this response
/// under an Idempotency-Key has `token: null`: the token is never stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: KeyView,
    /// The bearer token. Shown once; null in an Idempotency-Key replay.
    pub token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(examples("ok"))]
    pub status: &'static str,
}
