//! `stockline-actors`: the in-memory inventory core. No HTTP, no SQL.
//!
//! # Layout
//! - [`types`]: the vocabulary at the bottom, importing nothing of the crate: ids,
//!   [`Quantity`] (parsed once at the edge), [`ReservationStatus`], [`ReservedItem`].
//! - [`line_state`]: one line's state and the rules of every operation, as plain data.
//! - [`stock_line`]: the `StockLine` ractor actor that applies operations one at a time.
//! - [`registry`]: the one way to a line: lines are virtual, loaded from the [`loading`]
//!   store on first touch (in batches) and evicted when idle; [`handle`] keeps the
//!   in-flight bounds; `supervisor` activates, passivates and restarts line actors.
//! - [`reservations`]: multi-line all-or-nothing reserve, commit, release (whole or in
//!   parts), extend, reshape; `allocation` spreads an item over warehouses (of one shop,
//!   if asked) and places backorders; `expiry` holds one timer queue for all of them.
//! - [`transfers`]: moving stock between two lines without ever leaving it half-moved.
//! - [`journal`]: the records every change emits and the [`Journal`] they go to.
//!
//! # The flow of a reservation
//! The edge calls [`Core::reservations`]`.reserve(..)`. The allocator picks lines (pinned by
//! the request, or across active warehouses by priority, then most available) and sends each
//! a `Reserve` through its [`LineHandle`], which refuses at once when the line's mailbox or
//! all mailboxes together are at their bound. Each line actor checks and applies the hold,
//! journals the line's new state and a movement, and answers with the journal [`Lsn`]. If a
//! line refuses, the holds already taken are released before the refusal is answered. The
//! edge, in `sync` durability, then awaits [`DurableWatch::wait_for`] that Lsn.

pub mod error;
pub mod handle;
pub mod journal;
pub mod line_state;
pub mod loading;
pub mod registry;
pub mod reservations;
pub mod stock_line;
pub mod transfers;
pub mod types;
pub mod warehouses;

mod allocation;
mod expiry;
mod settled;
mod supervisor;

use std::sync::Arc;
use std::time::Duration;

pub use error::{CoreError, Result};
pub use handle::LineHandle;
pub use journal::{
    DurableWatch, Journal, JournalBuffer, Lsn, MemoryJournal, NotDurable, Note, Record, Watermark,
};
pub use line_state::{LineOp, LineSnapshot};
pub use loading::{BatchLimits, EmptyStore, LineSeed, LineStore, StoreFuture};
pub use registry::{Limits, Registry, RegistryStats, Survey, TopLines};
pub use reservations::{
    ItemRequest, Reservation, ReservationRequest, ReservationStatus, Reservations, ReservedItem,
};
pub use stock_line::{Applied, LineStatsSnapshot};
pub use transfers::TransferRequest;
pub use types::{
    HOMES, Home, LineKey, ProductId, Quantity, ReservationId, TransferId, WarehouseId, with_home,
};
pub use warehouses::{WarehouseInfo, Warehouses};

use journal::TransferRecord;

/// How the core runs.
#[derive(Clone, Copy, Debug)]
pub struct CoreConfig {
    pub limits: Limits,
    /// How long settled reservations stay readable in memory at most (the store has them
    /// after).
    pub settled_retention: Duration,
    /// How many settled reservations stay in memory at most: the tail is bounded by
    /// memory, not only by time (each costs about 350 bytes).
    pub settled_budget: usize,
    /// The home a reservation's id names, from its first product (in cluster mode, the
    /// product's shard), so any node finds where it is served from the id alone.
    pub home_of: fn(ProductId) -> u16,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            settled_retention: Duration::from_secs(600),
            settled_budget: 100_000,
            home_of: |_| 0,
        }
    }
}

/// The whole core: lines, warehouses, reservations, transfers, journal.
pub struct Core {
    registry: Arc<Registry>,
    warehouses: Arc<Warehouses>,
    reservations: Reservations,
    journal: Arc<dyn Journal>,
}

impl Core {
    /// Starts the line supervisor and the expiry timer. Needs a tokio runtime.
    pub async fn start(
        config: CoreConfig,
        journal: Arc<dyn Journal>,
        store: Arc<dyn LineStore>,
    ) -> Result<Self> {
        let warehouses = Arc::new(Warehouses::default());
        let registry = Arc::new(
            Registry::start(journal.clone(), store, warehouses.clone(), config.limits).await?,
        );
        let reservations = Reservations::new(
            registry.clone(),
            warehouses.clone(),
            journal.clone(),
            reservations::SettledLimits {
                budget: config.settled_budget,
                retention: config.settled_retention,
            },
            config.home_of,
        );
        Ok(Self {
            registry,
            warehouses,
            reservations,
            journal,
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn warehouses(&self) -> &Warehouses {
        &self.warehouses
    }

    pub fn reservations(&self) -> &Reservations {
        &self.reservations
    }

    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.journal
    }

    /// Adds or updates a warehouse; a status change reaches every line of it (lines out
    /// of memory take it when they load).
    pub async fn upsert_warehouse(&self, id: WarehouseId, info: WarehouseInfo) -> Result<()> {
        self.warehouses.upsert(id, info);
        self.broadcast_active(id, info.active).await
    }

    /// Activates or deactivates a known warehouse and each of its lines.
    pub async fn set_warehouse_active(&self, id: WarehouseId, active: bool) -> Result<()> {
        if !self.warehouses.set_active(id, active) {
            return Err(CoreError::UnknownWarehouse { warehouse_id: id });
        }
        self.broadcast_active(id, active).await
    }

    async fn broadcast_active(&self, id: WarehouseId, active: bool) -> Result<()> {
        for line in self.registry.resident_of_warehouse(id) {
            line.settle(LineOp::SetActive(active)).await?;
        }
        Ok(())
    }

    /// Changes a line's `on_hand` by `delta` (loading the line first if it is cold).
    pub async fn adjust(
        &self,
        key: LineKey,
        delta: i64,
        reason: String,
        note: Option<Arc<Note>>,
    ) -> Result<Applied> {
        let line = self.registry.line(key).await?;
        line.call(LineOp::Adjust {
            delta,
            reason,
            note,
        })
        .await
    }

    /// Puts sold stock back on a line (a paid order cancelled). Never refused for load.
    pub async fn return_stock(&self, key: LineKey, qty: Quantity) -> Result<Applied> {
        let line = self.registry.line(key).await?;
        line.settle(LineOp::Return { qty }).await
    }

    /// Sets a line's `on_hand` (a count); with `expected_version`, only if still at it.
    pub async fn set_level(
        &self,
        key: LineKey,
        on_hand: u64,
        expected_version: Option<u64>,
        reason: String,
        note: Option<Arc<Note>>,
    ) -> Result<Applied> {
        let line = self.registry.line(key).await?;
        line.call(LineOp::SetLevel {
            on_hand,
            expected_version,
            reason,
            note,
        })
        .await
    }

    /// Sets a line's safety stock: units kept on hand that are never reserved or sent away.
    pub async fn set_safety(&self, key: LineKey, safety_stock: u64) -> Result<Applied> {
        let line = self.registry.line(key).await?;
        line.call(LineOp::SetSafety { safety_stock }).await
    }

    /// Moves available stock between two warehouses; never leaves it half-moved, also
    /// when the caller goes away (it runs in a task of its own).
    pub async fn transfer(&self, request: TransferRequest) -> Result<(TransferRecord, Lsn)> {
        let (registry, warehouses, journal) = (
            self.registry.clone(),
            self.warehouses.clone(),
            self.journal.clone(),
        );
        to_the_end(
            async move { transfers::transfer(&registry, &warehouses, &*journal, request).await },
        )
        .await
    }

    /// Forgets, without writing anything, the lines and reservations of the products `gone`
    /// names (cluster mode: their shard was taken over, or a batch of theirs was refused,
    /// so this memory may differ from the store). Their next use loads them afresh.
    /// Answers the lines and reservations forgotten.
    pub async fn forget(&self, gone: impl Fn(ProductId) -> bool) -> (usize, usize) {
        let reservations = self.reservations.forget_where(&gone);
        let lines = self.registry.forget(&gone).await;
        (lines, reservations)
    }

    /// Drains every line's mailbox, then stops the lines.
    pub async fn shutdown(&self) {
        self.registry.shutdown().await;
    }
}

/// Runs a multi-step change in a task of its own and awaits its answer. Dropping the
/// caller's future (an HTTP client hanging up) drops only the wait, never the change, so
/// no change stops half-way (Alice Ryhl, "Actors with Tokio": the handle and the task).
pub(crate) async fn to_the_end<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(work).await.unwrap_or_else(|error| {
        tracing::error!(%error, "a core task failed");
        Err(CoreError::Unavailable(
            "the change failed unexpectedly; retry".into(),
        ))
    })
}

/// A core over an in-memory journal with warehouse 1 (active), for unit tests.
#[cfg(test)]
pub(crate) async fn test_core() -> Core {
    let core = Core::start(
        CoreConfig::default(),
        Arc::new(MemoryJournal::new()),
        Arc::new(EmptyStore),
    )
    .await
    .expect("core starts");
    core.upsert_warehouse(1, WarehouseInfo::default())
        .await
        .expect("warehouse");
    core
}

#[cfg(test)]
mod forgetting {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use crate::types::{ItemRequest, LineKey, Quantity};
    use crate::{ReservationRequest, test_core};

    #[tokio::test]
    async fn forgotten_lines_and_reservations_come_back_from_the_store_not_from_memory() {
        let core = test_core().await;
        let (gone, kept) = (LineKey::new(1, 7), LineKey::new(1, 8));
        core.adjust(gone, 10, "receipt".into(), None).await.unwrap();
        core.adjust(kept, 5, "receipt".into(), None).await.unwrap();
        let request = |product| ReservationRequest {
            items: vec![ItemRequest {
                product_id: product,
                quantity: Quantity::new(2).unwrap(),
                warehouse_id: None,
            }],
            ttl: Duration::from_secs(60),
            reference: None,
            shop_id: None,
            backorder_limits: BTreeMap::new(),
        };
        let (held_gone, _) = core.reservations().reserve(request(7)).await.unwrap();
        let (held_kept, _) = core.reservations().reserve(request(8)).await.unwrap();

        assert_eq!(core.forget(|product| product == 7).await, (1, 1));
        assert!(core.registry().resident(gone).is_none());
        assert!(core.reservations().get(held_gone.id).is_none());
        assert!(core.reservations().get(held_kept.id).is_some());
        // The test store holds nothing: the line is loaded again, empty, not from memory,
        // and a change applies to that.
        let registry = core.registry();
        let state =
            |key| async move { registry.line(key).await.unwrap().snapshot().await.unwrap() };
        let reloaded = state(gone).await;
        assert_eq!((reloaded.on_hand, reloaded.reserved), (0, 0));
        let changed = core.adjust(gone, 1, "count".into(), None).await.unwrap();
        assert_eq!(changed.snapshot.on_hand, 1);
        let kept_now = state(kept).await;
        assert_eq!((kept_now.on_hand, kept_now.reserved), (5, 2));
    }
}
