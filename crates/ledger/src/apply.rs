//! The rules: how each command changes the state, or why it is refused.
//!
//! Every command checks everything before it changes anything, so a refused command leaves the
//! state as it found it; only an atomic submission needs the journal to undo earlier commands.
//! Beside the rules, which refuse a client's command, the core asserts its invariants (see
//! `invariant`): one found broken stops the whole batch instead.

use crate::command::{
    Command, NewAccount, NewLedger, NewTransfer, Outcome, Record, RejectCode, Resolution, Submission,
};
use crate::event::{Event, EventKind};
use crate::invariant::{
    InvariantBroken, check_batch, credits_within_debits, debits_within_credits, require, sound_account,
};
use crate::model::{Account, Balance, Ledger, Transfer, TransferStatus};
use crate::scalar::{Amount, Timestamp, TransferId};
use crate::state::State;

/// Why a command did not apply: a rule refused it, or the core found an invariant broken.
enum Stop {
    Rejected(RejectCode),
    Broken(InvariantBroken),
}

impl From<RejectCode> for Stop {
    fn from(code: RejectCode) -> Self {
        Stop::Rejected(code)
    }
}

impl From<InvariantBroken> for Stop {
    fn from(broken: InvariantBroken) -> Self {
        Stop::Broken(broken)
    }
}

/// A command's answer when it did not fail (created, or an idempotent replay), or why it failed.
type Applied = Result<Outcome, Stop>;

/// Applies each submission in order at time `now`, answering one outcome per command.
/// The changes accumulate in `state`; take them with [`State::take_changes`].
///
/// An error means an invariant was found broken — a bug or a damaged record, never a client's
/// doing. `state` is then half-changed: persist nothing of it, and stop writing.
pub fn apply(
    state: &mut State,
    submissions: &[Submission],
    now: Timestamp,
) -> Result<Vec<Vec<Outcome>>, InvariantBroken> {
    let start = state.checkpoint();
    let outcomes = submissions
        .iter()
        .map(|submission| apply_submission(state, submission, now))
        .collect::<Result<Vec<_>, _>>()?;
    check_batch(state, start)?;
    Ok(outcomes)
}

fn apply_submission(
    state: &mut State,
    submission: &Submission,
    now: Timestamp,
) -> Result<Vec<Outcome>, InvariantBroken> {
    let start = state.checkpoint();
    let mut outcomes = Vec::with_capacity(submission.commands.len());
    for command in &submission.commands {
        let before = state.checkpoint();
        outcomes.push(match apply_command(state, command, now) {
            Ok(outcome) => outcome,
            Err(Stop::Rejected(code)) => {
                require(state.checkpoint() == before, || {
                    format!("{command:?} was refused but changed the state")
                })?;
                Outcome::Rejected(code)
            }
            Err(Stop::Broken(broken)) => return Err(broken),
        });
    }
    let failed = outcomes.iter().any(|o| matches!(o, Outcome::Rejected(_)));
    if submission.atomic && failed {
        state.rollback(start);
        for outcome in &mut outcomes {
            if !matches!(outcome, Outcome::Rejected(_)) {
                *outcome = Outcome::Rejected(RejectCode::LinkedItemFailed);
            }
        }
    }
    state.trace_events_since(start, &submission.trace);
    Ok(outcomes)
}

fn apply_command(state: &mut State, command: &Command, now: Timestamp) -> Applied {
    match command {
        Command::CreateLedger(new) => create_ledger(state, new, now),
        Command::CreateAccount(new) => create_account(state, new, now),
        Command::CreateTransfer(new) => create_transfer(state, new, now),
        Command::PostPending(r) => resolve(state, r, TransferStatus::Posted, now),
        Command::VoidPending(r) => resolve(state, r, TransferStatus::Voided, now),
        Command::ExpirePending(id) => expire(state, *id, now),
    }
}

/// The idempotency answer for a command whose id is already taken.
fn exists(record: Record, same_fields: bool) -> Applied {
    if same_fields { Ok(Outcome::Exists(record)) } else { Err(RejectCode::ExistsWithDifferentFields.into()) }
}

fn create_ledger(state: &mut State, new: &NewLedger, now: Timestamp) -> Applied {
    if let Some(ledger) = state.ledger(&new.code) {
        return exists(Record::Ledger(ledger.clone()), ledger.scale == new.scale);
    }
    let ledger = Ledger { code: new.code, scale: new.scale, created_at: now };
    state.insert_ledger(ledger.clone())?;
    Ok(Outcome::Created(Record::Ledger(ledger)))
}

fn create_account(state: &mut State, new: &NewAccount, now: Timestamp) -> Applied {
    if let Some(account) = state.account(&new.id) {
        let same = account.ledger == new.ledger
            && account.code == new.code
            && account.flags == new.flags
            && account.external_ref == new.external_ref
            && account.metadata == new.metadata;
        return exists(Record::Account(account.clone()), same);
    }
    if state.ledger(&new.ledger).is_none() {
        return Err(RejectCode::LedgerNotFound.into());
    }
    let account = Account {
        id: new.id,
        ledger: new.ledger,
        code: new.code,
        flags: new.flags,
        external_ref: new.external_ref.clone(),
        metadata: new.metadata.clone(),
        balance: Balance::default(),
        created_at: now,
    };
    state.insert_account(account.clone())?;
    state.emit(Event::Account(EventKind::AccountCreated, account.clone()));
    Ok(Outcome::Created(Record::Account(account)))
}

fn create_transfer(state: &mut State, new: &NewTransfer, now: Timestamp) -> Applied {
    let timeout_at = new.pending.flatten().map(|seconds| now.plus_seconds(seconds));
    if let Some(t) = state.transfer(&new.id) {
        let same = t.pending_id.is_none()
            && t.debit_account_id == new.debit_account_id
            && t.credit_account_id == new.credit_account_id
            && t.amount == new.amount
            && t.ledger == new.ledger
            && t.code == new.code
            && t.pending == new.pending.is_some()
            && t.timeout_at == new.pending.flatten().map(|s| t.created_at.plus_seconds(s))
            && t.external_ref == new.external_ref
            && t.metadata == new.metadata;
        return exists(Record::Transfer(t.clone()), same);
    }
    if new.debit_account_id == new.credit_account_id {
        return Err(RejectCode::AccountsMustBeDifferent.into());
    }
    let (Some(debit), Some(credit)) =
        (state.account(&new.debit_account_id), state.account(&new.credit_account_id))
    else {
        return Err(RejectCode::AccountNotFound.into());
    };
    // The rules below judge these balances: they must be sound to begin with.
    sound_account(debit)?;
    sound_account(credit)?;
    if debit.ledger != new.ledger || credit.ledger != new.ledger {
        return Err(RejectCode::LedgerMismatch.into());
    }
    let pending = new.pending.is_some();
    let (debit_balance, credit_balance) = move_funds(debit, credit, new.amount, pending)?;

    let transfer = Transfer {
        id: new.id,
        debit_account_id: new.debit_account_id,
        credit_account_id: new.credit_account_id,
        amount: new.amount,
        ledger: new.ledger,
        code: new.code,
        pending,
        status: if pending { TransferStatus::Pending } else { TransferStatus::Posted },
        pending_id: None,
        timeout_at,
        external_ref: new.external_ref.clone(),
        metadata: new.metadata.clone(),
        created_at: now,
    };
    state.set_balance(new.debit_account_id, debit_balance)?;
    state.set_balance(new.credit_account_id, credit_balance)?;
    state.insert_transfer(transfer.clone())?;
    state.emit(Event::Transfer(EventKind::TransferCreated, transfer.clone()));
    Ok(Outcome::Created(Record::Transfer(transfer)))
}

/// The two balances after moving `amount` into the pending or the posted totals, or why not.
fn move_funds(
    debit: &Account,
    credit: &Account,
    amount: Amount,
    pending: bool,
) -> Result<(Balance, Balance), RejectCode> {
    let amount = amount.get();
    let mut d = debit.balance;
    let mut c = credit.balance;
    let (d_field, c_field) = if pending {
        (&mut d.debits_pending, &mut c.credits_pending)
    } else {
        (&mut d.debits_posted, &mut c.credits_posted)
    };
    *d_field = add(*d_field, amount)?;
    *c_field = add(*c_field, amount)?;
    if debit.flags.debits_must_not_exceed_credits && !debits_within_credits(&d) {
        return Err(RejectCode::InsufficientFunds);
    }
    if credit.flags.credits_must_not_exceed_debits && !credits_within_debits(&c) {
        return Err(RejectCode::ExceedsDebits);
    }
    Ok((d, c))
}

fn add(total: u64, amount: u64) -> Result<u64, RejectCode> {
    total.checked_add(amount).filter(|sum| *sum <= Amount::MAX).ok_or(RejectCode::Overflow)
}

/// Checks that a pending transfer can still be resolved at `now`.
fn check_pending(pending: &Transfer, now: Timestamp) -> Result<(), RejectCode> {
    if !pending.pending {
        return Err(RejectCode::PendingTransferNotPending);
    }
    match pending.status {
        TransferStatus::Posted => Err(RejectCode::PendingTransferAlreadyPosted),
        TransferStatus::Voided => Err(RejectCode::PendingTransferAlreadyVoided),
        TransferStatus::Expired => Err(RejectCode::PendingTransferExpired),
        TransferStatus::Pending if pending.timeout_at.is_some_and(|at| at <= now) => {
            Err(RejectCode::PendingTransferExpired)
        }
        TransferStatus::Pending => Ok(()),
    }
}

/// Releases a hold: takes the pending amount out of both pending totals and posts `posted` of it.
fn release(state: &mut State, pending: &Transfer, posted: u64) -> Result<(), Stop> {
    let (Some(debit), Some(credit)) =
        (state.account(&pending.debit_account_id), state.account(&pending.credit_account_id))
    else {
        return Err(RejectCode::AccountNotFound.into());
    };
    sound_account(debit)?;
    sound_account(credit)?;
    let held = pending.amount.get();
    require(posted <= held, || format!("hold {}: posting {posted} of the {held} it holds", pending.id))?;
    let mut d = debit.balance;
    let mut c = credit.balance;
    // A pending hold is part of both pending totals: less than it there is a broken invariant.
    d.debits_pending = withdraw(d.debits_pending, held, pending, "debits_pending")?;
    c.credits_pending = withdraw(c.credits_pending, held, pending, "credits_pending")?;
    d.debits_posted = add(d.debits_posted, posted)?;
    c.credits_posted = add(c.credits_posted, posted)?;
    state.set_balance(pending.debit_account_id, d)?;
    state.set_balance(pending.credit_account_id, c)?;
    Ok(())
}

/// `total − held`, where `total` must hold the hold.
fn withdraw(total: u64, held: u64, hold: &Transfer, which: &str) -> Result<u64, InvariantBroken> {
    total.checked_sub(held).ok_or_else(|| {
        InvariantBroken::new(format!("hold {}: {which} {total} is less than the {held} it holds", hold.id))
    })
}

/// Posts (all or part of) or voids a pending transfer, recording the resolution as a transfer.
fn resolve(state: &mut State, r: &Resolution, outcome: TransferStatus, now: Timestamp) -> Applied {
    if let Some(t) = state.transfer(&r.id) {
        return exists(Record::Transfer(t.clone()), same_resolution(state, r, outcome, t));
    }
    let Some(pending) = state.transfer(&r.pending_id).cloned() else {
        return Err(RejectCode::PendingTransferNotFound.into());
    };
    check_pending(&pending, now)?;
    let amount = match (outcome, r.amount) {
        (TransferStatus::Posted, Some(a)) if a > pending.amount => {
            return Err(RejectCode::AmountExceedsPendingAmount.into());
        }
        (TransferStatus::Posted, Some(a)) => a,
        _ => pending.amount,
    };
    let posted = if outcome == TransferStatus::Posted { amount.get() } else { 0 };
    release(state, &pending, posted)?;

    let resolution = Transfer {
        id: r.id,
        debit_account_id: pending.debit_account_id,
        credit_account_id: pending.credit_account_id,
        amount,
        ledger: pending.ledger,
        code: r.code.unwrap_or(pending.code),
        pending: false,
        status: outcome,
        pending_id: Some(pending.id),
        timeout_at: None,
        external_ref: r.external_ref.clone(),
        metadata: r.metadata.clone(),
        created_at: now,
    };
    state.insert_transfer(resolution.clone())?;
    state.set_status(pending.id, outcome)?;
    state.emit(Event::Transfer(EventKind::TransferCreated, resolution.clone()));
    let kind =
        if outcome == TransferStatus::Posted { EventKind::TransferPosted } else { EventKind::TransferVoided };
    state.emit(Event::Transfer(kind, Transfer { status: outcome, ..pending }));
    Ok(Outcome::Created(Record::Transfer(resolution)))
}

/// Whether a post or void asks for what the recorded resolution `t` has: every field equal once the
/// omitted ones are filled in from the hold as when it applied (a post of no amount posts all of
/// it, a void always releases all of it, no code takes the hold's). Were the hold not loaded, an
/// omitted field is taken as matching.
fn same_resolution(state: &State, r: &Resolution, outcome: TransferStatus, t: &Transfer) -> bool {
    let hold = state.transfer(&r.pending_id);
    let amount = match outcome {
        TransferStatus::Posted => r.amount.or(hold.map(|h| h.amount)),
        _ => hold.map(|h| h.amount),
    };
    let code = r.code.or(hold.map(|h| h.code));
    t.pending_id == Some(r.pending_id)
        && t.status == outcome
        && amount.is_none_or(|a| a == t.amount)
        && code.is_none_or(|c| c == t.code)
        && t.external_ref == r.external_ref
        && t.metadata == r.metadata
}

/// Releases a hold whose timeout has passed. Refused (and harmless) if it was resolved meanwhile.
fn expire(state: &mut State, id: TransferId, now: Timestamp) -> Applied {
    let Some(pending) = state.transfer(&id).cloned() else {
        return Err(RejectCode::PendingTransferNotFound.into());
    };
    match check_pending(&pending, now) {
        Err(RejectCode::PendingTransferExpired) if pending.status == TransferStatus::Pending => {}
        Err(other) => return Err(other.into()),
        Ok(()) => return Err(RejectCode::PendingTransferNotPending.into()),
    }
    release(state, &pending, 0)?;
    state.set_status(id, TransferStatus::Expired)?;
    let expired = Transfer { status: TransferStatus::Expired, ..pending };
    state.emit(Event::Transfer(EventKind::TransferExpired, expired.clone()));
    Ok(Outcome::Created(Record::Transfer(expired)))
}
