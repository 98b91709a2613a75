//! The core's assertions through its public face: a state that breaks an invariant makes `apply`
//! answer `InvariantBroken` instead of outcomes, whatever the rules would have said, and a sound
//! one never does. (The property suite checks that no assertion fires on valid workloads.)

use coffer_ledger::{
    Account, AccountFlags, AccountId, Amount, Balance, Command, Ledger, LedgerCode, NewTransfer, Outcome,
    Resolution, Scale, State, Submission, Timestamp, Transfer, TransferId, TransferStatus, apply,
};
use proptest::prelude::*;
use uuid::Uuid;

const MAX: u64 = Amount::MAX;

fn usd() -> LedgerCode {
    LedgerCode::try_from("USD").unwrap()
}

fn id(n: u128) -> AccountId {
    AccountId(Uuid::from_u128(n))
}

fn tid(n: u128) -> TransferId {
    TransferId(Uuid::from_u128(0x1000 + n))
}

const WALLET: AccountFlags =
    AccountFlags { debits_must_not_exceed_credits: true, credits_must_not_exceed_debits: false };
const CAPPED: AccountFlags =
    AccountFlags { debits_must_not_exceed_credits: false, credits_must_not_exceed_debits: true };
const FREE: AccountFlags =
    AccountFlags { debits_must_not_exceed_credits: false, credits_must_not_exceed_debits: false };

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

/// USD with accounts 1 and 2 as the store would load them.
fn loaded(first: Account, second: Account) -> State {
    let mut state = State::new();
    let scale = Scale::try_from(2).unwrap();
    state.load_ledger(Ledger { code: usd(), scale, created_at: Timestamp::from_micros(0) });
    state.load_account(first);
    state.load_account(second);
    state
}

fn transfer(amount: u64, pending: bool) -> Command {
    Command::CreateTransfer(NewTransfer {
        id: tid(1),
        debit_account_id: id(1),
        credit_account_id: id(2),
        amount: Amount::try_from(amount).unwrap(),
        ledger: usd(),
        code: 1,
        pending: pending.then_some(None),
        external_ref: None,
        metadata: None,
    })
}

fn run(state: &mut State, command: Command) -> Result<Vec<Vec<Outcome>>, String> {
    let now = Timestamp::from_micros(1_700_000_000_000_000);
    apply(state, &[Submission::one(command)], now).map_err(|broken| broken.to_string())
}

fn posted(debits: u64, credits: u64) -> Balance {
    Balance { debits_posted: debits, credits_posted: credits, ..Balance::default() }
}

#[test]
fn an_overdrawn_wallet_stops_the_batch_rather_than_being_refused() {
    // A sound wallet that cannot pay is refused by the rules…
    let mut sound = loaded(account(1, WALLET, posted(0, 3)), account(2, FREE, Balance::default()));
    assert!(matches!(&run(&mut sound, transfer(5, false)).unwrap()[0][0], Outcome::Rejected(_)));
    // …one already past its limit is a broken invariant, whatever the command.
    let mut broken = loaded(account(1, WALLET, posted(4, 3)), account(2, FREE, Balance::default()));
    let why = run(&mut broken, transfer(1, false)).unwrap_err();
    assert!(why.contains("debits exceed credits") && why.contains(&id(1).to_string()), "{why}");
}

#[test]
fn a_capped_account_past_its_cap_stops_the_batch() {
    let mut state = loaded(account(1, FREE, Balance::default()), account(2, CAPPED, posted(1, 2)));
    let why = run(&mut state, transfer(1, false)).unwrap_err();
    assert!(why.contains("credits exceed debits"), "{why}");
}

#[test]
fn a_total_past_the_largest_amount_stops_the_batch() {
    let huge = Balance { credits_pending: MAX + 1, ..Balance::default() };
    let mut state = loaded(account(1, FREE, Balance::default()), account(2, FREE, huge));
    let why = run(&mut state, transfer(1, true)).unwrap_err();
    assert!(why.contains("exceeds 2^63-1"), "{why}");
}

#[test]
fn a_hold_its_accounts_do_not_hold_stops_the_batch() {
    let hold = Transfer {
        id: tid(9),
        debit_account_id: id(1),
        credit_account_id: id(2),
        amount: Amount::try_from(10).unwrap(),
        ledger: usd(),
        code: 1,
        pending: true,
        status: TransferStatus::Pending,
        pending_id: None,
        timeout_at: None,
        external_ref: None,
        metadata: None,
        created_at: Timestamp::from_micros(0),
    };
    let post = Command::PostPending(Resolution {
        id: tid(2),
        pending_id: hold.id,
        amount: None,
        code: None,
        external_ref: None,
        metadata: None,
    });
    let short = Balance { debits_pending: 4, ..Balance::default() };
    let held = Balance { credits_pending: 10, ..Balance::default() };
    let mut state = loaded(account(1, FREE, short), account(2, FREE, held));
    state.load_transfer(hold.clone());
    let why = run(&mut state, post.clone()).unwrap_err();
    assert!(why.contains("debits_pending 4 is less than the 10 it holds"), "{why}");

    let mut sound = loaded(
        account(1, FREE, Balance { debits_pending: 10, ..Balance::default() }),
        account(2, FREE, held),
    );
    sound.load_transfer(hold);
    assert!(matches!(&run(&mut sound, post).unwrap()[0][0], Outcome::Created(_)));
}

/// Whether a balance is one an account with `flags` may hold, said independently of the core.
fn may_hold(flags: AccountFlags, b: &Balance) -> bool {
    let wide = |x: u64| u128::from(x);
    let in_range =
        [b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted].iter().all(|x| *x <= MAX);
    let debits = wide(b.debits_pending) + wide(b.debits_posted);
    let credits = wide(b.credits_pending) + wide(b.credits_posted);
    in_range
        && (!flags.debits_must_not_exceed_credits || debits <= wide(b.credits_posted))
        && (!flags.credits_must_not_exceed_debits || credits <= wide(b.debits_posted))
}

fn total() -> impl Strategy<Value = u64> {
    prop_oneof![0..20u64, Just(MAX), Just(MAX + 1), (MAX - 20)..=MAX, any::<u64>()]
}

fn balance() -> impl Strategy<Value = Balance> {
    (total(), total(), total(), total()).prop_map(
        |(debits_pending, debits_posted, credits_pending, credits_posted)| Balance {
            debits_pending,
            debits_posted,
            credits_pending,
            credits_posted,
        },
    )
}

fn flags() -> impl Strategy<Value = AccountFlags> {
    prop_oneof![Just(FREE), Just(WALLET), Just(CAPPED)]
}

proptest! {
    // Like the property suite: a failure prints its case and is not kept in a file.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever the store hands the core, a transfer between two accounts applies (or is refused)
    /// exactly when both are sound, and stops the batch exactly when one is not.
    #[test]
    fn the_core_stops_exactly_on_unsound_accounts(
        debit in (flags(), balance()),
        credit in (flags(), balance()),
        amount in 1..=MAX,
        pending in any::<bool>(),
    ) {
        let mut state = loaded(account(1, debit.0, debit.1), account(2, credit.0, credit.1));
        let sound = may_hold(debit.0, &debit.1) && may_hold(credit.0, &credit.1);
        let result = run(&mut state, transfer(amount, pending));
        prop_assert_eq!(result.is_ok(), sound, "{:?}", result);
    }
}
