//! Replaying the outbox: what every transfer and account must look like, and — when the outbox
//! holds the whole history — every account's four balance fields, from the events alone.

use std::collections::HashMap;

use coffer_ledger::{Account, AccountId, Transfer, TransferId, TransferStatus};

use super::Sums;
use crate::OutboxEvent;

#[derive(Default)]
pub(super) struct Replay {
    /// Whether the events start at the first one ever written; balances are replayed only then.
    pub whole: bool,
    /// Each transfer as its last event shows it, and that event's position.
    transfers: HashMap<TransferId, (Transfer, i64)>,
    /// Each account as its creation event shows it, and that event's position.
    accounts: HashMap<AccountId, (Account, i64)>,
    /// Balances the events moved, per account.
    balances: HashMap<AccountId, Sums>,
}

impl Replay {
    /// A replay that starts with the first event ever written when `whole`.
    pub fn new(whole: bool) -> Replay {
        Replay { whole, ..Replay::default() }
    }

    /// Applies one event; an error says why it cannot follow the ones before.
    pub fn event(&mut self, event: &OutboxEvent) -> Result<(), String> {
        let decode = |what| format!("its data is not a {what}");
        match event.kind.as_str() {
            "coffer.account.created" => {
                let account: Account = serde_json::from_str(&event.data).map_err(|_| decode("account"))?;
                if self.accounts.insert(account.id, (account, event.position)).is_some() {
                    return Err("the account was created twice".into());
                }
            }
            "coffer.transfer.created" => {
                let transfer: Transfer = serde_json::from_str(&event.data).map_err(|_| decode("transfer"))?;
                if self.transfers.contains_key(&transfer.id) {
                    return Err("the transfer was created twice".into());
                }
                self.created(&transfer);
                self.transfers.insert(transfer.id, (transfer, event.position));
            }
            "coffer.transfer.posted" | "coffer.transfer.voided" | "coffer.transfer.expired" => {
                let hold: Transfer = serde_json::from_str(&event.data).map_err(|_| decode("transfer"))?;
                match self.transfers.get(&hold.id) {
                    Some((before, _)) if before.status != TransferStatus::Pending => {
                        return Err(format!("the hold {} was released twice", hold.id.0));
                    }
                    None if self.whole => return Err(format!("the hold {} was never created", hold.id.0)),
                    _ => {}
                }
                self.released(&hold)?;
                self.transfers.insert(hold.id, (hold, event.position));
            }
            // Events about other things (the audit trail) move no money.
            _ => {}
        }
        Ok(())
    }

    /// A new transfer: a hold moves its amount into the pending totals, a posted transfer (or
    /// the post of a hold) into the posted ones, a void's record moves nothing.
    fn created(&mut self, t: &Transfer) {
        if !self.whole {
            return;
        }
        let amount = u128::from(t.amount.get());
        let pending = t.pending && t.status == TransferStatus::Pending;
        let posted = !t.pending && t.status == TransferStatus::Posted;
        let debit = self.balances.entry(t.debit_account_id).or_default();
        if pending {
            debit.debits_pending += amount;
        } else if posted {
            debit.debits_posted += amount;
        }
        let credit = self.balances.entry(t.credit_account_id).or_default();
        if pending {
            credit.credits_pending += amount;
        } else if posted {
            credit.credits_posted += amount;
        }
    }

    /// A hold posted, voided or expired: its whole amount leaves the pending totals (what a
    /// post moves to the posted ones is its own transfer's event).
    fn released(&mut self, hold: &Transfer) -> Result<(), String> {
        if !self.whole {
            return Ok(());
        }
        let amount = u128::from(hold.amount.get());
        let short = || format!("releasing hold {} takes more than is pending", hold.id.0);
        let debit = self.balances.entry(hold.debit_account_id).or_default();
        debit.debits_pending = debit.debits_pending.checked_sub(amount).ok_or_else(short)?;
        let credit = self.balances.entry(hold.credit_account_id).or_default();
        credit.credits_pending = credit.credits_pending.checked_sub(amount).ok_or_else(short)?;
        Ok(())
    }

    /// The transfer as its events say it must be, once: what is left at the end has no row.
    pub fn take_transfer(&mut self, id: TransferId) -> Option<(Transfer, i64)> {
        self.transfers.remove(&id)
    }

    /// The account as its creation event says, its replayed balances, and the event's position.
    pub fn take_account(&mut self, id: AccountId) -> Option<(Account, Sums, i64)> {
        let (account, position) = self.accounts.remove(&id)?;
        Some((account, self.balances.remove(&id).unwrap_or_default(), position))
    }

    pub fn left_transfers(&self) -> Vec<(TransferId, i64)> {
        let mut left: Vec<_> = self.transfers.iter().map(|(id, (_, position))| (*id, *position)).collect();
        left.sort_by_key(|(_, position)| *position);
        left
    }

    pub fn left_accounts(&self) -> Vec<(AccountId, i64)> {
        let mut left: Vec<_> = self.accounts.iter().map(|(id, (_, position))| (*id, *position)).collect();
        left.sort_by_key(|(_, position)| *position);
        left
    }
}
