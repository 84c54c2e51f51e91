//! Users as the API shows them, their queries, and (admin only) `PUT /users/{id}/role`
//! and `PUT /users/{id}/status`: a disabled user's tokens stop working at once.

use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::openapi::ErrorBody;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgPool};

use super::extract::{Json, Path};
use crate::auth::Role;
use crate::error::{AppError, Result};
use crate::http::AppState;
use crate::http::caller::Caller;

/// `User` of API.md: never a password hash or TOTP secret.
#[derive(Debug, Clone, Serialize, FromRow, ToSchema)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub phone: Option<String>,
    pub name: String,
    pub role: String,
    pub totp_enabled: bool,
    /// `active`, or `disabled` (signing in and every token refused).
    pub status: String,
    pub created_at: DateTime<Utc>,
}

const USER_COLUMNS: &str = "id, email, phone, name, role, totp_enabled,
    CASE WHEN disabled_at IS NULL THEN 'active' ELSE 'disabled' END AS status, created_at";

#[tracing::instrument(skip_all)]
pub async fn find(pool: &PgPool, id: i64) -> Result<User> {
    sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("user {id}")))
}

/// A new user; unique email or phone violations are 409.
#[tracing::instrument(skip_all)]
pub async fn insert(
    pool: &PgPool,
    email: &str,
    phone: Option<&str>,
    name: &str,
    role: Role,
    password_hash: &str,
) -> Result<User> {
    sqlx::query_as(&format!(
        "INSERT INTO users (email, phone, name, role, password_hash) VALUES ($1, $2, $3, $4, $5)
         RETURNING {USER_COLUMNS}"
    ))
    .bind(email)
    .bind(phone)
    .bind(name)
    .bind(role.as_str())
    .bind(password_hash)
    .fetch_one(pool)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.constraint() == Some("users_email_key") => {
            AppError::conflict("a user with this email exists")
        }
        sqlx::Error::Database(db) if db.constraint() == Some("users_phone_key") => {
            AppError::conflict("a user with this phone exists")
        }
        _ => e.into(),
    })
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(set_role))
        .routes(routes!(set_status))
}

#[derive(Deserialize, ToSchema)]
struct RoleBody {
    role: String,
}

#[utoipa::path(put, path = "/users/{id}/role", tag = "users", security(("bearer" = [])), params(("id" = i64, Path, description = "User id")), request_body = RoleBody, responses((status = 200, body = User), (status = 403, description = "The role may not do this", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn set_role(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<i64>,
    Json(body): Json<RoleBody>,
) -> Result<Json<User>> {
    caller.require(Role::Admin)?;
    let role = Role::parse(&body.role)
        .ok_or_else(|| AppError::validation("role", "must be customer, operator or admin"))?;
    let updated = sqlx::query("UPDATE users SET role = $1 WHERE id = $2")
        .bind(role.as_str())
        .bind(id)
        .execute(&state.db)
        .await?;
    if updated.rows_affected() == 0 {
        return Err(AppError::NotFound(format!("user {id}")));
    }
    state.auth.set_role(id, role);
    Ok(Json(find(&state.db, id).await?))
}

#[derive(Deserialize, ToSchema)]
struct StatusBody {
    /// `active` or `disabled`.
    status: String,
}

#[utoipa::path(put, path = "/users/{id}/status", tag = "users", security(("bearer" = [])), params(("id" = i64, Path, description = "User id")), request_body = StatusBody, responses((status = 200, body = User), (status = 403, description = "The role may not do this", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "An admin may not disable itself", body = ErrorBody)))]
async fn set_status(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<i64>,
    Json(body): Json<StatusBody>,
) -> Result<Json<User>> {
    caller.require(Role::Admin)?;
    let disabled = match body.status.as_str() {
        "active" => false,
        "disabled" => true,
        _ => return Err(AppError::validation("status", "must be active or disabled")),
    };
    if disabled && id == caller.user_id {
        return Err(AppError::conflict("an admin may not disable itself"));
    }
    let updated = sqlx::query(
        "UPDATE users SET disabled_at = CASE WHEN $1 THEN coalesce(disabled_at, now()) END
         WHERE id = $2",
    )
    .bind(disabled)
    .bind(id)
    .execute(&state.db)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(AppError::NotFound(format!("user {id}")));
    }
    state.auth.forget(id);
    Ok(Json(find(&state.db, id).await?))
}
