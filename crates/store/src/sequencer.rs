//! The sequencer: group commit for every write to money.
//!
//! Submissions wait on one bounded queue. A single writer task takes the first, gathers more until
//! the batch holds `batch_size_max` commands or `batch_wait_us` passed, hands the whole batch to
//! the [`Backend`] (one transaction, one fsync) and answers every waiter. A hot account therefore
//! costs one row update per batch, not one per transfer. The backend is generic so the SQLite and
//! PostgreSQL stores share this loop.
//!
//! A fatal error of a batch (a damaged row, a broken invariant, a panic in the core) trips the
//! store's [`Halt`]: the writer starts nothing more and answers every waiting and later
//! submission with that error, never a "try again".

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use coffer_ledger::{Command, Outcome, Record, Submission, Timestamp};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

use crate::{Halt, StoreError, StoreResult};

/// Applies a batch of submissions in one transaction.
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    /// One outcome list per submission, in order. An error means nothing of the batch applied
    /// (`Unavailable`, or `Invalid` when a command's data was refused; `Corrupt` and
    /// `InvariantBroken` also stop the store) or that the commit's fate is unknown
    /// (`OutcomeUnknown`).
    async fn apply_batch(
        &self,
        submissions: Arc<[Submission]>,
        now: Timestamp,
    ) -> StoreResult<Vec<Vec<Outcome>>>;
}

/// How the writer forms batches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    pub commands: usize,
    pub wait: Duration,
    /// Batches applied at once. SQLite has one writer, so 1; on PostgreSQL several batches in
    /// flight overlap one's round trips and commit with the next one's, and row locks keep
    /// them as correct as batches from different processes.
    pub in_flight: usize,
}

type Reply = oneshot::Sender<StoreResult<Vec<Outcome>>>;

struct Job {
    submission: Submission,
    reply: Reply,
}

/// The handle to the queue and its writer task.
pub(crate) struct Sequencer {
    queue: mpsc::Sender<Job>,
    closing: watch::Sender<bool>,
    writer: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    halt: Halt,
}

impl Sequencer {
    /// Starts the writer task on the current tokio runtime; a fatal error of a batch trips `halt`,
    /// and the writer stops once anything trips it.
    pub fn start<B: Backend>(backend: B, limits: BatchLimits, queue_capacity: usize, halt: Halt) -> Self {
        let (queue, jobs) = mpsc::channel(queue_capacity);
        let (closing, closed) = watch::channel(false);
        let writer = tokio::spawn(write_loop(backend, jobs, closed, limits, halt.clone()));
        Self { queue, closing, writer: tokio::sync::Mutex::new(Some(writer)), halt }
    }

    /// Queues a submission and waits for its outcomes. Never waits for room in the queue: a full
    /// queue means the store is behind, and the caller should shed load (503 with Retry-After).
    pub async fn submit(&self, submission: Submission) -> StoreResult<Vec<Outcome>> {
        if submission.commands.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(cause) = self.halt.cause() {
            return Err(cause);
        }
        let (reply, answer) = oneshot::channel();
        self.queue.try_send(Job { submission, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => {
                self.halt.cause().unwrap_or_else(|| StoreError::unavailable("the store is shut down"))
            }
        })?;
        // The writer only drops a reply unanswered if it died mid-batch: the commit may have run.
        answer.await.unwrap_or_else(|_| {
            Err(self
                .halt
                .cause()
                .unwrap_or_else(|| StoreError::outcome_unknown("the writer stopped mid-batch")))
        })
    }

    /// Whether the writer still takes submissions.
    pub fn is_open(&self) -> bool {
        !self.queue.is_closed() && !*self.closing.borrow() && self.halt.cause().is_none()
    }

    /// Stops taking submissions; the writer still applies everything already queued.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Closes the queue and waits until the writer has applied every queued submission.
    pub async fn shutdown(&self) {
        self.close();
        // Holding the lock while awaiting makes a second caller wait for the same end.
        let mut writer = self.writer.lock().await;
        if let Some(handle) = writer.take()
            && let Err(e) = handle.await
        {
            tracing::error!(error = %e, "the sequencer's writer ended abnormally");
        }
    }
}

async fn write_loop<B: Backend>(
    backend: B,
    mut jobs: mpsc::Receiver<Job>,
    mut closing: watch::Receiver<bool>,
    limits: BatchLimits,
    halt: Halt,
) {
    let backend = Arc::new(backend);
    let mut running = JoinSet::new();
    let mut carried: Option<Job> = None;
    loop {
        // Wait for a free slot before taking anything from the queue: while every slot is busy,
        // submissions pile up there (and the queue's bound holds), so a busy store makes bigger
        // batches.
        while running.len() >= limits.in_flight.max(1) {
            finished(running.join_next().await, &halt);
        }
        while let Some(done) = running.try_join_next() {
            finished(Some(done), &halt);
        }
        let first = match carried.take() {
            Some(job) => job,
            None => match next_job(&mut jobs, &mut closing, &halt).await {
                Some(job) => job,
                None => break,
            },
        };
        let (batch, rest) = gather(first, &mut jobs, limits).await;
        carried = rest;
        let (backend, halt) = (backend.clone(), halt.clone());
        running.spawn(async move { run_batch(backend, batch, &halt).await });
    }
    // Stopped: what is still queued gets the cause. (Closing instead applied all of it above.)
    if let Some(cause) = halt.cause() {
        jobs.close();
        let queued = std::iter::from_fn(|| jobs.try_recv().ok());
        for job in carried.into_iter().chain(queued) {
            let _ = job.reply.send(Err(cause.clone()));
        }
    }
    // Every batch already taken still completes and answers its waiters.
    while let Some(done) = running.join_next().await {
        finished(Some(done), &halt);
    }
}

/// A batch task that panicked outside the backend (which `run_batch` already guards) is a bug
/// in the writer itself: stop the store.
fn finished(done: Option<Result<(), tokio::task::JoinError>>, halt: &Halt) {
    if let Some(Err(e)) = done
        && let cause = batch_died(e)
        && cause.is_fatal()
    {
        halt.trip(cause);
    }
}

/// The fatal error of a batch task that did not finish: a panic (a broken invariant the core
/// did not catch as one) or, as the runtime shuts down, a cancellation.
fn batch_died(e: tokio::task::JoinError) -> StoreError {
    if !e.is_panic() {
        return StoreError::outcome_unknown("the batch was cancelled");
    }
    let payload = e.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned());
    StoreError::invariant_broken(format!("a batch panicked: {message}"))
}

/// Waits for a job. Once closing, the queue stops taking new jobs but still yields the queued
/// ones; once stopped, it yields none.
async fn next_job(
    jobs: &mut mpsc::Receiver<Job>,
    closing: &mut watch::Receiver<bool>,
    halt: &Halt,
) -> Option<Job> {
    if halt.cause().is_some() {
        return None;
    }
    if !*closing.borrow() {
        tokio::select! {
            biased;
            _ = halt.tripped() => return None,
            job = jobs.recv() => return job,
            // An error means the handle is gone: close as well.
            _ = closing.wait_for(|closing| *closing) => {}
        }
    }
    jobs.close();
    jobs.recv().await
}

/// Fills a batch after `first`. Returns the job that did not fit, to start the next batch:
/// a submission is never split.
async fn gather(first: Job, jobs: &mut mpsc::Receiver<Job>, limits: BatchLimits) -> (Vec<Job>, Option<Job>) {
    let deadline = Instant::now() + limits.wait;
    let mut commands = first.submission.commands.len();
    let mut batch = vec![first];
    while commands < limits.commands {
        let job = match jobs.try_recv() {
            Ok(job) => job,
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => match wait_for_job(jobs, deadline).await {
                Some(job) => job,
                None => break,
            },
        };
        let size = job.submission.commands.len();
        if commands + size > limits.commands {
            return (batch, Some(job));
        }
        commands += size;
        batch.push(job);
    }
    (batch, None)
}

/// The next job if one comes before `deadline`. Tokio's timers tick in milliseconds, so a wait
/// shorter than that yields to other tasks in a loop instead of sleeping a whole tick.
async fn wait_for_job(jobs: &mut mpsc::Receiver<Job>, deadline: Instant) -> Option<Job> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        if left >= Duration::from_millis(2) {
            return tokio::time::timeout(left, jobs.recv()).await.ok().flatten();
        }
        tokio::task::yield_now().await;
        match jobs.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
    }
}

async fn run_batch<B: Backend>(backend: Arc<B>, batch: Vec<Job>, halt: &Halt) {
    let commands: usize = batch.iter().map(|job| job.submission.commands.len()).sum();
    let (submissions, replies): (Vec<Submission>, Vec<Reply>) =
        batch.into_iter().map(|job| (job.submission, job.reply)).unzip();
    metrics::histogram!("coffer_ledger_batch_size").record(commands as f64);

    let span = tracing::debug_span!("batch", commands, submissions = submissions.len());
    let started = Instant::now();
    let submissions: Arc<[Submission]> = submissions.into();
    let results = match halt.cause() {
        // Stopped while this batch was gathered: it must not reach the database.
        Some(cause) => vec![Err(cause); submissions.len()],
        None => apply_guarded(backend, submissions.clone()).instrument(span).await,
    };
    metrics::histogram!("coffer_ledger_commit_duration_seconds").record(started.elapsed().as_secs_f64());
    // Stop before answering anyone, so no waiter can see the error and then a store still open.
    if let Some(fatal) = results.iter().find_map(|r| r.as_ref().err().filter(|e| e.is_fatal())) {
        halt.trip(fatal.clone());
    }

    for ((reply, submission), result) in replies.into_iter().zip(submissions.iter()).zip(results) {
        match &result {
            Ok(outcomes) => count_transfers(submission, outcomes),
            // Fatal errors are reported once, by whoever owns the store, not per waiter.
            Err(e) if e.is_fatal() => {}
            Err(e) => tracing::warn!(error = %e, commands = submission.commands.len(), "submission failed"),
        }
        // A waiter that gave up (client gone) is not an error: its command still applied.
        let _ = reply.send(result);
    }
}

/// [`apply_isolating`] in a task of its own, so that a panic in the core or a backend answers
/// every waiter with a fatal error instead of leaving them without an answer.
async fn apply_guarded<B: Backend>(
    backend: Arc<B>,
    submissions: Arc<[Submission]>,
) -> Vec<StoreResult<Vec<Outcome>>> {
    let count = submissions.len();
    let task = tokio::spawn(
        async move { apply_isolating(backend.as_ref(), submissions, Timestamp::now()).await }
            .in_current_span(),
    );
    task.await.unwrap_or_else(|e| vec![Err(batch_died(e)); count])
}

/// Applies `submissions` as one group commit, answering each submission's result in order.
///
/// One client's bad command must not fail everyone else's (DESIGN §5). When the store refuses
/// the batch's data ([`StoreError::Invalid`]), nothing of it applied, so it runs again in two
/// halves, in order, down to single submissions: only the guilty one gets the error, every other
/// one is applied. A submission is never split, as its commands may be atomic. Other errors (a
/// lost connection, a full disk) are no command's fault and fail the whole batch as before.
async fn apply_isolating<B: Backend>(
    backend: &B,
    submissions: Arc<[Submission]>,
    now: Timestamp,
) -> Vec<StoreResult<Vec<Outcome>>> {
    match backend.apply_batch(submissions.clone(), now).await {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(StoreError::Invalid { context: why, .. }) if submissions.len() > 1 => {
            metrics::counter!("coffer_store_batch_splits_total").increment(1);
            tracing::debug!(%why, submissions = submissions.len(), "batch refused by the store; applying it in halves");
            let (left, right) = submissions.split_at(submissions.len() / 2);
            let mut results = Box::pin(apply_isolating(backend, left.into(), now)).await;
            results.extend(Box::pin(apply_isolating(backend, right.into(), now)).await);
            results
        }
        Err(e) => vec![Err(e); submissions.len()],
    }
}

fn makes_transfer(command: &Command) -> bool {
    matches!(command, Command::CreateTransfer(_) | Command::PostPending(_) | Command::VoidPending(_))
}

fn count_transfers(submission: &Submission, outcomes: &[Outcome]) {
    let (mut created, mut exists, mut rejected) = (0u64, 0u64, 0u64);
    // Which commands make a transfer: the outcomes alone cannot say whether a rejected command
    // was a transfer.
    for (command, outcome) in submission.commands.iter().zip(outcomes) {
        match outcome {
            _ if !makes_transfer(command) => {}
            Outcome::Created(Record::Transfer(_)) => created += 1,
            Outcome::Exists(_) => exists += 1,
            Outcome::Rejected(_) => rejected += 1,
            Outcome::Created(_) => {}
        }
    }
    for (result, n) in [("created", created), ("exists", exists), ("rejected", rejected)] {
        if n > 0 {
            metrics::counter!("coffer_transfers_total", "result" => result).increment(n);
        }
    }
}

#[cfg(test)]
mod tests;
