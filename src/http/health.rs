//! `GET /healthz` (the process lives) and `GET /readyz` (recovered, the database answers,
//! and the flusher is writing).

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::{AppError, Result};
use crate::http::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process lives")))]
async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Recovered, the database answers, the flusher writes"),
    (status = 503, description = "Not ready", body = super::openapi::ErrorBody)
))]
async fn readyz(State(state): State<AppState>) -> Result<&'static str> {
    ready(&state).await.map(|()| "ready")
}

/// Recovered (the server answers only then), the flusher writes, the database answers;
/// in cluster mode, NATS is connected too (requests could not reach the shards' owners).
pub async fn ready(state: &AppState) -> Result<()> {
    if !state.store.flush.healthy.load(Ordering::Acquire) {
        return Err(AppError::Unavailable(
            "the store is not accepting writes".into(),
        ));
    }
    if let Some(cluster) = &state.cluster
        && !cluster.routes.connected()
    {
        return Err(AppError::Unavailable(
            "this node is cut off from the cluster's messaging (NATS)".into(),
        ));
    }
    let ping = sqlx::query("SELECT 1").execute(&state.db);
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => Ok(()),
        _ => Err(AppError::Unavailable("the database does not answer".into())),
    }
}
