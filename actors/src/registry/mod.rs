//! The one way to a stock line. Lines are virtual, as Orleans grains are: every
//! (warehouse, product) line always exists, and is in memory only while it has work.
//!
//! # Finding a line
//! [`Registry::line`] answers a [`LineHandle`] for any key of a known warehouse. A line in
//! memory (resident) is found in one map lookup; otherwise it is loaded. Nothing else
//! hands out lines, and nothing assumes that every line is in this process: code that
//! needs "the lines of product P" asks [`Registry::lines_of_product`], which reads the
//! product's warehouses from a compact index (loaded per product on first use, from the
//! [`LineStore`]) and then finds each line the same way.
//!
//! # Loading (activation of the state)
//! The first touch of a line asks the [`LineStore`] for it through a batcher: concurrent
//! first touches of different lines go out as one query for many keys; concurrent first
//! touches of the same line share one load (one slot per key). A key the store does not
//! hold is a new line: it starts empty, and its warehouse joins the product's index. A
//! loaded line has its state in memory but no actor yet.
//!
//! # Activation and passivation (the actor)
//! The first message to a line asks the supervisor for an actor; a line with no work for
//! `passivate_after` gives its actor up (~6 KB) and keeps its state (~0.6 KB). Both go
//! through the one supervisor, so a line never has two actors.
//!
//! # Eviction (leaving memory)
//! A passivated line also leaves memory once it has no holds and its newest record is
//! durable: a line out of memory therefore never has holds, and the store holds exactly
//! its newest state, so a later load is never stale, and reads of cold lines may go to
//! the store directly without waiting on the write-behind. Lines with pending holds stay
//! resident until the holds settle; at start, the server restores those lines (with their
//! holds) before serving. Eviction marks the line retired in one atomic step that only
//! succeeds with no caller inside; a caller holding an old handle then finds the mark and
//! looks the line up again, which loads it afresh.
//!
//! # Handing a line over
//! Moving a line to another process is eviction here followed by a load there: once
//! evicted, the store holds all of it. Which lines a process serves is decided above the
//! registry (in cluster mode, the server's inventory service sends an operation on a
//! shard this node does not own to the shard's owner); the registry loads only what its
//! store lets it load here.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use ractor::{Actor, ActorRef};
use tokio::sync::OnceCell;

use crate::error::{CoreError, Result};
pub use crate::handle::Limits;
use crate::handle::{LineHandle, Lookup};
use crate::journal::{DurableWatch, Journal, Record};
use crate::line_state::LineState;
use crate::loading::{Batcher, LineSeed, LineStore, StoreFuture};
use crate::stock_line::{LineShared, LineStatsSnapshot};
use crate::supervisor::{Lifecycles, LineSupervisor, SHUTDOWN, SupervisorMsg};
use crate::types::{LineKey, ProductId, WarehouseId};
use crate::warehouses::Warehouses;

mod index;

use index::ProductIndex;

/// What the registry has done, for operators (what is in memory now: [`Registry::survey`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegistryStats {
    /// Queries that loaded lines, and the lines they asked for.
    pub load_queries: u64,
    pub lines_loaded: u64,
    /// Lines that left memory.
    pub evictions: u64,
    /// Times a line was given an actor (restarts included), and gave it up for being idle.
    pub activations: u64,
    pub passivations: u64,
    /// Products whose warehouses are known.
    pub products_indexed: usize,
}

/// The lines in memory, summed in one pass ([`Registry::survey`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Survey {
    pub lines: usize,
    /// With a running actor.
    pub active: usize,
    pub messages_handled: u64,
    pub restarts: u64,
    /// The lines that handled the most messages, the most first, with their mailbox depth.
    pub busiest: Vec<(LineKey, usize)>,
}

/// The highest-ranking lines in memory ([`Registry::top_resident`]).
pub struct TopLines {
    /// The highest first.
    pub lines: Vec<LineHandle>,
    /// Lines in memory that were considered, and of those, with a running actor.
    pub matched: usize,
    pub active: usize,
}

/// The lines of this process. Cheap to share: handles keep it alive.
pub struct Registry(Arc<Lines>);

/// The registry's insides, which every [`LineHandle`] keeps a reference to.
struct Lines {
    resident: DashMap<LineKey, Arc<OnceCell<Arc<LineShared>>>>,
    products: ProductIndex,
    loads: Batcher<LineKey, LineSeed>,
    journal: Arc<dyn Journal>,
    durable: DurableWatch,
    warehouses: Arc<Warehouses>,
    supervisor: ActorRef<SupervisorMsg>,
    limits: Limits,
    /// Calls in flight on all lines together.
    total: AtomicUsize,
    evictions: AtomicU64,
    /// Activations and passivations since start, counted by the supervisor.
    lifecycles: Arc<Lifecycles>,
    /// Whether lines may leave memory (the store gives back what the journal keeps).
    evicts: bool,
    /// Counts eviction passes that removed lines; with `evicting`, it tells a product load
    /// whether a line may have left memory while the load was reading (see `prewarm`).
    eviction_epoch: AtomicU64,
    evicting: std::sync::Mutex<()>,
}

/// How often `line` looks again at a line being retired before giving up.
const RETIRING_TRIES: usize = 1_000;

impl Registry {
    pub(crate) async fn start(
        journal: Arc<dyn Journal>,
        store: Arc<dyn LineStore>,
        warehouses: Arc<Warehouses>,
        limits: Limits,
    ) -> Result<Self> {
        let lifecycles = Arc::new(Lifecycles::default());
        let (supervisor, _) = Actor::spawn(None, LineSupervisor, lifecycles.clone())
            .await
            .map_err(|e| CoreError::Unavailable(format!("starting the line supervisor: {e}")))?;
        let evicts = store.keeps_lines();
        let loader = store.clone();
        let loads = Batcher::spawn(limits.loads, move |keys| {
            let loaded = loader.load(keys);
            Box::pin(async move { Ok(loaded.await?.into_iter().collect()) }) as StoreFuture<_>
        });
        let lines = Arc::new(Lines {
            resident: DashMap::new(),
            products: ProductIndex::new(store, limits.loads),
            loads,
            durable: journal.durable(),
            journal,
            warehouses,
            supervisor: supervisor.clone(),
            limits,
            total: AtomicUsize::new(0),
            evictions: AtomicU64::new(0),
            lifecycles,
            evicts,
            eviction_epoch: AtomicU64::new(0),
            evicting: std::sync::Mutex::new(()),
        });
        if let Some(idle_after) = limits.passivate_after {
            let period = (idle_after / 2).max(Duration::from_millis(1));
            // Ends by itself once the supervisor stops.
            supervisor.send_interval(period, move || SupervisorMsg::Sweep(idle_after));
            if evicts {
                evict_every(period, idle_after, Arc::downgrade(&lines));
            }
        }
        Ok(Self(lines))
    }

    /// The line, loaded first if it is not in memory. Concurrent first touches of one
    /// line load it once; of many lines, in few queries.
    pub async fn line(&self, key: LineKey) -> Result<LineHandle> {
        Lines::line(&self.0, key).await
    }

    /// The line if it is in memory now; never loads.
    pub fn resident(&self, key: LineKey) -> Option<LineHandle> {
        let shared = self.0.resident.get(&key)?.get()?.clone();
        Some(self.0.handle(shared))
    }

    /// Puts a line in memory with the state the store had at start, holds included
    /// (recovery, before serving). A line already in memory is left as it is.
    pub fn restore(&self, key: LineKey, seed: LineSeed) -> Result<()> {
        let shared = Arc::new(self.0.shared_from(key, Some(seed))?);
        self.0
            .resident
            .entry(key)
            .or_insert_with(|| Arc::new(OnceCell::new_with(Some(shared))));
        Ok(())
    }

    /// Every line of one product, in every warehouse that has one, loaded as needed (in
    /// one query for the lot). Ordered by warehouse.
    pub async fn lines_of_product(&self, product_id: ProductId) -> Result<Vec<LineHandle>> {
        let warehouses =
            self.0.product_warehouses(product_id).await.map_err(|e| {
                CoreError::Unavailable(format!("finding product {product_id}: {e}"))
            })?;
        let keys = warehouses
            .iter()
            .filter(|w| self.0.warehouses.get(**w).is_some())
            .map(|w| LineKey::new(*w, product_id));
        // The hot path: every line in memory already, nothing to await.
        let resident: Option<Vec<LineHandle>> = keys.clone().map(|key| self.0.live(key)).collect();
        match resident {
            Some(lines) => Ok(lines),
            None => futures_util::future::try_join_all(keys.map(|key| self.line(key))).await,
        }
    }

    /// The lines in memory now (for operator views and sweeps).
    pub fn resident_lines(&self) -> Vec<LineHandle> {
        self.0
            .resident
            .iter()
            .filter_map(|slot| slot.get().cloned())
            .map(|shared| self.0.handle(shared))
            .collect()
    }

    /// One pass over the lines in memory, for a scrape: how many, how many have an actor,
    /// sums of their counters, and the `busiest` that handled the most messages (the
    /// busiest first). Visits each line in place: no handle is made.
    pub fn survey(&self, busiest: usize) -> Survey {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let now = crate::types::now();
        let mut survey = Survey::default();
        // The `busiest` largest seen so far, smallest on top.
        let mut top: BinaryHeap<Reverse<(u64, LineKey, usize)>> = BinaryHeap::new();
        for slot in self.0.resident.iter() {
            let Some(shared) = slot.get() else { continue };
            let stats = shared.stats.snapshot_at(now);
            survey.lines += 1;
            survey.active += usize::from(shared.actor.load().is_some());
            survey.messages_handled += stats.messages_handled;
            survey.restarts += stats.restarts;
            let entry = Reverse((stats.messages_handled, shared.key, stats.mailbox_len));
            if top.len() < busiest {
                top.push(entry);
            } else if top.peek().is_some_and(|least| entry < *least) {
                top.pop();
                top.push(entry);
            }
        }
        survey.busiest = top
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse((_, key, depth))| (key, depth))
            .collect();
        survey
    }

    /// The `n` lines in memory that rank highest by `rank` of their counters (the highest
    /// first; ties by key), among those whose key `keep` allows; with how many it allows
    /// and how many of those have an actor. One pass, keeping `n` at a time.
    pub fn top_resident<K: Ord>(
        &self,
        n: usize,
        keep: impl Fn(LineKey) -> bool,
        rank: impl Fn(&LineStatsSnapshot) -> K,
    ) -> TopLines {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        /// Ordered by rank, then key; the line rides along.
        struct Ranked<K>(K, LineKey, Arc<LineShared>);
        impl<K: Ord> PartialEq for Ranked<K> {
            fn eq(&self, other: &Self) -> bool {
                (&self.0, self.1) == (&other.0, other.1)
            }
        }
        impl<K: Ord> Eq for Ranked<K> {}
        impl<K: Ord> PartialOrd for Ranked<K> {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        impl<K: Ord> Ord for Ranked<K> {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                (&self.0, Reverse(self.1)).cmp(&(&other.0, Reverse(other.1)))
            }
        }
        let now = crate::types::now();
        let (mut matched, mut active) = (0, 0);
        // The `n` highest so far, the lowest of them on top.
        // `n` comes from a client's paging: room for what is in memory at most.
        let room = n.min(self.0.resident.len()).saturating_add(1);
        let mut top: BinaryHeap<Reverse<Ranked<K>>> = BinaryHeap::with_capacity(room);
        for slot in self.0.resident.iter() {
            let Some(shared) = slot.get() else { continue };
            if !keep(shared.key) {
                continue;
            }
            matched += 1;
            active += usize::from(shared.actor.load().is_some());
            if n == 0 {
                continue;
            }
            let entry = Reverse(Ranked(
                rank(&shared.stats.snapshot_at(now)),
                shared.key,
                shared.clone(),
            ));
            if top.len() < n {
                top.push(entry);
            } else if top.peek().is_some_and(|lowest| entry < *lowest) {
                top.pop();
                top.push(entry);
            }
        }
        TopLines {
            lines: top
                .into_sorted_vec()
                .into_iter()
                .map(|Reverse(Ranked(_, _, shared))| self.0.handle(shared))
                .collect(),
            matched,
            active,
        }
    }

    /// The lines of one warehouse in memory now.
    pub fn resident_of_warehouse(&self, warehouse_id: WarehouseId) -> Vec<LineHandle> {
        self.resident_lines()
            .into_iter()
            .filter(|line| line.key().warehouse_id == warehouse_id)
            .collect()
    }

    /// How many lines are in memory now.
    pub fn len(&self) -> usize {
        self.0.resident.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.resident.is_empty()
    }

    /// How many lines have a running actor now (the rest are passivated or cold).
    pub fn active_lines(&self) -> usize {
        self.0
            .resident
            .iter()
            .filter(|slot| slot.get().is_some_and(|s| s.actor.load().is_some()))
            .count()
    }

    pub fn stats(&self) -> RegistryStats {
        let counts = self.0.loads.counts();
        RegistryStats {
            load_queries: counts.queries.load(Ordering::Relaxed),
            lines_loaded: counts.keys.load(Ordering::Relaxed),
            evictions: self.0.evictions.load(Ordering::Relaxed),
            activations: self.0.lifecycles.activations.load(Ordering::Relaxed),
            passivations: self.0.lifecycles.passivations.load(Ordering::Relaxed),
            products_indexed: self.0.products.known.len(),
        }
    }

    /// Calls in flight on all lines together.
    pub fn in_flight(&self) -> usize {
        self.0.total.load(Ordering::Acquire)
    }

    /// Forgets every line in memory of a product `gone` names, whatever it holds, without
    /// writing anything (cluster mode: the product's shard is another node's now). A line
    /// with a caller inside is retired once the caller is out; answers how many left.
    pub async fn forget(&self, gone: impl Fn(ProductId) -> bool) -> usize {
        let lines = &self.0;
        let mut left: Vec<Arc<LineShared>> = lines
            .resident
            .iter()
            .filter(|slot| gone(slot.key().product_id))
            .filter_map(|slot| slot.get().cloned())
            .collect();
        let mut forgotten = 0;
        for _ in 0..RETIRING_TRIES {
            let retired: Vec<Arc<LineShared>> = {
                let (retired, busy) = left.into_iter().partition(|shared| shared.retire_now());
                left = busy;
                retired
            };
            lines.remove_retired(&retired);
            forgotten += retired.len();
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if !left.is_empty() {
            tracing::warn!(
                lines = left.len(),
                "lines of a lost shard stayed busy; not forgotten"
            );
        }
        lines.products.known.retain(|product, _| !gone(*product));
        lines
            .evictions
            .fetch_add(forgotten as u64, Ordering::Relaxed);
        forgotten
    }

    /// Evicts now every line that may leave memory (the periodic sweep does the same).
    pub fn evict_idle(&self, idle_after: Duration) -> usize {
        self.0.evict_idle(idle_after)
    }

    /// Stops every line after the messages already in its mailbox, then the supervisor.
    pub(crate) async fn shutdown(&self) {
        let timeout = self.0.limits.spawn_timeout;
        let cell = self.0.supervisor.get_cell();
        let children = cell.get_children();
        for child in &children {
            child.drain().ok();
        }
        for child in &children {
            let _ = child.wait(Some(timeout)).await;
        }
        cell.stop_children_and_wait(Some(SHUTDOWN.into()), Some(timeout))
            .await;
        let _ = cell
            .stop_and_wait(Some(SHUTDOWN.into()), Some(timeout))
            .await;
    }
}

impl Lookup for Lines {
    fn line(
        self: Arc<Self>,
        key: LineKey,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<LineHandle>> + Send>> {
        Box::pin(async move { Lines::line(&self, key).await })
    }

    fn journal(&self) -> &Arc<dyn Journal> {
        &self.journal
    }

    fn supervisor(&self) -> &ActorRef<SupervisorMsg> {
        &self.supervisor
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn total(&self) -> &AtomicUsize {
        &self.total
    }
}

impl Lines {
    fn handle(self: &Arc<Self>, shared: Arc<LineShared>) -> LineHandle {
        LineHandle {
            shared,
            lines: self.clone() as Arc<dyn Lookup>,
        }
    }

    /// The line if it is in memory and not being retired, marked as used; never loads.
    fn live(self: &Arc<Self>, key: LineKey) -> Option<LineHandle> {
        let shared = self.resident.get(&key)?.get()?.clone();
        if shared.is_retired() {
            return None;
        }
        shared.stats.touch(chrono::Utc::now());
        Some(self.handle(shared))
    }

    async fn line(self: &Arc<Self>, key: LineKey) -> Result<LineHandle> {
        for _ in 0..RETIRING_TRIES {
            // Not in a `match` on `get`: its read guard would be held into `entry`.
            let found = self.resident.get(&key).map(|slot| slot.clone());
            let slot = found.unwrap_or_else(|| self.resident.entry(key).or_default().clone());
            let loaded = slot.get_or_try_init(|| self.load(key)).await.cloned();
            match loaded {
                Err(error) => {
                    // Leave no empty slot behind for a key that may never be valid.
                    self.resident
                        .remove_if(&key, |_, s| Arc::ptr_eq(s, &slot) && !s.initialized());
                    return Err(error);
                }
                // Being evicted: the evictor removes it (or takes the mark back) at once.
                Ok(shared) if shared.is_retired() => tokio::task::yield_now().await,
                Ok(shared) => {
                    shared.stats.touch(chrono::Utc::now());
                    return Ok(self.handle(shared));
                }
            }
        }
        Err(CoreError::Unavailable(format!("line {key} kept leaving")))
    }

    async fn load(&self, key: LineKey) -> Result<Arc<LineShared>> {
        if self.warehouses.get(key.warehouse_id).is_none() {
            return Err(CoreError::UnknownWarehouse {
                warehouse_id: key.warehouse_id,
            });
        }
        let loading = async {
            let seed = self.loads.get(key).await?;
            if seed.is_none() {
                // A new line: its product's index must be known before it joins it.
                self.product_warehouses(key.product_id).await?;
                self.products.add(key);
            }
            Ok::<_, String>(seed)
        };
        let seed = tokio::time::timeout(self.limits.spawn_timeout, loading)
            .await
            .map_err(|_| format!("timed out after {:?}", self.limits.spawn_timeout))
            .and_then(|loaded| loaded)
            .map_err(|e| CoreError::Unavailable(format!("loading line {key}: {e}")))?;
        self.shared_from(key, seed).map(Arc::new)
    }

    /// A line's shared state from what the store had. If the stored `reserved` disagrees
    /// with the holds, it is repaired, and the repair journaled as a new version so the
    /// store agrees again.
    fn shared_from(&self, key: LineKey, seed: Option<LineSeed>) -> Result<LineShared> {
        let info = self
            .warehouses
            .get(key.warehouse_id)
            .ok_or(CoreError::UnknownWarehouse {
                warehouse_id: key.warehouse_id,
            })?;
        let mut state = LineState::empty(key, info.active);
        let mut last_lsn = 0;
        if let Some(seed) = seed {
            state.on_hand = seed.on_hand;
            state.reserved = seed.reserved;
            state.safety_stock = seed.safety_stock;
            state.version = seed.version;
            state.updated_at = seed.updated_at.unwrap_or(state.updated_at);
            state.holds = seed.holds.into_iter().collect();
            if state.repair() {
                tracing::warn!(line = %key, "stored reserved disagreed with the pending holds; repaired");
                state.version += 1;
                last_lsn = self.journal.append(vec![Record::Line(state.record())]);
            }
        }
        let shared = LineShared::new(state, last_lsn);
        shared.stats.touch(chrono::Utc::now());
        Ok(shared)
    }

    /// Takes retired lines out of memory (a product load that read while they left finds
    /// the eviction epoch moved, see `prewarm`).
    fn remove_retired(&self, retired: &[Arc<LineShared>]) {
        if retired.is_empty() {
            return;
        }
        let _evicting = crate::types::lock(&self.evicting);
        self.eviction_epoch.fetch_add(1, Ordering::AcqRel);
        for shared in retired {
            self.resident.remove_if(&shared.key, |_, slot| {
                slot.get().is_some_and(|s| Arc::ptr_eq(s, shared))
            });
        }
    }

    fn evict_idle(&self, idle_after: Duration) -> usize {
        if !self.evicts {
            return 0;
        }
        let now = chrono::Utc::now();
        let durable = self.durable.current();
        let retired: Vec<Arc<LineShared>> = self
            .resident
            .iter()
            .filter_map(|slot| slot.get().cloned())
            .filter(|shared| shared.retire(now, idle_after, durable))
            .collect();
        self.remove_retired(&retired);
        self.evictions
            .fetch_add(retired.len() as u64, Ordering::Relaxed);
        retired.len()
    }
}

/// Evicts idle lines every `period` for as long as the registry lives.
fn evict_every(period: Duration, idle_after: Duration, lines: Weak<Lines>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(period);
        every.tick().await;
        loop {
            every.tick().await;
            let Some(lines) = lines.upgrade() else { return };
            lines.evict_idle(idle_after);
        }
    });
}

#[cfg(test)]
mod tests;
