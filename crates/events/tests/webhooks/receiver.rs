//! The test receiver: a real HTTP endpoint (axum on 127.0.0.1) that checks every delivery's
//! signature on its own — from the Standard Webhooks spec, not with the crate's `verify` — and
//! answers as the test tells it to, recording every request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{KeyInit, Mac};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Accept,
    Answer(u16),
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub delivery_id: String,
    pub event_id: String,
    pub event_type: String,
    pub content_type: String,
    /// The `traceparent` header, empty when there was none.
    pub traceparent: String,
    pub body: Vec<u8>,
    pub signature_valid: bool,
    pub answered: u16,
}

struct ReceiverState {
    secret: String,
    mode: Mutex<Mode>,
    received: Mutex<Vec<Received>>,
}

pub struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    server: JoinHandle<()>,
}

impl Receiver {
    pub async fn start(secret: &str) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), secret).await
    }

    pub async fn start_on(addr: SocketAddr, secret: &str) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind the receiver");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ReceiverState {
            secret: secret.to_owned(),
            mode: Mutex::new(Mode::Accept),
            received: Mutex::new(Vec::new()),
        });
        let app = Router::new().route("/hook", post(receive)).with_state(state.clone());
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, state, server }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn accepted(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| (200..300).contains(&r.answered)).collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(State(state): State<Arc<ReceiverState>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let signature_valid = spec_verify(&state.secret, &headers, &body, unix_now());
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let mode = *state.mode.lock().unwrap();
    let answered = match (signature_valid, mode) {
        (false, _) => 401,
        (true, Mode::Accept) => 200,
        (true, Mode::Answer(status)) => status,
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    state.received.lock().unwrap().push(Received {
        delivery_id: header("webhook-id"),
        event_id: event["id"].as_str().unwrap_or("").to_owned(),
        event_type: event["type"].as_str().unwrap_or("").to_owned(),
        content_type: header("content-type"),
        traceparent: header("traceparent"),
        body: body.to_vec(),
        signature_valid,
        answered,
    });
    StatusCode::from_u16(answered).unwrap()
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Verification as the Standard Webhooks spec describes it, written independently of the
/// crate: the three headers present, the timestamp within 5 minutes, and one of the
/// space-separated `v1,` signatures equal (in constant time) to the base64 HMAC-SHA256, keyed
/// with the base64-decoded part of the secret after `whsec_`, of `{id}.{timestamp}.{body}`.
pub fn spec_verify(secret: &str, headers: &HeaderMap, body: &[u8], now: i64) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signatures)) =
        (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"))
    else {
        return false;
    };
    let Ok(sent) = timestamp.parse::<i64>() else { return false };
    if (now - sent).abs() > 5 * 60 {
        return false;
    }
    let Some(key) = secret.strip_prefix("whsec_").and_then(|k| BASE64.decode(k).ok()) else { return false };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    signatures
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|encoded| BASE64.decode(encoded).ok())
        .any(|candidate| mac.clone().verify_slice(&candidate).is_ok())
}
