//! An order's life, as the domain sees it: placed (priced from the catalog, its stock
//! reserved for the payment timeout), paid (the reservation committed and a payment
//! recorded), cancelled (stock released, or returned if it was paid), shipped, delivered,
//! or expired with its reservation. Each step holds the order's lock, so the steps of one
//! order are serialized while different orders never wait on each other.
//!
//! Callers (the HTTP edge) parse the request, run a step in a task of its own inside a
//! flush group (so a hang-up cannot stop it half-way and everything it journals commits
//! together), and map [`OrderError`] to an answer.

use std::time::Duration;

use ReservationStatus::{Committed, Released};
use chrono::{DateTime, Utc};
use serde_json::Value;
use stockline_actors::{
    Core, CoreError, Home, ItemRequest, LineKey, Lsn, ProductId, Quantity, Reservation,
    ReservationId, ReservationRequest, ReservationStatus, WarehouseId, with_home,
};
use uuid::Uuid;

use super::{IllegalStep, Order, OrderEntry, OrderItem, OrderStatus, Orders};
use crate::cluster::{Shard, shard_of};
use crate::error::AppError;
use crate::store::records::{PaymentRecord, StoreRecord};

/// Where an order's stock is held: this process's core, or (cluster mode) the owners of
/// its products' shards, reached through the inventory service.
pub trait Stock: Sync {
    /// Holds `request`'s items; answers what is held and the Lsn that makes it durable
    /// here (0 if it was made durable elsewhere).
    fn reserve(
        &self,
        request: ReservationRequest,
    ) -> impl Future<Output = Result<(Held, Lsn), OrderError>> + Send;

    /// Commits (`commit`) or releases the whole reservation.
    fn settle(
        &self,
        id: ReservationId,
        commit: bool,
    ) -> impl Future<Output = Result<Lsn, OrderError>> + Send;

    /// Returns units that left a line for `order` (paid, now cancelled) to it: at most
    /// once per order and line, however often asked.
    fn return_stock(
        &self,
        order: Uuid,
        key: LineKey,
        quantity: Quantity,
    ) -> impl Future<Output = Result<Lsn, OrderError>> + Send;
}

/// What a reservation holds for an order.
#[derive(Debug)]
pub struct Held {
    pub id: ReservationId,
    /// (product, warehouse, units held)
    pub items: Vec<(ProductId, WarehouseId, u64)>,
    pub expires_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

impl From<&Reservation> for Held {
    fn from(reservation: &Reservation) -> Self {
        Self {
            id: reservation.id,
            items: reservation
                .items
                .iter()
                .map(|i| (i.product_id, i.warehouse_id, i.held()))
                .collect(),
            expires_at: reservation.expires_at,
            at: reservation.updated_at,
        }
    }
}

impl Stock for Core {
    async fn reserve(&self, request: ReservationRequest) -> Result<(Held, Lsn), OrderError> {
        let (reservation, lsn) = self.reservations().reserve(request).await?;
        Ok((Held::from(&reservation), lsn))
    }

    async fn settle(&self, id: ReservationId, commit: bool) -> Result<Lsn, OrderError> {
        let reservations = self.reservations();
        let settled = match commit {
            true => reservations.commit(id).await?,
            false => reservations.release(id).await?,
        };
        Ok(settled.1)
    }

    /// Once: the caller journals the order cancelled in the same flush group.
    async fn return_stock(
        &self,
        _order: Uuid,
        key: LineKey,
        quantity: Quantity,
    ) -> Result<Lsn, OrderError> {
        Ok(Core::return_stock(self, key, quantity).await?.lsn)
    }
}

/// A new order's id, naming `home`: the shard whose owner serves the order in cluster
/// mode (see [`Placement::home`]).
fn order_id(home: Shard) -> Uuid {
    with_home(Uuid::now_v7(), Home::One(home))
}

/// Why an order step was refused.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// The step needs another status (the order was paid, cancelled or expired).
    #[error("the order is {0}")]
    NotPending(OrderStatus),
    #[error("the amount must equal the order's total_cents, {total}")]
    AmountMismatch { total: i64 },
    #[error(transparent)]
    Illegal(#[from] IllegalStep),
    #[error("a paid order is cancelled by an operator only")]
    ReturnNotAllowed,
    #[error("product {0} not found")]
    UnknownProduct(ProductId),
    #[error("the order total is too large")]
    TotalTooLarge,
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The owner of some of its stock refused, or could not be reached (cluster mode).
    #[error(transparent)]
    Elsewhere(AppError),
}

/// A parsed request to place an order.
#[derive(Debug)]
pub struct Placement {
    /// The id the order gets (one derived from its idempotency key); `None`: a fresh one.
    pub id: Option<Uuid>,
    pub items: Vec<(ProductId, Quantity)>,
    pub shipping_address: Option<Value>,
    pub contact: Option<Value>,
    /// Allocate only from this shop's warehouses.
    pub shop_id: Option<stockline_actors::types::ShopId>,
    /// The products' backorder limits (those that allow backorders).
    pub backorder_limits: std::collections::BTreeMap<ProductId, u64>,
}

impl Placement {
    /// The shard whose owner serves the order: its first item's, so that an order whose
    /// items are all in one shard is journaled with its reservation.
    pub fn home(&self) -> Shard {
        self.items
            .first()
            .map_or(0, |(product, _)| shard_of(*product))
    }
}

impl Orders {
    /// Prices the items (`price`: the catalog's, or a cart's), reserves them across warehouses for the payment timeout, and
    /// journals the new order; answers it and the Lsn that makes it durable.
    pub async fn place(
        &self,
        stock: &impl Stock,
        user_id: i64,
        payment_timeout: Duration,
        placement: Placement,
        price: impl Fn(ProductId) -> Option<i64>,
    ) -> Result<(Order, Lsn), OrderError> {
        let (id, held, reserved_lsn) = self
            .hold(stock, payment_timeout, &placement, &price)
            .await?;
        // Priced when placed: the price may change later, the order does not.
        self.open(id, user_id, held, placement, price, reserved_lsn)
    }

    /// The first half of [`Orders::place`]: prices the items and holds them; answers the
    /// order's id, what is held and the Lsn of the hold. [`Orders::open`] then journals
    /// the order (a cart's checkout journals it with the cart).
    pub async fn hold(
        &self,
        stock: &impl Stock,
        payment_timeout: Duration,
        placement: &Placement,
        price: impl Fn(ProductId) -> Option<i64>,
    ) -> Result<(Uuid, Held, Lsn), OrderError> {
        let items = placement.items.iter().map(|(p, q)| (*p, q.get()));
        // Priced before anything is held: an order too large to price holds nothing.
        total(items, &price)?;
        let requested = placement
            .items
            .iter()
            .map(|&(product_id, quantity)| ItemRequest {
                product_id,
                quantity,
                warehouse_id: None,
            })
            .collect();
        let id = placement.id.unwrap_or_else(|| order_id(placement.home()));
        let request = ReservationRequest {
            items: requested,
            ttl: payment_timeout,
            reference: Some(format!("order:{id}")),
            shop_id: placement.shop_id,
            backorder_limits: placement.backorder_limits.clone(),
        };
        let (held, reserved_lsn) = stock.reserve(request).await?;
        Ok((id, held, reserved_lsn))
    }

    /// An order for stock already held by a pending reservation (a held cart's): the
    /// reservation is handed over to the order (extended to the payment timeout), so the
    /// stock is never free in between. Priced by `price` (the cart's prices).
    pub fn adopt(
        &self,
        core: &Core,
        user_id: i64,
        payment_timeout: Duration,
        reservation_id: ReservationId,
        placement: Placement,
        price: impl Fn(ProductId) -> Option<i64>,
    ) -> Result<(Order, Lsn), OrderError> {
        let id = order_id(placement.home());
        let (reservation, reserved_lsn) = core.reservations().hand_over(
            reservation_id,
            payment_timeout,
            format!("order:{id}"),
        )?;
        let held = Held::from(&reservation);
        self.open(id, user_id, held, placement, price, reserved_lsn)
    }

    /// Journals a new order `id` for what `reservation` holds, priced by `price`.
    pub fn open(
        &self,
        id: Uuid,
        user_id: i64,
        reservation: Held,
        placement: Placement,
        price: impl Fn(ProductId) -> Option<i64>,
        reserved_lsn: Lsn,
    ) -> Result<(Order, Lsn), OrderError> {
        let held = reservation.items.iter().filter(|(.., held)| *held > 0);
        let total_cents = total(held.clone().map(|(p, _, held)| (*p, *held)), &price)?;
        let items = held
            .map(|&(product_id, warehouse_id, quantity)| OrderItem {
                backordered: 0,
                product_id,
                quantity,
                unit_price_cents: price(product_id).unwrap_or_default(),
                warehouse_id,
            })
            .collect();
        let order = Order {
            id,
            user_id,
            status: OrderStatus::PendingPayment,
            items,
            total_cents,
            reservation_id: reservation.id.0,
            expires_at: reservation.expires_at,
            tracking_number: None,
            shipping_address: placement.shipping_address,
            contact: placement.contact,
            created_at: reservation.at,
            updated_at: reservation.at,
        };
        let lsn = self.journal.push([order.record()]);
        self.insert(order.clone());
        Ok((order, lsn.max(reserved_lsn)))
    }
}

/// The total of `items` (product, units) at `price`; refused for an unknown product or a
/// total past what an `i64` of cents holds.
pub fn total(
    mut items: impl Iterator<Item = (ProductId, u64)>,
    price: impl Fn(ProductId) -> Option<i64>,
) -> Result<i64, OrderError> {
    items.try_fold(0i64, |total, (product_id, units)| {
        let unit = price(product_id).ok_or(OrderError::UnknownProduct(product_id))?;
        (units as i64)
            .checked_mul(unit)
            .and_then(|line| total.checked_add(line))
            .ok_or(OrderError::TotalTooLarge)
    })
}

impl OrderEntry {
    /// Pays: commits the reservation, records the payment, and the order is paid. If the
    /// reservation ran out first, the order expires and the payment is refused.
    pub async fn pay(
        &self,
        stock: &impl Stock,
        method: String,
        amount_cents: i64,
    ) -> Result<(Order, Lsn), OrderError> {
        let mut order = self.order.lock().await;
        if order.status != OrderStatus::PendingPayment {
            return Err(OrderError::NotPending(order.status));
        }
        if amount_cents != order.total_cents {
            return Err(OrderError::AmountMismatch {
                total: order.total_cents,
            });
        }
        let committed = stock
            .settle(ReservationId(order.reservation_id), true)
            .await;
        let committed_lsn = self.settled_or_expired(&mut order, committed, Committed)?;
        let payment = PaymentRecord {
            id: Uuid::now_v7(),
            order_id: order.id,
            method,
            amount_cents,
            status: "captured",
            created_at: stockline_actors::types::now(),
        };
        self.journal.push([StoreRecord::Payment(payment)]);
        let lsn = order.step(OrderStatus::Paid, &self.journal)?;
        Ok((order.clone(), lsn.max(committed_lsn)))
    }

    /// Cancels: an unpaid order's stock is released; a paid order's is returned to the
    /// lines it left (only if `may_return_stock`: an operator's decision).
    pub async fn cancel(
        &self,
        stock: &impl Stock,
        may_return_stock: bool,
    ) -> Result<(Order, Lsn), OrderError> {
        let mut order = self.order.lock().await;
        let lsn = match order.status {
            OrderStatus::PendingPayment => {
                let released = stock
                    .settle(ReservationId(order.reservation_id), false)
                    .await;
                self.settled_or_expired(&mut order, released, Released)?
            }
            OrderStatus::Paid if !may_return_stock => return Err(OrderError::ReturnNotAllowed),
            OrderStatus::Paid => {
                let mut last = 0;
                for item in &order.items {
                    let key = LineKey::new(item.warehouse_id, item.product_id);
                    let qty = Quantity::try_from(item.quantity)
                        .map_err(|e| CoreError::InvalidQuantity(e.to_string()))?;
                    last = stock.return_stock(order.id, key, qty).await?;
                }
                last
            }
            other => return Err(OrderError::NotPending(other)),
        };
        let lsn = order.step(OrderStatus::Cancelled, &self.journal)?.max(lsn);
        self.mark_closed();
        Ok((order.clone(), lsn))
    }

    /// Ships or delivers, with a tracking number if given.
    pub async fn advance(
        &self,
        next: OrderStatus,
        tracking_number: Option<String>,
    ) -> Result<(Order, Lsn), OrderError> {
        let mut order = self.order.lock().await;
        if !order.status.can_become(next) {
            return Err(IllegalStep {
                from: order.status,
                to: next,
            }
            .into());
        }
        if tracking_number.is_some() {
            order.tracking_number = tracking_number;
        }
        let lsn = order.step(next, &self.journal)?;
        if !order.is_open() {
            self.mark_closed();
        }
        Ok((order.clone(), lsn))
    }

    /// The Lsn of a reservation settled as `wanted`; if the reservation had run out, the
    /// order expires with it. One found settled as `wanted` already was settled by an
    /// earlier try whose answer was lost (a saga's commit finished by the nodes): the step
    /// goes on.
    fn settled_or_expired(
        &self,
        order: &mut Order,
        outcome: Result<Lsn, OrderError>,
        wanted: ReservationStatus,
    ) -> Result<Lsn, OrderError> {
        match outcome {
            Ok(lsn) => Ok(lsn),
            Err(OrderError::Core(CoreError::ReservationNotPending { status }))
                if status == wanted =>
            {
                Ok(0)
            }
            Err(OrderError::Core(
                CoreError::ReservationNotPending { .. } | CoreError::ReservationNotFound,
            )) => {
                self.expire(order);
                Err(OrderError::NotPending(order.status))
            }
            Err(other) => Err(other),
        }
    }
}
