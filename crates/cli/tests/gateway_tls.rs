//! TLS on both hops: a replica (`coffer serve`) that speaks only https, behind `coffer gateway`
//! configured with `https://localhost:…` and the replicas' certificate authority. The gateway
//! checks the replica's certificate against the name it was given, while it dials the
//! addresses the name resolves to.

mod common;

use common::{GatewayProcess, Http, Server};
use serde_json::json;

#[tokio::test]
async fn money_moves_through_the_gateway_to_a_replica_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, &ca).unwrap();
    let files = tempfile::tempdir().unwrap();
    let path = |name: &str| files.path().join(name);
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("cert.pem"), cert.pem()).unwrap();
    std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();

    let replica = Server::start_tls(dir.path(), &path("cert.pem"), &path("key.pem"), &ca.pem()).await;
    let plain = reqwest::get(format!("http://127.0.0.1:{}/readyz", replica.port())).await;
    assert!(plain.is_err(), "the replica does not speak plain HTTP");

    let upstream = format!("https://localhost:{}", replica.port());
    let ca_path = path("ca.pem");
    let env = [
        ("COFFER_DATA_DIR", dir.path().to_str().unwrap()),
        ("COFFER_GATEWAY_UPSTREAM_CA_PATH", ca_path.to_str().unwrap()),
    ];
    // Ready means an https health check of the replica passed.
    let gateway = GatewayProcess::start_with(&[upstream], &env, tempfile::tempfile().unwrap()).await;
    assert!(gateway.healthy(&format!("https://127.0.0.1:{}", replica.port())).await);

    let http = Http::at(gateway.base.clone());
    http.post_ok("/v1/ledgers", json!({"code": "TLS", "scale": 2})).await;
    let a = http.post_ok("/v1/accounts", json!({"ledger": "TLS", "code": 1})).await["id"].clone();
    let b = http.post_ok("/v1/accounts", json!({"ledger": "TLS", "code": 1})).await["id"].clone();
    let transfer =
        json!({"debit_account_id": a, "credit_account_id": b, "amount": 250, "ledger": "TLS", "code": 1});
    http.post_ok("/v1/transfers", transfer).await;
    let (status, account) = http.get(&format!("/v1/accounts/{}", b.as_str().unwrap())).await;
    assert_eq!(status, 200);
    assert_eq!(account["balance"]["credits_posted"], 250, "{account}");
    common::invariants_hold(&http, "TLS").await;
}
