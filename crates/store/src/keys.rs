//! API keys as stored: never the token itself, only its SHA-256; and where keys are looked up
//! ([`KeyDirectory`]), which the api replicas and the gateway share.

use async_trait::async_trait;
use coffer_ledger::Timestamp;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::StoreResult;

/// Longest token accepted; ours are 79 characters.
const MAX_TOKEN_LEN: usize = 512;

/// What every token Coffer issues starts with, so that a leaked one is recognised by secret
/// scanners and by people.
pub const TOKEN_PREFIX: &str = "coffer_";
/// Hex digits of randomness after the prefix: 256 bits.
const TOKEN_RANDOM_HEX: usize = 64;
/// Hex digits of the CRC-32 checksum that ends an issued token.
const TOKEN_CHECKSUM_HEX: usize = 8;

/// A new API token: `coffer_`, 256 random bits and a CRC-32 of them, all in lowercase hex (79
/// characters, safe in URLs and headers). The checksum lets a server refuse a mistyped, truncated
/// or made-up token without asking the store: it proves nothing about the token's validity, only
/// that the store is worth asking.
pub fn issue_token() -> String {
    let random: [u8; 32] = rand::random();
    let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let checksum = crc32fast::hash(random.as_bytes());
    format!("{TOKEN_PREFIX}{random}{checksum:08x}")
}

/// What a presented token can be, judged from its text alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Issued by Coffer, checksum intact: the store is asked.
    Issued,
    /// Issued by Coffer before tokens carried a checksum (`coffer_` and 64 hex digits): asked
    /// only when it is a bare token's (`KeyCache::may_exist`).
    Legacy,
    /// Not of Coffer's making: only a bootstrap token an operator chose can be one. Asked only
    /// when it is a bare token's.
    Custom,
    /// Claims to be Coffer's (the prefix) but is not of its shape or its checksum is wrong:
    /// refused without asking the store.
    Forged,
}

impl TokenKind {
    pub fn of(token: &str) -> Self {
        let Some(body) = token.strip_prefix(TOKEN_PREFIX) else { return Self::Custom };
        let hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex(body) {
            return Self::Forged;
        }
        match body.len() {
            TOKEN_RANDOM_HEX => Self::Legacy,
            n if n == TOKEN_RANDOM_HEX + TOKEN_CHECKSUM_HEX => {
                let (random, checksum) = body.split_at(TOKEN_RANDOM_HEX);
                let expected = format!("{:08x}", crc32fast::hash(random.as_bytes()));
                if checksum == expected { Self::Issued } else { Self::Forged }
            }
            _ => Self::Forged,
        }
    }

    /// Whether a token of this kind may belong to a key, so that the store is worth asking.
    pub fn may_exist(self) -> bool {
        self != Self::Forged
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub Uuid);

/// What a key may do. `Admin` implies every other scope and `Write` implies `Read`; `Audit`
/// (reading the audit trail) stands apart from reads and writes, so an auditor's key can be
/// given the trail without the ledger or the ledger without the trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
    Admin,
    Audit,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
            Self::Audit => "audit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "read" => Self::Read,
            "write" => Self::Write,
            "admin" => Self::Admin,
            "audit" => Self::Audit,
            _ => return None,
        })
    }

    /// Whether a key holding this scope may act with `needed`.
    pub fn grants(self, needed: Scope) -> bool {
        match self {
            Self::Admin => true,
            Self::Write => matches!(needed, Self::Read | Self::Write),
            Self::Read => needed == Self::Read,
            Self::Audit => needed == Self::Audit,
        }
    }
}

/// SHA-256 of a token. Tokens are 256-bit random strings, so a fast hash is as safe as a slow one
/// and lets every request be authenticated without a password-hashing cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }
}

/// Whether `token` can be sent in an Authorization header: 1 to 512 visible ASCII characters.
pub fn is_valid_token(token: &str) -> bool {
    (1..=MAX_TOKEN_LEN).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_graphic())
}

/// The token of an `Authorization: Bearer <token>` value (scheme in any case), if it is one.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ').unwrap_or((authorization, ""));
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && is_valid_token(token)).then_some(token)
}

/// Where API keys are looked up by token. Every [`Store`](crate::Store) is one; so is the key
/// table alone ([`crate::sqlite_key_directory`], [`crate::postgres_key_directory`]), which is
/// what the gateway opens to check tokens without running a store.
#[async_trait]
pub trait KeyDirectory: Send + Sync + 'static {
    /// The key (revoked or not) whose token hashes to `hash`.
    async fn key_by_token(&self, hash: TokenHash) -> StoreResult<Option<ApiKey>>;

    /// The token hashes of the unrevoked keys whose token carries no checksum (a bootstrap token
    /// an operator chose, or one issued before tokens had a checksum): the only keys a token
    /// without a valid checksum can belong to.
    async fn bare_token_hashes(&self) -> StoreResult<Vec<TokenHash>>;
}

/// Key writes and the full key list. Administrative requests change keys through
/// [`AuditTrail::administer`](crate::AuditTrail::administer), which records them in the same
/// transaction; these are for bootstrapping, the CLI's offline paths and tests.
#[async_trait]
pub trait KeyAdmin: Send + Sync {
    async fn create_key(&self, key: NewApiKey) -> StoreResult<ApiKey>;
    /// Creates `key` only when the store holds no key at all; answers whether it did.
    async fn bootstrap_key(&self, key: NewApiKey) -> StoreResult<bool>;
    async fn keys(&self) -> StoreResult<Vec<ApiKey>>;
    /// Revokes a key at once; answers false when there is no such key.
    async fn revoke_key(&self, id: KeyId) -> StoreResult<bool>;
    /// Makes a key expire at `at` (or sooner, if it already would): the end of a rotation's
    /// overlap. Answers the key as it is now, `None` when there is no such key.
    async fn expire_key(&self, id: KeyId, at: Timestamp) -> StoreResult<Option<ApiKey>>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    pub id: KeyId,
    pub name: Option<String>,
    pub scopes: Vec<Scope>,
    /// Requests per second this key may make; `None` takes the server's default.
    pub rate_limit_per_second: Option<u32>,
    /// When the key stops working by itself; `None`: never.
    pub expires_at: Option<Timestamp>,
    pub token_hash: TokenHash,
    /// The token carries no checksum: an operator's own ([`TokenKind::Custom`], only a bootstrap
    /// token can be). Such keys are few, and servers hold their hashes in memory so that any
    /// other token without a checksum is refused without a look-up
    /// ([`KeyDirectory::bare_token_hashes`]).
    pub bare_token: bool,
}

impl NewApiKey {
    /// The key as stored at `created_at`, without its token hash.
    pub(crate) fn stored(self, created_at: Timestamp) -> ApiKey {
        ApiKey {
            id: self.id,
            name: self.name,
            scopes: self.scopes,
            rate_limit_per_second: self.rate_limit_per_second,
            created_at,
            revoked_at: None,
            expires_at: self.expires_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: KeyId,
    pub name: Option<String>,
    pub scopes: Vec<Scope>,
    pub rate_limit_per_second: Option<u32>,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
}

impl ApiKey {
    /// Whether this key may act with `needed`: an unrevoked key holding a scope that grants it.
    pub fn allows(&self, needed: Scope) -> bool {
        self.revoked_at.is_none() && self.scopes.iter().any(|s| s.grants(needed))
    }

    /// Whether the key works at `now`: neither revoked nor expired.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| now < at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        for bad in ["Bearer", "Bearer ", "Basic abc", "abc", "Bearer a b", "Bearer \u{e9}"] {
            assert_eq!(bearer_token(bad), None, "{bad}");
        }
        assert!(!is_valid_token(&"a".repeat(513)));
    }

    #[test]
    fn issued_tokens_carry_a_checksum_that_refuses_any_change() {
        let token = issue_token();
        assert_eq!(token.len(), 79);
        assert!(is_valid_token(&token));
        assert_eq!(TokenKind::of(&token), TokenKind::Issued);
        // Every single-character change is caught by the checksum (CRC-32 detects them all).
        for i in TOKEN_PREFIX.len()..token.len() {
            let mut changed = token.clone().into_bytes();
            changed[i] = if changed[i] == b'0' { b'1' } else { b'0' };
            assert_eq!(TokenKind::of(std::str::from_utf8(&changed).unwrap()), TokenKind::Forged, "{i}");
        }
        assert_eq!(TokenKind::of(&token[..78]), TokenKind::Forged);
        assert_eq!(TokenKind::of(&token.to_uppercase().replace("COFFER_", "coffer_")), TokenKind::Forged);
        assert_eq!(TokenKind::of(&token[..71]), TokenKind::Legacy);
        assert_eq!(TokenKind::of("coffer_"), TokenKind::Forged);
        assert_eq!(TokenKind::of("an-operators-own-bootstrap-token"), TokenKind::Custom);
        assert_ne!(issue_token(), token);
    }

    #[test]
    fn admin_grants_everything_and_audit_only_itself() {
        use Scope::*;
        let all = [Read, Write, Admin, Audit];
        let granted = |scope: Scope| all.into_iter().filter(|n| scope.grants(*n)).collect::<Vec<_>>();
        assert_eq!(granted(Admin), all);
        assert_eq!(granted(Write), [Read, Write]);
        assert_eq!(granted(Read), [Read]);
        assert_eq!(granted(Audit), [Audit]);
        for scope in all {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
    }

    #[test]
    fn tokens_are_known_by_their_sha256() {
        assert_eq!(TokenHash::of("a"), TokenHash::of("a"));
        assert_ne!(TokenHash::of("a"), TokenHash::of("b"));
    }
}
