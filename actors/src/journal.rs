//! What a change leaves behind: journal records, the [`Journal`] trait they go to, and the
//! durable-ack watermark a caller awaits in `sync` mode.
//!
//! Every record gets a log sequence number ([`Lsn`]) when it is appended. A journal
//! publishes the highest Lsn below which everything is durable; a request that must not be
//! answered before its records are safe waits on [`DurableWatch::wait_for`] with the Lsn
//! its change returned (group commit: one flush releases every waiter at once).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, oneshot};

use crate::types::{
    LineKey, ProductId, ReservationId, ReservationStatus, ReservedItem, TransferId, WarehouseId,
    lock,
};

/// Log sequence number: position of a record in the journal, starting at 1.
pub type Lsn = u64;

/// Kind of a movement in the append-only ledger (API.md `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MovementKind {
    Adjust,
    Reserve,
    Release,
    Expire,
    Commit,
    TransferOut,
    TransferIn,
    /// The line's safety stock was set; `quantity` is the change.
    Safety,
}

impl MovementKind {
    pub const ALL: [Self; 8] = [
        Self::Adjust,
        Self::Reserve,
        Self::Release,
        Self::Expire,
        Self::Commit,
        Self::TransferOut,
        Self::TransferIn,
        Self::Safety,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Adjust => "adjust",
            Self::Reserve => "reserve",
            Self::Release => "release",
            Self::Expire => "expire",
            Self::Commit => "commit",
            Self::TransferOut => "transfer_out",
            Self::TransferIn => "transfer_in",
            Self::Safety => "safety",
        }
    }
}

/// What a movement refers to. Typed, so the hot path formats no strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Reservation(ReservationId),
    Transfer(TransferId),
    /// An adjustment's reason (`receipt`, `damage`, `count`, ...).
    Reason(String),
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Reservation(id) => id.fmt(f),
            Self::Transfer(id) => id.fmt(f),
            Self::Reason(reason) => f.write_str(reason),
        }
    }
}

/// Who made a change by hand, and the text they gave with it: kept on the movement so the
/// ledger says who counted, received or moved stock, and for which of their documents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Note {
    pub actor_user_id: Option<i64>,
    /// The client's own reference (a delivery note, a count sheet), up to 255 chars.
    pub reference: Option<String>,
}

/// A line's full state after a change. The store keeps only the highest `version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineRecord {
    pub key: LineKey,
    pub on_hand: u64,
    pub reserved: u64,
    pub safety_stock: u64,
    pub version: u64,
    pub updated_at: DateTime<Utc>,
}

/// One entry of the movement ledger. `quantity` is signed for adjustments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MovementRecord {
    pub key: LineKey,
    pub kind: MovementKind,
    pub quantity: i64,
    pub on_hand_after: u64,
    pub reserved_after: u64,
    pub safety_stock_after: u64,
    pub reference: Reference,
    /// Set for changes made by hand (adjustments, counts, transfers); `None` on the hot path.
    pub note: Option<std::sync::Arc<Note>>,
    pub at: DateTime<Utc>,
}

/// A reservation's state after it was created or settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationRecord {
    pub id: ReservationId,
    /// True only on the record that created the reservation (its `reservation.created`
    /// event); later records of a pending reservation (extended, reshaped, settled in
    /// part) are changes to it.
    pub created: bool,
    pub status: ReservationStatus,
    pub items: Vec<ReservedItem>,
    pub reference: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A completed transfer between two lines of one product.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRecord {
    pub id: TransferId,
    pub from_warehouse_id: WarehouseId,
    pub to_warehouse_id: WarehouseId,
    pub product_id: ProductId,
    pub quantity: u64,
    pub note: Option<std::sync::Arc<Note>>,
    pub created_at: DateTime<Utc>,
}

/// What the core asks the store to keep. An edge that journals records of its own wraps
/// these in its own record type (see [`JournalBuffer`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Line(LineRecord),
    Movement(MovementRecord),
    Reservation(ReservationRecord),
    Transfer(TransferRecord),
}

/// Where records go. Implementations must be cheap and non-blocking: `append` is called
/// from inside a line actor's `handle`.
pub trait Journal: Send + Sync + 'static {
    /// Appends the records as one unit, numbering them consecutively, and returns the
    /// Lsn of the last one (or the current head when `records` is empty).
    fn append(&self, records: Vec<Record>) -> Lsn;

    /// True while the backlog of records not yet durable is at its bound. Lines then refuse
    /// new work (reserve, adjust, transfer out) with `Overloaded`; work that settles what
    /// is already held (commit, release, expire, transfer in) is always taken.
    fn is_backlogged(&self) -> bool;

    /// A watch on the durable watermark, for callers that answer only once durable.
    fn durable(&self) -> DurableWatch;
}

/// The durable-ack handle: resolves once every record up to an Lsn is durable. Cheap to
/// clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct DurableWatch(Arc<Watermark>);

/// Why awaited records will never be durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotDurable {
    /// The journal was dropped first.
    #[error("the journal closed before the change became durable")]
    JournalClosed,
    /// The store refused them for good (in cluster mode: the node no longer owns what
    /// they change); the change did not happen.
    #[error("the store refused the change")]
    Refused,
}

impl DurableWatch {
    /// The highest Lsn known durable now.
    pub fn current(&self) -> Lsn {
        self.0.durable.load(Ordering::Acquire)
    }

    /// Waits until every record up to and including `lsn` is durable. The caller is woken
    /// once, when its own Lsn is durable, not at every flush before it: with a few thousand
    /// requests waiting over two flushes in flight, waking all of them at each flush
    /// re-polled every waiting request's whole future (HTTP stack included) several times.
    ///
    /// A record the store [refused](Watermark::refuse) answers `Refused`, whether its
    /// caller waited before the refusal or came after it.
    pub async fn wait_for(&self, lsn: Lsn) -> Result<(), NotDurable> {
        if self.current() >= lsn {
            // A refusal is recorded before the watermark moves past it (both SeqCst).
            if self.0.refusals.load(Ordering::SeqCst) > 0 && lock(&self.0.waiters).refused(lsn) {
                return Err(NotDurable::Refused);
            }
            return Ok(());
        }
        let answer = {
            let mut waiters = lock(&self.0.waiters);
            if waiters.closed {
                return Err(NotDurable::JournalClosed);
            }
            if waiters.refused(lsn) {
                return Err(NotDurable::Refused);
            }
            // Counted before the watermark is read again: an advance that stores its Lsn
            // and then finds no waiter counted has stored it before this read (both SeqCst).
            self.0.waiting.fetch_add(1, Ordering::SeqCst);
            if self.0.durable.load(Ordering::SeqCst) >= lsn {
                self.0.waiting.fetch_sub(1, Ordering::SeqCst);
                return Ok(());
            }
            let (done, answer) = oneshot::channel();
            waiters.by_lsn.entry(lsn).or_default().push(done);
            waiters.forget_abandoned(&self.0.waiting);
            answer
        };
        match answer.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(NotDurable::Refused),
            Err(_) => Err(NotDurable::JournalClosed),
        }
    }
}

/// The durable watermark a journal publishes, and who waits on it, by the Lsn each waits
/// for. A journal holds it (`Arc`), advances it as records become durable and hands out
/// [`DurableWatch`]es on it; it closes it when dropped.
#[derive(Debug, Default)]
pub struct Watermark {
    durable: AtomicU64,
    /// Waiters in `waiters`, so that an advance nobody waits on takes no lock.
    waiting: AtomicUsize,
    /// Ranges ever refused, so that a wait past the watermark looks them up only if any.
    refusals: AtomicUsize,
    waiters: Mutex<Waiters>,
}

#[derive(Debug, Default)]
struct Waiters {
    /// Each waiter hears `true` once its Lsn is durable, `false` if it was refused.
    by_lsn: BTreeMap<Lsn, Vec<oneshot::Sender<bool>>>,
    closed: bool,
    /// Past this many waiters, those that gave up are forgotten (see `forget_abandoned`).
    prune_at: usize,
    /// The newest refused ranges, by first Lsn (last Lsn as value), at most
    /// [`REFUSED_KEPT`]: a caller that took an Lsn just before its batch was refused
    /// must hear so even if it starts waiting after.
    refused: BTreeMap<Lsn, Lsn>,
}

/// Refused ranges remembered. A refusal is rare (a node fenced off by a takeover), and a
/// caller asks about its Lsn within its request, long before this many more refusals.
const REFUSED_KEPT: usize = 4_096;

/// Waiters kept before the first look for abandoned ones.
const PRUNE_FLOOR: usize = 4_096;

impl Waiters {
    fn refused(&self, lsn: Lsn) -> bool {
        self.refused
            .range(..=lsn)
            .next_back()
            .is_some_and(|(_, last)| lsn <= *last)
    }

    /// A request that stops waiting (it timed out, or its client hung up) leaves its sender
    /// here until its Lsn is durable; while the store is down that is never, and clients
    /// retrying would make the map grow for as long as the outage lasts. So whenever the
    /// waiters double, those whose receiver is gone are dropped: the map stays within twice
    /// the requests really waiting, at an amortized constant cost per wait.
    fn forget_abandoned(&mut self, waiting: &AtomicUsize) {
        let count = waiting.load(Ordering::SeqCst);
        if count < self.prune_at.max(PRUNE_FLOOR) {
            return;
        }
        let mut forgotten = 0;
        self.by_lsn.retain(|_, senders| {
            let before = senders.len();
            senders.retain(|done| !done.is_closed());
            forgotten += before - senders.len();
            !senders.is_empty()
        });
        let left = waiting.fetch_sub(forgotten, Ordering::SeqCst) - forgotten;
        self.prune_at = left * 2;
    }
}

impl Watermark {
    /// A watermark at which everything up to `lsn` is already durable.
    pub fn starting_at(lsn: Lsn) -> Arc<Self> {
        Arc::new(Self {
            durable: AtomicU64::new(lsn),
            ..Self::default()
        })
    }

    /// Everything up to `lsn` is durable (or [refused](Self::refuse)): wakes exactly the
    /// waiters it releases.
    pub fn advance(&self, lsn: Lsn) {
        let before = self.durable.fetch_max(lsn, Ordering::SeqCst);
        if lsn <= before || self.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        let released = {
            let mut waiters = lock(&self.waiters);
            let later = waiters.by_lsn.split_off(&(lsn + 1));
            let released = std::mem::replace(&mut waiters.by_lsn, later);
            let count = released.values().map(Vec::len).sum::<usize>();
            self.waiting.fetch_sub(count, Ordering::SeqCst);
            released
        };
        for done in released.into_values().flatten() {
            // A waiter that gave up (its request timed out or hung up) is gone: fine.
            let _ = done.send(true);
        }
    }

    /// The records `first..=last` will never be durable: their waiters, now and later,
    /// hear `Refused`. The watermark itself does not move; the journal advances it past
    /// them after, as for records written.
    pub fn refuse(&self, first: Lsn, last: Lsn) {
        let refused = {
            let mut waiters = lock(&self.waiters);
            waiters.refused.insert(first, last);
            if waiters.refused.len() > REFUSED_KEPT {
                waiters.refused.pop_first();
            }
            self.refusals.fetch_add(1, Ordering::SeqCst);
            let mut refused = Vec::new();
            let lsns: Vec<Lsn> = waiters
                .by_lsn
                .range(first..=last)
                .map(|(l, _)| *l)
                .collect();
            for lsn in lsns {
                if let Some(senders) = waiters.by_lsn.remove(&lsn) {
                    refused.extend(senders);
                }
            }
            self.waiting.fetch_sub(refused.len(), Ordering::SeqCst);
            refused
        };
        for done in refused {
            let _ = done.send(false);
        }
    }

    /// Requests waiting now (abandoned ones included until they are forgotten).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// A watch on this watermark.
    pub fn watch(self: &Arc<Self>) -> DurableWatch {
        DurableWatch(self.clone())
    }

    /// The journal is gone: every waiter, now and later, hears `JournalClosed`.
    pub fn close(&self) {
        let dropped = {
            let mut waiters = lock(&self.waiters);
            waiters.closed = true;
            let dropped = std::mem::take(&mut waiters.by_lsn);
            self.waiting.store(0, Ordering::SeqCst);
            dropped
        };
        drop(dropped);
    }
}

/// A journal that keeps every record in memory and counts it durable at once: for tests,
/// benches, and a server run without persistence.
pub struct MemoryJournal {
    records: Mutex<Kept>,
    keep: bool,
    durable: Arc<Watermark>,
}

#[derive(Default)]
struct Kept {
    records: Vec<(Lsn, Record)>,
    head: Lsn,
}

impl MemoryJournal {
    /// Keeps every record, so tests can read them back.
    pub fn new() -> Self {
        Self::with_keep(true)
    }

    /// Numbers records but drops them: for benches that would otherwise grow without end.
    pub fn discarding() -> Self {
        Self::with_keep(false)
    }

    fn with_keep(keep: bool) -> Self {
        Self {
            records: Mutex::new(Kept::default()),
            keep,
            durable: Watermark::starting_at(0),
        }
    }

    /// Every record kept so far, in Lsn order.
    pub fn records(&self) -> Vec<(Lsn, Record)> {
        lock(&self.records).records.clone()
    }

    /// The movements of one line, oldest first.
    pub fn movements(&self, key: LineKey) -> Vec<MovementRecord> {
        lock(&self.records)
            .records
            .iter()
            .filter_map(|(_, r)| match r {
                Record::Movement(m) if m.key == key => Some(m.clone()),
                _ => None,
            })
            .collect()
    }
}

impl Default for MemoryJournal {
    fn default() -> Self {
        Self::new()
    }
}

impl Journal for MemoryJournal {
    fn append(&self, records: Vec<Record>) -> Lsn {
        let mut kept = lock(&self.records);
        let first = kept.head + 1;
        kept.head += records.len() as Lsn;
        let head = kept.head;
        if self.keep {
            kept.records.extend((first..).zip(records));
        }
        self.durable.advance(head);
        head
    }

    fn is_backlogged(&self) -> bool {
        false
    }

    fn durable(&self) -> DurableWatch {
        DurableWatch(self.durable.clone())
    }
}

impl Drop for MemoryJournal {
    fn drop(&mut self) {
        self.durable.close();
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn transfer() -> Record {
        Record::Transfer(TransferRecord {
            note: None,
            id: TransferId::new(),
            from_warehouse_id: 1,
            to_warehouse_id: 2,
            product_id: 3,
            quantity: 1,
            created_at: Utc::now(),
        })
    }

    #[test]
    fn appends_are_numbered_consecutively() {
        let buffer = JournalBuffer::<Record>::new(41, 100);
        assert_eq!(buffer.append(vec![transfer(), transfer()]), 43);
        assert_eq!(buffer.append(vec![transfer()]), 44);
        let batch = buffer.take().unwrap();
        let lsns: Vec<_> = batch.records.iter().map(|(lsn, _)| *lsn).collect();
        assert_eq!((lsns, batch.last), (vec![42, 43, 44], 44));
        assert!(buffer.take().is_none());
    }

    #[tokio::test]
    async fn records_of_an_open_group_are_held_until_it_closes_then_taken_together() {
        let buffer = JournalBuffer::<Record>::new(0, 100);
        buffer.append(vec![transfer()]);
        let group = buffer.group().await;
        buffer.append(vec![transfer()]);
        assert!(
            buffer.take().is_none(),
            "nothing is taken while a group is open"
        );
        buffer.append(vec![transfer()]);
        drop(group);
        let batch = buffer.take().unwrap();
        assert_eq!((batch.records.len(), batch.last), (3, 3));
    }

    #[tokio::test]
    async fn a_draining_flusher_makes_new_groups_wait_so_it_cannot_starve() {
        let buffer = Arc::new(JournalBuffer::<Record>::new(0, 100));
        let first = buffer.group().await;
        buffer.append(vec![transfer()]);
        let flusher = {
            let buffer = buffer.clone();
            tokio::spawn(async move { buffer.next_batch().await.last })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = {
            let buffer = buffer.clone();
            tokio::spawn(async move {
                let _group = buffer.group().await;
                buffer.append(vec![transfer()])
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !second.is_finished(),
            "a new group waits while the flusher drains"
        );
        drop(first);
        assert_eq!(
            flusher.await.unwrap(),
            1,
            "the flusher got the first group's records"
        );
        assert_eq!(second.await.unwrap(), 2, "then the waiting group went on");
    }

    #[tokio::test]
    async fn a_waiter_is_released_only_once_its_batch_is_complete() {
        let buffer = Arc::new(JournalBuffer::<Record>::new(0, 100));
        let lsn = buffer.append(vec![transfer()]);
        let watch = buffer.durable();
        let waiter = tokio::spawn(async move { watch.wait_for(lsn).await });
        let batch = buffer.take().unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "released before the batch was written"
        );
        buffer.complete(&batch);
        waiter.await.unwrap().unwrap();
        assert_eq!(buffer.durable().current(), lsn);
        assert_eq!(buffer.backlog(), 0);
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_the_backlog_and_its_waiters() {
        let buffer = JournalBuffer::<Record>::new(0, 2);
        buffer.append(vec![transfer(), transfer()]);
        let batch = buffer.take().unwrap();
        // The flusher failed to write `batch` and holds on to it: nothing is durable.
        assert!(buffer.is_backlogged());
        assert_eq!(buffer.durable().current(), 0);
        buffer.complete(&batch);
        assert!(!buffer.is_backlogged());
    }

    #[tokio::test]
    async fn next_batch_returns_when_something_is_appended() {
        let buffer = Arc::new(JournalBuffer::<Record>::new(0, 100));
        let waiting = {
            let buffer = buffer.clone();
            tokio::spawn(async move { buffer.next_batch().await.last })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        buffer.append(vec![transfer()]);
        let last = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(last, 1);
    }

    /// Counts how often a waiting future is woken.
    struct Wakes(AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_once<F: std::future::Future>(
        future: std::pin::Pin<&mut F>,
        wakes: &Arc<Wakes>,
    ) -> std::task::Poll<F::Output> {
        let waker = std::task::Waker::from(wakes.clone());
        future.poll(&mut std::task::Context::from_waker(&waker))
    }

    #[test]
    fn a_waiter_is_woken_once_when_its_own_lsn_is_durable_not_at_every_flush_before() {
        let buffer = JournalBuffer::<Record>::new(0, 100);
        let mut batches = Vec::new();
        for _ in 0..5 {
            buffer.append(vec![transfer()]);
            batches.push(buffer.take().unwrap());
        }
        let watch = buffer.durable();
        let late = watch.wait_for(5);
        let early = watch.wait_for(2);
        tokio::pin!(late, early);
        let (late_wakes, early_wakes) = (
            Arc::new(Wakes(AtomicUsize::new(0))),
            Arc::new(Wakes(AtomicUsize::new(0))),
        );
        assert!(poll_once(late.as_mut(), &late_wakes).is_pending());
        assert!(poll_once(early.as_mut(), &early_wakes).is_pending());
        for batch in &batches[..4] {
            buffer.complete(batch);
        }
        assert_eq!(
            early_wakes.0.load(Ordering::SeqCst),
            1,
            "woken when 2 was durable"
        );
        assert!(poll_once(early.as_mut(), &early_wakes).is_ready());
        assert_eq!(
            late_wakes.0.load(Ordering::SeqCst),
            0,
            "four flushes before its own: never woken"
        );
        assert!(poll_once(late.as_mut(), &late_wakes).is_pending());
        buffer.complete(&batches[4]);
        assert_eq!(late_wakes.0.load(Ordering::SeqCst), 1);
        assert!(matches!(
            poll_once(late.as_mut(), &late_wakes),
            std::task::Poll::Ready(Ok(()))
        ));
    }

    #[tokio::test]
    async fn waiters_hear_that_the_journal_closed_and_so_does_anyone_after() {
        let buffer = JournalBuffer::<Record>::new(0, 100);
        let lsn = buffer.append(vec![transfer()]);
        let watch = buffer.durable();
        let waiter = tokio::spawn({
            let watch = watch.clone();
            async move { watch.wait_for(lsn).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(buffer);
        assert_eq!(waiter.await.unwrap(), Err(NotDurable::JournalClosed));
        assert_eq!(watch.wait_for(lsn).await, Err(NotDurable::JournalClosed));
        assert_eq!(
            watch.wait_for(0).await,
            Ok(()),
            "what was durable stays durable"
        );
    }

    #[tokio::test]
    async fn a_refused_batchs_waiters_hear_so_before_or_after_and_the_others_go_on() {
        let buffer = JournalBuffer::<Record>::new(0, 100);
        let watch = buffer.durable();
        let first = buffer.append(vec![transfer()]);
        let batch_one = buffer.take().unwrap();
        let refused = buffer.append(vec![transfer(), transfer()]);
        let batch_two = buffer.take().unwrap();
        let after = buffer.append(vec![transfer()]);
        let batch_three = buffer.take().unwrap();
        let spawn = |lsn| {
            let watch = watch.clone();
            tokio::spawn(async move { watch.wait_for(lsn).await })
        };
        let (one, two, three) = (spawn(first), spawn(refused), spawn(after));
        tokio::time::sleep(Duration::from_millis(20)).await;
        buffer.complete(&batch_one);
        buffer.refuse(&batch_two);
        assert_eq!(one.await.unwrap(), Ok(()));
        assert_eq!(two.await.unwrap(), Err(NotDurable::Refused));
        assert!(!three.is_finished(), "released before its own batch");
        // A caller that took its Lsn in the refused batch and only now waits.
        assert_eq!(watch.wait_for(refused - 1).await, Err(NotDurable::Refused));
        assert_eq!(
            watch.current(),
            refused,
            "the watermark moved past the refusal"
        );
        buffer.complete(&batch_three);
        assert_eq!(three.await.unwrap(), Ok(()));
        assert_eq!(watch.wait_for(first).await, Ok(()));
        assert_eq!(buffer.backlog(), 0);

        // Refusals are remembered within a bound.
        let watermark = Watermark::starting_at(0);
        for n in 0..(REFUSED_KEPT as Lsn + 10) {
            watermark.refuse(n * 10 + 1, n * 10 + 5);
        }
        assert_eq!(lock(&watermark.waiters).refused.len(), REFUSED_KEPT);
    }

    #[tokio::test]
    async fn waiters_that_gave_up_do_not_pile_up_while_nothing_becomes_durable() {
        // The store is down: nothing becomes durable, and every request times out.
        let watermark = Watermark::starting_at(0);
        let watch = watermark.watch();
        for _ in 0..100_000 {
            let wait = watch.wait_for(1);
            tokio::pin!(wait);
            let waker = std::task::Waker::noop();
            assert!(
                wait.as_mut()
                    .poll(&mut std::task::Context::from_waker(waker))
                    .is_pending()
            );
        }
        assert!(
            watermark.waiting() <= 2 * PRUNE_FLOOR,
            "{} abandoned waiters kept",
            watermark.waiting()
        );
        // Those really waiting are kept and released.
        let kept = tokio::spawn({
            let watch = watch.clone();
            async move { watch.wait_for(1).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        for _ in 0..10_000 {
            let wait = watch.wait_for(1);
            tokio::pin!(wait);
            let _ = wait
                .as_mut()
                .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        }
        watermark.advance(1);
        kept.await.unwrap().unwrap();
        assert_eq!(watermark.waiting(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_waiter_is_missed_by_a_racing_flush() {
        // Waiters register while flushes complete on another thread; each must return.
        let buffer = Arc::new(JournalBuffer::<Record>::new(0, 1_000_000));
        let flusher = {
            let buffer = buffer.clone();
            tokio::task::spawn_blocking(move || {
                for _ in 0..20_000 {
                    buffer.append(vec![transfer()]);
                    let batch = buffer.take().unwrap();
                    buffer.complete(&batch);
                }
            })
        };
        let watch = buffer.durable();
        let mut waiters = Vec::new();
        for lsn in (1..=20_000).step_by(7) {
            let watch = watch.clone();
            waiters.push(tokio::spawn(async move { watch.wait_for(lsn).await }));
        }
        flusher.await.unwrap();
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("every waiter is released")
                .unwrap()
                .unwrap();
        }
        assert_eq!(watch.current(), 20_000);
    }

    #[test]
    fn the_memory_journal_keeps_or_discards_records_but_always_numbers_them() {
        let kept = MemoryJournal::new();
        let dropped = MemoryJournal::discarding();
        for journal in [&kept, &dropped] {
            assert_eq!(journal.append(vec![transfer(), transfer()]), 2);
            assert_eq!(journal.durable().current(), 2);
        }
        assert_eq!(kept.records().len(), 2);
        assert!(dropped.records().is_empty());
    }
}
