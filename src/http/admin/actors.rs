//! `GET /admin/actors`: the stock-line actors in memory, one page at a time.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::{AppError, Result};
use crate::http::AppState;
use crate::http::caller::Caller;
use crate::http::extract::{Json, Page, Query};
use crate::http::openapi::ErrorBody;
use stockline_actors::LineKey;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(actors))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Actor {
    pub warehouse_id: i64,
    pub product_id: i64,
    pub on_hand: u64,
    pub reserved: u64,
    pub mailbox_len: usize,
    pub messages_handled: u64,
    pub last_message_at: Option<DateTime<Utc>>,
    /// False while the line is passivated (idle, its actor given up).
    pub active: bool,
    pub restarts: u64,
    /// Times the line gave up its actor for being idle.
    pub passivations: u64,
    /// Operations refused: for stock, state or load.
    pub refusals: u64,
    /// Messages handled in the last whole second.
    pub messages_per_second: u64,
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
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Actors {
    pub items: Vec<Actor>,
    /// Lines in memory (all pages).
    pub total: i64,
    /// The same as `total`: lines in memory, with an actor or passivated.
    pub lines_in_memory: i64,
    /// Lines in memory with a running actor.
    pub lines_active: i64,
    /// Lines the database holds, in memory or not (counted at most every 5 s).
    pub lines_stored: i64,
}
