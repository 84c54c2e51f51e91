//! `/auth`: register, login (by email or phone, with TOTP once enabled), logout, me, and
//! TOTP setup and verification.

use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::openapi::ErrorBody;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::extract::{Json, text};
use super::users::{self, User};
use crate::auth::{Role, password, totp};
use crate::error::{AppError, Result};
use crate::http::AppState;
use crate::http::caller::Caller;

pub fn router(state: &AppState) -> OpenApiRouter<AppState> {
    let limited = OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::rate_limit::limit,
        ));
    OpenApiRouter::new()
        .merge(limited)
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(totp_setup))
        .routes(routes!(totp_verify))
}

#[derive(Deserialize, ToSchema)]
struct Register {
    email: String,
    password: String,
    name: String,
    phone: Option<String>,
}

/// A valid email address, lower-cased.
pub fn email(value: &str) -> Result<String> {
    let value = value.trim();
    if value.len() > 254 || !email_address::EmailAddress::is_valid(value) {
        return Err(AppError::validation(
            "email",
            "must be a valid email address",
        ));
    }
    Ok(value.to_lowercase())
}

/// 8 to 72 bytes (bcrypt reads no further than 72).
pub fn password_ok(value: &str) -> Result<()> {
    if value.chars().count() < 8 || value.len() > 72 {
        return Err(AppError::validation(
            "password",
            "must have 8 to 72 characters",
        ));
    }
    Ok(())
}

/// An international number: an optional `+` and 7 to 15 digits.
fn phone(value: &str) -> Result<String> {
    let value = value.trim();
    let digits = value.strip_prefix('+').unwrap_or(value);
    if !(7..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AppError::validation(
            "phone",
            "must be 7 to 15 digits, optionally after a +",
        ));
    }
    Ok(value.to_owned())
}

#[utoipa::path(post, path = "/auth/register", tag = "auth", request_body = Register, responses((status = 201, description = "The new user, as `{\"user\": User}`", body = Object), (status = 409, description = "Email or phone taken", body = ErrorBody), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody), (status = 429, description = "Too many attempts", body = ErrorBody)))]
async fn register(
    State(state): State<AppState>,
    Json(body): Json<Register>,
) -> Result<(StatusCode, Json<Value>)> {
    let email = email(&body.email)?;
    password_ok(&body.password)?;
    let name = text(&body.name, "name", 200)?;
    let phone = body.phone.as_deref().map(phone).transpose()?;
    let hash = password::hash(body.password, state.auth.bcrypt_cost).await?;
    let user = users::insert(
        &state.db,
        &email,
        phone.as_deref(),
        &name,
        Role::Customer,
        &hash,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(json!({ "user": user }))))
}

#[derive(Deserialize, ToSchema)]
struct Login {
    login: String,
    password: String,
    totp: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct LoginAnswer {
    token: String,
    token_type: &'static str,
    expires_in: u64,
    user: User,
}

/// id, password hash, TOTP enabled, TOTP secret, disabled.
type Credentials = (i64, String, bool, Option<String>, bool);

#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = Login, responses((status = 200, body = LoginAnswer), (status = 401, description = "invalid_credentials or totp_required", body = ErrorBody), (status = 429, description = "Too many attempts from this address, or this account is locked after repeated failures; Retry-After says for how long", body = ErrorBody)))]
async fn login(
    State(state): State<AppState>,
    Json(body): Json<Login>,
) -> Result<Json<LoginAnswer>> {
    let found: Option<Credentials> = sqlx::query_as(
        "SELECT id, password_hash, totp_enabled, totp_secret, disabled_at IS NOT NULL FROM users
         WHERE lower(email) = lower($1) OR phone = $1 LIMIT 1",
    )
    .bind(body.login.trim())
    .fetch_optional(&state.db)
    .await?;
    let lockout = &state.auth.lockout;
    if let Some(wait) = found.as_ref().and_then(|(id, ..)| lockout.locked_for(*id)) {
        return Err(AppError::RateLimited {
            retry_after_secs: wait.as_secs_f64().ceil() as u64,
        });
    }
    let hash = found.as_ref().map(|(_, hash, ..)| hash.clone());
    // The same answer, after the same work, for an unknown login and a wrong password.
    if !password::verify(body.password, hash, &state.auth.dummy_hash).await? {
        if let Some((id, ..)) = &found {
            lockout.failed(*id);
        }
        return Err(AppError::Unauthorized {
            code: "invalid_credentials",
            message: "wrong login or password".into(),
        });
    }
    let Some((id, _, totp_enabled, secret, disabled)) = found else {
        return Err(AppError::Internal(
            "verified a login that was not found".into(),
        ));
    };
    if disabled {
        return Err(AppError::unauthorized("this account is disabled"));
    }
    if totp_enabled {
        let user = users::find(&state.db, id).await?;
        let secret =
            secret.ok_or_else(|| AppError::Internal("TOTP enabled without a secret".into()))?;
        let valid = match body.totp.as_deref() {
            Some(code) => match totp::check(&secret, &user.email, code)? {
                // A code already used to sign in (its step or an earlier one) is refused.
                Some(step) => totp::take_step(&state.db, id, step).await?,
                None => false,
            },
            None => false,
        };
        if !valid {
            if body.totp.is_some() {
                lockout.failed(id);
            }
            return Err(AppError::Unauthorized {
                code: "totp_required",
                message: "a valid TOTP code is required for this account".into(),
            });
        }
    }
    lockout.succeeded(id);
    let user = users::find(&state.db, id).await?;
    Ok(Json(LoginAnswer {
        token: state.auth.issue(id)?,
        token_type: "Bearer",
        expires_in: state.auth.token_ttl.as_secs(),
        user,
    }))
}

#[utoipa::path(post, path = "/auth/logout", tag = "auth", security(("bearer" = [])), responses((status = 204, description = "The token is refused from now on")))]
async fn logout(State(state): State<AppState>, Caller(caller): Caller) -> Result<StatusCode> {
    state.auth.revoke(&state.db, &caller).await?;
    super::cluster::announce_revoked(&state, caller.jti, caller.expires_at).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/auth/me", tag = "auth", security(("bearer" = [])), responses((status = 200, body = User)))]
async fn me(State(state): State<AppState>, Caller(caller): Caller) -> Result<Json<User>> {
    Ok(Json(users::find(&state.db, caller.user_id).await?))
}

#[utoipa::path(post, path = "/auth/totp/setup", tag = "auth", security(("bearer" = [])), responses((status = 200, description = "`{\"secret\", \"otpauth_uri\"}`", body = Object)))]
async fn totp_setup(State(state): State<AppState>, Caller(caller): Caller) -> Result<Json<Value>> {
    let user = users::find(&state.db, caller.user_id).await?;
    let secret = totp::new_secret();
    let uri = totp::uri(&secret, &user.email)?;
    sqlx::query("UPDATE users SET totp_pending_secret = $1 WHERE id = $2")
        .bind(&secret)
        .bind(caller.user_id)
        .execute(&state.db)
        .await?;
    Ok(Json(json!({ "secret": secret, "otpauth_uri": uri })))
}

#[derive(Deserialize, ToSchema)]
struct Verify {
    code: String,
}

#[utoipa::path(post, path = "/auth/totp/verify", tag = "auth", security(("bearer" = [])), request_body = Verify, responses((status = 200, description = "`{\"totp_enabled\": true}`", body = Object), (status = 409, description = "No setup to verify", body = ErrorBody), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn totp_verify(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(body): Json<Verify>,
) -> Result<Json<Value>> {
    let (email, pending): (String, Option<String>) =
        sqlx::query_as("SELECT email, totp_pending_secret FROM users WHERE id = $1")
            .bind(caller.user_id)
            .fetch_optional(&state.db)
            .await?
            .ok_or_else(|| AppError::unauthorized("the token's user no longer exists"))?;
    let secret = pending.ok_or_else(|| AppError::conflict("call /auth/totp/setup first"))?;
    // Verifying is not a sign-in: the code's step is not taken here.
    if totp::check(&secret, &email, &body.code)?.is_none() {
        return Err(AppError::validation("code", "the code is wrong or expired"));
    }
    sqlx::query(
        "UPDATE users SET totp_secret = totp_pending_secret, totp_pending_secret = NULL, totp_enabled = TRUE
         WHERE id = $1",
    )
    .bind(caller.user_id)
    .execute(&state.db)
    .await?;
    Ok(Json(json!({ "totp_enabled": true })))
}
