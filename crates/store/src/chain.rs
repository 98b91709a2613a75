//! Hash chains: what makes the outbox and the audit trail tamper-evident (DESIGN.md §5).
//!
//! A record's hash is SHA-256 over the previous record's hash (32 raw bytes) followed by the
//! record's canonical bytes — its JSON in the RFC 8785 form (sorted keys, no whitespace, one
//! spelling per number and string). Editing, deleting, inserting or reordering any record
//! therefore changes the hash of every record after it; the chain's last hash, kept apart,
//! covers the tail. The first record follows [`ChainHash::GENESIS`].
//!
//! Integers are written with their exact digits. RFC 8785 takes numbers as IEEE doubles, which
//! is the same thing up to 2^53; beyond it (amounts and balances may reach 2^63−1) a double
//! would round, and two different amounts would hash alike. See DECISIONS.md.

use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// A link of a chain: SHA-256 of the previous link and a record's canonical bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// What the first record of a chain follows.
    pub const GENESIS: ChainHash = ChainHash([0; 32]);

    /// The link of the record whose canonical bytes are `canonical`, following `self`.
    pub fn next(&self, canonical: &[u8]) -> ChainHash {
        let mut hasher = Sha256::new();
        hasher.update(self.0);
        hasher.update(canonical);
        ChainHash(hasher.finalize().into())
    }

    /// A hash as a database column holds it; `None` unless it is exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<ChainHash> {
        bytes.try_into().ok().map(ChainHash)
    }

    /// The 64 lowercase hex digits a CloudEvent or an API answer carries.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads [`to_hex`](Self::to_hex)'s form back (either case); `None` if it is not 64 hex digits.
    pub fn from_hex(text: &str) -> Option<ChainHash> {
        let mut bytes = [0; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(ChainHash(bytes))
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Appends `value`'s canonical JSON (RFC 8785, exact integers) to `out`.
pub fn write_canonical_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> serde_json::Result<()> {
    let mut serializer = serde_json::Serializer::with_formatter(out, canon_json::CanonicalFormatter::new());
    value.serialize(&mut serializer)
}

/// `value`'s canonical JSON (RFC 8785, exact integers).
pub fn canonical_json<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    write_canonical_json(&mut out, value)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn canonical_json_sorts_keys_and_keeps_integers_exact() {
        let value =
            json!({"b": 9_223_372_036_854_775_807_u64, "a": {"z": 1.0, "y": [true, null]}, "é": "\u{1}"});
        let text = String::from_utf8(canonical_json(&value).unwrap()).unwrap();
        assert_eq!(text, r#"{"a":{"y":[true,null],"z":1},"b":9223372036854775807,"é":"\u0001"}"#);
    }

    #[test]
    fn a_link_covers_the_previous_link_and_every_byte() {
        let first = ChainHash::GENESIS.next(b"{}");
        assert_eq!(
            first.to_hex(),
            // printf '\0%.0s' {1..32} | cat - <(printf '{}') | sha256sum
            "fb1634c4e6cd4b1f1afe3ce2d6ef080f7ac5d1f357d723ad4dfca782733b62db"
        );
        assert_ne!(first.next(b"{}"), first);
        assert_ne!(ChainHash::GENESIS.next(b"{ }"), first);
        assert_eq!(ChainHash::from_hex(&first.to_hex()), Some(first));
        assert_eq!(ChainHash::from_hex(&first.to_hex().to_uppercase()), Some(first));
        assert_eq!(ChainHash::from_hex("00"), None);
        assert_eq!(ChainHash::from_slice(&first.0), Some(first));
        assert_eq!(ChainHash::from_slice(&[0; 31]), None);
    }
}
