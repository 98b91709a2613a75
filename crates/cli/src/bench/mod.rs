//! `coffer bench`: a load generator for a running Coffer. It sets up its own ledger and accounts,
//! drives N connections for a fixed time or request count, and reports throughput and latency.
//! The load is transfers (single or batched) or, with `--reads`, reads of the accounts it made.

mod client;
mod flood;
mod report;
mod workload;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};

use self::client::{Connection, Target};
use self::report::{Report, WorkerStats};
use self::workload::Workload;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The server and an API token with the admin scope (the run creates a ledger).
    #[command(flatten)]
    server: crate::server_args::ServerArgs,
    /// Concurrent connections, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// How long to run, in seconds (ignored with --count).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Stop after this many requests instead of after --seconds.
    #[arg(long)]
    count: Option<u64>,
    /// Accounts to choose from uniformly.
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    /// Credit every transfer to one hot account.
    #[arg(long)]
    hot: bool,
    /// Transfers per request: 1 uses POST /v1/transfers, more uses the batch endpoint.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Read a random one of the accounts (GET /v1/accounts/{id}) instead of sending transfers.
    #[arg(long, conflicts_with_all = ["hot", "batch"])]
    reads: bool,
    /// Ledger to create and use.
    #[arg(long, default_value = "BENCH")]
    ledger: String,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// Meanwhile, another client sends this many requests a second with random bearer tokens;
    /// what they got is reported apart.
    #[arg(long)]
    flood_per_second: Option<u32>,
    /// What the flood's tokens are: `random` text, or `checksummed` tokens of Coffer's own shape
    /// with a valid checksum (no key's, but the server must look each one up).
    #[arg(long, value_enum, default_value_t = flood::FloodTokens::Random, requires = "flood_per_second")]
    flood_tokens: flood::FloodTokens,
    /// Spread the flood over this many loopback source addresses (127.0.1.1 on), one connection
    /// each (at least 16 connections), as a botnet would: the server limits failures per address.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000), requires = "flood_per_second")]
    flood_sources: Option<u16>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.accounts < 2 || !(1..=8189).contains(&args.batch) {
        bail!("need --connections ≥ 1, --accounts ≥ 2 and 1 ≤ --batch ≤ 8189");
    }
    let target = Target::parse(&args.server.url, args.server.token()?)?;
    let workload = Arc::new(Workload::set_up(&target, &args).await?);

    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let bar = progress_bar(&args);
    let started = Instant::now();
    let flood_stop = Arc::new(AtomicBool::new(false));
    let floods = args.flood_per_second.map(|rate| {
        let plan = flood::Plan { per_second: rate, tokens: args.flood_tokens, sources: args.flood_sources };
        flood::start(&target, plan, flood_stop.clone())
    });
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.connections {
        let (target, workload, sent, stop) = (target.clone(), workload.clone(), sent.clone(), stop.clone());
        let limit = args.count;
        workers.spawn(async move { drive(&target, &workload, &sent, &stop, limit).await });
    }
    let ticker = {
        let (bar, sent, stop) = (bar.clone(), sent.clone(), stop.clone());
        let (deadline, count) = (Duration::from_secs(args.seconds), args.count);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let done = sent.load(Ordering::Relaxed);
                match count {
                    Some(_) => bar.set_position(done),
                    None => bar.set_position(started.elapsed().as_secs().min(deadline.as_secs())),
                }
                let rate = done as f64 / started.elapsed().as_secs_f64();
                bar.set_message(format!("{rate:.0} req/s"));
                if count.is_none() && started.elapsed() >= deadline {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        })
    };
    let mut stats = WorkerStats::new();
    while let Some(result) = workers.join_next().await {
        stats.merge(result??);
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    flood_stop.store(true, Ordering::Relaxed);
    let _ = ticker.await;
    bar.finish_and_clear();
    let flood = match floods {
        Some(tasks) => {
            let mut flood = flood::FloodReport {
                per_second_asked: args.flood_per_second.unwrap_or(0),
                ..Default::default()
            };
            for report in tasks.join_all().await {
                flood.merge(report);
            }
            flood.per_second = flood.sent as f64 / elapsed.as_secs_f64();
            Some(flood)
        }
        None => None,
    };

    let report = Report::new(&args, stats, elapsed, flood);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

fn progress_bar(args: &BenchArgs) -> ProgressBar {
    let (length, unit) = match args.count {
        Some(count) => (count, "requests"),
        None => (args.seconds, "s"),
    };
    let style = ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {unit}  {{msg}}"))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(length).with_style(style)
}

/// One connection's loop: send, time, count, until told to stop or the request budget is spent.
async fn drive(
    target: &Target,
    workload: &Workload,
    sent: &AtomicU64,
    stop: &AtomicBool,
    limit: Option<u64>,
) -> anyhow::Result<WorkerStats> {
    let mut stats = WorkerStats::new();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    let mut connection = Connection::open(target).await?;
    while !stop.load(Ordering::Relaxed) {
        if limit.is_some_and(|limit| sent.fetch_add(1, Ordering::Relaxed) >= limit) {
            break;
        }
        let (path, body) = workload.next_request(&mut rng);
        let began = Instant::now();
        let result = connection.send(&path, body).await;
        let micros = began.elapsed().as_micros() as u64;
        if limit.is_none() {
            sent.fetch_add(1, Ordering::Relaxed);
        }
        match result {
            Ok((status, body)) => {
                stats.latency_us.saturating_record(micros);
                stats.record(status, &body, workload.transfers_per_request());
            }
            Err(_) => {
                stats.connection_errors += 1;
                connection = Connection::open(target).await?;
            }
        }
    }
    Ok(stats)
}
