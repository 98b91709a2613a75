//! `coffer verify`: proves that the store's history and its tables agree, or names where not.
//!
//! A backend reads one consistent snapshot and feeds it here in a fixed order — the outbox's
//! chain ends, every outbox row by position, every transfer row, every account row — and the
//! [`Verifier`] checks, without trusting any of it:
//! - the outbox's hash chain: each event follows the one before, positions leave no gap, the
//!   last is the head (an edit, deletion, insertion or swap of events breaks it);
//! - the events against the tables: replaying the events gives every transfer as its row holds
//!   it and every account's four balance fields; an event with no row, or (when the outbox still
//!   holds the whole history) a row with no event, is named;
//! - the tables on their own: each account's balances are the sums of its transfers (pending
//!   ones against the open holds), each ledger's debits equal its credits, no account breaks
//!   its flags.

mod replay;

use std::collections::{HashMap, HashSet};

use coffer_ledger::{Account, AccountId, Balance, LedgerCode, Transfer, TransferStatus};
use serde::Serialize;

use crate::audit::{AuditHead, AuditRecord, key_target, link as audit_link};
use crate::chain::{ChainLink, OutboxChain};
use crate::{ApiKey, OutboxEvent};
use replay::Replay;

/// One thing that does not hold, naming the record it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Discrepancy {
    /// What kind of problem: `chain`, `gap`, `mismatch`, `missing`, `unexplained`,
    /// `unbalanced`, `constraint` or `undecodable`.
    pub kind: &'static str,
    /// The record: `outbox 42`, `transfer <id>`, `account <id>`, `ledger USD`.
    pub record: String,
    pub detail: String,
}

/// What was checked and what did not hold.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub events: u64,
    /// The stretch of the chain checked: from the anchor's position to the head's.
    pub chain_from: i64,
    pub chain_to: i64,
    /// Whether the outbox still holds every event ever written, so balances were recomputed
    /// from the events alone (else from the transfers table, and events only checked against it).
    pub whole_history: bool,
    pub transfers: u64,
    pub accounts: u64,
    pub ledgers: u64,
    pub audit_records: u64,
    pub keys: u64,
    pub discrepancies: Vec<Discrepancy>,
}

impl Report {
    pub fn holds(&self) -> bool {
        self.discrepancies.is_empty()
    }

    /// The one line a person reads.
    pub fn summary(&self) -> String {
        let history = if self.whole_history {
            "replayed from the events"
        } else {
            "from the transfers (outbox pruned)"
        };
        let verdict = if self.holds() {
            "verified".to_owned()
        } else {
            let n = self.discrepancies.len();
            format!("{n} {}", if n == 1 { "discrepancy" } else { "discrepancies" })
        };
        format!(
            "{verdict}: {} events (chain {}..{}), {} transfers, {} accounts (balances {history}), {} ledgers, \
             {} audit records, {} keys",
            self.events,
            self.chain_from,
            self.chain_to,
            self.transfers,
            self.accounts,
            self.ledgers,
            self.audit_records,
            self.keys
        )
    }
}

/// Checks a snapshot fed to it in order; see the module's documentation.
pub struct Verifier {
    report: Report,
    chain: OutboxChain,
    /// The last link checked: the next event must follow it.
    previous: ChainLink,
    replay: Replay,
    /// Balances summed from the transfers table, per account.
    from_transfers: HashMap<AccountId, Sums>,
    /// Per ledger: debits and credits, posted and pending, over the accounts table.
    ledgers: HashMap<LedgerCode, [u128; 4]>,
    /// The audit chain's last link checked.
    audit: AuditHead,
    /// The keys the audit trail says were made, and those it says were revoked.
    keys_made: HashSet<String>,
    keys_revoked: HashSet<String>,
}

/// An account's four totals, wide enough that no sum of valid rows overflows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sums {
    debits_pending: u128,
    debits_posted: u128,
    credits_pending: u128,
    credits_posted: u128,
}

impl Sums {
    fn of(balance: &Balance) -> Sums {
        Sums {
            debits_pending: balance.debits_pending.into(),
            debits_posted: balance.debits_posted.into(),
            credits_pending: balance.credits_pending.into(),
            credits_posted: balance.credits_posted.into(),
        }
    }

    /// The fields that differ, as `name: ours vs theirs`.
    fn differences(&self, other: &Sums) -> Vec<String> {
        [
            ("debits_pending", self.debits_pending, other.debits_pending),
            ("debits_posted", self.debits_posted, other.debits_posted),
            ("credits_pending", self.credits_pending, other.credits_pending),
            ("credits_posted", self.credits_posted, other.credits_posted),
        ]
        .into_iter()
        .filter(|(_, a, b)| a != b)
        .map(|(name, a, b)| format!("{name} {a} vs {b}"))
        .collect()
    }
}

impl Verifier {
    /// Starts a check of a snapshot whose outbox chain has these ends.
    pub fn new(chain: OutboxChain) -> Verifier {
        Verifier {
            report: Report {
                chain_from: chain.anchor.position,
                chain_to: chain.head.position,
                ..Report::default()
            },
            chain,
            previous: chain.anchor,
            replay: Replay::new(chain.anchor.position == 0),
            from_transfers: HashMap::new(),
            ledgers: HashMap::new(),
            audit: AuditHead { position: 0, hash: crate::chain::ChainHash::GENESIS },
            keys_made: HashSet::new(),
            keys_revoked: HashSet::new(),
        }
    }

    fn found(&mut self, kind: &'static str, record: String, detail: String) {
        self.report.discrepancies.push(Discrepancy { kind, record, detail });
    }

    /// The next outbox row, in position order, or why it could not be read.
    pub fn outbox_row(&mut self, row: Result<OutboxEvent, String>, position: i64) {
        let event = match row {
            Ok(event) => event,
            Err(why) => return self.found("undecodable", format!("outbox {position}"), why),
        };
        self.report.events += 1;
        if event.position == 1 {
            self.replay.whole = true;
        }
        // Rows at or below the anchor were written before the chain existed.
        if event.position > self.chain.anchor.position {
            self.link(&event);
        }
        if let Err(why) = self.replay.event(&event) {
            self.found("mismatch", format!("outbox {}", event.position), why);
        }
    }

    /// Checks that `event` follows the last link; a break is named once and the walk goes on
    /// from the event's stored link, so each edit is named where it is.
    fn link(&mut self, event: &OutboxEvent) {
        let record = format!("outbox {}", event.position);
        let expected = self.previous.position + 1;
        if event.position != expected {
            let detail = if event.position - 1 == expected {
                format!("position {expected} is missing: an event was deleted")
            } else {
                format!("positions {expected}..{} are missing: events were deleted", event.position - 1)
            };
            self.found("gap", record.clone(), detail);
        }
        let Some(hash) = event.hash else {
            self.found("chain", record, "the event has no chain hash".into());
            return;
        };
        if !event.follows(&self.previous.hash) {
            self.found(
                "chain",
                record,
                format!(
                    "its hash does not follow position {}'s: this event or one before it was edited, inserted or reordered",
                    self.previous.position
                ),
            );
        }
        self.previous = ChainLink { position: event.position, hash };
    }

    /// After the last outbox row: the chain must end at the head.
    pub fn outbox_done(&mut self) {
        let head = self.chain.head;
        if self.previous.position < head.position {
            self.found(
                "gap",
                format!("outbox {}", self.previous.position + 1),
                format!(
                    "the outbox ends at position {} but its head is at {}: the newest events were deleted",
                    self.previous.position, head.position
                ),
            );
        } else if self.previous != head {
            self.found(
                "chain",
                format!("outbox {}", self.previous.position),
                format!("the last event is not the chain's head ({head:?})"),
            );
        }
        self.report.whole_history = self.replay.whole;
    }

    /// The next transfer row, or why it could not be read.
    pub fn transfer_row(&mut self, row: Result<Transfer, String>, seq: i64) {
        let transfer = match row {
            Ok(transfer) => transfer,
            Err(why) => return self.found("undecodable", format!("transfer row {seq}"), why),
        };
        self.report.transfers += 1;
        self.sum_transfer(&transfer);
        let record = format!("transfer {}", transfer.id.0);
        match self.replay.take_transfer(transfer.id) {
            Some((expected, position)) if expected != transfer => {
                let detail = differences(&expected, &transfer);
                self.found(
                    "mismatch",
                    record,
                    format!("the row differs from its events (last at position {position}): {detail}"),
                );
            }
            Some(_) => {}
            None if self.report.whole_history => self.found(
                "unexplained",
                record,
                "the row has no event: it was written behind the API".into(),
            ),
            None => {}
        }
    }

    fn sum_transfer(&mut self, t: &Transfer) {
        let amount = u128::from(t.amount.get());
        let (pending, posted) = match (t.pending, t.status) {
            (true, TransferStatus::Pending) => (amount, 0),
            (false, TransferStatus::Posted) => (0, amount),
            _ => (0, 0),
        };
        let debit = self.from_transfers.entry(t.debit_account_id).or_default();
        debit.debits_pending += pending;
        debit.debits_posted += posted;
        let credit = self.from_transfers.entry(t.credit_account_id).or_default();
        credit.credits_pending += pending;
        credit.credits_posted += posted;
    }

    /// The next account row, or why it could not be read.
    pub fn account_row(&mut self, row: Result<Account, String>, seq: i64) {
        let account = match row {
            Ok(account) => account,
            Err(why) => return self.found("undecodable", format!("account row {seq}"), why),
        };
        self.report.accounts += 1;
        let record = format!("account {}", account.id.0);
        let table = Sums::of(&account.balance);
        let summed = self.from_transfers.remove(&account.id).unwrap_or_default();
        let differ = table.differences(&summed);
        if !differ.is_empty() {
            self.found(
                "mismatch",
                record.clone(),
                format!("balances in the table vs summed from its transfers: {}", differ.join(", ")),
            );
        }
        match self.replay.take_account(account.id) {
            Some((expected, replayed, position)) => {
                let static_fields = Account { balance: account.balance, ..expected };
                if static_fields != account {
                    let detail = differences(&static_fields, &account);
                    self.found(
                        "mismatch",
                        record.clone(),
                        format!("the row differs from its event (position {position}): {detail}"),
                    );
                }
                let differ = table.differences(&replayed);
                if self.report.whole_history && !differ.is_empty() {
                    self.found(
                        "mismatch",
                        record.clone(),
                        format!("balances in the table vs replayed from the events: {}", differ.join(", ")),
                    );
                }
            }
            None if self.report.whole_history => self.found(
                "unexplained",
                record.clone(),
                "the row has no event: it was written behind the API".into(),
            ),
            None => {}
        }
        self.check_flags(&account, &record);
        let sums = self.ledgers.entry(account.ledger).or_default();
        sums[0] += table.debits_posted;
        sums[1] += table.credits_posted;
        sums[2] += table.debits_pending;
        sums[3] += table.credits_pending;
    }

    fn check_flags(&mut self, account: &Account, record: &str) {
        let b = Sums::of(&account.balance);
        if account.flags.debits_must_not_exceed_credits
            && b.debits_pending + b.debits_posted > b.credits_posted
        {
            self.found(
                "constraint",
                record.to_owned(),
                "debits exceed credits although its flags forbid it".into(),
            );
        }
        if account.flags.credits_must_not_exceed_debits
            && b.credits_pending + b.credits_posted > b.debits_posted
        {
            self.found(
                "constraint",
                record.to_owned(),
                "credits exceed debits although its flags forbid it".into(),
            );
        }
    }

    /// The next audit record, in position order, or why it could not be read.
    pub fn audit_row(&mut self, row: Result<AuditRecord, String>, position: i64) {
        let record = match row {
            Ok(record) => record,
            Err(why) => return self.found("undecodable", format!("audit {position}"), why),
        };
        self.report.audit_records += 1;
        let name = format!("audit {}", record.position);
        let expected = self.audit.position + 1;
        if record.position != expected {
            self.found(
                "gap",
                name.clone(),
                format!("audit records {expected}..{} are missing: deleted", record.position - 1),
            );
        }
        if audit_link(&self.audit.hash, &record) != record.hash {
            self.found(
                "chain",
                name,
                format!("its hash does not follow record {}'s: this record or one before it was edited, inserted or reordered", self.audit.position),
            );
        }
        if record.outcome == "succeeded" {
            match record.action.as_str() {
                "key.created" => {
                    self.keys_made.insert(record.target.clone());
                }
                "key.rotated" => {
                    if let Some(new) = record.details.get("new_key_id").and_then(|v| v.as_str()) {
                        self.keys_made.insert(format!("key:{new}"));
                    }
                }
                "key.revoked" => {
                    self.keys_revoked.insert(record.target.clone());
                }
                // The keys a store held when its trail began: made (and revoked) before it.
                "keys.adopted" => {
                    let adopted = record.details.get("keys").and_then(|v| v.as_array()).into_iter().flatten();
                    for key in adopted {
                        let Some(id) = key.get("id").and_then(|v| v.as_str()) else { continue };
                        self.keys_made.insert(format!("key:{id}"));
                        if key.get("revoked").and_then(|v| v.as_bool()) == Some(true) {
                            self.keys_revoked.insert(format!("key:{id}"));
                        }
                    }
                }
                _ => {}
            }
        }
        self.audit = AuditHead { position: record.position, hash: record.hash };
    }

    /// After the last audit record: the chain must end at the head.
    pub fn audit_done(&mut self, head: AuditHead) {
        if self.audit.position < head.position {
            self.found(
                "gap",
                format!("audit {}", self.audit.position + 1),
                format!(
                    "the audit trail ends at {} but its head is at {}: the newest records were deleted",
                    self.audit.position, head.position
                ),
            );
        } else if self.audit != head {
            self.found(
                "chain",
                format!("audit {}", self.audit.position),
                "the last record is not the trail's head".into(),
            );
        }
    }

    /// The next API key: its creation (and revocation) must be in the audit trail.
    pub fn key_row(&mut self, row: Result<ApiKey, String>) {
        let key = match row {
            Ok(key) => key,
            Err(why) => return self.found("undecodable", "api key".into(), why),
        };
        self.report.keys += 1;
        let target = key_target(key.id);
        if !self.keys_made.contains(&target) {
            self.found(
                "unexplained",
                target.clone(),
                "no audit record made this key: it was written behind the API".into(),
            );
        }
        if key.revoked_at.is_some() && !self.keys_revoked.contains(&target) {
            self.found("unexplained", target, "the key is revoked but no audit record says so".into());
        }
    }

    /// The verdict, once every row was fed.
    pub fn finish(mut self) -> Report {
        for (id, sums) in std::mem::take(&mut self.from_transfers) {
            self.found(
                "missing",
                format!("account {}", id.0),
                format!("transfers move money on it ({sums:?}) but it has no row"),
            );
        }
        for (id, position) in self.replay.left_transfers() {
            self.found(
                "missing",
                format!("transfer {}", id.0),
                format!("its event (position {position}) has no row: the row was deleted"),
            );
        }
        for (id, position) in self.replay.left_accounts() {
            self.found(
                "missing",
                format!("account {}", id.0),
                format!("its event (position {position}) has no row: the row was deleted"),
            );
        }
        let mut ledgers: Vec<_> = self.ledgers.into_iter().collect();
        ledgers.sort_by_key(|(code, _)| code.as_str().to_owned());
        for (code, [debits, credits, debits_pending, credits_pending]) in &ledgers {
            if debits != credits || debits_pending != credits_pending {
                self.report.discrepancies.push(Discrepancy {
                    kind: "unbalanced",
                    record: format!("ledger {}", code.as_str()),
                    detail: format!(
                        "posted debits {debits} vs credits {credits}, pending debits {debits_pending} vs credits {credits_pending}"
                    ),
                });
            }
        }
        self.report.ledgers = ledgers.len() as u64;
        self.report
    }
}

/// The fields of two records' JSON forms that differ, as `field: expected → found`.
fn differences<T: Serialize>(expected: &T, found: &T) -> String {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(expected), serde_json::to_value(found))
    else {
        return "the records differ".into();
    };
    let mut fields: Vec<String> = a
        .iter()
        .filter(|(key, value)| b.get(*key) != Some(value))
        .map(|(key, value)| {
            format!(
                "{key}: {value} in the events, {} in the table",
                b.get(key).unwrap_or(&serde_json::Value::Null)
            )
        })
        .collect();
    fields.sort();
    fields.join("; ")
}

/// Where a long verification is: a progress bar on a terminal, nothing elsewhere.
pub trait Progress: Send + Sync {
    /// A new stage begins, of about `total` rows.
    fn stage(&self, name: &'static str, total: u64);
    /// `rows` more rows of the stage are done.
    fn advance(&self, rows: u64);
}

/// No progress shown.
pub struct Silent;

impl Progress for Silent {
    fn stage(&self, _: &'static str, _: u64) {}
    fn advance(&self, _: u64) {}
}
