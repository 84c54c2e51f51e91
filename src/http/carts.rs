//! `/carts`: a customer's carts. Each handler parses and runs one step of the inventory
//! service ([`crate::inventory::carts`]), which serves it on the owner of the customer's
//! shard; see [`crate::carts`] for what a cart is and how its changes are journaled.

use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::openapi::ErrorBody;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Number, Value};
use uuid::Uuid;

use super::extract::{Json, Page, Path, Query, level};
use super::idempotency::Idempotent;
use crate::error::Result;
use crate::http::AppState;
use crate::http::caller::Caller;
use crate::inventory::carts::{Cart, CartStep};
use crate::inventory::{self, Operation};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, delete))
        .routes(routes!(set_item, remove_item))
        .routes(routes!(checkout))
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
) -> Response {
    let step = CartStep::Create {
        user: caller.user_id,
        shop: body.shop_id,
        hold: body.hold.unwrap_or(false),
    };
    inventory::run(&state, Operation::Cart(step)).await
}

#[utoipa::path(get, path = "/carts", tag = "carts", security(("bearer" = [])), params(("limit" = Option<i64>, Query, description = "At most 500, default 50"), ("offset" = Option<i64>, Query)), responses((status = 200, description = "`{items: [Cart], total}`: the caller's carts, newest first", body = Object), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(page): Query<Page>,
) -> Result<Response> {
    let step = CartStep::List {
        user: caller.user_id,
        limit: page.limit()?,
        offset: page.offset()?,
    };
    Ok(inventory::run(&state, Operation::Cart(step)).await)
}

#[utoipa::path(get, path = "/carts/{id}", tag = "carts", security(("bearer" = [])), params(("id" = Uuid, Path)), responses((status = 200, body = Cart), (status = 404, description = "Unknown, or another customer's", body = ErrorBody)))]
async fn read(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
) -> Response {
    let step = CartStep::Read {
        user: caller.user_id,
        id,
    };
    inventory::run(&state, Operation::Cart(step)).await
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
) -> Result<Response> {
    let quantity = level(&body.quantity, "quantity")?;
    Ok(change(&state, caller.user_id, id, product_id, quantity as u64).await)
}

#[utoipa::path(delete, path = "/carts/{id}/items/{product_id}", tag = "carts", security(("bearer" = [])), params(("id" = Uuid, Path), ("product_id" = i64, Path)), responses((status = 200, body = Cart), (status = 404, description = "Unknown cart", body = ErrorBody), (status = 409, description = "The cart is checked out", body = ErrorBody)))]
async fn remove_item(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((id, product_id)): Path<(Uuid, i64)>,
) -> Response {
    change(&state, caller.user_id, id, product_id, 0).await
}

/// Sets one item's quantity (0 removes it), re-holding a held cart's items all or nothing.
async fn change(state: &AppState, user: i64, id: Uuid, product: i64, quantity: u64) -> Response {
    let step = CartStep::Set {
        user,
        id,
        product,
        quantity,
    };
    inventory::run(state, Operation::Cart(step)).await
}

#[utoipa::path(delete, path = "/carts/{id}", tag = "carts", security(("bearer" = [])), params(("id" = Uuid, Path)), responses((status = 204, description = "Deleted; a held cart's stock is released"), (status = 404, description = "Unknown, or another customer's", body = ErrorBody)))]
async fn delete(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
) -> Response {
    let step = CartStep::Delete {
        user: caller.user_id,
        id,
    };
    inventory::run(&state, Operation::Cart(step)).await
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
) -> Response {
    let (body, key) = request.into_parts();
    let step = CartStep::Checkout {
        user: caller.user_id,
        id,
        key,
        shipping_address: body.shipping_address.map(|v| v.to_string()),
        contact: body.contact.map(|v| v.to_string()),
    };
    inventory::run(&state, Operation::Cart(step)).await
}
