//! (warehouse, product) to line actor: spawned on first use, from state the server's
//! [`LineLoader`] supplies, under one [`LineSupervisor`](crate::supervisor).
//!
//! Everything that talks to a line goes through a [`LineHandle`] from here, which keeps the
//! in-flight bounds: ractor mailboxes are unbounded, so past `per_line` calls waiting on one
//! line, or `total` on all of them, new work is refused with `Overloaded` at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, MessagingErr};
use tokio::sync::OnceCell;

use crate::error::{CoreError, Result};
use crate::journal::Journal;
use crate::line_state::{LineOp, LineSnapshot, LineState};
use crate::stock_line::{Applied, LineContext, LineMsg, LineShared, LineStatsSnapshot};
use crate::supervisor::{LineSupervisor, SHUTDOWN, SupervisorMsg};
use crate::types::{LineKey, ProductId, ReservationId, WarehouseId};
use crate::warehouses::Warehouses;

/// A line's persisted state, as the server's store hands it back at spawn.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LineSeed {
    pub on_hand: u64,
    pub reserved: u64,
    pub version: u64,
    pub updated_at: Option<DateTime<Utc>>,
    /// Holds of pending reservations on this line; `reserved` is repaired to their sum.
    pub holds: Vec<(ReservationId, u64)>,
}

/// The future a [`LineLoader`] returns.
pub type LoadFuture = Pin<Box<dyn Future<Output = Result<Option<LineSeed>, String>> + Send>>;

/// Supplies a line's persisted state when it is first used (`None`: a new, empty line).
pub trait LineLoader: Send + Sync + 'static {
    fn load(&self, key: LineKey) -> LoadFuture;
}

/// A loader for which every line starts empty: tests, benches, in-memory runs.
pub struct EmptyLoader;

impl LineLoader for EmptyLoader {
    fn load(&self, _key: LineKey) -> LoadFuture {
        Box::pin(async { Ok(None) })
    }
}

/// Bounds and timeouts of calls to lines.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Calls that may wait on one line before new work is refused.
    pub per_line: usize,
    /// Calls that may wait on all lines together.
    pub total: usize,
    /// How long a caller waits for a line's answer; `None` (the default) waits without a
    /// timer. The wait is bounded anyway: a line's `handle` never awaits, so a live line
    /// answers within `per_line` messages' work, and a dead one drops the reply port, which
    /// answers at once. A timer per call costs ~10% of a round trip (BENCHMARKS.md), so it
    /// is left to the edge's request timeout unless asked for here.
    pub call_timeout: Option<Duration>,
    /// How long spawning (and loading) a line may take.
    pub spawn_timeout: Duration,
    /// A line with no work for this long gives up its actor until its next message
    /// (`None`: never). See the supervisor for why.
    pub passivate_after: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_line: 10_000,
            total: 200_000,
            call_timeout: None,
            spawn_timeout: Duration::from_secs(10),
            passivate_after: Some(Duration::from_secs(60)),
        }
    }
}

/// The way to one line. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct LineHandle(Arc<HandleInner>);

struct HandleInner {
    context: LineContext,
    supervisor: ActorRef<SupervisorMsg>,
    total: Arc<AtomicUsize>,
    limits: Limits,
}

/// How often a send refused by a draining (just passivated) actor is tried again.
const SEND_TRIES: usize = 4;

/// Counts one call in flight on a line and in total, for as long as it lives.
struct InFlight<'a> {
    line: &'a AtomicUsize,
    total: &'a AtomicUsize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.line.fetch_sub(1, Ordering::AcqRel);
        self.total.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LineHandle {
    fn shared(&self) -> &LineShared {
        &self.0.context.shared
    }

    pub fn key(&self) -> LineKey {
        self.shared().key
    }

    /// New work (reserve, adjust, set level, transfer out): refused past the bounds.
    pub async fn call(&self, op: LineOp) -> Result<Applied> {
        self.send(op, true).await
    }

    /// Settling work (commit, release, expire, transfer in, set active): never refused
    /// for load, so what was accepted can always be finished.
    pub async fn settle(&self, op: LineOp) -> Result<Applied> {
        self.send(op, false).await
    }

    async fn send(&self, mut op: LineOp, bounded: bool) -> Result<Applied> {
        let inner = &*self.0;
        let stats = &self.shared().stats;
        let line = stats.inflight.fetch_add(1, Ordering::AcqRel) + 1;
        let total = inner.total.fetch_add(1, Ordering::AcqRel) + 1;
        let _in_flight = InFlight {
            line: &stats.inflight,
            total: &inner.total,
        };
        if bounded && (line > inner.limits.per_line || total > inner.limits.total) {
            return Err(CoreError::Overloaded);
        }
        for _ in 0..SEND_TRIES {
            let actor = self.actor().await?;
            let reply = actor
                .call(
                    |reply| LineMsg::Apply {
                        op,
                        reply: Some(reply),
                    },
                    inner.limits.call_timeout,
                )
                .await;
            match reply {
                // Refused at the door by an actor being passivated: it never saw the op.
                // Unpublish it if it is still the line's actor, so the retry activates.
                Err(MessagingErr::SendErr(LineMsg::Apply { op: back, .. })) => {
                    self.shared().actor.compare_and_swap(&actor, None);
                    op = back;
                }
                other => return unwrap_call(other)?,
            }
        }
        Err(CoreError::Unavailable(format!(
            "line {} kept stopping",
            self.key()
        )))
    }

    /// A read ordered after every message sent to the line before it. A passivated line
    /// has no messages in flight, so its state is read directly.
    pub async fn snapshot(&self) -> Result<LineSnapshot> {
        let Some(actor) = self.shared().actor.load_full() else {
            return Ok(self.peek());
        };
        match actor
            .call(LineMsg::Snapshot, self.0.limits.call_timeout)
            .await
        {
            Err(MessagingErr::SendErr(_)) => Ok(self.peek()),
            other => unwrap_call(other),
        }
    }

    /// The line as it is now, read without a message (never waits on the mailbox).
    pub fn peek(&self) -> LineSnapshot {
        self.shared().peek()
    }

    pub fn stats(&self) -> LineStatsSnapshot {
        self.shared().stats.snapshot()
    }

    /// Whether the line has a running actor (false while passivated).
    pub fn is_active(&self) -> bool {
        self.shared().actor.load().is_some()
    }

    /// The running actor, activating the line first if it is passivated.
    async fn actor(&self) -> Result<Arc<ActorRef<LineMsg>>> {
        if let Some(actor) = self.shared().actor.load_full() {
            return Ok(actor);
        }
        activate(
            &self.0.supervisor,
            &self.0.context,
            self.0.limits.spawn_timeout,
        )
        .await?;
        self.shared()
            .actor
            .load_full()
            .ok_or_else(|| CoreError::Unavailable(format!("line {} did not start", self.key())))
    }

    #[cfg(test)]
    pub(crate) fn fail_for_test(&self) {
        if let Some(actor) = self.shared().actor.load_full() {
            let _ = actor.cast(LineMsg::Fail);
        }
    }
}

/// Asks the supervisor to give the line a running actor (a no-op if it has one).
async fn activate(
    supervisor: &ActorRef<SupervisorMsg>,
    context: &LineContext,
    timeout: Duration,
) -> Result<()> {
    let context = context.clone();
    let activated = supervisor
        .call(
            |reply| SupervisorMsg::Activate(context, reply),
            Some(timeout),
        )
        .await;
    unwrap_call(activated)?.map_err(CoreError::Unavailable)
}

fn unwrap_call<T, M>(reply: Result<CallResult<T>, ractor::MessagingErr<M>>) -> Result<T> {
    match reply {
        Ok(CallResult::Success(value)) => Ok(value),
        Ok(CallResult::Timeout) => Err(CoreError::Unavailable(
            "the line did not answer in time".into(),
        )),
        Ok(CallResult::SenderError) | Err(_) => Err(CoreError::Unavailable(
            "the line stopped before answering".into(),
        )),
    }
}

/// All lines of this process.
pub struct Registry {
    lines: DashMap<LineKey, Arc<OnceCell<LineHandle>>>,
    by_product: DashMap<ProductId, Vec<WarehouseId>>,
    by_warehouse: DashMap<WarehouseId, Vec<ProductId>>,
    loader: Arc<dyn LineLoader>,
    journal: Arc<dyn Journal>,
    warehouses: Arc<Warehouses>,
    supervisor: ActorRef<SupervisorMsg>,
    limits: Limits,
    total: Arc<AtomicUsize>,
}

impl Registry {
    pub(crate) async fn start(
        journal: Arc<dyn Journal>,
        loader: Arc<dyn LineLoader>,
        warehouses: Arc<Warehouses>,
        limits: Limits,
    ) -> Result<Self> {
        let (supervisor, _) = Actor::spawn(None, LineSupervisor, ())
            .await
            .map_err(|e| CoreError::Unavailable(format!("starting the line supervisor: {e}")))?;
        if let Some(idle_after) = limits.passivate_after {
            // Ends by itself once the supervisor stops.
            let period = (idle_after / 2).max(Duration::from_millis(10));
            supervisor.send_interval(period, move || SupervisorMsg::Sweep(idle_after));
        }
        Ok(Self {
            lines: DashMap::new(),
            by_product: DashMap::new(),
            by_warehouse: DashMap::new(),
            loader,
            journal,
            warehouses,
            supervisor,
            limits,
            total: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The line if it exists (with a running actor or passivated); never spawns.
    pub fn get(&self, key: LineKey) -> Option<LineHandle> {
        self.lines.get(&key).and_then(|slot| slot.get().cloned())
    }

    /// The line, spawned (and loaded) on first use. Concurrent first uses spawn it once.
    pub async fn get_or_spawn(&self, key: LineKey) -> Result<LineHandle> {
        if let Some(handle) = self.get(key) {
            return Ok(handle);
        }
        let slot = self.lines.entry(key).or_default().clone();
        let spawned = slot.get_or_try_init(|| self.spawn(key)).await.cloned();
        if spawned.is_err() {
            // Leave no empty slot behind for a key that may never be valid.
            self.lines.remove_if(&key, |_, slot| !slot.initialized());
        }
        spawned
    }

    async fn spawn(&self, key: LineKey) -> Result<LineHandle> {
        let info = self
            .warehouses
            .get(key.warehouse_id)
            .ok_or(CoreError::UnknownWarehouse {
                warehouse_id: key.warehouse_id,
            })?;
        let seed = self
            .loader
            .load(key)
            .await
            .map_err(|e| CoreError::Unavailable(format!("loading line {key}: {e}")))?;
        let state = seed_state(key, info.active, seed);
        let shared = Arc::new(LineShared::new(state));
        let context = LineContext {
            shared,
            journal: self.journal.clone(),
        };
        activate(&self.supervisor, &context, self.limits.spawn_timeout).await?;
        self.by_product
            .entry(key.product_id)
            .or_default()
            .push(key.warehouse_id);
        self.by_warehouse
            .entry(key.warehouse_id)
            .or_default()
            .push(key.product_id);
        Ok(LineHandle(Arc::new(HandleInner {
            context,
            supervisor: self.supervisor.clone(),
            total: self.total.clone(),
            limits: self.limits,
        })))
    }

    /// The running lines of one product, in every warehouse.
    pub fn lines_of_product(&self, product_id: ProductId) -> Vec<LineHandle> {
        let warehouses = self
            .by_product
            .get(&product_id)
            .map(|w| w.clone())
            .unwrap_or_default();
        warehouses
            .into_iter()
            .filter_map(|w| self.get(LineKey::new(w, product_id)))
            .collect()
    }

    /// The running lines of one warehouse.
    pub fn lines_of_warehouse(&self, warehouse_id: WarehouseId) -> Vec<LineHandle> {
        let products = self
            .by_warehouse
            .get(&warehouse_id)
            .map(|p| p.clone())
            .unwrap_or_default();
        products
            .into_iter()
            .filter_map(|p| self.get(LineKey::new(warehouse_id, p)))
            .collect()
    }

    /// Every running line (for the operator view).
    pub fn all(&self) -> Vec<LineHandle> {
        self.lines
            .iter()
            .filter_map(|slot| slot.get().cloned())
            .collect()
    }

    /// How many lines exist (running or passivated).
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// How many lines have a running actor now (the rest are passivated).
    pub fn active_lines(&self) -> usize {
        self.lines
            .iter()
            .filter(|slot| slot.get().is_some_and(LineHandle::is_active))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Calls in flight on all lines together.
    pub fn in_flight(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Stops every line after the messages already in its mailbox, then the supervisor.
    pub(crate) async fn shutdown(&self) {
        let cell = self.supervisor.get_cell();
        let children = cell.get_children();
        for child in &children {
            child.drain().ok();
        }
        for child in &children {
            let _ = child.wait(Some(self.limits.spawn_timeout)).await;
        }
        cell.stop_children_and_wait(Some(SHUTDOWN.into()), Some(self.limits.spawn_timeout))
            .await;
        let _ = cell
            .stop_and_wait(Some(SHUTDOWN.into()), Some(self.limits.spawn_timeout))
            .await;
    }
}

fn seed_state(key: LineKey, active: bool, seed: Option<LineSeed>) -> LineState {
    let mut state = LineState::empty(key, active);
    if let Some(seed) = seed {
        state.on_hand = seed.on_hand;
        state.reserved = seed.reserved;
        state.version = seed.version;
        state.updated_at = seed.updated_at.unwrap_or(state.updated_at);
        state.holds = seed.holds.into_iter().collect();
        if state.repair() {
            tracing::warn!(line = %key, "loaded reserved/on_hand disagreed with pending holds; repaired");
        }
    }
    state
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
