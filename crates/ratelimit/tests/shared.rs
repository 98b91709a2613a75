//! Rate limits shared through a real Redis (`COFFER_TEST_REDIS_URL`, default the local server):
//! two processes' limiters together let through the configured rate, not twice it; with Redis
//! stopped each falls back to its local limit and traffic keeps flowing; when Redis is back the
//! shared limit is too.
//!
//! Counts are compared with the time the test measured its checks running, not the time it
//! asked for (a busy machine starts and ends them late): at most `rate × elapsed + burst` with
//! 10 % slack, at least three quarters of it. Sharing (one allowance) and not sharing (one per
//! limiter) are twice apart, far outside either bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_ratelimit::{Limits, Rate};
use coffer_testkit::RedisServer;

/// Long enough that a Redis slowed by a busy machine still answers: a check that times out is
/// decided locally, which would add a second allowance to the count.
const TIMEOUT: Duration = Duration::from_millis(1000);

fn redis_url() -> String {
    std::env::var("COFFER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn unique_prefix() -> String {
    format!("coffer-test-{}", uuid::Uuid::new_v4().simple())
}

/// How many checks of `key` at `rate` the limiters allow, hammering together for about
/// `seconds`, and for how long they really ran.
async fn allowed(limiters: &[Arc<Limits>], key: &str, rate: Rate, seconds: f64) -> (u64, Duration) {
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for limits in limiters {
        let (limits, key) = (limits.clone(), key.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut allowed = 0;
            while Instant::now() < until {
                if limits.check(&key, rate).await.is_allowed() {
                    allowed += 1;
                }
                tokio::task::yield_now().await;
            }
            allowed
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    (total, start.elapsed())
}

/// Whether the local Redis answers.
async fn local_redis() -> bool {
    let client = redis::Client::open(redis_url()).unwrap();
    match client.get_multiplexed_async_connection().await {
        Ok(_) => true,
        Err(e) => coffer_testkit::missing::<()>(&format!("Redis at {}", redis_url()), e).is_some(),
    }
}

/// `got` is what `allowances` limits of `per_second` with `burst` let through in `elapsed`.
fn assert_within((got, elapsed): (u64, Duration), allowances: f64, per_second: f64, burst: f64, what: &str) {
    let most = allowances * (elapsed.as_secs_f64() * per_second + burst);
    let got = got as f64;
    assert!(
        got <= most * 1.10 && got >= most * 0.75,
        "{what}: {got} allowed in {elapsed:?}, the limits allow at most {most:.0}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_holds_cluster_wide_across_two_processes_sharing_redis() {
    if !local_redis().await {
        return;
    }
    let prefix = unique_prefix();
    let two = [
        Arc::new(Limits::shared(&redis_url(), &prefix, TIMEOUT).unwrap()),
        Arc::new(Limits::shared(&redis_url(), &prefix, TIMEOUT).unwrap()),
    ];
    let rate = Rate::new(200.try_into().unwrap(), 20.try_into().unwrap());
    let got = allowed(&two, "key-1", rate, 3.0).await;
    // 200/s plus the burst, for both together.
    assert_within(got, 1.0, 200.0, 20.0, "two limiters sharing Redis");

    // The same with local limits only lets each through on its own: about twice as much.
    let apart = [Arc::new(Limits::local()), Arc::new(Limits::local())];
    let got = allowed(&apart, "key-1", rate, 3.0).await;
    assert_within(got, 2.0, 200.0, 20.0, "two local limiters");
}

#[tokio::test]
async fn a_fresh_key_takes_its_whole_burst_at_once_as_locally() {
    if !local_redis().await {
        return;
    }
    let (shared, local) = (Limits::shared(&redis_url(), &unique_prefix(), TIMEOUT).unwrap(), Limits::local());
    for burst in [1, 3] {
        let rate = Rate::new(std::num::NonZeroU32::MIN, burst.try_into().unwrap());
        for limits in [&shared, &local] {
            let key = format!("burst-{burst}");
            for n in 0..burst {
                assert!(limits.check(&key, rate).await.is_allowed(), "request {n} of a burst of {burst}");
            }
            assert!(!limits.check(&key, rate).await.is_allowed(), "one past a burst of {burst}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_local_limits_apply_and_traffic_keeps_flowing() {
    let Some(mut redis) = RedisServer::start() else { return };
    let prefix = unique_prefix();
    let two = [
        Arc::new(Limits::shared(&redis.url(), &prefix, TIMEOUT).unwrap()),
        Arc::new(Limits::shared(&redis.url(), &prefix, TIMEOUT).unwrap()),
    ];
    let rate = Rate::new(100.try_into().unwrap(), 10.try_into().unwrap());
    assert_within(allowed(&two, "k", rate, 2.0).await, 1.0, 100.0, 10.0, "shared, Redis up");

    redis.stop();
    // Each falls back to its own limit: still limited, and still flowing.
    let got = allowed(&two, "k", rate, 2.0).await;
    assert_within(got, 2.0, 100.0, 10.0, "local fallbacks, Redis down");

    assert!(redis.spawn());
    // Back on the shared limit once the limiters reconnect (within a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = allowed(&two, "warm-up", rate, 0.2).await;
    assert_within(allowed(&two, "k2", rate, 2.0).await, 1.0, 100.0, 10.0, "shared again, Redis back");
}
