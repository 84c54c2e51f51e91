//! Stock: availability, a warehouse's lines, adjustments (single and bulk), counts, and the
//! movement ledger. Changes go through the line actors and, in `sync` mode, are answered
//! once durable.

use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::openapi::ErrorBody;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Number;
use sqlx::FromRow;
use stockline_actors::journal::MovementKind;
use stockline_actors::{LineKey, LineSnapshot};

use axum::response::{IntoResponse, Response};

use super::extract::{Json, List, Page, Path, Query, int_in, level, text_opt};
use super::idempotency::{self, Idempotent};
use crate::auth::Identity;
use crate::error::{AppError, Result};
use crate::http::AppState;
use crate::http::caller::Caller;
use crate::inventory::lines::{Change, LineChange, Made, StockLine};
use crate::inventory::stock::Availability;
use crate::inventory::{self, Operation};
use crate::shops::Scope;
use crate::store;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(availability))
        .routes(routes!(warehouse_stock))
        .routes(routes!(adjust))
        .routes(routes!(adjust_bulk))
        .routes(routes!(set_level))
        .routes(routes!(set_safety))
        .routes(routes!(movements))
}

/// Why stock was adjusted or counted (API.md `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    Receipt,
    Correction,
    Damage,
    Count,
    Return,
}

impl Reason {
    const ALL: [Self; 5] = [
        Self::Receipt,
        Self::Correction,
        Self::Damage,
        Self::Count,
        Self::Return,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Receipt => "receipt",
            Self::Correction => "correction",
            Self::Damage => "damage",
            Self::Count => "count",
            Self::Return => "return",
        }
    }

    fn parse(value: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == value)
            .ok_or_else(|| {
                let all: Vec<_> = Self::ALL.iter().map(|r| r.as_str()).collect();
                AppError::validation("reason", format!("must be one of {}", all.join(", ")))
            })
    }
}

/// The line of a live product in a known warehouse that `caller` may change (the shop
/// policy: 403 for another shop's warehouse).
fn line_key(
    state: &AppState,
    caller: &Identity,
    warehouse_id: i64,
    product_id: i64,
) -> Result<LineKey> {
    if state.catalog.get(product_id).is_none() {
        return Err(AppError::NotFound(format!("product {product_id}")));
    }
    state.access(caller).warehouse(warehouse_id)?;
    Ok(LineKey::new(warehouse_id, product_id))
}

#[utoipa::path(get, path = "/products/{id}/availability", tag = "stock", security(("bearer" = [])), params(("id" = i64, Path), ("as_of" = Option<String>, Query, description = "RFC 3339, not in the future: the availability at that moment, replayed from the movement ledger (warehouse status as today)")), responses((status = 200, description = "Totals over active warehouses, and each warehouse's line", body = Availability), (status = 404, description = "Unknown id", body = ErrorBody)))]
async fn availability(
    State(state): State<AppState>,
    Caller(_caller): Caller,
    Path(id): Path<i64>,
    Query(moment): Query<AsOf>,
) -> Result<Response> {
    match moment.as_of {
        None => Ok(inventory::run(
            &state,
            Operation::Availability {
                product: id,
                shop: None,
            },
        )
        .await),
        Some(as_of) => Ok(Json(availability_as_of(&state, id, &as_of).await?).into_response()),
    }
}

#[derive(Deserialize)]
struct AsOf {
    /// RFC 3339: the availability at that moment, replayed from the movement ledger.
    as_of: Option<String>,
}

/// A product's availability at a past moment: each line as its last movement at or
/// before `as_of` left it (lines with none did not exist yet). Warehouse status is
/// today's: the ledger does not record status changes.
async fn availability_as_of(state: &AppState, id: i64, as_of: &str) -> Result<Availability> {
    let at = DateTime::parse_from_rfc3339(as_of)
        .map_err(|_| AppError::validation("as_of", "must be an RFC 3339 timestamp"))?
        .with_timezone(&Utc);
    if at > Utc::now() {
        return Err(AppError::validation("as_of", "must not be in the future"));
    }
    if state.catalog.get(id).is_none() {
        return Err(AppError::NotFound(format!("product {id}")));
    }
    state.store.written().await?;
    let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT DISTINCT ON (warehouse_id) warehouse_id, on_hand_after, reserved_after, safety_stock_after
         FROM movements WHERE product_id = $1 AND at <= $2
         ORDER BY warehouse_id, id DESC",
    )
    .bind(id)
    .bind(at)
    .fetch_all(&state.db)
    .await?;
    let lines = rows
        .into_iter()
        .map(
            |(warehouse_id, on_hand, reserved, safety_stock)| LineSnapshot {
                key: LineKey::new(warehouse_id, id),
                on_hand: on_hand as u64,
                reserved: reserved as u64,
                safety_stock: safety_stock as u64,
                version: 0,
                active: true,
                updated_at: at,
            },
        )
        .collect();
    Ok(crate::inventory::stock::availability_body(state, id, lines))
}

#[utoipa::path(get, path = "/warehouses/{id}/stock", tag = "stock", security(("bearer" = [])), params(("id" = i64, Path), ("limit" = Option<i64>, Query, description = "At most 500, default 50"), ("offset" = Option<i64>, Query)), responses((status = 200, description = "`{items: [StockLine], total}`", body = Object), (status = 403, description = "The role may not do this", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody)))]
async fn warehouse_stock(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<i64>,
    Query(page): Query<Page>,
) -> Result<Json<List<StockLine>>> {
    state.access(&caller).warehouse(id)?;
    let (limit, offset) = (page.limit()?, page.offset()?);
    let resident: Vec<_> = state
        .core
        .registry()
        .resident_of_warehouse(id)
        .iter()
        .map(|l| l.peek())
        .collect();
    let (lines, total) =
        store::lines::warehouse_page(&state.db, id, &resident, limit, offset).await?;
    let items = lines.into_iter().map(StockLine::from).collect();
    Ok(Json(List { items, total }))
}

#[derive(Deserialize, ToSchema)]
pub struct Adjustment {
    warehouse_id: i64,
    product_id: i64,
    #[schema(value_type = i64)]
    delta: Number,
    reason: String,
    /// The client's own reference (a delivery note, a count sheet), up to 255 chars.
    reference: Option<String>,
}

/// Who is changing stock by hand and the reference they gave, for the movement ledger.
/// Who makes a change by hand, with their reference (at most 255 chars).
pub(super) fn made(caller: &Identity, reference: Option<&str>) -> Result<Made> {
    Ok(Made {
        user: caller.user_id,
        reference: text_opt(reference, "reference", 255)?,
    })
}

#[utoipa::path(post, path = "/stock/adjustments", tag = "stock", security(("bearer" = [])), params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 characters; repeats answer the first answer")), request_body = Adjustment, responses((status = 200, body = StockLine), (status = 403, description = "The role may not do this", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "insufficient_stock: on_hand would go under reserved", body = ErrorBody), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody), (status = 503, description = "overloaded, or not confirmed durable in time: retry with the same Idempotency-Key", body = ErrorBody)))]
async fn adjust(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request: Idempotent<Adjustment>,
) -> Result<Response> {
    state.access(&caller).scope()?;
    let (body, key) = request.into_parts();
    match adjustment(&state, &caller, body) {
        Ok(change) => Ok(inventory::run(&state, Operation::Change { key, change }).await),
        Err(error) => idempotency::refuse_keyed(&state, caller.user_id, key, error).await,
    }
}

/// The change an adjustment asks for, checked.
fn adjustment(state: &AppState, caller: &Identity, body: Adjustment) -> Result<LineChange> {
    let max = stockline_actors::types::MAX_QUANTITY as i64;
    let delta = int_in(&body.delta, "delta", -max..=max)?;
    if delta == 0 {
        return Err(AppError::validation("delta", "must not be zero"));
    }
    let reason = Reason::parse(&body.reason)?.as_str().to_owned();
    let made = made(caller, body.reference.as_deref())?;
    let key = line_key(state, caller, body.warehouse_id, body.product_id)?;
    Ok(LineChange {
        warehouse: key.warehouse_id,
        product: key.product_id,
        change: Change::Adjust { delta, reason },
        made,
    })
}

/// Each item on its own: one refused item does not stop the others.
#[utoipa::path(post, path = "/stock/adjustments/bulk", tag = "stock", security(("bearer" = [])), request_body = Vec<Adjustment>, responses((status = 200, description = "`{results: [{index, ok, line?, error?}]}`, each item on its own", body = Object), (status = 403, description = "The role may not do this", body = ErrorBody), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn adjust_bulk(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(items): Json<Vec<Adjustment>>,
) -> Result<Response> {
    state.access(&caller).scope()?;
    if items.is_empty() || items.len() > MAX_BULK {
        return Err(AppError::validation(
            "items",
            format!("must hold 1 to {MAX_BULK} adjustments"),
        ));
    }
    let checked = items
        .into_iter()
        .map(|item| adjustment(&state, &caller, item))
        .collect();
    Ok(inventory::change_each(&state, checked).await)
}

/// Adjustments at most in one bulk request.
const MAX_BULK: usize = 1000;

#[derive(Deserialize, ToSchema)]
struct Level {
    warehouse_id: i64,
    product_id: i64,
    #[schema(value_type = i64)]
    on_hand: Number,
    reason: Option<String>,
    #[schema(value_type = Option<i64>)]
    expected_version: Option<Number>,
    /// The client's own reference, up to 255 chars.
    reference: Option<String>,
}

#[utoipa::path(put, path = "/stock/levels", tag = "stock", security(("bearer" = [])), request_body = Level, responses((status = 200, body = StockLine), (status = 403, description = "The role may not do this", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "insufficient_stock, or version_mismatch (details: current_version) when expected_version is not the line's version; nothing changes", body = ErrorBody), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn set_level(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(body): Json<Level>,
) -> Result<Response> {
    state.access(&caller).scope()?;
    let on_hand = level(&body.on_hand, "on_hand")?;
    let reason = body
        .reason
        .as_deref()
        .map_or(Ok(Reason::Count), Reason::parse)?
        .as_str()
        .to_owned();
    let expected = body
        .expected_version
        .as_ref()
        .map(|v| int_in(v, "expected_version", 0..=i64::MAX).map(|v| v as u64))
        .transpose()?;
    let made = made(&caller, body.reference.as_deref())?;
    let key = line_key(&state, &caller, body.warehouse_id, body.product_id)?;
    let change = Change::Level {
        on_hand: on_hand as u64,
        expected,
        reason,
    };
    Ok(change_line(&state, key, change, made).await)
}

/// Runs `change` to the line `key` where its stock is.
async fn change_line(state: &AppState, key: LineKey, change: Change, made: Made) -> Response {
    let change = LineChange {
        warehouse: key.warehouse_id,
        product: key.product_id,
        change,
        made,
    };
    inventory::run(state, Operation::Change { key: None, change }).await
}

#[derive(Deserialize, ToSchema)]
struct Safety {
    warehouse_id: i64,
    product_id: i64,
    /// Units kept on hand that are never reserved, 0 to 1,000,000,000.
    #[schema(value_type = i64)]
    safety_stock: Number,
}

/// Sets a line's safety stock; `available` is then `on_hand - reserved - safety_stock`.
#[utoipa::path(put, path = "/stock/safety", tag = "stock", security(("bearer" = [])), request_body = Safety, responses((status = 200, body = StockLine), (status = 403, description = "The role may not do this", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn set_safety(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(body): Json<Safety>,
) -> Result<Response> {
    state.access(&caller).scope()?;
    let units = level(&body.safety_stock, "safety_stock")? as u64;
    let key = line_key(&state, &caller, body.warehouse_id, body.product_id)?;
    let made = made(&caller, None)?;
    Ok(change_line(&state, key, Change::Safety { units }, made).await)
}

/// One entry of the movement ledger: what changed a line, by how much, and the line after.
#[derive(Debug, Serialize, Deserialize, FromRow)]
pub struct Movement {
    pub id: i64,
    pub warehouse_id: i64,
    pub product_id: i64,
    pub kind: String,
    pub quantity: i64,
    pub on_hand_after: i64,
    pub reserved_after: i64,
    /// The client's reference when one was given, else the reservation or transfer id (or
    /// the reason, for adjustments, as before v1.1).
    pub reference: String,
    /// Why stock was adjusted or counted; null for other kinds.
    pub reason: Option<String>,
    /// Who made a change by hand (adjustments, counts, transfers); null otherwise.
    pub actor_user_id: Option<i64>,
    pub at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct MovementFilter {
    product_id: Option<i64>,
    warehouse_id: Option<i64>,
    kind: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[utoipa::path(get, path = "/stock/movements", tag = "stock", security(("bearer" = [])), params(("product_id" = Option<i64>, Query), ("warehouse_id" = Option<i64>, Query), ("kind" = Option<String>, Query), ("limit" = Option<i64>, Query, description = "At most 500, default 50"), ("offset" = Option<i64>, Query)), responses((status = 200, description = "`{items: [Movement], total}`, newest first", body = Object), (status = 403, description = "The role may not do this, or (a shop member) another shop's warehouse", body = ErrorBody), (status = 404, description = "A shop member named an unknown warehouse", body = ErrorBody), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody)))]
async fn movements(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(filter): Query<MovementFilter>,
) -> Result<Json<List<Movement>>> {
    let access = state.access(&caller);
    let scope = access.scope()?;
    // An operator may filter by any id (an unknown one lists nothing); a member by its own.
    if let Some(warehouse_id) = filter.warehouse_id.filter(|_| scope != Scope::All) {
        access.warehouse(warehouse_id)?;
    }
    // A shop member sees its shop's warehouses' movements only.
    let within = scope.warehouse_ids(state.core.warehouses());
    let page = Page::new(filter.limit, filter.offset);
    if let Some(kind) = filter
        .kind
        .as_deref()
        .filter(|k| MovementKind::parse(k).is_none())
    {
        return Err(AppError::validation("kind", format!("unknown kind {kind}")));
    }
    let condition =
        "($1::bigint IS NULL OR product_id = $1) AND ($2::bigint IS NULL OR warehouse_id = $2)
                     AND ($3::text IS NULL OR kind = $3) AND ($4::bigint[] IS NULL OR warehouse_id = ANY($4))";
    let total: i64 =
        sqlx::query_scalar(&format!("SELECT count(*) FROM movements WHERE {condition}"))
            .bind(filter.product_id)
            .bind(filter.warehouse_id)
            .bind(&filter.kind)
            .bind(&within)
            .fetch_one(&state.db)
            .await?;
    let items = sqlx::query_as(&format!(
        "SELECT id, warehouse_id, product_id, kind, quantity, on_hand_after, reserved_after,
                COALESCE(client_reference, reference) AS reference, reason, actor_user_id, at
         FROM movements WHERE {condition} ORDER BY id DESC LIMIT $5 OFFSET $6"
    ))
    .bind(filter.product_id)
    .bind(filter.warehouse_id)
    .bind(&filter.kind)
    .bind(&within)
    .bind(page.limit()?)
    .bind(page.offset()?)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(List { items, total }))
}
