//! `coffer bench --flood-per-second N`: another client beside the measured load, sending `N`
//! requests a second with random bearer tokens, as an attacker guessing tokens would. What the
//! server answers it is counted apart from the measured load, so a run shows both whether the
//! honest throughput held and that the flood was refused (4xx), never failed (5xx).
//!
//! The worst flood for a server is one it must look up: tokens of Coffer's shape with a valid
//! checksum (`--flood-tokens checksummed`; the checksum is no secret), from many addresses
//! (`--flood-sources`), each with its own allowance of failures.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::Rng;
use rand::distr::Alphanumeric;
use serde::Serialize;

use super::client::{Connection, Target};

/// Connections the flood spreads its rate over, at least.
const FLOOD_CONNECTIONS: u32 = 16;

/// What the flood's bearer tokens look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FloodTokens {
    /// 40 random letters and digits.
    Random,
    /// `coffer_`, 64 random hex digits and their valid checksum.
    Checksummed,
}

impl FloodTokens {
    fn next(self) -> String {
        match self {
            Self::Random => rand::rng().sample_iter(&Alphanumeric).take(40).map(char::from).collect(),
            Self::Checksummed => coffer_store::issue_token(),
        }
    }
}

/// How hard the flood pushes, with what, from where.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub per_second: u32,
    pub tokens: FloodTokens,
    /// Loopback source addresses to spread the connections over; `None`: the system's choice.
    pub sources: Option<u16>,
}

/// The `i`th flood source: 127.0.1.1, 127.0.1.2, … (a loopback /8 is the whole of 127/8).
fn source(i: u32) -> std::net::IpAddr {
    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(127, 0, 1, 1)) + i).into()
}

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
pub fn start(target: &Target, plan: Plan, stop: Arc<AtomicBool>) -> tokio::task::JoinSet<FloodReport> {
    let mut tasks = tokio::task::JoinSet::new();
    let sources = plan.sources.map(u32::from);
    let connections = sources.unwrap_or(0).max(FLOOD_CONNECTIONS);
    let interval = Duration::from_secs(1) * connections / plan.per_second.max(1);
    for i in 0..connections {
        let (target, stop) = (target.clone(), stop.clone());
        let from = sources.map(|n| source(i % n));
        tasks.spawn(async move { flood_one(&target, from, plan.tokens, interval, &stop).await });
    }
    tasks
}

async fn flood_one(
    target: &Target,
    from: Option<std::net::IpAddr>,
    tokens: FloodTokens,
    interval: Duration,
    stop: &AtomicBool,
) -> FloodReport {
    let mut report = FloodReport::default();
    let mut connection = Connection::open_from(target, from).await.ok();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let token = tokens.next();
        let Some(open) = connection.as_mut() else {
            report.connection_errors += 1;
            connection = Connection::open_from(target, from).await.ok();
            continue;
        };
        match open.send_as("/v1/ledgers", &format!("Bearer {token}")).await {
            Ok(status) => *report.statuses.entry(status.as_u16()).or_default() += 1,
            Err(_) => {
                report.connection_errors += 1;
                connection = Connection::open_from(target, from).await.ok();
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
