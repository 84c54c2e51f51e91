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

use serde_json::Value;
use stockline_actors::{
    Core, CoreError, ItemRequest, LineKey, Lsn, ProductId, Quantity, Reservation, ReservationId,
    ReservationRequest,
};
use uuid::Uuid;

use super::{IllegalStep, Order, OrderItem, OrderStatus, Orders, Slot};
use crate::store::records::{PaymentRecord, StoreRecord};

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
}

/// A parsed request to place an order.
#[derive(Debug)]
pub struct Placement {
    pub items: Vec<(ProductId, Quantity)>,
    pub shipping_address: Option<Value>,
    pub contact: Option<Value>,
    /// Allocate only from this shop's warehouses.
    pub shop_id: Option<stockline_actors::types::ShopId>,
    /// The products' backorder limits (those that allow backorders).
    pub backorder_limits: std::collections::BTreeMap<ProductId, u64>,
}

impl Orders {
    /// Prices the items (`price`: the catalog's, or a cart's), reserves them across warehouses for the payment timeout, and
    /// journals the new order; answers it and the Lsn that makes it durable.
    pub async fn place(
        &self,
        core: &Core,
        user_id: i64,
        payment_timeout: Duration,
        placement: Placement,
        price: impl Fn(ProductId) -> Option<i64>,
    ) -> Result<(Order, Lsn), OrderError> {
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
        let id = Uuid::now_v7();
        let request = ReservationRequest {
            items: requested,
            ttl: payment_timeout,
            reference: Some(format!("order:{id}")),
            shop_id: placement.shop_id,
            backorder_limits: placement.backorder_limits.clone(),
        };
        let (reservation, reserved_lsn) = core.reservations().reserve(request).await?;
        // Priced when placed: the price may change later, the order does not.
        self.open(id, user_id, reservation, placement, price, reserved_lsn)
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
        let id = Uuid::now_v7();
        let (reservation, reserved_lsn) = core.reservations().hand_over(
            reservation_id,
            payment_timeout,
            format!("order:{id}"),
        )?;
        self.open(id, user_id, reservation, placement, price, reserved_lsn)
    }

    /// Journals a new order for what `reservation` holds.
    fn open(
        &self,
        id: Uuid,
        user_id: i64,
        reservation: Reservation,
        placement: Placement,
        price: impl Fn(ProductId) -> Option<i64>,
        reserved_lsn: Lsn,
    ) -> Result<(Order, Lsn), OrderError> {
        let held = reservation.items.iter().filter(|i| i.held() > 0);
        let total_cents = total(held.clone().map(|i| (i.product_id, i.held())), &price)?;
        let items = held
            .map(|i| OrderItem {
                backordered: 0,
                product_id: i.product_id,
                quantity: i.held(),
                unit_price_cents: price(i.product_id).unwrap_or_default(),
                warehouse_id: i.warehouse_id,
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
            created_at: reservation.updated_at,
            updated_at: reservation.updated_at,
        };
        let lsn = self.journal.push([order.record()]);
        self.insert(order.clone());
        Ok((order, lsn.max(reserved_lsn)))
    }
}

/// The total of `items` (product, units) at `price`; refused for an unknown product or a
/// total past what an `i64` of cents holds.
fn total(
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

impl Slot {
    /// Pays: commits the reservation, records the payment, and the order is paid. If the
    /// reservation ran out first, the order expires and the payment is refused.
    pub async fn pay(
        &self,
        core: &Core,
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
        let committed = core
            .reservations()
            .commit(ReservationId(order.reservation_id))
            .await;
        let committed_lsn = self.settled_or_expired(&mut order, committed)?;
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
        core: &Core,
        may_return_stock: bool,
    ) -> Result<(Order, Lsn), OrderError> {
        let mut order = self.order.lock().await;
        let lsn = match order.status {
            OrderStatus::PendingPayment => {
                let released = core
                    .reservations()
                    .release(ReservationId(order.reservation_id))
                    .await;
                self.settled_or_expired(&mut order, released)?
            }
            OrderStatus::Paid if !may_return_stock => return Err(OrderError::ReturnNotAllowed),
            OrderStatus::Paid => {
                let mut last = 0;
                for item in &order.items {
                    let key = LineKey::new(item.warehouse_id, item.product_id);
                    let qty = Quantity::try_from(item.quantity)
                        .map_err(|e| CoreError::InvalidQuantity(e.to_string()))?;
                    last = core.return_stock(key, qty).await?.lsn;
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

    /// The Lsn of a settled reservation; if the reservation had run out, the order
    /// expires with it.
    fn settled_or_expired(
        &self,
        order: &mut Order,
        outcome: stockline_actors::Result<(stockline_actors::Reservation, Lsn)>,
    ) -> Result<Lsn, OrderError> {
        match outcome {
            Ok((_, lsn)) => Ok(lsn),
            Err(CoreError::ReservationNotPending { .. } | CoreError::ReservationNotFound) => {
                self.expire(order);
                Err(OrderError::NotPending(order.status))
            }
            Err(other) => Err(other.into()),
        }
    }
}
