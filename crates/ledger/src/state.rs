//! The records one batch may read and change, and the record of what it changed.

use crate::event::{Emitted, Event};
use crate::invariant::{InvariantBroken, require, sound_balance};
use crate::model::{Account, Balance, Ledger, Transfer, TransferStatus};
use crate::scalar::{AccountId, LedgerCode, TraceParent, TransferId};
use crate::{Map, Set};

/// The slice of the ledger a batch works on: whatever the store loaded for it, plus what the batch
/// creates. It journals every change so an atomic submission can be rolled back.
#[derive(Debug, Default, Clone)]
pub struct State {
    ledgers: Map<LedgerCode, Ledger>,
    accounts: Map<AccountId, Account>,
    transfers: Map<TransferId, Transfer>,
    journal: Vec<Undo>,
    created_ledgers: Vec<LedgerCode>,
    created_accounts: Vec<AccountId>,
    created_transfers: Vec<TransferId>,
    resolved_transfers: Vec<TransferId>,
    events: Vec<Emitted>,
}

/// Everything one batch changed, ready to persist. Records appear as they stand at the end.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub ledgers: Vec<Ledger>,
    pub accounts_created: Vec<Account>,
    /// Accounts that existed before the batch and whose balance it changed, sorted by id.
    pub balances: Vec<Account>,
    pub transfers_created: Vec<Transfer>,
    /// Transfers that existed before the batch and whose status it changed, sorted by id.
    pub statuses: Vec<(TransferId, TransferStatus)>,
    pub events: Vec<Emitted>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.ledgers.is_empty()
            && self.accounts_created.is_empty()
            && self.balances.is_empty()
            && self.transfers_created.is_empty()
            && self.statuses.is_empty()
    }
}

/// One change, as the journal keeps it: what undoes it.
#[derive(Debug, Clone)]
pub(crate) enum Undo {
    Ledger(LedgerCode),
    Account(AccountId),
    Balance(AccountId, Balance),
    Transfer(TransferId),
    Status(TransferId, TransferStatus),
}

/// Where the journal and the change lists stood; see [`State::rollback`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    journal: usize,
    created_ledgers: usize,
    created_accounts: usize,
    created_transfers: usize,
    resolved_transfers: usize,
    events: usize,
}

impl State {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a record loaded from the store.
    pub fn load_ledger(&mut self, ledger: Ledger) {
        self.ledgers.insert(ledger.code, ledger);
    }

    pub fn load_account(&mut self, account: Account) {
        self.accounts.insert(account.id, account);
    }

    pub fn load_transfer(&mut self, transfer: Transfer) {
        self.transfers.insert(transfer.id, transfer);
    }

    pub fn ledger(&self, code: &LedgerCode) -> Option<&Ledger> {
        self.ledgers.get(code)
    }

    pub fn account(&self, id: &AccountId) -> Option<&Account> {
        self.accounts.get(id)
    }

    pub fn transfer(&self, id: &TransferId) -> Option<&Transfer> {
        self.transfers.get(id)
    }

    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    pub fn transfers(&self) -> impl Iterator<Item = &Transfer> {
        self.transfers.values()
    }

    /// The accounts of the loaded pending transfers: a post or void touches them, so the store
    /// loads (and on PostgreSQL locks) them along with the accounts the commands name.
    pub fn pending_account_ids(&self) -> impl Iterator<Item = AccountId> + '_ {
        self.transfers.values().filter(|t| t.pending).flat_map(|t| [t.debit_account_id, t.credit_account_id])
    }

    // The writes below are the only way the rules change the state. Each asserts what it
    // assumes: a record is created once, a balance it writes is sound, and only a hold that is
    // still pending changes status.

    pub(crate) fn insert_ledger(&mut self, ledger: Ledger) -> Result<(), InvariantBroken> {
        require(!self.ledgers.contains_key(&ledger.code), || {
            format!("ledger {} created twice", ledger.code)
        })?;
        self.journal.push(Undo::Ledger(ledger.code));
        self.created_ledgers.push(ledger.code);
        self.ledgers.insert(ledger.code, ledger);
        Ok(())
    }

    pub(crate) fn insert_account(&mut self, account: Account) -> Result<(), InvariantBroken> {
        require(!self.accounts.contains_key(&account.id), || {
            format!("account {} created twice", account.id)
        })?;
        sound_balance(account.id, account.flags, &account.balance)?;
        self.journal.push(Undo::Account(account.id));
        self.created_accounts.push(account.id);
        self.accounts.insert(account.id, account);
        Ok(())
    }

    pub(crate) fn set_balance(&mut self, id: AccountId, balance: Balance) -> Result<(), InvariantBroken> {
        let account = self
            .accounts
            .get_mut(&id)
            .ok_or_else(|| InvariantBroken::new(format!("account {id}: balance set but never loaded")))?;
        sound_balance(id, account.flags, &account.balance)?;
        sound_balance(id, account.flags, &balance)?;
        self.journal.push(Undo::Balance(id, account.balance));
        account.balance = balance;
        Ok(())
    }

    pub(crate) fn insert_transfer(&mut self, transfer: Transfer) -> Result<(), InvariantBroken> {
        require(!self.transfers.contains_key(&transfer.id), || {
            format!("transfer {} created twice", transfer.id)
        })?;
        self.journal.push(Undo::Transfer(transfer.id));
        self.created_transfers.push(transfer.id);
        self.transfers.insert(transfer.id, transfer);
        Ok(())
    }

    pub(crate) fn set_status(
        &mut self,
        id: TransferId,
        status: TransferStatus,
    ) -> Result<(), InvariantBroken> {
        let transfer = self
            .transfers
            .get_mut(&id)
            .ok_or_else(|| InvariantBroken::new(format!("transfer {id}: status set but never loaded")))?;
        require(
            transfer.pending && transfer.status == TransferStatus::Pending && status != transfer.status,
            || format!("transfer {id}: status {:?} may not become {status:?}", transfer.status),
        )?;
        self.journal.push(Undo::Status(id, transfer.status));
        self.resolved_transfers.push(id);
        transfer.status = status;
        Ok(())
    }

    pub(crate) fn emit(&mut self, event: Event) {
        self.events.push(Emitted { event, trace: None });
    }

    /// Gives the events emitted since `at` the trace of the submission that caused them.
    pub(crate) fn trace_events_since(&mut self, at: Checkpoint, trace: &Option<TraceParent>) {
        if trace.is_some() {
            self.events[at.events..].iter_mut().for_each(|emitted| emitted.trace.clone_from(trace));
        }
    }

    pub(crate) fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            journal: self.journal.len(),
            created_ledgers: self.created_ledgers.len(),
            created_accounts: self.created_accounts.len(),
            created_transfers: self.created_transfers.len(),
            resolved_transfers: self.resolved_transfers.len(),
            events: self.events.len(),
        }
    }

    /// The changes made since `at` and not undone, oldest first.
    pub(crate) fn journal_since(&self, at: Checkpoint) -> &[Undo] {
        self.journal.get(at.journal..).unwrap_or_default()
    }

    /// Undoes every change made since `at`, journal and change lists alike.
    pub(crate) fn rollback(&mut self, at: Checkpoint) {
        while self.journal.len() > at.journal {
            match self.journal.pop() {
                Some(Undo::Ledger(code)) => {
                    self.ledgers.remove(&code);
                }
                Some(Undo::Account(id)) => {
                    self.accounts.remove(&id);
                }
                Some(Undo::Balance(id, balance)) => {
                    if let Some(account) = self.accounts.get_mut(&id) {
                        account.balance = balance;
                    }
                }
                Some(Undo::Transfer(id)) => {
                    self.transfers.remove(&id);
                }
                Some(Undo::Status(id, status)) => {
                    if let Some(transfer) = self.transfers.get_mut(&id) {
                        transfer.status = status;
                    }
                }
                None => break,
            }
        }
        self.created_ledgers.truncate(at.created_ledgers);
        self.created_accounts.truncate(at.created_accounts);
        self.created_transfers.truncate(at.created_transfers);
        self.resolved_transfers.truncate(at.resolved_transfers);
        self.events.truncate(at.events);
    }

    /// Hands over what the batch changed and forgets it, keeping the records.
    pub fn take_changes(&mut self) -> Changes {
        let created_accounts: Set<AccountId> = self.created_accounts.iter().copied().collect();
        let created_transfers: Set<TransferId> = self.created_transfers.iter().copied().collect();

        // The journal holds exactly the changes not rolled back; its first balance entry for an
        // account is the balance it had before them. One that came back to it (a hold voided in
        // the same batch) did not change.
        let mut before: Map<AccountId, Balance> = Map::default();
        for undo in self.journal.drain(..) {
            if let Undo::Balance(id, balance) = undo {
                before.entry(id).or_insert(balance);
            }
        }
        let mut balances: Vec<Account> = before
            .into_iter()
            .filter(|(id, balance)| !created_accounts.contains(id) && self.accounts[id].balance != *balance)
            .map(|(id, _)| self.accounts[&id].clone())
            .collect();
        balances.sort_unstable_by_key(|a| a.id);
        let mut resolved: Vec<TransferId> = std::mem::take(&mut self.resolved_transfers)
            .into_iter()
            .filter(|id| !created_transfers.contains(id))
            .collect();
        resolved.sort_unstable();
        resolved.dedup();

        Changes {
            ledgers: std::mem::take(&mut self.created_ledgers)
                .iter()
                .map(|code| self.ledgers[code].clone())
                .collect(),
            accounts_created: std::mem::take(&mut self.created_accounts)
                .iter()
                .map(|id| self.accounts[id].clone())
                .collect(),
            balances,
            transfers_created: std::mem::take(&mut self.created_transfers)
                .iter()
                .map(|id| self.transfers[id].clone())
                .collect(),
            statuses: resolved.iter().map(|id| (*id, self.transfers[id].status)).collect(),
            events: std::mem::take(&mut self.events),
        }
    }
}
