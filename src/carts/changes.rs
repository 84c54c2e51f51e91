//! The changes of a locked cart: each is all or nothing (a hold that cannot follow leaves
//! the cart as it was) and ends with the cart's new state journaled. The caller holds the
//! cart's lock and, around the change, a flush group, so the stock moved and the cart's
//! record are written in one batch.

use std::collections::BTreeMap;
use std::time::Duration;

use stockline_actors::{
    Core, CoreError, ItemRequest, Lsn, ProductId, Quantity, Reservation, ReservationRequest,
    ReservationStatus,
};
use uuid::Uuid;

use super::{Cart, CartEntry, CartLine, CartStatus, Carts, MAX_ITEMS};
use crate::catalog::Catalog;
use crate::orders::{Order, OrderError, Orders, Placement};

/// Why a cart change was refused (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum CartError {
    #[error("cart not found")]
    NotFound,
    #[error("the cart is {}", .status.as_str())]
    NotOpen {
        status: CartStatus,
        order_id: Option<Uuid>,
    },
    #[error("at most {max} open carts; check out or delete one", max = super::MAX_OPEN_CARTS)]
    TooManyOpen(usize),
    #[error("a cart holds at most {MAX_ITEMS} products")]
    TooManyItems,
    #[error("product {0} not found")]
    UnknownProduct(ProductId),
    #[error("the cart is empty")]
    Empty,
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Order(#[from] OrderError),
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

/// One item set to a quantity (0 removes it).
pub struct ItemChange {
    pub product_id: ProductId,
    pub quantity: u64,
}

/// The items `cart` would have after `change` (priced from `catalog` if new); `None`:
/// the change changes nothing.
pub(crate) fn with_change(
    cart: &Cart,
    catalog: &Catalog,
    change: ItemChange,
) -> Result<Option<BTreeMap<ProductId, CartLine>>, CartError> {
    must_be_open(cart)?;
    let mut items = cart.items.clone();
    match (items.get_mut(&change.product_id), change.quantity) {
        (None, 0) => return Ok(None),
        (_, 0) => drop(items.remove(&change.product_id)),
        (Some(line), quantity) => line.quantity = quantity,
        (None, quantity) => {
            let product = catalog
                .get(change.product_id)
                .ok_or(CartError::UnknownProduct(change.product_id))?;
            items.insert(
                change.product_id,
                CartLine {
                    quantity,
                    unit_price_cents: product.price_cents,
                },
            );
        }
    }
    if items.len() > MAX_ITEMS {
        return Err(CartError::TooManyItems);
    }
    Ok(Some(items))
}

pub(crate) fn must_be_open(cart: &Cart) -> Result<(), CartError> {
    match cart.status {
        CartStatus::Open => Ok(()),
        CartStatus::Deleted => Err(CartError::NotFound),
        status => Err(CartError::NotOpen {
            status,
            order_id: cart.order_id,
        }),
    }
}

impl Carts {
    /// Sets one item of `cart` (locked by the caller, from `slot`), re-holding a held
    /// cart's items; answers the Lsn that makes it durable (0: nothing changed).
    pub async fn set_item(
        &self,
        core: &Core,
        catalog: &Catalog,
        hold_for: Duration,
        slot: &CartEntry,
        cart: &mut Cart,
        change: ItemChange,
    ) -> Result<Lsn, CartError> {
        let Some(items) = with_change(cart, catalog, change)? else {
            return Ok(0);
        };
        let mut lsn = 0;
        if cart.hold {
            let held = hold(core, catalog, hold_for, cart, &items).await?;
            if let Some((reservation, held_lsn)) = held {
                lsn = held_lsn;
                match reservation.status {
                    ReservationStatus::Pending => {
                        cart.reservation_id = Some(reservation.id);
                        cart.hold_expires_at = Some(reservation.expires_at);
                    }
                    // Emptied: the hold ended with nothing left to hold.
                    _ => (cart.reservation_id, cart.hold_expires_at) = (None, None),
                }
            }
        }
        cart.items = items;
        Ok(self.save(slot, cart).max(lsn))
    }

    /// Deletes `cart` (locked by the caller): a held cart's stock is released.
    pub async fn delete(
        &self,
        core: &Core,
        slot: &CartEntry,
        cart: &mut Cart,
    ) -> Result<Lsn, CartError> {
        if cart.status == CartStatus::Deleted {
            return Err(CartError::NotFound);
        }
        let mut lsn = 0;
        if let Some(held) = cart.held(core) {
            lsn = core.reservations().release(held.id).await?.1;
        }
        cart.status = CartStatus::Deleted;
        Ok(self.save(slot, cart).max(lsn))
    }

    /// Places the order for `cart`'s items (locked by the caller) and checks the cart out,
    /// in one journaled change: a held cart's reservation is handed over to the order; a
    /// cart without a live hold reserves now, and a refusal leaves it as it was.
    #[allow(clippy::too_many_arguments)]
    pub async fn check_out(
        &self,
        core: &Core,
        catalog: &Catalog,
        orders: &Orders,
        payment_timeout: Duration,
        slot: &CartEntry,
        cart: &mut Cart,
        mut placement: Placement,
    ) -> Result<(Order, Lsn), CartError> {
        must_be_open(cart)?;
        if cart.items.is_empty() {
            return Err(CartError::Empty);
        }
        placement.items = cart
            .items
            .iter()
            .map(|(product, line)| Ok((*product, quantity(line.quantity)?)))
            .collect::<Result<_, CartError>>()?;
        placement.shop_id = cart.shop_id;
        placement.backorder_limits = catalog.backorder_limits(cart.items.keys().copied());
        let prices: BTreeMap<ProductId, i64> = cart
            .items
            .iter()
            .map(|(product, line)| (*product, line.unit_price_cents))
            .collect();
        let price = |product: ProductId| prices.get(&product).copied();
        let user_id = cart.user_id;
        let (order, lsn) = match cart.held(core) {
            Some(held) => {
                // Exactly the cart's items, then handed over as they are.
                let items = cart.items.clone();
                let reshaped = hold(core, catalog, payment_timeout, cart, &items).await?;
                let reservation = reshaped.map_or(held.id, |(r, _)| r.id);
                orders.adopt(
                    core,
                    user_id,
                    payment_timeout,
                    reservation,
                    placement,
                    price,
                )?
            }
            None => {
                orders
                    .place(core, user_id, payment_timeout, placement, price)
                    .await?
            }
        };
        cart.status = CartStatus::CheckedOut;
        cart.order_id = Some(order.id);
        Ok((order, self.save(slot, cart).max(lsn)))
    }
}

pub(crate) fn quantity(units: u64) -> Result<Quantity, CartError> {
    Quantity::try_from(units)
        .map_err(|e| CartError::Core(CoreError::InvalidQuantity(e.to_string())))
}

/// Makes the cart's reservation hold exactly `items` (a new one if it has none pending),
/// extended by `ttl`; `None` when there is nothing held and nothing to hold. Refused:
/// nothing changed.
async fn hold(
    core: &Core,
    catalog: &Catalog,
    ttl: Duration,
    cart: &Cart,
    items: &BTreeMap<ProductId, CartLine>,
) -> Result<Option<(Reservation, Lsn)>, CartError> {
    let wanted: Vec<(ProductId, u64)> = items.iter().map(|(p, l)| (*p, l.quantity)).collect();
    let reservations = core.reservations();
    let limits = catalog.backorder_limits(items.keys().copied());
    if let Some(current) = cart.held(core) {
        let reshaped = reservations
            .reshape(current.id, wanted, ttl, cart.shop_id, limits)
            .await?;
        return Ok(Some(reshaped));
    }
    if wanted.is_empty() {
        return Ok(None);
    }
    let request = ReservationRequest {
        items: wanted
            .iter()
            .map(|&(product_id, units)| {
                Ok(ItemRequest {
                    product_id,
                    quantity: quantity(units)?,
                    warehouse_id: None,
                })
            })
            .collect::<Result<_, CartError>>()?,
        ttl,
        reference: Some(cart.reference()),
        shop_id: cart.shop_id,
        backorder_limits: limits,
    };
    Ok(Some(reservations.reserve(request).await?))
}
