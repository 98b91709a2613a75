//! What the load generator sends: its own ledger and accounts, then transfers between accounts
//! chosen uniformly or all crediting one hot account.

use anyhow::{Context, bail};
use rand::Rng;
use uuid::Uuid;

use super::client::{Connection, Target};

pub struct Workload {
    pub ledger: String,
    pub accounts: Vec<Uuid>,
    pub hot: bool,
    pub batch: usize,
}

impl Workload {
    /// Creates the ledger (idempotently) and `count` fresh accounts over `connections` connections.
    pub async fn set_up(
        target: &Target,
        ledger: &str,
        count: usize,
        hot: bool,
        batch: usize,
        connections: usize,
    ) -> anyhow::Result<Self> {
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
        Ok(Self { ledger: ledger.to_owned(), accounts, hot, batch })
    }

    /// The path and body of the next request.
    pub fn next_request(&self, rng: &mut impl Rng) -> (&'static str, String) {
        if self.batch <= 1 {
            return ("/v1/transfers", self.transfer(rng));
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
        ("/v1/transfers/batch", body)
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
