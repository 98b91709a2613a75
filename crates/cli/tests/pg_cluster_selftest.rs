//! The PostgreSQL failover harness works: rows acknowledged by the primary (committed with
//! synchronous replication) are on the standby, survive `kill -9` of the primary and the standby's
//! promotion, and the same multi-host URL then lands on the promoted node, which takes writes.

mod pg_cluster;

use std::time::{Duration, Instant};

use pg_cluster::PgCluster;
use tokio_postgres::{Client, NoTls};

const ROWS: i32 = 50;
const DATABASE: &str = "selftest";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_rows_survive_kill_9_of_the_primary_and_promotion() {
    if let Some(why) = PgCluster::binaries_missing() {
        return coffer_testkit::missing::<()>("PostgreSQL server binaries", why).unwrap_or(());
    }
    let started = Instant::now();
    let mut cluster = PgCluster::start().await;
    eprintln!("cluster up in {:?}", started.elapsed());
    cluster.create_database(DATABASE).await;
    let url = cluster.url(DATABASE);

    let client = connect(&url).await;
    assert_eq!(server_port(&client).await, cluster.primary_port(), "the URL first lands on the primary");
    client.batch_execute("CREATE TABLE acked (id int PRIMARY KEY, note text NOT NULL)").await.unwrap();
    for id in 0..ROWS {
        // Each returned insert is a commit the standby has flushed (synchronous replication).
        client.execute("INSERT INTO acked VALUES ($1, $2)", &[&id, &format!("row {id}")]).await.unwrap();
    }
    drop(client);
    standby_catches_up(&cluster).await;

    let killed = Instant::now();
    cluster.kill_primary();
    cluster.promote_standby().await;
    let client = connect(&url).await;
    let in_recovery: bool = client.query_one("SELECT pg_is_in_recovery()", &[]).await.unwrap().get(0);
    assert!(!in_recovery, "the URL lands on a writable node");
    assert_eq!(server_port(&client).await, cluster.standby_port(), "the URL lands on the promoted standby");
    assert_eq!(ids(&client).await, (0..ROWS).collect::<Vec<_>>(), "every acknowledged row survived");
    client.execute("INSERT INTO acked VALUES ($1, 'after failover')", &[&ROWS]).await.unwrap();
    eprintln!(
        "kill -9 of the primary → first committed write on the promoted standby: {:?}",
        killed.elapsed()
    );
    assert_eq!(ids(&client).await.len(), ROWS as usize + 1);
}

/// The acknowledged rows are readable on the standby (directly, read-only). Synchronous commit
/// waits for the standby's flush, not its replay, so the database, table and rows may take a moment
/// to show up there.
async fn standby_catches_up(cluster: &PgCluster) {
    let config = format!("host=127.0.0.1 port={} user=postgres dbname={DATABASE}", cluster.standby_port());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = standby_rows(&config).await;
        if seen == Ok(ROWS as i64) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the standby does not show the {ROWS} acknowledged rows after 10 s: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many rows the standby shows, checking that it is a read-only replica.
async fn standby_rows(config: &str) -> Result<i64, String> {
    let config: tokio_postgres::Config = config.parse().expect("a valid connection string");
    let (standby, connection) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let in_recovery: bool = standby.query_one("SELECT pg_is_in_recovery()", &[]).await.unwrap().get(0);
    assert!(in_recovery, "the standby is a read-only replica");
    let row = standby.query_one("SELECT count(*) FROM acked", &[]).await.map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

async fn connect(config: &str) -> Client {
    let config: tokio_postgres::Config = config.parse().expect("a valid connection string");
    let (client, connection) = config.connect(NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

async fn server_port(client: &Client) -> u16 {
    let port: i32 = client.query_one("SELECT inet_server_port()", &[]).await.unwrap().get(0);
    u16::try_from(port).unwrap()
}

async fn ids(client: &Client) -> Vec<i32> {
    let rows = client.query("SELECT id FROM acked ORDER BY id", &[]).await.unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}
