//! The batch postconditions against changes made behind the rules' back: each check must catch
//! the kind of mistake it is there for, and let a correct batch through.

use uuid::Uuid;

use super::*;
use crate::model::Ledger;
use crate::scalar::{Scale, Timestamp, TransferId};

fn usd() -> LedgerCode {
    LedgerCode::try_from("USD").unwrap()
}

fn id(n: u128) -> AccountId {
    AccountId(Uuid::from_u128(n))
}

fn account(n: u128, flags: AccountFlags, balance: Balance) -> Account {
    Account {
        id: id(n),
        ledger: usd(),
        code: 1,
        flags,
        external_ref: None,
        metadata: None,
        balance,
        created_at: Timestamp::from_micros(0),
    }
}

fn transfer(n: u128, amount: u64, pending: bool) -> Transfer {
    Transfer {
        id: TransferId(Uuid::from_u128(0x100 + n)),
        debit_account_id: id(1),
        credit_account_id: id(2),
        amount: Amount::try_from(amount).unwrap(),
        ledger: usd(),
        code: 1,
        pending,
        status: if pending { TransferStatus::Pending } else { TransferStatus::Posted },
        pending_id: None,
        timeout_at: None,
        external_ref: None,
        metadata: None,
        created_at: Timestamp::from_micros(0),
    }
}

/// Accounts 1 and 2 on USD with empty balances.
fn two_accounts() -> State {
    let mut state = State::new();
    state.load_ledger(Ledger {
        code: usd(),
        scale: Scale::try_from(2).unwrap(),
        created_at: Timestamp::from_micros(0),
    });
    state.load_account(account(1, AccountFlags::default(), Balance::default()));
    state.load_account(account(2, AccountFlags::default(), Balance::default()));
    state
}

fn posted(debits: u64, credits: u64) -> Balance {
    Balance { debits_posted: debits, credits_posted: credits, ..Balance::default() }
}

#[test]
fn a_transfer_and_the_balances_it_moved_pass() {
    let mut state = two_accounts();
    let at = state.checkpoint();
    state.insert_transfer(transfer(1, 5, false)).unwrap();
    state.set_balance(id(1), posted(5, 0)).unwrap();
    state.set_balance(id(2), posted(0, 5)).unwrap();
    assert_eq!(check_batch(&state, at), Ok(()));
}

#[test]
fn a_debit_without_its_credit_breaks_double_entry() {
    let mut state = two_accounts();
    let at = state.checkpoint();
    state.set_balance(id(1), posted(5, 0)).unwrap();
    let broken = check_batch(&state, at).unwrap_err().to_string();
    assert!(broken.contains("debits and credits differ"), "{broken}");
}

#[test]
fn balanced_moves_without_a_transfer_are_caught_per_account() {
    let mut state = two_accounts();
    let at = state.checkpoint();
    state.set_balance(id(1), posted(5, 0)).unwrap();
    state.set_balance(id(2), posted(0, 5)).unwrap();
    let broken = check_batch(&state, at).unwrap_err().to_string();
    assert!(broken.contains("its transfers add up to [0, 0, 0, 0]"), "{broken}");
}

#[test]
fn a_transfer_whose_balances_did_not_move_is_caught() {
    let mut state = two_accounts();
    let at = state.checkpoint();
    state.insert_transfer(transfer(1, 5, false)).unwrap();
    let broken = check_batch(&state, at).unwrap_err().to_string();
    assert!(broken.contains("did not change"), "{broken}");
}

#[test]
fn a_hold_released_without_its_balances_is_caught() {
    let mut state = two_accounts();
    state.load_transfer(transfer(1, 5, true));
    let held = Balance { debits_pending: 5, ..Balance::default() };
    state.load_account(account(1, AccountFlags::default(), held));
    state.load_account(account(
        2,
        AccountFlags::default(),
        Balance { credits_pending: 5, ..Balance::default() },
    ));
    let at = state.checkpoint();
    state.set_status(transfer(1, 5, true).id, TransferStatus::Voided).unwrap();
    assert!(check_batch(&state, at).is_err(), "a void that released nothing");
    state.set_balance(id(1), Balance::default()).unwrap();
    state.set_balance(id(2), Balance::default()).unwrap();
    assert_eq!(check_batch(&state, at), Ok(()));
}

#[test]
fn only_a_pending_hold_changes_status() {
    let mut state = two_accounts();
    state.load_transfer(transfer(1, 5, false));
    assert!(state.set_status(transfer(1, 5, false).id, TransferStatus::Voided).is_err());
}

#[test]
fn a_record_is_created_once() {
    let mut state = two_accounts();
    assert!(state.insert_account(account(1, AccountFlags::default(), Balance::default())).is_err());
    state.insert_transfer(transfer(1, 5, false)).unwrap();
    assert!(state.insert_transfer(transfer(1, 5, false)).is_err());
}

#[test]
fn sound_balances_keep_their_range_and_limits() {
    let wallet = AccountFlags { debits_must_not_exceed_credits: true, ..AccountFlags::default() };
    let capped = AccountFlags { credits_must_not_exceed_debits: true, ..AccountFlags::default() };
    let free = AccountFlags::default();
    assert!(sound_balance(id(1), wallet, &posted(5, 5)).is_ok());
    assert!(sound_balance(id(1), wallet, &posted(6, 5)).is_err());
    let held = Balance { debits_pending: 1, ..posted(5, 5) };
    assert!(sound_balance(id(1), wallet, &held).is_err(), "a hold counts against the limit");
    assert!(sound_balance(id(1), capped, &posted(5, 5)).is_ok());
    assert!(sound_balance(id(1), capped, &posted(5, 6)).is_err());
    assert!(sound_balance(id(1), free, &posted(Amount::MAX, 0)).is_ok());
    assert!(sound_balance(id(1), free, &posted(Amount::MAX + 1, 0)).is_err());
}

#[test]
fn an_unsound_balance_is_never_written() {
    let mut state = two_accounts();
    assert!(state.set_balance(id(1), posted(Amount::MAX + 1, 0)).is_err());
    assert_eq!(state.account(&id(1)).unwrap().balance, Balance::default());
    assert!(state.set_balance(id(9), posted(1, 0)).is_err(), "an account never loaded");
}
