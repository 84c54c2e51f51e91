//! `/reservations`: all-or-nothing holds across lines, then commit or release; pending
//! ones past `expires_at` expire by themselves.

use std::time::Duration;

use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::openapi::ErrorBody;
use axum::extract::State;
use serde::Deserialize;
use serde_json::Number;
use stockline_actors::{ItemRequest, LineKey, ReservationRequest};
use uuid::Uuid;

use axum::response::Response;

use super::extract::{Json, List, OptionalJson, Page, Path, Query, int_in, quantity, text};
use super::idempotency::{self, Idempotent};
use crate::auth::Role;
use crate::error::{AppError, Result};
use crate::http::AppState;
use crate::http::caller::Caller;
use crate::inventory::reservations::{DryRun, ReservationBody, shown};
use crate::inventory::{self, Operation};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, expiring))
        .routes(routes!(read, extend))
        .routes(routes!(commit))
        .routes(routes!(release))
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
    request: Idempotent<CreateReservation>,
) -> Result<Response> {
    caller.require(Role::Operator)?;
    if options.dry_run == Some(true) {
        // Moves nothing, so there is nothing to make idempotent.
        let request = parse(&state, request.body)?;
        return Ok(inventory::run(
            &state,
            Operation::DryRun {
                request: request.into(),
            },
        )
        .await);
    }
    let user = caller.user_id;
    let (body, key) = request.into_parts();
    match parse(&state, body) {
        Ok(request) => {
            let request = request.into();
            Ok(inventory::run(&state, Operation::Reserve { user, key, request }).await)
        }
        // Refused as it was asked: kept for its key like any answer.
        Err(error) => idempotency::refuse_keyed(&state, user, key, error).await,
    }
}

#[derive(Deserialize)]
struct CreateOptions {
    dry_run: Option<bool>,
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
) -> Result<Response> {
    caller.require(Role::Operator)?;
    Ok(inventory::run(&state, Operation::Read { id }).await)
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
            crate::inventory::saga::fold(&state.db, pending).await?
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
) -> Result<Response> {
    caller.require(Role::Operator)?;
    let ttl_secs = int_in(&body.ttl_seconds, "ttl_seconds", 1..=MAX_TTL_SECS)? as u64;
    Ok(inventory::run(&state, Operation::Extend { id, ttl_secs }).await)
}

#[utoipa::path(post, path = "/reservations/{id}/commit", tag = "reservations", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body(content = Option<Parts>, description = "Optional: `{items: [{product_id, warehouse_id, quantity}]}` settles only those quantities; the reservation stays pending while anything is held"), responses((status = 200, body = ReservationBody), (status = 403, description = "The role may not do this", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "reservation_not_pending", body = ErrorBody), (status = 422, description = "An item asks for more than the reservation holds on that line", body = ErrorBody), (status = 503, description = "overloaded, or not confirmed durable in time: retry with the same Idempotency-Key", body = ErrorBody)))]
async fn commit(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<Uuid>,
    OptionalJson(body): OptionalJson<Parts>,
) -> Result<Response> {
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
    OptionalJson(body): OptionalJson<Parts>,
) -> Result<Response> {
    caller.require(Role::Operator)?;
    settle(&state, id, false, body).await
}

/// Commits or releases, all of the reservation or the lines `parts` names.
async fn settle(
    state: &AppState,
    id: Uuid,
    commit: bool,
    parts: Option<Parts>,
) -> Result<Response> {
    let lines = parts.map(Parts::lines).transpose()?.flatten().map(|lines| {
        lines
            .into_iter()
            .map(|(key, quantity)| (key.warehouse_id, key.product_id, quantity.get()))
            .collect()
    });
    Ok(inventory::run(state, Operation::Settle { id, commit, lines }).await)
}
