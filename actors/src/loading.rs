//! Where lines rest while they are not in memory, and how they come back: the
//! [`LineStore`] the server implements over PostgreSQL, and the [`Batcher`] that turns
//! many concurrent first touches into a few queries.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::types::{LineKey, ProductId, ReservationId};

/// A line's persisted state, as the store hands it back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LineSeed {
    pub on_hand: u64,
    pub reserved: u64,
    pub safety_stock: u64,
    pub version: u64,
    pub updated_at: Option<DateTime<Utc>>,
    /// Holds of pending reservations on this line; `reserved` is repaired to their sum.
    pub holds: Vec<(ReservationId, u64)>,
}

/// What a [`LineStore`] answers, later.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send>>;

/// The lines' resting place. Both reads take many keys, so that the registry can answer
/// a crowd of first touches with one query.
pub trait LineStore: Send + Sync + 'static {
    /// The stored state of those of `keys` that are stored; a key left out is a line that
    /// was never stored, which starts empty.
    fn load(&self, keys: Vec<LineKey>) -> StoreFuture<Vec<(LineKey, LineSeed)>>;

    /// Every stored line of `products`, in whichever warehouses they are.
    fn lines_of_products(&self, products: Vec<ProductId>) -> StoreFuture<Vec<(LineKey, LineSeed)>>;

    /// Whether what the journal makes durable comes back from `load`. Only then may an
    /// idle line leave memory; over a store that keeps nothing, lines stay.
    fn keeps_lines(&self) -> bool {
        true
    }
}

/// A store that holds nothing: every line starts empty (tests, benches, in-memory runs).
pub struct EmptyStore;

impl LineStore for EmptyStore {
    fn load(&self, _keys: Vec<LineKey>) -> StoreFuture<Vec<(LineKey, LineSeed)>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn lines_of_products(
        &self,
        _products: Vec<ProductId>,
    ) -> StoreFuture<Vec<(LineKey, LineSeed)>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn keeps_lines(&self) -> bool {
        false
    }
}

/// How a [`Batcher`] gathers.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// The most keys in one query.
    pub max_keys: usize,
    /// Queries in flight at once; while all are busy, new keys gather for the next.
    pub concurrency: usize,
    /// Keys waiting to be asked for; past it, askers wait for room.
    pub queue: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_keys: 1_000,
            concurrency: 4,
            queue: 65_536,
        }
    }
}

type Answer<V> = oneshot::Sender<Result<Option<V>, String>>;

/// Fetches what many keys ask for in few calls, as group commit does for writes: the first
/// key goes at once; keys that arrive while every query slot is busy wait together and go
/// in one. So a lone first touch pays one round trip, and a crowd of them a handful.
pub(crate) struct Batcher<K, V> {
    queue: mpsc::Sender<(K, Answer<V>)>,
    counts: Arc<BatchCounts>,
}

/// What a batcher has done.
#[derive(Default)]
pub(crate) struct BatchCounts {
    pub(crate) queries: AtomicU64,
    pub(crate) keys: AtomicU64,
}

impl<K, V> Batcher<K, V>
where
    K: Copy + Eq + Hash + Send + 'static,
    V: Clone + Send + 'static,
{
    /// Starts the gathering task; it ends when the batcher is dropped.
    pub(crate) fn spawn<F>(limits: BatchLimits, fetch: F) -> Self
    where
        F: Fn(Vec<K>) -> StoreFuture<HashMap<K, V>> + Send + Sync + 'static,
    {
        let (queue, waiting) = mpsc::channel(limits.queue.max(1));
        let counts = Arc::new(BatchCounts::default());
        tokio::spawn(gather(waiting, fetch, limits, counts.clone()));
        Self { queue, counts }
    }

    /// The value stored under `key` (`None`: nothing stored).
    pub(crate) async fn get(&self, key: K) -> Result<Option<V>, String> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send((key, answer))
            .await
            .map_err(|_| "the loader has stopped".to_owned())?;
        answered
            .await
            .unwrap_or_else(|_| Err("the load was abandoned".into()))
    }

    pub(crate) fn counts(&self) -> &BatchCounts {
        &self.counts
    }
}

async fn gather<K, V, F>(
    mut waiting: mpsc::Receiver<(K, Answer<V>)>,
    fetch: F,
    limits: BatchLimits,
    counts: Arc<BatchCounts>,
) where
    K: Copy + Eq + Hash + Send + 'static,
    V: Clone + Send + 'static,
    F: Fn(Vec<K>) -> StoreFuture<HashMap<K, V>>,
{
    let slots = Arc::new(Semaphore::new(limits.concurrency.max(1)));
    while let Some(first) = waiting.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < limits.max_keys {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut keys: Vec<K> = batch.iter().map(|(key, _)| *key).collect();
        dedup(&mut keys);
        counts.queries.fetch_add(1, Ordering::Relaxed);
        counts.keys.fetch_add(keys.len() as u64, Ordering::Relaxed);
        let fetched = fetch(keys);
        tokio::spawn(async move {
            let result = fetched.await;
            for (key, answer) in batch {
                let _ = answer.send(match &result {
                    Ok(found) => Ok(found.get(&key).cloned()),
                    Err(error) => Err(error.clone()),
                });
            }
            drop(slot);
        });
    }
}

fn dedup<K: Copy + Eq + Hash>(keys: &mut Vec<K>) {
    let mut seen = std::collections::HashSet::with_capacity(keys.len());
    keys.retain(|key| seen.insert(*key));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn keys_that_arrive_while_the_slots_are_busy_go_in_one_query() {
        let asked: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let (release, released) = tokio::sync::watch::channel(false);
        let log = asked.clone();
        let limits = BatchLimits {
            max_keys: 100,
            concurrency: 1,
            queue: 1_000,
        };
        let batcher = Arc::new(Batcher::spawn(limits, move |keys: Vec<u32>| {
            log.lock().unwrap().push(keys.clone());
            let mut released = released.clone();
            Box::pin(async move {
                let _ = released.wait_for(|go| *go).await;
                Ok(keys
                    .into_iter()
                    .map(|k| (k, k * 10))
                    .collect::<HashMap<u32, u32>>())
            }) as StoreFuture<_>
        }));
        let first = tokio::spawn({
            let b = batcher.clone();
            async move { b.get(1).await }
        });
        while asked.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        // The one slot is busy with key 1: these gather, the duplicate asked once.
        let rest: Vec<_> = [2, 3, 3, 4]
            .into_iter()
            .map(|k| {
                let b = batcher.clone();
                tokio::spawn(async move { b.get(k).await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        release.send_replace(true);
        assert_eq!(first.await.unwrap(), Ok(Some(10u32)));
        for (task, want) in rest.into_iter().zip([20u32, 30, 30, 40]) {
            assert_eq!(task.await.unwrap(), Ok(Some(want)));
        }
        assert_eq!(*asked.lock().unwrap(), vec![vec![1], vec![2, 3, 4]]);
        assert_eq!(batcher.counts().queries.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_failed_query_fails_each_of_its_keys_and_the_next_one_runs() {
        let calls = Arc::new(AtomicU64::new(0));
        let seen = calls.clone();
        let batcher = Batcher::spawn(BatchLimits::default(), move |keys: Vec<u32>| {
            let first = seen.fetch_add(1, Ordering::Relaxed) == 0;
            Box::pin(async move {
                if first {
                    Err("down".to_owned())
                } else {
                    Ok(keys
                        .into_iter()
                        .filter(|k| *k != 9)
                        .map(|k| (k, k))
                        .collect::<HashMap<u32, u32>>())
                }
            }) as StoreFuture<_>
        });
        assert_eq!(batcher.get(1).await, Err("down".into()));
        assert_eq!(batcher.get(2).await, Ok(Some(2u32)));
        assert_eq!(batcher.get(9).await, Ok(None), "absent: nothing stored");
    }
}
