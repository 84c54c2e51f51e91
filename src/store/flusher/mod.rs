//! The write-behind flusher: drains the core's [`JournalBuffer`] into PostgreSQL, one
//! transaction per batch, with one multi-row statement (`UNNEST` arrays) per table.
//!
//! Line states are coalesced to the newest version in the batch and only written over a
//! lower version; reservations likewise keep their newest record. Movements and transfers
//! are inserted with their journal numbers as keys, so a batch retried after a failure
//! that had in fact committed writes nothing twice. A failed batch is kept and retried
//! with backoff, never dropped; meanwhile `/readyz` answers 503 and, once the backlog
//! reaches its bound, the lines refuse new work (`overloaded`).
//!
//! A batch PostgreSQL refuses for its data (a constraint, a value it cannot store) rather
//! than for a lost connection is split in halves until the refused records stand alone;
//! each of those goes to `dead_letters` with the refusal (counted, and listed in
//! `/admin/persistence`), and the rest is written. One bad record can therefore never stop
//! the flusher. Every statement is idempotent (version, Lsn and key guards), so the halves
//! already written are harmless when a later half fails for a passing reason and the whole
//! batch is retried.
//!
//! Events: with an [`EventHub`], every batch also writes its events (the outbox) in its
//! own transaction, and once it has committed they go to the hub. Batches commit one at a
//! time, in Lsn order, so event ids commit in increasing order, which is what lets a
//! reader follow the table with `id > last seen` and miss nothing.
//!
//! Pipelined group commit: two batches are in flight at most, one committing and the next
//! being prepared (its data statements run on another connection meanwhile, see [`run`]);
//! whatever arrives while they are written forms the batch after, and the database sees
//! fewer, larger transactions as load grows. `gather` is how long the flusher waits after the
//! first record before writing: zero in `sync` mode, where requests wait on the write;
//! the flush interval in `async` mode, where nobody waits and bigger batches cost less.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use stockline_actors::journal::Batch;

use super::records::{Buffer, StoreRecord};

use super::outbox::StoreView;
use super::write::{self, Prepared, commit};
use crate::cluster::Member;
use crate::events::Event;
use crate::events::hub::EventHub;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod retry;

use retry::{WriteFailure, write_until_done};

/// How long one batch may take before it counts as failed (a hung connection).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown keeps retrying to write what is left before giving up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What operators and `/readyz` see of the flusher. Written by the flusher only.
#[derive(Default)]
pub struct FlushStats {
    /// False from a failed write until the next successful one.
    pub healthy: AtomicBool,
    pub batches_flushed: AtomicU64,
    pub records_flushed: AtomicU64,
    pub flush_failures: AtomicU64,
    /// Unix microseconds of the last successful flush (0: none yet).
    pub last_flush_us: AtomicI64,
    /// Records refused for their data and kept in `dead_letters` since start.
    pub dead_letters: AtomicU64,
    /// Batches refused by the cluster fence since start (another node took their shards).
    pub refused_batches: AtomicU64,
    /// Where each successful batch's write time goes (`/metrics`), once the server set it.
    pub durations: std::sync::OnceLock<metrics::Histogram>,
}

impl FlushStats {
    pub fn last_flush_at(&self) -> Option<DateTime<Utc>> {
        match self.last_flush_us.load(Ordering::Relaxed) {
            0 => None,
            us => DateTime::from_timestamp_micros(us),
        }
    }
}

/// How the flusher paces its writes.
#[derive(Clone, Copy, Debug)]
pub struct Pacing {
    /// How long to wait after a batch for more records to join the next: zero in `sync`
    /// mode (requests wait on the write), the flush interval in `async` mode.
    pub gather: Duration,
    /// Prepare the next batch while one commits (see [`run`]); off, batches are written
    /// strictly one at a time.
    pub pipelined: bool,
}

/// The running flusher.
pub struct Flusher {
    pub stats: Arc<FlushStats>,
    stop: CancellationToken,
    task: JoinHandle<bool>,
}

impl Flusher {
    /// Starts flushing `buffer`; once `stop` is cancelled it writes what is left and ends.
    /// `events`: the hub to tell of committed events; `None` writes no events. `member`
    /// (cluster mode): every batch first checks this node still owns its shards, and keeps
    /// the node's own stored journal number; a batch that fails the check is refused whole
    /// (its requests hear that their change did not happen), never retried.
    pub fn spawn(
        pool: PgPool,
        buffer: Arc<Buffer>,
        pacing: Pacing,
        events: Option<Arc<EventHub>>,
        member: Option<Member>,
        stop: CancellationToken,
    ) -> Self {
        let stats = Arc::new(FlushStats {
            healthy: AtomicBool::new(true),
            ..FlushStats::default()
        });
        let out = BatchWriter {
            pool,
            stats: stats.clone(),
            events,
            position_key: member
                .as_ref()
                .map_or_else(|| "journal_lsn".to_owned(), Member::position_key),
            close: member
                .as_ref()
                .map(|m| Arc::from(super::outbox::close_for(&m.position_key())))
                .unwrap_or_else(|| Arc::from(super::outbox::CLOSE)),
            member,
            known: Default::default(),
        };
        let task = tokio::spawn(run(out, buffer, pacing, stop.clone()));
        Self { stats, stop, task }
    }

    /// Stops (cancelling its token, if not yet), writes everything still buffered, then
    /// ends. False if some records could not be written within the grace period (the
    /// database stayed down).
    pub async fn finish(self) -> bool {
        self.stop.cancel();
        self.task.await.unwrap_or(false)
    }
}

/// Where batches go: the database, the figures operators see, the events' hub.
struct BatchWriter {
    pool: PgPool,
    stats: Arc<FlushStats>,
    events: Option<Arc<EventHub>>,
    member: Option<Member>,
    /// The setting that keeps the stored journal number, and the closing statement that
    /// writes it.
    position_key: String,
    close: Arc<str>,
    /// What the store holds, for deriving events (only with `events`).
    known: tokio::sync::Mutex<StoreView>,
}

/// A batch whose commit is under way in a task of its own.
struct Committing {
    batch: Arc<Batch<StoreRecord>>,
    /// Written by one statement at its commit: its row locks are taken only then.
    one_statement: bool,
    started: std::time::Instant,
    task: JoinHandle<Result<Vec<Event>, WriteFailure>>,
}

/// Pipelined: while one batch commits, the next is prepared (its transaction opened, its
/// data statements run) on another connection, so the round trips of the one overlap the
/// commit and fsync of the other. Order is kept: a batch's commit starts only once the
/// batch before has committed, and its closing statement (the fence, see
/// [`CLOSE`](super::outbox::CLOSE)) refuses it otherwise. Waiters are released in Lsn
/// order. Any failure falls back to writing batches one at a time, oldest first.
impl BatchWriter {
    /// How a cluster node's batches are fenced and closed; `None` in single-process mode.
    fn fencing(&self) -> Option<write::Fencing<'_>> {
        self.member.as_ref().map(|m| write::Fencing {
            leases: &m.leases,
            close: &self.close,
        })
    }

    /// A pipelined batch committed: its events go out, its waiters are released.
    fn committed(&self, buffer: &Buffer, current: &Committing, events: &[Event]) {
        if let Some(hub) = &self.events {
            hub.publish(events);
        }
        self.flushed(&current.batch, current.started);
        buffer.complete(&current.batch);
    }

    /// A batch is written: the figures operators see.
    fn flushed(&self, batch: &Batch<StoreRecord>, started: std::time::Instant) {
        let stats = &self.stats;
        if let Some(durations) = stats.durations.get() {
            durations.record(started.elapsed().as_secs_f64());
        }
        stats.healthy.store(true, Ordering::Release);
        stats.batches_flushed.fetch_add(1, Ordering::Relaxed);
        stats
            .records_flushed
            .fetch_add(batch.records.len() as u64, Ordering::Relaxed);
        stats
            .last_flush_us
            .store(Utc::now().timestamp_micros(), Ordering::Relaxed);
    }

    /// A write of `batch` failed: counted, and what the flusher knew of the store is
    /// forgotten (it may hold the failed batch's states), to be read again.
    async fn failed(&self, batch: &Batch<StoreRecord>, error: &(dyn std::fmt::Display + Sync)) {
        tracing::warn!(%error, records = batch.records.len(), "flush failed; retrying");
        self.stats.healthy.store(false, Ordering::Release);
        self.stats.flush_failures.fetch_add(1, Ordering::Relaxed);
        *self.known.lock().await = StoreView::default();
    }
}

async fn run(
    out: BatchWriter,
    buffer: Arc<Buffer>,
    pacing: Pacing,
    stop: CancellationToken,
) -> bool {
    let mut committing: Option<Committing> = None;
    loop {
        // The next batch; or, while one commits and nothing new has come, its outcome.
        let next = match committing.as_mut() {
            Some(current) => tokio::select! {
                batch = buffer.next_batch() => Some(batch),
                outcome = &mut current.task => {
                    let current = committing.take().expect("a batch is committing");
                    if let Err(unwritten) = settle(&out, &buffer, current, outcome, &stop).await {
                        return drain(&out, &buffer, vec![unwritten]).await;
                    }
                    continue;
                }
                _ = stop.cancelled() => None,
            },
            None => tokio::select! {
                batch = buffer.next_batch() => Some(batch),
                _ = stop.cancelled() => None,
            },
        };
        let Some(batch) = next else {
            // Shutdown: the batch committing first, then the drain.
            let mut unwritten = Vec::new();
            if let Some(mut current) = committing.take() {
                let outcome = (&mut current.task).await;
                if let Err(batch) = settle(&out, &buffer, current, outcome, &stop).await {
                    unwritten.push(batch);
                }
            }
            return drain(&out, &buffer, unwritten).await;
        };
        // A batch that takes row locks while prepared must not be prepared while the
        // batch before still has its locks to take (a one-statement batch takes them
        // as it commits): each would wait on the other, the one in PostgreSQL, the other
        // here, until the write timeout.
        if committing.as_ref().is_some_and(|c| c.one_statement)
            && write::locks_when_prepared(&batch.records)
            && let Some(mut current) = committing.take()
        {
            let outcome = (&mut current.task).await;
            if let Err(unwritten) = settle(&out, &buffer, current, outcome, &stop).await {
                return drain(&out, &buffer, vec![unwritten, Arc::new(batch)]).await;
            }
        }
        let started = std::time::Instant::now();
        let (prepared, failed) = {
            let preparing = prepare(&out, &batch);
            tokio::pin!(preparing);
            match committing.take() {
                None => (preparing.await, None),
                Some(mut current) => {
                    // Whichever ends first: the waiters of the batch before are released
                    // as soon as it has committed, not when this one is ready.
                    let (outcome, prepared) = tokio::select! {
                        biased;
                        outcome = &mut current.task => (outcome, (&mut preparing).await),
                        prepared = &mut preparing => ((&mut current.task).await, prepared),
                    };
                    match outcome {
                        Ok(Ok(events)) => {
                            out.committed(&buffer, &current, &events);
                            (prepared, None)
                        }
                        failed => (prepared, Some((current, failed))),
                    }
                }
            }
        };
        if let Some((current, outcome)) = failed {
            // This batch's locks must go before the one before is written again.
            if let Ok(Some(prepared)) = prepared {
                write::abandon(prepared).await;
            }
            if let Err(unwritten) = settle(&out, &buffer, current, outcome, &stop).await {
                return drain(&out, &buffer, vec![unwritten, Arc::new(batch)]).await;
            }
            if !write_until_done(&out, &buffer, &batch, None, &stop).await {
                return drain(&out, &buffer, vec![Arc::new(batch)]).await;
            }
            continue;
        }
        match prepared {
            Ok(Some(prepared)) => {
                let one_statement = write::is_one_statement(&prepared);
                let batch = Arc::new(batch);
                let records = batch.clone();
                let task = tokio::spawn(async move {
                    let committed = commit(prepared, &records.records);
                    match tokio::time::timeout(WRITE_TIMEOUT, committed).await {
                        Ok(Ok(events)) => Ok(events),
                        Ok(Err(error)) => Err(WriteFailure::Database(error)),
                        Err(_) => Err(WriteFailure::TimedOut),
                    }
                });
                committing = Some(Committing {
                    batch,
                    one_statement,
                    started,
                    task,
                });
            }
            Ok(None) => buffer.complete(&batch),
            Err(error) => {
                // Written alone on the slow path, which splits out what PostgreSQL refuses.
                out.failed(&batch, &error).await;
                if !write_until_done(&out, &buffer, &batch, None, &stop).await {
                    return drain(&out, &buffer, vec![Arc::new(batch)]).await;
                }
            }
        }
        if !pacing.pipelined
            && let Some(mut current) = committing.take()
        {
            let outcome = (&mut current.task).await;
            if let Err(unwritten) = settle(&out, &buffer, current, outcome, &stop).await {
                return drain(&out, &buffer, vec![unwritten]).await;
            }
        }
        if !pacing.gather.is_zero() {
            // Async mode: what arrives during the pause joins the next batch.
            tokio::select! {
                _ = tokio::time::sleep(pacing.gather) => {}
                _ = stop.cancelled() => {}
            }
        }
    }
}

/// Opens a batch's transaction and runs its data statements, within the write timeout.
async fn prepare(
    out: &BatchWriter,
    batch: &Batch<StoreRecord>,
) -> Result<Option<Prepared>, WriteFailure> {
    let mut known = out.known.lock().await;
    let known = out.events.is_some().then_some(&mut *known);
    match tokio::time::timeout(
        WRITE_TIMEOUT,
        write::prepare(&out.pool, &batch.records, known, out.fencing().as_ref()),
    )
    .await
    {
        Ok(Ok(prepared)) => Ok(prepared),
        Ok(Err(error)) => Err(error.into()),
        Err(_) => Err(WriteFailure::TimedOut),
    }
}

/// Ends a batch's commit: on success its events go out and its waiters are released; on
/// failure it is written again alone (the slow path). `Err(batch)`: shutdown came while
/// it was still failing; the drain must write it first.
async fn settle(
    out: &BatchWriter,
    buffer: &Buffer,
    current: Committing,
    outcome: Result<Result<Vec<Event>, WriteFailure>, tokio::task::JoinError>,
    stop: &CancellationToken,
) -> Result<(), Arc<Batch<StoreRecord>>> {
    match outcome {
        Ok(Ok(events)) => {
            out.committed(buffer, &current, &events);
            return Ok(());
        }
        Ok(Err(error)) => {
            out.failed(&current.batch, &error).await;
            if !write_until_done(out, buffer, &current.batch, None, stop).await {
                return Err(current.batch);
            }
        }
        Err(panicked) => {
            out.failed(&current.batch, &panicked).await;
            if !write_until_done(out, buffer, &current.batch, None, stop).await {
                return Err(current.batch);
            }
        }
    }
    Ok(())
}

/// At shutdown: writes what is left (`unfinished` first, in order), retrying for at most
/// the grace period.
async fn drain(
    out: &BatchWriter,
    buffer: &Buffer,
    unfinished: Vec<Arc<Batch<StoreRecord>>>,
) -> bool {
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    let never = CancellationToken::new();
    let mut unfinished = unfinished.into_iter();
    loop {
        let batch = match unfinished.next() {
            Some(batch) => batch,
            None if buffer.is_empty() => break,
            None => match tokio::time::timeout_at(deadline, buffer.next_batch()).await {
                Ok(batch) => Arc::new(batch),
                Err(_) => break,
            },
        };
        if !write_until_done(out, buffer, &batch, Some(deadline), &never).await {
            break;
        }
    }
    let left = buffer.backlog();
    if left > 0 {
        tracing::error!(records = left, "shutting down with records not written");
    }
    left == 0
}
