//! Parsed scalar values: every constructor checks its range, so a value of these types is valid.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Why a raw value was refused by one of the constructors below.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub &'static str);

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema), schema(value_type = String, format = Uuid))]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered (v7) id, as Coffer makes them when the client chose none.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// The id of an account.
    AccountId
);
uuid_id!(
    /// The id of a transfer (also of a post or void, which are transfers too).
    TransferId
);

/// An amount of minor units moved by one transfer: 1 ≤ amount ≤ 2^63−1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema), schema(value_type = i64, minimum = 1))]
#[serde(transparent)]
pub struct Amount(u64);

impl Amount {
    pub const MAX: u64 = i64::MAX as u64;

    pub fn get(self) -> u64 {
        self.0
    }
}

impl TryFrom<u64> for Amount {
    type Error = InvalidValue;
    fn try_from(value: u64) -> Result<Self, Self::Error> {
        match value {
            0 => Err(InvalidValue("amount must be at least 1")),
            v if v > Self::MAX => Err(InvalidValue("amount must be at most 2^63-1")),
            v => Ok(Self(v)),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Amount::try_from(u64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A ledger's code, e.g. `USD`: 1 to 16 of `A-Z`, `0-9` and `_`. Stored inline so it is `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LedgerCode {
    len: u8,
    bytes: [u8; 16],
}

impl LedgerCode {
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored, see `TryFrom<&str>`.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or_default()
    }
}

impl TryFrom<&str> for LedgerCode {
    type Error = InvalidValue;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        let valid = (1..=16).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(InvalidValue("ledger code must match ^[A-Z0-9_]{1,16}$"));
        }
        let mut bytes = [0u8; 16];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Ok(Self { len: s.len() as u8, bytes })
    }
}

impl fmt::Display for LedgerCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for LedgerCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LedgerCode({})", self.as_str())
    }
}

impl Serialize for LedgerCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for LedgerCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        LedgerCode::try_from(s.as_ref()).map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "utoipa")]
impl utoipa::PartialSchema for LedgerCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[A-Z0-9_]{1,16}$"))
            .examples(["USD"])
            .into()
    }
}
#[cfg(feature = "utoipa")]
impl utoipa::ToSchema for LedgerCode {}

/// How many decimal places a ledger's minor unit has: 0..=18.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema), schema(value_type = u8, minimum = 0, maximum = 18))]
#[serde(transparent)]
pub struct Scale(u8);

impl Scale {
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u64> for Scale {
    type Error = InvalidValue;
    fn try_from(v: u64) -> Result<Self, Self::Error> {
        if v > 18 {
            return Err(InvalidValue("scale must be between 0 and 18"));
        }
        Ok(Self(v as u8))
    }
}

impl<'de> Deserialize<'de> for Scale {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Scale::try_from(u64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A client's own reference for a record: 1 to 128 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema), schema(value_type = String, min_length = 1, max_length = 128))]
#[serde(transparent)]
pub struct ExternalRef(String);

impl ExternalRef {
    pub const MAX_CHARS: usize = 128;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ExternalRef {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.is_empty() || s.chars().count() > Self::MAX_CHARS {
            return Err(InvalidValue("external_ref must be 1 to 128 characters"));
        }
        Ok(Self(s))
    }
}

impl<'de> Deserialize<'de> for ExternalRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ExternalRef::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Free-form client data on a record: a JSON object of at most 4 KiB once serialized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema), schema(value_type = Object))]
#[serde(transparent)]
pub struct Metadata(serde_json::Map<String, serde_json::Value>);

impl Metadata {
    pub const MAX_BYTES: usize = 4096;

    pub fn as_map(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.0
    }
}

impl TryFrom<serde_json::Map<String, serde_json::Value>> for Metadata {
    type Error = InvalidValue;
    fn try_from(map: serde_json::Map<String, serde_json::Value>) -> Result<Self, Self::Error> {
        let size = serde_json::to_vec(&map).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > Self::MAX_BYTES {
            return Err(InvalidValue("metadata must be at most 4096 bytes of JSON"));
        }
        Ok(Self(map))
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = serde_json::Map::deserialize(d)?;
        Metadata::try_from(map).map_err(serde::de::Error::custom)
    }
}

/// A point in time, microseconds since the Unix epoch, shown as RFC 3339 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    pub fn now() -> Self {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Self(i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
    }

    /// This time plus whole seconds, saturating instead of overflowing.
    pub fn plus_seconds(self, seconds: u32) -> Self {
        Self(self.0.saturating_add(i64::from(seconds) * 1_000_000))
    }

    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1000;
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default()
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let t = time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
            .map_err(serde::de::Error::custom)?;
        i64::try_from(t.unix_timestamp_nanos() / 1000).map(Self).map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "utoipa")]
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::DateTime)))
            .into()
    }
}
#[cfg(feature = "utoipa")]
impl utoipa::ToSchema for Timestamp {}

/// The W3C trace context (`traceparent`, version 00) of the request that sent a command: the
/// events the command causes carry it, so a consumer can join the trace that made the change.
/// Only the form this crate can pass on unchanged is accepted: `00-`, 32 lowercase hex digits
/// (the trace id, not all zero), `-`, 16 (the parent id, not all zero), `-`, 2 (the flags).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraceParent(std::sync::Arc<str>);

impl TraceParent {
    /// Whether `value` is a traceparent of that form.
    pub fn is_valid(value: &[u8]) -> bool {
        let hex = |part: &[u8]| part.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
        let not_zero = |part: &[u8]| part.iter().any(|b| *b != b'0');
        value.len() == 55
            && value.starts_with(b"00-")
            && value[35] == b'-'
            && value[52] == b'-'
            && hex(&value[3..35])
            && not_zero(&value[3..35])
            && hex(&value[36..52])
            && not_zero(&value[36..52])
            && hex(&value[53..55])
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trace id: the 32 hex digits every span of the trace shares.
    pub fn trace_id(&self) -> &str {
        &self.0[3..35]
    }
}

impl TryFrom<&str> for TraceParent {
    type Error = InvalidValue;
    fn try_from(value: &str) -> Result<Self, InvalidValue> {
        if Self::is_valid(value.as_bytes()) {
            Ok(Self(value.into()))
        } else {
            Err(InvalidValue("a traceparent is 00-<32 hex>-<16 hex>-<2 hex>, lowercase, ids not all zero"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amount_range() {
        assert!(Amount::try_from(0).is_err());
        assert!(Amount::try_from(1).is_ok());
        assert!(Amount::try_from(i64::MAX as u64).is_ok());
        assert!(Amount::try_from(i64::MAX as u64 + 1).is_err());
    }

    #[test]
    fn ledger_code_shape() {
        assert_eq!(LedgerCode::try_from("USD_2").unwrap().as_str(), "USD_2");
        for bad in ["", "usd", "USD-1", "ABCDEFGHIJKLMNOPQ", "É"] {
            assert!(LedgerCode::try_from(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamp_is_rfc3339_utc() {
        assert_eq!(Timestamp::from_micros(1_500_000).to_rfc3339(), "1970-01-01T00:00:01.5Z");
        let json = serde_json::to_string(&Timestamp::from_micros(1_700_000_000_123_456)).unwrap();
        let back: Timestamp = serde_json::from_str(&json).unwrap();
        assert_eq!(back.as_micros(), 1_700_000_000_123_456);
    }

    #[test]
    fn traceparent_shape() {
        let good = TraceParent::try_from("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(good.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert!(TraceParent::try_from(bad).is_err(), "{bad}");
        }
    }
}
