//! `GET /admin/overview` (the console's first page) and `GET /admin/low-stock`.

use std::sync::atomic::Ordering;

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::config::Durability;
use crate::error::Result;
use crate::http::AppState;
use crate::http::caller::Caller;
use crate::http::extract::{Json, List};
use crate::http::openapi::ErrorBody;
use crate::shops::Scope;
use crate::store;

use super::store::Backlog;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(overview))
        .routes(routes!(low_stock))
}

/// The console's first page, read once a second.
#[derive(Serialize, ToSchema)]
struct Overview {
    at: DateTime<Utc>,
    /// The caller's role.
    role: &'static str,
    /// The shops whose warehouses the caller acts on; null for operators and admins (all).
    shops: Option<Vec<i64>>,
    durability: Durability,
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
        durability: state.config.durability,
        ready: crate::http::health::ready(&state).await.is_ok(),
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

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LowStock {
    pub product_id: i64,
    pub warehouse_id: i64,
    pub on_hand: u64,
    pub reserved: u64,
    pub available: u64,
    /// The product's available stock over all active warehouses.
    pub product_available: u64,
    pub low_stock_threshold: i64,
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
