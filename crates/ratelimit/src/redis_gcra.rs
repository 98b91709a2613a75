//! Limits shared by every process through Redis: GCRA in one Lua script, so a check is one
//! round trip and atomic however many gateways ask at once.
//!
//! The script keeps per key the "theoretical arrival time" (TAT) of the next request, in
//! microseconds of the Redis server's clock (`TIME`) — one clock for every process, whatever
//! their own clocks say. A request is allowed when the TAT as it stands is no further than
//! the burst tolerance ahead of now; the key expires once the TAT has passed. A fresh key thus
//! takes its whole burst at once, as the local (governor) limits give it.

use std::path::Path;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script, TlsCertificates};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::{Decision, Rate};

const GCRA: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local allowed_at = tat - tolerance
if allowed_at > now then
  return allowed_at - now
end
local next_tat = tat + interval
redis.call('SET', KEYS[1], next_tat, 'PX', math.floor((next_tat - now) / 1000) + 1)
return 0
";

#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct RedisError(String);

pub struct RedisLimits {
    client: Client,
    script: Script,
    /// Prefixes every key, so that several deployments (or tests) share one Redis.
    prefix: String,
    /// The connection, made on first use and again after it was lost.
    connection: Mutex<Connection>,
    timeout: Duration,
}

enum Connection {
    Up(ConnectionManager),
    /// Not connected; no new attempt before this instant.
    Down {
        retry_at: Instant,
    },
}

/// The redis client builds its TLS settings with rustls's process-wide crypto provider, which
/// the binary chooses (the `coffer` binary installs ring at start). Without one rustls would
/// panic at the first connection; this says so at start instead.
fn crypto_provider_chosen() -> Result<(), RedisError> {
    match rustls::crypto::CryptoProvider::get_default() {
        Some(_) => Ok(()),
        None => {
            Err(RedisError("rediss:// needs a process-wide rustls crypto provider; none is installed".into()))
        }
    }
}

/// How long after a failed connection attempt the next one is made.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

impl RedisLimits {
    /// Limits on the Redis at `url`, each call bounded by `timeout`. Does not connect yet, so a
    /// Redis that is down at start does not stop the caller from starting. A `rediss://` URL
    /// speaks TLS, and the server's certificate must chain to the authorities in `ca` (a PEM
    /// file), or without it to the system's.
    pub fn new(url: &str, prefix: &str, timeout: Duration, ca: Option<&Path>) -> Result<Self, RedisError> {
        let client = match ca {
            None => Client::open(url),
            Some(path) => {
                let root_cert = std::fs::read(path)
                    .map_err(|e| RedisError(format!("cannot read {}: {e}", path.display())))?;
                Client::build_with_tls(url, TlsCertificates { client_tls: None, root_cert: Some(root_cert) })
            }
        }
        .map_err(|e| RedisError(e.to_string()))?;
        if url.starts_with("rediss://") {
            crypto_provider_chosen()?;
        }
        let connection = Mutex::new(Connection::Down { retry_at: Instant::now() });
        Ok(Self { client, script: Script::new(GCRA), prefix: prefix.to_owned(), connection, timeout })
    }

    /// Takes one request from `key`'s allowance at `rate`, cluster-wide. An error means Redis
    /// could not say; the caller decides what to do then.
    pub async fn check(&self, key: &str, rate: Rate) -> Result<Decision, RedisError> {
        let mut connection = self.connection().await?;
        let interval = rate.interval().as_micros() as u64;
        let tolerance = interval * u64::from(rate.burst.get() - 1);
        let mut invocation = self.script.key(format!("{}:{key}", self.prefix));
        invocation.arg(interval).arg(tolerance);
        match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection)).await {
            Ok(Ok(0u64)) => Ok(Decision::Allowed),
            Ok(Ok(wait_us)) => Ok(Decision::Limited { retry_after: Duration::from_micros(wait_us) }),
            Ok(Err(e)) => Err(self.lost(e.to_string()).await),
            Err(_) => Err(self.lost(format!("no answer within {:?}", self.timeout)).await),
        }
    }

    /// The connection, connecting first when there is none and the last attempt is old enough.
    async fn connection(&self) -> Result<ConnectionManager, RedisError> {
        let mut state = self.connection.lock().await;
        match &*state {
            Connection::Up(connection) => return Ok(connection.clone()),
            Connection::Down { retry_at } if Instant::now() < *retry_at => {
                return Err(self.failed("not connected; retrying shortly"));
            }
            Connection::Down { .. } => {}
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        match tokio::time::timeout(self.timeout * 2, self.client.get_connection_manager_with_config(config))
            .await
        {
            Ok(Ok(connection)) => {
                *state = Connection::Up(connection.clone());
                Ok(connection)
            }
            Ok(Err(e)) => {
                *state = Connection::Down { retry_at: Instant::now() + RECONNECT_AFTER };
                Err(self.failed(e))
            }
            Err(_) => {
                *state = Connection::Down { retry_at: Instant::now() + RECONNECT_AFTER };
                Err(self.failed("connecting timed out"))
            }
        }
    }

    /// Drops the connection after a failure: the next check after a pause connects again.
    async fn lost(&self, why: String) -> RedisError {
        *self.connection.lock().await = Connection::Down { retry_at: Instant::now() + RECONNECT_AFTER };
        self.failed(why)
    }

    /// An error naming the server (`host:port`, never the URL's password) and what went wrong.
    fn failed(&self, why: impl std::fmt::Display) -> RedisError {
        RedisError(format!("Redis at {}: {why}", self.client.get_connection_info().addr()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing listens on port 1: the refusal names the server, and never the URL's password.
    #[tokio::test]
    async fn an_error_names_the_server_and_not_the_password() {
        let limits =
            RedisLimits::new("redis://:pa55word@127.0.0.1:1/0", "t", Duration::from_millis(500), None)
                .expect("a well-formed URL");
        let rate = Rate::new(std::num::NonZeroU32::MIN, std::num::NonZeroU32::MIN);
        let refused = limits.check("k", rate).await.unwrap_err().to_string();
        assert!(refused.contains("Redis at 127.0.0.1:1: "), "{refused}");
        assert!(!refused.contains("pa55word"), "{refused}");
    }
}
