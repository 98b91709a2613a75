//! After a random concurrent workload (transfers, holds, posts, voids, expiries, atomic and plain
//! batches), the database itself must balance: per ledger, debits equal credits; every account's
//! balance equals the sum of its transfers; every transfer and expiry has its event.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_ledger::{AccountId, Command, Outcome, Record, Submission, TransferId};
use coffer_store::{Books, PageRequest, SqliteStore, Store, StoreConfig, TransferFilter};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct World {
    usd: Vec<AccountId>,
    eur: Vec<AccountId>,
    holds: Mutex<Vec<TransferId>>,
}

fn pick(rng: &mut StdRng, accounts: &[AccountId]) -> (AccountId, AccountId) {
    let a = rng.random_range(0..accounts.len());
    let b = (a + rng.random_range(1..accounts.len())) % accounts.len();
    (accounts[a], accounts[b])
}

fn random_transfer(rng: &mut StdRng, world: &World) -> Command {
    let (ledger, accounts) = if rng.random_bool(0.8) { ("USD", &world.usd) } else { ("EUR", &world.eur) };
    let (debit, credit) = pick(rng, accounts);
    let n = rng.random_range(1..500);
    match rng.random_range(0..4) {
        0 => hold(TransferId::generate(), debit, credit, n, ledger, Some(1)),
        1 => hold(TransferId::generate(), debit, credit, n, ledger, None),
        _ => transfer(TransferId::generate(), debit, credit, n, ledger),
    }
}

async fn worker(store: Arc<SqliteStore>, world: Arc<World>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sent: Vec<Command> = Vec::new();
    for _ in 0..150 {
        let submission = match rng.random_range(0..12) {
            // A client retrying: the same commands again, alone or among new ones.
            10 | 11 if !sent.is_empty() => {
                let mut commands: Vec<Command> = (0..rng.random_range(1..4))
                    .map(|_| sent[rng.random_range(0..sent.len())].clone())
                    .collect();
                commands.push(random_transfer(&mut rng, &world));
                Submission::new(commands, rng.random_bool(0.3))
            }
            0..=4 => Submission::one(random_transfer(&mut rng, &world)),
            5 | 6 => {
                let pending = world.holds.lock().unwrap().pop();
                let Some(pending) = pending else { continue };
                let command = match rng.random_range(0..3) {
                    0 => void(TransferId::generate(), pending),
                    1 => post(TransferId::generate(), pending, None),
                    _ => post(TransferId::generate(), pending, Some(rng.random_range(1..300))),
                };
                Submission::one(command)
            }
            7 => Submission::new((0..3).map(|_| random_transfer(&mut rng, &world)).collect(), true),
            _ => Submission::new((0..20).map(|_| random_transfer(&mut rng, &world)).collect(), false),
        };
        sent.extend(submission.commands.iter().cloned());
        let outcomes = store.submit(submission).await.expect("submit");
        for outcome in outcomes {
            if let Outcome::Created(Record::Transfer(t)) = outcome
                && t.pending
            {
                world.holds.lock().unwrap().push(t.id);
            }
        }
    }
}

async fn build_world(store: &dyn Store) -> World {
    let usd = setup(store, 3).await;
    created(store, ledger("EUR")).await;
    let mut eur = Vec::new();
    for _ in 0..3 {
        let id = AccountId::generate();
        created(store, account(id, "EUR", None)).await;
        eur.push(id);
    }
    let mut world = World { usd, eur, holds: Mutex::default() };
    // Wallets that cannot overdraw, funded by the first account.
    for _ in 0..5 {
        let id = AccountId::generate();
        created(store, wallet(id, "USD")).await;
        created(store, transfer(TransferId::generate(), world.usd[0], id, 5_000, "USD")).await;
        world.usd.push(id);
    }
    world
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_balances_after_a_random_workload() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig { expiry_interval_ms: 100, ..StoreConfig::default() };
    let store = open_with(dir.path(), config).await;
    let world = Arc::new(build_world(store.as_ref()).await);
    let mut workers = tokio::task::JoinSet::new();
    for seed in 0..8 {
        workers.spawn(worker(store.clone(), world.clone(), seed));
    }
    workers.join_all().await;

    // A few holds nobody resolves, to be sure expiry took part.
    let (a, b) = (world.usd[1], world.usd[2]);
    for _ in 0..5 {
        created(store.as_ref(), hold(TransferId::generate(), a, b, 1, "USD", Some(1))).await;
    }
    let conn = rusqlite::Connection::open(dir.path().join("coffer.db")).unwrap();
    let started = Instant::now();
    while scalar(&conn, "SELECT count(*) FROM transfers WHERE status = 'pending' AND timeout_at IS NOT NULL")
        > 0
    {
        assert!(started.elapsed() < Duration::from_secs(10), "holds did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check_listings(store.as_ref(), &conn, &world).await;
    store.shutdown().await;

    check_double_entry(&conn);
    check_balances_match_transfers(&conn);
    check_events(&conn);
}

/// Every account's listing, page by page, is exactly its transfers on either side in order.
async fn check_listings(store: &SqliteStore, conn: &rusqlite::Connection, world: &World) {
    for account in world.usd.iter().chain(&world.eur) {
        let mut stmt = conn
            .prepare(
                "SELECT id FROM transfers WHERE debit_account_id = ?1 OR credit_account_id = ?1 ORDER BY seq",
            )
            .unwrap();
        let expected: Vec<TransferId> = stmt
            .query_map([account.0.as_bytes()], |r| Ok(TransferId(uuid::Uuid::from_bytes(r.get(0)?))))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut listed = Vec::new();
        let mut after = None;
        loop {
            let filter = TransferFilter { account_id: Some(*account), ledger: None };
            let page = store.transfers(filter, PageRequest::new(Some(37), after).unwrap()).await.unwrap();
            listed.extend(page.items.iter().map(|t| t.id));
            match page.next_cursor {
                Some(cursor) => after = Some(cursor),
                None => break,
            }
        }
        assert_eq!(listed, expected);
    }
}

fn scalar(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn check_double_entry(conn: &rusqlite::Connection) {
    let mut stmt = conn
        .prepare(
            "SELECT ledger, sum(debits_posted), sum(credits_posted), sum(debits_pending), sum(credits_pending) \
             FROM accounts GROUP BY ledger",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .unwrap();
    let mut ledgers = 0;
    for row in rows {
        let (ledger, dp, cp, dh, ch): (String, i64, i64, i64, i64) = row.unwrap();
        assert_eq!(dp, cp, "posted totals differ on {ledger}");
        assert_eq!(dh, ch, "pending totals differ on {ledger}");
        assert!(dp > 0, "{ledger} saw no posted money");
        ledgers += 1;
    }
    assert_eq!(ledgers, 2);
}

/// A posted transfer (plain or a post) counts in the posted totals; an unresolved hold in the
/// pending ones; a resolved hold, a void and an expired hold count nowhere any more.
fn check_balances_match_transfers(conn: &rusqlite::Connection) {
    let sum = |side: &str, pending: bool| {
        let (flag, status) = if pending { (1, "pending") } else { (0, "posted") };
        format!(
            "(SELECT coalesce(sum(amount), 0) FROM transfers t \
              WHERE t.{side}_account_id = a.id AND t.pending = {flag} AND t.status = '{status}')"
        )
    };
    let sql = format!(
        "SELECT count(*) FROM accounts a WHERE debits_pending != {} OR debits_posted != {} \
         OR credits_pending != {} OR credits_posted != {}",
        sum("debit", true),
        sum("debit", false),
        sum("credit", true),
        sum("credit", false)
    );
    assert_eq!(scalar(conn, &sql), 0, "some balance differs from the sum of its transfers");
    let overdrawn = "SELECT count(*) FROM accounts WHERE flags & 1 = 1 \
                     AND debits_pending + debits_posted > credits_posted";
    assert_eq!(scalar(conn, overdrawn), 0);
    assert!(scalar(conn, "SELECT count(*) FROM transfers WHERE status = 'expired'") >= 5);
    assert!(scalar(conn, "SELECT count(*) FROM transfers WHERE pending_id IS NOT NULL") > 0);
}

fn check_events(conn: &rusqlite::Connection) {
    let events = |kind: &str| scalar(conn, &format!("SELECT count(*) FROM outbox WHERE type = '{kind}'"));
    assert_eq!(events("coffer.transfer.created"), scalar(conn, "SELECT count(*) FROM transfers"));
    assert_eq!(
        events("coffer.transfer.expired"),
        scalar(conn, "SELECT count(*) FROM transfers WHERE status = 'expired'")
    );
    assert_eq!(
        events("coffer.transfer.posted") + events("coffer.transfer.voided"),
        scalar(conn, "SELECT count(*) FROM transfers WHERE pending_id IS NOT NULL")
    );
    assert_eq!(events("coffer.account.created"), scalar(conn, "SELECT count(*) FROM accounts"));
}
