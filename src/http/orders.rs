//! `/orders`: priced from the catalog, reserved through the core for the payment timeout,
//! then paid (the reservation committed and a payment recorded), cancelled (stock released,
//! or returned if paid), shipped and delivered. A customer sees and acts on its own orders
//! only; another's answers 404.

use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::openapi::ErrorBody;
use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};
use uuid::Uuid;

use super::extract::{Json, List, Page, Path, Query, int_in, quantity, text};
use super::idempotency::{self, Idempotent};
use crate::auth::{Identity, Role};
use crate::error::{AppError, Result};
use crate::http::AppState;
use crate::http::caller::Caller;
use crate::inventory::orders::{self, Acting, OrderStep, Shipping};
use crate::inventory::{self, Operation};
use crate::orders::{Order, OrderStatus, Placement, with_items};

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
    let user = caller.user_id;
    let (body, key) = request.into_parts();
    match Placement::try_from(body) {
        Ok(placement) => {
            let placed = placement.into();
            let step = OrderStep::Place { user, key, placed };
            Ok(inventory::run(&state, Operation::Order(step)).await)
        }
        // Refused as it was asked: kept for its key like any answer.
        Err(error) => idempotency::refuse_keyed(&state, user, key, error).await,
    }
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
            id: None,
            items,
            shipping_address: body.shipping_address,
            contact: body.contact,
            shop_id: body.shop_id,
            backorder_limits: Default::default(),
        })
    }
}

fn acting(caller: &Identity) -> Acting {
    Acting {
        user: caller.user_id,
        operator: caller.role >= Role::Operator,
    }
}

#[utoipa::path(get, path = "/orders/{id}", tag = "orders", security(("bearer" = [])), params(("id" = Uuid, Path)), responses((status = 200, body = Order), (status = 404, description = "Unknown, or another customer's", body = ErrorBody)))]
async fn read(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>> {
    let order = orders::visible(&state, acting(&caller), id).await?;
    Ok(Json(order.shown(&state.core)))
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
    orders::visible(&state, acting(&caller), id).await?;
    // Payments are read from the store: everything journaled so far is written first.
    state.store.written().await?;
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
    let (body, key) = request.into_parts();
    let checked = text(&body.method, "method", 64).and_then(|method| {
        Ok((
            method,
            int_in(&body.amount_cents, "amount_cents", 0..=i64::MAX)?,
        ))
    });
    match checked {
        Ok((method, amount_cents)) => {
            let step = OrderStep::Pay {
                id,
                caller: acting(&caller),
                key,
                method,
                amount_cents,
            };
            Ok(inventory::run(&state, Operation::Order(step)).await)
        }
        Err(error) => idempotency::refuse_keyed(&state, caller.user_id, key, error).await,
    }
}

#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders", security(("bearer" = [])), params(("id" = Uuid, Path)), responses((status = 200, body = Order), (status = 403, description = "A paid order is cancelled by an operator only", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "order_not_pending", body = ErrorBody), (status = 503, description = "overloaded, or not confirmed durable in time: retry with the same Idempotency-Key", body = ErrorBody)))]
async fn cancel(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
) -> Response {
    let step = OrderStep::Cancel {
        id,
        caller: acting(&caller),
    };
    inventory::run(&state, Operation::Order(step)).await
}

#[derive(Deserialize, ToSchema)]
struct Step {
    status: String,
    tracking_number: Option<String>,
}

impl Step {
    /// The step an operator may take (shipped or delivered), and the tracking number.
    fn parse(self) -> Result<(Shipping, Option<String>)> {
        let next = match OrderStatus::parse(&self.status) {
            Some(OrderStatus::Shipped) => Shipping::Shipped,
            Some(OrderStatus::Delivered) => Shipping::Delivered,
            _ => {
                return Err(AppError::validation(
                    "status",
                    "must be shipped or delivered",
                ));
            }
        };
        let tracking_number = self
            .tracking_number
            .as_deref()
            .map(|t| text(t, "tracking_number", 128))
            .transpose()?;
        Ok((next, tracking_number))
    }
}

#[utoipa::path(patch, path = "/orders/{id}/status", tag = "orders", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = Step, responses((status = 200, body = Order), (status = 403, description = "The role may not do this", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "An illegal step", body = ErrorBody), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn set_status(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
    Json(body): Json<Step>,
) -> Result<Response> {
    caller.require(Role::Operator)?;
    let (next, tracking_number) = body.parse()?;
    let step = OrderStep::Advance {
        id,
        caller: acting(&caller),
        next,
        tracking_number,
    };
    Ok(inventory::run(&state, Operation::Order(step)).await)
}
