//! One focused test per rule of the ledger core: each refusal code on its own path, the edges of
//! the balance constraints and of the timeouts, idempotent replays, atomic submissions, and the
//! regressions the property tests found.

use coffer_ledger::{
    AccountFlags, AccountId, Amount, Balance, Changes, Command, ExternalRef, LedgerCode, Metadata,
    NewAccount, NewLedger, NewTransfer, Outcome, Record, RejectCode, Resolution, Scale, State, Submission,
    Timestamp, Transfer, TransferId, TransferStatus, apply,
};
use uuid::Uuid;

const MAX: u64 = Amount::MAX;
const START_US: i64 = 1_700_000_000_000_000;

/// Plain USD accounts.
const A: u128 = 1;
const B: u128 = 2;
const D: u128 = 6;
/// A USD wallet: debits_must_not_exceed_credits.
const W: u128 = 3;
/// A USD account with credits_must_not_exceed_debits.
const C: u128 = 4;
/// A plain EUR account.
const E: u128 = 5;
/// Never created.
const MISSING: u128 = 99;

fn usd() -> LedgerCode {
    LedgerCode::try_from("USD").unwrap()
}

fn eur() -> LedgerCode {
    LedgerCode::try_from("EUR").unwrap()
}

fn acc(i: u128) -> AccountId {
    AccountId(Uuid::from_u128(i))
}

fn tid(i: u128) -> TransferId {
    TransferId(Uuid::from_u128(0x1000 + i))
}

fn amount(v: u64) -> Amount {
    Amount::try_from(v).unwrap()
}

fn new_ledger(code: LedgerCode, scale: u64) -> Command {
    Command::CreateLedger(NewLedger { code, scale: Scale::try_from(scale).unwrap() })
}

fn new_account(id: u128, ledger: LedgerCode, debits_limited: bool, credits_limited: bool) -> NewAccount {
    NewAccount {
        id: acc(id),
        ledger,
        code: 1,
        flags: AccountFlags {
            debits_must_not_exceed_credits: debits_limited,
            credits_must_not_exceed_debits: credits_limited,
        },
        external_ref: None,
        metadata: None,
    }
}

fn transfer(id: u128, debit: u128, credit: u128, value: u64) -> NewTransfer {
    NewTransfer {
        id: tid(id),
        debit_account_id: acc(debit),
        credit_account_id: acc(credit),
        amount: amount(value),
        ledger: usd(),
        code: 7,
        pending: None,
        external_ref: None,
        metadata: None,
    }
}

fn hold(id: u128, debit: u128, credit: u128, value: u64, timeout_seconds: Option<u32>) -> NewTransfer {
    NewTransfer { pending: Some(timeout_seconds), ..transfer(id, debit, credit, value) }
}

fn resolution(id: u128, pending: u128, value: Option<u64>) -> Resolution {
    Resolution {
        id: tid(id),
        pending_id: tid(pending),
        amount: value.map(amount),
        code: None,
        external_ref: None,
        metadata: None,
    }
}

fn post(id: u128, pending: u128, value: Option<u64>) -> Command {
    Command::PostPending(resolution(id, pending, value))
}

fn void(id: u128, pending: u128) -> Command {
    Command::VoidPending(resolution(id, pending, None))
}

fn balance(debits_pending: u64, debits_posted: u64, credits_pending: u64, credits_posted: u64) -> Balance {
    Balance { debits_pending, debits_posted, credits_pending, credits_posted }
}

/// Two ledgers and the accounts above, with the clock at `now`.
struct Book {
    state: State,
    now: Timestamp,
}

impl Book {
    fn new() -> Self {
        let mut ledger = Self { state: State::new(), now: Timestamp::from_micros(START_US) };
        let setup = vec![
            new_ledger(usd(), 2),
            new_ledger(eur(), 2),
            Command::CreateAccount(new_account(A, usd(), false, false)),
            Command::CreateAccount(new_account(B, usd(), false, false)),
            Command::CreateAccount(new_account(W, usd(), true, false)),
            Command::CreateAccount(new_account(C, usd(), false, true)),
            Command::CreateAccount(new_account(E, eur(), false, false)),
            Command::CreateAccount(new_account(D, usd(), false, false)),
        ];
        for outcome in ledger.submit(setup, true) {
            assert!(matches!(outcome, Outcome::Created(_)), "{outcome:?}");
        }
        ledger.state.take_changes();
        ledger
    }

    fn submit(&mut self, commands: Vec<Command>, atomic: bool) -> Vec<Outcome> {
        apply(&mut self.state, &[Submission::new(commands, atomic)], self.now)
            .expect("no invariant broken")
            .remove(0)
    }

    fn run(&mut self, command: Command) -> Outcome {
        self.submit(vec![command], false).remove(0)
    }

    fn ok(&mut self, command: Command) -> Record {
        match self.run(command.clone()) {
            Outcome::Created(record) => record,
            other => panic!("{command:?} gave {other:?}"),
        }
    }

    fn transfer_ok(&mut self, t: NewTransfer) -> Transfer {
        match self.ok(Command::CreateTransfer(t)) {
            Record::Transfer(t) => t,
            other => panic!("{other:?}"),
        }
    }

    /// Asserts `command` is refused with `code` and changes nothing at all.
    fn refuses(&mut self, command: Command, code: RejectCode) {
        self.state.take_changes();
        let before = self.records();
        assert_eq!(self.run(command.clone()), Outcome::Rejected(code), "{command:?}");
        assert_eq!(self.records(), before, "{command:?} was refused but changed the state");
        assert_eq!(
            self.state.take_changes(),
            Changes::default(),
            "{command:?} was refused but reported changes"
        );
    }

    /// Asserts `command` answers Exists with the record as it stands and changes nothing.
    fn exists(&mut self, command: Command) {
        self.state.take_changes();
        let before = self.records();
        match self.run(command.clone()) {
            Outcome::Exists(_) => {}
            other => panic!("{command:?} gave {other:?}"),
        }
        assert_eq!(self.records(), before, "{command:?}");
        assert_eq!(self.state.take_changes(), Changes::default(), "{command:?}");
    }

    fn records(&self) -> (Vec<String>, Vec<String>) {
        let mut accounts: Vec<String> = self.state.accounts().map(|a| format!("{a:?}")).collect();
        let mut transfers: Vec<String> = self.state.transfers().map(|t| format!("{t:?}")).collect();
        accounts.sort();
        transfers.sort();
        (accounts, transfers)
    }

    fn balance(&self, id: u128) -> Balance {
        self.state.account(&acc(id)).unwrap().balance
    }

    fn status(&self, id: u128) -> TransferStatus {
        self.state.transfer(&tid(id)).unwrap().status
    }

    fn advance(&mut self, seconds: i64) {
        self.now = Timestamp::from_micros(self.now.as_micros() + seconds * 1_000_000);
    }
}

// ---------------------------------------------------------------------------------------------
// Ledgers and accounts

#[test]
fn a_ledger_again_exists_and_with_another_scale_differs() {
    let mut l = Book::new();
    l.exists(new_ledger(usd(), 2));
    l.refuses(new_ledger(usd(), 3), RejectCode::ExistsWithDifferentFields);
}

#[test]
fn an_account_needs_its_ledger() {
    let mut l = Book::new();
    let gbp = LedgerCode::try_from("GBP").unwrap();
    l.refuses(Command::CreateAccount(new_account(10, gbp, false, false)), RejectCode::LedgerNotFound);
    l.ok(new_ledger(gbp, 0));
    l.ok(Command::CreateAccount(new_account(10, gbp, false, false)));
}

#[test]
fn an_account_again_exists_and_any_other_field_differs() {
    let mut l = Book::new();
    let same = new_account(W, usd(), true, false);
    l.exists(Command::CreateAccount(same.clone()));
    let metadata = Metadata::try_from(serde_json::Map::from_iter([("k".into(), 1.into())])).unwrap();
    let variants = [
        NewAccount { ledger: eur(), ..same.clone() },
        NewAccount { code: 2, ..same.clone() },
        NewAccount { flags: AccountFlags::default(), ..same.clone() },
        NewAccount { external_ref: Some(ExternalRef::try_from("x".to_string()).unwrap()), ..same.clone() },
        NewAccount { metadata: Some(metadata), ..same },
    ];
    for variant in variants {
        l.refuses(Command::CreateAccount(variant), RejectCode::ExistsWithDifferentFields);
    }
}

// ---------------------------------------------------------------------------------------------
// Transfers: who, where, how much

#[test]
fn a_transfer_moves_posted_balances() {
    let mut l = Book::new();
    let t = l.transfer_ok(transfer(1, A, B, 30));
    assert_eq!(
        (t.status, t.pending, t.pending_id, t.timeout_at),
        (TransferStatus::Posted, false, None, None)
    );
    assert_eq!(l.balance(A), balance(0, 30, 0, 0));
    assert_eq!(l.balance(B), balance(0, 0, 0, 30));
}

#[test]
fn a_transfer_needs_two_different_existing_accounts_on_its_ledger() {
    let mut l = Book::new();
    l.refuses(Command::CreateTransfer(transfer(1, A, A, 1)), RejectCode::AccountsMustBeDifferent);
    l.refuses(Command::CreateTransfer(transfer(1, MISSING, A, 1)), RejectCode::AccountNotFound);
    l.refuses(Command::CreateTransfer(transfer(1, A, MISSING, 1)), RejectCode::AccountNotFound);
    l.refuses(Command::CreateTransfer(transfer(1, A, E, 1)), RejectCode::LedgerMismatch);
    l.refuses(
        Command::CreateTransfer(NewTransfer { ledger: eur(), ..transfer(1, A, B, 1) }),
        RejectCode::LedgerMismatch,
    );
}

#[test]
fn debits_must_not_exceed_credits_up_to_the_last_unit() {
    let mut l = Book::new();
    l.refuses(Command::CreateTransfer(transfer(1, W, A, 1)), RejectCode::InsufficientFunds);
    l.transfer_ok(transfer(2, A, W, 100));
    l.transfer_ok(hold(3, W, B, 60, None));
    // The hold counts against the wallet: 40 are left, not 100.
    l.refuses(Command::CreateTransfer(transfer(4, W, B, 41)), RejectCode::InsufficientFunds);
    l.refuses(Command::CreateTransfer(hold(4, W, B, 41, None)), RejectCode::InsufficientFunds);
    l.transfer_ok(transfer(4, W, B, 40));
    assert_eq!(l.balance(W), balance(60, 40, 0, 100));
    // Pending credits do not count as funds.
    l.transfer_ok(hold(5, A, W, 50, None));
    l.refuses(Command::CreateTransfer(transfer(6, W, B, 1)), RejectCode::InsufficientFunds);
}

#[test]
fn credits_must_not_exceed_debits_up_to_the_last_unit() {
    let mut l = Book::new();
    l.refuses(Command::CreateTransfer(transfer(1, A, C, 1)), RejectCode::ExceedsDebits);
    l.transfer_ok(transfer(2, C, A, 100));
    l.transfer_ok(hold(3, B, C, 60, None));
    l.refuses(Command::CreateTransfer(transfer(4, A, C, 41)), RejectCode::ExceedsDebits);
    l.transfer_ok(transfer(4, A, C, 40));
    assert_eq!(l.balance(C), balance(0, 100, 60, 40));
}

#[test]
fn a_balance_never_passes_two_to_the_63_minus_one() {
    let mut l = Book::new();
    l.transfer_ok(transfer(1, A, B, MAX));
    assert_eq!(l.balance(A), balance(0, MAX, 0, 0));
    // Either side overflowing refuses the transfer.
    l.refuses(Command::CreateTransfer(transfer(2, A, D, 1)), RejectCode::Overflow);
    l.refuses(Command::CreateTransfer(transfer(2, D, B, 1)), RejectCode::Overflow);
    // Pending and posted totals overflow separately.
    l.transfer_ok(hold(3, A, B, MAX, None));
    l.refuses(Command::CreateTransfer(hold(4, A, D, 1, None)), RejectCode::Overflow);
    assert_eq!(l.balance(A), balance(MAX, MAX, 0, 0));
}

#[test]
fn a_transfer_again_exists_whenever_it_is_sent() {
    let mut l = Book::new();
    l.transfer_ok(transfer(1, A, B, 5));
    l.transfer_ok(hold(2, A, B, 5, Some(30)));
    l.advance(100);
    l.exists(Command::CreateTransfer(transfer(1, A, B, 5)));
    // The timeout compares as the seconds asked for, not as a time computed anew.
    l.exists(Command::CreateTransfer(hold(2, A, B, 5, Some(30))));
    l.ok(Command::ExpirePending(tid(2)));
    l.exists(Command::CreateTransfer(hold(2, A, B, 5, Some(30))));
}

#[test]
fn a_transfer_id_with_any_other_field_differs() {
    let mut l = Book::new();
    let sent = hold(1, A, B, 5, Some(30));
    l.transfer_ok(sent.clone());
    let metadata = Metadata::try_from(serde_json::Map::from_iter([("k".into(), 1.into())])).unwrap();
    let variants = [
        NewTransfer { debit_account_id: acc(W), ..sent.clone() },
        NewTransfer { credit_account_id: acc(C), ..sent.clone() },
        NewTransfer { amount: amount(6), ..sent.clone() },
        NewTransfer { ledger: eur(), ..sent.clone() },
        NewTransfer { code: 8, ..sent.clone() },
        NewTransfer { pending: None, ..sent.clone() },
        NewTransfer { pending: Some(None), ..sent.clone() },
        NewTransfer { pending: Some(Some(31)), ..sent.clone() },
        NewTransfer { external_ref: Some(ExternalRef::try_from("x".to_string()).unwrap()), ..sent.clone() },
        NewTransfer { metadata: Some(metadata), ..sent },
    ];
    for variant in variants {
        l.refuses(Command::CreateTransfer(variant), RejectCode::ExistsWithDifferentFields);
    }
    // A post is a transfer too: its id is taken for a plain transfer and the other way round.
    l.ok(post(2, 1, None));
    l.refuses(Command::CreateTransfer(transfer(2, A, B, 5)), RejectCode::ExistsWithDifferentFields);
    l.refuses(post(1, 1, None), RejectCode::ExistsWithDifferentFields);
}

// ---------------------------------------------------------------------------------------------
// Holds: post, void, expire

#[test]
fn a_hold_moves_pending_balances_and_a_post_moves_them_to_posted() {
    let mut l = Book::new();
    let h = l.transfer_ok(hold(1, A, B, 100, Some(60)));
    assert_eq!((h.status, h.pending), (TransferStatus::Pending, true));
    assert_eq!(h.timeout_at, Some(l.now.plus_seconds(60)));
    assert_eq!(l.balance(A), balance(100, 0, 0, 0));
    assert_eq!(l.balance(B), balance(0, 0, 100, 0));
    let Record::Transfer(p) = l.ok(post(2, 1, None)) else { panic!() };
    assert_eq!(
        (p.amount, p.pending_id, p.status, p.code),
        (amount(100), Some(tid(1)), TransferStatus::Posted, 7)
    );
    assert_eq!(l.status(1), TransferStatus::Posted);
    assert_eq!(l.balance(A), balance(0, 100, 0, 0));
    assert_eq!(l.balance(B), balance(0, 0, 0, 100));
}

#[test]
fn a_partial_post_posts_its_amount_and_releases_the_rest() {
    let mut l = Book::new();
    l.transfer_ok(hold(1, A, B, 100, None));
    let Record::Transfer(p) = l.ok(post(2, 1, Some(30))) else { panic!() };
    assert_eq!(p.amount, amount(30));
    assert_eq!(l.balance(A), balance(0, 30, 0, 0));
    assert_eq!(l.balance(B), balance(0, 0, 0, 30));
}

#[test]
fn a_post_cannot_exceed_the_hold() {
    let mut l = Book::new();
    l.transfer_ok(hold(1, A, B, 100, None));
    l.refuses(post(2, 1, Some(101)), RejectCode::AmountExceedsPendingAmount);
    l.ok(post(2, 1, Some(100)));
}

#[test]
fn a_void_releases_the_hold() {
    let mut l = Book::new();
    l.transfer_ok(transfer(1, A, W, 100));
    l.transfer_ok(hold(2, W, B, 100, None));
    let Record::Transfer(v) = l.ok(void(3, 2)) else { panic!() };
    assert_eq!((v.amount, v.status), (amount(100), TransferStatus::Voided));
    assert_eq!(l.status(2), TransferStatus::Voided);
    assert_eq!(l.balance(W), balance(0, 0, 0, 100));
    assert_eq!(l.balance(B), balance(0, 0, 0, 0));
    // The released funds are available again.
    l.transfer_ok(transfer(4, W, B, 100));
}

#[test]
fn only_an_existing_hold_can_be_resolved() {
    let mut l = Book::new();
    l.transfer_ok(transfer(1, A, B, 5));
    for command in [post(9, 50, None), void(9, 50), Command::ExpirePending(tid(50))] {
        l.refuses(command, RejectCode::PendingTransferNotFound);
    }
    for command in [post(9, 1, None), void(9, 1)] {
        l.refuses(command, RejectCode::PendingTransferNotPending);
    }
    // A resolution is no hold either.
    l.transfer_ok(hold(2, A, B, 5, None));
    l.ok(void(3, 2));
    l.refuses(post(9, 3, None), RejectCode::PendingTransferNotPending);
}

#[test]
fn a_hold_is_resolved_once() {
    let mut l = Book::new();
    l.transfer_ok(hold(1, A, B, 5, None));
    l.transfer_ok(hold(2, A, B, 5, None));
    l.ok(post(3, 1, Some(2)));
    l.ok(void(4, 2));
    for command in [post(9, 1, None), void(9, 1), Command::ExpirePending(tid(1))] {
        l.refuses(command, RejectCode::PendingTransferAlreadyPosted);
    }
    for command in [post(9, 2, None), void(9, 2), Command::ExpirePending(tid(2))] {
        l.refuses(command, RejectCode::PendingTransferAlreadyVoided);
    }
}

#[test]
fn a_hold_expires_at_its_timeout_and_not_before() {
    let mut l = Book::new();
    l.transfer_ok(hold(1, A, B, 5, Some(10)));
    l.transfer_ok(hold(2, A, B, 5, None));
    l.advance(9);
    l.refuses(Command::ExpirePending(tid(1)), RejectCode::PendingTransferNotPending);
    l.refuses(Command::ExpirePending(tid(2)), RejectCode::PendingTransferNotPending);
    l.advance(1);
    // Due but not yet expired by the store: the hold still holds, and cannot be resolved.
    l.refuses(post(3, 1, None), RejectCode::PendingTransferExpired);
    l.refuses(void(3, 1), RejectCode::PendingTransferExpired);
    assert_eq!(l.balance(A), balance(10, 0, 0, 0));
    let Record::Transfer(e) = l.ok(Command::ExpirePending(tid(1))) else { panic!() };
    assert_eq!(e.status, TransferStatus::Expired);
    assert_eq!(l.balance(A), balance(5, 0, 0, 0));
    for command in [post(3, 1, None), void(3, 1), Command::ExpirePending(tid(1))] {
        l.refuses(command, RejectCode::PendingTransferExpired);
    }
}

#[test]
fn a_post_that_would_overflow_is_refused_and_the_hold_can_still_be_voided() {
    let mut l = Book::new();
    l.transfer_ok(transfer(1, A, B, MAX - 1));
    l.transfer_ok(hold(3, D, B, 5, None));
    l.refuses(post(4, 3, None), RejectCode::Overflow);
    l.ok(post(4, 3, Some(1)));
    assert_eq!(l.balance(B), balance(0, 0, 0, MAX));
}

#[test]
fn a_resolution_again_exists_once_its_defaults_are_filled_in() {
    let mut l = Book::new();
    l.transfer_ok(hold(1, A, B, 100, None));
    l.transfer_ok(hold(2, A, B, 100, None));
    l.ok(post(3, 1, None));
    l.ok(void(4, 2));
    l.exists(post(3, 1, None));
    l.exists(post(3, 1, Some(100)));
    l.exists(Command::PostPending(Resolution { code: Some(7), ..resolution(3, 1, None) }));
    l.exists(void(4, 2));
    l.refuses(post(3, 1, Some(99)), RejectCode::ExistsWithDifferentFields);
    l.refuses(
        Command::PostPending(Resolution { code: Some(8), ..resolution(3, 1, None) }),
        RejectCode::ExistsWithDifferentFields,
    );
    l.refuses(void(3, 1), RejectCode::ExistsWithDifferentFields);
    l.refuses(post(4, 2, None), RejectCode::ExistsWithDifferentFields);
    l.refuses(post(3, 2, None), RejectCode::ExistsWithDifferentFields);
}

/// Regression: a post of no amount after a partial post with the same id answered Exists,
/// although "all of it" is not what the first one posted.
#[test]
fn a_post_of_all_after_a_partial_post_with_its_id_differs() {
    let mut l = Book::new();
    l.transfer_ok(hold(1, A, B, 100, None));
    l.ok(post(2, 1, Some(30)));
    l.refuses(post(2, 1, None), RejectCode::ExistsWithDifferentFields);
    l.exists(post(2, 1, Some(30)));
}

/// Regression: a void that named an amount (which a void ignores: it releases the whole hold) got
/// exists_with_different_fields when sent again unchanged.
#[test]
fn a_void_sent_again_unchanged_exists() {
    let mut l = Book::new();
    l.transfer_ok(hold(1, A, B, 100, None));
    let sent = Command::VoidPending(resolution(2, 1, Some(40)));
    let Record::Transfer(v) = l.ok(sent.clone()) else { panic!() };
    assert_eq!(v.amount, amount(100));
    l.exists(sent);
}

// ---------------------------------------------------------------------------------------------
// Atomic submissions

#[test]
fn an_atomic_submission_with_a_failure_changes_nothing() {
    let mut l = Book::new();
    l.transfer_ok(transfer(1, A, B, 5));
    l.state.take_changes();
    let before = l.records();
    let outcomes = l.submit(
        vec![
            Command::CreateTransfer(transfer(2, A, B, 10)),
            Command::CreateTransfer(transfer(1, A, B, 5)),
            Command::CreateTransfer(transfer(3, W, B, 10)),
            Command::CreateTransfer(transfer(4, B, A, 10)),
        ],
        true,
    );
    let linked = Outcome::Rejected(RejectCode::LinkedItemFailed);
    assert_eq!(
        outcomes,
        [linked.clone(), linked.clone(), Outcome::Rejected(RejectCode::InsufficientFunds), linked]
    );
    assert_eq!(l.records(), before);
    assert_eq!(l.state.take_changes(), Changes::default());
}

#[test]
fn an_atomic_submission_sees_its_own_earlier_items() {
    let mut l = Book::new();
    let outcomes = l.submit(
        vec![
            Command::CreateTransfer(transfer(1, A, W, 10)),
            Command::CreateTransfer(hold(2, W, B, 10, None)),
            post(3, 2, Some(4)),
        ],
        true,
    );
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Created(_))), "{outcomes:?}");
    assert_eq!(l.balance(W), balance(0, 4, 0, 10));
}

#[test]
fn a_non_atomic_submission_keeps_what_succeeded() {
    let mut l = Book::new();
    let outcomes = l.submit(
        vec![Command::CreateTransfer(transfer(1, W, B, 10)), Command::CreateTransfer(transfer(2, A, B, 10))],
        false,
    );
    assert_eq!(outcomes[0], Outcome::Rejected(RejectCode::InsufficientFunds));
    assert!(matches!(outcomes[1], Outcome::Created(_)));
    assert_eq!(l.balance(B), balance(0, 0, 0, 10));
}

// ---------------------------------------------------------------------------------------------
// Changes

/// Regression: an atomic submission that created an account, moved money into it and then
/// failed left the account listed as touched; `take_changes` then panicked looking it up.
#[test]
fn changes_after_an_undone_submission_that_created_and_funded_an_account() {
    let mut l = Book::new();
    let outcomes = l.submit(
        vec![
            Command::CreateAccount(new_account(10, usd(), false, false)),
            Command::CreateTransfer(transfer(1, A, 10, 5)),
            Command::ExpirePending(tid(50)),
        ],
        true,
    );
    assert_eq!(outcomes[2], Outcome::Rejected(RejectCode::PendingTransferNotFound));
    assert_eq!(l.state.take_changes(), Changes::default());
    assert_eq!(l.balance(A), Balance::default());
}

/// Regression: an undone submission left the existing accounts it touched listed as changed.
#[test]
fn changes_leave_out_balances_that_end_where_they_began() {
    let mut l = Book::new();
    l.submit(vec![Command::CreateTransfer(transfer(1, A, B, 5)), Command::ExpirePending(tid(50))], true);
    assert_eq!(l.state.take_changes(), Changes::default());

    l.submit(vec![Command::CreateTransfer(hold(2, A, B, 5, None)), void(3, 2)], false);
    assert_eq!(
        l.run(Command::CreateTransfer(transfer(4, A, C, 1))),
        Outcome::Rejected(RejectCode::ExceedsDebits)
    );
    let changes = l.state.take_changes();
    assert_eq!(changes.transfers_created.len(), 2);
    assert!(changes.balances.is_empty(), "{:?}", changes.balances);
}

#[test]
fn changes_list_created_records_and_changed_balances_and_statuses() {
    let mut l = Book::new();
    l.transfer_ok(hold(1, A, B, 5, None));
    l.state.take_changes();
    l.ok(post(2, 1, None));
    l.ok(Command::CreateAccount(new_account(10, usd(), false, false)));
    l.transfer_ok(transfer(3, A, 10, 1));
    let changes = l.state.take_changes();
    let created: Vec<TransferId> = changes.transfers_created.iter().map(|t| t.id).collect();
    assert_eq!(created, [tid(2), tid(3)]);
    assert_eq!(changes.statuses, [(tid(1), TransferStatus::Posted)]);
    let balances: Vec<AccountId> = changes.balances.iter().map(|a| a.id).collect();
    assert_eq!(balances, [acc(A), acc(B)]);
    assert_eq!(changes.accounts_created[0].balance, balance(0, 0, 0, 1));
}

#[test]
fn reject_codes_are_distinct_snake_case() {
    let codes = [
        RejectCode::ExistsWithDifferentFields,
        RejectCode::LedgerNotFound,
        RejectCode::AccountNotFound,
        RejectCode::AccountsMustBeDifferent,
        RejectCode::LedgerMismatch,
        RejectCode::InsufficientFunds,
        RejectCode::ExceedsDebits,
        RejectCode::Overflow,
        RejectCode::PendingTransferNotFound,
        RejectCode::PendingTransferNotPending,
        RejectCode::PendingTransferAlreadyPosted,
        RejectCode::PendingTransferAlreadyVoided,
        RejectCode::PendingTransferExpired,
        RejectCode::AmountExceedsPendingAmount,
        RejectCode::LinkedItemFailed,
    ];
    let names: std::collections::BTreeSet<&str> = codes.iter().map(|c| c.as_str()).collect();
    assert_eq!(names.len(), codes.len());
    assert!(names.iter().all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    assert!(codes.iter().all(|c| !c.detail().is_empty()));
}
