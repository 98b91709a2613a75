//! How a client command reaches a running server: the same two flags, with the same
//! environment variables, on every such command.

use anyhow::bail;

#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// The server's base URL.
    #[arg(long, env = "COFFER_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,
    /// An API token (the admin scope for admin commands). Its value is never shown in --help.
    #[arg(long, env = "COFFER_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

impl ServerArgs {
    /// The token, or the error that says how to give one.
    pub fn token(&self) -> anyhow::Result<&str> {
        match self.token.as_deref() {
            Some(token) if !token.is_empty() => Ok(token),
            _ => bail!("an API token is needed: --token or COFFER_TOKEN"),
        }
    }

    /// The base URL without a trailing slash.
    pub fn base(&self) -> &str {
        self.url.trim_end_matches('/')
    }
}

/// What the server said when it refused: its problem's `detail` and `code` (RFC 9457), not the
/// whole body; the status alone when the body is no problem.
pub fn refusal(status: reqwest::StatusCode, body: &str) -> anyhow::Error {
    let problem: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    match (problem["detail"].as_str(), problem["code"].as_str()) {
        (Some(detail), Some(code)) => anyhow::anyhow!("{detail} ({code}, HTTP {})", status.as_u16()),
        _ => anyhow::anyhow!("the server answered {status}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_refusal_is_its_detail_and_code() {
        let body = r#"{"type":"about:blank","title":"Not Found","status":404,"detail":"no dead letter with this id","code":"not_found"}"#;
        let refused = super::refusal(reqwest::StatusCode::NOT_FOUND, body).to_string();
        assert_eq!(refused, "no dead letter with this id (not_found, HTTP 404)");
        let bare = super::refusal(reqwest::StatusCode::BAD_GATEWAY, "<html>").to_string();
        assert_eq!(bare, "the server answered 502 Bad Gateway");
    }
}
