//! `coffer-prometheus`: the process-wide Prometheus recorder that the api replicas and the
//! gateway expose, installed one way for both.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Seconds: from well under a group commit to the longest request timeout.
const DURATION_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// How often histogram samples are drained when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the recorder the first time, with `duration_histograms` (names of request
/// durations in seconds) as bucketed histograms, and answers its handle every time, so that
/// tests may start many servers in one process. Should another recorder already be installed,
/// the handle renders an empty page rather than failing the start.
///
/// An upkeep thread drains histogram samples every few seconds: the recorder alone keeps every
/// sample in memory until the next scrape.
pub fn install(duration_histograms: &[&str]) -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = duration_histograms.iter().fold(PrometheusBuilder::new(), |builder, name| {
                let matcher = Matcher::Full((*name).to_owned());
                builder.set_buckets_for_metric(matcher, DURATION_BUCKETS).expect("the buckets are not empty")
            });
            let handle = builder.install_recorder().unwrap_or_else(|err| {
                tracing::warn!(%err, "a metrics recorder was already installed; the metrics page will be empty");
                PrometheusBuilder::new().build_recorder().handle()
            });
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

fn spawn_upkeep(handle: PrometheusHandle) {
    let upkeep = move || {
        loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        }
    };
    if let Err(err) = std::thread::Builder::new().name("coffer-metrics-upkeep".into()).spawn(upkeep) {
        tracing::warn!(%err, "could not start the metrics upkeep thread");
    }
}
