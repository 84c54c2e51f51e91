//! `/transfers`: moving available stock between two warehouses, through the core, which
//! never leaves it half-moved.

use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::openapi::ErrorBody;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use serde_json::Number;

use super::extract::{Json, List, Page, Query, quantity};
use super::idempotency::{self, Idempotent};
use crate::auth::Identity;
use crate::error::{AppError, Result};
use crate::http::AppState;
use crate::http::caller::Caller;
use crate::inventory::lines::{Move, Transfer};
use crate::inventory::{self, Operation};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list, create))
}

#[derive(Deserialize, ToSchema)]
struct CreateTransfer {
    from_warehouse_id: i64,
    to_warehouse_id: i64,
    product_id: i64,
    #[schema(value_type = i64)]
    quantity: Number,
    /// The client's own reference, up to 255 chars; kept on the transfer and its movements.
    reference: Option<String>,
}

#[utoipa::path(post, path = "/transfers", tag = "transfers", security(("bearer" = [])), params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 characters; repeats answer the first answer")), request_body = CreateTransfer, responses((status = 201, body = Transfer), (status = 403, description = "The role may not do this", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "insufficient_stock or warehouse_inactive", body = ErrorBody), (status = 422, description = "Same warehouse, or a bad quantity", body = ErrorBody), (status = 503, description = "overloaded, or not confirmed durable in time: retry with the same Idempotency-Key", body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request: Idempotent<CreateTransfer>,
) -> Result<Response> {
    state.access(&caller).scope()?;
    let (body, key) = request.into_parts();
    match moved(&state, &caller, body) {
        Ok(moved) => Ok(inventory::run(&state, Operation::Transfer { key, moved }).await),
        Err(error) => idempotency::refuse_keyed(&state, caller.user_id, key, error).await,
    }
}

/// The move a transfer asks for, checked.
fn moved(state: &AppState, caller: &Identity, body: CreateTransfer) -> Result<Move> {
    let quantity = quantity(&body.quantity, "quantity")?.get();
    let made = super::stock::made(caller, body.reference.as_deref())?;
    if state.catalog.get(body.product_id).is_none() {
        return Err(AppError::NotFound(format!("product {}", body.product_id)));
    }
    state
        .access(caller)
        .transfer(body.from_warehouse_id, body.to_warehouse_id)?;
    Ok(Move {
        from: body.from_warehouse_id,
        to: body.to_warehouse_id,
        product: body.product_id,
        quantity,
        made,
    })
}

#[utoipa::path(get, path = "/transfers", tag = "transfers", security(("bearer" = [])), params(("limit" = Option<i64>, Query, description = "At most 500, default 50"), ("offset" = Option<i64>, Query)), responses((status = 200, description = "`{items: [Transfer], total}`", body = Object), (status = 403, description = "The role may not do this", body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(page): Query<Page>,
) -> Result<Json<List<Transfer>>> {
    let scope = state.access(&caller).scope()?;
    // A shop member sees the transfers that touch its shop's warehouses.
    let within = scope.warehouse_ids(state.core.warehouses());
    let condition =
        "$1::bigint[] IS NULL OR from_warehouse_id = ANY($1) OR to_warehouse_id = ANY($1)";
    let total: i64 =
        sqlx::query_scalar(&format!("SELECT count(*) FROM transfers WHERE {condition}"))
            .bind(&within)
            .fetch_one(&state.db)
            .await?;
    let items = sqlx::query_as(&format!(
        "SELECT id, status, from_warehouse_id, to_warehouse_id, product_id, quantity, actor_user_id,
                reference, created_at
         FROM transfers WHERE {condition} ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
    ))
    .bind(&within)
    .bind(page.limit()?)
    .bind(page.offset()?)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(List { items, total }))
}
