//! `GET /healthz` (the process lives) and `GET /readyz` (recovered, the database answers,
//! and the flusher is writing).

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;

use super::error::{AppError, Result};
use crate::startup::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
}

async fn readyz(State(state): State<AppState>) -> Result<&'static str> {
    if !state.store.flush.healthy.load(Ordering::Acquire) {
        return Err(AppError::Unavailable(
            "the store is not accepting writes".into(),
        ));
    }
    let ping = sqlx::query("SELECT 1").execute(&state.db);
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => Ok("ready"),
        _ => Err(AppError::Unavailable("the database does not answer".into())),
    }
}
