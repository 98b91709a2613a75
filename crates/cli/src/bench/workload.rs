//! What the load generator sends: its own ledger and accounts, then transfers between accounts
//! chosen uniformly or all crediting one hot account, or reads of those accounts.

use std::borrow::Cow;

use anyhow::{Context, bail};
use rand::Rng;
use uuid::Uuid;

use super::BenchArgs;
use super::client::{Connection, Target};

pub struct Workload {
    pub ledger: String,
    pub accounts: Vec<Uuid>,
    pub hot: bool,
    pub batch: usize,
    /// GET one account per request instead of writing: the cheapest authenticated request the
    /// API serves, so that what a proxy in front of it adds is not hidden behind a commit.
    pub reads: bool,
}

impl Workload {
    /// Creates the ledger (idempotently) and `--accounts` fresh accounts over `--connections`
    /// connections.
    pub async fn set_up(target: &Target, args: &BenchArgs) -> anyhow::Result<Self> {
        let (ledger, count, connections) = (args.ledger.as_str(), args.accounts, args.connections);
        let mut admin = Connection::open(target).await?;
        let (status, body) = admin.post("/v1/ledgers", format!(r#"{{"code":"{ledger}","scale":2}}"#)).await?;
        if !status.is_success() {
            bail!("creating ledger {ledger} failed: {status} {}", String::from_utf8_lossy(&body));
        }
        let accounts: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
        let chunks: Vec<Vec<Uuid>> =
            accounts.chunks(count.div_ceil(connections.max(1))).map(<[_]>::to_vec).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in chunks {
            let target = target.clone();
            let ledger = ledger.to_owned();
            tasks.spawn(async move {
                let mut connection = Connection::open(&target).await?;
                for id in chunk {
                    let body = format!(r#"{{"id":"{id}","ledger":"{ledger}"}}"#);
                    let (status, body) = connection.post("/v1/accounts", body).await?;
                    if !status.is_success() {
                        bail!("creating an account failed: {status} {}", String::from_utf8_lossy(&body));
                    }
                }
                anyhow::Ok(())
            });
        }
        while let Some(result) = tasks.join_next().await {
            result.context("account setup task panicked")??;
        }
        Ok(Self { ledger: ledger.to_owned(), accounts, hot: args.hot, batch: args.batch, reads: args.reads })
    }

    /// Transfers one request carries when it succeeds: 0 for a read.
    pub fn transfers_per_request(&self) -> usize {
        if self.reads { 0 } else { self.batch }
    }

    /// The path and body of the next request; no body means a GET.
    pub fn next_request(&self, rng: &mut impl Rng) -> (Cow<'static, str>, Option<String>) {
        if self.reads {
            let id = self.accounts[rng.random_range(0..self.accounts.len())];
            return (format!("/v1/accounts/{id}").into(), None);
        }
        if self.batch <= 1 {
            return ("/v1/transfers".into(), Some(self.transfer(rng)));
        }
        let mut body = String::with_capacity(self.batch * 200 + 40);
        body.push_str(r#"{"atomic":false,"transfers":["#);
        for i in 0..self.batch {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&self.transfer(rng));
        }
        body.push_str("]}");
        ("/v1/transfers/batch".into(), Some(body))
    }

    fn transfer(&self, rng: &mut impl Rng) -> String {
        let n = self.accounts.len();
        let (debit, credit) = if self.hot {
            (rng.random_range(1..n), 0)
        } else {
            let debit = rng.random_range(0..n);
            (debit, (debit + rng.random_range(1..n)) % n)
        };
        format!(
            r#"{{"id":"{}","debit_account_id":"{}","credit_account_id":"{}","amount":1,"ledger":"{}"}}"#,
            Uuid::now_v7(),
            self.accounts[debit],
            self.accounts[credit],
            self.ledger
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_get_one_of_the_accounts_and_carry_no_transfer() {
        let accounts: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let workload =
            Workload { ledger: "L".into(), accounts: accounts.clone(), hot: false, batch: 1, reads: true };
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        for _ in 0..20 {
            let (path, body) = workload.next_request(&mut rng);
            assert!(body.is_none(), "a read has no body");
            let id = path.strip_prefix("/v1/accounts/").expect("a read is GET /v1/accounts/{id}");
            assert!(accounts.iter().any(|a| a.to_string() == id), "{id} is not one of the accounts");
        }
        assert_eq!(workload.transfers_per_request(), 0);
    }
}
