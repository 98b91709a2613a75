//! Standard Webhooks signatures: how a receiver knows a delivery came from Coffer and was not
//! changed or replayed on the way.
//!
//! Each endpoint has a secret, `whsec_` followed by the base64 of 32 random bytes (the spec
//! allows 24 to 64). A delivery is signed by HMAC-SHA256, keyed with those bytes, over
//! `{webhook-id}.{webhook-timestamp}.{body}`; the `webhook-signature` header carries
//! `v1,<base64 of the MAC>`. The timestamp (unix seconds) is inside the signed content, so a
//! receiver that refuses old timestamps refuses replays, and the id is too, so it can
//! deduplicate retries. Receivers accept a space-separated list of signatures, which is what
//! lets a secret be rotated without a gap.
//!
//! [`verify`] is here for receivers written in Rust and for our own tests; it compares in
//! constant time so that a forger learns nothing from how long a refusal took.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The prefix of every secret, as the spec writes them.
const SECRET_PREFIX: &str = "whsec_";
/// The signature scheme's version tag in `webhook-signature`.
const VERSION: &str = "v1";
/// Bytes of key in a new secret.
const NEW_KEY_BYTES: usize = 32;
/// The key lengths the spec allows.
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// An endpoint's signing secret, checked to be `whsec_` and the base64 of a 24–64 byte key.
/// Its `Debug` shows no key, so it can sit in structs that are logged.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret {
    text: String,
    key: Vec<u8>,
}

/// Why a text is not a signing secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a webhook secret starts with `whsec_`")]
    MissingPrefix,
    #[error("the part of a webhook secret after `whsec_` is not base64")]
    NotBase64,
    #[error("a webhook secret's key is 24 to 64 bytes, not {0}")]
    KeyLength(usize),
}

impl SigningSecret {
    /// Parses a stored or user-given secret.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text.strip_prefix(SECRET_PREFIX).ok_or(SecretError::MissingPrefix)?;
        let key = BASE64.decode(encoded).map_err(|_| SecretError::NotBase64)?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(SecretError::KeyLength(key.len()));
        }
        Ok(Self { text: text.to_owned(), key })
    }

    /// The secret as it is stored and shown (once) to the endpoint's owner.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(whsec_…)")
    }
}

impl TryFrom<&str> for SigningSecret {
    type Error = SecretError;

    fn try_from(text: &str) -> Result<Self, SecretError> {
        Self::parse(text)
    }
}

/// A fresh secret from the thread's CSPRNG (ChaCha, seeded by the operating system).
pub fn new_secret() -> SigningSecret {
    let key: [u8; NEW_KEY_BYTES] = rand::random();
    let text = format!("{SECRET_PREFIX}{}", BASE64.encode(key));
    SigningSecret { text, key: key.to_vec() }
}

/// The MAC of one delivery.
fn mac(secret: &SigningSecret, msg_id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret.key).expect("HMAC takes a key of any length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// The `webhook-signature` header value of a delivery: `v1,<base64 HMAC-SHA256>` over
/// `{msg_id}.{timestamp}.{body}`, `timestamp` being the `webhook-timestamp` (unix seconds).
pub fn sign(secret: &SigningSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mac = mac(secret, msg_id, &timestamp.to_string(), body);
    format!("{VERSION},{}", BASE64.encode(mac))
}

/// The `webhook-signature` header value of a delivery signed with each of `secrets`, in their
/// order and space-separated: during a rotation's overlap `v1,<new> v1,<old>`, which a
/// receiver that knows either secret accepts.
pub fn sign_all(secrets: &[SigningSecret], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let signatures: Vec<String> =
        secrets.iter().map(|secret| sign(secret, msg_id, timestamp, body)).collect();
    signatures.join(" ")
}

/// The three headers a signed delivery carries, as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureHeaders<'a> {
    /// `webhook-id`
    pub id: &'a str,
    /// `webhook-timestamp`
    pub timestamp: &'a str,
    /// `webhook-signature`
    pub signature: &'a str,
}

/// Why a delivery is not to be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("webhook-timestamp is not unix seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is {0} s away from now, more than the tolerance")]
    OutsideTolerance(u64),
    #[error("no v1 signature in webhook-signature matches")]
    NoMatch,
}

/// Checks a delivery: its timestamp within `tolerance` of `now` (unix seconds) either way, and
/// at least one `v1` signature in the space-separated list matching, compared in constant time.
pub fn verify(
    secret: &SigningSecret,
    headers: SignatureHeaders<'_>,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let sent: i64 = headers.timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    let skew = now.abs_diff(sent);
    if skew > tolerance.as_secs() {
        return Err(VerifyError::OutsideTolerance(skew));
    }
    let expected = mac(secret, headers.id, headers.timestamp, body);
    let matched = headers
        .signature
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == VERSION)
        .filter_map(|(_, encoded)| BASE64.decode(encoded).ok())
        .any(|candidate| bool::from(candidate.ct_eq(&expected)));
    if matched { Ok(()) } else { Err(VerifyError::NoMatch) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_secrets_parse_back_and_differ() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert_eq!(SigningSecret::parse(a.as_str()), Ok(a.clone()));
        assert_eq!(a.key.len(), NEW_KEY_BYTES);
        assert!(!format!("{a:?}").contains(&a.as_str()[6..]), "Debug must not show the key");
    }

    #[test]
    fn a_delivery_signed_with_two_secrets_verifies_with_either() {
        let (new, old) = (new_secret(), new_secret());
        let (id, now, body) = ("msg", 1_767_225_600, b"{}".as_slice());
        let header = sign_all(&[new.clone(), old.clone()], id, now, body);
        assert_eq!(header, format!("{} {}", sign(&new, id, now, body), sign(&old, id, now, body)));
        let timestamp = now.to_string();
        let headers = SignatureHeaders { id, timestamp: &timestamp, signature: &header };
        let tolerance = Duration::from_secs(60);
        for secret in [&new, &old] {
            assert_eq!(verify(secret, headers, body, now, tolerance), Ok(()));
        }
        assert_eq!(verify(&new_secret(), headers, body, now, tolerance), Err(VerifyError::NoMatch));
        assert_eq!(sign_all(std::slice::from_ref(&new), id, now, body), sign(&new, id, now, body));
    }

    #[test]
    fn malformed_secrets_are_refused() {
        assert_eq!(SigningSecret::parse("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"), Err(SecretError::MissingPrefix));
        assert_eq!(SigningSecret::parse("whsec_%%%"), Err(SecretError::NotBase64));
        assert_eq!(
            SigningSecret::parse(&format!("whsec_{}", BASE64.encode([0u8; 23]))),
            Err(SecretError::KeyLength(23))
        );
        assert_eq!(
            SigningSecret::parse(&format!("whsec_{}", BASE64.encode([0u8; 65]))),
            Err(SecretError::KeyLength(65))
        );
        assert!(SigningSecret::parse(&format!("whsec_{}", BASE64.encode([0u8; 64]))).is_ok());
    }
}
