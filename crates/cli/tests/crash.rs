//! `kill -9` of `coffer serve` under a load of transfers loses no acknowledged transfer, and the
//! ledger's invariants hold after the restart and after the clients' retries.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Server, invariants_hold, list_all};
use serde_json::{Value, json};
use uuid::Uuid;

const CLIENTS: usize = 16;
const WALLETS: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let http = server.client();
    http.post_ok("/v1/ledgers", json!({"code": "CRASH", "scale": 2})).await;
    let funding = Uuid::now_v7();
    http.post_ok("/v1/accounts", json!({"id": funding, "ledger": "CRASH"})).await;
    let wallets: Vec<Uuid> = (0..WALLETS).map(|_| Uuid::now_v7()).collect();
    for id in &wallets {
        let flags = json!({"debits_must_not_exceed_credits": true});
        http.post_ok("/v1/accounts", json!({"id": id, "ledger": "CRASH", "flags": flags})).await;
    }

    // Every request a client sent, and which of them were acknowledged.
    let sent: Arc<Mutex<HashMap<Uuid, Value>>> = Arc::default();
    let acknowledged: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let (http, sent, acknowledged, wallets) =
            (server.client(), sent.clone(), acknowledged.clone(), wallets.clone());
        clients.spawn(async move {
            for i in 0usize.. {
                let id = Uuid::now_v7();
                let wallet = wallets[(c + i) % WALLETS];
                // Fund a wallet, or move money between wallets (which may be refused for funds).
                let (debit, credit) =
                    if i % 3 == 0 { (funding, wallet) } else { (wallet, wallets[(c + i + 1) % WALLETS]) };
                let body = json!({"id": id, "debit_account_id": debit, "credit_account_id": credit,
                                  "amount": 1 + (i % 7) as u64, "ledger": "CRASH"});
                sent.lock().unwrap().insert(id, body.clone());
                match http.post("/v1/transfers", &body).await {
                    Ok((201, _)) => acknowledged.lock().unwrap().push(id),
                    Ok((422, _)) => {}
                    Ok((status, body)) => panic!("unexpected {status}: {body}"),
                    Err(_) => return, // the server is gone
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let server = server.kill_9();
    while clients.join_next().await.is_some() {}
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 100, "the load was too light to prove anything: {}", acknowledged.len());

    let server = server.restart().await;
    let http = server.client();
    for id in &acknowledged {
        let (status, transfer) = http.get(&format!("/v1/transfers/{id}")).await;
        assert_eq!(status, 200, "acknowledged transfer {id} was lost");
        assert_eq!(transfer["amount"], sent.lock().unwrap()[id]["amount"]);
    }
    invariants_hold(&http, "CRASH").await;

    // Clients that never got an answer retry with the same ids: nothing applies twice.
    let sent = sent.lock().unwrap().clone();
    for body in sent.values() {
        let (status, _) = http.post("/v1/transfers", body).await.unwrap();
        assert!([200, 201, 422].contains(&status), "retry answered {status}");
    }
    let transfers = list_all(&http, "/v1/transfers?ledger=CRASH").await;
    let mut ids: Vec<&str> = transfers.iter().map(|t| t["id"].as_str().unwrap()).collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "a transfer is listed twice");
    for id in &acknowledged {
        let applied = transfers.iter().filter(|t| t["id"] == id.to_string()).count();
        assert_eq!(applied, 1, "acknowledged transfer {id} is present {applied} times");
    }
    invariants_hold(&http, "CRASH").await;
}
