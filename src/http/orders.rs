//! `/orders`: priced from the catalog, reserved through the core for the payment timeout,
//! then paid (the reservation committed and a payment recorded), cancelled (stock released,
//! or returned if paid), shipped and delivered. A customer sees and acts on its own orders
//! only; another's answers 404.

use std::sync::Arc;
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

use super::extract::{Json, List, Page, Path, Query, int_in, quantity, text};
use super::idempotency::{self, Answer, Idempotent};
use crate::auth::{Identity, Role};
use crate::error::{AppError, Result};
use crate::http::AppState;
use crate::http::caller::Caller;
use crate::orders::{Order, OrderError, OrderStatus, Placement, Slot, with_items};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read))
        .routes(routes!(pay))
        .routes(routes!(payments))
        .routes(routes!(cancel))
        .routes(routes!(set_status))
}

#[derive(Deserialize, ToSchema)]
struct CreateOrder {
    items: Vec<OrderItemBody>,
    #[schema(value_type = Option<Object>)]
    shipping_address: Option<Value>,
    #[schema(value_type = Option<Object>)]
    contact: Option<Value>,
    /// Allocate only from this shop's warehouses.
    shop_id: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
struct OrderItemBody {
    product_id: i64,
    #[schema(value_type = i64)]
    quantity: Number,
}

const MAX_ITEMS: usize = 100;

#[utoipa::path(post, path = "/orders", tag = "orders", security(("bearer" = [])), params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 characters; repeats answer the first answer")), request_body = CreateOrder, responses((status = 201, body = Order), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "insufficient_stock", body = ErrorBody), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody), (status = 503, description = "overloaded, or not confirmed durable in time: retry with the same Idempotency-Key", body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request: Idempotent<CreateOrder>,
) -> Result<Response> {
    let owned = state.clone();
    idempotency::run(&state, caller.user_id, request, move |body| async move {
        place(&owned, caller, body).await
    })
    .await
}

impl TryFrom<CreateOrder> for Placement {
    type Error = AppError;

    fn try_from(body: CreateOrder) -> Result<Self> {
        if body.items.is_empty() || body.items.len() > MAX_ITEMS {
            return Err(AppError::validation(
                "items",
                format!("must hold 1 to {MAX_ITEMS} items"),
            ));
        }
        let items = body
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let qty = quantity(&item.quantity, &format!("items[{i}].quantity"))?;
                Ok((item.product_id, qty))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            items,
            shipping_address: body.shipping_address,
            contact: body.contact,
            shop_id: body.shop_id,
            backorder_limits: Default::default(),
        })
    }
}

async fn place(state: &AppState, caller: Identity, body: CreateOrder) -> Result<Answer> {
    let mut placement = Placement::try_from(body)?;
    placement.backorder_limits = state
        .catalog
        .backorder_limits(placement.items.iter().map(|(product, _)| *product));
    if let Some(shop) = placement.shop_id {
        state.shops.require(shop)?;
    }
    let timeout = Duration::from_secs(state.config.payment_timeout_secs);
    let (order, lsn) = state
        .orders
        .place(&state.core, caller.user_id, timeout, placement, |product| {
            state.catalog.get(product).map(|p| p.price_cents)
        })
        .await?;
    Answer::new(StatusCode::CREATED, order.shown(&state.core), lsn)
}

/// The order, if the caller may see it: its owner, or an operator.
async fn visible(state: &AppState, caller: &Identity, id: Uuid) -> Result<Order> {
    let order = match state.orders.get(id) {
        Some(slot) => slot.order.lock().await.clone(),
        None => crate::orders::read(&state.db, "id = $1", Some(id))
            .await?
            .pop()
            .ok_or_else(|| AppError::NotFound("order".into()))?,
    };
    if order.user_id != caller.user_id && caller.role < Role::Operator {
        return Err(AppError::NotFound("order".into()));
    }
    Ok(order)
}

/// The in-memory slot of an open order the caller may act on.
async fn open_slot(state: &AppState, caller: &Identity, id: Uuid) -> Result<Arc<Slot>> {
    let order = visible(state, caller, id).await?;
    state
        .orders
        .get(id)
        .ok_or_else(|| not_pending(order.status))
}

/// A refused order step, as the contract answers it.
impl From<OrderError> for AppError {
    fn from(error: OrderError) -> Self {
        let message = error.to_string();
        match error {
            OrderError::NotPending(status) => not_pending(status),
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
        }
    }
}

fn not_pending(status: OrderStatus) -> AppError {
    AppError::Conflict {
        code: "order_not_pending",
        message: format!("the order is {status}"),
        details: json!({ "status": status }),
    }
}

#[utoipa::path(get, path = "/orders/{id}", tag = "orders", security(("bearer" = [])), params(("id" = Uuid, Path)), responses((status = 200, body = Order), (status = 404, description = "Unknown, or another customer's", body = ErrorBody)))]
async fn read(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>> {
    Ok(Json(visible(&state, &caller, id).await?.shown(&state.core)))
}

/// A payment recorded for an order.
#[derive(Serialize, ToSchema, sqlx::FromRow)]
struct Payment {
    id: Uuid,
    method: String,
    amount_cents: i64,
    status: String,
    created_at: DateTime<Utc>,
}

#[utoipa::path(get, path = "/orders/{id}/payments", tag = "orders", security(("bearer" = [])), params(("id" = Uuid, Path)), responses((status = 200, description = "`{items: [Payment], total}`, oldest first", body = Object), (status = 404, description = "Unknown, or another customer's", body = ErrorBody), (status = 503, description = "The store is behind; retry shortly", body = ErrorBody)))]
async fn payments(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<List<Payment>>> {
    visible(&state, &caller, id).await?;
    // Payments are read from the store: everything journaled so far is written first.
    state.written().await?;
    let items: Vec<Payment> = sqlx::query_as(
        "SELECT id, method, amount_cents, status, created_at FROM payments
         WHERE order_id = $1 ORDER BY created_at, id",
    )
    .bind(id)
    .fetch_all(&state.db)
    .await?;
    let total = items.len() as i64;
    Ok(Json(List { items, total }))
}

#[derive(Deserialize)]
struct Filter {
    status: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[utoipa::path(get, path = "/orders", tag = "orders", security(("bearer" = [])), params(("status" = Option<String>, Query), ("limit" = Option<i64>, Query, description = "At most 500, default 50"), ("offset" = Option<i64>, Query)), responses((status = 200, description = "`{items: [Order], total}`; a customer sees its own", body = Object), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(filter): Query<Filter>,
) -> Result<Json<List<Order>>> {
    if let Some(s) = filter
        .status
        .as_deref()
        .filter(|s| OrderStatus::parse(s).is_none())
    {
        return Err(AppError::validation(
            "status",
            format!("unknown status {s}"),
        ));
    }
    let page = Page::new(filter.limit, filter.offset);
    let owner = (caller.role < Role::Operator).then_some(caller.user_id);
    let condition = "($1::bigint IS NULL OR user_id = $1) AND ($2::text IS NULL OR status = $2)";
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM orders WHERE {condition}"))
        .bind(owner)
        .bind(&filter.status)
        .fetch_one(&state.db)
        .await?;
    let rows = sqlx::query_as(&format!(
        "SELECT id, user_id, status, total_cents, reservation_id, expires_at, tracking_number,
                shipping_address, contact, created_at, updated_at
         FROM orders WHERE {condition} ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
    ))
    .bind(owner)
    .bind(&filter.status)
    .bind(page.limit()?)
    .bind(page.offset()?)
    .fetch_all(&state.db)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r: &crate::orders::OrderRow| r.0).collect();
    let items = with_items(&state.db, rows, &ids).await?;
    Ok(Json(List { items, total }))
}

#[derive(Deserialize, ToSchema)]
struct Pay {
    method: String,
    #[schema(value_type = i64)]
    amount_cents: Number,
}

#[utoipa::path(post, path = "/orders/{id}/pay", tag = "orders", security(("bearer" = [])), params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 characters; repeats answer the first answer")), request_body = Pay, responses((status = 200, body = Order), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "order_not_pending (expired, cancelled, paid)", body = ErrorBody), (status = 422, description = "amount_cents differs from total_cents", body = ErrorBody), (status = 503, description = "overloaded, or not confirmed durable in time: retry with the same Idempotency-Key", body = ErrorBody)))]
async fn pay(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
    request: Idempotent<Pay>,
) -> Result<Response> {
    let owned = state.clone();
    idempotency::run(&state, caller.user_id, request, move |body| async move {
        settle_payment(&owned, caller, id, body).await
    })
    .await
}

async fn settle_payment(state: &AppState, caller: Identity, id: Uuid, body: Pay) -> Result<Answer> {
    let method = text(&body.method, "method", 64)?;
    let amount = int_in(&body.amount_cents, "amount_cents", 0..=i64::MAX)?;
    let slot = open_slot(state, &caller, id).await?;
    let (order, lsn) = slot.pay(&state.core, method, amount).await?;
    Answer::new(StatusCode::OK, order, lsn)
}

#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders", security(("bearer" = [])), params(("id" = Uuid, Path)), responses((status = 200, body = Order), (status = 403, description = "A paid order is cancelled by an operator only", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "order_not_pending", body = ErrorBody), (status = 503, description = "overloaded, or not confirmed durable in time: retry with the same Idempotency-Key", body = ErrorBody)))]
async fn cancel(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>> {
    // In a task of its own, so that a client hanging up cannot stop it between returning
    // the stock and recording the cancellation.
    tokio::spawn(async move { cancel_to_end(state, caller, id).await })
        .await
        .map_err(|e| AppError::Internal(format!("cancel task: {e}")))?
}

async fn cancel_to_end(state: AppState, caller: Identity, id: Uuid) -> Result<Json<Order>> {
    let slot = open_slot(&state, &caller, id).await?;
    let group = state.store.buffer.group().await;
    let (order, lsn) = slot
        .cancel(&state.core, caller.role >= Role::Operator)
        .await?;
    drop(group);
    state.durable(lsn).await?;
    Ok(Json(order))
}

#[derive(Deserialize, ToSchema)]
struct Step {
    status: String,
    tracking_number: Option<String>,
}

/// A shipping step, parsed: the status an operator may set, and the tracking number.
struct Shipping {
    next: OrderStatus,
    tracking_number: Option<String>,
}

impl TryFrom<Step> for Shipping {
    type Error = AppError;

    fn try_from(body: Step) -> Result<Self> {
        let next = match OrderStatus::parse(&body.status) {
            Some(next @ (OrderStatus::Shipped | OrderStatus::Delivered)) => next,
            _ => {
                return Err(AppError::validation(
                    "status",
                    "must be shipped or delivered",
                ));
            }
        };
        let tracking_number = body
            .tracking_number
            .as_deref()
            .map(|t| text(t, "tracking_number", 128))
            .transpose()?;
        Ok(Self {
            next,
            tracking_number,
        })
    }
}

#[utoipa::path(patch, path = "/orders/{id}/status", tag = "orders", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = Step, responses((status = 200, body = Order), (status = 403, description = "The role may not do this", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "An illegal step", body = ErrorBody), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn set_status(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
    Json(body): Json<Step>,
) -> Result<Json<Order>> {
    caller.require(Role::Operator)?;
    let step = Shipping::try_from(body)?;
    let slot = open_slot(&state, &caller, id).await?;
    let (answer, lsn) = slot.advance(step.next, step.tracking_number).await?;
    state.durable(lsn).await?;
    Ok(Json(answer))
}
