//! Orders in memory: the open ones (waiting for payment, paid, shipped) and recently closed
//! ones, each behind its own lock so that pay, cancel and status steps of one order are
//! serialized while different orders never wait on each other. PostgreSQL has every order
//! (written behind, in the flush group of the request that changed it) and answers lists
//! and old orders.
//!
//! An unpaid order expires with its reservation: the core tells [`Orders::watch_expiry`] of
//! every expired reservation, and at start orders whose reservation is gone are expired.

mod lifecycle;
mod queries;

pub use lifecycle::{Held, OrderError, Placement, Stock, total};
pub use queries::{OrderRow, read, with_items};

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use stockline_actors::{Home, Lsn, Reservation, ReservationId, ReservationStatus};

use crate::background::Background;
use crate::cluster::saga::SagaPart;
use crate::cluster::{Shard, order_shard, shard_of};

use crate::store::records::{Buffer, OrderItemRecord, OrderRecord, StoreRecord};
use tokio::sync::Mutex;
use uuid::Uuid;

use stockline_actors::Core;

/// The open orders, as SQL.
const OPEN: &str = "status IN ('pending_payment', 'paid', 'shipped')";

/// How long a closed order stays in memory.
const CLOSED_RETENTION: Duration = Duration::from_secs(600);

/// `Order` of API.md.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Order {
    pub id: Uuid,
    pub user_id: i64,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub reservation_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub tracking_number: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub shipping_address: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub contact: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderItem {
    pub product_id: i64,
    pub quantity: u64,
    pub unit_price_cents: i64,
    pub warehouse_id: i64,
    /// Of `quantity`, not yet on hand while the order waits for payment (a backorder,
    /// filled by the next receipts); left out when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub backordered: u64,
}

/// Serde's test for fields left out when 0: an answer without backorders or partial
/// settlement reads exactly as it did before v1.1.
pub fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where an order is in its life. The steps an order may take are [`OrderStatus::can_become`];
/// nothing else changes an order's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Placed, its stock reserved until `expires_at`.
    PendingPayment,
    /// Paid: the reservation was committed.
    Paid,
    Shipped,
    Delivered,
    Cancelled,
    /// Not paid in time: the reservation expired and its stock returned.
    Expired,
}

impl OrderStatus {
    pub const ALL: [Self; 6] = [
        Self::PendingPayment,
        Self::Paid,
        Self::Shipped,
        Self::Delivered,
        Self::Cancelled,
        Self::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingPayment => "pending_payment",
            Self::Paid => "paid",
            Self::Shipped => "shipped",
            Self::Delivered => "delivered",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// Still to be paid, shipped or delivered (kept in memory).
    pub fn is_open(self) -> bool {
        matches!(self, Self::PendingPayment | Self::Paid | Self::Shipped)
    }

    /// The steps of an order's life.
    pub fn can_become(self, next: Self) -> bool {
        use OrderStatus::*;
        matches!(
            (self, next),
            (PendingPayment, Paid | Cancelled | Expired)
                | (Paid, Shipped | Cancelled)
                | (Shipped, Delivered)
        )
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step an order may not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an order cannot go from {from} to {to}")]
pub struct IllegalStep {
    pub from: OrderStatus,
    pub to: OrderStatus,
}

impl Order {
    /// The order with what each item still waits for, read from the lines this node holds
    /// (which hold the order's reservation while it waits for payment; another node's
    /// lines are not read, and their items show nothing waiting).
    pub fn shown(mut self, core: &stockline_actors::Core) -> Self {
        if self.status == OrderStatus::PendingPayment {
            let whole = ReservationId(self.reservation_id);
            for item in &mut self.items {
                let key = stockline_actors::LineKey::new(item.warehouse_id, item.product_id);
                // A reservation across shards is held on each line by its shard's part (a
                // held cart's parts are its own reservations: not looked for here).
                let id = match whole.home() {
                    Some(Home::Spans) => SagaPart::new(whole.0, shard_of(item.product_id)).id,
                    _ => whole,
                };
                if core.reservations().get(id).is_none() {
                    continue;
                }
                if let Some(line) = core.registry().resident(key) {
                    item.backordered = item.quantity.saturating_sub(line.filled(id));
                }
            }
        }
        self
    }

    pub fn is_open(&self) -> bool {
        self.status.is_open()
    }

    pub fn record(&self) -> StoreRecord {
        StoreRecord::Order(OrderRecord {
            id: self.id,
            user_id: self.user_id,
            status: self.status.as_str(),
            items: self
                .items
                .iter()
                .map(|i| OrderItemRecord {
                    product_id: i.product_id,
                    warehouse_id: i.warehouse_id,
                    quantity: i.quantity,
                    unit_price_cents: i.unit_price_cents,
                })
                .collect(),
            total_cents: self.total_cents,
            reservation_id: ReservationId(self.reservation_id),
            expires_at: self.expires_at,
            tracking_number: self.tracking_number.clone(),
            shipping_address: self.shipping_address.as_ref().map(Value::to_string),
            contact: self.contact.as_ref().map(Value::to_string),
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }

    /// Moves to `status` now and journals the new state; answers its Lsn.
    pub fn step(&mut self, status: OrderStatus, journal: &Buffer) -> Result<Lsn, IllegalStep> {
        if !self.status.can_become(status) {
            return Err(IllegalStep {
                from: self.status,
                to: status,
            });
        }
        self.status = status;
        self.updated_at = stockline_actors::types::now();
        Ok(journal.push([self.record()]))
    }
}

/// One order behind its lock, and when it was last closed (for eviction).
pub struct OrderEntry {
    pub order: Mutex<Order>,
    closed_at: std::sync::Mutex<Option<Instant>>,
    journal: Arc<Buffer>,
}

impl OrderEntry {
    /// Expires `order` (this slot's, locked by the caller) if it still waits for payment:
    /// its reservation ran out. Answers whether it did.
    pub fn expire(&self, order: &mut Order) -> bool {
        let expired = order.step(OrderStatus::Expired, &self.journal).is_ok();
        if expired {
            self.mark_closed();
        }
        expired
    }

    pub fn mark_closed(&self) {
        *self
            .closed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }
}

pub struct Orders {
    slots: DashMap<Uuid, Arc<OrderEntry>>,
    /// Where orders and payments are journaled, with the lines' records.
    journal: Arc<Buffer>,
}

impl Orders {
    pub fn new(journal: Arc<Buffer>) -> Self {
        Self {
            slots: DashMap::new(),
            journal,
        }
    }

    pub fn insert(&self, order: Order) -> Arc<OrderEntry> {
        let slot = Arc::new(OrderEntry {
            order: Mutex::new(order.clone()),
            closed_at: std::sync::Mutex::new(None),
            journal: self.journal.clone(),
        });
        self.slots.insert(order.id, slot.clone());
        slot
    }

    pub fn get(&self, id: Uuid) -> Option<Arc<OrderEntry>> {
        self.slots.get(&id).map(|s| s.clone())
    }

    /// Drops closed orders from memory after the retention (PostgreSQL keeps them).
    pub fn sweep(&self) {
        self.slots.retain(|_, slot| {
            let closed = *slot
                .closed_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            closed.is_none_or(|at| at.elapsed() <= CLOSED_RETENTION)
        });
    }

    /// Loads the open orders from PostgreSQL.
    pub async fn load(pool: &PgPool, journal: Arc<Buffer>) -> Result<Self, sqlx::Error> {
        let orders = Self::new(journal);
        for order in read(pool, OPEN, None).await? {
            orders.insert(order);
        }
        Ok(orders)
    }

    /// Loads the open orders of `shards` (`cluster::order_shard`; cluster mode: shards
    /// this node just claimed), replacing what memory had of them from an earlier ownership;
    /// those whose reservation is held by `core` and no longer pending expire.
    pub async fn load_homed(
        &self,
        pool: &PgPool,
        core: &Core,
        shards: &HashSet<Shard>,
    ) -> Result<usize, sqlx::Error> {
        let mut loaded = Vec::new();
        for order in read(pool, OPEN, None).await? {
            if shards.contains(&order_shard(order.id)) {
                loaded.push(self.insert(order));
            }
        }
        for slot in &loaded {
            let mut order = slot.order.lock().await;
            let id = ReservationId(order.reservation_id);
            let held_here = match id.home() {
                Some(Home::One(shard)) => shards.contains(&shard),
                _ => false,
            };
            if held_here
                && !core
                    .reservations()
                    .get(id)
                    .is_some_and(|r| r.status == ReservationStatus::Pending)
            {
                slot.expire(&mut order);
            }
        }
        Ok(loaded.len())
    }

    /// Drops from memory the orders of `shards` (no longer this node's), writing nothing.
    pub fn forget(&self, shards: &HashSet<Shard>) {
        self.slots
            .retain(|id, _| !shards.contains(&order_shard(*id)));
    }

    /// Unpaid orders past their expiry, as memory has them.
    pub fn overdue(&self) -> Vec<Arc<OrderEntry>> {
        let now = Utc::now();
        self.slots
            .iter()
            .filter(|slot| {
                slot.order
                    .try_lock()
                    .is_ok_and(|o| o.status == OrderStatus::PendingPayment && o.expires_at <= now)
            })
            .map(|slot| slot.value().clone())
            .collect()
    }

    /// Expires unpaid orders whose reservation is no longer pending (it expired while the
    /// order's own change was not yet written, or while the server was down).
    pub async fn reconcile(&self, core: &Core) {
        let slots: Vec<_> = self.slots.iter().map(|s| s.value().clone()).collect();
        for slot in slots {
            let mut order = slot.order.lock().await;
            let reservation = core.reservations().get(ReservationId(order.reservation_id));
            if !reservation.is_some_and(|r| r.status == ReservationStatus::Pending) {
                slot.expire(&mut order);
            }
        }
    }

    /// Expires the unpaid order of every reservation the core expires, until the server
    /// stops.
    pub fn watch_expiry(
        self: Arc<Self>,
        mut expired: tokio::sync::mpsc::UnboundedReceiver<Reservation>,
        background: &Background,
    ) {
        let stop = background.stopping();
        background.spawn(async move {
            loop {
                let reservation = tokio::select! {
                    received = expired.recv() => match received {
                        Some(reservation) => reservation,
                        None => return,
                    },
                    _ = stop.cancelled() => return,
                };
                let Some(id) = reservation
                    .reference
                    .as_deref()
                    .and_then(|r| r.strip_prefix("order:"))
                    .and_then(|id| id.parse::<Uuid>().ok())
                else {
                    continue;
                };
                if let Some(slot) = self.get(id) {
                    let mut order = slot.order.lock().await;
                    slot.expire(&mut order);
                }
            }
        });
    }
}
