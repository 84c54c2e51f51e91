//! `/shops`: a marketplace's shops, their members, and a product's availability over one
//! shop's warehouses. Who may do what is asked of the policy in [`crate::shops`].

use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::openapi::ErrorBody;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;

use super::extract::{Json, List, Page, Path, Query, text, text_opt};
use crate::auth::Role;
use crate::error::{AppError, Result, on_constraint};
use crate::http::AppState;
use crate::http::caller::Caller;
use crate::inventory::Operation;
use crate::shops::ShopRole;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update))
        .routes(routes!(members))
        .routes(routes!(set_member, remove_member))
        .routes(routes!(availability))
}

#[derive(Debug, Serialize, Deserialize, FromRow, ToSchema)]
pub struct Shop {
    pub id: i64,
    pub code: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, code, name, created_at, updated_at";
const CODE_TAKEN: &str = "a shop with this code exists";

#[derive(Deserialize, ToSchema)]
struct CreateShop {
    code: String,
    name: String,
}

#[utoipa::path(post, path = "/shops", tag = "shops", security(("bearer" = [])), request_body = CreateShop, responses((status = 201, body = Shop), (status = 403, description = "Admins only", body = ErrorBody), (status = 409, description = "The code is taken", body = ErrorBody), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(body): Json<CreateShop>,
) -> Result<(StatusCode, Json<Shop>)> {
    caller.require(Role::Admin)?;
    let code = text(&body.code, "code", 64)?;
    let name = text(&body.name, "name", 200)?;
    let shop: Shop = sqlx::query_as(&format!(
        "INSERT INTO shops (code, name) VALUES ($1, $2) RETURNING {COLUMNS}"
    ))
    .bind(code)
    .bind(name)
    .fetch_one(&state.db)
    .await
    .map_err(|e| on_constraint(e, "shops_code_key", CODE_TAKEN))?;
    state.shops.add(shop.id);
    Ok((StatusCode::CREATED, Json(shop)))
}

#[utoipa::path(get, path = "/shops", tag = "shops", security(("bearer" = [])), params(("limit" = Option<i64>, Query, description = "At most 500, default 50"), ("offset" = Option<i64>, Query)), responses((status = 200, description = "`{items: [Shop], total}`", body = Object), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    Caller(_caller): Caller,
    Query(page): Query<Page>,
) -> Result<Json<List<Shop>>> {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM shops")
        .fetch_one(&state.db)
        .await?;
    let items = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM shops ORDER BY id LIMIT $1 OFFSET $2"
    ))
    .bind(page.limit()?)
    .bind(page.offset()?)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(List { items, total }))
}

#[utoipa::path(get, path = "/shops/{id}", tag = "shops", security(("bearer" = [])), params(("id" = i64, Path)), responses((status = 200, body = Shop), (status = 404, description = "Unknown id", body = ErrorBody)))]
async fn read(
    State(state): State<AppState>,
    Caller(_caller): Caller,
    Path(id): Path<i64>,
) -> Result<Json<Shop>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM shops WHERE id = $1"))
        .bind(id)
        .fetch_optional(&state.db)
        .await?
        .map(Json)
        .ok_or_else(|| AppError::NotFound(format!("shop {id}")))
}

#[derive(Deserialize, ToSchema)]
struct UpdateShop {
    code: Option<String>,
    name: Option<String>,
}

#[utoipa::path(patch, path = "/shops/{id}", tag = "shops", security(("bearer" = [])), params(("id" = i64, Path)), request_body = UpdateShop, responses((status = 200, body = Shop), (status = 403, description = "Admins and the shop's owners only", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "The code is taken", body = ErrorBody), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn update(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<i64>,
    Json(body): Json<UpdateShop>,
) -> Result<Json<Shop>> {
    state.shops.require(id)?;
    state.access(&caller).manage_shop(id)?;
    let code = text_opt(body.code.as_deref(), "code", 64)?;
    let name = text_opt(body.name.as_deref(), "name", 200)?;
    sqlx::query_as(&format!(
        "UPDATE shops SET code = COALESCE($2, code), name = COALESCE($3, name), updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(code)
    .bind(name)
    .fetch_optional(&state.db)
    .await
    .map_err(|e| on_constraint(e, "shops_code_key", CODE_TAKEN))?
    .map(Json)
    .ok_or_else(|| AppError::NotFound(format!("shop {id}")))
}

/// One membership.
#[derive(Debug, Serialize, Deserialize, FromRow, ToSchema)]
pub struct Member {
    pub shop_id: i64,
    pub user_id: i64,
    pub role: String,
}

#[utoipa::path(get, path = "/shops/{id}/members", tag = "shops", security(("bearer" = [])), params(("id" = i64, Path), ("limit" = Option<i64>, Query, description = "At most 500, default 50"), ("offset" = Option<i64>, Query)), responses((status = 200, description = "`{items: [Member], total}`", body = Object), (status = 403, description = "Admins and the shop's members only", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody)))]
async fn members(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<i64>,
    Query(page): Query<Page>,
) -> Result<Json<List<Member>>> {
    state.shops.require(id)?;
    state.access(&caller).see_members(id)?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM shop_members WHERE shop_id = $1")
        .bind(id)
        .fetch_one(&state.db)
        .await?;
    let items: Vec<Member> = sqlx::query_as(
        "SELECT shop_id, user_id, role FROM shop_members WHERE shop_id = $1 ORDER BY user_id
         LIMIT $2 OFFSET $3",
    )
    .bind(id)
    .bind(page.limit()?)
    .bind(page.offset()?)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(List { items, total }))
}

#[derive(Deserialize, ToSchema)]
struct MemberRole {
    /// `shop_owner` or `shop_staff`.
    role: String,
}

#[utoipa::path(put, path = "/shops/{id}/members/{user_id}", tag = "shops", security(("bearer" = [])), params(("id" = i64, Path), ("user_id" = i64, Path)), request_body = MemberRole, responses((status = 200, body = Member), (status = 403, description = "Admins and the shop's owners only", body = ErrorBody), (status = 404, description = "Unknown shop or user", body = ErrorBody), (status = 422, description = "role is not shop_owner or shop_staff", body = ErrorBody)))]
async fn set_member(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((id, user_id)): Path<(i64, i64)>,
    Json(body): Json<MemberRole>,
) -> Result<Json<Member>> {
    state.shops.require(id)?;
    state.access(&caller).manage_shop(id)?;
    let role = ShopRole::parse(&body.role)
        .ok_or_else(|| AppError::validation("role", "must be shop_owner or shop_staff"))?;
    let member: Member = sqlx::query_as(
        "INSERT INTO shop_members (shop_id, user_id, role)
         SELECT $1, id, $3 FROM users WHERE id = $2
         ON CONFLICT (shop_id, user_id) DO UPDATE SET role = EXCLUDED.role
         RETURNING shop_id, user_id, role",
    )
    .bind(id)
    .bind(user_id)
    .bind(role.as_str())
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| AppError::NotFound(format!("user {user_id}")))?;
    state.shops.set(user_id, id, role);
    Ok(Json(member))
}

#[utoipa::path(delete, path = "/shops/{id}/members/{user_id}", tag = "shops", security(("bearer" = [])), params(("id" = i64, Path), ("user_id" = i64, Path)), responses((status = 204, description = "No longer a member"), (status = 403, description = "Admins and the shop's owners only", body = ErrorBody), (status = 404, description = "Unknown shop, or not a member", body = ErrorBody)))]
async fn remove_member(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((id, user_id)): Path<(i64, i64)>,
) -> Result<StatusCode> {
    state.shops.require(id)?;
    state.access(&caller).manage_shop(id)?;
    let removed = sqlx::query("DELETE FROM shop_members WHERE shop_id = $1 AND user_id = $2")
        .bind(id)
        .bind(user_id)
        .execute(&state.db)
        .await?
        .rows_affected();
    if removed == 0 {
        return Err(AppError::NotFound(format!("member {user_id} of shop {id}")));
    }
    state.shops.remove(user_id, id);
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/shops/{id}/products/{product_id}/availability", tag = "shops", security(("bearer" = [])), params(("id" = i64, Path), ("product_id" = i64, Path)), responses((status = 200, description = "As `/products/{id}/availability`, over the shop's warehouses only (totals over its active ones)", body = crate::inventory::stock::Availability), (status = 404, description = "Unknown shop or product", body = ErrorBody)))]
async fn availability(
    State(state): State<AppState>,
    Caller(_caller): Caller,
    Path((id, product_id)): Path<(i64, i64)>,
) -> Result<axum::response::Response> {
    state.shops.require(id)?;
    let operation = Operation::Availability {
        product: product_id,
        shop: Some(id),
    };
    Ok(crate::inventory::run(&state, operation).await)
}
