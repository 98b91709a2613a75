//! The scenarios: the universe of ledgers, accounts and transfer ids, and the operations proptest
//! generates over it, made concrete against the state of the moment by the runner.

use coffer_ledger::{
    AccountFlags, AccountId, Amount, Command, ExternalRef, LedgerCode, Metadata, NewAccount, NewLedger,
    NewTransfer, Resolution, Scale, State, Timestamp, Transfer, TransferId, TransferStatus,
};
use proptest::prelude::*;
use proptest::sample::Index;
use uuid::Uuid;

pub const MAX: u64 = Amount::MAX;
/// USD and EUR exist from the start; GBP only once a random step creates it; JPY never.
pub const LEDGERS: [&str; 4] = ["USD", "EUR", "GBP", "JPY"];
/// Each account's ledger (index into `LEDGERS`) and flags (debits_must_not_exceed_credits,
/// credits_must_not_exceed_debits). The first `PRELUDE_ACCOUNTS` exist from the start.
pub const ACCOUNTS: [(usize, bool, bool); 8] = [
    (0, false, false),
    (0, true, false),
    (0, false, true),
    (0, true, true),
    (1, false, false),
    (1, true, false),
    (2, false, false),
    (3, false, false),
];
pub const PRELUDE_ACCOUNTS: usize = 6;
pub const TRANSFER_IDS: usize = 64;

pub fn ledger_code(i: usize) -> LedgerCode {
    LedgerCode::try_from(LEDGERS[i]).expect("valid ledger code")
}

pub fn account_id(i: usize) -> AccountId {
    AccountId(Uuid::from_u128(0xacc0_0000 + i as u128))
}

pub fn transfer_id(i: usize) -> TransferId {
    TransferId(Uuid::from_u128(0x7a00_0000 + i as u128))
}

pub fn amount(v: u64) -> Amount {
    Amount::try_from(v).expect("amount in range")
}

pub fn tag(n: u64) -> (Option<ExternalRef>, Option<Metadata>) {
    let map = serde_json::Map::from_iter([("n".to_string(), serde_json::Value::from(n))]);
    (Some(ExternalRef::try_from(format!("ref-{n}")).unwrap()), Some(Metadata::try_from(map).unwrap()))
}

pub fn template_account(i: usize) -> NewAccount {
    let (ledger, debits_must_not_exceed_credits, credits_must_not_exceed_debits) = ACCOUNTS[i];
    NewAccount {
        id: account_id(i),
        ledger: ledger_code(ledger),
        code: 10,
        flags: AccountFlags { debits_must_not_exceed_credits, credits_must_not_exceed_debits },
        external_ref: None,
        metadata: None,
    }
}

pub fn wide(v: u64) -> u128 {
    u128::from(v)
}

pub fn timed_out(t: &Transfer, now: Timestamp) -> bool {
    t.timeout_at.is_some_and(|at| at <= now)
}

pub fn is_open_hold(t: &Transfer) -> bool {
    t.pending && t.status == TransferStatus::Pending
}

#[derive(Debug, Clone)]
pub enum Target {
    /// An open hold (for an expiry: one whose timeout passed), else any hold.
    OpenHold(Index),
    /// Any hold, whatever its status.
    AnyHold(Index),
    /// Any transfer id of the pool, existing or not.
    Id(usize),
}

#[derive(Debug, Clone, Copy)]
pub enum PostAmount {
    All,
    Part(u64),
    Exact,
    TooMuch(u64),
    Raw(u64),
}

#[derive(Debug, Clone)]
pub enum Op {
    Ledger {
        ledger: usize,
        scale: u8,
    },
    Account {
        account: usize,
        change: Option<u8>,
    },
    Transfer(TransferOp),
    Post {
        id: usize,
        target: Target,
        amount: PostAmount,
        code: Option<u16>,
    },
    Void {
        id: usize,
        target: Target,
        amount: Option<u64>,
    },
    Expire {
        target: Target,
    },
    /// An earlier command again, as it was or with one field changed.
    Repeat {
        which: Index,
        change: Option<u8>,
    },
}

#[derive(Debug, Clone)]
pub struct TransferOp {
    id: usize,
    debit: usize,
    /// With `near`, an index among the accounts of the debit account's ledger.
    credit: usize,
    near: bool,
    amount: u64,
    /// `None`: the debit account's ledger.
    ledger: Option<usize>,
    pending: Option<Option<u32>>,
    code: u16,
    tagged: bool,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub submissions: Vec<(Vec<Op>, bool)>,
    pub advance_us: i64,
    pub take_changes: bool,
}

pub fn amount_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 1..=1_000u64,
        2 => 1..=1_000_000_000u64,
        2 => (MAX - 1_000)..=MAX,
        1 => (MAX / 2 - 1_000)..=(MAX / 2 + 1_000),
    ]
}

pub fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        5 => any::<Index>().prop_map(Target::OpenHold),
        1 => any::<Index>().prop_map(Target::AnyHold),
        1 => (0..TRANSFER_IDS).prop_map(Target::Id),
    ]
}

pub fn post_amount() -> impl Strategy<Value = PostAmount> {
    prop_oneof![
        3 => Just(PostAmount::All),
        2 => any::<u64>().prop_map(PostAmount::Part),
        1 => Just(PostAmount::Exact),
        1 => (1..=1_000u64).prop_map(PostAmount::TooMuch),
        1 => amount_value().prop_map(PostAmount::Raw),
    ]
}

pub fn transfer_op() -> impl Strategy<Value = TransferOp> {
    // Mostly from an account that exists from the start.
    let debit = prop_oneof![9 => 0..PRELUDE_ACCOUNTS, 1 => 0..ACCOUNTS.len()];
    let pending = prop_oneof![
        2 => Just(None),
        1 => Just(Some(None)),
        2 => (0..=5u32).prop_map(|s| Some(Some(s))),
    ];
    (
        (0..TRANSFER_IDS, debit, 0..ACCOUNTS.len(), prop::bool::weighted(0.8)),
        (amount_value(), prop::option::weighted(0.1, 0..LEDGERS.len()), pending),
        (0..2u16, prop::bool::weighted(0.1)),
    )
        .prop_map(|((id, debit, credit, near), (amount, ledger, pending), (code, tagged))| TransferOp {
            id,
            debit,
            credit,
            near,
            amount,
            ledger,
            pending,
            code,
            tagged,
        })
}

pub fn op() -> impl Strategy<Value = Op> {
    let changed = || prop::option::weighted(0.4, any::<u8>());
    prop_oneof![
        1 => (0..3usize, prop_oneof![3 => Just(2u8), 1 => 0..=18u8])
            .prop_map(|(ledger, scale)| Op::Ledger { ledger, scale }),
        1 => (0..ACCOUNTS.len(), changed()).prop_map(|(account, change)| Op::Account { account, change }),
        10 => transfer_op().prop_map(Op::Transfer),
        4 => (0..TRANSFER_IDS, target(), post_amount(), prop::option::weighted(0.2, 0..3u16))
            .prop_map(|(id, target, amount, code)| Op::Post { id, target, amount, code }),
        2 => (0..TRANSFER_IDS, target(), prop::option::weighted(0.2, amount_value()))
            .prop_map(|(id, target, amount)| Op::Void { id, target, amount }),
        2 => target().prop_map(|target| Op::Expire { target }),
        2 => (any::<Index>(), changed()).prop_map(|(which, change)| Op::Repeat { which, change }),
    ]
}

pub fn step() -> impl Strategy<Value = Step> {
    let submission = (prop::collection::vec(op(), 1..=3), prop::bool::weighted(0.3));
    (
        prop::collection::vec(submission, 1..=2),
        prop_oneof![2 => Just(0i64), 3 => 1..=3_000_000i64],
        prop::bool::weighted(0.8),
    )
        .prop_map(|(submissions, advance_us, take_changes)| Step {
            submissions,
            advance_us,
            take_changes,
        })
}

/// One field of a command changed (which one depends on `k`); the result may still mean the same.
pub fn change_command(command: Command, k: u8) -> Command {
    let other_amount =
        |a: Option<Amount>| Some(amount(a.map_or(1, |a| if a.get() < MAX { a.get() + 1 } else { 1 })));
    let other_code = |c: Option<u16>| Some(c.map_or(7, |c| c ^ 1));
    match command {
        Command::CreateLedger(l) => Command::CreateLedger(NewLedger {
            scale: Scale::try_from(u64::from(l.scale.get() + 1) % 19).unwrap(),
            ..l
        }),
        Command::CreateAccount(a) => Command::CreateAccount(change_account(a, k)),
        Command::CreateTransfer(t) => Command::CreateTransfer(match k % 5 {
            0 => NewTransfer { amount: other_amount(Some(t.amount)).unwrap(), ..t },
            1 => NewTransfer { code: t.code ^ 1, ..t },
            2 => NewTransfer {
                pending: match t.pending {
                    None => Some(None),
                    Some(None) => Some(Some(1)),
                    Some(Some(s)) => Some(Some(s + 1)),
                },
                ..t
            },
            3 => {
                let (external_ref, metadata) = if t.external_ref.is_some() { (None, None) } else { tag(2) };
                NewTransfer { external_ref, metadata, ..t }
            }
            _ => NewTransfer {
                debit_account_id: t.credit_account_id,
                credit_account_id: t.debit_account_id,
                ..t
            },
        }),
        Command::PostPending(r) => match k % 4 {
            0 => Command::PostPending(Resolution { amount: other_amount(r.amount), ..r }),
            1 => Command::PostPending(Resolution { code: other_code(r.code), ..r }),
            2 => Command::VoidPending(r),
            _ => Command::PostPending(Resolution { external_ref: tag(3).0, ..r }),
        },
        Command::VoidPending(r) => match k % 3 {
            0 => Command::PostPending(r),
            1 => Command::VoidPending(Resolution { code: other_code(r.code), ..r }),
            _ => Command::VoidPending(Resolution { amount: other_amount(r.amount), ..r }),
        },
        Command::ExpirePending(id) => Command::ExpirePending(id),
    }
}

pub fn change_account(a: NewAccount, k: u8) -> NewAccount {
    match k % 4 {
        0 => NewAccount { code: a.code.wrapping_add(1), ..a },
        1 => {
            let flags = AccountFlags {
                debits_must_not_exceed_credits: !a.flags.debits_must_not_exceed_credits,
                ..a.flags
            };
            NewAccount { flags, ..a }
        }
        2 => NewAccount { external_ref: tag(4).0, ..a },
        _ => {
            let at = LEDGERS.iter().position(|l| *l == a.ledger.as_str()).unwrap();
            NewAccount { ledger: ledger_code((at + 1) % LEDGERS.len()), ..a }
        }
    }
}

/// What the commands of a step see when they are made concrete.
pub struct Now<'a> {
    pub state: &'a State,
    /// Every command issued so far that names a record of its own, for `Op::Repeat`.
    pub issued: &'a [Command],
    pub now: Timestamp,
}

/// The command `op` stands for at this moment.
pub fn concrete(op: &Op, at: &Now<'_>) -> Command {
    match op {
        Op::Ledger { ledger, scale } => Command::CreateLedger(NewLedger {
            code: ledger_code(*ledger),
            scale: Scale::try_from(u64::from(*scale)).unwrap(),
        }),
        Op::Account { account, change } => {
            let a = template_account(*account);
            Command::CreateAccount(match change {
                Some(k) => change_account(a, *k),
                None => a,
            })
        }
        Op::Transfer(t) => {
            let ledger = ACCOUNTS[t.debit].0;
            let peers: Vec<usize> =
                (0..ACCOUNTS.len()).filter(|j| ACCOUNTS[*j].0 == ledger && *j != t.debit).collect();
            let credit = if t.near && !peers.is_empty() { peers[t.credit % peers.len()] } else { t.credit };
            let (external_ref, metadata) = if t.tagged { tag(1) } else { (None, None) };
            Command::CreateTransfer(NewTransfer {
                id: transfer_id(t.id),
                debit_account_id: account_id(t.debit),
                credit_account_id: account_id(credit),
                amount: amount(t.amount),
                ledger: ledger_code(t.ledger.unwrap_or(ledger)),
                code: t.code,
                pending: t.pending,
                external_ref,
                metadata,
            })
        }
        Op::Post { id, target, amount: how, code } => {
            let pending_id = pick(target, false, at);
            let held = at.state.transfer(&pending_id).map(|t| t.amount.get());
            let posted = match (*how, held) {
                (PostAmount::All, _) => None,
                (PostAmount::Raw(v), _) => Some(v),
                (_, None) => Some(1),
                (PostAmount::Part(r), Some(a)) => Some(1 + r % a),
                (PostAmount::Exact, Some(a)) => Some(a),
                (PostAmount::TooMuch(k), Some(a)) => Some(a.saturating_add(k).min(MAX)),
            };
            let r = Resolution {
                id: transfer_id(*id),
                pending_id,
                amount: posted.map(amount),
                code: *code,
                external_ref: None,
                metadata: None,
            };
            Command::PostPending(r)
        }
        Op::Void { id, target, amount: released } => Command::VoidPending(Resolution {
            id: transfer_id(*id),
            pending_id: pick(target, false, at),
            amount: released.map(amount),
            code: None,
            external_ref: None,
            metadata: None,
        }),
        Op::Expire { target } => Command::ExpirePending(pick(target, true, at)),
        Op::Repeat { which, change } => {
            let command = at.issued[which.index(at.issued.len())].clone();
            match change {
                Some(k) => change_command(command, *k),
                None => command,
            }
        }
    }
}

/// The transfer id a post, void or expiry names.
fn pick(target: &Target, expiring: bool, at: &Now<'_>) -> TransferId {
    let mut holds: Vec<&Transfer> = at.state.transfers().filter(|t| t.pending).collect();
    holds.sort_by_key(|t| t.id);
    let (index, candidates): (&Index, Vec<&Transfer>) = match target {
        Target::Id(i) => return transfer_id(*i),
        Target::AnyHold(index) => (index, holds),
        Target::OpenHold(index) => {
            let open: Vec<&Transfer> = holds.iter().copied().filter(|t| is_open_hold(t)).collect();
            let due: Vec<&Transfer> = open.iter().copied().filter(|t| timed_out(t, at.now)).collect();
            let any = if open.is_empty() { holds } else { open };
            (index, if expiring && !due.is_empty() { due } else { any })
        }
    };
    if candidates.is_empty() {
        return transfer_id(index.index(TRANSFER_IDS));
    }
    candidates[index.index(candidates.len())].id
}
