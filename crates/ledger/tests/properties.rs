//! Property tests of the ledger core.
//!
//! A scenario is a random sequence of steps, each one `apply` call of one or two submissions
//! (atomic or not) over a few ledgers and a handful of accounts, some of them constrained: amounts
//! up to 2^63−1, holds with and without timeouts, full, partial and excessive posts, voids,
//! expiries at an advancing `now`, and ids used again with the same or different fields.
//!
//! Every command is also applied alone on a copy of the state. After each command and each step
//! the state is checked against what can be known without the rules' code: balances recomputed
//! from the transfers, double entry per ledger, flags and limits, the reason given for every
//! refusal, idempotent replays, atomicity, determinism, and `take_changes` persisted into a second
//! copy that must equal the live state. The core's own assertions run on every one of those
//! calls and must never fire: the workloads are valid, so a broken invariant is a false alarm.

#[path = "properties/checks.rs"]
mod checks;
#[path = "properties/generate.rs"]
mod generate;

use std::cell::RefCell;
use std::collections::BTreeMap;

use coffer_ledger::{
    Changes, Command, Emitted, Event, NewLedger, Outcome, Record, RejectCode, Scale, State, Submission,
    Timestamp, TraceParent, apply,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use checks::*;
use generate::*;

const START_US: i64 = 1_700_000_000_000_000;
const STEPS: usize = 40;

/// One `apply` call as it went, to replay it.
struct Logged {
    now: Timestamp,
    submissions: Vec<Submission>,
    outcomes: Vec<Vec<Outcome>>,
    changes: Option<Changes>,
}

struct Run<'a> {
    /// The state under test, fed whole steps.
    state: State,
    /// What `take_changes` handed over so far, persisted.
    stored: Snapshot,
    now: Timestamp,
    /// The command that created each record.
    creators: BTreeMap<Key, Command>,
    /// Every command issued that names a record of its own, for `Op::Repeat`.
    issued: Vec<Command>,
    /// The events expected in the next `take_changes`, each with its submission's trace.
    events: Vec<Emitted>,
    log: Vec<Logged>,
    seen: &'a RefCell<BTreeMap<&'static str, usize>>,
}

impl<'a> Run<'a> {
    fn new(seen: &'a RefCell<BTreeMap<&'static str, usize>>) -> Self {
        Self {
            state: State::new(),
            stored: Snapshot::default(),
            now: Timestamp::from_micros(START_US),
            creators: BTreeMap::new(),
            issued: Vec::new(),
            events: Vec::new(),
            log: Vec::new(),
            seen,
        }
    }

    fn scenario(mut self, steps: &[Step]) {
        let scale = Scale::try_from(2).unwrap();
        let mut prelude: Vec<Command> =
            (0..2).map(|l| Command::CreateLedger(NewLedger { code: ledger_code(l), scale })).collect();
        prelude.extend((0..PRELUDE_ACCOUNTS).map(|i| Command::CreateAccount(template_account(i))));
        self.issued.extend(prelude.iter().cloned());
        self.step(vec![Submission::new(prelude, false)], true);

        for (i, step) in steps.iter().enumerate() {
            self.now = Timestamp::from_micros(self.now.as_micros() + step.advance_us);
            let submissions: Vec<Submission> = step
                .submissions
                .iter()
                .enumerate()
                .map(|(j, (ops, atomic))| {
                    let at = Now { state: &self.state, issued: &self.issued, now: self.now };
                    Submission::new(ops.iter().map(|op| concrete(op, &at)).collect(), *atomic)
                        .traced(trace_of(i, j))
                })
                .collect();
            self.issued
                .extend(submissions.iter().flat_map(|s| &s.commands).filter(|c| key(c).is_some()).cloned());
            self.step(submissions, step.take_changes || i + 1 == steps.len());
        }
        self.check_resubmitting_gives_exists();
        self.check_replay();
    }

    /// Applies one step, checks it against its commands applied one at a time, then the invariants
    /// and, if the step takes them, the changes.
    fn step(&mut self, submissions: Vec<Submission>, take: bool) {
        let mut reference = self.state.clone();
        reference.take_changes();
        let expected: Vec<Vec<Outcome>> =
            submissions.iter().map(|s| self.one_at_a_time(&mut reference, s)).collect();

        let before = Snapshot::of(&self.state);
        let outcomes = applied(&mut self.state, &submissions, self.now);
        assert_eq!(outcomes, expected, "a step must answer as its commands applied one at a time");
        let snapshot = Snapshot::of(&self.state);
        assert_eq!(
            snapshot,
            Snapshot::of(&reference),
            "a step must leave what its commands one at a time leave"
        );
        check_invariants(&snapshot);

        // As the store runs it: on only the records the commands say they need.
        let mut loaded = load_for(&before, &submissions);
        assert_eq!(applied(&mut loaded, &submissions, self.now), outcomes, "on the records a step loads");
        let mut stored = before;
        stored.persist(&loaded.take_changes());
        assert_eq!(stored, snapshot, "the changes of a step on the records it loads");

        let changes = take.then(|| {
            let changes = self.state.take_changes();
            self.stored.persist(&changes);
            assert_eq!(self.stored, snapshot, "persisted changes must give the live state");
            assert_eq!(changes.events, std::mem::take(&mut self.events), "events of the changes");
            changes
        });
        self.log.push(Logged { now: self.now, submissions, outcomes, changes });
    }

    /// Applies a submission's commands one by one on `reference`, undoing them all (by restoring a
    /// copy) if it is atomic and one failed. Returns the outcomes the submission must give.
    fn one_at_a_time(&mut self, reference: &mut State, submission: &Submission) -> Vec<Outcome> {
        let at_start = reference.clone();
        let creators_at_start = self.creators.clone();
        let mut outcomes = Vec::new();
        let mut events = Vec::new();
        for command in &submission.commands {
            let (outcome, emitted) = self.apply_alone(reference, command);
            if let (Some(key), Outcome::Created(_)) = (key(command), &outcome) {
                assert!(self.creators.insert(key, command.clone()).is_none(), "{key:?} created twice");
            }
            outcomes.push(outcome);
            events.extend(emitted);
        }
        let failed = outcomes.iter().any(|o| matches!(o, Outcome::Rejected(_)));
        if submission.atomic && failed {
            *reference = at_start;
            self.creators = creators_at_start;
            self.count("atomic_undone");
            for outcome in outcomes.iter_mut().filter(|o| !matches!(o, Outcome::Rejected(_))) {
                *outcome = Outcome::Rejected(RejectCode::LinkedItemFailed);
                self.count(RejectCode::LinkedItemFailed.as_str());
            }
            return outcomes;
        }
        self.events
            .extend(events.into_iter().map(|event| Emitted { event, trace: submission.trace.clone() }));
        outcomes
    }

    /// Applies one command alone and checks everything about its outcome; returns it and the events
    /// it emitted.
    fn apply_alone(&mut self, state: &mut State, command: &Command) -> (Outcome, Vec<Event>) {
        let before = Snapshot::of(state);
        let outcomes = applied(state, &[Submission::one(command.clone())], self.now);
        let [outcome] = <[Vec<Outcome>; 1]>::try_from(outcomes).expect("one outcome list per submission");
        let [outcome] = <[Outcome; 1]>::try_from(outcome).expect("one outcome per command");
        let after = Snapshot::of(state);
        let changes = state.take_changes();
        let mut stored = before.clone();
        stored.persist(&changes);
        assert_eq!(stored, after, "the changes of {command:?} must give the state after it");
        check_outcome(&before, command, &outcome, &after, self.now, &self.creators);
        check_invariants(&after);
        let events = expected_events(command, &outcome, &after);
        let emitted: Vec<&Event> = changes.events.iter().map(|emitted| &emitted.event).collect();
        assert_eq!(emitted, events.iter().collect::<Vec<_>>(), "events of {command:?}");
        assert!(changes.events.iter().all(|emitted| emitted.trace.is_none()), "an untraced command's events");
        self.count(label(command, &outcome, &before));
        (outcome, events)
    }

    fn check_resubmitting_gives_exists(&self) {
        let mut copy = self.state.clone();
        let before = Snapshot::of(&copy);
        let later = Timestamp::from_micros(self.now.as_micros() + 86_400_000_000);
        let commands: Vec<Command> = self.creators.values().cloned().collect();
        let outcomes = applied(&mut copy, &[Submission::new(commands.clone(), true)], later);
        for (command, outcome) in commands.iter().zip(&outcomes[0]) {
            let record = before.record(key(command).unwrap());
            assert_eq!(Some(outcome), record.map(Outcome::Exists).as_ref(), "resubmitting {command:?}");
        }
        assert_eq!(Snapshot::of(&copy), before, "resubmitting changed the state");
        assert_eq!(copy.take_changes(), Changes::default(), "resubmitting reported changes");
    }

    fn check_replay(&self) {
        let mut fresh = State::new();
        for logged in &self.log {
            let outcomes = applied(&mut fresh, &logged.submissions, logged.now);
            assert_eq!(outcomes, logged.outcomes, "a replay must answer the same");
            if let Some(changes) = &logged.changes {
                assert_eq!(&fresh.take_changes(), changes, "a replay must change the same");
            }
        }
        assert_eq!(Snapshot::of(&fresh), Snapshot::of(&self.state), "a replay must end in the same state");
    }

    fn count(&self, label: &'static str) {
        *self.seen.borrow_mut().entry(label).or_default() += 1;
    }
}

/// `apply`, whose assertions must hold on every valid workload.
fn applied(state: &mut State, submissions: &[Submission], now: Timestamp) -> Vec<Vec<Outcome>> {
    apply(state, submissions, now)
        .unwrap_or_else(|broken| panic!("an assertion fired on a valid workload: {broken}"))
}

/// What kind of outcome this was, to check the scenarios reach every rule.
fn label(command: &Command, outcome: &Outcome, before: &Snapshot) -> &'static str {
    match (outcome, command) {
        (Outcome::Rejected(code), _) => code.as_str(),
        (Outcome::Exists(_), _) => "exists",
        (Outcome::Created(_), Command::CreateLedger(_)) => "created_ledger",
        (Outcome::Created(_), Command::CreateAccount(_)) => "created_account",
        (Outcome::Created(_), Command::CreateTransfer(t)) => match t.pending {
            None => "created_posted",
            Some(None) => "created_hold",
            Some(Some(_)) => "created_hold_with_timeout",
        },
        (Outcome::Created(Record::Transfer(t)), Command::PostPending(r)) => {
            if t.amount < before.transfers[&r.pending_id].amount { "posted_part" } else { "posted_all" }
        }
        (Outcome::Created(_), Command::PostPending(_)) => "posted_all",
        (Outcome::Created(_), Command::VoidPending(_)) => "voided",
        (Outcome::Created(_), Command::ExpirePending(_)) => "expired",
    }
}

#[test]
fn random_command_sequences_keep_every_invariant() {
    let seen = RefCell::new(BTreeMap::new());
    // 256 scenarios keep the debug run to a few seconds; PROPTEST_CASES runs more.
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256);
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let scenarios = prop::collection::vec(step(), 1..=STEPS);
    let result = TestRunner::new(config).run(&scenarios, |steps| {
        Run::new(&seen).scenario(&steps);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }

    // The scenarios must reach every rule, or the checks above prove little.
    let seen = seen.into_inner();
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
    let others = [
        "exists",
        "created_ledger",
        "created_account",
        "created_posted",
        "created_hold",
        "created_hold_with_timeout",
        "posted_all",
        "posted_part",
        "voided",
        "expired",
        "atomic_undone",
    ];
    for label in codes.iter().map(|c| c.as_str()).chain(others) {
        assert!(seen.get(label).is_some_and(|n| *n > 0), "no scenario reached {label}: {seen:?}");
    }
}

/// The trace of submission `j` of step `i`: every other one has none, so events of traced and
/// untraced submissions meet in one batch.
fn trace_of(i: usize, j: usize) -> Option<TraceParent> {
    let value = format!("00-{:032x}-{:016x}-01", i + 1, j + 1);
    (j % 2 == i % 2).then(|| TraceParent::try_from(value.as_str()).expect("a valid traceparent"))
}
