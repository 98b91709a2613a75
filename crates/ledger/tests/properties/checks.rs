//! What can be known about a state and an outcome without the rules' code: a copy of the records to
//! compare and persist changes into, the invariants of a whole state, and what one command may do.

use std::collections::{BTreeMap, BTreeSet};

use coffer_ledger::{
    Account, AccountId, Amount, Balance, Changes, Command, Event, EventKind, Ledger, LedgerCode, Outcome,
    Record, RejectCode, State, Submission, Timestamp, Transfer, TransferId, TransferStatus,
};

use crate::generate::{LEDGERS, MAX, is_open_hold, ledger_code, timed_out, wide};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Ledger(LedgerCode),
    Account(AccountId),
    Transfer(TransferId),
}

pub fn key(command: &Command) -> Option<Key> {
    match command {
        Command::CreateLedger(l) => Some(Key::Ledger(l.code)),
        Command::CreateAccount(a) => Some(Key::Account(a.id)),
        Command::CreateTransfer(t) => Some(Key::Transfer(t.id)),
        Command::PostPending(r) | Command::VoidPending(r) => Some(Key::Transfer(r.id)),
        Command::ExpirePending(_) => None,
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub ledgers: BTreeMap<LedgerCode, Ledger>,
    pub accounts: BTreeMap<AccountId, Account>,
    pub transfers: BTreeMap<TransferId, Transfer>,
}

impl Snapshot {
    pub fn of(state: &State) -> Self {
        Self {
            ledgers: (0..LEDGERS.len())
                .filter_map(|i| state.ledger(&ledger_code(i)).cloned())
                .map(|l| (l.code, l))
                .collect(),
            accounts: state.accounts().map(|a| (a.id, a.clone())).collect(),
            transfers: state.transfers().map(|t| (t.id, t.clone())).collect(),
        }
    }

    pub fn record(&self, key: Key) -> Option<Record> {
        match key {
            Key::Ledger(code) => self.ledgers.get(&code).cloned().map(Record::Ledger),
            Key::Account(id) => self.accounts.get(&id).cloned().map(Record::Account),
            Key::Transfer(id) => self.transfers.get(&id).cloned().map(Record::Transfer),
        }
    }

    /// Writes `changes` the way a store would, checking that each one really is a change.
    pub fn persist(&mut self, changes: &Changes) {
        for l in &changes.ledgers {
            assert!(self.ledgers.insert(l.code, l.clone()).is_none(), "ledger {:?} created twice", l.code);
        }
        for a in &changes.accounts_created {
            assert!(self.accounts.insert(a.id, a.clone()).is_none(), "account {} created twice", a.id);
        }
        assert!(
            changes.balances.windows(2).all(|w| w[0].id < w[1].id),
            "balances not sorted by id or repeated"
        );
        for a in &changes.balances {
            let stored = self.accounts.get_mut(&a.id).expect("balance of an account never created");
            assert_eq!(
                Account { balance: stored.balance, ..a.clone() },
                *stored,
                "only a balance may change"
            );
            assert_ne!(stored.balance, a.balance, "account {} reported with an unchanged balance", a.id);
            stored.balance = a.balance;
        }
        for t in &changes.transfers_created {
            assert!(self.transfers.insert(t.id, t.clone()).is_none(), "transfer {} created twice", t.id);
        }
        assert!(
            changes.statuses.windows(2).all(|w| w[0].0 < w[1].0),
            "statuses not sorted by id or repeated"
        );
        for (id, status) in &changes.statuses {
            let stored = self.transfers.get_mut(id).expect("status of a transfer never created");
            assert_ne!(stored.status, *status, "transfer {id} reported with an unchanged status");
            stored.status = *status;
        }
    }
}

// ---------------------------------------------------------------------------------------------
pub fn check_invariants(s: &Snapshot) {
    let mut sums: BTreeMap<AccountId, [u128; 4]> = BTreeMap::new();
    let mut resolutions: BTreeMap<TransferId, usize> = BTreeMap::new();
    for t in s.transfers.values() {
        let debit = s.accounts.get(&t.debit_account_id).expect("debit account exists");
        let credit = s.accounts.get(&t.credit_account_id).expect("credit account exists");
        assert_ne!(debit.id, credit.id, "{t:?}");
        assert!(debit.ledger == t.ledger && credit.ledger == t.ledger, "{t:?}");
        assert!(s.ledgers.contains_key(&t.ledger), "{t:?}");
        // [debits_pending, debits_posted] of the debit account, same pair in credits for the other.
        let slot = match (t.pending, t.pending_id) {
            (true, Some(_)) => panic!("a hold that resolves another: {t:?}"),
            (false, None) => {
                assert_eq!((t.status, t.timeout_at), (TransferStatus::Posted, None), "{t:?}");
                Some(1)
            }
            (true, None) => (t.status == TransferStatus::Pending).then_some(0),
            (false, Some(p)) => {
                let hold = s.transfers.get(&p).expect("a resolution's hold exists");
                assert!(hold.pending, "{t:?} resolves a transfer that is no hold");
                let same_parties = (hold.debit_account_id, hold.credit_account_id, hold.ledger)
                    == (t.debit_account_id, t.credit_account_id, t.ledger);
                assert!(same_parties && t.timeout_at.is_none(), "{t:?} of {hold:?}");
                assert_eq!(hold.status, t.status, "{t:?} of {hold:?}");
                match t.status {
                    TransferStatus::Posted => assert!(t.amount <= hold.amount, "{t:?} of {hold:?}"),
                    TransferStatus::Voided => assert_eq!(t.amount, hold.amount, "{t:?} of {hold:?}"),
                    _ => panic!("a resolution neither posted nor voided: {t:?}"),
                }
                *resolutions.entry(p).or_default() += 1;
                (t.status == TransferStatus::Posted).then_some(1)
            }
        };
        if let Some(slot) = slot {
            sums.entry(t.debit_account_id).or_default()[slot] += wide(t.amount.get());
            sums.entry(t.credit_account_id).or_default()[slot + 2] += wide(t.amount.get());
        }
    }
    for hold in s.transfers.values().filter(|t| t.pending) {
        let resolved = matches!(hold.status, TransferStatus::Posted | TransferStatus::Voided);
        assert_eq!(resolutions.get(&hold.id).copied().unwrap_or(0), usize::from(resolved), "{hold:?}");
        assert!(hold.status != TransferStatus::Expired || hold.timeout_at.is_some(), "{hold:?}");
    }

    let mut per_ledger: BTreeMap<LedgerCode, [u128; 4]> = BTreeMap::new();
    for a in s.accounts.values() {
        let b = a.balance;
        let fields = [b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted];
        assert_eq!(fields.map(wide), sums.get(&a.id).copied().unwrap_or_default(), "balance of {a:?}");
        assert!(fields.iter().all(|v| *v <= MAX), "balance above 2^63-1: {a:?}");
        let debits_ok = wide(b.debits_pending) + wide(b.debits_posted) <= wide(b.credits_posted);
        let credits_ok = wide(b.credits_pending) + wide(b.credits_posted) <= wide(b.debits_posted);
        assert!(!a.flags.debits_must_not_exceed_credits || debits_ok, "debits exceed credits: {a:?}");
        assert!(!a.flags.credits_must_not_exceed_debits || credits_ok, "credits exceed debits: {a:?}");
        assert!(s.ledgers.contains_key(&a.ledger), "{a:?}");
        let total = per_ledger.entry(a.ledger).or_default();
        for (sum, v) in total.iter_mut().zip(fields) {
            *sum += wide(v);
        }
    }
    for (ledger, [dp, dpo, cp, cpo]) in per_ledger {
        assert_eq!((dp, dpo), (cp, cpo), "ledger {ledger}: debits and credits differ");
    }
}

// ---------------------------------------------------------------------------------------------
/// Why a refusal can be right: the reason it gives holds in the state before.
pub fn reason_holds(before: &Snapshot, command: &Command, code: RejectCode, now: Timestamp) -> bool {
    use RejectCode as R;
    match command {
        Command::CreateLedger(_) => false,
        Command::CreateAccount(a) => code == R::LedgerNotFound && !before.ledgers.contains_key(&a.ledger),
        Command::CreateTransfer(t) => {
            let (debit, credit) =
                (before.accounts.get(&t.debit_account_id), before.accounts.get(&t.credit_account_id));
            let amount = wide(t.amount.get());
            match code {
                R::AccountsMustBeDifferent => t.debit_account_id == t.credit_account_id,
                R::AccountNotFound => debit.is_none() || credit.is_none(),
                R::LedgerMismatch => {
                    matches!((debit, credit), (Some(d), Some(c)) if d.ledger != t.ledger || c.ledger != t.ledger)
                }
                R::InsufficientFunds => debit.is_some_and(|d| {
                    let b = d.balance;
                    d.flags.debits_must_not_exceed_credits
                        && wide(b.debits_pending) + wide(b.debits_posted) + amount > wide(b.credits_posted)
                }),
                R::ExceedsDebits => credit.is_some_and(|c| {
                    let b = c.balance;
                    c.flags.credits_must_not_exceed_debits
                        && wide(b.credits_pending) + wide(b.credits_posted) + amount > wide(b.debits_posted)
                }),
                R::Overflow => match (debit, credit) {
                    (Some(d), Some(c)) => {
                        let (dv, cv) = if t.pending.is_some() {
                            (d.balance.debits_pending, c.balance.credits_pending)
                        } else {
                            (d.balance.debits_posted, c.balance.credits_posted)
                        };
                        wide(dv) + amount > wide(MAX) || wide(cv) + amount > wide(MAX)
                    }
                    _ => false,
                },
                _ => false,
            }
        }
        Command::PostPending(r) | Command::VoidPending(r) => {
            let post = matches!(command, Command::PostPending(_));
            let Some(hold) = before.transfers.get(&r.pending_id) else {
                return code == R::PendingTransferNotFound;
            };
            match code {
                R::AmountExceedsPendingAmount => post && r.amount.is_some_and(|a| a > hold.amount),
                R::Overflow => {
                    let posted = wide(r.amount.unwrap_or(hold.amount).get());
                    let d = before.accounts[&hold.debit_account_id].balance;
                    let c = before.accounts[&hold.credit_account_id].balance;
                    post && (wide(d.debits_posted) + posted > wide(MAX)
                        || wide(c.credits_posted) + posted > wide(MAX))
                }
                R::PendingTransferExpired if hold.pending && hold.status == TransferStatus::Pending => {
                    timed_out(hold, now)
                }
                _ => resolved_reason(hold, code),
            }
        }
        Command::ExpirePending(id) => {
            let Some(hold) = before.transfers.get(id) else {
                return code == R::PendingTransferNotFound;
            };
            match code {
                R::PendingTransferNotPending if is_open_hold(hold) => !timed_out(hold, now),
                _ => resolved_reason(hold, code),
            }
        }
    }
}

/// The refusals that depend only on what became of the transfer named as pending.
pub fn resolved_reason(hold: &Transfer, code: RejectCode) -> bool {
    match code {
        RejectCode::PendingTransferNotPending => !hold.pending,
        RejectCode::PendingTransferAlreadyPosted => hold.pending && hold.status == TransferStatus::Posted,
        RejectCode::PendingTransferAlreadyVoided => hold.pending && hold.status == TransferStatus::Voided,
        RejectCode::PendingTransferExpired => hold.pending && hold.status == TransferStatus::Expired,
        _ => false,
    }
}

/// The record a successful command must leave, built from the command and the state before.
pub fn expected_record(before: &Snapshot, command: &Command, now: Timestamp) -> Record {
    match command {
        Command::CreateLedger(l) => Record::Ledger(Ledger { code: l.code, scale: l.scale, created_at: now }),
        Command::CreateAccount(a) => Record::Account(Account {
            id: a.id,
            ledger: a.ledger,
            code: a.code,
            flags: a.flags,
            external_ref: a.external_ref.clone(),
            metadata: a.metadata.clone(),
            balance: Balance::default(),
            created_at: now,
        }),
        Command::CreateTransfer(t) => Record::Transfer(Transfer {
            id: t.id,
            debit_account_id: t.debit_account_id,
            credit_account_id: t.credit_account_id,
            amount: t.amount,
            ledger: t.ledger,
            code: t.code,
            pending: t.pending.is_some(),
            status: if t.pending.is_some() { TransferStatus::Pending } else { TransferStatus::Posted },
            pending_id: None,
            timeout_at: t.pending.flatten().map(|s| now.plus_seconds(s)),
            external_ref: t.external_ref.clone(),
            metadata: t.metadata.clone(),
            created_at: now,
        }),
        Command::PostPending(r) | Command::VoidPending(r) => {
            let hold = &before.transfers[&r.pending_id];
            let (amount, code) = resolved_fields(before, command).expect("a resolution of an existing hold");
            Record::Transfer(Transfer {
                id: r.id,
                amount,
                code,
                pending: false,
                status: resolution_status(command),
                pending_id: Some(hold.id),
                timeout_at: None,
                external_ref: r.external_ref.clone(),
                metadata: r.metadata.clone(),
                created_at: now,
                ..hold.clone()
            })
        }
        Command::ExpirePending(id) => {
            Record::Transfer(Transfer { status: TransferStatus::Expired, ..before.transfers[id].clone() })
        }
    }
}

pub fn resolution_status(command: &Command) -> TransferStatus {
    match command {
        Command::VoidPending(_) => TransferStatus::Voided,
        _ => TransferStatus::Posted,
    }
}

/// A resolution's amount and code once its defaults are filled from its hold: a post of no amount
/// posts all of it, a void always releases all of it, no code takes the hold's.
pub fn resolved_fields(before: &Snapshot, command: &Command) -> Option<(Amount, u16)> {
    let (Command::PostPending(r) | Command::VoidPending(r)) = command else { return None };
    let hold = before.transfers.get(&r.pending_id)?;
    let amount = match command {
        Command::PostPending(_) => r.amount.unwrap_or(hold.amount),
        _ => hold.amount,
    };
    Some((amount, r.code.unwrap_or(hold.code)))
}

/// Whether `command` asks for the same record as `creator` did: every field equal, defaults filled.
pub fn same_request(before: &Snapshot, command: &Command, creator: &Command) -> bool {
    match (command, creator) {
        (Command::CreateLedger(a), Command::CreateLedger(b)) => a.scale == b.scale,
        (Command::CreateAccount(a), Command::CreateAccount(b)) => a == b,
        (Command::CreateTransfer(a), Command::CreateTransfer(b)) => a == b,
        (Command::PostPending(a), Command::PostPending(b))
        | (Command::VoidPending(a), Command::VoidPending(b)) => {
            (a.pending_id, &a.external_ref, &a.metadata) == (b.pending_id, &b.external_ref, &b.metadata)
                && resolved_fields(before, command) == resolved_fields(before, creator)
        }
        _ => false,
    }
}

/// The events a command's outcome must emit, with the records as they stood right after it.
pub fn expected_events(command: &Command, outcome: &Outcome, after: &Snapshot) -> Vec<Event> {
    let Outcome::Created(record) = outcome else { return Vec::new() };
    match (command, record) {
        (_, Record::Ledger(_)) => Vec::new(),
        (_, Record::Account(a)) => vec![Event::Account(EventKind::AccountCreated, a.clone())],
        (Command::ExpirePending(_), Record::Transfer(t)) => {
            vec![Event::Transfer(EventKind::TransferExpired, t.clone())]
        }
        (Command::PostPending(_) | Command::VoidPending(_), Record::Transfer(t)) => {
            let hold = after.transfers[&t.pending_id.expect("a resolution names its hold")].clone();
            let kind = match t.status {
                TransferStatus::Posted => EventKind::TransferPosted,
                _ => EventKind::TransferVoided,
            };
            vec![Event::Transfer(EventKind::TransferCreated, t.clone()), Event::Transfer(kind, hold)]
        }
        (_, Record::Transfer(t)) => vec![Event::Transfer(EventKind::TransferCreated, t.clone())],
    }
}

/// Checks that a successful command changed its own records and nothing else.
pub fn check_only_its_records_changed(
    before: &Snapshot,
    after: &Snapshot,
    command: &Command,
    record: &Record,
) {
    let mut accounts = BTreeSet::new();
    let mut transfers = BTreeSet::new();
    match record {
        Record::Ledger(_) => {}
        Record::Account(a) => {
            accounts.insert(a.id);
        }
        Record::Transfer(t) => {
            accounts.extend([t.debit_account_id, t.credit_account_id]);
            transfers.extend([Some(t.id), t.pending_id].into_iter().flatten());
        }
    }
    let ledger = match command {
        Command::CreateLedger(l) => Some(l.code),
        _ => None,
    };
    assert_eq!(
        others(before, ledger, &accounts, &transfers),
        others(after, ledger, &accounts, &transfers),
        "{command:?} changed records it does not name"
    );
}

/// The records of `s` other than those named.
fn others<'s>(
    s: &'s Snapshot,
    ledger: Option<LedgerCode>,
    accounts: &BTreeSet<AccountId>,
    transfers: &BTreeSet<TransferId>,
) -> (Vec<&'s Ledger>, Vec<&'s Account>, Vec<&'s Transfer>) {
    (
        s.ledgers.values().filter(|l| Some(l.code) != ledger).collect(),
        s.accounts.values().filter(|a| !accounts.contains(&a.id)).collect(),
        s.transfers.values().filter(|t| !transfers.contains(&t.id)).collect(),
    )
}

/// Checks one command's outcome against the state before and after it, `creators` holding the
/// command that created each record.
pub fn check_outcome(
    before: &Snapshot,
    command: &Command,
    outcome: &Outcome,
    after: &Snapshot,
    now: Timestamp,
    creators: &BTreeMap<Key, Command>,
) {
    let existing = key(command).and_then(|k| before.record(k));
    let same = || same_request(before, command, &creators[&key(command).unwrap()]);
    match outcome {
        Outcome::Rejected(code) => {
            assert_eq!(after, before, "{command:?} was refused ({code:?}) but changed the state");
            if existing.is_some() {
                assert_eq!(*code, RejectCode::ExistsWithDifferentFields, "{command:?}");
                assert!(!same(), "{command:?} asks for what its id already has, yet was refused");
            } else {
                assert!(reason_holds(before, command, *code, now), "{command:?} refused with {code:?}");
            }
        }
        Outcome::Exists(record) => {
            assert_eq!(after, before, "{command:?} answered Exists but changed the state");
            assert_eq!(existing.as_ref(), Some(record), "{command:?} answered Exists with another record");
            assert!(same(), "{command:?} differs from the command that created {record:?}");
        }
        Outcome::Created(record) => {
            assert!(existing.is_none(), "{command:?} created a record over an existing one");
            if let Command::CreateAccount(a) = command {
                assert!(before.ledgers.contains_key(&a.ledger), "{command:?} on a missing ledger");
            }
            if let Command::CreateTransfer(t) = command {
                let accounts = [t.debit_account_id, t.credit_account_id].map(|id| before.accounts.get(&id));
                let [Some(d), Some(c)] = accounts else { panic!("{command:?} applied on a missing account") };
                assert!(d.ledger == t.ledger && c.ledger == t.ledger && d.id != c.id, "{command:?}");
            }
            if let Some(hold) = hold_of(before, command) {
                assert!(is_open_hold(hold), "{command:?} resolved {hold:?}");
                let due = timed_out(hold, now);
                assert_eq!(due, matches!(command, Command::ExpirePending(_)), "{command:?} at {:?}", now);
                if let Command::PostPending(r) = command {
                    assert!(r.amount.is_none_or(|a| a <= hold.amount), "{command:?} posted more than held");
                }
            }
            assert_eq!(*record, expected_record(before, command, now), "{command:?}");
            let key = match record {
                Record::Ledger(l) => Key::Ledger(l.code),
                Record::Account(a) => Key::Account(a.id),
                Record::Transfer(t) => Key::Transfer(t.id),
            };
            assert_eq!(after.record(key).as_ref(), Some(record), "{command:?} answered another record");
            if let Some(hold) = hold_of(before, command) {
                let status = Transfer { status: transfer_status(record), ..hold.clone() };
                assert_eq!(after.transfers.get(&hold.id), Some(&status), "{command:?}");
            }
            check_only_its_records_changed(before, after, command, record);
        }
    }
}

/// A state holding only what a store loads for `submissions`: the ledgers, transfers and accounts
/// the commands name, and the accounts of the holds among those transfers.
pub fn load_for(all: &Snapshot, submissions: &[Submission]) -> State {
    let commands = || submissions.iter().flat_map(|s| &s.commands);
    let mut state = State::new();
    for ledger in commands().filter_map(Command::ledger_code).filter_map(|code| all.ledgers.get(&code)) {
        state.load_ledger(ledger.clone());
    }
    for transfer in commands().flat_map(Command::transfer_ids).filter_map(|id| all.transfers.get(&id)) {
        state.load_transfer(transfer.clone());
    }
    let accounts: Vec<AccountId> =
        commands().flat_map(Command::account_ids).chain(state.pending_account_ids()).collect();
    for account in accounts.iter().filter_map(|id| all.accounts.get(id)) {
        state.load_account(account.clone());
    }
    state
}

/// The hold a post, void or expiry names, as it stood before.
pub fn hold_of<'s>(before: &'s Snapshot, command: &Command) -> Option<&'s Transfer> {
    match command {
        Command::PostPending(r) | Command::VoidPending(r) => before.transfers.get(&r.pending_id),
        Command::ExpirePending(id) => before.transfers.get(id),
        _ => None,
    }
}

pub fn transfer_status(record: &Record) -> TransferStatus {
    match record {
        Record::Transfer(t) => t.status,
        _ => panic!("not a transfer: {record:?}"),
    }
}
