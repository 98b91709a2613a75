//! `coffer bench --flood-per-second N`: another client beside the measured load, sending `N`
//! requests a second with random bearer tokens, as an attacker guessing tokens would. What the
//! server answers it is counted apart from the measured load, so a run shows both whether the
//! honest throughput held and that the flood was refused (4xx), never failed (5xx).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::Rng;
use rand::distr::Alphanumeric;
use serde::Serialize;

use super::client::{Connection, Target};

/// Connections the flood spreads its rate over.
const FLOOD_CONNECTIONS: u32 = 16;

/// What the flood sent and what came back.
#[derive(Debug, Default, Serialize)]
pub struct FloodReport {
    pub per_second_asked: u32,
    pub sent: u64,
    pub per_second: f64,
    /// Responses by status.
    pub statuses: BTreeMap<u16, u64>,
    pub connection_errors: u64,
}

/// Starts the flood; it runs until `stop`, and its tasks answer what each saw.
pub fn start(target: &Target, per_second: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinSet<FloodReport> {
    let mut tasks = tokio::task::JoinSet::new();
    let interval = Duration::from_secs(1) * FLOOD_CONNECTIONS / per_second.max(1);
    for _ in 0..FLOOD_CONNECTIONS {
        let (target, stop) = (target.clone(), stop.clone());
        tasks.spawn(async move { flood_one(&target, interval, &stop).await });
    }
    tasks
}

async fn flood_one(target: &Target, interval: Duration, stop: &AtomicBool) -> FloodReport {
    let mut report = FloodReport::default();
    let mut connection = Connection::open(target).await.ok();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let token: String = rand::rng().sample_iter(&Alphanumeric).take(40).map(char::from).collect();
        let Some(open) = connection.as_mut() else {
            report.connection_errors += 1;
            connection = Connection::open(target).await.ok();
            continue;
        };
        match open.send_as("/v1/ledgers", &format!("Bearer {token}")).await {
            Ok(status) => *report.statuses.entry(status.as_u16()).or_default() += 1,
            Err(_) => {
                report.connection_errors += 1;
                connection = Connection::open(target).await.ok();
            }
        }
        report.sent += 1;
    }
    report
}

impl FloodReport {
    pub fn merge(&mut self, other: FloodReport) {
        self.sent += other.sent;
        self.connection_errors += other.connection_errors;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
    }

    /// Responses that were a server error: the target is none.
    pub fn server_errors(&self) -> u64 {
        self.statuses.range(500..).map(|(_, n)| n).sum()
    }
}
