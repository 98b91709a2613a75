//! The invariants the core asserts (TIGER_STYLE): on an account before a command changes it, on
//! every balance it writes, and over each batch's changes as a whole.
//!
//! A broken invariant is never a client's fault. It means a bug in the core or the store, or a
//! record damaged at rest, so nothing of the batch may be persisted and the writer must stop
//! (DESIGN §4.3, §5): [`crate::apply`] answers [`InvariantBroken`] instead of outcomes.

use crate::Map;

use crate::model::{Account, AccountFlags, Balance, Transfer, TransferStatus};
use crate::scalar::{AccountId, Amount, LedgerCode};
use crate::state::{Checkpoint, State, Undo};

/// An invariant of the ledger found broken, saying which and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvariantBroken(String);

impl InvariantBroken {
    pub(crate) fn new(what: impl Into<String>) -> Self {
        Self(what.into())
    }
}

/// Fails with `what` unless `holds`.
pub(crate) fn require(holds: bool, what: impl FnOnce() -> String) -> Result<(), InvariantBroken> {
    if holds { Ok(()) } else { Err(InvariantBroken::new(what())) }
}

/// Whether the debits (pending and posted) of `b` stay within its posted credits.
pub(crate) fn debits_within_credits(b: &Balance) -> bool {
    u128::from(b.debits_pending) + u128::from(b.debits_posted) <= u128::from(b.credits_posted)
}

/// Whether the credits (pending and posted) of `b` stay within its posted debits.
pub(crate) fn credits_within_debits(b: &Balance) -> bool {
    u128::from(b.credits_pending) + u128::from(b.credits_posted) <= u128::from(b.debits_posted)
}

/// A balance the account may hold: every total within 0..=2^63−1 and the account's limits kept.
pub(crate) fn sound_balance(id: AccountId, flags: AccountFlags, b: &Balance) -> Result<(), InvariantBroken> {
    let totals = [b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted];
    require(totals.iter().all(|total| *total <= Amount::MAX), || {
        format!("account {id}: a balance total exceeds 2^63-1: {b:?}")
    })?;
    require(!flags.debits_must_not_exceed_credits || debits_within_credits(b), || {
        format!("account {id}: debits exceed credits under debits_must_not_exceed_credits: {b:?}")
    })?;
    require(!flags.credits_must_not_exceed_debits || credits_within_debits(b), || {
        format!("account {id}: credits exceed debits under credits_must_not_exceed_debits: {b:?}")
    })
}

/// The precondition of any change to `account`: it holds a sound balance.
pub(crate) fn sound_account(account: &Account) -> Result<(), InvariantBroken> {
    sound_balance(account.id, account.flags, &account.balance)
}

/// How much each of an account's four totals moved, signed. In `i128`, where differences and
/// sums of `u64` totals cannot overflow for any number of accounts a batch could hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Delta([i128; 4]);

impl Delta {
    const DEBITS_PENDING: usize = 0;
    const DEBITS_POSTED: usize = 1;
    const CREDITS_PENDING: usize = 2;
    const CREDITS_POSTED: usize = 3;

    fn between(before: &Balance, after: &Balance) -> Self {
        let [b, a] = [before, after].map(|x| {
            [x.debits_pending, x.debits_posted, x.credits_pending, x.credits_posted].map(i128::from)
        });
        Self([a[0] - b[0], a[1] - b[1], a[2] - b[2], a[3] - b[3]])
    }
}

/// What the batch's transfers and releases say each account's totals must have moved by, and
/// what the double entry of each ledger adds up to.
#[derive(Default)]
struct Expected {
    accounts: Map<AccountId, Delta>,
}

impl Expected {
    /// `amount` moves into the debit side's `debit_total` and the credit side's `credit_total`
    /// (negative: out of them).
    fn post(&mut self, t: &Transfer, debit_total: usize, credit_total: usize, amount: i128) {
        self.accounts.entry(t.debit_account_id).or_default().0[debit_total] += amount;
        self.accounts.entry(t.credit_account_id).or_default().0[credit_total] += amount;
    }
}

/// The postconditions of one `apply` call, over everything it changed since `at` (what an
/// atomic submission undid is no longer in the journal):
/// - every transfer it made joins two different accounts of the transfer's ledger, and a post
///   or void names a hold of the same accounts and posts at most what it held;
/// - only holds changed status, and only from pending;
/// - every changed balance moved by exactly what the batch's transfers and released holds add
///   up to, and is sound;
/// - per ledger, debits equal credits over the batch's changes, pending and posted apart.
pub(crate) fn check_batch(state: &State, at: Checkpoint) -> Result<(), InvariantBroken> {
    let mut before: Map<AccountId, Balance> = Map::default();
    let mut expected = Expected::default();
    for undo in state.journal_since(at) {
        match undo {
            Undo::Ledger(_) => {}
            Undo::Account(id) => {
                before.entry(*id).or_default();
            }
            Undo::Balance(id, balance) => {
                before.entry(*id).or_insert(*balance);
            }
            Undo::Transfer(id) => {
                let t = state.transfer(id).ok_or_else(|| lost("transfer", id))?;
                created_transfer(state, t, &mut expected)?;
            }
            Undo::Status(id, was) => {
                let hold = state.transfer(id).ok_or_else(|| lost("transfer", id))?;
                require(hold.pending && *was == TransferStatus::Pending && hold.status != *was, || {
                    format!("transfer {id}: status changed from {was:?} to {:?}", hold.status)
                })?;
                let held = i128::from(hold.amount.get());
                expected.post(hold, Delta::DEBITS_PENDING, Delta::CREDITS_PENDING, -held);
            }
        }
    }

    // Double entry first, from the balances alone: it holds whatever the transfers say.
    let mut moved: Vec<(AccountId, Delta)> = Vec::with_capacity(before.len());
    let mut sums: Map<LedgerCode, Delta> = Map::default();
    for (id, was) in &before {
        let account = state.account(id).ok_or_else(|| lost("account", id))?;
        sound_account(account)?;
        let delta = Delta::between(was, &account.balance);
        let sum = sums.entry(account.ledger).or_default();
        (0..4).for_each(|i| sum.0[i] += delta.0[i]);
        moved.push((*id, delta));
    }
    for (ledger, sum) in &sums {
        let [dp, dpo, cp, cpo] = sum.0;
        require(dp == cp && dpo == cpo, || {
            format!(
                "ledger {ledger}: debits and credits differ over the batch: pending {dp} vs {cp}, posted {dpo} vs {cpo}"
            )
        })?;
    }
    // Then every balance against the transfers that moved it.
    for (id, delta) in moved {
        let owed = expected.accounts.remove(&id).unwrap_or_default();
        require(delta == owed, || {
            format!("account {id}: its totals moved by {:?}, its transfers add up to {:?}", delta.0, owed.0)
        })?;
    }
    match expected.accounts.iter().find(|(_, owed)| **owed != Delta::default()) {
        Some((id, owed)) => Err(InvariantBroken::new(format!(
            "account {id}: its transfers add up to {:?} but its balance did not change",
            owed.0
        ))),
        None => Ok(()),
    }
}

/// Checks a transfer the batch made and records what it moved.
fn created_transfer(state: &State, t: &Transfer, expected: &mut Expected) -> Result<(), InvariantBroken> {
    let (debit, credit) = (state.account(&t.debit_account_id), state.account(&t.credit_account_id));
    require(t.debit_account_id != t.credit_account_id, || {
        format!("transfer {}: one account on both sides", t.id)
    })?;
    require(
        debit.is_some_and(|a| a.ledger == t.ledger) && credit.is_some_and(|a| a.ledger == t.ledger),
        || format!("transfer {}: an account is missing or on another ledger than {}", t.id, t.ledger),
    )?;
    let amount = i128::from(t.amount.get());
    let Some(pending_id) = t.pending_id else {
        let (debit_total, credit_total) = match t.pending {
            true => (Delta::DEBITS_PENDING, Delta::CREDITS_PENDING),
            false => (Delta::DEBITS_POSTED, Delta::CREDITS_POSTED),
        };
        expected.post(t, debit_total, credit_total, amount);
        return Ok(());
    };
    let hold = state.transfer(&pending_id).ok_or_else(|| lost("hold", &pending_id))?;
    require(
        hold.pending
            && !t.pending
            && hold.debit_account_id == t.debit_account_id
            && hold.credit_account_id == t.credit_account_id
            && t.amount <= hold.amount,
        || format!("transfer {}: not a post or void of hold {pending_id} as it stands", t.id),
    )?;
    match t.status {
        TransferStatus::Posted => expected.post(t, Delta::DEBITS_POSTED, Delta::CREDITS_POSTED, amount),
        TransferStatus::Voided => {}
        other => {
            return Err(InvariantBroken::new(format!(
                "transfer {}: a resolution with status {other:?}",
                t.id
            )));
        }
    }
    Ok(())
}

fn lost(what: &str, id: &dyn std::fmt::Display) -> InvariantBroken {
    InvariantBroken::new(format!("{what} {id} was changed by the batch but is not in its state"))
}

#[cfg(test)]
mod tests;
