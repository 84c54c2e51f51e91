//! The durable-ack watermark: the highest Lsn below which everything is durable, and the
//! callers waiting on it, each woken once, when its own Lsn is.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::types::lock;

use super::Lsn;

/// The durable-ack handle: resolves once every record up to an Lsn is durable. Cheap to
/// clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct DurableWatch(pub(super) Arc<Watermark>);

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
        self.0.current()
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
    pub(super) waiters: Mutex<Waiters>,
}

#[derive(Debug, Default)]
pub(super) struct Waiters {
    /// Each waiter hears `true` once its Lsn is durable, `false` if it was refused.
    by_lsn: BTreeMap<Lsn, Vec<oneshot::Sender<bool>>>,
    closed: bool,
    /// Past this many waiters, those that gave up are forgotten (see `forget_abandoned`).
    prune_at: usize,
    /// The newest refused ranges, by first Lsn (last Lsn as value), at most
    /// [`REFUSED_KEPT`]: a caller that took an Lsn just before its batch was refused
    /// must hear so even if it starts waiting after.
    pub(super) refused: BTreeMap<Lsn, Lsn>,
}

/// Refused ranges remembered. A refusal is rare (a node fenced off by a takeover), and a
/// caller asks about its Lsn within its request, long before this many more refusals.
pub(super) const REFUSED_KEPT: usize = 4_096;

/// Waiters kept before the first look for abandoned ones.
pub(super) const PRUNE_FLOOR: usize = 4_096;

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

    /// The highest Lsn known durable now.
    pub fn current(&self) -> Lsn {
        self.durable.load(Ordering::Acquire)
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
