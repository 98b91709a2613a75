//! How the store fails, and what each failure says about the write: certainly not applied, of
//! unknown outcome, or fatal — a damaged row or a broken invariant, after which this process
//! must stop writing (DESIGN §4.2, §4.3, §5).

use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// The error beneath a [`StoreError`]: the driver's, the file system's, the ledger core's.
///
/// Drivers (tokio-postgres, rusqlite, deadpool) print their cause inside their own message and
/// also return it as their source, so a chain of causes would say it twice. A `Cause` shows its
/// error's message without the part its source says, and hands the source on.
#[derive(Clone)]
pub struct Cause(Arc<dyn Error + Send + Sync + 'static>);

impl Cause {
    pub fn new(error: impl Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(error))
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.to_string();
        let inner = self.0.source().map(|source| source.to_string()).unwrap_or_default();
        let own = match inner.is_empty() {
            true => None,
            false => text.strip_suffix(&inner).map(|own| own.trim_end_matches([':', ',', ' '])),
        };
        f.write_str(own.filter(|own| !own.is_empty()).unwrap_or(&text))
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

/// A storage failure, saying whether the write may have happened and whether the process may go
/// on. Each kind but `Overloaded` carries the store's own words (`context`) and, when there is
/// one, the error beneath (`source`), so `{:#}` and error reports show the whole chain.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The sequencer's queue is full; the command was certainly not applied. Retry later.
    #[error("the write queue is full")]
    Overloaded,
    /// The store could not be reached or refused the work; certainly not applied.
    #[error("store unavailable: {context}")]
    Unavailable {
        context: Cow<'static, str>,
        #[source]
        source: Option<Cause>,
    },
    /// The store cannot hold a value of the request (PostgreSQL refuses U+0000 in text, a value
    /// out of a column's range, …): the request's own fault, certainly not applied. The API
    /// refuses such input when it parses a request; this is the second line of defence, and the
    /// sequencer isolates the guilty submission of a group commit that fails with it.
    #[error("the store cannot hold this request's data: {context}")]
    Invalid {
        context: Cow<'static, str>,
        #[source]
        source: Option<Cause>,
    },
    /// The commit was sent but its result never came back: it may or may not have applied.
    /// The client settles it by retrying with the same id or Idempotency-Key.
    #[error("outcome unknown: {context}")]
    OutcomeUnknown {
        context: Cow<'static, str>,
        #[source]
        source: Option<Cause>,
    },
    /// Fatal: a stored row does not decode into a valid record. Nothing more is written; the
    /// process must stop and be looked at (restored, repaired), never carry on around it.
    #[error("a stored row is damaged: {context}")]
    Corrupt {
        context: Cow<'static, str>,
        #[source]
        source: Option<Cause>,
    },
    /// Fatal: the ledger core found one of its invariants broken (or failed outright) while
    /// applying a batch, so nothing of the batch was written and nothing more will be.
    #[error("a ledger invariant is broken: {context}")]
    InvariantBroken {
        context: Cow<'static, str>,
        #[source]
        source: Option<Cause>,
    },
}

impl StoreError {
    pub fn unavailable(context: impl Into<Cow<'static, str>>) -> Self {
        Self::Unavailable { context: context.into(), source: None }
    }

    pub fn invalid(context: impl Into<Cow<'static, str>>) -> Self {
        Self::Invalid { context: context.into(), source: None }
    }

    pub fn outcome_unknown(context: impl Into<Cow<'static, str>>) -> Self {
        Self::OutcomeUnknown { context: context.into(), source: None }
    }

    pub fn corrupt(context: impl Into<Cow<'static, str>>) -> Self {
        Self::Corrupt { context: context.into(), source: None }
    }

    pub fn invariant_broken(context: impl Into<Cow<'static, str>>) -> Self {
        Self::InvariantBroken { context: context.into(), source: None }
    }

    /// The same error, caused by `error` (`Overloaded` has no cause and stays as it is).
    pub fn because(mut self, error: impl Error + Send + Sync + 'static) -> Self {
        match &mut self {
            Self::Overloaded => {}
            Self::Unavailable { source, .. }
            | Self::Invalid { source, .. }
            | Self::OutcomeUnknown { source, .. }
            | Self::Corrupt { source, .. }
            | Self::InvariantBroken { source, .. } => *source = Some(Cause::new(error)),
        }
        self
    }

    /// Whether this error stops the store for good: a damaged row or a broken invariant. The
    /// process should end (its supervisor restarts it) rather than answer "try again".
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Corrupt { .. } | Self::InvariantBroken { .. })
    }

    /// The store's own words, without the kind of error or its cause.
    pub fn context(&self) -> &str {
        match self {
            Self::Overloaded => "the write queue is full",
            Self::Unavailable { context, .. }
            | Self::Invalid { context, .. }
            | Self::OutcomeUnknown { context, .. }
            | Self::Corrupt { context, .. }
            | Self::InvariantBroken { context, .. } => context,
        }
    }
}

impl From<coffer_ledger::InvariantBroken> for StoreError {
    fn from(broken: coffer_ledger::InvariantBroken) -> Self {
        Self::invariant_broken("the ledger core stopped a batch").because(broken)
    }
}

/// `error` and each of its causes on one line, `: `-separated, leaving out a cause whose words
/// the line already holds: what a log line or the process's last words should say.
pub fn report(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let said = inner.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("driver failed: {0}")]
    struct Driver(#[source] std::io::Error);

    #[test]
    fn a_chain_says_each_cause_once() {
        let io = std::io::Error::other("disk full");
        let err = StoreError::unavailable("cannot write").because(Driver(io));
        assert_eq!(err.to_string(), "store unavailable: cannot write");
        let source = err.source().expect("the cause is the source");
        assert_eq!(source.to_string(), "driver failed", "the driver's own words, without its cause");
        assert_eq!(source.source().expect("and its cause after it").to_string(), "disk full");
        assert_eq!(report(&err), "store unavailable: cannot write: driver failed: disk full");
    }

    #[test]
    fn only_damage_and_broken_invariants_are_fatal() {
        assert!(StoreError::corrupt("x").is_fatal());
        assert!(StoreError::invariant_broken("y").is_fatal());
        for err in [
            StoreError::Overloaded,
            StoreError::unavailable("a"),
            StoreError::invalid("b"),
            StoreError::outcome_unknown("c"),
        ] {
            assert!(!err.is_fatal(), "{err}");
        }
    }
}
