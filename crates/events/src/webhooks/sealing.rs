//! Signing secrets at rest: sealed with XChaCha20-Poly1305 under a key the store never sees.
//!
//! A webhook's signing secret has to be kept in a form that can sign (unlike an API token,
//! which is kept as a hash), so whoever reads the database — a backup, a replica, an operator
//! with SQL access — could forge deliveries that every receiver trusts. Sealed, the database
//! holds `whenc1.<key id>.<base64 of nonce ‖ ciphertext ‖ tag>`, and the key lives in the
//! configuration or a key file (DESIGN.md §5, "secrets encrypted at rest (AEAD, rotatable key)").
//!
//! - **Key rotation**: [`SecretKeys`] is an ordered list of keys with ids. The first seals;
//!   every one of them opens, chosen by the id in the sealed text. A new key is put first, the
//!   old one kept until [`reseal`](super::reseal) has sealed every secret anew.
//! - **Binding**: the endpoint's id is the associated data, so a sealed secret copied onto
//!   another endpoint's row does not open there.
//! - **Nonces**: 24 random bytes per seal. XChaCha's nonce is long enough that random ones do
//!   not collide in any number of seals a key will see.
//! - **Rows from before sealing** hold the secret itself (`whsec_…`); they still open, so a
//!   delivery never fails for it, and `reseal` seals them at start.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::signature::SigningSecret;

/// What a sealed secret starts with; the version of this format.
const SEALED_PREFIX: &str = "whenc1";
/// What a secret kept in clear (before sealing existed) starts with.
const CLEAR_PREFIX: &str = "whsec_";
const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;
/// The longest key id: ids are names like `2026-12`, not data.
const MAX_ID_LEN: usize = 32;
/// Domain separation for the associated data.
const AAD_CONTEXT: &[u8] = b"coffer.webhook.secret.v1:";

/// One key: its id (kept in every secret it seals) and 32 bytes, wiped from memory on drop.
pub struct SecretKey {
    id: String,
    key: Zeroizing<[u8; KEY_BYTES]>,
}

/// Why a key, a key list or a sealed secret is no good. No variant holds key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("a webhook secret key is `<id>:<base64 of 32 bytes>`, its id 1–32 of [A-Za-z0-9._-]")]
    BadKey,
    #[error("no webhook secret key is configured")]
    NoKeys,
    #[error("the webhook secret key id {0:?} is given twice")]
    DuplicateId(String),
    #[error("the stored webhook secret is neither sealed nor a `whsec_` secret")]
    Malformed,
    #[error("the stored webhook secret was sealed with key {0:?}, which is not configured")]
    UnknownKey(String),
    #[error("the stored webhook secret does not open with key {0:?}: another endpoint's, or altered")]
    Unopenable(String),
}

impl SecretKey {
    /// Parses `<id>:<base64 of 32 bytes>`, the form of the setting and of each key file line.
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let (id, encoded) = text.trim().split_once(':').ok_or(SealError::BadKey)?;
        let id_ok = (1..=MAX_ID_LEN).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        let bytes = Zeroizing::new(BASE64.decode(encoded).map_err(|_| SealError::BadKey)?);
        let key: [u8; KEY_BYTES] = bytes.as_slice().try_into().map_err(|_| SealError::BadKey)?;
        if !id_ok {
            return Err(SealError::BadKey);
        }
        Ok(Self { id: id.to_owned(), key: Zeroizing::new(key) })
    }

    /// A fresh key from the operating system's randomness.
    pub fn generate(id: &str) -> Result<Self, SealError> {
        let key = Zeroizing::new(rand::random::<[u8; KEY_BYTES]>());
        Self::parse(&format!("{id}:{}", BASE64.encode(*key)))
    }

    /// `<id>:<base64>`: what [`parse`](Self::parse) reads, for writing a key file.
    pub fn encoded(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{}:{}", self.id, BASE64.encode(*self.key)))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(self.key.as_slice()))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.id)
    }
}

/// The keys secrets are sealed with: the first seals, all open.
#[derive(Debug)]
pub struct SecretKeys {
    keys: Vec<SecretKey>,
}

impl SecretKeys {
    /// At least one key, each id once.
    pub fn new(keys: Vec<SecretKey>) -> Result<Self, SealError> {
        if keys.is_empty() {
            return Err(SealError::NoKeys);
        }
        for (i, key) in keys.iter().enumerate() {
            if keys[..i].iter().any(|earlier| earlier.id == key.id) {
                return Err(SealError::DuplicateId(key.id.clone()));
            }
        }
        Ok(Self { keys })
    }

    /// The keys of a key file: one `<id>:<base64>` a line, the sealing key first; blank lines
    /// and `#` comments are skipped.
    pub fn parse_file(text: &str) -> Result<Self, SealError> {
        let lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
        Self::new(lines.map(SecretKey::parse).collect::<Result<_, _>>()?)
    }

    /// One key made now, held only in memory: for tests and embedded routers, whose sealed
    /// secrets do not outlive the process.
    pub fn ephemeral() -> Self {
        Self { keys: vec![SecretKey::generate("ephemeral").expect("a valid id")] }
    }

    /// The id of the key that seals.
    pub fn sealing_id(&self) -> &str {
        &self.keys[0].id
    }

    /// `secret` sealed for the endpoint `endpoint` under the first key.
    pub fn seal(&self, endpoint: Uuid, secret: &SigningSecret) -> String {
        let key = &self.keys[0];
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let sealed = key
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload { msg: secret.as_str().as_bytes(), aad: &aad(endpoint) },
            )
            .expect("XChaCha20-Poly1305 seals any message shorter than 256 GiB");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        format!("{SEALED_PREFIX}.{}.{}", key.id, BASE64URL.encode(blob))
    }

    /// The secret in `stored` (sealed, or in clear from before sealing) of endpoint `endpoint`.
    pub fn open(&self, endpoint: Uuid, stored: &str) -> Result<SigningSecret, SealError> {
        if stored.starts_with(CLEAR_PREFIX) {
            return SigningSecret::parse(stored).map_err(|_| SealError::Malformed);
        }
        let (id, encoded) = split_sealed(stored).ok_or(SealError::Malformed)?;
        let key =
            self.keys.iter().find(|k| k.id == id).ok_or_else(|| SealError::UnknownKey(id.to_owned()))?;
        let blob = BASE64URL.decode(encoded).map_err(|_| SealError::Malformed)?;
        if blob.len() < NONCE_BYTES {
            return Err(SealError::Malformed);
        }
        let (nonce, sealed) = blob.split_at(NONCE_BYTES);
        let clear = Zeroizing::new(
            key.cipher()
                .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: &aad(endpoint) })
                .map_err(|_| SealError::Unopenable(id.to_owned()))?,
        );
        let text = std::str::from_utf8(&clear).map_err(|_| SealError::Malformed)?;
        SigningSecret::parse(text).map_err(|_| SealError::Malformed)
    }

    /// Whether `stored` is sealed under the sealing key already; otherwise it is in clear or
    /// under an older key, and [`reseal`](super::reseal) seals it anew.
    pub fn is_current(&self, stored: &str) -> bool {
        split_sealed(stored).is_some_and(|(id, _)| id == self.sealing_id())
    }
}

/// The key id and the encoded blob of a sealed secret.
fn split_sealed(stored: &str) -> Option<(&str, &str)> {
    let rest = stored.strip_prefix(SEALED_PREFIX)?.strip_prefix('.')?;
    rest.split_once('.')
}

fn aad(endpoint: Uuid) -> Vec<u8> {
    [AAD_CONTEXT, endpoint.as_bytes().as_slice()].concat()
}

#[cfg(test)]
mod tests {
    use super::super::signature::new_secret;
    use super::*;

    fn keys(ids: &[&str]) -> Vec<SecretKey> {
        ids.iter().map(|id| SecretKey::generate(id).unwrap()).collect()
    }

    fn copy(key: &SecretKey) -> SecretKey {
        SecretKey::parse(&key.encoded()).unwrap()
    }

    #[test]
    fn a_sealed_secret_opens_only_for_its_endpoint_and_hides_the_secret() {
        let ring = SecretKeys::new(keys(&["k1"])).unwrap();
        let (endpoint, secret) = (Uuid::new_v4(), new_secret());
        let sealed = ring.seal(endpoint, &secret);
        assert!(sealed.starts_with("whenc1.k1."), "{sealed}");
        assert!(!sealed.contains(&secret.as_str()[6..]), "the secret's base64 is not in the sealed text");
        assert_ne!(ring.seal(endpoint, &secret), sealed, "a fresh nonce every time");
        assert_eq!(ring.open(endpoint, &sealed), Ok(secret));
        assert_eq!(ring.open(Uuid::new_v4(), &sealed), Err(SealError::Unopenable("k1".into())));
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        assert!(ring.open(endpoint, std::str::from_utf8(&altered).unwrap()).is_err());
    }

    #[test]
    fn after_a_key_rotation_the_new_key_seals_and_the_old_one_still_opens() {
        let [old, new]: [SecretKey; 2] = keys(&["old", "new"]).try_into().unwrap();
        let before = SecretKeys::new(vec![copy(&old)]).unwrap();
        let (endpoint, secret) = (Uuid::new_v4(), new_secret());
        let sealed_before = before.seal(endpoint, &secret);

        let rotated = SecretKeys::new(vec![copy(&new), copy(&old)]).unwrap();
        assert_eq!(rotated.open(endpoint, &sealed_before), Ok(secret.clone()));
        assert!(!rotated.is_current(&sealed_before), "to be sealed anew");
        let sealed_after = rotated.seal(endpoint, &secret);
        assert!(rotated.is_current(&sealed_after) && sealed_after.starts_with("whenc1.new."));

        let new_only = SecretKeys::new(vec![new]).unwrap();
        assert_eq!(new_only.open(endpoint, &sealed_after), Ok(secret));
        assert_eq!(new_only.open(endpoint, &sealed_before), Err(SealError::UnknownKey("old".into())));
    }

    #[test]
    fn a_secret_kept_in_clear_still_opens_and_is_not_current() {
        let ring = SecretKeys::ephemeral();
        let secret = new_secret();
        assert_eq!(ring.open(Uuid::new_v4(), secret.as_str()), Ok(secret.clone()));
        assert!(!ring.is_current(secret.as_str()));
        assert_eq!(ring.open(Uuid::new_v4(), "whenc1.x"), Err(SealError::Malformed));
        assert_eq!(ring.open(Uuid::new_v4(), "hunter2"), Err(SealError::Malformed));
    }

    #[test]
    fn keys_and_key_files_parse_and_bad_ones_are_refused() {
        let text = format!(
            "# newest first\n{}\n\n{}\n",
            SecretKey::generate("2026-12").unwrap().encoded().as_str(),
            SecretKey::generate("2026-06").unwrap().encoded().as_str()
        );
        let ring = SecretKeys::parse_file(&text).unwrap();
        assert_eq!(ring.sealing_id(), "2026-12");
        assert!(!format!("{ring:?}").contains(text.lines().nth(1).unwrap().split(':').nth(1).unwrap()));
        let short = format!("k:{}", BASE64.encode([1u8; 16]));
        for bad in ["k", "k:%%%", short.as_str(), &format!("bad id:{}", BASE64.encode([1u8; 32]))] {
            assert_eq!(SecretKey::parse(bad).unwrap_err(), SealError::BadKey, "{bad}");
        }
        assert_eq!(SecretKeys::parse_file("# nothing\n").unwrap_err(), SealError::NoKeys);
        assert_eq!(SecretKeys::new(keys(&["a", "a"])).unwrap_err(), SealError::DuplicateId("a".into()));
    }
}
