//! The upstream pool: which replicas may take a request now, and which one should.
//!
//! Two signals decide health. Active checks (see `health`) ask `/readyz` on a timer and are the
//! only way back in. Passive outlier detection watches real traffic: connection failures or 5xx
//! answers in a row eject an upstream at once, for at least `eject_ms`, because under load the
//! traffic notices a dead replica long before the next check does.
//!
//! Choosing is power of two choices: two random eligible upstreams, the one with the lower
//! EWMA latency × (in-flight + 1) wins. It avoids both the herd that "least loaded" sends to one
//! replica and the blindness of round robin to a slow one, at O(1) cost per request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;

use crate::config::{GatewayConfig, UpstreamUrl};
use crate::observe;

/// Weight of the newest latency sample in the moving average.
const EWMA_ALPHA: f64 = 0.3;
/// What an upstream with no sample yet is assumed to take, in milliseconds.
const EWMA_START_MS: f64 = 1.0;

/// Index of an upstream in its pool.
pub type UpstreamIndex = usize;

#[derive(Debug)]
struct State {
    healthy: bool,
    ejected_until: Option<Instant>,
    failures_in_a_row: u32,
    checks_failed_in_a_row: u32,
    checks_passed_in_a_row: u32,
    ewma_ms: f64,
}

#[derive(Debug)]
pub struct Upstream {
    pub url: UpstreamUrl,
    in_flight: AtomicUsize,
    state: Mutex<State>,
}

/// How a request to an upstream ended, as far as its health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer below 500, after this long.
    Answered(Duration),
    /// A connection failure, a broken exchange or a 5xx answer.
    Failed,
}

/// One line of `GET /gateway/upstreams`.
#[derive(Debug, Serialize)]
pub struct UpstreamView {
    pub url: String,
    pub healthy: bool,
    pub ejected: bool,
    pub ewma_ms: f64,
    pub in_flight: usize,
    pub failures_in_a_row: u32,
}

/// The thresholds of [`GatewayConfig`] that health decisions use.
#[derive(Debug, Clone, Copy)]
struct Thresholds {
    eject_after_failures: u32,
    eject_for: Duration,
    unhealthy_after_checks: u32,
    healthy_after_checks: u32,
}

#[derive(Debug)]
pub struct Pool {
    upstreams: Vec<Upstream>,
    thresholds: Thresholds,
}

/// Counts a request as in flight on an upstream until dropped (with the response body, so a
/// long download counts as load).
#[derive(Debug)]
pub struct InFlight {
    pool: Arc<Pool>,
    index: UpstreamIndex,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.pool.upstreams[self.index].in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// Every upstream starts healthy, so the gateway serves from its first request; a dead one
    /// is found by the first check or the first request to it, whichever comes first.
    pub fn new(config: &GatewayConfig) -> Self {
        let upstreams = config
            .upstreams
            .0
            .iter()
            .map(|url| {
                observe::upstream_health(url, true);
                Upstream {
                    url: url.clone(),
                    in_flight: AtomicUsize::new(0),
                    state: Mutex::new(State {
                        healthy: true,
                        ejected_until: None,
                        failures_in_a_row: 0,
                        checks_failed_in_a_row: 0,
                        checks_passed_in_a_row: 0,
                        ewma_ms: EWMA_START_MS,
                    }),
                }
            })
            .collect();
        let thresholds = Thresholds {
            eject_after_failures: config.eject_after_failures,
            eject_for: Duration::from_millis(config.eject_ms),
            unhealthy_after_checks: config.unhealthy_after_checks,
            healthy_after_checks: config.healthy_after_checks,
        };
        Self { upstreams, thresholds }
    }

    pub fn len(&self) -> usize {
        self.upstreams.len()
    }

    pub fn get(&self, index: UpstreamIndex) -> &Upstream {
        &self.upstreams[index]
    }

    /// Power of two choices among healthy upstreams not in `tried`; `None` when there is none.
    pub fn pick(&self, tried: &[UpstreamIndex]) -> Option<UpstreamIndex> {
        let eligible: Vec<(UpstreamIndex, f64)> = self
            .upstreams
            .iter()
            .enumerate()
            .filter(|(i, _)| !tried.contains(i))
            .filter_map(|(i, upstream)| upstream.score().map(|score| (i, score)))
            .collect();
        match eligible.len() {
            0 => None,
            1 => Some(eligible[0].0),
            n => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                let (first, second) = (eligible[a], eligible[b]);
                Some(if second.1 < first.1 { second.0 } else { first.0 })
            }
        }
    }

    /// Marks a request as in flight on `index` until the guard is dropped.
    pub fn start(self: &Arc<Self>, index: UpstreamIndex) -> InFlight {
        self.upstreams[index].in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { pool: self.clone(), index }
    }

    /// Passive detection: what a real request saw.
    pub fn record(&self, index: UpstreamIndex, outcome: Outcome) {
        let upstream = &self.upstreams[index];
        let mut state = upstream.lock();
        match outcome {
            Outcome::Answered(latency) => {
                let sample = latency.as_secs_f64() * 1000.0;
                state.ewma_ms = EWMA_ALPHA * sample + (1.0 - EWMA_ALPHA) * state.ewma_ms;
                state.failures_in_a_row = 0;
            }
            Outcome::Failed => {
                state.failures_in_a_row += 1;
                if state.healthy && state.failures_in_a_row >= self.thresholds.eject_after_failures {
                    state.healthy = false;
                    state.checks_passed_in_a_row = 0;
                    state.ejected_until = Some(Instant::now() + self.thresholds.eject_for);
                    drop(state);
                    tracing::warn!(upstream = %upstream.url, "upstream ejected after failures in a row");
                    observe::upstream_health(&upstream.url, false);
                }
            }
        }
    }

    /// Active detection: what a `/readyz` check saw. The only way back in after an ejection.
    pub fn record_check(&self, index: UpstreamIndex, passed: bool) {
        let upstream = &self.upstreams[index];
        let mut state = upstream.lock();
        let was_healthy = state.healthy;
        if passed {
            state.checks_failed_in_a_row = 0;
            state.checks_passed_in_a_row = state.checks_passed_in_a_row.saturating_add(1);
            let served_time = state.ejected_until.is_none_or(|until| Instant::now() >= until);
            if !state.healthy
                && served_time
                && state.checks_passed_in_a_row >= self.thresholds.healthy_after_checks
            {
                state.healthy = true;
                state.ejected_until = None;
                state.failures_in_a_row = 0;
            }
        } else {
            state.checks_passed_in_a_row = 0;
            state.checks_failed_in_a_row = state.checks_failed_in_a_row.saturating_add(1);
            if state.checks_failed_in_a_row >= self.thresholds.unhealthy_after_checks {
                state.healthy = false;
            }
        }
        let healthy = state.healthy;
        drop(state);
        if healthy != was_healthy {
            if healthy {
                tracing::info!(upstream = %upstream.url, "upstream healthy again: re-admitted");
            } else {
                tracing::warn!(upstream = %upstream.url, "upstream failed its health checks");
            }
            observe::upstream_health(&upstream.url, healthy);
        }
    }

    /// Whether any upstream can take a request now.
    pub fn any_healthy(&self) -> bool {
        self.upstreams.iter().any(|u| u.score().is_some())
    }

    pub fn view(&self) -> Vec<UpstreamView> {
        self.upstreams.iter().map(Upstream::view).collect()
    }
}

impl Upstream {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the plain numbers inside inconsistent.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// EWMA latency × (in-flight + 1), or `None` while the upstream may not take requests.
    fn score(&self) -> Option<f64> {
        let state = self.lock();
        if !state.healthy {
            return None;
        }
        Some(state.ewma_ms * (self.in_flight.load(Ordering::Relaxed) + 1) as f64)
    }

    fn view(&self) -> UpstreamView {
        let state = self.lock();
        UpstreamView {
            url: self.url.to_string(),
            healthy: state.healthy,
            ejected: state.ejected_until.is_some_and(|until| Instant::now() < until),
            ewma_ms: (state.ewma_ms * 1000.0).round() / 1000.0,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            failures_in_a_row: state.failures_in_a_row,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Upstreams;

    fn pool(n: usize, eject_ms: u64) -> Arc<Pool> {
        let urls = (0..n).map(|i| UpstreamUrl::try_from(format!("http://u{i}:80")).unwrap()).collect();
        Arc::new(Pool::new(&GatewayConfig {
            upstreams: Upstreams(urls),
            eject_ms,
            ..GatewayConfig::default()
        }))
    }

    #[test]
    fn two_choices_prefer_the_faster_and_less_busy() {
        let pool = pool(2, 5_000);
        pool.record(0, Outcome::Answered(Duration::from_millis(50)));
        pool.record(1, Outcome::Answered(Duration::from_millis(1)));
        for _ in 0..100 {
            assert_eq!(pool.pick(&[]), Some(1));
        }
        let _busy: Vec<_> = (0..100).map(|_| pool.start(1)).collect();
        assert_eq!(pool.pick(&[]), Some(0), "100 in flight outweigh a 50× faster average");
        assert_eq!(pool.pick(&[0]), Some(1), "a retry goes to an upstream not yet tried");
        assert_eq!(pool.pick(&[0, 1]), None);
    }

    #[test]
    fn failures_in_a_row_eject_and_only_checks_readmit() {
        let pool = pool(2, 0);
        pool.record(0, Outcome::Failed);
        pool.record(0, Outcome::Answered(Duration::from_millis(1)));
        pool.record(0, Outcome::Failed);
        pool.record(0, Outcome::Failed);
        assert!(pool.view()[0].healthy, "failures that are not in a row do not eject");
        pool.record(0, Outcome::Failed);
        assert!(!pool.view()[0].healthy);
        for _ in 0..100 {
            assert_eq!(pool.pick(&[]), Some(1), "an ejected upstream gets no traffic");
        }
        pool.record(0, Outcome::Answered(Duration::from_millis(1)));
        assert!(!pool.view()[0].healthy, "traffic cannot re-admit: it gets none");
        pool.record_check(0, true);
        assert!(!pool.view()[0].healthy);
        pool.record_check(0, true);
        assert!(pool.view()[0].healthy, "two passed checks re-admit");
    }

    #[test]
    fn an_ejection_lasts_its_time_even_when_checks_pass() {
        let pool = pool(1, 60_000);
        for _ in 0..3 {
            pool.record(0, Outcome::Failed);
        }
        for _ in 0..10 {
            pool.record_check(0, true);
        }
        assert!(!pool.view()[0].healthy);
        assert!(pool.view()[0].ejected);
        assert!(!pool.any_healthy());
    }

    #[test]
    fn failed_checks_mark_unhealthy() {
        let pool = pool(1, 0);
        pool.record_check(0, false);
        assert!(pool.any_healthy(), "one failed check is not enough");
        pool.record_check(0, false);
        assert!(!pool.any_healthy());
        assert_eq!(pool.pick(&[]), None);
    }
}
