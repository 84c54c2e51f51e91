//! `/products`: the catalog. Writes go to PostgreSQL first, then to the in-memory catalog.

use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::openapi::ErrorBody;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Number;
use sqlx::FromRow;

use super::extract::{Json, List, Page, Path, Query, int_in, int_opt, text, text_opt};
use crate::auth::Role;
use crate::catalog::ProductInfo;
use crate::error::{AppError, Result, on_constraint};
use crate::http::AppState;
use crate::http::caller::Caller;
use crate::inventory::{self, Operation};

#[derive(Debug, Serialize, Deserialize, FromRow, ToSchema)]
pub struct Product {
    pub id: i64,
    pub sku: String,
    pub name: String,
    pub description: Option<String>,
    pub price_cents: i64,
    pub low_stock_threshold: i64,
    /// Units that may be reserved beyond what is available, over all warehouses
    /// (backorders, filled by the next receipts, oldest first).
    pub backorder_limit: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, sku, name, description, price_cents, low_stock_threshold, backorder_limit,
                       created_at, updated_at";
const MAX_PRICE: i64 = 1_000_000_000_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update, delete))
}

#[derive(Deserialize, ToSchema)]
struct CreateProduct {
    sku: String,
    name: String,
    description: Option<String>,
    #[schema(value_type = i64)]
    price_cents: Number,
    #[schema(value_type = Option<i64>)]
    low_stock_threshold: Option<Number>,
    #[schema(value_type = Option<i64>)]
    backorder_limit: Option<Number>,
}

#[utoipa::path(post, path = "/products", tag = "catalog", security(("bearer" = [])), request_body = CreateProduct, responses((status = 201, body = Product), (status = 403, description = "The role may not do this", body = ErrorBody), (status = 409, description = "The sku is taken", body = ErrorBody), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(body): Json<CreateProduct>,
) -> Result<(StatusCode, Json<Product>)> {
    caller.require(Role::Operator)?;
    let sku = text(&body.sku, "sku", 64)?;
    let name = text(&body.name, "name", 200)?;
    let price = int_in(&body.price_cents, "price_cents", 0..=MAX_PRICE)?;
    let threshold = int_opt(
        body.low_stock_threshold.as_ref(),
        "low_stock_threshold",
        0..=1_000_000_000,
    )?
    .unwrap_or(0);
    let backorder_limit = int_opt(
        body.backorder_limit.as_ref(),
        "backorder_limit",
        0..=1_000_000_000,
    )?
    .unwrap_or(0);
    let product: Product = sqlx::query_as(&format!(
        "INSERT INTO products (sku, name, description, price_cents, low_stock_threshold, backorder_limit)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
    ))
    .bind(sku)
    .bind(name)
    .bind(body.description)
    .bind(price)
    .bind(threshold)
    .bind(backorder_limit)
    .fetch_one(&state.db)
    .await
    .map_err(|e| on_constraint(e, "products_sku_key", "a product with this sku exists"))?;
    state.catalog.put(product.id, info(&product));
    Ok((StatusCode::CREATED, Json(product)))
}

fn info(product: &Product) -> ProductInfo {
    ProductInfo {
        price_cents: product.price_cents,
        low_stock_threshold: product.low_stock_threshold,
        backorder_limit: product.backorder_limit as u64,
    }
}

#[derive(Deserialize)]
struct Search {
    q: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[utoipa::path(get, path = "/products", tag = "catalog", security(("bearer" = [])), params(("q" = Option<String>, Query, description = "Name or sku contains"), ("limit" = Option<i64>, Query, description = "At most 500, default 50"), ("offset" = Option<i64>, Query)), responses((status = 200, description = "`{items: [Product], total}`", body = Object), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    Caller(_caller): Caller,
    Query(search): Query<Search>,
) -> Result<Json<List<Product>>> {
    let pattern = search.q.map(|q| {
        format!(
            "%{}%",
            q.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        )
    });
    let filter = "deleted_at IS NULL AND ($1::text IS NULL OR name ILIKE $1 OR sku ILIKE $1)";
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM products WHERE {filter}"))
        .bind(&pattern)
        .fetch_one(&state.db)
        .await?;
    let items = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM products WHERE {filter} ORDER BY id LIMIT $2 OFFSET $3"
    ))
    .bind(&pattern)
    .bind(Page::new(search.limit, search.offset).limit()?)
    .bind(Page::new(search.limit, search.offset).offset()?)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(List { items, total }))
}

pub async fn find(state: &AppState, id: i64) -> Result<Product> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM products WHERE id = $1 AND deleted_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| AppError::NotFound(format!("product {id}")))
}

#[utoipa::path(get, path = "/products/{id}", tag = "catalog", security(("bearer" = [])), params(("id" = i64, Path, description = "Id")), responses((status = 200, body = Product), (status = 404, description = "Unknown id", body = ErrorBody)))]
async fn read(
    State(state): State<AppState>,
    Caller(_caller): Caller,
    Path(id): Path<i64>,
) -> Result<Json<Product>> {
    Ok(Json(find(&state, id).await?))
}

#[derive(Deserialize, ToSchema)]
struct UpdateProduct {
    sku: Option<String>,
    name: Option<String>,
    description: Option<String>,
    #[schema(value_type = Option<i64>)]
    price_cents: Option<Number>,
    #[schema(value_type = Option<i64>)]
    low_stock_threshold: Option<Number>,
    #[schema(value_type = Option<i64>)]
    backorder_limit: Option<Number>,
}

#[utoipa::path(patch, path = "/products/{id}", tag = "catalog", security(("bearer" = [])), params(("id" = i64, Path, description = "Id")), request_body = UpdateProduct, responses((status = 200, body = Product), (status = 403, description = "The role may not do this", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "The sku is taken", body = ErrorBody), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn update(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<i64>,
    Json(body): Json<UpdateProduct>,
) -> Result<Json<Product>> {
    caller.require(Role::Operator)?;
    let sku = text_opt(body.sku.as_deref(), "sku", 64)?;
    let name = text_opt(body.name.as_deref(), "name", 200)?;
    let price = int_opt(body.price_cents.as_ref(), "price_cents", 0..=MAX_PRICE)?;
    let threshold = int_opt(
        body.low_stock_threshold.as_ref(),
        "low_stock_threshold",
        0..=1_000_000_000,
    )?;
    let backorder_limit = int_opt(
        body.backorder_limit.as_ref(),
        "backorder_limit",
        0..=1_000_000_000,
    )?;
    let product: Product = sqlx::query_as(&format!(
        "UPDATE products SET sku = COALESCE($2, sku), name = COALESCE($3, name),
           description = COALESCE($4, description), price_cents = COALESCE($5, price_cents),
           low_stock_threshold = COALESCE($6, low_stock_threshold),
           backorder_limit = COALESCE($7, backorder_limit), updated_at = now()
         WHERE id = $1 AND deleted_at IS NULL RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(sku)
    .bind(name)
    .bind(body.description)
    .bind(price)
    .bind(threshold)
    .bind(backorder_limit)
    .fetch_optional(&state.db)
    .await
    .map_err(|e| on_constraint(e, "products_sku_key", "a product with this sku exists"))?
    .ok_or_else(|| AppError::NotFound(format!("product {id}")))?;
    state.catalog.put(product.id, info(&product));
    Ok(Json(product))
}

/// Deleting keeps the product's ledger; refused while any line holds stock or reservations.
#[utoipa::path(delete, path = "/products/{id}", tag = "catalog", security(("bearer" = [])), params(("id" = i64, Path, description = "Id")), responses((status = 204, description = "Deleted (its ledger is kept)"), (status = 403, description = "The role may not do this", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "It still has stock or pending reservations", body = ErrorBody)))]
async fn delete(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<i64>,
) -> Result<axum::response::Response> {
    caller.require(Role::Operator)?;
    find(&state, id).await?;
    Ok(inventory::run(&state, Operation::Retire { product: id }).await)
}
