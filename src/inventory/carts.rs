//! Carts as the service serves them. A customer's carts are served by the owner of the
//! customer's shard (`cluster::cart_shard`), which holds them in memory, so one node
//! counts a customer's open carts and serializes each cart's changes, whichever node a
//! request reached. See [`crate::carts`] for what a cart is and how its changes are
//! journaled.
//!
//! A held cart's stock: in one process, one reservation in the core, reshaped by every
//! change ([`crate::carts::Carts::set_item`]); in cluster mode, one reservation per shard
//! its items are in, each on its shard's owner ([`parts`]), handed to the order at
//! checkout as they are (one part, or several tied together as a reservation across
//! shards).

mod parts;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use super::Operation;
use crate::carts::{self, CartError, CartStatus, ItemChange};
use crate::cluster::{Shard, cart_shard};
use crate::error::{AppError, Result};
use crate::idempotency::{self, Answer, Idempotent, Keyed};
use crate::orders::{OrderError, Placement};
use crate::state::AppState;

/// A step of a customer's cart, as one node asks the owner of the customer's shard.
#[derive(Debug, Serialize, Deserialize)]
pub enum CartStep {
    Create {
        user: i64,
        shop: Option<i64>,
        hold: bool,
    },
    List {
        user: i64,
        limit: i64,
        offset: i64,
    },
    Read {
        user: i64,
        id: Uuid,
    },
    /// Sets one item to `quantity` (0 removes it).
    Set {
        user: i64,
        id: Uuid,
        product: i64,
        quantity: u64,
    },
    Delete {
        user: i64,
        id: Uuid,
    },
    /// Places the cart's order, at most once per `key` of `user`; the JSON objects as
    /// text.
    Checkout {
        user: i64,
        id: Uuid,
        key: Option<Keyed>,
        shipping_address: Option<String>,
        contact: Option<String>,
    },
}

impl CartStep {
    fn user(&self) -> i64 {
        match self {
            Self::Create { user, .. }
            | Self::List { user, .. }
            | Self::Read { user, .. }
            | Self::Set { user, .. }
            | Self::Delete { user, .. }
            | Self::Checkout { user, .. } => *user,
        }
    }

    /// The shard whose owner serves the step: the customer's.
    pub(super) fn shard(&self) -> Shard {
        cart_shard(self.user())
    }

    pub(super) fn named(&self) -> Vec<i64> {
        match self {
            Self::Set { product, .. } => vec![*product],
            _ => Vec::new(),
        }
    }
}

/// `Cart` of API.md.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Cart {
    pub id: Uuid,
    pub user_id: i64,
    pub shop_id: Option<i64>,
    /// `open` or `checked_out`.
    pub status: CartStatus,
    pub hold: bool,
    pub items: Vec<CartItem>,
    pub total_cents: i64,
    /// When a held cart's stock is let go unless it changes again; in the past: let go.
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// The order a checked-out cart became.
    pub order_id: Option<Uuid>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CartItem {
    pub product_id: i64,
    pub quantity: u64,
    /// The price when the item was put in the cart.
    pub unit_price_cents: i64,
    /// Available now (over the cart's shop's warehouses, if it has a shop).
    pub available: u64,
}

impl From<CartError> for AppError {
    fn from(error: CartError) -> Self {
        let message = error.to_string();
        match error {
            CartError::NotFound => AppError::NotFound("cart".into()),
            CartError::NotOpen { status, order_id } => AppError::Conflict {
                code: "conflict",
                message,
                details: json!({ "status": status, "order_id": order_id }),
            },
            CartError::TooManyOpen(open) => AppError::Conflict {
                code: "conflict",
                message,
                details: json!({ "open_carts": open }),
            },
            CartError::TooManyItems => AppError::validation("product_id", message),
            CartError::UnknownProduct(product) => AppError::NotFound(format!("product {product}")),
            CartError::Empty => AppError::validation("items", message),
            CartError::Core(error) => error.into(),
            CartError::Order(error) => error.into(),
            CartError::Store(error) => error.into(),
        }
    }
}

/// Serves `step` here (this node owns the customer's shard).
pub(super) async fn serve(state: &AppState, step: CartStep) -> Response {
    match step {
        CartStep::Create { user, shop, hold } => {
            let created = async {
                let shop = shop.map(|s| state.shops.require(s)).transpose()?;
                let (cart, lsn) = state.carts.create(user, shop, hold)?;
                state.store.durable(lsn).await?;
                view(state, &cart).await
            };
            match created.await {
                Ok(cart) => (StatusCode::CREATED, axum::Json(cart)).into_response(),
                Err(error) => error.into_response(),
            }
        }
        CartStep::List {
            user,
            limit,
            offset,
        } => {
            let listed = async {
                let (carts, total) = state.carts.list(&state.db, user, limit, offset).await?;
                let items = views(state, &carts).await?;
                Ok::<_, AppError>(json!({ "items": items, "total": total }))
            };
            listed.await.map(axum::Json).into_response()
        }
        CartStep::Read { user, id } => {
            let read = async {
                let slot = state.carts.find(&state.db, user, id).await?;
                let cart = slot.lock().await.clone();
                match cart.status {
                    CartStatus::Deleted => Err(CartError::NotFound.into()),
                    _ => view(state, &cart).await,
                }
            };
            read.await.map(axum::Json).into_response()
        }
        CartStep::Set {
            user,
            id,
            product,
            quantity,
        } => {
            let change = ItemChange {
                product_id: product,
                quantity,
            };
            in_task(state, move |state| set_item(state, user, id, change)).await
        }
        CartStep::Delete { user, id } => in_task(state, move |state| delete(state, user, id)).await,
        CartStep::Checkout {
            user,
            id,
            key,
            shipping_address,
            contact,
        } => {
            let object = |text: Option<String>, field: &str| {
                text.map(|t| serde_json::from_str::<Value>(&t))
                    .transpose()
                    .map_err(|e| AppError::validation(field, e.to_string()))
            };
            let placement = object(shipping_address, "shipping_address").and_then(|address| {
                Ok(Placement {
                    id: None,
                    items: Vec::new(),
                    shipping_address: address,
                    contact: object(contact, "contact")?,
                    shop_id: None,
                    backorder_limits: Default::default(),
                })
            });
            match placement {
                Ok(placement) => check_out(state, user, id, key, placement).await,
                Err(error) => error.into_response(),
            }
        }
    }
}

/// Runs a change of a cart in a task of its own, so a client hanging up cannot leave the
/// hold and the cart disagreeing.
async fn in_task<F, Fut>(state: &AppState, change: F) -> Response
where
    F: FnOnce(AppState) -> Fut + Send + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let state = state.clone();
    match tokio::spawn(change(state)).await {
        Ok(response) => response,
        Err(error) => AppError::Internal(format!("cart change task: {error}")).into_response(),
    }
}

/// Sets one item's quantity, re-holding a held cart's items all or nothing.
async fn set_item(state: AppState, user: i64, id: Uuid, change: ItemChange) -> Response {
    let changed = async {
        // Made through another node a moment ago, it may not be known here yet.
        super::know(&state, &[change.product_id], &[]).await?;
        let slot = state.carts.find(&state.db, user, id).await?;
        let mut cart = slot.lock().await;
        let lsn = match state.cluster {
            Some(_) => parts::set_item(&state, &slot, &mut cart, change).await?,
            None => {
                let group = state.store.buffer.group().await;
                let hold_for = Duration::from_secs(state.config.cart_hold_secs);
                let changed = state
                    .carts
                    .set_item(
                        &state.core,
                        &state.catalog,
                        hold_for,
                        &slot,
                        &mut cart,
                        change,
                    )
                    .await;
                drop(group);
                changed?
            }
        };
        let shown = cart.clone();
        drop(cart);
        state.store.durable(lsn).await?;
        view(&state, &shown).await
    };
    changed.await.map(axum::Json).into_response()
}

/// Deletes a cart; a held cart's stock is released.
async fn delete(state: AppState, user: i64, id: Uuid) -> Response {
    let deleted = async {
        let slot = state.carts.find(&state.db, user, id).await?;
        let mut cart = slot.lock().await;
        let lsn = match state.cluster {
            Some(_) => parts::delete(&state, &slot, &mut cart).await?,
            None => {
                let group = state.store.buffer.group().await;
                let deleted = state.carts.delete(&state.core, &slot, &mut cart).await;
                drop(group);
                deleted?
            }
        };
        drop(cart);
        state.store.durable(lsn).await?;
        Ok::<_, AppError>(StatusCode::NO_CONTENT)
    };
    deleted.await.into_response()
}

/// Places the cart's order and checks the cart out, at most once per key.
async fn check_out(
    state: &AppState,
    user: i64,
    id: Uuid,
    key: Option<Keyed>,
    placement: Placement,
) -> Response {
    let slot = match state.carts.find(&state.db, user, id).await {
        Ok(slot) => slot,
        Err(error) => return AppError::from(error).into_response(),
    };
    let owned = state.clone();
    let client_key = key.clone();
    let request = Idempotent::of(placement, key);
    // One process: the cart's lock first, then (inside `run`) the flush group, so the
    // order, the reservation handed over, the cart checked out and the answer are one
    // batch. Cluster mode: the stock is held elsewhere first, without a group; the order
    // and the cart are then journaled together (`parts::check_out`).
    let request = match state.cluster {
        Some(_) => request.durable_elsewhere(),
        None => request,
    };
    let mut cart = slot.lock().await;
    idempotency::run(state, user, request, move |placement| async move {
        if owned.cluster.is_some() {
            return parts::check_out(&owned, &slot, &mut cart, placement, client_key).await;
        }
        let timeout = Duration::from_secs(owned.config.payment_timeout_secs);
        let (order, lsn) = owned
            .carts
            .check_out(
                &owned.core,
                &owned.catalog,
                &owned.orders,
                timeout,
                &slot,
                &mut cart,
                placement,
            )
            .await?;
        Answer::new(StatusCode::CREATED, order.shown(&owned.core), lsn)
    })
    .await
    .into_response()
}

/// The cart as the API shows it, with `available` read now.
async fn view(state: &AppState, cart: &carts::Cart) -> Result<Cart> {
    let mut views = views(state, std::slice::from_ref(cart)).await?;
    views
        .pop()
        .ok_or_else(|| AppError::Internal("a cart without its view".into()))
}

/// The carts as the API shows them: each product's availability (per shop) asked of its
/// owner once, a few at a time, however many carts name it.
async fn views(state: &AppState, carts: &[carts::Cart]) -> Result<Vec<Cart>> {
    use futures_util::StreamExt;
    let asked: std::collections::BTreeSet<ProductInShop> = carts
        .iter()
        .flat_map(|cart| cart.items.keys().map(|p| (*p, cart.shop_id)))
        .collect();
    let answers: Vec<(ProductInShop, Result<u64>)> =
        futures_util::stream::iter(asked)
            .map(|(product, shop)| async move {
                ((product, shop), available(state, product, shop).await)
            })
            .buffer_unordered(AVAILABILITY_AT_ONCE)
            .collect()
            .await;
    let mut known = std::collections::HashMap::with_capacity(answers.len());
    for (asked, answer) in answers {
        known.insert(asked, answer?);
    }
    Ok(carts
        .iter()
        .map(|cart| shown(cart, |product| known.get(&(product, cart.shop_id)).copied()))
        .collect())
}

/// A product, and the shop whose warehouses its availability is over.
type ProductInShop = (i64, Option<i64>);

/// How many availabilities one view asks for at once.
const AVAILABILITY_AT_ONCE: usize = 16;

fn shown(cart: &carts::Cart, available: impl Fn(i64) -> Option<u64>) -> Cart {
    let mut items = Vec::with_capacity(cart.items.len());
    let mut total_cents: i64 = 0;
    for (product_id, line) in &cart.items {
        let available = available(*product_id).unwrap_or(0);
        let cost = (line.quantity as i64).saturating_mul(line.unit_price_cents);
        total_cents = total_cents.saturating_add(cost);
        items.push(CartItem {
            product_id: *product_id,
            quantity: line.quantity,
            unit_price_cents: line.unit_price_cents,
            available,
        });
    }
    Cart {
        id: cart.id,
        user_id: cart.user_id,
        shop_id: cart.shop_id,
        status: cart.status,
        hold: cart.hold,
        items,
        total_cents,
        hold_expires_at: cart.hold_expires_at,
        order_id: cart.order_id,
        updated_at: cart.updated_at,
    }
}

/// What `product` has available now (over `shop`'s warehouses), as its shard's owner has
/// it; 0 for a product deleted since it was put in the cart.
async fn available(state: &AppState, product: i64, shop: Option<i64>) -> Result<u64> {
    let asked = Operation::Availability { product, shop };
    match super::orders::answered(super::orders::through(state, asked).await).await {
        Ok(body) => Ok(body["available"].as_u64().unwrap_or(0)),
        Err(OrderError::Elsewhere(AppError::Relayed { status, .. }))
            if status == StatusCode::NOT_FOUND =>
        {
            Ok(0)
        }
        Err(error) => Err(error.into()),
    }
}

/// The cart's items per shard: (product, units).
fn by_shard(items: &BTreeMap<i64, carts::CartLine>) -> BTreeMap<Shard, Vec<(i64, u64)>> {
    let mut shards: BTreeMap<Shard, Vec<(i64, u64)>> = BTreeMap::new();
    for (product, line) in items {
        shards
            .entry(crate::cluster::shard_of(*product))
            .or_default()
            .push((*product, line.quantity));
    }
    shards
}
