//! The axum edge: one file per resource, each with its own `router()`, merged here.

mod health;

use axum::Router;

use crate::startup::AppState;

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    Router::new().merge(health::router()).with_state(state)
}
