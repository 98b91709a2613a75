//! PostgreSQL over TLS, asked for in the database URL as libpq asks: a server of the test's own
//! with `ssl = on` and a certificate from the test's own authority. With
//! `sslmode=verify-full` and that authority in `sslrootcert`, `coffer serve` moves money over
//! TLS (every one of its connections is encrypted) and the ledger's invariants hold; an
//! authority that did not sign the server's certificate, or a host name the certificate does
//! not name, stops Coffer with a clear error; `sslmode=require` encrypts without checking;
//! `verify-ca` checks the authority and not the name.

mod common;
mod pg_cluster;

use std::path::Path;
use std::process::Command;

use common::{Server, invariants_hold};
use pg_cluster::PgCluster;
use pg_cluster::single::PgServer;
use serde_json::json;
use tokio_postgres::NoTls;

type TestCa = rcgen::CertifiedIssuer<'static, rcgen::KeyPair>;

fn test_ca() -> TestCa {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// `coffer migrate` against `url`: whether it worked, and what it said.
fn migrate(url: &str) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_coffer"))
        .arg("migrate")
        .env("COFFER_DATABASE_URL", url)
        .env("COFFER_LOG_LEVEL", "warn")
        .output()
        .expect("coffer runs");
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), said)
}

/// The `ssl` flag of every connection Coffer (application_name `coffer`) has open.
async fn coffer_connections_ssl(port: u16) -> Vec<bool> {
    let (client, connection) =
        tokio_postgres::connect(&format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"), NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'coffer'",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}

async fn create_database(port: u16, name: &str) {
    let (client, connection) =
        tokio_postgres::connect(&format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"), NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coffer_moves_money_over_verified_tls_and_refuses_a_server_it_cannot_verify() {
    if let Some(why) = PgCluster::binaries_missing() {
        return coffer_testkit::missing::<()>("PostgreSQL server binaries", why).unwrap_or(());
    }
    let (ca, stranger) = (test_ca(), test_ca());
    let key = rcgen::KeyPair::generate().unwrap();
    let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let cert = rcgen::CertificateParams::new(names).unwrap().signed_by(&key, &ca).unwrap();
    let settings = "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'";
    let server =
        PgServer::start(settings, &[("server.crt", &cert.pem()), ("server.key", &key.serialize_pem())]).await;
    let port = server.port();
    create_database(port, "coffer_tls").await;

    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: String| {
        let path = files.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let (ours, theirs) = (write("ca.pem", ca.pem()), write("stranger.pem", stranger.pem()));
    let url = |host: &str, query: &str| format!("postgres://postgres@{host}:{port}/coffer_tls?{query}");

    // verify-full with the right authority: the whole server, over TLS.
    let verified = url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={ours}"));
    let dir = tempfile::tempdir().unwrap();
    let coffer = Server::start_on_database(dir.path(), &verified).await;
    let http = coffer.client();
    let (a, b) = http.ledger_with_two_accounts("TLS").await;
    for amount in 1..=25u64 {
        http.post_ok(
            "/v1/transfers",
            json!({"debit_account_id": a, "credit_account_id": b, "amount": amount, "ledger": "TLS"}),
        )
        .await;
    }
    invariants_hold(&http, "TLS").await;
    let ssl = coffer_connections_ssl(port).await;
    assert!(!ssl.is_empty() && ssl.iter().all(|on| *on), "coffer's connections, ssl flags: {ssl:?}");
    drop(coffer);

    // An authority that did not sign the server's certificate: refused, and said so.
    let (ok, said) = migrate(&url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={theirs}")));
    assert!(!ok && said.contains("certificate"), "a stranger's authority was accepted: {said}");
    // A host the certificate does not name (dialled at the right address): refused by
    // verify-full, accepted by verify-ca.
    let misnamed =
        |mode: &str| url("db.invalid", &format!("hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={ours}"));
    let (ok, said) = migrate(&misnamed("verify-full"));
    assert!(!ok && said.contains("certificate"), "a certificate for another name was accepted: {said}");
    let (ok, said) = migrate(&misnamed("verify-ca"));
    assert!(ok, "verify-ca checks the authority, not the name: {said}");
    // require: encrypted, nothing checked.
    let (ok, said) = migrate(&url("127.0.0.1", "sslmode=require"));
    assert!(ok, "sslmode=require: {said}");
    // A path that names no authority stops the start before any connection.
    let missing = Path::new(files.path()).join("missing.pem");
    let (ok, said) =
        migrate(&url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={}", missing.display())));
    assert!(!ok && said.contains("sslrootcert"), "{said}");
    drop(server);
}
