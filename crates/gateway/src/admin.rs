//! The gateway's own endpoints (`/gateway/upstreams`, `/gateway/metrics`, `/gateway/readyz`,
//! `/gateway/healthz`) on a listener of their own, and the token that guards every one of them.
//!
//! The admin listener can replace the upstream list, so whoever reaches it can point the edge at
//! a server of their choosing: it never runs without a token. The token is the operator's
//! (`admin_token` or `admin_token_file`), at least [`MIN_TOKEN_LEN`] characters, and a request
//! proves it with `Authorization: Bearer <token>`. Both sides are hashed before they are
//! compared, and the digests compared in constant time, so neither the time taken nor the
//! length of a guess tells an attacker how close it came.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use coffer_store::TokenHash;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::{ConfigError, Upstreams};
use crate::{UpstreamControl, auth, problem, proxy};

/// The shortest admin token the gateway takes: 32 characters of a random token carry far more
/// guesses than anyone can try against one listener.
pub const MIN_TOKEN_LEN: usize = 32;

/// The secret the admin endpoints require. Its `Debug` never shows it, so a configuration
/// printed for a diagnosis does not leak it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl TryFrom<String> for AdminToken {
    type Error = ConfigError;

    fn try_from(token: String) -> Result<Self, ConfigError> {
        let bad = |reason| ConfigError::OutOfRange { field: "admin_token", reason };
        if token.chars().count() < MIN_TOKEN_LEN {
            return Err(bad("must be at least 32 characters"));
        }
        if !coffer_store::is_valid_token(&token) {
            return Err(bad("must be visible ASCII without spaces (it is sent as a bearer token)"));
        }
        Ok(Self(token))
    }
}

impl AdminToken {
    /// The token in `path`: its first line, without the line end an editor or `echo` adds.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::AdminTokenFile(format!("cannot read {}: {e}", path.display())))?;
        let line = text.lines().next().unwrap_or_default().trim();
        Self::try_from(line.to_owned())
            .map_err(|e| ConfigError::AdminTokenFile(format!("{}: {e}", path.display())))
    }

    fn digest(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

/// What a request to the admin listener is checked against.
#[derive(Clone)]
struct Guard(Arc<TokenHash>);

impl Guard {
    fn admits(&self, request: &Request) -> bool {
        let Some(token) = auth::bearer(request.headers()) else { return false };
        TokenHash::of(token).0.ct_eq(&self.0.0).into()
    }
}

/// Refuses every request that does not carry the admin token, before any route runs.
async fn require_token(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    if !guard.admits(&request) {
        return problem::admin_unauthorized();
    }
    next.run(request).await
}

/// The admin endpoints, every one behind the token.
pub fn router(
    token: &AdminToken,
    shared: Arc<proxy::Shared>,
    control: UpstreamControl,
    metrics: PrometheusHandle,
) -> Router {
    let guard = Guard(Arc::new(token.digest()));
    Router::new()
        .route("/gateway/healthz", get(|| async { "ok" }))
        .route("/gateway/readyz", get(readyz))
        .route(
            "/gateway/upstreams",
            get(upstreams).put(
                move |peer: Option<Extension<ConnectInfo<SocketAddr>>>,
                      headers: http::HeaderMap,
                      body: axum::body::Bytes| {
                    replace_upstreams(control, peer, headers, body)
                },
            ),
        )
        .route("/gateway/metrics", get(move || async move { metrics.render() }))
        .with_state(shared)
        // A layer, not a route guard: it covers paths that match no route too, so a caller
        // without the token cannot even learn which paths exist.
        .layer(middleware::from_fn_with_state(guard, require_token))
}

async fn readyz(State(shared): State<Arc<proxy::Shared>>) -> Response {
    if shared.pool.any_healthy() {
        "ready".into_response()
    } else {
        (http::StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream").into_response()
    }
}

async fn upstreams(State(shared): State<Arc<proxy::Shared>>) -> Response {
    axum::Json(shared.pool.view()).into_response()
}

/// `PUT /gateway/upstreams` with the new list (a JSON list of URLs, or one comma-separated
/// string): upstreams that stay keep their state, new ones join, removed ones drain.
/// Recorded in the audit log as the admin token holder's (`gateway:admin`), from the caller's
/// address, under its `x-request-id` when it sent one.
async fn replace_upstreams(
    control: UpstreamControl,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()));
    let by = coffer_store::AuditContext {
        actor: "gateway:admin".into(),
        client_address: peer.map(|Extension(ConnectInfo(peer))| peer.ip().to_string()),
        request_id: request_id.map(str::to_owned),
    };
    let replaced = match serde_json::from_slice::<Upstreams>(&body) {
        Ok(list) => control.replace(&list, &by).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match replaced {
        Ok((added, removed)) => {
            axum::Json(serde_json::json!({"added": added, "removed": removed})).into_response()
        }
        Err(reason) => problem::invalid_upstream_list(&reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_or_unsendable_tokens_are_refused_and_never_printed() {
        assert!(AdminToken::try_from("x".repeat(31)).is_err());
        assert!(AdminToken::try_from(format!("{} ", "x".repeat(32))).is_err());
        let token = AdminToken::try_from("s3cr3t-".repeat(5)).unwrap();
        assert!(!format!("{token:?}").contains("s3cr3t"));
    }

    #[test]
    fn a_token_file_is_read_without_its_line_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{}\n", "a".repeat(40))).unwrap();
        assert_eq!(AdminToken::read(&path).unwrap(), AdminToken("a".repeat(40)));
        std::fs::write(&path, "short\n").unwrap();
        assert!(matches!(AdminToken::read(&path), Err(ConfigError::AdminTokenFile(_))));
        assert!(AdminToken::read(&dir.path().join("missing")).is_err());
    }
}
