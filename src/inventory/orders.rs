//! Orders as the service serves them. An order is served by the owner of the shard its id
//! names (its first item's shard, `Placement::home`), which holds it in memory, so its
//! steps are serialized on one node whichever node a request reached; any node reads it
//! from the store (an acknowledged step is durable first).
//!
//! The order's stock is held where it is ([`held`]): by this node's core when it owns
//! every shard the reservation is in (always, in a single process; the order and its
//! reservation are then journaled in one batch), or else through the service, which sends
//! the reservation to its shard's owner or runs it as a saga over several shards.
//!
//! An unpaid order whose reservation is held elsewhere does not hear of its expiry from
//! the core: [`expire_overdue`] releases such orders' reservations once they are past
//! their expiry, and expires the orders.

mod held;

pub(super) use held::{Holder, answered, held_of, through};

use std::collections::HashMap;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use stockline_actors::{CoreError, LineKey, ReservationId, ReservationStatus};
use uuid::Uuid;

use super::quantity_of;
use crate::background::Background;
use crate::cluster::saga::keyed_order_id;
use crate::cluster::{Shard, order_shard, shard_of};
use crate::error::{AppError, Result};
use crate::idempotency::{self, Answer, Idempotent, Keyed};
use crate::orders::{Order, OrderEntry, OrderError, OrderStatus, Placement, Stock};
use crate::state::AppState;

/// A step of an order's life, as one node asks the order's owner.
#[derive(Debug, Serialize, Deserialize)]
pub enum OrderStep {
    /// Places an order, at most once per `key` of `user`.
    Place {
        user: i64,
        key: Option<Keyed>,
        placed: Placed,
    },
    /// Pays an order (checked: the method's length, the amount's range), at most once per
    /// `key` of the caller.
    Pay {
        id: Uuid,
        caller: Acting,
        key: Option<Keyed>,
        method: String,
        amount_cents: i64,
    },
    Cancel {
        id: Uuid,
        caller: Acting,
    },
    /// Ships or delivers (an operator's step).
    Advance {
        id: Uuid,
        caller: Acting,
        next: Shipping,
        tracking_number: Option<String>,
    },
}

/// A shipping step.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub enum Shipping {
    Shipped,
    Delivered,
}

impl From<Shipping> for OrderStatus {
    fn from(step: Shipping) -> Self {
        match step {
            Shipping::Shipped => OrderStatus::Shipped,
            Shipping::Delivered => OrderStatus::Delivered,
        }
    }
}

/// Who asks: a customer sees and acts on its own orders only; an operator on any.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Acting {
    pub user: i64,
    pub operator: bool,
}

/// A [`Placement`] as it travels: plain numbers, the JSON objects as text.
#[derive(Debug, Serialize, Deserialize)]
pub struct Placed {
    items: Vec<(i64, u64)>,
    shipping_address: Option<String>,
    contact: Option<String>,
    shop_id: Option<i64>,
}

impl From<Placement> for Placed {
    fn from(placement: Placement) -> Self {
        Self {
            items: placement
                .items
                .iter()
                .map(|(product, quantity)| (*product, quantity.get()))
                .collect(),
            shipping_address: placement.shipping_address.map(|v| v.to_string()),
            contact: placement.contact.map(|v| v.to_string()),
            shop_id: placement.shop_id,
        }
    }
}

impl TryFrom<Placed> for Placement {
    type Error = AppError;

    fn try_from(placed: Placed) -> Result<Self> {
        let object = |text: Option<String>, field: &str| {
            text.map(|t| serde_json::from_str::<Value>(&t))
                .transpose()
                .map_err(|e| AppError::validation(field, e.to_string()))
        };
        Ok(Self {
            id: None,
            items: placed
                .items
                .iter()
                .map(|&(product, quantity)| Ok((product, quantity_of(quantity)?)))
                .collect::<Result<_>>()?,
            shipping_address: object(placed.shipping_address, "shipping_address")?,
            contact: object(placed.contact, "contact")?,
            shop_id: placed.shop_id,
            backorder_limits: Default::default(),
        })
    }
}

impl OrderStep {
    /// The shard whose owner serves the step (`cluster::order_shard`).
    pub(super) fn shard(&self) -> Option<Shard> {
        match self {
            Self::Place { placed, .. } => placed.items.first().map(|(p, _)| shard_of(*p)),
            Self::Pay { id, .. } | Self::Cancel { id, .. } | Self::Advance { id, .. } => {
                Some(order_shard(*id))
            }
        }
    }

    pub(super) fn named(&self) -> Vec<i64> {
        match self {
            Self::Place { placed, .. } => placed.items.iter().map(|(p, _)| *p).collect(),
            _ => Vec::new(),
        }
    }
}

/// Serves `step` here (this node owns the order).
pub(super) async fn serve(state: &AppState, step: OrderStep) -> Response {
    match step {
        OrderStep::Place { user, key, placed } => {
            let mut placement = match Placement::try_from(placed) {
                Ok(placement) => placement,
                Err(error) => return error.into_response(),
            };
            let shards = placement.items.iter().map(|(p, _)| shard_of(*p));
            let holder = Holder::for_hold(state, shards);
            // Held through other nodes, the order and the answer kept for its key are not
            // written in one batch. So under a key the order's id, and its reservation's
            // key, are derived from it: a retry whose first try's answer was lost finds
            // the order the first try made, and holds nothing twice.
            let keyed = key.clone().filter(|_| holder == Holder::Routed);
            if let Some(keyed) = &keyed {
                let (key, fingerprint) = (keyed.key(), keyed.fingerprint());
                placement.id = Some(keyed_order_id(user, key, fingerprint, placement.home()));
            }
            let reserve_key =
                keyed.map(|k| Keyed::new(format!("order:{}", k.key()), k.fingerprint().into()));
            let request = holder.idempotent(Idempotent::of(placement, key));
            let owned = state.clone();
            idempotency::run(state, user, request, move |placement| async move {
                place(&owned, holder, user, placement, reserve_key).await
            })
            .await
            .into_response()
        }
        OrderStep::Pay {
            id,
            caller,
            key,
            method,
            amount_cents,
        } => {
            let holder = match state.orders.get(id) {
                Some(slot) => {
                    let reservation = ReservationId(slot.order.lock().await.reservation_id);
                    Holder::for_reservation(state, reservation)
                }
                // Not open here: refused inside, unless the key has its answer kept.
                None => Holder::Here,
            };
            let request = holder.idempotent(Idempotent::of((method, amount_cents), key));
            let owned = state.clone();
            idempotency::run(
                state,
                caller.user,
                request,
                move |(method, amount)| async move {
                    let slot = open_slot(&owned, caller, id).await?;
                    let (order, lsn) = slot.pay(&holder.on(&owned), method, amount).await?;
                    Answer::new(StatusCode::OK, order.shown(&owned.core), lsn)
                },
            )
            .await
            .into_response()
        }
        OrderStep::Cancel { id, caller } => {
            // In a task of its own, so that a client hanging up cannot stop it between
            // returning the stock and recording the cancellation.
            let state = state.clone();
            let cancelled = tokio::spawn(async move { cancel(&state, caller, id).await }).await;
            match cancelled {
                Ok(answer) => answer.map(axum::Json).into_response(),
                Err(error) => AppError::Internal(format!("cancel task: {error}")).into_response(),
            }
        }
        OrderStep::Advance {
            id,
            caller,
            next,
            tracking_number,
        } => {
            let advanced = async {
                if !caller.operator {
                    return Err(AppError::Forbidden);
                }
                let slot = open_slot(state, caller, id).await?;
                let (order, lsn) = slot.advance(next.into(), tracking_number).await?;
                state.store.durable(lsn).await?;
                Ok(order)
            };
            advanced.await.map(axum::Json).into_response()
        }
    }
}

async fn place(
    state: &AppState,
    holder: Holder,
    user: i64,
    mut placement: Placement,
    reserve_key: Option<Keyed>,
) -> Result<Answer> {
    if let Some(id) = placement.id
        && let Some(made) = made_before(state, id).await?
    {
        return Answer::new(StatusCode::CREATED, made.shown(&state.core), 0);
    }
    placement.backorder_limits = state
        .catalog
        .backorder_limits(placement.items.iter().map(|(product, _)| *product));
    if let Some(shop) = placement.shop_id {
        state.shops.require(shop)?;
    }
    let timeout = Duration::from_secs(state.config.payment_timeout_secs);
    let (order, lsn) = state
        .orders
        .place(
            &holder.on(state).keyed(user, reserve_key),
            user,
            timeout,
            placement,
            |product| state.catalog.get(product).map(|p| p.price_cents),
        )
        .await?;
    Answer::new(StatusCode::CREATED, order.shown(&state.core), lsn)
}

async fn cancel(state: &AppState, caller: Acting, id: Uuid) -> Result<Order> {
    let slot = open_slot(state, caller, id).await?;
    let order = slot.order.lock().await.clone();
    let holder = match order.status {
        OrderStatus::Paid => {
            Holder::for_shards(state, order.items.iter().map(|i| shard_of(i.product_id)))
        }
        _ => Holder::for_reservation(state, ReservationId(order.reservation_id)),
    };
    // A flush group only while this node's own core holds the stock: what other nodes
    // hold is made durable by them, and their answers could wait on this group.
    let group = match holder {
        Holder::Here => Some(state.store.buffer.group().await),
        Holder::Routed => None,
    };
    let (order, lsn) = slot.cancel(&holder.on(state), caller.operator).await?;
    drop(group);
    state.store.durable(lsn).await?;
    Ok(order)
}

/// Order `id` if it was made already (by an earlier try under the same key).
async fn made_before(state: &AppState, id: Uuid) -> Result<Option<Order>> {
    if let Some(slot) = state.orders.get(id) {
        return Ok(Some(slot.order.lock().await.clone()));
    }
    Ok(crate::orders::read(&state.db, "id = $1", Some(id))
        .await?
        .pop())
}

/// The order, if `caller` may see it: its owner's, or an operator's.
pub async fn visible(state: &AppState, caller: Acting, id: Uuid) -> Result<Order> {
    let order = match state.orders.get(id) {
        Some(slot) => slot.order.lock().await.clone(),
        None => crate::orders::read(&state.db, "id = $1", Some(id))
            .await?
            .pop()
            .ok_or_else(|| AppError::NotFound("order".into()))?,
    };
    if order.user_id != caller.user && !caller.operator {
        return Err(AppError::NotFound("order".into()));
    }
    Ok(order)
}

/// The in-memory slot of an open order `caller` may act on.
async fn open_slot(
    state: &AppState,
    caller: Acting,
    id: Uuid,
) -> Result<std::sync::Arc<OrderEntry>> {
    let order = visible(state, caller, id).await?;
    state
        .orders
        .get(id)
        .ok_or_else(|| OrderError::NotPending(order.status).into())
}

/// Serves [`Operation::Return`] on the line's owner: the units go back on hand, at most
/// once per order and line (kept as a system answer, user 0, with the stock it moved).
pub(super) async fn return_here(
    state: &AppState,
    order: Uuid,
    key: LineKey,
    quantity: u64,
) -> Response {
    let keyed = Keyed::new(
        format!("return:{order}:{}:{}", key.warehouse_id, key.product_id),
        quantity.to_string(),
    );
    let owned = state.clone();
    idempotency::run(
        state,
        0,
        Idempotent::of(quantity, Some(keyed)),
        move |quantity| async move {
            let units = quantity_of(quantity)?;
            let applied = owned.core.return_stock(key, units).await?;
            Answer::new(StatusCode::OK, json!({ "returned": quantity }), applied.lsn)
        },
    )
    .await
    .into_response()
}

/// How often this node looks for unpaid orders past their expiry (cluster mode).
const OVERDUE_EVERY: Duration = Duration::from_secs(1);

/// Until the server stops, expires this node's unpaid orders past their expiry whose
/// reservation another node holds (their reservation is released first; one this node's
/// core holds expires with it as in a single process).
pub fn expire_overdue(state: AppState, background: &Background) {
    let stop = background.stopping();
    background.spawn(async move {
        let mut tick = tokio::time::interval(OVERDUE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let mut failed: HashMap<&'static str, usize> = HashMap::new();
            for slot in state.orders.overdue() {
                if let Err(error) = expire(&state, &slot).await {
                    *failed.entry(error).or_default() += 1;
                }
            }
            for (why, orders) in failed {
                tracing::warn!(
                    orders,
                    why,
                    "unpaid orders past their expiry stay open for now"
                );
            }
        }
    });
}

async fn expire(state: &AppState, slot: &OrderEntry) -> std::result::Result<(), &'static str> {
    let mut order = slot.order.lock().await;
    if order.status != OrderStatus::PendingPayment || order.expires_at > chrono::Utc::now() {
        return Ok(());
    }
    let id = ReservationId(order.reservation_id);
    let holder = Holder::for_reservation(state, id);
    let pending_here = state
        .core
        .reservations()
        .get(id)
        .is_some_and(|r| r.status == ReservationStatus::Pending);
    if holder == Holder::Here && pending_here {
        // The core expires it, and the order with it.
        return Ok(());
    }
    match holder.on(state).settle(id, false).await {
        // Committed by a payment whose answer was lost: it stays pending until the payment
        // is retried (with its key), which finds the commit made.
        Err(OrderError::Core(CoreError::ReservationNotPending {
            status: ReservationStatus::Committed,
        })) => Ok(()),
        Ok(_)
        | Err(OrderError::Core(
            CoreError::ReservationNotPending { .. } | CoreError::ReservationNotFound,
        )) => {
            slot.expire(&mut order);
            Ok(())
        }
        Err(_) => Err("their reservation could not be released"),
    }
}

/// A refused order step, as the contract answers it.
impl From<OrderError> for AppError {
    fn from(error: OrderError) -> Self {
        let message = error.to_string();
        match error {
            OrderError::NotPending(status) => AppError::Conflict {
                code: "order_not_pending",
                message,
                details: json!({ "status": status }),
            },
            OrderError::AmountMismatch { .. } => AppError::validation("amount_cents", message),
            OrderError::Illegal(step) => AppError::Conflict {
                code: "conflict",
                message,
                details: json!({ "status": step.from, "requested": step.to }),
            },
            OrderError::ReturnNotAllowed => AppError::Forbidden,
            OrderError::UnknownProduct(id) => AppError::NotFound(format!("product {id}")),
            OrderError::TotalTooLarge => AppError::validation("items", message),
            OrderError::Core(error) => error.into(),
            OrderError::Elsewhere(error) => error,
        }
    }
}
