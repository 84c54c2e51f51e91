//! `/carts`: a customer's carts, over the domain's [`Carts`](crate::carts::Carts): each
//! handler parses, runs one change of a locked cart inside a flush group (in a task of its
//! own, so a hang-up cannot stop it half-way), and maps the answer. See [`crate::carts`]
//! for what a cart is and how its changes are journaled.

use std::time::Duration;

use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::openapi::ErrorBody;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Number, Value, json};
use uuid::Uuid;

use super::extract::{Json, List, Page, Path, Query, level};
use super::idempotency::{self, Answer, Idempotent};
use crate::auth::Identity;
use crate::carts::{self, CartError, CartStatus, ItemChange};
use crate::error::{AppError, Result};
use crate::http::AppState;
use crate::http::caller::Caller;
use crate::orders::Placement;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, delete))
        .routes(routes!(set_item, remove_item))
        .routes(routes!(checkout))
}

/// `Cart` of API.md.
#[derive(Debug, Serialize, ToSchema)]
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

#[derive(Debug, Serialize, ToSchema)]
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

/// The cart as the API shows it, with `available` read now.
async fn view(state: &AppState, cart: &carts::Cart) -> Result<Cart> {
    let mut items = Vec::with_capacity(cart.items.len());
    let mut total_cents: i64 = 0;
    for (product_id, line) in &cart.items {
        let available =
            crate::inventory::stock::available_of(state, *product_id, cart.shop_id).await?;
        let cost = (line.quantity as i64).saturating_mul(line.unit_price_cents);
        total_cents = total_cents.saturating_add(cost);
        items.push(CartItem {
            product_id: *product_id,
            quantity: line.quantity,
            unit_price_cents: line.unit_price_cents,
            available,
        });
    }
    Ok(Cart {
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
    })
}

/// The caller's cart as it is now.
async fn current(state: &AppState, caller: &Identity, id: Uuid) -> Result<carts::Cart> {
    let slot = state.carts.find(&state.db, caller.user_id, id).await?;
    let cart = slot.lock().await.clone();
    match cart.status {
        CartStatus::Deleted => Err(CartError::NotFound.into()),
        _ => Ok(cart),
    }
}

#[derive(Deserialize, ToSchema)]
struct CreateCart {
    shop_id: Option<i64>,
    /// Keep the items reserved while the cart is changed (default false).
    hold: Option<bool>,
}

#[utoipa::path(post, path = "/carts", tag = "carts", security(("bearer" = [])), request_body = CreateCart, responses((status = 201, body = Cart), (status = 404, description = "Unknown shop", body = ErrorBody), (status = 409, description = "Too many open carts", body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(body): Json<CreateCart>,
) -> Result<(StatusCode, Json<Cart>)> {
    let shop_id = body.shop_id.map(|s| state.shops.require(s)).transpose()?;
    let (cart, lsn) = state
        .carts
        .create(caller.user_id, shop_id, body.hold.unwrap_or(false))?;
    state.durable(lsn).await?;
    Ok((StatusCode::CREATED, Json(view(&state, &cart).await?)))
}

#[utoipa::path(get, path = "/carts", tag = "carts", security(("bearer" = [])), params(("limit" = Option<i64>, Query, description = "At most 500, default 50"), ("offset" = Option<i64>, Query)), responses((status = 200, description = "`{items: [Cart], total}`: the caller's carts, newest first", body = Object), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(page): Query<Page>,
) -> Result<Json<List<Cart>>> {
    let (carts, total) = state
        .carts
        .list(&state.db, caller.user_id, page.limit()?, page.offset()?)
        .await?;
    let mut items = Vec::with_capacity(carts.len());
    for cart in &carts {
        items.push(view(&state, cart).await?);
    }
    Ok(Json(List { items, total }))
}

#[utoipa::path(get, path = "/carts/{id}", tag = "carts", security(("bearer" = [])), params(("id" = Uuid, Path)), responses((status = 200, body = Cart), (status = 404, description = "Unknown, or another customer's", body = ErrorBody)))]
async fn read(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<Cart>> {
    let cart = current(&state, &caller, id).await?;
    Ok(Json(view(&state, &cart).await?))
}

#[derive(Deserialize, ToSchema)]
struct ItemQuantity {
    /// 0 removes the item.
    #[schema(value_type = i64)]
    quantity: Number,
}

#[utoipa::path(put, path = "/carts/{id}/items/{product_id}", tag = "carts", security(("bearer" = [])), params(("id" = Uuid, Path), ("product_id" = i64, Path)), request_body = ItemQuantity, responses((status = 200, body = Cart), (status = 404, description = "Unknown cart or product", body = ErrorBody), (status = 409, description = "insufficient_stock (a held cart could not hold it; the cart is as it was), or the cart is checked out", body = ErrorBody), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn set_item(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((id, product_id)): Path<(Uuid, i64)>,
    Json(body): Json<ItemQuantity>,
) -> Result<Json<Cart>> {
    let quantity = level(&body.quantity, "quantity")?;
    change(state, caller, id, product_id, quantity).await
}

#[utoipa::path(delete, path = "/carts/{id}/items/{product_id}", tag = "carts", security(("bearer" = [])), params(("id" = Uuid, Path), ("product_id" = i64, Path)), responses((status = 200, body = Cart), (status = 404, description = "Unknown cart", body = ErrorBody), (status = 409, description = "The cart is checked out", body = ErrorBody)))]
async fn remove_item(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((id, product_id)): Path<(Uuid, i64)>,
) -> Result<Json<Cart>> {
    change(state, caller, id, product_id, 0).await
}

/// Sets one item's quantity (0 removes it), re-holding a held cart's items all or nothing.
/// Runs in a task of its own, so a client hanging up cannot leave the hold and the cart
/// disagreeing.
async fn change(
    state: AppState,
    caller: Identity,
    id: Uuid,
    product_id: i64,
    quantity: i64,
) -> Result<Json<Cart>> {
    tokio::spawn(async move {
        let slot = state.carts.find(&state.db, caller.user_id, id).await?;
        let mut cart = slot.lock().await;
        let group = state.store.buffer.group().await;
        let change = ItemChange {
            product_id,
            quantity: quantity as u64,
        };
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
        let shown = cart.clone();
        drop(cart);
        state.durable(changed?).await?;
        view(&state, &shown).await.map(Json)
    })
    .await
    .map_err(|e| AppError::Internal(format!("cart change task: {e}")))?
}

#[utoipa::path(delete, path = "/carts/{id}", tag = "carts", security(("bearer" = [])), params(("id" = Uuid, Path)), responses((status = 204, description = "Deleted; a held cart's stock is released"), (status = 404, description = "Unknown, or another customer's", body = ErrorBody)))]
async fn delete(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    tokio::spawn(async move {
        let slot = state.carts.find(&state.db, caller.user_id, id).await?;
        let mut cart = slot.lock().await;
        let group = state.store.buffer.group().await;
        let deleted = state.carts.delete(&state.core, &slot, &mut cart).await;
        drop(group);
        drop(cart);
        state.durable(deleted?).await?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
    .map_err(|e| AppError::Internal(format!("cart delete task: {e}")))?
}

#[derive(Deserialize, ToSchema)]
struct Checkout {
    #[schema(value_type = Option<Object>)]
    shipping_address: Option<Value>,
    #[schema(value_type = Option<Object>)]
    contact: Option<Value>,
}

#[utoipa::path(post, path = "/carts/{id}/checkout", tag = "carts", security(("bearer" = [])), params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 characters; repeats answer the first answer")), request_body = Checkout, responses((status = 201, description = "The order, as `POST /orders` answers it; the cart is then checked_out", body = crate::orders::Order), (status = 404, description = "Unknown, or another customer's", body = ErrorBody), (status = 409, description = "insufficient_stock (the cart is left as it was), or the cart is checked out", body = ErrorBody), (status = 422, description = "The cart is empty", body = ErrorBody), (status = 503, description = "overloaded, or not confirmed durable in time: retry with the same Idempotency-Key", body = ErrorBody)))]
async fn checkout(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
    request: Idempotent<Checkout>,
) -> Result<Response> {
    // The cart's lock first, then (inside `run`) the flush group: the order, the
    // reservation handed over, the cart checked out and the answer are one batch.
    tokio::spawn(async move {
        let slot = state.carts.find(&state.db, caller.user_id, id).await?;
        let mut cart = slot.lock().await;
        let owned = state.clone();
        idempotency::run(&state, caller.user_id, request, move |body| async move {
            let placement = Placement {
                id: None,
                items: Vec::new(),
                shipping_address: body.shipping_address,
                contact: body.contact,
                shop_id: None,
                backorder_limits: Default::default(),
            };
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
    })
    .await
    .map_err(|e| AppError::Internal(format!("checkout task: {e}")))?
}
