//! A held cart's stock in cluster mode: one reservation per shard its items are in, held
//! by the shard's owner and reached through the service (served here when this node owns
//! the shard). The cart keeps their ids and one expiry for them all: every change extends
//! every part to the same time, and a hold found run out (a part expired, or released by
//! an operator) is made again whole, all or nothing.
//!
//! - A change of one item: every other part is extended first (a failure there changes
//!   nothing of the cart), then the item's shard's part is reshaped, made, or released
//!   when nothing of that shard is left; a refusal leaves the cart as it was.
//! - A checkout: every part is extended to the payment timeout and handed to the order as
//!   it is: one part as the order's reservation, several tied together as a reservation
//!   across shards ([`saga::tie`]) under an id derived from the cart's. Without a live
//!   hold the order holds its items afresh (under a key derived from the client's). The
//!   order's id is derived from the cart's and names the cart's shard, so the order, the
//!   checked-out cart and the row tying the parts are journaled in one batch here, and a
//!   checkout tried again after a crash finds the order an earlier try made.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::Utc;
use serde_json::Value;
use stockline_actors::{CoreError, ItemRequest, Lsn, ReservationId, ReservationRequest};

use super::super::orders::{Holder, answered, held_of, through};
use super::super::{Operation, saga};
use super::by_shard;
use crate::carts::{self, Cart, CartEntry, CartError, CartLine, CartStatus, ItemChange};
use crate::cluster::saga::{cart_order_id, cart_saga_id};
use crate::cluster::{Shard, cart_shard, home_of, shard_of};
use crate::error::{AppError, Result};
use crate::idempotency::{Answer, Keyed};
use crate::orders::{Held, OrderError, Placement};
use crate::state::AppState;
use crate::store::records::StoreRecord;

/// Sets one item of `cart` (locked by the caller), re-holding a held cart's items;
/// answers the Lsn that makes the change durable (0: nothing changed).
pub(super) async fn set_item(
    state: &AppState,
    slot: &CartEntry,
    cart: &mut Cart,
    change: ItemChange,
) -> Result<Lsn> {
    let shard = shard_of(change.product_id);
    let Some(items) = carts::with_change(cart, &state.catalog, change)? else {
        return Ok(0);
    };
    if cart.hold {
        let ttl = Duration::from_secs(state.config.cart_hold_secs);
        let before = cart.parts.clone();
        if let Err(error) = hold(state, cart, &items, shard, ttl).await {
            // Refused after the old hold was let go (it had run out): the cart says so.
            if cart.parts != before {
                state.carts.save(slot, cart);
            }
            return Err(error);
        }
    }
    cart.items = items;
    Ok(state.carts.save(slot, cart))
}

/// Deletes `cart` (locked by the caller): an open held cart's parts are released first
/// (a checked-out cart's belong to its order).
pub(super) async fn delete(state: &AppState, slot: &CartEntry, cart: &mut Cart) -> Result<Lsn> {
    if cart.status == CartStatus::Deleted {
        return Err(CartError::NotFound.into());
    }
    if cart.status == CartStatus::Open {
        let held = held_by(cart);
        for released in
            futures_util::future::join_all(held.iter().map(|p| release(state, *p))).await
        {
            released?;
        }
        cart.parts.clear();
        cart.reservation_id = None;
    }
    cart.status = CartStatus::Deleted;
    Ok(state.carts.save(slot, cart))
}

/// Places the order for `cart`'s items (locked by the caller) and checks the cart out;
/// `key`: the client's idempotency key, if it sent one.
pub(super) async fn check_out(
    state: &AppState,
    slot: &CartEntry,
    cart: &mut Cart,
    mut placement: Placement,
    key: Option<Keyed>,
) -> Result<Answer> {
    // Every try names the same order; the order and the checked-out cart are stored in
    // one batch, so a cart still open has no order yet.
    let id = cart_order_id(cart.id, cart_shard(cart.user_id));
    carts::must_be_open(cart)?;
    if cart.items.is_empty() {
        return Err(CartError::Empty.into());
    }
    placement.id = Some(id);
    placement.items = cart
        .items
        .iter()
        .map(|(product, line)| Ok((*product, carts::quantity(line.quantity)?)))
        .collect::<std::result::Result<_, CartError>>()?;
    placement.shop_id = cart.shop_id;
    placement.backorder_limits = state.catalog.backorder_limits(cart.items.keys().copied());
    let prices: BTreeMap<i64, i64> = cart
        .items
        .iter()
        .map(|(product, line)| (*product, line.unit_price_cents))
        .collect();
    let price = |product: i64| prices.get(&product).copied();
    // Priced before anything is handed over or held: an order too large to price moves
    // nothing.
    crate::orders::total(placement.items.iter().map(|(p, q)| (*p, q.get())), price)?;
    let timeout = Duration::from_secs(state.config.payment_timeout_secs);
    let handed = match cart.hold && live(cart) {
        true => hand_over(state, cart, id, timeout).await?,
        false => None,
    };
    let mut tied = None;
    let (held, reserved_lsn) = match handed {
        Some((held, tie)) => {
            tied = tie;
            (held, 0)
        }
        None => {
            // What is left of a hold that ran out goes back first.
            release_all(state, &held_by(cart)).await;
            // Under the client's key, the hold's key names the cart as it is now: a retry
            // of this try finds its reservation, a try after the cart changed holds anew.
            let key = key.map(|k| {
                Keyed::new(
                    format!("checkout:{}:{}:{}", cart.id, cart.version, k.key()),
                    k.fingerprint().into(),
                )
            });
            let stock = Holder::Routed.on(state).keyed(cart.user_id, key);
            let (_, held, lsn) = state
                .orders
                .hold(&stock, timeout, &placement, price)
                .await?;
            (held, lsn)
        }
    };
    // The order, the checked-out cart and what ties the cart's parts together, in one
    // batch.
    let group = state.store.buffer.group().await;
    let opened = state
        .orders
        .open(id, cart.user_id, held, placement, price, reserved_lsn);
    let (order, lsn) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            drop(group);
            return Err(error.into());
        }
    };
    let tied_lsn = tied.map_or(0, |record| state.store.buffer.push([record]));
    cart.status = CartStatus::CheckedOut;
    cart.order_id = Some(id);
    let saved = state.carts.save(slot, cart);
    drop(group);
    let lsn = lsn.max(saved).max(tied_lsn);
    Answer::new(StatusCode::CREATED, order.shown(&state.core), lsn)
}

/// Whether the cart's hold still holds, as far as its expiry says.
fn live(cart: &Cart) -> bool {
    !cart.parts.is_empty() && cart.hold_expires_at.is_some_and(|at| at > Utc::now())
}

/// Every reservation an open cart may hold stock by: its parts, and the one reservation
/// a single process gave it (a cart held before the server ran as a cluster).
fn held_by(cart: &Cart) -> Vec<ReservationId> {
    cart.parts
        .iter()
        .copied()
        .chain(cart.reservation_id)
        .collect()
}

/// The cart's parts by the shard each holds.
fn parts_of(cart: &Cart) -> BTreeMap<Shard, ReservationId> {
    cart.parts
        .iter()
        .filter_map(|id| Some((home_of(id.0)?, *id)))
        .collect()
}

/// Makes the hold follow a change of `changed`'s items to `items`, extending every part
/// to `ttl` from now. Refused: the cart's items are as they were.
async fn hold(
    state: &AppState,
    cart: &mut Cart,
    items: &BTreeMap<i64, CartLine>,
    changed: Shard,
    ttl: Duration,
) -> Result<()> {
    let expires = Utc::now() + ttl;
    if !live(cart) {
        return renew(state, cart, items, ttl).await;
    }
    let mut parts = parts_of(cart);
    let others: Vec<ReservationId> = parts
        .iter()
        .filter(|(shard, _)| **shard != changed)
        .map(|(_, id)| *id)
        .collect();
    let extended =
        futures_util::future::join_all(others.iter().map(|id| extend(state, *id, ttl))).await;
    for part in extended {
        if part?.is_none() {
            return renew(state, cart, items, ttl).await;
        }
    }
    let wanted = by_shard(items).remove(&changed).unwrap_or_default();
    match parts.get(&changed).copied() {
        Some(id) => match reshape(state, cart, id, wanted, ttl).await? {
            Some(body) if body["status"] == "pending" => {}
            // Emptied: released, nothing of that shard is left to hold.
            Some(_) => drop(parts.remove(&changed)),
            None => return renew(state, cart, items, ttl).await,
        },
        None if wanted.is_empty() => {}
        None => {
            let id = reserve(state, cart, wanted, ttl).await?;
            parts.insert(changed, id);
        }
    }
    cart.parts = parts.into_values().collect();
    cart.hold_expires_at = (!cart.parts.is_empty()).then_some(expires);
    Ok(())
}

/// Holds `items` afresh, one part per shard, all or nothing, after what is left of the
/// old hold is released. Refused: nothing is held.
async fn renew(
    state: &AppState,
    cart: &mut Cart,
    items: &BTreeMap<i64, CartLine>,
    ttl: Duration,
) -> Result<()> {
    release_all(state, &held_by(cart)).await;
    cart.parts.clear();
    cart.reservation_id = None;
    // Let go: its expiry, if any, is now at the latest.
    let now = Utc::now();
    cart.hold_expires_at = cart.hold_expires_at.map(|at| at.min(now));
    let expires = Utc::now() + ttl;
    let made = futures_util::future::join_all(
        by_shard(items)
            .into_values()
            .map(|wanted| reserve(state, cart, wanted, ttl)),
    )
    .await;
    let (held, refused): (Vec<_>, Vec<_>) = made.into_iter().partition(|made| made.is_ok());
    let held: Vec<ReservationId> = held.into_iter().filter_map(|made| made.ok()).collect();
    if let Some(Err(error)) = refused.into_iter().next() {
        release_all(state, &held).await;
        return Err(error);
    }
    cart.hold_expires_at = (!held.is_empty()).then_some(expires);
    cart.parts = held;
    Ok(())
}

/// Hands the cart's parts to order `order`, each reshaped to exactly the cart's items in
/// its shard (a change whose answer was lost may have left it holding otherwise) and
/// extended to `timeout`: what they hold, as one reservation, and for several parts the
/// record that ties them together (to journal with the order). `None`: the hold ran out
/// (a part is gone, or a shard of the cart has none).
async fn hand_over(
    state: &AppState,
    cart: &Cart,
    order: uuid::Uuid,
    timeout: Duration,
) -> Result<Option<(Held, Option<StoreRecord>)>> {
    let mut wanted = by_shard(&cart.items);
    let parts = parts_of(cart);
    if wanted.keys().any(|shard| !parts.contains_key(shard)) {
        return Ok(None);
    }
    let reshaped = futures_util::future::join_all(parts.iter().map(|(shard, id)| {
        let items = wanted.remove(shard).unwrap_or_default();
        reshape(state, cart, *id, items, timeout)
    }))
    .await;
    let mut held = Vec::with_capacity(parts.len());
    let mut kept = Vec::with_capacity(parts.len());
    for ((shard, id), part) in parts.iter().zip(reshaped) {
        match part? {
            Some(body) if body["status"] == "pending" => {
                held.push(held_of(&body)?);
                kept.push((*shard, id.0));
            }
            // Emptied: it held nothing the cart has.
            Some(_) => {}
            None => return Ok(None),
        }
    }
    if held.len() <= 1 {
        return Ok(held.pop().map(|one| (one, None)));
    }
    let whole = cart_saga_id(cart.id);
    let expires_at = held
        .iter()
        .map(|h| h.expires_at)
        .min()
        .unwrap_or_else(Utc::now);
    let at = held.iter().map(|h| h.at).min().unwrap_or_else(Utc::now);
    let tie = saga::tie(whole, kept, format!("order:{order}"), expires_at);
    let whole = Held {
        id: ReservationId(whole),
        items: held.into_iter().flat_map(|h| h.items).collect(),
        expires_at,
        at,
    };
    Ok(Some((whole, Some(tie))))
}

/// Asks `operation` of a part: its reservation's body; `None` when the part is not
/// pending any more (or unknown).
async fn ask(state: &AppState, operation: Operation) -> Result<Option<Value>> {
    match answered(through(state, operation).await).await {
        Ok(body) => Ok(Some(body)),
        Err(OrderError::Core(
            CoreError::ReservationNotPending { .. } | CoreError::ReservationNotFound,
        )) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

async fn extend(state: &AppState, id: ReservationId, ttl: Duration) -> Result<Option<Value>> {
    let ttl_secs = ttl.as_secs().max(1);
    ask(state, Operation::Extend { id: id.0, ttl_secs }).await
}

async fn reshape(
    state: &AppState,
    cart: &Cart,
    id: ReservationId,
    items: Vec<(i64, u64)>,
    ttl: Duration,
) -> Result<Option<Value>> {
    let operation = Operation::Reshape {
        id: id.0,
        items,
        ttl_secs: ttl.as_secs().max(1),
        shop: cart.shop_id,
    };
    ask(state, operation).await
}

/// A new part holding `items` (all in one shard) for the cart.
async fn reserve(
    state: &AppState,
    cart: &Cart,
    items: Vec<(i64, u64)>,
    ttl: Duration,
) -> Result<ReservationId> {
    let request = ReservationRequest {
        backorder_limits: state
            .catalog
            .backorder_limits(items.iter().map(|(product, _)| *product)),
        items: items
            .into_iter()
            .map(|(product_id, units)| {
                Ok(ItemRequest {
                    product_id,
                    quantity: carts::quantity(units)?,
                    warehouse_id: None,
                })
            })
            .collect::<std::result::Result<_, CartError>>()?,
        ttl,
        reference: Some(cart.reference()),
        shop_id: cart.shop_id,
    };
    let operation = Operation::Reserve {
        user: 0,
        key: None,
        request: request.into(),
    };
    match ask(state, operation).await? {
        Some(body) => Ok(held_of(&body)?.id),
        None => Err(AppError::Unavailable(
            "a new hold was answered as settled; retry".into(),
        )),
    }
}

/// Releases a part; one already settled or gone is fine.
async fn release(state: &AppState, id: ReservationId) -> Result<()> {
    let operation = Operation::Settle {
        id: id.0,
        commit: false,
        lines: None,
    };
    ask(state, operation).await.map(drop)
}

/// Releases every part it can reach; one it cannot expires by itself.
async fn release_all(state: &AppState, parts: &[ReservationId]) {
    let released = futures_util::future::join_all(parts.iter().map(|p| release(state, *p))).await;
    for (part, outcome) in parts.iter().zip(released) {
        if let Err(error) = outcome {
            tracing::warn!(reservation = %part.0, error = %error, "a cart's hold could not be released; it expires by itself");
        }
    }
}
