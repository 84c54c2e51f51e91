//! `/reservations`: all-or-nothing holds across lines, then commit or release; pending
//! ones past `expires_at` expire by themselves.

use std::time::Duration;

use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::openapi::ErrorBody;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Number;
use stockline_actors::{
    ItemRequest, LineKey, Reservation, ReservationId, ReservationRequest, ReservationStatus,
    ReservedItem,
};
use uuid::Uuid;

use axum::response::{IntoResponse, Response};

use super::extract::{Json, List, OptionalJson, Page, Path, Query, int_in, quantity, text};
use super::idempotency::{self, Answer, Idempotent};
use crate::auth::Role;
use crate::cluster::saga::SagaPart;
use crate::error::{AppError, Result};
use crate::http::AppState;
use crate::http::caller::Caller;
use crate::orders::is_zero;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, expiring))
        .routes(routes!(read, extend))
        .routes(routes!(commit))
        .routes(routes!(release))
}

/// `Reservation` of API.md.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReservationBody {
    pub id: Uuid,
    pub status: &'static str,
    pub items: Vec<Item>,
    pub reference: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Item {
    pub product_id: i64,
    pub warehouse_id: i64,
    /// Reserved on this line.
    pub quantity: u64,
    /// Of `quantity`, left the warehouse (commit, whole or partial); left out when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub committed: u64,
    /// Of `quantity`, went back to available (release or expiry, whole or partial); left
    /// out when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub released: u64,
    /// Of what is still held, not yet on hand: waiting for receipts (a backorder); left
    /// out when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub backordered: u64,
}

impl From<&ReservedItem> for Item {
    fn from(i: &ReservedItem) -> Self {
        Self {
            product_id: i.product_id,
            warehouse_id: i.warehouse_id,
            quantity: i.quantity,
            committed: i.committed,
            released: i.released,
            backordered: 0,
        }
    }
}

/// The reservation as the API shows it, with what each line still waits for (read from
/// the lines, which hold it while it is pending).
pub fn shown(state: &AppState, reservation: Reservation) -> ReservationBody {
    let pending = reservation.status == ReservationStatus::Pending;
    let backordered: Vec<u64> = reservation
        .items
        .iter()
        .filter(|i| i.quantity > 0)
        .map(|i| match state.core.registry().resident(i.key()) {
            Some(line) if pending => i.held().saturating_sub(line.filled(reservation.id)),
            _ => 0,
        })
        .collect();
    let mut body = ReservationBody::from(reservation);
    for (item, short) in body.items.iter_mut().zip(backordered) {
        item.backordered = short;
    }
    body
}

impl From<Reservation> for ReservationBody {
    fn from(r: Reservation) -> Self {
        Self {
            id: r.id.0,
            status: r.status.as_str(),
            // A resized hold (a cart's) may keep lines shrunk to nothing: not shown.
            items: r
                .items
                .iter()
                .filter(|i| i.quantity > 0)
                .map(Item::from)
                .collect(),
            reference: r.reference,
            expires_at: r.expires_at,
            created_at: r.created_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
struct CreateReservation {
    items: Vec<ReservationItemBody>,
    #[schema(value_type = Option<i64>)]
    ttl_seconds: Option<Number>,
    reference: Option<String>,
    /// Allocate only from this shop's warehouses.
    shop_id: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
struct ReservationItemBody {
    product_id: i64,
    #[schema(value_type = i64)]
    quantity: Number,
    warehouse_id: Option<i64>,
}

/// The most items one reservation may hold.
const MAX_ITEMS: usize = 100;
const MAX_TTL_SECS: i64 = 7 * 24 * 3600;

#[utoipa::path(post, path = "/reservations", tag = "reservations", security(("bearer" = [])), params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 characters; repeats answer the first answer"), ("dry_run" = Option<bool>, Query, description = "true: answer the allocation (200, status dry_run) or the refusal the request would get now, holding nothing")), request_body = CreateReservation, responses((status = 201, body = ReservationBody), (status = 200, description = "A dry run: what would be held", body = DryRun), (status = 403, description = "The role may not do this", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "insufficient_stock (details: product_id, requested, available) or warehouse_inactive", body = ErrorBody), (status = 422, description = "A value is invalid; details name the field", body = ErrorBody), (status = 503, description = "overloaded, or not confirmed durable in time: retry with the same Idempotency-Key", body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(options): Query<CreateOptions>,
    part: Option<axum::Extension<SagaPart>>,
    request: Idempotent<CreateReservation>,
) -> Result<Response> {
    caller.require(Role::Operator)?;
    if options.dry_run == Some(true) {
        // Moves nothing, so there is nothing to make idempotent.
        let request = parse(&state, request.body)?;
        let items = state.core.reservations().dry_run(&request).await?;
        let body = DryRun {
            status: "dry_run",
            items: items.iter().map(Item::from).collect(),
            reference: request.reference,
            expires_at: Utc::now() + request.ttl,
        };
        return Ok((StatusCode::OK, Json(body)).into_response());
    }
    let owned = state.clone();
    let part = part.map(|axum::Extension(part)| part.id);
    idempotency::run(&state, caller.user_id, request, move |body| async move {
        reserve(&owned, body, part).await
    })
    .await
}

#[derive(Deserialize)]
struct CreateOptions {
    dry_run: Option<bool>,
}

/// What `POST /reservations?dry_run=true` answers: the allocation a real request would get
/// now, with nothing held.
#[derive(Serialize, ToSchema)]
struct DryRun {
    /// Always `dry_run`.
    status: &'static str,
    items: Vec<Item>,
    reference: Option<String>,
    /// When the reservation would expire, were it made now.
    expires_at: DateTime<Utc>,
}

/// Reserves; `part`: under that id, as one shard's part of a reservation across shards
/// (cluster mode), refused if the store has it settled already.
async fn reserve(
    state: &AppState,
    body: CreateReservation,
    part: Option<ReservationId>,
) -> Result<Answer> {
    let request = parse(state, body)?;
    let reservations = state.core.reservations();
    let (reservation, lsn) = match part {
        None => reservations.reserve(request).await?,
        Some(id) => {
            if reservations.get(id).is_none() {
                settled_before(state, id).await?;
            }
            reservations.reserve_as(id, request).await?
        }
    };
    Answer::new(StatusCode::CREATED, shown(state, reservation), lsn)
}

/// Refuses a part the store has already (this node took its shard over after it was
/// settled, or buried, elsewhere): its row is its tombstone.
async fn settled_before(state: &AppState, id: ReservationId) -> Result<()> {
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM reservations WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&state.db)
            .await?;
    match status.as_deref().and_then(ReservationStatus::parse) {
        Some(status) => Err(stockline_actors::CoreError::ReservationNotPending { status }.into()),
        None => Ok(()),
    }
}

/// The request the core reserves, from a JSON body (a reservation across shards is
/// checked whole before its parts go out).
pub fn request_of(state: &AppState, body: serde_json::Value) -> Result<ReservationRequest> {
    parse(
        state,
        serde_json::from_value(body).map_err(idempotency::body_error)?,
    )
}

/// The request the core reserves, from the body.
fn parse(state: &AppState, body: CreateReservation) -> Result<ReservationRequest> {
    if body.items.is_empty() || body.items.len() > MAX_ITEMS {
        return Err(AppError::validation(
            "items",
            format!("must hold 1 to {MAX_ITEMS} items"),
        ));
    }
    let mut items = Vec::with_capacity(body.items.len());
    for (i, item) in body.items.iter().enumerate() {
        if state.catalog.get(item.product_id).is_none() {
            return Err(AppError::NotFound(format!("product {}", item.product_id)));
        }
        if let Some(w) = item
            .warehouse_id
            .filter(|w| state.core.warehouses().get(*w).is_none())
        {
            return Err(AppError::NotFound(format!("warehouse {w}")));
        }
        items.push(ItemRequest {
            product_id: item.product_id,
            quantity: quantity(&item.quantity, &format!("items[{i}].quantity"))?,
            warehouse_id: item.warehouse_id,
        });
    }
    let ttl = match &body.ttl_seconds {
        Some(n) => Duration::from_secs(int_in(n, "ttl_seconds", 1..=MAX_TTL_SECS)? as u64),
        None => state.config.reservation_ttl(),
    };
    let reference = body
        .reference
        .as_deref()
        .map(|r| text(r, "reference", 255))
        .transpose()?;
    let shop_id = body.shop_id.map(|s| state.shops.require(s)).transpose()?;
    let backorder_limits = state
        .catalog
        .backorder_limits(items.iter().map(|item| item.product_id));
    Ok(ReservationRequest {
        items,
        ttl,
        reference,
        shop_id,
        backorder_limits,
    })
}

#[utoipa::path(get, path = "/reservations/{id}", tag = "reservations", security(("bearer" = [])), params(("id" = Uuid, Path)), responses((status = 200, body = ReservationBody), (status = 403, description = "The role may not do this", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody)))]
async fn read(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<ReservationBody>> {
    caller.require(Role::Operator)?;
    if let Some(reservation) = state.core.reservations().get(ReservationId(id)) {
        return Ok(Json(shown(&state, reservation)));
    }
    // Settled long enough ago to have left memory: the store has it.
    stored(&state, id).await.map(Json)
}

#[utoipa::path(get, path = "/reservations", tag = "reservations", security(("bearer" = [])),
    params(("limit" = Option<i64>, Query), ("offset" = Option<i64>, Query)),
    responses((status = 200, description = "`{items: [Reservation], total}`: the pending reservations, the one that expires soonest first; a shop member sees those holding stock in its shop's warehouses", body = Object),
              (status = 403, description = "Neither an operator nor a shop member", body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn expiring(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(page): Query<Page>,
) -> Result<Json<List<ReservationBody>>> {
    let scope = state.access(&caller).scope()?;
    let warehouses = state.core.warehouses();
    // A cluster node holds only its shards' reservations: the store has them all.
    let mut pending = match &state.cluster {
        None => state.core.reservations().pending(),
        Some(_) => {
            let pending = crate::store::recovery::pending_reservations(&state.db).await?;
            super::saga::fold(&state.db, pending).await?
        }
    };
    pending.retain(|r| {
        r.items
            .iter()
            .any(|i| i.held() > 0 && scope.allows(warehouses, i.warehouse_id))
    });
    // A shop member sees its shops' part of a reservation allocated across shops, and not
    // the client's reference (which names another customer's cart or order).
    if let crate::shops::Scope::Shops(_) = scope {
        for r in &mut pending {
            r.items.retain(|i| scope.allows(warehouses, i.warehouse_id));
            r.reference = None;
        }
    }
    pending.sort_by_key(|r| (r.expires_at, r.id));
    let total = pending.len() as i64;
    let items = pending
        .into_iter()
        .skip(page.offset()? as usize)
        .take(page.limit()? as usize)
        // A node holds only its own shards' lines: what waits for receipts is not shown.
        .map(|r| match state.cluster {
            None => shown(&state, r),
            Some(_) => ReservationBody::from(r),
        })
        .collect();
    Ok(Json(List { items, total }))
}

/// status, reference, expires_at, created_at
type StoredRow = (String, Option<String>, DateTime<Utc>, DateTime<Utc>);

pub async fn stored(state: &AppState, id: Uuid) -> Result<ReservationBody> {
    let row: Option<StoredRow> = sqlx::query_as(
        "SELECT status, reference, expires_at, created_at FROM reservations WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&state.db)
    .await?;
    let (status, reference, expires_at, created_at) =
        row.ok_or_else(|| AppError::NotFound("reservation".into()))?;
    let items: Vec<(i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT product_id, warehouse_id, quantity, committed, released FROM reservation_items
         WHERE reservation_id = $1 ORDER BY warehouse_id, product_id",
    )
    .bind(id)
    .fetch_all(&state.db)
    .await?;
    let status = ReservationStatus::parse(&status)
        .ok_or_else(|| AppError::Internal(format!("stored reservation status {status}")))?;
    let items = items
        .into_iter()
        .map(
            |(product_id, warehouse_id, quantity, committed, released)| {
                let mut item = ReservedItem {
                    product_id,
                    warehouse_id,
                    quantity: quantity as u64,
                    committed: committed as u64,
                    released: released as u64,
                };
                // Counts are stored only for reservations settled in parts; otherwise the
                // status says where everything went.
                if item.committed + item.released == 0 {
                    match status {
                        ReservationStatus::Committed => item.committed = item.quantity,
                        ReservationStatus::Released | ReservationStatus::Expired => {
                            item.released = item.quantity
                        }
                        ReservationStatus::Pending => {}
                    }
                }
                Item::from(&item)
            },
        )
        .collect();
    Ok(ReservationBody {
        id,
        status: status.as_str(),
        items,
        reference,
        expires_at,
        created_at,
    })
}

#[derive(Deserialize, ToSchema)]
struct Extension {
    /// Seconds from now, 1 to 7 days.
    #[schema(value_type = i64)]
    ttl_seconds: Number,
}

/// Moves a pending reservation's `expires_at` to `ttl_seconds` from now.
#[utoipa::path(patch, path = "/reservations/{id}", tag = "reservations", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = Extension, responses((status = 200, body = ReservationBody), (status = 403, description = "The role may not do this", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "reservation_not_pending", body = ErrorBody), (status = 422, description = "ttl_seconds is not 1 to 604800", body = ErrorBody)))]
async fn extend(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
    Json(body): Json<Extension>,
) -> Result<Json<ReservationBody>> {
    caller.require(Role::Operator)?;
    let ttl =
        Duration::from_secs(int_in(&body.ttl_seconds, "ttl_seconds", 1..=MAX_TTL_SECS)? as u64);
    match state.core.reservations().extend(ReservationId(id), ttl) {
        Ok((reservation, lsn)) => {
            state.durable(lsn).await?;
            Ok(Json(shown(&state, reservation)))
        }
        Err(stockline_actors::CoreError::ReservationNotFound) => Err(not_pending(&state, id).await),
        Err(other) => Err(other.into()),
    }
}

/// The answer for a reservation no longer in memory: settled long ago (409), or unknown (404).
async fn not_pending(state: &AppState, id: Uuid) -> AppError {
    match stored(state, id).await {
        Ok(stored) => AppError::Conflict {
            code: "reservation_not_pending",
            message: format!("reservation is {}, not pending", stored.status),
            details: serde_json::json!({ "status": stored.status }),
        },
        Err(error) => error,
    }
}

#[utoipa::path(post, path = "/reservations/{id}/commit", tag = "reservations", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body(content = Option<Parts>, description = "Optional: `{items: [{product_id, warehouse_id, quantity}]}` settles only those quantities; the reservation stays pending while anything is held"), responses((status = 200, body = ReservationBody), (status = 403, description = "The role may not do this", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "reservation_not_pending", body = ErrorBody), (status = 422, description = "An item asks for more than the reservation holds on that line", body = ErrorBody), (status = 503, description = "overloaded, or not confirmed durable in time: retry with the same Idempotency-Key", body = ErrorBody)))]
async fn commit(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
    OptionalJson(body): OptionalJson<Parts>,
) -> Result<Json<ReservationBody>> {
    caller.require(Role::Operator)?;
    settle(&state, id, true, body).await
}

/// The optional body of commit and release: only these quantities (partial fulfilment).
#[derive(Deserialize, ToSchema)]
struct Parts {
    items: Option<Vec<Part>>,
}

#[derive(Deserialize, ToSchema)]
struct Part {
    product_id: i64,
    warehouse_id: i64,
    #[schema(value_type = i64)]
    quantity: Number,
}

impl Parts {
    /// The lines and quantities asked for; `None`: all of the reservation.
    fn lines(self) -> Result<Option<Vec<(LineKey, stockline_actors::Quantity)>>> {
        let Some(items) = self.items else {
            return Ok(None);
        };
        if items.is_empty() || items.len() > MAX_ITEMS {
            return Err(AppError::validation(
                "items",
                format!("must hold 1 to {MAX_ITEMS} items"),
            ));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let qty = quantity(&part.quantity, &format!("items[{i}].quantity"))?;
                Ok((LineKey::new(part.warehouse_id, part.product_id), qty))
            })
            .collect::<Result<_>>()
            .map(Some)
    }
}

#[utoipa::path(post, path = "/reservations/{id}/release", tag = "reservations", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body(content = Option<Parts>, description = "Optional: `{items: [{product_id, warehouse_id, quantity}]}` settles only those quantities; the reservation stays pending while anything is held"), responses((status = 200, body = ReservationBody), (status = 403, description = "The role may not do this", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "reservation_not_pending", body = ErrorBody), (status = 422, description = "An item asks for more than the reservation holds on that line", body = ErrorBody), (status = 503, description = "overloaded, or not confirmed durable in time: retry with the same Idempotency-Key", body = ErrorBody)))]
async fn release(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
    part: Option<axum::Extension<SagaPart>>,
    OptionalJson(body): OptionalJson<Parts>,
) -> Result<Json<ReservationBody>> {
    caller.require(Role::Operator)?;
    match part {
        // A part given up before (or while) its reserve arrives is buried: the reserve,
        // if it comes, is refused.
        Some(axum::Extension(part)) if part.id.0 == id && body.is_none() => {
            let reservations = state.core.reservations();
            if reservations.get(part.id).is_none() {
                settled_before(&state, part.id).await?;
            }
            let (reservation, lsn) = reservations.release_or_bury(part.id).await?;
            state.durable(lsn).await?;
            Ok(Json(shown(&state, reservation)))
        }
        _ => settle(&state, id, false, body).await,
    }
}

async fn settle(
    state: &AppState,
    id: Uuid,
    commit: bool,
    parts: Option<Parts>,
) -> Result<Json<ReservationBody>> {
    let reservations = state.core.reservations();
    let id = ReservationId(id);
    let lines = parts.map(Parts::lines).transpose()?.flatten();
    let outcome = match (lines, commit) {
        (Some(lines), commit) => reservations.settle_part(id, lines, commit).await,
        (None, true) => reservations.commit(id).await,
        (None, false) => reservations.release(id).await,
    };
    let (reservation, lsn) = match outcome {
        Ok(done) => done,
        // Not in memory any more: settled long ago, or never existed.
        Err(stockline_actors::CoreError::ReservationNotFound) => {
            return Err(not_pending(state, id.0).await);
        }
        Err(other) => return Err(other.into()),
    };
    state.durable(lsn).await?;
    Ok(Json(shown(state, reservation)))
}
