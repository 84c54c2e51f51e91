//! `/orders`: priced from the catalog, reserved through the core for the payment timeout,
//! then paid (the reservation committed and a payment recorded), cancelled (stock released,
//! or returned if paid), shipped and delivered. A customer sees and acts on its own orders
//! only; another's answers 404.

use std::sync::Arc;

use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::openapi::ErrorBody;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Number, Value, json};
use stockline_actors::journal::PaymentRecord;
use stockline_actors::{
    CoreError, ItemRequest, LineKey, Record, ReservationId, ReservationRequest,
};
use uuid::Uuid;

use super::extract::{Json, List, Page, Path, Query, int_in, quantity, text};
use super::idempotency::{self, Answer, Idempotent};
use crate::auth::{Identity, Role};
use crate::error::{AppError, Result};
use crate::http::AppState;
use crate::http::caller::Caller;
use crate::orders::{IllegalStep, Order, OrderItem, OrderStatus, Slot, with_items};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read))
        .routes(routes!(pay))
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

async fn place(state: &AppState, caller: Identity, body: CreateOrder) -> Result<Answer> {
    if body.items.is_empty() || body.items.len() > MAX_ITEMS {
        return Err(AppError::validation(
            "items",
            format!("must hold 1 to {MAX_ITEMS} items"),
        ));
    }
    let mut requested = Vec::with_capacity(body.items.len());
    let mut total: i64 = 0;
    for (i, item) in body.items.iter().enumerate() {
        let product = state
            .catalog
            .get(item.product_id)
            .ok_or_else(|| AppError::NotFound(format!("product {}", item.product_id)))?;
        let qty = quantity(&item.quantity, &format!("items[{i}].quantity"))?;
        total = (qty.get() as i64)
            .checked_mul(product.price_cents)
            .and_then(|line| total.checked_add(line))
            .ok_or_else(|| AppError::validation("items", "the order total is too large"))?;
        requested.push(ItemRequest {
            product_id: item.product_id,
            quantity: qty,
            warehouse_id: None,
        });
    }
    let id = Uuid::now_v7();
    let request = ReservationRequest {
        items: requested,
        ttl: std::time::Duration::from_secs(state.config.payment_timeout_secs),
        reference: Some(format!("order:{id}")),
    };
    let (reservation, reserved_lsn) = state.core.reservations().reserve(request).await?;
    let items = reservation
        .items
        .iter()
        .map(|i| OrderItem {
            product_id: i.product_id,
            quantity: i.quantity,
            // Priced when placed: the price may change later, the order does not.
            unit_price_cents: state
                .catalog
                .get(i.product_id)
                .map(|p| p.price_cents)
                .unwrap_or_default(),
            warehouse_id: i.warehouse_id,
        })
        .collect();
    let order = Order {
        id,
        user_id: caller.user_id,
        status: OrderStatus::PendingPayment,
        items,
        total_cents: total,
        reservation_id: reservation.id.0,
        expires_at: reservation.expires_at,
        tracking_number: None,
        shipping_address: body.shipping_address,
        contact: body.contact,
        created_at: reservation.created_at,
        updated_at: reservation.created_at,
    };
    let lsn = state.core.journal().append(vec![order.record()]);
    state.orders.insert(order.clone());
    Answer::new(StatusCode::CREATED, order, lsn.max(reserved_lsn))
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

/// The journal position of a settled reservation; if the reservation had run out, the
/// order expires with it and the caller is told so.
fn settled_or_expired(
    state: &AppState,
    slot: &Slot,
    order: &mut Order,
    outcome: stockline_actors::Result<(stockline_actors::Reservation, stockline_actors::Lsn)>,
) -> Result<stockline_actors::Lsn> {
    match outcome {
        Ok((_, lsn)) => Ok(lsn),
        Err(CoreError::ReservationNotPending { .. } | CoreError::ReservationNotFound) => {
            slot.expire(order, &**state.core.journal());
            Err(not_pending(order.status))
        }
        Err(other) => Err(other.into()),
    }
}

/// An illegal step asked for by an operator (`PATCH /orders/{id}/status`).
impl From<IllegalStep> for AppError {
    fn from(step: IllegalStep) -> Self {
        AppError::Conflict {
            code: "conflict",
            message: step.to_string(),
            details: json!({ "status": step.from, "requested": step.to }),
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
    Ok(Json(visible(&state, &caller, id).await?))
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
    let mut order = slot.order.lock().await;
    if order.status != OrderStatus::PendingPayment {
        return Err(not_pending(order.status));
    }
    if amount != order.total_cents {
        return Err(AppError::validation(
            "amount_cents",
            format!("must equal the order's total_cents, {}", order.total_cents),
        ));
    }
    let committed = state
        .core
        .reservations()
        .commit(ReservationId(order.reservation_id))
        .await;
    let committed_lsn = settled_or_expired(state, &slot, &mut order, committed)?;
    let payment = PaymentRecord {
        id: Uuid::now_v7(),
        order_id: order.id,
        method,
        amount_cents: amount,
        status: "captured",
        created_at: stockline_actors::types::now(),
    };
    state.core.journal().append(vec![Record::Payment(payment)]);
    let lsn = order.step(OrderStatus::Paid, &**state.core.journal())?;
    Answer::new(StatusCode::OK, order.clone(), lsn.max(committed_lsn))
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
    let mut order = slot.order.lock().await;
    let lsn = match order.status {
        OrderStatus::PendingPayment => {
            let released = state
                .core
                .reservations()
                .release(ReservationId(order.reservation_id))
                .await;
            settled_or_expired(&state, &slot, &mut order, released)?
        }
        OrderStatus::Paid => {
            caller.require(Role::Operator)?;
            let mut last = 0;
            for item in &order.items {
                let key = LineKey::new(item.warehouse_id, item.product_id);
                let qty = stockline_actors::Quantity::try_from(item.quantity)
                    .map_err(|e| AppError::Internal(format!("stored order quantity: {e}")))?;
                let returned = state.core.return_stock(key, qty).await?;
                last = returned.lsn;
            }
            last
        }
        other => return Err(not_pending(other)),
    };
    let lsn = order
        .step(OrderStatus::Cancelled, &**state.core.journal())?
        .max(lsn);
    slot.mark_closed();
    let answer = order.clone();
    drop(order);
    drop(group);
    state.durable(lsn).await?;
    Ok(Json(answer))
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
    let mut order = slot.order.lock().await;
    if !order.status.can_become(step.next) {
        return Err(IllegalStep {
            from: order.status,
            to: step.next,
        }
        .into());
    }
    if step.tracking_number.is_some() {
        order.tracking_number = step.tracking_number;
    }
    let lsn = order.step(step.next, &**state.core.journal())?;
    if !order.is_open() {
        slot.mark_closed();
    }
    let answer = order.clone();
    drop(order);
    state.durable(lsn).await?;
    Ok(Json(answer))
}
