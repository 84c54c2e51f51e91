//! `/warehouses`: codes, names, allocation priority and status. PostgreSQL is written
//! first, then the core's directory (and, for a status change, every line of the warehouse).

use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::openapi::ErrorBody;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Number;
use sqlx::FromRow;
use stockline_actors::WarehouseInfo;

use super::extract::{Json, List, Page, Path, Query, int_in, text, text_opt};
use crate::error::{AppError, Result, on_constraint};
use crate::http::AppState;
use crate::http::caller::Caller;

#[derive(Debug, Serialize, Deserialize, FromRow, ToSchema)]
pub struct Warehouse {
    pub id: i64,
    pub code: String,
    pub name: String,
    pub location: Option<String>,
    pub priority: i32,
    pub status: String,
    /// The shop that owns it; null: the platform's own.
    pub shop_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Warehouse {
    fn info(&self) -> WarehouseInfo {
        WarehouseInfo {
            priority: self.priority,
            active: self.status == "active",
            shop_id: self.shop_id,
        }
    }
}

const COLUMNS: &str = "id, code, name, location, priority, status, shop_id, created_at, updated_at";
const CODE_TAKEN: &str = "a warehouse with this code exists";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update))
        .routes(routes!(set_status))
}

#[derive(Deserialize, ToSchema)]
struct CreateWarehouse {
    code: String,
    name: String,
    location: Option<String>,
    #[schema(value_type = Option<i64>)]
    priority: Option<Number>,
    /// The owning shop (operators: any; a shop owner: its own); omitted: the platform's.
    shop_id: Option<i64>,
}

fn priority(n: &Number) -> Result<i32> {
    Ok(int_in(n, "priority", 0..=1_000_000)? as i32)
}

#[utoipa::path(post, path = "/warehouses", tag = "catalog", security(("bearer" = [])), request_body = CreateWarehouse, responses((status = 201, body = Warehouse), (status = 403, description = "The role may not do this (a shop owner: another shop's or the platform's)", body = ErrorBody), (status = 404, description = "Unknown shop_id", body = ErrorBody), (status = 409, description = "The code is taken", body = ErrorBody), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(body): Json<CreateWarehouse>,
) -> Result<(StatusCode, Json<Warehouse>)> {
    let shop_id = body.shop_id.map(|s| state.shops.require(s)).transpose()?;
    state.access(&caller).create_warehouse(shop_id)?;
    let code = text(&body.code, "code", 64)?;
    let name = text(&body.name, "name", 200)?;
    location(body.location.as_deref())?;
    let priority = body
        .priority
        .as_ref()
        .map(priority)
        .transpose()?
        .unwrap_or(100);
    let warehouse: Warehouse = sqlx::query_as(&format!(
        "INSERT INTO warehouses (code, name, location, priority, shop_id) VALUES ($1, $2, $3, $4, $5)
         RETURNING {COLUMNS}"
    ))
    .bind(code)
    .bind(name)
    .bind(body.location)
    .bind(priority)
    .bind(shop_id)
    .fetch_one(&state.db)
    .await
    .map_err(|e| on_constraint(e, "warehouses_code_key", CODE_TAKEN))?;
    state
        .core
        .upsert_warehouse(warehouse.id, warehouse.info())
        .await?;
    Ok((StatusCode::CREATED, Json(warehouse)))
}

#[utoipa::path(get, path = "/warehouses", tag = "catalog", security(("bearer" = [])), params(("limit" = Option<i64>, Query, description = "At most 500, default 50"), ("offset" = Option<i64>, Query)), responses((status = 200, description = "`{items: [Warehouse], total}`", body = Object), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    Caller(_caller): Caller,
    Query(page): Query<Page>,
) -> Result<Json<List<Warehouse>>> {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM warehouses")
        .fetch_one(&state.db)
        .await?;
    let items = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM warehouses ORDER BY priority, id LIMIT $1 OFFSET $2"
    ))
    .bind(page.limit()?)
    .bind(page.offset()?)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(List { items, total }))
}

pub async fn find(state: &AppState, id: i64) -> Result<Warehouse> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM warehouses WHERE id = $1"))
        .bind(id)
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("warehouse {id}")))
}

#[utoipa::path(get, path = "/warehouses/{id}", tag = "catalog", security(("bearer" = [])), params(("id" = i64, Path, description = "Id")), responses((status = 200, body = Warehouse), (status = 404, description = "Unknown id", body = ErrorBody)))]
async fn read(
    State(state): State<AppState>,
    Caller(_caller): Caller,
    Path(id): Path<i64>,
) -> Result<Json<Warehouse>> {
    Ok(Json(find(&state, id).await?))
}

#[derive(Deserialize, ToSchema)]
struct UpdateWarehouse {
    code: Option<String>,
    name: Option<String>,
    location: Option<String>,
    #[schema(value_type = Option<i64>)]
    priority: Option<Number>,
}

#[utoipa::path(patch, path = "/warehouses/{id}", tag = "catalog", security(("bearer" = [])), params(("id" = i64, Path, description = "Id")), request_body = UpdateWarehouse, responses((status = 200, body = Warehouse), (status = 403, description = "The role may not do this", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "The code is taken", body = ErrorBody), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn update(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<i64>,
    Json(body): Json<UpdateWarehouse>,
) -> Result<Json<Warehouse>> {
    state.access(&caller).warehouse(id)?;
    let code = text_opt(body.code.as_deref(), "code", 64)?;
    let name = text_opt(body.name.as_deref(), "name", 200)?;
    location(body.location.as_deref())?;
    let priority = body.priority.as_ref().map(priority).transpose()?;
    let warehouse: Warehouse = sqlx::query_as(&format!(
        "UPDATE warehouses SET code = COALESCE($2, code), name = COALESCE($3, name),
           location = COALESCE($4, location), priority = COALESCE($5, priority), updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(code)
    .bind(name)
    .bind(body.location)
    .bind(priority)
    .fetch_optional(&state.db)
    .await
    .map_err(|e| on_constraint(e, "warehouses_code_key", CODE_TAKEN))?
    .ok_or_else(|| AppError::NotFound(format!("warehouse {id}")))?;
    state
        .core
        .upsert_warehouse(warehouse.id, warehouse.info())
        .await?;
    Ok(Json(warehouse))
}

#[derive(Deserialize, ToSchema)]
struct Status {
    status: String,
}

#[utoipa::path(put, path = "/warehouses/{id}/status", tag = "catalog", security(("bearer" = [])), params(("id" = i64, Path, description = "Id")), request_body = Status, responses((status = 200, body = Warehouse), (status = 403, description = "The role may not do this", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn set_status(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<i64>,
    Json(body): Json<Status>,
) -> Result<Json<Warehouse>> {
    state.access(&caller).warehouse(id)?;
    if !matches!(body.status.as_str(), "active" | "inactive") {
        return Err(AppError::validation("status", "must be active or inactive"));
    }
    let warehouse: Warehouse = sqlx::query_as(&format!(
        "UPDATE warehouses SET status = $2, updated_at = now() WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(&body.status)
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| AppError::NotFound(format!("warehouse {id}")))?;
    state
        .core
        .upsert_warehouse(warehouse.id, warehouse.info())
        .await?;
    Ok(Json(warehouse))
}

/// A warehouse's location: free text, at most [`MAX_LOCATION`] characters (a tenant's text
/// is bounded like every other field, not by the 1 MiB body alone).
fn location(value: Option<&str>) -> Result<()> {
    match value {
        Some(text) if text.chars().count() > MAX_LOCATION => Err(AppError::validation(
            "location",
            format!("must have at most {MAX_LOCATION} characters"),
        )),
        _ => Ok(()),
    }
}

const MAX_LOCATION: usize = 500;
