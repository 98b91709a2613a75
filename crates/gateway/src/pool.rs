//! The upstream pool: which replicas may take a request now, and which one should.
//!
//! Two signals decide health. Active checks (see `health`) ask `/readyz` on a timer. Real
//! traffic drives a circuit breaker per upstream: connection failures or 5xx answers in a row
//! open it at once (under load the traffic notices a dead replica long before the next check
//! does). An open circuit takes nothing for `eject_ms`, then, once checks pass again, goes
//! half-open: one request at a time is let through as a trial. A trial that succeeds closes the
//! circuit; one that fails opens it again for twice as long (up to `eject_max_ms`), so a
//! replica that passes its checks but fails real work is tried ever more rarely instead of
//! every few seconds.
//!
//! Choosing is power of two choices: two random eligible upstreams, the one with the lower
//! EWMA latency × (in-flight + 1) wins. It avoids both the herd that "least loaded" sends to one
//! replica and the blindness of round robin to a slow one, at O(1) cost per request.
//!
//! The list can change while the gateway runs ([`Pool::replace`]): an upstream that leaves it
//! takes no new request and drains — requests in flight on it finish — before it is forgotten.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;

use crate::config::{GatewayConfig, UpstreamUrl};
use crate::observe;

/// Weight of the newest latency sample in the moving average.
const EWMA_ALPHA: f64 = 0.3;
/// What an upstream with no sample yet is assumed to take, in milliseconds.
const EWMA_START_MS: f64 = 1.0;

/// The circuit breaker's state, driven by real traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Circuit {
    Closed,
    /// Takes nothing until `until`, and until checks pass again.
    Open {
        #[serde(skip)]
        until: Instant,
    },
    /// Takes one trial request at a time.
    HalfOpen,
}

#[derive(Debug)]
struct State {
    /// What the active checks say.
    checks_ok: bool,
    circuit: Circuit,
    /// Times the circuit opened since it was last closed: each doubles the next open time.
    trips: u32,
    failures_in_a_row: u32,
    checks_failed_in_a_row: u32,
    checks_passed_in_a_row: u32,
    ewma_ms: f64,
}

impl State {
    /// Whether the upstream may be chosen now, by checks and circuit alike.
    fn serving(&self) -> bool {
        self.checks_ok && !matches!(self.circuit, Circuit::Open { .. })
    }
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
    /// Takes requests now (checks pass and the circuit is not open).
    pub healthy: bool,
    pub circuit: Circuit,
    /// Whether the circuit is open and its open time has not run out.
    pub ejected: bool,
    /// Removed from the list; finishing its requests in flight.
    pub draining: bool,
    pub ewma_ms: f64,
    pub in_flight: usize,
    pub failures_in_a_row: u32,
}

/// The thresholds of [`GatewayConfig`] that health decisions use.
#[derive(Debug, Clone, Copy)]
struct Thresholds {
    eject_after_failures: u32,
    eject_for: Duration,
    eject_max: Duration,
    unhealthy_after_checks: u32,
    healthy_after_checks: u32,
}

impl Thresholds {
    /// How long the circuit stays open after its `trips`-th opening in a row (0 for the first).
    fn open_for(&self, trips: u32) -> Duration {
        self.eject_for.saturating_mul(1 << trips.min(16)).min(self.eject_max)
    }
}

#[derive(Debug)]
pub struct Pool {
    upstreams: RwLock<Vec<Arc<Upstream>>>,
    /// Removed from the list, with requests still in flight.
    draining: Mutex<Vec<Arc<Upstream>>>,
    thresholds: Thresholds,
}

/// Counts a request as in flight on an upstream until dropped (with the response body, so a
/// long download counts as load).
#[derive(Debug)]
pub struct InFlight {
    upstream: Arc<Upstream>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.upstream.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub fn new(config: &GatewayConfig) -> Self {
        let thresholds = Thresholds {
            eject_after_failures: config.eject_after_failures,
            eject_for: Duration::from_millis(config.eject_ms),
            eject_max: Duration::from_millis(config.eject_max_ms),
            unhealthy_after_checks: config.unhealthy_after_checks,
            healthy_after_checks: config.healthy_after_checks,
        };
        let upstreams = config.upstreams.0.iter().map(Upstream::new).collect();
        Self { upstreams: RwLock::new(upstreams), draining: Mutex::new(Vec::new()), thresholds }
    }

    /// The upstreams in the list now.
    pub fn list(&self) -> Vec<Arc<Upstream>> {
        self.upstreams.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Makes `urls` the list. Upstreams that stay keep their state; new ones start healthy;
    /// removed ones drain. Answers how many were added and removed.
    pub fn replace(&self, urls: &[UpstreamUrl]) -> (usize, usize) {
        let mut list = self.upstreams.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (kept, removed): (Vec<_>, Vec<_>) = list.drain(..).partition(|u| urls.contains(&u.url));
        let added: Vec<_> =
            urls.iter().filter(|url| !kept.iter().any(|u| &u.url == *url)).map(Upstream::new).collect();
        let counts = (added.len(), removed.len());
        *list = kept.into_iter().chain(added).collect();
        drop(list);
        for upstream in &removed {
            tracing::info!(upstream = %upstream.url, in_flight = upstream.in_flight(), "upstream removed: draining");
        }
        self.draining.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(removed);
        counts
    }

    /// Forgets removed upstreams whose last request has finished.
    pub fn forget_drained(&self) {
        let mut draining = self.draining.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        draining.retain(|upstream| {
            let done = upstream.in_flight() == 0;
            if done {
                tracing::info!(upstream = %upstream.url, "upstream drained");
            }
            !done
        });
    }

    /// Power of two choices among serving upstreams not in `tried`; `None` when there is none.
    pub fn pick(&self, tried: &[Arc<Upstream>]) -> Option<Arc<Upstream>> {
        let list = self.upstreams.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let eligible: Vec<(&Arc<Upstream>, f64)> = list
            .iter()
            .filter(|u| !tried.iter().any(|t| Arc::ptr_eq(t, u)))
            .filter_map(|upstream| upstream.score().map(|score| (upstream, score)))
            .collect();
        let chosen = match eligible.len() {
            0 => return None,
            1 => eligible[0].0,
            n => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                let (first, second) = (eligible[a], eligible[b]);
                if second.1 < first.1 { second.0 } else { first.0 }
            }
        };
        Some(chosen.clone())
    }

    /// Passive detection: what a real request saw. Drives the circuit breaker.
    pub fn record(&self, upstream: &Upstream, outcome: Outcome) {
        let mut state = upstream.lock();
        let was_serving = state.serving();
        match outcome {
            Outcome::Answered(latency) => {
                let sample = latency.as_secs_f64() * 1000.0;
                state.ewma_ms = EWMA_ALPHA * sample + (1.0 - EWMA_ALPHA) * state.ewma_ms;
                state.failures_in_a_row = 0;
                if state.circuit == Circuit::HalfOpen {
                    state.circuit = Circuit::Closed;
                    state.trips = 0;
                    tracing::info!(upstream = %upstream.url, "trial request succeeded: circuit closed");
                }
            }
            Outcome::Failed => {
                state.failures_in_a_row += 1;
                let trip = match state.circuit {
                    Circuit::Closed => state.failures_in_a_row >= self.thresholds.eject_after_failures,
                    Circuit::HalfOpen => true,
                    Circuit::Open { .. } => false,
                };
                if trip {
                    let open_for = self.thresholds.open_for(state.trips);
                    state.circuit = Circuit::Open { until: Instant::now() + open_for };
                    state.trips = state.trips.saturating_add(1);
                    state.checks_passed_in_a_row = 0;
                    tracing::warn!(upstream = %upstream.url, ?open_for, "circuit opened after failures");
                }
            }
        }
        report_change(upstream, was_serving, state.serving());
    }

    /// Active detection: what a `/readyz` check saw. After an open circuit's time has run out,
    /// passed checks let the first trial request in.
    pub fn record_check(&self, upstream: &Upstream, passed: bool) {
        let mut state = upstream.lock();
        let was_serving = state.serving();
        if passed {
            state.checks_failed_in_a_row = 0;
            state.checks_passed_in_a_row = state.checks_passed_in_a_row.saturating_add(1);
            let enough = state.checks_passed_in_a_row >= self.thresholds.healthy_after_checks;
            if enough {
                state.checks_ok = true;
                if let Circuit::Open { until } = state.circuit
                    && Instant::now() >= until
                {
                    state.circuit = Circuit::HalfOpen;
                    state.failures_in_a_row = 0;
                }
            }
        } else {
            state.checks_passed_in_a_row = 0;
            state.checks_failed_in_a_row = state.checks_failed_in_a_row.saturating_add(1);
            if state.checks_failed_in_a_row >= self.thresholds.unhealthy_after_checks {
                state.checks_ok = false;
            }
        }
        report_change(upstream, was_serving, state.serving());
    }

    /// Whether any upstream can take a request now.
    pub fn any_healthy(&self) -> bool {
        self.list().iter().any(|u| u.score().is_some())
    }

    /// The list, then the upstreams still draining.
    pub fn view(&self) -> Vec<UpstreamView> {
        let draining = self.draining.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let listed = self.list().iter().map(|u| u.view(false)).collect::<Vec<_>>();
        listed.into_iter().chain(draining.iter().map(|u| u.view(true))).collect()
    }
}

fn report_change(upstream: &Upstream, was_serving: bool, serving: bool) {
    if serving != was_serving {
        if serving {
            tracing::info!(upstream = %upstream.url, "upstream healthy again: re-admitted");
        } else {
            tracing::warn!(upstream = %upstream.url, "upstream taken out of service");
        }
        observe::upstream_health(&upstream.url, serving);
    }
}

impl Upstream {
    /// Every upstream starts healthy, so the gateway serves from its first request; a dead one
    /// is found by the first check or the first request to it, whichever comes first.
    fn new(url: &UpstreamUrl) -> Arc<Self> {
        observe::upstream_health(url, true);
        Arc::new(Upstream {
            url: url.clone(),
            in_flight: AtomicUsize::new(0),
            state: Mutex::new(State {
                checks_ok: true,
                circuit: Circuit::Closed,
                trips: 0,
                failures_in_a_row: 0,
                checks_failed_in_a_row: 0,
                checks_passed_in_a_row: 0,
                ewma_ms: EWMA_START_MS,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the plain numbers inside inconsistent.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Marks a request as in flight here until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { upstream: self.clone() }
    }

    /// EWMA latency × (in-flight + 1), or `None` while the upstream may not take a request:
    /// checks fail, the circuit is open, or it is half-open with its trial still in flight.
    fn score(&self) -> Option<f64> {
        let state = self.lock();
        let in_flight = self.in_flight();
        if !state.serving() || (state.circuit == Circuit::HalfOpen && in_flight > 0) {
            return None;
        }
        Some(state.ewma_ms * (in_flight + 1) as f64)
    }

    fn view(&self, draining: bool) -> UpstreamView {
        let state = self.lock();
        UpstreamView {
            url: self.url.to_string(),
            healthy: state.serving() && !draining,
            circuit: state.circuit,
            ejected: matches!(state.circuit, Circuit::Open { until } if Instant::now() < until),
            draining,
            ewma_ms: (state.ewma_ms * 1000.0).round() / 1000.0,
            in_flight: self.in_flight(),
            failures_in_a_row: state.failures_in_a_row,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Upstreams;

    fn url(i: usize) -> UpstreamUrl {
        UpstreamUrl::try_from(format!("http://u{i}:80")).unwrap()
    }

    fn pool(n: usize, eject_ms: u64) -> Arc<Pool> {
        Arc::new(Pool::new(&GatewayConfig {
            upstreams: Upstreams((0..n).map(url).collect()),
            eject_ms,
            eject_max_ms: eject_ms.max(1) * 8,
            ..GatewayConfig::default()
        }))
    }

    fn picked(pool: &Pool, tried: &[Arc<Upstream>]) -> Option<String> {
        pool.pick(tried).map(|u| u.url.to_string())
    }

    fn fail(pool: &Pool, upstream: &Upstream, times: usize) {
        for _ in 0..times {
            pool.record(upstream, Outcome::Failed);
        }
    }

    #[test]
    fn two_choices_prefer_the_faster_and_less_busy() {
        let pool = pool(2, 5_000);
        let [a, b] = [0, 1].map(|i| pool.list()[i].clone());
        pool.record(&a, Outcome::Answered(Duration::from_millis(50)));
        pool.record(&b, Outcome::Answered(Duration::from_millis(1)));
        for _ in 0..100 {
            assert_eq!(picked(&pool, &[]).unwrap(), b.url.to_string());
        }
        let _busy: Vec<_> = (0..100).map(|_| b.start()).collect();
        assert_eq!(
            picked(&pool, &[]).unwrap(),
            a.url.to_string(),
            "100 in flight outweigh a 50× faster average"
        );
        assert_eq!(
            picked(&pool, std::slice::from_ref(&a)).unwrap(),
            b.url.to_string(),
            "a retry goes to an upstream not yet tried"
        );
        assert_eq!(picked(&pool, &[a, b]), None);
    }

    #[test]
    fn failures_in_a_row_open_the_circuit_and_a_trial_closes_it() {
        let pool = pool(2, 0);
        let a = pool.list()[0].clone();
        pool.record(&a, Outcome::Failed);
        pool.record(&a, Outcome::Answered(Duration::from_millis(1)));
        fail(&pool, &a, 2);
        assert!(pool.view()[0].healthy, "failures that are not in a row do not open it");
        fail(&pool, &a, 1);
        assert!(!pool.view()[0].healthy);
        for _ in 0..100 {
            assert_eq!(picked(&pool, &[]).unwrap(), "http://u1:80", "an open circuit gets no traffic");
        }
        pool.record_check(&a, true);
        assert!(!pool.view()[0].healthy, "one passed check is not enough");
        pool.record_check(&a, true);
        assert_eq!(pool.view()[0].circuit, Circuit::HalfOpen, "two passed checks let a trial in");
        let trial = a.start();
        assert_eq!(picked(&pool, &[]).unwrap(), "http://u1:80", "one trial at a time");
        drop(trial);
        pool.record(&a, Outcome::Answered(Duration::from_millis(1)));
        assert_eq!(pool.view()[0].circuit, Circuit::Closed);
        let _busy: Vec<_> = (0..2).map(|_| a.start()).collect();
        assert!(pool.pick(&[pool.list()[1].clone()]).is_some(), "a closed circuit takes many at once");
    }

    #[test]
    fn a_failed_trial_opens_the_circuit_for_twice_as_long() {
        let pool = pool(1, 40);
        let a = pool.list()[0].clone();
        fail(&pool, &a, 3);
        std::thread::sleep(Duration::from_millis(50));
        pool.record_check(&a, true);
        pool.record_check(&a, true);
        assert_eq!(pool.view()[0].circuit, Circuit::HalfOpen);
        pool.record(&a, Outcome::Failed);
        assert!(pool.view()[0].ejected, "one failed trial opens it again");
        std::thread::sleep(Duration::from_millis(50));
        pool.record_check(&a, true);
        pool.record_check(&a, true);
        assert!(pool.view()[0].ejected, "the second opening lasts 80 ms, not 40");
        std::thread::sleep(Duration::from_millis(40));
        pool.record_check(&a, true);
        assert_eq!(pool.view()[0].circuit, Circuit::HalfOpen);
        assert!(pool.any_healthy());
    }

    #[test]
    fn an_open_circuit_lasts_its_time_even_when_checks_pass() {
        let pool = pool(1, 60_000);
        let a = pool.list()[0].clone();
        fail(&pool, &a, 3);
        for _ in 0..10 {
            pool.record_check(&a, true);
        }
        assert!(!pool.view()[0].healthy);
        assert!(pool.view()[0].ejected);
        assert!(!pool.any_healthy());
    }

    #[test]
    fn failed_checks_mark_unhealthy() {
        let pool = pool(1, 0);
        let a = pool.list()[0].clone();
        pool.record_check(&a, false);
        assert!(pool.any_healthy(), "one failed check is not enough");
        pool.record_check(&a, false);
        assert!(!pool.any_healthy());
        assert_eq!(picked(&pool, &[]), None);
    }

    #[test]
    fn a_removed_upstream_takes_nothing_new_and_is_forgotten_once_drained() {
        let pool = pool(2, 0);
        let a = pool.list()[0].clone();
        pool.record(&a, Outcome::Answered(Duration::from_millis(7)));
        let in_flight = pool.list()[1].start();
        assert_eq!(pool.replace(&[url(0), url(2)]), (1, 1));
        let view = pool.view();
        let urls: Vec<_> = view.iter().map(|v| (v.url.as_str(), v.draining)).collect();
        assert_eq!(urls, [("http://u0:80", false), ("http://u2:80", false), ("http://u1:80", true)]);
        assert_eq!(view[0].ewma_ms, a.view(false).ewma_ms, "a kept upstream keeps its state");
        for _ in 0..100 {
            assert_ne!(picked(&pool, &[]).unwrap(), "http://u1:80", "a draining upstream gets nothing new");
        }
        pool.forget_drained();
        assert_eq!(pool.view().len(), 3, "still a request in flight");
        drop(in_flight);
        pool.forget_drained();
        assert_eq!(pool.view().len(), 2);
    }
}
