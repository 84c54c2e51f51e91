//! The axum edge: one file per resource, each with its own `router()`, merged here.

mod auth;
pub mod error;
pub mod extract;
mod health;
pub mod idempotency;
mod orders;
mod products;
pub mod rate_limit;
mod reservations;
mod stock;
mod transfers;
pub mod users;
mod warehouses;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;

use crate::startup::AppState;
use error::AppError;

pub use auth::{email as auth_email, password_ok as auth_password_ok};

/// Bodies over this are refused with 413.
const MAX_BODY: usize = 1024 * 1024;

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(auth::router(&state))
        .merge(users::router())
        .merge(products::router())
        .merge(warehouses::router())
        .merge(stock::router())
        .merge(reservations::router())
        .merge(orders::router())
        .merge(transfers::router());
    Router::new()
        .nest("/api/v1", api)
        .merge(health::router())
        .fallback(|| async { AppError::NotFound("path".into()) })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                axum::Json(serde_json::json!({ "error": {
                    "code": "method_not_allowed",
                    "message": "this path does not take that method",
                    "details": {},
                }})),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}
