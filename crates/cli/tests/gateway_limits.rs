//! Rate limits at the edge (issue 5): two `coffer gateway` processes sharing a Redis of the
//! test's own hold one API key to the configured rate together (within 10 %), over-limit
//! requests get 429 with Retry-After and never reach the upstream; with Redis stopped each
//! gateway applies the limit locally and traffic keeps flowing.
//!
//! The count a limit lets through is compared with the time the test measured its clients
//! sending, not with the time it asked for: a busy machine starts and stops them late. Over that
//! time the limit lets through at most `rate × elapsed + burst` (10 % slack), and at least three
//! quarters of it — a limit counted twice (half) or not shared (double) is far outside either.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use coffer_testkit::RedisServer;
use common::{GatewayProcess, Server, TOKEN};

/// Low enough that the clients ask for several times more even on a machine busy with other
/// tests: an allowance the clients do not use up would look like a limit too strict.
const RATE: u32 = 50;
const BURST: u32 = 10;

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    limited: AtomicU64,
    other: AtomicU64,
}

/// Sends GET /v1/ledgers through every gateway from several clients for about `seconds`, and
/// answers what came back and how long the clients really sent.
async fn hammer(gateways: &[String], seconds: u64) -> (Arc<Counts>, Duration) {
    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
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
    (counts, start.elapsed())
}

/// How many checks this gateway answered locally because Redis could not be asked.
async fn fallbacks(gateway: &GatewayProcess) -> f64 {
    let metrics = gateway.metrics().await;
    let line = metrics.lines().find(|l| l.starts_with("coffer_ratelimit_redis_fallbacks_total"));
    line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

/// What `limits` limits, each `RATE` a second with `BURST`, let through in `elapsed`: at most.
fn allowance(limits: f64, elapsed: Duration) -> f64 {
    limits * (elapsed.as_secs_f64() * f64::from(RATE) + f64::from(BURST))
}

fn assert_within(got: u64, limits: f64, elapsed: Duration, what: &str) {
    let most = allowance(limits, elapsed);
    let got = got as f64;
    assert!(
        got <= most * 1.10 && got >= most * 0.75,
        "{what}: {got} let through in {elapsed:?}, the limit allows at most {most:.0}"
    );
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

    let (shared, elapsed) = hammer(&bases, 3).await;
    assert_eq!(shared.other.load(Ordering::Relaxed), 0, "only 200s and 429s with Retry-After");
    for gateway in [&one, &two] {
        assert_eq!(fallbacks(gateway).await, 0.0, "every check was answered by Redis");
    }
    assert!(shared.limited.load(Ordering::Relaxed) > 0, "the clients went over the limit");
    assert_within(shared.ok.load(Ordering::Relaxed), 1.0, elapsed, "two gateways, one Redis");
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
    let (local, elapsed) = hammer(&bases, 3).await;
    assert_eq!(local.other.load(Ordering::Relaxed), 0, "traffic keeps flowing without Redis");
    for gateway in [&one, &two] {
        assert!(fallbacks(gateway).await > 0.0, "the local limits answered");
    }
    assert_within(local.ok.load(Ordering::Relaxed), 2.0, elapsed, "two gateways, local limits");
}
