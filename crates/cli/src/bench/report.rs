//! Counting what came back and printing the summary.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use hyper::StatusCode;
use serde::Serialize;

use super::BenchArgs;
use super::flood::FloodReport;

/// The slowest latency the histogram tells apart; anything slower is counted as this.
const LATENCY_CEILING_US: u64 = 600_000_000;

pub struct WorkerStats {
    pub latency_us: Histogram<u64>,
    pub ok_requests: u64,
    pub transfers_created: u64,
    pub failed_items: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub connection_errors: u64,
}

impl WorkerStats {
    pub fn new() -> Self {
        Self {
            // 1 µs to 10 min at three significant digits. Fixed bounds on purpose: a histogram
            // that grows on demand clamps `saturating_record` to its *initial* range instead.
            latency_us: Histogram::new_with_bounds(1, LATENCY_CEILING_US, 3)
                .expect("1 µs..10 min at 3 significant digits is a valid histogram"),
            ok_requests: 0,
            transfers_created: 0,
            failed_items: 0,
            statuses: BTreeMap::new(),
            connection_errors: 0,
        }
    }

    /// Counts one answer to a request that carried `transfers` transfers (0 for a read).
    pub fn record(&mut self, status: StatusCode, body: &[u8], transfers: usize) {
        if !status.is_success() {
            *self.statuses.entry(status.as_u16()).or_default() += 1;
            return;
        }
        self.ok_requests += 1;
        match transfers {
            0 => {}
            1 => self.transfers_created += 1,
            batch => {
                let failed = count(body, br#""status":"failed""#);
                self.failed_items += failed;
                self.transfers_created += batch as u64 - failed;
            }
        }
    }

    pub fn merge(&mut self, other: WorkerStats) {
        // Both histograms have the same bounds, so adding cannot fail for lack of range.
        let _ = self.latency_us.add(&other.latency_us);
        self.ok_requests += other.ok_requests;
        self.transfers_created += other.transfers_created;
        self.failed_items += other.failed_items;
        self.connection_errors += other.connection_errors;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
    }
}

fn count(haystack: &[u8], needle: &[u8]) -> u64 {
    haystack.windows(needle.len()).filter(|w| *w == needle).count() as u64
}

#[derive(Serialize)]
pub struct Report {
    pub connections: usize,
    pub mode: String,
    pub batch: usize,
    pub reads: bool,
    pub seconds: f64,
    pub ok_requests: u64,
    pub transfers: u64,
    pub transfers_per_second: f64,
    pub requests_per_second: f64,
    pub latency_ms: Latency,
    pub errors: u64,
    pub error_statuses: BTreeMap<u16, u64>,
    pub failed_items: u64,
    pub connection_errors: u64,
    /// With `--flood-per-second`: what the other client's random tokens got.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flood: Option<FloodReport>,
}

#[derive(Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Report {
    pub fn new(args: &BenchArgs, stats: WorkerStats, elapsed: Duration, flood: Option<FloodReport>) -> Self {
        let seconds = elapsed.as_secs_f64();
        let ms = |q: f64| stats.latency_us.value_at_quantile(q) as f64 / 1000.0;
        let errors = stats.statuses.values().sum::<u64>() + stats.connection_errors;
        Self {
            connections: args.connections,
            mode: if args.hot { "hot".into() } else { format!("uniform over {} accounts", args.accounts) },
            batch: args.batch,
            reads: args.reads,
            seconds,
            ok_requests: stats.ok_requests,
            transfers: stats.transfers_created,
            transfers_per_second: stats.transfers_created as f64 / seconds,
            requests_per_second: stats.ok_requests as f64 / seconds,
            latency_ms: Latency {
                p50: ms(0.50),
                p95: ms(0.95),
                p99: ms(0.99),
                max: stats.latency_us.max() as f64 / 1000.0,
            },
            errors,
            error_statuses: stats.statuses,
            failed_items: stats.failed_items,
            connection_errors: stats.connection_errors,
            flood,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shape = if self.reads {
            "reads of one account (GET /v1/accounts/{id})".to_owned()
        } else if self.batch <= 1 {
            "single transfers".to_owned()
        } else {
            format!("batches of {}", self.batch)
        };
        writeln!(
            f,
            "coffer bench: {} connections, {}, {shape}, {:.1} s",
            self.connections, self.mode, self.seconds
        )?;
        if self.reads {
            writeln!(f, "throughput: {:.0} reads/s ({} reads)", self.requests_per_second, self.ok_requests)?;
        } else {
            writeln!(
                f,
                "throughput: {:.0} transfers/s ({:.0} requests/s, {} transfers)",
                self.transfers_per_second, self.requests_per_second, self.transfers
            )?;
        }
        let l = &self.latency_ms;
        writeln!(
            f,
            "latency:    p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            l.p50, l.p95, l.p99, l.max
        )?;
        write!(
            f,
            "errors:     {} (statuses {:?}, connection errors {}, failed batch items {})",
            self.errors, self.error_statuses, self.connection_errors, self.failed_items
        )?;
        if let Some(flood) = &self.flood {
            write!(
                f,
                "\nflood:      {:.0} random-token requests/s ({} sent; statuses {:?}; {} server errors, {} connection errors)",
                flood.per_second,
                flood.sent,
                flood.statuses,
                flood.server_errors(),
                flood.connection_errors
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_beyond_the_first_milliseconds_are_kept() {
        let mut stats = WorkerStats::new();
        for micros in [900, 5_000, 5_000, 40_000, 3_000_000] {
            stats.latency_us.saturating_record(micros);
        }
        let ms = |q| stats.latency_us.value_at_quantile(q) as f64 / 1000.0;
        assert!((ms(0.5) - 5.0).abs() < 0.01, "p50 {}", ms(0.5));
        assert!((ms(0.8) - 40.0).abs() < 0.1, "p80 {}", ms(0.8));
        assert!((stats.latency_us.max() as f64 / 1000.0 - 3000.0).abs() < 3.0);
    }
}
