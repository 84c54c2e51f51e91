//! The write-behind buffer a flusher takes batches from.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::types::lock;

use super::{DurableWatch, Journal, Lsn, Record, Watermark};

/// The write-behind buffer between the lines and a flusher (the server's PostgreSQL
/// flusher). Appends are numbered under one lock, so the Lsn order is the order a flusher
/// takes them in and the durable watermark never runs ahead of a record not yet written.
///
/// Flush groups: records appended while a [`FlushGroup`] is open (by anyone) reach the
/// flusher in one batch, so what a request did to several lines and the records it writes
/// about it (an order, an idempotent answer) are committed in one transaction. The flusher
/// takes a batch only when no group is open; when it finds some open, new groups wait to
/// begin until those close, so a steady stream of overlapping groups cannot starve it.
///
/// `R` is what it holds: the core's [`Record`] by default, or an edge's own record type
/// that wraps them (`From<Record>`), so the edge journals its records in the same order and
/// transactions as the lines' without the core knowing of them.
pub struct JournalBuffer<R = Record> {
    pending: Mutex<Pending<R>>,
    /// Records appended but not yet marked durable (pending plus taken, not completed).
    backlog: AtomicUsize,
    bound: usize,
    /// Wakes the flusher: records appended, or the last open group closed.
    wake: Notify,
    /// Wakes groups waiting to begin while the flusher drains.
    groups_resume: Notify,
    durable: Arc<Watermark>,
}

struct Pending<R> {
    records: Vec<(Lsn, R)>,
    head: Lsn,
    /// The last Lsn a flusher took: the next batch begins right after it.
    taken: Lsn,
    /// Flush groups open now.
    open_groups: usize,
    /// The flusher waits for the open groups to close; new ones wait to begin.
    draining: bool,
}

/// Records taken by a flusher; `last` is the Lsn to mark durable once they are written.
#[derive(Debug)]
pub struct Batch<R = Record> {
    pub records: Vec<(Lsn, R)>,
    pub last: Lsn,
}

/// An open flush group; closes when dropped.
pub struct FlushGroup<'a, R = Record> {
    buffer: &'a JournalBuffer<R>,
}

impl<R> Drop for FlushGroup<'_, R> {
    fn drop(&mut self) {
        let mut pending = lock(&self.buffer.pending);
        pending.open_groups -= 1;
        if pending.open_groups == 0 && pending.draining {
            drop(pending);
            self.buffer.wake.notify_one();
        }
    }
}

impl<R> JournalBuffer<R> {
    /// A buffer whose numbering continues after `start` (the highest Lsn already stored),
    /// refusing new work once `bound` records wait to be written.
    pub fn new(start: Lsn, bound: usize) -> Self {
        Self {
            pending: Mutex::new(Pending {
                records: Vec::new(),
                head: start,
                taken: start,
                open_groups: 0,
                draining: false,
            }),
            backlog: AtomicUsize::new(0),
            bound,
            wake: Notify::new(),
            groups_resume: Notify::new(),
            durable: Watermark::starting_at(start),
        }
    }

    /// Opens a flush group, waiting first if the flusher is draining.
    pub async fn group(&self) -> FlushGroup<'_, R> {
        loop {
            let resumed = self.groups_resume.notified();
            tokio::pin!(resumed);
            resumed.as_mut().enable();
            {
                let mut pending = lock(&self.pending);
                if !pending.draining {
                    pending.open_groups += 1;
                    return FlushGroup { buffer: self };
                }
            }
            resumed.await;
        }
    }

    /// Takes everything pending, oldest first, unless a flush group is open (then it marks
    /// the buffer draining and answers `None`); `None` too if nothing is pending.
    pub fn take(&self) -> Option<Batch<R>> {
        let mut pending = lock(&self.pending);
        if pending.records.is_empty() {
            return None;
        }
        if pending.open_groups > 0 {
            pending.draining = true;
            return None;
        }
        let records = std::mem::take(&mut pending.records);
        // Believed: batches are taken in order, each without a gap, up to the head.
        debug_assert!(
            records
                .iter()
                .zip(pending.taken + 1..)
                .all(|((lsn, _), expected)| *lsn == expected),
            "a batch taken after {} is not numbered without a gap",
            pending.taken
        );
        debug_assert_eq!(records.last().map(|(lsn, _)| *lsn), Some(pending.head));
        pending.taken = pending.head;
        let was_draining = std::mem::replace(&mut pending.draining, false);
        drop(pending);
        if was_draining {
            self.groups_resume.notify_waiters();
        }
        let last = records.last().map(|(lsn, _)| *lsn).unwrap_or_default();
        Some(Batch { records, last })
    }

    /// Waits for the next batch a flusher may take (see [`take`](Self::take)).
    pub async fn next_batch(&self) -> Batch<R> {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Some(batch) = self.take() {
                return batch;
            }
            woken.await;
        }
    }

    /// Marks a taken batch as written: its waiters are released.
    pub fn complete(&self, batch: &Batch<R>) {
        debug_assert!(
            batch.last <= lock(&self.pending).taken,
            "a batch past what was taken is marked written"
        );
        // Believed: batches are marked written in the order they were taken, none left
        // out, so the watermark only rises, and by each batch in turn (a batch marked
        // before the one ahead of it would call that one durable too).
        debug_assert_eq!(
            batch.records.first().map(|(lsn, _)| *lsn),
            Some(self.durable.current() + 1),
            "a batch is marked written out of turn"
        );
        self.backlog
            .fetch_sub(batch.records.len(), Ordering::AcqRel);
        self.durable.advance(batch.last);
    }

    /// The flusher will never write `batch` (the store refused it for good): its waiters
    /// hear `Refused`, and the watermark moves past it for the batches after.
    pub fn refuse(&self, batch: &Batch<R>) {
        if let Some((first, _)) = batch.records.first() {
            self.durable.refuse(*first, batch.last);
        }
        self.complete(batch);
    }

    /// Whether nothing waits to be taken.
    pub fn is_empty(&self) -> bool {
        lock(&self.pending).records.is_empty()
    }

    /// Records appended and not yet written.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Acquire)
    }

    /// Appends the records as one unit, numbered consecutively; answers the Lsn of the last
    /// one (or the current head when there are none).
    pub fn push<I>(&self, records: I) -> Lsn
    where
        I: IntoIterator<Item = R>,
        I::IntoIter: ExactSizeIterator,
    {
        let records = records.into_iter();
        let count = records.len();
        let mut pending = lock(&self.pending);
        let first = pending.head + 1;
        pending.head += count as Lsn;
        pending.records.extend((first..).zip(records));
        let head = pending.head;
        drop(pending);
        self.backlog.fetch_add(count, Ordering::AcqRel);
        self.wake.notify_one();
        head
    }

    /// The Lsn of the last record appended (written or not).
    pub fn head(&self) -> Lsn {
        lock(&self.pending).head
    }

    /// True while the backlog is at its bound (see [`Journal::is_backlogged`]).
    pub fn is_full(&self) -> bool {
        self.backlog() >= self.bound
    }

    /// A watch on the durable watermark.
    pub fn watch(&self) -> DurableWatch {
        DurableWatch(self.durable.clone())
    }
}

impl<R: From<Record> + Send + 'static> Journal for JournalBuffer<R> {
    fn append(&self, records: Vec<Record>) -> Lsn {
        self.push(records.into_iter().map(R::from))
    }

    fn is_backlogged(&self) -> bool {
        self.is_full()
    }

    fn durable(&self) -> DurableWatch {
        DurableWatch(self.durable.clone())
    }
}

impl<R> Drop for JournalBuffer<R> {
    fn drop(&mut self) {
        self.durable.close();
    }
}
