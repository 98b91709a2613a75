//! TLS on both hops: clients speak https to `coffer gateway`, and the gateway speaks https to a
//! replica (`coffer serve`) that serves only https. The gateway is given the replica as
//! `https://localhost:…` and checks its certificate against that name while it dials the
//! addresses the name resolves to. Both renew their certificates on SIGHUP, without a restart.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{GatewayProcess, Http, Server};
use serde_json::json;

type TestCa = rcgen::CertifiedIssuer<'static, rcgen::KeyPair>;

fn test_ca() -> TestCa {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// Writes a certificate for `localhost` signed by `ca`, and its key, as `<name>.pem` and
/// `<name>.key` in `dir` (over what was there: a renewal).
fn issue(ca: &TestCa, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// A client that trusts `ca` alone.
fn trusting(ca: &TestCa) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap();
    reqwest::Client::builder().no_proxy().tls_certs_only([root]).build().unwrap()
}

/// Whether `client` gets a 2xx from `url`, asked until `within` has passed.
async fn answers(client: &reqwest::Client, url: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if client.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn money_moves_over_tls_on_both_hops_and_certificates_renew_on_sighup() {
    let (dir, files) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (old_ca, new_ca) = (test_ca(), test_ca());
    // The gateway trusts both authorities for the replicas, as during a rollover.
    let bundle = files.path().join("replica-cas.pem");
    std::fs::write(&bundle, format!("{}{}", old_ca.pem(), new_ca.pem())).unwrap();
    let (replica_cert, replica_key) = issue(&old_ca, files.path(), "replica");
    let (gateway_cert, gateway_key) = issue(&old_ca, files.path(), "gateway");

    let replica = Server::start_tls(dir.path(), &replica_cert, &replica_key, &old_ca.pem()).await;
    let plain = reqwest::get(format!("http://127.0.0.1:{}/readyz", replica.port())).await;
    assert!(plain.is_err(), "the replica does not speak plain HTTP");

    let upstream = format!("https://localhost:{}", replica.port());
    let env = [
        ("COFFER_DATA_DIR", dir.path().to_str().unwrap()),
        ("COFFER_GATEWAY_UPSTREAM_CA_PATH", bundle.to_str().unwrap()),
        ("COFFER_GATEWAY_TLS_CERT_PATH", gateway_cert.to_str().unwrap()),
        ("COFFER_GATEWAY_TLS_KEY_PATH", gateway_key.to_str().unwrap()),
    ];
    // The name is expanded into its addresses (127.0.0.1, and ::1 where localhost has it,
    // where nothing listens: requests sent there fail to connect and go to the other).
    let gateway = GatewayProcess::start_with(&[upstream], &env, tempfile::tempfile().unwrap()).await;
    assert!(gateway.healthy(&format!("https://127.0.0.1:{}", replica.port())).await);
    let port = gateway.base.rsplit(':').next().unwrap();
    let gateway_url = format!("https://localhost:{port}");

    let http = Http::with_client(gateway_url.clone(), trusting(&old_ca));
    let (a, b) = http.ledger_with_two_accounts("TLS").await;
    let transfer =
        json!({"debit_account_id": a, "credit_account_id": b, "amount": 250, "ledger": "TLS", "code": 1});
    http.post_ok("/v1/transfers", transfer.clone()).await;
    let (status, account) = http.get(&format!("/v1/accounts/{}", b.as_str().unwrap())).await;
    assert_eq!(status, 200);
    assert_eq!(account["balance"]["credits_posted"], 250, "{account}");

    // Renewal: new certificates from the new authority over the old files, then SIGHUP.
    let replica_direct = format!("https://localhost:{}/readyz", replica.port());
    let through_gateway = format!("{gateway_url}/readyz");
    assert!(!answers(&trusting(&new_ca), &through_gateway, Duration::ZERO).await);
    issue(&new_ca, files.path(), "replica");
    issue(&new_ca, files.path(), "gateway");
    replica.hang_up();
    gateway.hang_up();
    let within = Duration::from_secs(5);
    assert!(
        answers(&trusting(&new_ca), &replica_direct, within).await,
        "the replica serves the new certificate"
    );
    assert!(
        answers(&trusting(&new_ca), &through_gateway, within).await,
        "the gateway serves the new certificate"
    );
    assert!(
        !answers(&trusting(&old_ca), &through_gateway, Duration::ZERO).await,
        "and no longer the old one"
    );

    let http = Http::with_client(gateway_url, trusting(&new_ca));
    let mut second = transfer;
    second["amount"] = json!(50);
    http.post_ok("/v1/transfers", second).await;
    common::invariants_hold(&http, "TLS").await;

    // The health checks (every 500 ms, out after two failures) pass over https too.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(gateway.healthy(&format!("https://127.0.0.1:{}", replica.port())).await, "https checks pass");
}
