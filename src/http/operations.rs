//! What operators watch: the stock-line actors, the write-behind store, low stock, and
//! `GET /metrics` in the Prometheus text format.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::http::Method;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
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
use crate::shops::Scope;
use crate::store;
use crate::telemetry::requests::RequestMetrics;
use stockline_actors::LineKey;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(actors))
        .routes(routes!(persistence))
        .routes(routes!(overview))
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
    /// Times the line gave up its actor for being idle.
    passivations: u64,
    /// Operations refused: for stock, state or load.
    refusals: u64,
    /// Messages handled in the last whole second.
    messages_per_second: u64,
}

#[derive(Deserialize)]
struct ActorQuery {
    sort: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[utoipa::path(get, path = "/admin/actors", tag = "operations", security(("bearer" = [])),
    params(("sort" = Option<String>, Query, description = "messages_handled (default), messages_per_second (the last whole second: busiest now), mailbox_len or last_message_at; highest first"),
           ("limit" = Option<i64>, Query), ("offset" = Option<i64>, Query)),
    responses((status = 200, description = "`{items: [Actor], total, lines_in_memory, lines_active, lines_stored}`: the lines in memory; `lines_stored` counts every line the database holds", body = Actors),
              (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn actors(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<ActorQuery>,
) -> Result<Json<Actors>> {
    let scope = state.access(&caller).scope()?;
    let page = Page::new(query.limit, query.offset);
    let (offset, limit) = (page.offset()? as usize, page.limit()? as usize);
    let warehouses = state.core.warehouses();
    let keep = |key: LineKey| scope.allows(warehouses, key.warehouse_id);
    let registry = state.core.registry();
    let wanted = offset.saturating_add(limit);
    // Each order is highest first; the second figure breaks ties.
    let top = match query.sort.as_deref().unwrap_or("messages_handled") {
        "messages_handled" => registry.top_resident(wanted, keep, |s| (s.messages_handled, 0)),
        "messages_per_second" => registry.top_resident(wanted, keep, |s| {
            (s.messages_last_second, s.messages_handled)
        }),
        "mailbox_len" => registry.top_resident(wanted, keep, |s| (s.mailbox_len as u64, 0)),
        "last_message_at" => registry.top_resident(wanted, keep, |s| {
            let at = s.last_message_at.map_or(0, |at| at.timestamp_micros());
            (at.max(0) as u64, 0)
        }),
        _ => {
            return Err(AppError::validation(
                "sort",
                "must be messages_handled, messages_per_second, mailbox_len or last_message_at",
            ));
        }
    };
    let items = top
        .lines
        .into_iter()
        .skip(offset)
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
                passivations: stats.passivations,
                refusals: stats.refusals,
                messages_per_second: stats.messages_last_second,
            }
        })
        .collect();
    let total = top.matched as i64;
    Ok(Json(Actors {
        items,
        total,
        lines_in_memory: total,
        lines_active: top.active as i64,
        lines_stored: state.stored_lines(scope.warehouse_ids(warehouses)).await?,
    }))
}

/// The lines in memory (one page of them), and how many lines there are.
#[derive(Serialize, ToSchema)]
struct Actors {
    items: Vec<Actor>,
    /// Lines in memory (all pages).
    total: i64,
    /// The same as `total`: lines in memory, with an actor or passivated.
    lines_in_memory: i64,
    /// Lines in memory with a running actor.
    lines_active: i64,
    /// Lines the database holds, in memory or not (counted at most every 5 s).
    lines_stored: i64,
}

#[derive(Serialize, ToSchema)]
struct Persistence {
    pending_records: usize,
    last_flush_at: Option<DateTime<Utc>>,
    /// How long the oldest unwritten change has waited, roughly (0 when nothing waits).
    flush_lag_ms: i64,
    batches_flushed: u64,
    flush_failures: u64,
    /// Batches the fence refused whole since start (cluster mode: another node had taken
    /// over shards they changed; their requests were told the change did not happen).
    refused_batches: u64,
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
    let backlog = Backlog::now(&state);
    Ok(Json(Persistence {
        pending_records: backlog.pending_records,
        last_flush_at: backlog.last_flush_at,
        flush_lag_ms: backlog.flush_lag_ms,
        batches_flushed: flush.batches_flushed.load(Ordering::Relaxed),
        flush_failures: flush.flush_failures.load(Ordering::Relaxed),
        refused_batches: flush.refused_batches.load(Ordering::Relaxed),
        durability: durability(&state),
        dead_letters: flush.dead_letters.load(Ordering::Relaxed),
        recent_dead_letters,
    }))
}

fn durability(state: &AppState) -> &'static str {
    match state.config.durability {
        Durability::Sync => "sync",
        Durability::Async => "async",
    }
}

/// What waits to be written, and for how long.
#[derive(Serialize, ToSchema)]
struct Backlog {
    pending_records: usize,
    last_flush_at: Option<DateTime<Utc>>,
    /// How long the oldest unwritten change has waited, roughly (0 when nothing waits).
    flush_lag_ms: i64,
}

impl Backlog {
    fn now(state: &AppState) -> Self {
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

/// The console's first page, read once a second.
#[derive(Serialize, ToSchema)]
struct Overview {
    at: DateTime<Utc>,
    /// The caller's role.
    role: &'static str,
    /// The shops whose warehouses the caller acts on; null for operators and admins (all).
    shops: Option<Vec<i64>>,
    durability: &'static str,
    /// As `GET /readyz` would answer.
    ready: bool,
    /// 1 while the last write to PostgreSQL succeeded.
    store_healthy: bool,
    /// The last minute's requests; null when per-request metrics are off
    /// (`STOCKLINE_METRICS=false`) or for a shop member (server-wide figures).
    traffic: Option<crate::telemetry::traffic::TrafficSummary>,
    /// Reservations by outcome since start, and pending now; null for a shop member.
    reservations: Option<ReservationOutcomes>,
    /// Null for a shop member.
    backlog: Option<Backlog>,
    /// Flush batches written and failed since start; null for a shop member.
    flushes: Option<Flushes>,
    /// Lines in memory and with a running actor (a shop member's: its own).
    lines_in_memory: usize,
    lines_active: usize,
}

#[derive(Serialize, ToSchema)]
struct ReservationOutcomes {
    created: u64,
    refused: u64,
    committed: u64,
    released: u64,
    expired: u64,
    pending: usize,
}

#[derive(Serialize, ToSchema)]
struct Flushes {
    batches: u64,
    records: u64,
    failures: u64,
}

#[utoipa::path(get, path = "/admin/overview", tag = "operations", security(("bearer" = [])),
    responses((status = 200, description = "What the console's overview shows; server-wide parts only for operators and admins", body = Overview),
              (status = 403, description = "Neither an operator nor a shop member", body = ErrorBody)))]
async fn overview(State(state): State<AppState>, Caller(caller): Caller) -> Result<Json<Overview>> {
    let scope = state.access(&caller).scope()?;
    let everything = matches!(scope, Scope::All);
    let warehouses = state.core.warehouses();
    // Counted in one pass, no line ranked (this is polled once a second).
    let lines = state.core.registry().top_resident(
        0,
        |key| scope.allows(warehouses, key.warehouse_id),
        |_| (),
    );
    let flush = &state.store.flush;
    let reservations = state.core.reservations();
    Ok(Json(Overview {
        at: Utc::now(),
        role: caller.role.as_str(),
        shops: match &scope {
            Scope::All => None,
            Scope::Shops(shops) => Some(shops.clone()),
        },
        durability: durability(&state),
        ready: super::health::ready(&state).await.is_ok(),
        store_healthy: flush.healthy.load(Ordering::Relaxed),
        traffic: (everything && state.config.metrics).then(|| state.requests.traffic.summary()),
        reservations: everything.then(|| {
            let outcomes = reservations.outcomes();
            ReservationOutcomes {
                created: outcomes.created,
                refused: outcomes.refused,
                committed: outcomes.committed,
                released: outcomes.released,
                expired: outcomes.expired,
                pending: reservations.pending_count(),
            }
        }),
        backlog: everything.then(|| Backlog::now(&state)),
        flushes: everything.then(|| Flushes {
            batches: flush.batches_flushed.load(Ordering::Relaxed),
            records: flush.records_flushed.load(Ordering::Relaxed),
            failures: flush.flush_failures.load(Ordering::Relaxed),
        }),
        lines_in_memory: lines.matched,
        lines_active: lines.active,
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
    let scope = state.access(&caller).scope()?;
    let warehouses = state.core.warehouses();
    let resident: Vec<_> = state
        .core
        .registry()
        .resident_lines()
        .iter()
        .map(|line| line.peek())
        .collect();
    // A shop member's alerts weigh its own shop's stock: totals over its warehouses only.
    let mut active = warehouses.active_ids();
    active.retain(|id| scope.allows(warehouses, *id));
    let low = store::lines::low_stock(&state.db, &resident, &active).await?;
    let items: Vec<_> = low
        .into_iter()
        .map(|low| LowStock {
            product_id: low.line.key.product_id,
            warehouse_id: low.line.key.warehouse_id,
            on_hand: low.line.on_hand,
            reserved: low.line.reserved,
            available: low.line.available(),
            product_available: low.product_available,
            low_stock_threshold: low.low_stock_threshold,
        })
        .collect();
    let total = items.len() as i64;
    Ok(Json(List { items, total }))
}

/// The lines whose mailbox depth is exported, the busiest first: a bounded label set.
const BUSIEST_LINES: usize = 10;

/// A method's label: the standard ones by name, any other as `OTHER` (clients choose
/// methods; the label set must stay bounded).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

/// Counts and times every answered request by its route template (bounded: a path no
/// route matched counts as `unmatched`), outside any handler.
pub async fn track(
    State(requests): State<Arc<RequestMetrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    requests.record(method, route, response.status(), started.elapsed());
    response
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let registry = state.core.registry();
    let survey = registry.survey(BUSIEST_LINES);
    let counts = registry.stats();
    let flush = &state.store.flush;
    metrics::with_local_recorder(&*state.metrics, || {
        metrics::gauge!("stockline_lines").set(survey.lines as f64);
        metrics::gauge!("stockline_lines_active").set(survey.active as f64);
        metrics::counter!("stockline_line_loads_total").absolute(counts.lines_loaded);
        metrics::counter!("stockline_line_load_queries_total").absolute(counts.load_queries);
        metrics::counter!("stockline_line_evictions_total").absolute(counts.evictions);
        metrics::counter!("stockline_line_activations_total").absolute(counts.activations);
        metrics::counter!("stockline_line_passivations_total").absolute(counts.passivations);
        metrics::gauge!("stockline_products_indexed").set(counts.products_indexed as f64);
        metrics::gauge!("stockline_line_calls_in_flight").set(registry.in_flight() as f64);
        // Sums over the lines in memory: they fall when lines leave memory, so gauges.
        metrics::gauge!("stockline_line_messages_handled").set(survey.messages_handled as f64);
        metrics::gauge!("stockline_line_restarts").set(survey.restarts as f64);
        metrics::gauge!("stockline_reservations_pending")
            .set(state.core.reservations().pending_count() as f64);
        metrics::gauge!("stockline_journal_pending_records")
            .set(state.store.buffer.backlog() as f64);
        metrics::counter!("stockline_flush_batches_total")
            .absolute(flush.batches_flushed.load(Ordering::Relaxed));
        metrics::counter!("stockline_flush_records_total")
            .absolute(flush.records_flushed.load(Ordering::Relaxed));
        metrics::counter!("stockline_flush_failures_total")
            .absolute(flush.flush_failures.load(Ordering::Relaxed));
        metrics::counter!("stockline_dead_letters_total")
            .absolute(flush.dead_letters.load(Ordering::Relaxed));
        metrics::counter!("stockline_flush_refused_batches_total")
            .absolute(flush.refused_batches.load(Ordering::Relaxed));
        let served = state
            .cluster
            .as_ref()
            .map_or(0, |c| c.leases().served().len());
        metrics::gauge!("stockline_cluster_shards_served").set(served as f64);
        if let Some(cluster) = &state.cluster {
            let (operations, messages) = cluster.routes.hop_counts();
            metrics::counter!("stockline_cluster_hop_operations_total").absolute(operations);
            metrics::counter!("stockline_cluster_hop_messages_total").absolute(messages);
            for (outcome, count) in cluster.sagas.counts() {
                metrics::counter!("stockline_cluster_reservations_total", "outcome" => outcome.as_str())
                    .absolute(count);
            }
        }
        metrics::gauge!("stockline_store_healthy").set(if flush.healthy.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        });
        let outcomes = state.core.reservations().outcomes();
        for (outcome, count) in [
            ("created", outcomes.created),
            ("refused", outcomes.refused),
            ("committed", outcomes.committed),
            ("released", outcomes.released),
            ("expired", outcomes.expired),
        ] {
            metrics::counter!("stockline_reservations_total", "outcome" => outcome).absolute(count);
        }
        // The busiest lines by messages handled (a stable set), with their depth now.
        for (key, depth) in &survey.busiest {
            metrics::gauge!("stockline_line_mailbox_depth",
                "warehouse_id" => key.warehouse_id.to_string(), "product_id" => key.product_id.to_string())
            .set(*depth as f64);
        }
        let events = &state.events;
        metrics::gauge!("stockline_event_streams").set(events.hub.streams() as f64);
        metrics::gauge!("stockline_events_newest_id").set(*events.hub.newest().borrow() as f64);
        metrics::counter!("stockline_nats_events_published_total")
            .absolute(events.nats_published.load(Ordering::Relaxed));
        metrics_process::Collector::default().collect();
    });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.handle().render(),
    )
}
