//! The ledger core as both backends run it: `coffer_ledger::apply`, with an invariant it finds
//! broken turned into the fatal [`StoreError::InvariantBroken`].
//!
//! With the `fault-injection` feature — which only test builds enable — it can also break an
//! invariant on purpose (`store.test_break_invariant`), so that tests can watch a broken
//! invariant stop the server end to end. A build without the feature has neither the code nor
//! the setting: its configuration refuses `test_break_invariant` as an unknown key.

use coffer_ledger::{Outcome, State, Submission, Timestamp};

use crate::{StoreConfig, StoreResult};

/// How a backend runs the core.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Core {
    /// Hand the core every account a batch loads overdrawn, as a bug in loading would.
    #[cfg(feature = "fault-injection")]
    break_invariant: bool,
}

impl Core {
    pub fn new(config: &StoreConfig) -> Self {
        #[cfg(feature = "fault-injection")]
        if config.test_break_invariant {
            tracing::warn!(
                "store.test_break_invariant is on: every batch that loads an account will stop the store"
            );
            return Self { break_invariant: true };
        }
        let _ = config;
        Self::default()
    }

    /// Applies `submissions` to `state` at `now`; a broken invariant is a fatal error, and then
    /// nothing of `state` may be written.
    pub fn apply(
        &self,
        state: &mut State,
        submissions: &[Submission],
        now: Timestamp,
    ) -> StoreResult<Vec<Vec<Outcome>>> {
        #[cfg(feature = "fault-injection")]
        if self.break_invariant {
            overdraw(state);
        }
        Ok(coffer_ledger::apply(state, submissions, now)?)
    }
}

/// Gives every loaded account a balance that breaks its own limit: one unit of debits, no
/// credits, under `debits_must_not_exceed_credits`.
#[cfg(feature = "fault-injection")]
fn overdraw(state: &mut State) {
    use coffer_ledger::{Account, AccountFlags, Balance};
    let overdrawn: Vec<Account> = state
        .accounts()
        .map(|account| Account {
            flags: AccountFlags { debits_must_not_exceed_credits: true, ..account.flags },
            balance: Balance { debits_posted: 1, ..Balance::default() },
            ..account.clone()
        })
        .collect();
    overdrawn.into_iter().for_each(|account| state.load_account(account));
}
