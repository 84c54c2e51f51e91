//! The axum edge: one file per resource, each with its own `router()`, merged here.

mod auth;
pub mod error;
pub mod extract;
mod health;
pub mod idempotency;
pub mod openapi;
mod operations;
mod orders;
mod products;
pub mod rate_limit;
mod reservations;
pub mod serve;
mod stock;
mod storable;
mod transfers;
pub mod users;
mod warehouses;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::startup::AppState;
use error::AppError;

pub use auth::{email as auth_email, password_ok as auth_password_ok};
pub use operations::recorder as metrics_recorder;

/// Bodies over this are refused with 413.
const MAX_BODY: usize = 1024 * 1024;

/// The whole HTTP surface, and `GET /openapi.json` describing it.
pub fn router(state: AppState) -> Router {
    let (router, document) = documented(&state).split_for_parts();
    let json: Arc<str> = document.to_pretty_json().unwrap_or_default().into();
    router
        .layer(axum::Extension(Document(json)))
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
        .layer(axum::middleware::from_fn(storable::refuse_nul))
        .with_state(state)
}

/// Every route, registered together with its documentation.
fn documented(state: &AppState) -> OpenApiRouter<AppState> {
    let api = OpenApiRouter::new()
        .merge(auth::router(state))
        .merge(users::router())
        .merge(products::router())
        .merge(warehouses::router())
        .merge(stock::router())
        .merge(reservations::router())
        .merge(orders::router())
        .merge(transfers::router())
        .merge(operations::router());
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .nest("/api/v1", api)
        .merge(health::router())
        .merge(operations::metrics_router())
        .routes(utoipa_axum::routes!(openapi_json))
}

/// The rendered document, handed to its handler.
#[derive(Clone)]
struct Document(Arc<str>);

#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "This document", body = Object)))]
async fn openapi_json(
    axum::Extension(document): axum::Extension<Document>,
) -> impl axum::response::IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document.0.to_string(),
    )
}

/// The OpenAPI document (for tools that want it without a running server).
pub fn openapi_document(state: &AppState) -> utoipa::openapi::OpenApi {
    documented(state).into_openapi()
}
