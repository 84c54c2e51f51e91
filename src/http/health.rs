//! `GET /healthz`: 200 while the process lives.

use axum::Router;
use axum::routing::get;

use crate::startup::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(|| async { "ok" }))
}
