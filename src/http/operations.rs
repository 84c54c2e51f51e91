//! What operators watch: the stock-line actors, the write-behind store, low stock, and
//! `GET /metrics` in the Prometheus text format.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::extract::{Json, List, Page, Query};
use super::openapi::ErrorBody;
use crate::auth::Role;
use crate::config::Durability;
use crate::error::{AppError, Result};
use crate::http::AppState;
use crate::http::caller::Caller;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(actors))
        .routes(routes!(persistence))
        .routes(routes!(low_stock))
}

/// `GET /metrics`, outside `/api/v1`.
pub fn metrics_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

#[derive(Serialize, ToSchema)]
struct Actor {
    warehouse_id: i64,
    product_id: i64,
    on_hand: u64,
    reserved: u64,
    mailbox_len: usize,
    messages_handled: u64,
    last_message_at: Option<DateTime<Utc>>,
    /// False while the line is passivated (idle, its actor given up).
    active: bool,
    restarts: u64,
}

#[derive(Deserialize)]
struct ActorQuery {
    sort: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[utoipa::path(get, path = "/admin/actors", tag = "operations", security(("bearer" = [])),
    params(("sort" = Option<String>, Query, description = "messages_handled (default), mailbox_len or last_message_at; highest first"),
           ("limit" = Option<i64>, Query), ("offset" = Option<i64>, Query)),
    responses((status = 200, description = "`{items: [Actor], total}`", body = Object),
              (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn actors(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<ActorQuery>,
) -> Result<Json<List<Actor>>> {
    caller.require(Role::Operator)?;
    let page = Page::new(query.limit, query.offset);
    let mut items: Vec<Actor> = state
        .core
        .registry()
        .all()
        .into_iter()
        .map(|line| {
            let (now, stats) = (line.peek(), line.stats());
            Actor {
                warehouse_id: now.key.warehouse_id,
                product_id: now.key.product_id,
                on_hand: now.on_hand,
                reserved: now.reserved,
                mailbox_len: stats.mailbox_len,
                messages_handled: stats.messages_handled,
                last_message_at: stats.last_message_at,
                active: line.is_active(),
                restarts: stats.restarts,
            }
        })
        .collect();
    match query.sort.as_deref().unwrap_or("messages_handled") {
        "messages_handled" => items.sort_by_key(|a| std::cmp::Reverse(a.messages_handled)),
        "mailbox_len" => items.sort_by_key(|a| std::cmp::Reverse(a.mailbox_len)),
        "last_message_at" => items.sort_by_key(|a| std::cmp::Reverse(a.last_message_at)),
        _ => {
            return Err(AppError::validation(
                "sort",
                "must be messages_handled, mailbox_len or last_message_at",
            ));
        }
    }
    let total = items.len() as i64;
    let items = items
        .into_iter()
        .skip(page.offset()? as usize)
        .take(page.limit()? as usize)
        .collect();
    Ok(Json(List { items, total }))
}

#[derive(Serialize, ToSchema)]
struct Persistence {
    pending_records: usize,
    last_flush_at: Option<DateTime<Utc>>,
    /// How long the oldest unwritten change has waited, roughly (0 when nothing waits).
    flush_lag_ms: i64,
    batches_flushed: u64,
    flush_failures: u64,
    durability: &'static str,
    /// Records PostgreSQL refused for their data since this server started; each is kept
    /// in the `dead_letters` table with the refusal, and the rest of its batch was written.
    dead_letters: u64,
    /// The newest dead letters (at most 20), from the table.
    recent_dead_letters: Vec<DeadLetter>,
}

#[derive(Serialize, ToSchema, sqlx::FromRow)]
struct DeadLetter {
    lsn: i64,
    kind: String,
    error: String,
    at: DateTime<Utc>,
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
    let pending = state.store.buffer.backlog();
    let last = flush.last_flush_at();
    let lag = match (pending, last) {
        (0, _) => 0,
        (_, Some(last)) => (Utc::now() - last).num_milliseconds().max(0),
        (_, None) => 0,
    };
    Ok(Json(Persistence {
        pending_records: pending,
        last_flush_at: last,
        flush_lag_ms: lag,
        batches_flushed: flush.batches_flushed.load(Ordering::Relaxed),
        flush_failures: flush.flush_failures.load(Ordering::Relaxed),
        durability: match state.config.durability {
            Durability::Sync => "sync",
            Durability::Async => "async",
        },
        dead_letters: flush.dead_letters.load(Ordering::Relaxed),
        recent_dead_letters,
    }))
}

#[derive(Serialize, ToSchema)]
struct LowStock {
    product_id: i64,
    warehouse_id: i64,
    on_hand: u64,
    reserved: u64,
    available: u64,
    /// The product's available stock over all active warehouses.
    product_available: u64,
    low_stock_threshold: i64,
}

#[utoipa::path(get, path = "/alerts/low-stock", tag = "operations", security(("bearer" = [])),
    responses((status = 200, description = "`{items: [LowStock], total}`: lines of active warehouses of products whose total available is under their threshold", body = Object),
              (status = 403, body = ErrorBody)))]
async fn low_stock(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<List<LowStock>>> {
    caller.require(Role::Operator)?;
    let mut items = Vec::new();
    let mut products = state.catalog.all();
    products.sort_by_key(|(id, _)| *id);
    for (product_id, info) in products
        .into_iter()
        .filter(|(_, info)| info.low_stock_threshold > 0)
    {
        let mut lines: Vec<_> = state
            .core
            .registry()
            .lines_of_product(product_id)
            .iter()
            .map(|line| line.peek())
            .filter(|line| {
                state
                    .core
                    .warehouses()
                    .get(line.key.warehouse_id)
                    .is_some_and(|w| w.active)
            })
            .collect();
        lines.sort_by_key(|line| line.key.warehouse_id);
        let available: u64 = lines.iter().map(|line| line.available()).sum();
        if available >= info.low_stock_threshold as u64 {
            continue;
        }
        items.extend(lines.into_iter().map(|line| LowStock {
            product_id,
            warehouse_id: line.key.warehouse_id,
            on_hand: line.on_hand,
            reserved: line.reserved,
            available: line.available(),
            product_available: available,
            low_stock_threshold: info.low_stock_threshold,
        }));
    }
    let total = items.len() as i64;
    Ok(Json(List { items, total }))
}

/// A recorder of this server's own (not a process-global one, so several servers in one
/// process, as in the tests, each report their own).
pub fn recorder() -> PrometheusRecorder {
    PrometheusBuilder::new().build_recorder()
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let registry = state.core.registry();
    let lines = registry.all();
    let handled: u64 = lines.iter().map(|line| line.stats().messages_handled).sum();
    let restarts: u64 = lines.iter().map(|line| line.stats().restarts).sum();
    let flush = &state.store.flush;
    metrics::with_local_recorder(&*state.metrics, || {
        metrics::gauge!("stockline_lines").set(registry.len() as f64);
        metrics::gauge!("stockline_lines_active").set(registry.active_lines() as f64);
        metrics::gauge!("stockline_line_calls_in_flight").set(registry.in_flight() as f64);
        metrics::gauge!("stockline_line_messages_handled").set(handled as f64);
        metrics::gauge!("stockline_line_restarts").set(restarts as f64);
        metrics::gauge!("stockline_reservations_pending")
            .set(state.core.reservations().pending_count() as f64);
        metrics::gauge!("stockline_journal_pending_records")
            .set(state.store.buffer.backlog() as f64);
        metrics::gauge!("stockline_flush_batches")
            .set(flush.batches_flushed.load(Ordering::Relaxed) as f64);
        metrics::gauge!("stockline_flush_records")
            .set(flush.records_flushed.load(Ordering::Relaxed) as f64);
        metrics::gauge!("stockline_flush_failures")
            .set(flush.flush_failures.load(Ordering::Relaxed) as f64);
        metrics::counter!("stockline_dead_letters_total")
            .absolute(flush.dead_letters.load(Ordering::Relaxed));
        metrics::gauge!("stockline_store_healthy").set(if flush.healthy.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        });
    });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.handle().render(),
    )
}
