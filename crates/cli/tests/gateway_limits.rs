//! Rate limits at the edge (issue 5): two `coffer gateway` processes sharing a Redis of the
//! test's own hold one API key to the configured rate together (within 10 %), over-limit
//! requests get 429 with Retry-After and never reach the upstream; with Redis stopped each
//! gateway applies the limit locally and traffic keeps flowing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use coffer_testkit::RedisServer;
use common::{GatewayProcess, Server, TOKEN};

const RATE: u32 = 100;
const BURST: u32 = 10;

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    limited: AtomicU64,
    other: AtomicU64,
}

/// Sends GET /v1/ledgers through every gateway from several clients for `seconds`.
async fn hammer(gateways: &[String], seconds: u64) -> Arc<Counts> {
    let counts = Arc::new(Counts::default());
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (g, base) in gateways.iter().enumerate() {
        for _ in 0..4 {
            let (base, counts) = (base.clone(), counts.clone());
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                while Instant::now() < until {
                    let answer = client.get(format!("{base}/v1/ledgers")).bearer_auth(TOKEN).send().await;
                    match answer.map(|r| (r.status().as_u16(), r.headers().contains_key("retry-after"))) {
                        Ok((200, _)) => counts.ok.fetch_add(1, Ordering::Relaxed),
                        Ok((429, true)) => counts.limited.fetch_add(1, Ordering::Relaxed),
                        _ => counts.other.fetch_add(1, Ordering::Relaxed),
                    };
                }
                g
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    counts
}

/// How many checks this gateway answered locally because Redis could not be asked.
async fn fallbacks(gateway: &GatewayProcess) -> f64 {
    let metrics = gateway.metrics().await;
    let line = metrics.lines().find(|l| l.starts_with("coffer_ratelimit_redis_fallbacks_total"));
    line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

fn assert_near(got: u64, expected: f64, what: &str) {
    let off = (got as f64 - expected).abs() / expected;
    assert!(off <= 0.10, "{what}: {got} let through, expected {expected:.0} (off by {:.0} %)", off * 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_sharing_redis_hold_one_limit_and_fall_back_to_local_limits() {
    let Some(mut redis) = RedisServer::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let upstream = Server::start(dir.path()).await;
    let upstreams = [format!("http://127.0.0.1:{}", upstream.port())];
    let redis_url = redis.url();
    let (rate, burst) = (RATE.to_string(), BURST.to_string());
    let data_dir = dir.path().to_str().unwrap();
    let env = [
        ("COFFER_DATA_DIR", data_dir),
        ("COFFER_REDIS_URL", redis_url.as_str()),
        ("COFFER_GATEWAY_RATE_LIMIT_PER_SECOND", rate.as_str()),
        ("COFFER_GATEWAY_RATE_LIMIT_BURST", burst.as_str()),
        // The default (50 ms) suits a production Redis; on a CI box busy with other tests a
        // slow answer would hand a second of checks to the local limits and muddy the count.
        ("COFFER_GATEWAY_REDIS_TIMEOUT_MS", "1000"),
    ];
    let log = || tempfile::tempfile().unwrap();
    let one = GatewayProcess::start_with(&upstreams, &env, log()).await;
    let two = GatewayProcess::start_with(&upstreams, &env, log()).await;
    let bases = [one.base.clone(), two.base.clone()];

    let shared = hammer(&bases, 3).await;
    assert_eq!(shared.other.load(Ordering::Relaxed), 0, "only 200s and 429s with Retry-After");
    for gateway in [&one, &two] {
        assert_eq!(fallbacks(gateway).await, 0.0, "every check was answered by Redis");
    }
    assert!(shared.limited.load(Ordering::Relaxed) > 0, "the clients went over the limit");
    assert_near(
        shared.ok.load(Ordering::Relaxed),
        3.0 * f64::from(RATE) + f64::from(BURST),
        "two gateways, one Redis",
    );
    // What the upstream saw: the allowed requests, not the refused ones.
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", upstream.port()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let served: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("coffer_http_requests_total") && l.contains("route=\"/v1/ledgers\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        (served - shared.ok.load(Ordering::Relaxed) as f64).abs() <= 1.0,
        "the upstream served {served}, the gateways let through {}",
        shared.ok.load(Ordering::Relaxed)
    );

    // Redis goes away: each gateway limits on its own, and nothing fails.
    redis.stop();
    let local = hammer(&bases, 3).await;
    assert_eq!(local.other.load(Ordering::Relaxed), 0, "traffic keeps flowing without Redis");
    for gateway in [&one, &two] {
        assert!(fallbacks(gateway).await > 0.0, "the local limits answered");
    }
    assert_near(
        local.ok.load(Ordering::Relaxed),
        2.0 * (3.0 * f64::from(RATE) + f64::from(BURST)),
        "two gateways, local limits",
    );
}
