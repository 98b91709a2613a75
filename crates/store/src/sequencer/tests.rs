//! The sequencer against a fake backend: batching, ordering, errors, back-pressure, shutdown, and
//! the stop after a fatal error.

use std::sync::{Arc, Mutex};

use coffer_ledger::{Ledger, LedgerCode, NewLedger, RejectCode, Scale};
use tokio::sync::{Notify, Semaphore};

use super::*;

/// Answers each `CreateLedger` with the ledger it names, so a test can check who got what.
/// Holds every batch until the test adds permits to `gate`.
struct Fake {
    batches: Mutex<Vec<Vec<usize>>>,
    gate: Semaphore,
    entered: Notify,
    /// Batches that entered the backend so far.
    entries: std::sync::atomic::AtomicUsize,
    fail: Fail,
}

/// How the fake backend fails every batch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fail {
    Never,
    Unavailable,
    /// A damaged row.
    Corrupt,
    /// A panic in the core.
    Panic,
}

#[derive(Clone)]
struct Shared(Arc<Fake>);

#[async_trait]
impl Backend for Shared {
    async fn apply_batch(
        &self,
        submissions: Arc<[Submission]>,
        now: Timestamp,
    ) -> StoreResult<Vec<Vec<Outcome>>> {
        self.0.entered.notify_one();
        self.0.entries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0.gate.acquire().await.expect("gate open").forget();
        self.0.batches.lock().unwrap().push(submissions.iter().map(|s| s.commands.len()).collect());
        match self.0.fail {
            Fail::Never => {}
            Fail::Unavailable => return Err(StoreError::unavailable("disk on fire")),
            Fail::Corrupt => return Err(StoreError::corrupt("column amount: negative")),
            Fail::Panic => panic!("balance of an account not loaded"),
        }
        Ok(submissions
            .iter()
            .map(|s| {
                s.commands
                    .iter()
                    .map(|c| match c {
                        Command::CreateLedger(l) => Outcome::Created(Record::Ledger(Ledger {
                            code: l.code,
                            scale: l.scale,
                            created_at: now,
                        })),
                        _ => Outcome::Rejected(RejectCode::LedgerNotFound),
                    })
                    .collect()
            })
            .collect())
    }
}

fn fake(permits: usize, fail: Fail) -> Shared {
    Shared(Arc::new(Fake {
        batches: Mutex::default(),
        gate: Semaphore::new(permits),
        entered: Notify::new(),
        entries: 0.into(),
        fail,
    }))
}

fn ledgers(first: usize, count: usize) -> Submission {
    let commands = (first..first + count)
        .map(|i| {
            let code = LedgerCode::try_from(format!("L{i}").as_str()).unwrap();
            Command::CreateLedger(NewLedger { code, scale: Scale::try_from(2).unwrap() })
        })
        .collect();
    Submission::new(commands, false)
}

fn codes(outcomes: &[Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| match o {
            Outcome::Created(Record::Ledger(l)) => l.code.to_string(),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

fn limits(commands: usize) -> BatchLimits {
    BatchLimits { commands, wait: Duration::from_millis(2), in_flight: 1 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_hold_whole_submissions_within_the_limit_and_answer_in_order() {
    let backend = fake(0, Fail::Never);
    let sequencer = Arc::new(Sequencer::start(backend.clone(), limits(10), 100, Halt::default()));
    let mut waiters = Vec::new();
    let mut first = 0;
    for size in [1, 7, 3, 4, 6, 2, 9, 1, 12, 5] {
        let sequencer = sequencer.clone();
        waiters.push((
            first,
            size,
            tokio::spawn(async move { sequencer.submit(ledgers(first, size)).await }),
        ));
        first += size;
    }
    backend.0.gate.add_permits(100);
    for (first, size, waiter) in waiters {
        let outcomes = waiter.await.unwrap().unwrap();
        let expected: Vec<String> = (first..first + size).map(|i| format!("L{i}")).collect();
        assert_eq!(codes(&outcomes), expected);
    }
    let batches = backend.0.batches.lock().unwrap().clone();
    let mut sizes: Vec<usize> = batches.iter().flatten().copied().collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![1, 1, 2, 3, 4, 5, 6, 7, 9, 12], "every submission whole, exactly once");
    for batch in &batches {
        let total: usize = batch.iter().sum();
        assert!(total <= 10 || batch.len() == 1, "{batches:?}");
    }
}

#[tokio::test]
async fn a_failed_batch_answers_every_waiter_with_the_error() {
    let sequencer =
        Arc::new(Sequencer::start(fake(100, Fail::Unavailable), limits(100), 10, Halt::default()));
    let a = tokio::spawn({
        let s = sequencer.clone();
        async move { s.submit(ledgers(0, 2)).await }
    });
    let b = sequencer.submit(ledgers(2, 1)).await;
    assert!(matches!(b, Err(StoreError::Unavailable { .. })));
    assert!(matches!(a.await.unwrap(), Err(StoreError::Unavailable { .. })));
}

#[tokio::test]
async fn a_full_queue_answers_overloaded_at_once() {
    let backend = fake(0, Fail::Never);
    let sequencer = Arc::new(Sequencer::start(backend.clone(), limits(1), 1, Halt::default()));
    let in_batch = tokio::spawn({
        let s = sequencer.clone();
        async move { s.submit(ledgers(0, 1)).await }
    });
    backend.0.entered.notified().await;
    let queued = tokio::spawn({
        let s = sequencer.clone();
        async move { s.submit(ledgers(1, 1)).await }
    });
    // Wait until the queued one holds the only slot.
    while sequencer.queue.capacity() > 0 {
        tokio::task::yield_now().await;
    }
    assert!(matches!(sequencer.submit(ledgers(2, 1)).await, Err(StoreError::Overloaded)));
    backend.0.gate.add_permits(10);
    assert!(in_batch.await.unwrap().is_ok());
    assert!(queued.await.unwrap().is_ok());
}

#[tokio::test]
async fn shutdown_applies_what_was_queued_then_refuses_new_work() {
    let backend = fake(0, Fail::Never);
    let sequencer = Arc::new(Sequencer::start(backend.clone(), limits(1), 10, Halt::default()));
    let waiters: Vec<_> = (0..4)
        .map(|i| {
            let s = sequencer.clone();
            tokio::spawn(async move { s.submit(ledgers(i, 1)).await })
        })
        .collect();
    while sequencer.queue.capacity() > 7 {
        tokio::task::yield_now().await;
    }
    let shutdown = tokio::spawn({
        let s = sequencer.clone();
        async move { s.shutdown().await }
    });
    backend.0.gate.add_permits(10);
    shutdown.await.unwrap();
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap().unwrap().len(), 1);
    }
    assert!(!sequencer.is_open());
    assert!(matches!(sequencer.submit(ledgers(9, 1)).await, Err(StoreError::Unavailable { .. })));
    assert!(sequencer.submit(Submission::new(vec![], false)).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_run_side_by_side_up_to_the_in_flight_limit() {
    let backend = fake(0, Fail::Never);
    let limits = BatchLimits { in_flight: 2, ..limits(1) };
    let sequencer = Arc::new(Sequencer::start(backend.clone(), limits, 10, Halt::default()));
    let waiters: Vec<_> = (0..3)
        .map(|i| {
            let s = sequencer.clone();
            tokio::spawn(async move { s.submit(ledgers(i, 1)).await })
        })
        .collect();
    let entries = || backend.0.entries.load(std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    while entries() < 2 && Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    assert_eq!(entries(), 2, "two batches run at once while neither may finish");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(entries(), 2, "a third waits for a free slot");
    backend.0.gate.add_permits(10);
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap().unwrap().len(), 1);
    }
    assert_eq!(entries(), 3);
}

/// Starts `count` submissions of one ledger each, and waits until all are queued or in a batch.
async fn submit_all(
    sequencer: &Arc<Sequencer>,
    first: usize,
    count: usize,
) -> Vec<JoinHandle<StoreResult<Vec<Outcome>>>> {
    let capacity = sequencer.queue.capacity();
    let waiters: Vec<_> = (first..first + count)
        .map(|i| {
            let s = sequencer.clone();
            tokio::spawn(async move { s.submit(ledgers(i, 1)).await })
        })
        .collect();
    while sequencer.queue.capacity() > capacity.saturating_sub(count - 1) {
        tokio::task::yield_now().await;
    }
    waiters
}

#[tokio::test]
async fn a_fatal_batch_stops_the_writer_and_every_waiter_and_later_submission_gets_its_error() {
    let backend = fake(0, Fail::Corrupt);
    let halt = Halt::default();
    let sequencer = Arc::new(Sequencer::start(backend.clone(), limits(1), 10, halt.clone()));
    // One submission in the batch, three queued behind it.
    let waiters = submit_all(&sequencer, 0, 4).await;
    backend.0.gate.add_permits(10);
    for waiter in waiters {
        let answer = waiter.await.unwrap();
        assert!(
            matches!(&answer, Err(e @ StoreError::Corrupt { .. }) if e.context() == "column amount: negative"),
            "{answer:?}"
        );
    }
    assert_eq!(
        backend.0.entries.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "nothing ran after the fatal batch"
    );
    assert!(halt.cause().is_some_and(|e| e.is_fatal()));
    assert!(!sequencer.is_open());
    assert!(
        matches!(sequencer.submit(ledgers(9, 1)).await, Err(StoreError::Corrupt { .. })),
        "a later submission"
    );
    sequencer.shutdown().await;
}

#[tokio::test]
async fn a_panic_in_a_batch_is_a_broken_invariant_for_its_waiters_and_everyone_after() {
    let halt = Halt::default();
    let sequencer = Arc::new(Sequencer::start(fake(10, Fail::Panic), limits(100), 10, halt.clone()));
    let answer = sequencer.submit(ledgers(0, 1)).await;
    assert!(
        matches!(&answer, Err(e @ StoreError::InvariantBroken { .. }) if e.context().contains("balance of an account not loaded")),
        "{answer:?}"
    );
    assert!(matches!(sequencer.submit(ledgers(1, 1)).await, Err(StoreError::InvariantBroken { .. })));
    assert!(halt.cause().is_some());
}

#[tokio::test]
async fn a_halt_tripped_elsewhere_refuses_what_is_queued_and_applies_nothing_more() {
    let backend = fake(0, Fail::Never);
    let halt = Halt::default();
    let sequencer = Arc::new(Sequencer::start(backend.clone(), limits(1), 10, halt.clone()));
    let waiters = submit_all(&sequencer, 0, 3).await;
    backend.0.entered.notified().await;
    // A read met a damaged row while the first batch was in the backend.
    halt.trip(StoreError::corrupt("a transfers row"));
    backend.0.gate.add_permits(10);
    let answers = all_answers(waiters).await;
    let applied = answers.iter().filter(|answer| answer.is_ok()).count();
    let refused = answers.iter().filter(|answer| matches!(answer, Err(StoreError::Corrupt { .. }))).count();
    assert_eq!(
        (applied, refused),
        (1, 2),
        "the batch in the backend finishes, the queued ones get the cause"
    );
    assert_eq!(backend.0.entries.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(matches!(sequencer.submit(ledgers(9, 1)).await, Err(StoreError::Corrupt { .. })));
}

async fn all_answers(waiters: Vec<JoinHandle<StoreResult<Vec<Outcome>>>>) -> Vec<StoreResult<Vec<Outcome>>> {
    let mut answers = Vec::new();
    for waiter in waiters {
        answers.push(waiter.await.unwrap());
    }
    answers
}

#[tokio::test]
async fn a_batch_gathered_while_the_store_stopped_never_reaches_the_backend() {
    let backend = fake(10, Fail::Never);
    let halt = Halt::default();
    let slow = BatchLimits { commands: 10, wait: Duration::from_millis(300), in_flight: 1 };
    let sequencer = Arc::new(Sequencer::start(backend.clone(), slow, 10, halt.clone()));
    let waiter = tokio::spawn({
        let s = sequencer.clone();
        async move { s.submit(ledgers(0, 1)).await }
    });
    // The writer takes the submission and waits up to 300 ms for more to fill its batch.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(sequencer.queue.capacity(), 10, "the writer took the submission");
    halt.trip(StoreError::corrupt("found by a read"));
    assert!(matches!(waiter.await.unwrap(), Err(StoreError::Corrupt { .. })));
    assert_eq!(backend.0.entries.load(std::sync::atomic::Ordering::SeqCst), 0);
}
