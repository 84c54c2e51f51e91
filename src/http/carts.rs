//! `/carts`: a customer's carts. A cart lives in PostgreSQL (written through, not behind:
//! it moves no stock by itself). A held cart (`hold: true`) keeps its items reserved
//! through one pending reservation (reference `cart:<id>`), which every change reshapes to
//! exactly the cart's items, all or nothing, and extends by `STOCKLINE_CART_HOLD_SECS`.
//! A hold that runs out is an expired reservation: its stock is released once, by the
//! core, also across a restart; the cart stays open. Checkout of a held cart hands that
//! reservation over to the order, so its stock is never free in between.
//!
//! The changes of one cart are serialized by a lock (one of a fixed set, by cart id). A
//! reservation that no longer carries the cart's reference (handed over to an order whose
//! cart row was not yet marked) is never touched again as the cart's.

use std::collections::HashMap;
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
use stockline_actors::{
    ItemRequest, Lsn, Quantity, Reservation, ReservationId, ReservationRequest, ReservationStatus,
};
use uuid::Uuid;

use super::extract::{Json, List, Page, Path, Query, level};
use super::idempotency::{self, Answer, Idempotent};
use crate::auth::Identity;
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

/// The most open carts one customer may have, and items one cart may hold.
const MAX_OPEN_CARTS: i64 = 20;
const MAX_ITEMS: usize = 100;

/// One lock per slot; a cart's changes take the lock of its slot.
pub struct CartLocks(Vec<tokio::sync::Mutex<()>>);

impl Default for CartLocks {
    fn default() -> Self {
        Self((0..256).map(|_| tokio::sync::Mutex::new(())).collect())
    }
}

impl CartLocks {
    async fn lock(&self, id: Uuid) -> tokio::sync::MutexGuard<'_, ()> {
        let slot = (id.as_u128() % self.0.len() as u128) as usize;
        self.0[slot].lock().await
    }
}

/// `Cart` of API.md.
#[derive(Debug, Serialize, ToSchema)]
pub struct Cart {
    pub id: Uuid,
    pub user_id: i64,
    pub shop_id: Option<i64>,
    /// `open` or `checked_out`.
    pub status: String,
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
    pub quantity: i64,
    /// The price when the item was put in the cart.
    pub unit_price_cents: i64,
    /// Available now (over the cart's shop's warehouses, if it has a shop).
    pub available: u64,
}

/// A cart as stored.
#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    user_id: i64,
    shop_id: Option<i64>,
    status: String,
    hold: bool,
    reservation_id: Option<Uuid>,
    hold_expires_at: Option<DateTime<Utc>>,
    order_id: Option<Uuid>,
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, user_id, shop_id, status, hold, reservation_id, hold_expires_at, order_id, updated_at";

/// product id to (quantity, unit price)
type Items = HashMap<i64, (i64, i64)>;

impl Row {
    fn reference(&self) -> String {
        format!("cart:{}", self.id)
    }

    /// The cart's reservation, if it still holds stock as the cart's.
    fn held(&self, state: &AppState) -> Option<Reservation> {
        let id = ReservationId(self.reservation_id?);
        state.core.reservations().get(id).filter(|r| {
            r.status == ReservationStatus::Pending
                && r.reference.as_deref() == Some(&self.reference())
        })
    }
}

/// The caller's cart, or 404 (also for another customer's).
async fn find(state: &AppState, caller: &Identity, id: Uuid) -> Result<Row> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM carts WHERE id = $1 AND user_id = $2"
    ))
    .bind(id)
    .bind(caller.user_id)
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| AppError::NotFound("cart".into()))
}

async fn items_of(state: &AppState, id: Uuid) -> Result<Items> {
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT product_id, quantity, unit_price_cents FROM cart_items WHERE cart_id = $1",
    )
    .bind(id)
    .fetch_all(&state.db)
    .await?;
    Ok(rows.into_iter().map(|(p, q, c)| (p, (q, c))).collect())
}

/// The cart as the API shows it, with `available` read now.
async fn view(state: &AppState, row: &Row) -> Result<Cart> {
    let mut stored: Vec<_> = items_of(state, row.id).await?.into_iter().collect();
    stored.sort_unstable_by_key(|(product, _)| *product);
    let mut items = Vec::with_capacity(stored.len());
    let mut total_cents: i64 = 0;
    for (product_id, (quantity, unit_price_cents)) in stored {
        let available = super::stock::available_of(state, product_id, row.shop_id).await?;
        total_cents = total_cents.saturating_add(quantity.saturating_mul(unit_price_cents));
        items.push(CartItem {
            product_id,
            quantity,
            unit_price_cents,
            available,
        });
    }
    Ok(Cart {
        id: row.id,
        user_id: row.user_id,
        shop_id: row.shop_id,
        status: row.status.clone(),
        hold: row.hold,
        items,
        total_cents,
        hold_expires_at: row.hold_expires_at,
        order_id: row.order_id,
        updated_at: row.updated_at,
    })
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
    let open: i64 =
        sqlx::query_scalar("SELECT count(*) FROM carts WHERE user_id = $1 AND status = 'open'")
            .bind(caller.user_id)
            .fetch_one(&state.db)
            .await?;
    if open >= MAX_OPEN_CARTS {
        return Err(AppError::Conflict {
            code: "conflict",
            message: format!("at most {MAX_OPEN_CARTS} open carts; check out or delete one"),
            details: json!({ "open_carts": open }),
        });
    }
    let row: Row = sqlx::query_as(&format!(
        "INSERT INTO carts (id, user_id, shop_id, status, hold, created_at, updated_at)
         VALUES ($1, $2, $3, 'open', $4, now(), now()) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(caller.user_id)
    .bind(shop_id)
    .bind(body.hold.unwrap_or(false))
    .fetch_one(&state.db)
    .await?;
    Ok((StatusCode::CREATED, Json(view(&state, &row).await?)))
}

#[utoipa::path(get, path = "/carts", tag = "carts", security(("bearer" = [])), params(("limit" = Option<i64>, Query, description = "At most 500, default 50"), ("offset" = Option<i64>, Query)), responses((status = 200, description = "`{items: [Cart], total}`: the caller's carts, newest first", body = Object), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(page): Query<Page>,
) -> Result<Json<List<Cart>>> {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM carts WHERE user_id = $1")
        .bind(caller.user_id)
        .fetch_one(&state.db)
        .await?;
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM carts WHERE user_id = $1 ORDER BY created_at DESC, id DESC
         LIMIT $2 OFFSET $3"
    ))
    .bind(caller.user_id)
    .bind(page.limit()?)
    .bind(page.offset()?)
    .fetch_all(&state.db)
    .await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in &rows {
        items.push(view(&state, row).await?);
    }
    Ok(Json(List { items, total }))
}

#[utoipa::path(get, path = "/carts/{id}", tag = "carts", security(("bearer" = [])), params(("id" = Uuid, Path)), responses((status = 200, body = Cart), (status = 404, description = "Unknown, or another customer's", body = ErrorBody)))]
async fn read(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<Cart>> {
    let row = find(&state, &caller, id).await?;
    Ok(Json(view(&state, &row).await?))
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
        let _cart = state.carts.lock(id).await;
        let row = open(&state, &caller, id).await?;
        let mut items = items_of(&state, id).await?;
        let price = match items.get(&product_id) {
            Some((_, price)) => *price,
            None if quantity == 0 => return view(&state, &row).await.map(Json),
            None => {
                state
                    .catalog
                    .get(product_id)
                    .ok_or_else(|| AppError::NotFound(format!("product {product_id}")))?
                    .price_cents
            }
        };
        if quantity == 0 {
            items.remove(&product_id);
        } else {
            items.insert(product_id, (quantity, price));
        }
        if items.len() > MAX_ITEMS {
            return Err(AppError::validation(
                "product_id",
                format!("a cart holds at most {MAX_ITEMS} products"),
            ));
        }
        let (reservation, lsn) = if row.hold {
            hold(&state, &row, &items).await?
        } else {
            (None, 0)
        };
        state.durable(lsn).await?;
        let row = save(&state, &row, &items, product_id, reservation).await?;
        view(&state, &row).await.map(Json)
    })
    .await
    .map_err(|e| AppError::Internal(format!("cart change task: {e}")))?
}

/// The cart, if it may still change.
async fn open(state: &AppState, caller: &Identity, id: Uuid) -> Result<Row> {
    let row = find(state, caller, id).await?;
    if row.status != "open" {
        return Err(AppError::Conflict {
            code: "conflict",
            message: format!("the cart is {}", row.status),
            details: json!({ "status": row.status, "order_id": row.order_id }),
        });
    }
    Ok(row)
}

/// Makes the cart's reservation hold exactly `items` (a new one if it has none pending),
/// extended to the hold time; refused: nothing changed.
async fn hold(state: &AppState, row: &Row, items: &Items) -> Result<(Option<Reservation>, Lsn)> {
    let ttl = Duration::from_secs(state.config.cart_hold_secs);
    let wanted: Vec<(i64, u64)> = items.iter().map(|(p, (q, _))| (*p, *q as u64)).collect();
    let reservations = state.core.reservations();
    let limits = state.catalog.backorder_limits(items.keys().copied());
    if let Some(current) = row.held(state) {
        let (reservation, lsn) = reservations
            .reshape(current.id, wanted, ttl, row.shop_id, limits)
            .await?;
        return Ok((Some(reservation), lsn));
    }
    if wanted.is_empty() {
        return Ok((None, 0));
    }
    let request = ReservationRequest {
        items: wanted
            .iter()
            .map(|&(product_id, units)| {
                Ok(ItemRequest {
                    product_id,
                    quantity: Quantity::try_from(units)
                        .map_err(|e| AppError::validation("quantity", e.to_string()))?,
                    warehouse_id: None,
                })
            })
            .collect::<Result<_>>()?,
        ttl,
        reference: Some(row.reference()),
        shop_id: row.shop_id,
        backorder_limits: limits,
    };
    let (reservation, lsn) = reservations.reserve(request).await?;
    Ok((Some(reservation), lsn))
}

/// Writes the changed item and the hold's reservation and expiry.
async fn save(
    state: &AppState,
    row: &Row,
    items: &Items,
    product_id: i64,
    reservation: Option<Reservation>,
) -> Result<Row> {
    let mut tx = state.db.begin().await?;
    match items.get(&product_id) {
        Some((quantity, price)) => {
            sqlx::query(
                "INSERT INTO cart_items (cart_id, product_id, quantity, unit_price_cents, added_at)
                 VALUES ($1, $2, $3, $4, now())
                 ON CONFLICT (cart_id, product_id) DO UPDATE SET quantity = EXCLUDED.quantity",
            )
            .bind(row.id)
            .bind(product_id)
            .bind(quantity)
            .bind(price)
            .execute(&mut *tx)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM cart_items WHERE cart_id = $1 AND product_id = $2")
                .bind(row.id)
                .bind(product_id)
                .execute(&mut *tx)
                .await?;
        }
    }
    let (reservation_id, expires_at) = match &reservation {
        Some(r) if r.status == ReservationStatus::Pending => (Some(r.id.0), Some(r.expires_at)),
        // Emptied: the hold ended with nothing left to hold.
        Some(_) => (None, None),
        None => (row.reservation_id, row.hold_expires_at),
    };
    let row: Row = sqlx::query_as(&format!(
        "UPDATE carts SET reservation_id = $2, hold_expires_at = $3, updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(row.id)
    .bind(reservation_id)
    .bind(expires_at)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row)
}

#[utoipa::path(delete, path = "/carts/{id}", tag = "carts", security(("bearer" = [])), params(("id" = Uuid, Path)), responses((status = 204, description = "Deleted; a held cart's stock is released"), (status = 404, description = "Unknown, or another customer's", body = ErrorBody)))]
async fn delete(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    tokio::spawn(async move {
        let _cart = state.carts.lock(id).await;
        let row = find(&state, &caller, id).await?;
        if let Some(held) = row.held(&state) {
            let (_, lsn) = state.core.reservations().release(held.id).await?;
            state.durable(lsn).await?;
        }
        sqlx::query("DELETE FROM carts WHERE id = $1")
            .bind(id)
            .execute(&state.db)
            .await?;
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
    // The cart is marked only once the order is durable, and both happen in a task of
    // their own: a hang-up in between cannot leave an order whose cart is still open.
    tokio::spawn(async move {
        let _cart = state.carts.lock(id).await;
        let owned = state.clone();
        let response = idempotency::run(&state, caller.user_id, request, move |body| async move {
            order_from(&owned, &caller, id, body).await
        })
        .await?;
        if response.status() != StatusCode::CREATED {
            return Ok(response);
        }
        // The order's id, from the answer (also a repeat's, which marks a cart a hang-up
        // left open).
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(|e| AppError::Internal(format!("checkout answer: {e}")))?;
        let order_id = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|order| order["id"].as_str()?.parse::<Uuid>().ok());
        if let Some(order_id) = order_id {
            mark_checked_out(&state, id, order_id).await?;
        }
        Ok(Response::from_parts(parts, axum::body::Body::from(bytes)))
    })
    .await
    .map_err(|e| AppError::Internal(format!("checkout task: {e}")))?
}

/// Places the order for the cart's items: a held cart's reservation is handed over; a
/// cart without a hold (or whose hold ran out) reserves now, and a refusal leaves it as
/// it was.
async fn order_from(
    state: &AppState,
    caller: &Identity,
    id: Uuid,
    body: Checkout,
) -> Result<Answer> {
    let row = open(state, caller, id).await?;
    let items = items_of(state, id).await?;
    if items.is_empty() {
        return Err(AppError::validation("items", "the cart is empty"));
    }
    let mut placement = Placement {
        items: items
            .iter()
            .map(|(product, (quantity, _))| {
                Quantity::try_from(*quantity)
                    .map(|q| (*product, q))
                    .map_err(|e| AppError::validation("quantity", e.to_string()))
            })
            .collect::<Result<_>>()?,
        shipping_address: body.shipping_address,
        contact: body.contact,
        shop_id: row.shop_id,
        backorder_limits: state.catalog.backorder_limits(items.keys().copied()),
    };
    placement
        .items
        .sort_unstable_by_key(|(product, _)| *product);
    let timeout = Duration::from_secs(state.config.payment_timeout_secs);
    let price = |product: i64| items.get(&product).map(|(_, price)| *price);
    let placed = match row.held(state) {
        Some(held) => {
            // Exactly the cart's items, then handed over as they are.
            let (reshaped, _) = hold(state, &row, &items).await?;
            let reservation = reshaped.map_or(held.id, |r| r.id);
            state.orders.adopt(
                &state.core,
                caller.user_id,
                timeout,
                reservation,
                placement,
                price,
            )?
        }
        None => {
            state
                .orders
                .place(&state.core, caller.user_id, timeout, placement, price)
                .await?
        }
    };
    let (order, lsn) = placed;
    Answer::new(StatusCode::CREATED, order.shown(&state.core), lsn)
}

async fn mark_checked_out(state: &AppState, id: Uuid, order_id: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE carts SET status = 'checked_out', order_id = $2, updated_at = now()
         WHERE id = $1 AND status = 'open'",
    )
    .bind(id)
    .bind(order_id)
    .execute(&state.db)
    .await?;
    Ok(())
}
