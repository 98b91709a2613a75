//! Upstreams named by DNS: a name stands for every address it resolves to.
//!
//! A configured upstream whose host is a name (`http://api.internal:8081`, a scaled
//! docker-compose service, a Kubernetes headless service) is resolved every `dns_refresh_ms`,
//! and each address becomes an upstream of its own: balanced, checked and ejected on its own.
//! Left as one upstream, the name would hide its replicas from the pool: the connection pool
//! would send everything to whichever address answered first, and a dead replica's requests
//! would have no "other upstream" to be retried on.
//!
//! Addresses that appear join the pool; addresses that disappear drain, as with
//! `PUT /gateway/upstreams`. A name that fails to resolve keeps the addresses it had (a DNS
//! hiccup must not empty the pool); one that never resolved stays in the pool under its name,
//! and the connector resolves it on each new connection, as it would without this module.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::config::{UpstreamUrl, bare_host};
use crate::health::AbortOnDrop;
use crate::pool::Pool;

/// Turns `host:port` into socket addresses: the system's resolver in the gateway, a fixed
/// table in tests that need a name with several addresses.
pub type Resolve = Arc<dyn Fn(String) -> Lookup + Send + Sync>;

/// One resolution in progress.
pub type Lookup = Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;

/// The system's resolver (getaddrinfo, on a blocking thread).
pub fn system_resolver() -> Resolve {
    Arc::new(|authority: String| {
        Box::pin(async move { Ok(tokio::net::lookup_host(authority).await?.collect()) })
    })
}

/// The configured list and what its names resolved to.
pub struct Discovery {
    pool: Arc<Pool>,
    resolve: Resolve,
    timeout: Duration,
    state: Mutex<Known>,
}

struct Known {
    configured: Vec<UpstreamUrl>,
    /// The addresses each name resolved to last.
    resolved: HashMap<UpstreamUrl, Vec<UpstreamUrl>>,
}

impl Discovery {
    pub fn new(pool: Arc<Pool>, configured: Vec<UpstreamUrl>, resolve: Resolve, timeout: Duration) -> Self {
        let state = Mutex::new(Known { configured, resolved: HashMap::new() });
        Self { pool, resolve, timeout, state }
    }

    /// Makes `configured` the list and resolves it at once. Answers how many upstreams (names
    /// expanded) were added to the pool and removed from it.
    pub async fn set(&self, configured: Vec<UpstreamUrl>) -> (usize, usize) {
        let mut known = self.state.lock().await;
        known.resolved.retain(|name, _| configured.contains(name));
        known.configured = configured;
        self.apply(&mut known).await
    }

    /// Resolves every name again and brings the pool in line.
    pub async fn refresh(&self) -> (usize, usize) {
        let mut known = self.state.lock().await;
        self.apply(&mut known).await
    }

    async fn apply(&self, known: &mut Known) -> (usize, usize) {
        let mut expanded: Vec<UpstreamUrl> = Vec::new();
        for url in known.configured.clone() {
            let addresses = match self.addresses(&url).await {
                Some(addresses) => {
                    known.resolved.insert(url.clone(), addresses.clone());
                    addresses
                }
                None => known.resolved.get(&url).cloned().unwrap_or_else(|| vec![url.clone()]),
            };
            for address in addresses {
                if !expanded.contains(&address) {
                    expanded.push(address);
                }
            }
        }
        self.pool.replace(&expanded)
    }

    /// The upstreams `url` stands for now: itself when its host is an address; one per address
    /// its name resolves to; `None` when the name does not resolve.
    async fn addresses(&self, url: &UpstreamUrl) -> Option<Vec<UpstreamUrl>> {
        let authority = url.authority();
        if bare_host(authority).parse::<IpAddr>().is_ok() {
            return Some(vec![url.clone()]);
        }
        let lookup = (self.resolve)(authority.as_str().to_owned());
        let mut addresses = match tokio::time::timeout(self.timeout, lookup).await {
            Ok(Ok(addresses)) => addresses,
            Ok(Err(err)) => return self.unresolved(url, &err.to_string()),
            Err(_) => return self.unresolved(url, "timed out"),
        };
        // A stable order, so the same answer in another order changes nothing.
        addresses.sort();
        addresses.dedup();
        let upstreams: Vec<UpstreamUrl> =
            addresses.into_iter().filter_map(|address| url.at(address)).collect();
        if upstreams.is_empty() {
            return self.unresolved(url, "no address (usable in a URL)");
        }
        Some(upstreams)
    }

    fn unresolved(&self, url: &UpstreamUrl, why: &str) -> Option<Vec<UpstreamUrl>> {
        tracing::warn!(upstream = %url, error = why, "upstream name did not resolve; keeping what it had");
        None
    }
}

/// Resolves the list every `interval` (the first time after one interval: `serve` resolves it
/// once before taking requests); stops when the handle drops.
pub fn spawn(discovery: Arc<Discovery>, interval: Duration) -> AbortOnDrop {
    AbortOnDrop::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            discovery.refresh().await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GatewayConfig, Upstreams};

    fn url(text: &str) -> UpstreamUrl {
        UpstreamUrl::try_from(text.to_owned()).unwrap()
    }

    fn discovery(configured: &[&str]) -> (Discovery, Arc<Pool>) {
        let configured: Vec<UpstreamUrl> = configured.iter().map(|u| url(u)).collect();
        let config = GatewayConfig { upstreams: Upstreams(configured.clone()), ..GatewayConfig::default() };
        let pool = Arc::new(Pool::new(&config));
        let found = Discovery::new(pool.clone(), configured, system_resolver(), Duration::from_secs(5));
        (found, pool)
    }

    fn listed(pool: &Pool) -> Vec<String> {
        pool.list().iter().map(|u| u.url.to_string()).collect()
    }

    #[tokio::test]
    async fn the_system_resolver_expands_a_name_and_leaves_addresses_and_unknown_names_alone() {
        let (found, pool) = discovery(&[
            "http://localhost:18081",
            "http://192.0.2.7:80",
            "http://[::1]:81",
            "http://no-such-host.invalid:1",
        ]);
        found.refresh().await;
        let now = listed(&pool);
        assert!(now.contains(&"http://127.0.0.1:18081".to_owned()), "{now:?}");
        assert!(!now.contains(&"http://localhost:18081".to_owned()), "{now:?}");
        for kept in ["http://192.0.2.7:80", "http://[::1]:81", "http://no-such-host.invalid:1"] {
            assert!(now.contains(&kept.to_owned()), "{kept} in {now:?}");
        }
        let (added, removed) = found.set(vec![url("http://192.0.2.7:80")]).await;
        assert_eq!((added, listed(&pool)), (0, vec!["http://192.0.2.7:80".to_owned()]));
        assert_eq!(removed, now.len() - 1);
    }
}
