//! What a running server is and how it is doing (admin): what `coffer status` shows. The
//! operator's first question — is it up, on what, doing what, with how much waiting — in one
//! answer, without scraping metrics.

use std::time::Instant;

use axum::extract::State;
use axum::response::Response;
use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::json;
use crate::auth::{AdminScope, Caller};
use crate::error::ApiError;
use crate::openapi::ReadProblems;
use crate::state::AppState;

/// What the process is: given by whoever starts the API (`coffer serve` knows its roles and bus).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ServerAbout {
    /// `sqlite` (the embedded store) or `postgresql`.
    pub store: &'static str,
    /// `in-process` or `jetstream`.
    pub bus: &'static str,
    /// The roles this process runs: `api`, `relay`, `worker`.
    pub roles: Vec<String>,
    #[serde(skip)]
    pub started: Instant,
}

impl Default for ServerAbout {
    /// An API embedded in another program: the embedded store's defaults, every role.
    fn default() -> Self {
        let roles = ["api", "relay", "worker"].map(str::to_owned).to_vec();
        Self { store: "sqlite", bus: "in-process", roles, started: Instant::now() }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServerStatus {
    /// This build's version.
    pub version: &'static str,
    #[serde(flatten)]
    pub about: ServerAbout,
    /// Whether the store answers: what `/readyz` says.
    pub ready: bool,
    pub uptime_seconds: u64,
    pub queues: Queues,
}

/// What is waiting. A figure the server cannot read right now is null.
#[derive(Debug, Serialize, ToSchema)]
pub struct Queues {
    /// The outbox's last position: every event ever committed has a position up to it.
    pub outbox_head: Option<i64>,
    /// Dead letters waiting for an operator (`coffer dlq list`).
    pub dead_letters: Option<u64>,
    /// Event streams open on this process, and how many it takes.
    pub event_streams_open: usize,
    pub event_streams_max: usize,
}

/// What this server is and how it is doing (admin): version, store, bus, roles, readiness
/// and queue depths.
#[utoipa::path(
    get, path = "/v1/admin/status", tag = "operations",
    responses((status = 200, description = "The server's status", body = ServerStatus), ReadProblems)
)]
pub async fn status(State(state): State<AppState>, _: Caller<AdminScope>) -> Result<Response, ApiError> {
    let (ready, head, dead_letters) =
        tokio::join!(state.store.ping(), state.store.last_event_position(), state.dead_letters.depth());
    let max = state.config.max_event_streams;
    let status = ServerStatus {
        version: env!("CARGO_PKG_VERSION"),
        about: state.about.clone(),
        ready: ready.is_ok(),
        uptime_seconds: state.about.started.elapsed().as_secs(),
        queues: Queues {
            outbox_head: head.ok(),
            dead_letters: dead_letters.ok(),
            event_streams_open: max.saturating_sub(state.streams.available_permits()),
            event_streams_max: max,
        },
    };
    Ok(json(StatusCode::OK, &status))
}
