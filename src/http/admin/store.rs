//! `GET /admin/persistence`: the write-behind store: what waits, the flushes, dead letters.

use std::sync::atomic::Ordering;

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::auth::Role;
use crate::config::Durability;
use crate::error::Result;
use crate::http::AppState;
use crate::http::caller::Caller;
use crate::http::extract::Json;
use crate::http::openapi::ErrorBody;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(persistence))
}

/// What `GET /admin/persistence` answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Persistence {
    pub pending_records: usize,
    pub last_flush_at: Option<DateTime<Utc>>,
    /// How long the oldest unwritten change has waited, roughly (0 when nothing waits).
    pub flush_lag_ms: i64,
    pub batches_flushed: u64,
    pub flush_failures: u64,
    /// Batches the fence refused whole since start (cluster mode: another node had taken
    /// over shards they changed; their requests were told the change did not happen).
    pub refused_batches: u64,
    /// `STOCKLINE_DURABILITY`.
    pub durability: Durability,
    /// Records PostgreSQL refused for their data since this server started; each is kept
    /// in the `dead_letters` table with the refusal, and the rest of its batch was written.
    pub dead_letters: u64,
    /// The newest dead letters (at most 20), from the table.
    pub recent_dead_letters: Vec<DeadLetter>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct DeadLetter {
    pub lsn: i64,
    pub kind: String,
    pub error: String,
    pub at: DateTime<Utc>,
}

#[utoipa::path(get, path = "/admin/persistence", tag = "operations", security(("bearer" = [])),
    responses((status = 200, body = Persistence), (status = 403, body = ErrorBody)))]
async fn persistence(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<Persistence>> {
    caller.require(Role::Operator)?;
    let recent_dead_letters =
        sqlx::query_as("SELECT lsn, kind, error, at FROM dead_letters ORDER BY lsn DESC LIMIT 20")
            .fetch_all(&state.db)
            .await?;
    let flush = &state.store.flush;
    let backlog = Backlog::now(&state);
    Ok(Json(Persistence {
        pending_records: backlog.pending_records,
        last_flush_at: backlog.last_flush_at,
        flush_lag_ms: backlog.flush_lag_ms,
        batches_flushed: flush.batches_flushed.load(Ordering::Relaxed),
        flush_failures: flush.flush_failures.load(Ordering::Relaxed),
        refused_batches: flush.refused_batches.load(Ordering::Relaxed),
        durability: state.config.durability,
        dead_letters: flush.dead_letters.load(Ordering::Relaxed),
        recent_dead_letters,
    }))
}

/// What waits to be written, and for how long.
#[derive(Serialize, ToSchema)]
pub(super) struct Backlog {
    pending_records: usize,
    last_flush_at: Option<DateTime<Utc>>,
    /// How long the oldest unwritten change has waited, roughly (0 when nothing waits).
    flush_lag_ms: i64,
}

impl Backlog {
    pub(super) fn now(state: &AppState) -> Self {
        let pending = state.store.buffer.backlog();
        let last = state.store.flush.last_flush_at();
        let lag = match (pending, last) {
            (0, _) | (_, None) => 0,
            (_, Some(last)) => (Utc::now() - last).num_milliseconds().max(0),
        };
        Self {
            pending_records: pending,
            last_flush_at: last,
            flush_lag_ms: lag,
        }
    }
}
