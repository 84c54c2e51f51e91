//! Reservations on the owner of their stock: reserve, read, extend, commit and release,
//! and the reservation as the API shows it.

use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use stockline_actors::{
    LineKey, Quantity, Reservation, ReservationId, ReservationRequest, ReservationStatus,
    ReservedItem,
};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{AppError, Result};
use crate::idempotency::Answer;
use crate::orders::is_zero;
use crate::state::AppState;

/// `Reservation` of API.md.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReservationBody {
    pub id: Uuid,
    /// `pending`, `committed`, `released` or `expired`.
    #[schema(value_type = String)]
    pub status: Cow<'static, str>,
    pub items: Vec<Item>,
    pub reference: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Item {
    pub product_id: i64,
    pub warehouse_id: i64,
    /// Reserved on this line.
    pub quantity: u64,
    /// Of `quantity`, left the warehouse (commit, whole or partial); left out when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub committed: u64,
    /// Of `quantity`, went back to available (release or expiry, whole or partial); left
    /// out when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub released: u64,
    /// Of what is still held, not yet on hand: waiting for receipts (a backorder); left
    /// out when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
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
            status: Cow::Borrowed(r.status.as_str()),
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

/// Reserves; `part`: under that id, as one shard's part of a reservation across shards
/// (cluster mode), refused if the store has it settled already.
pub async fn reserve(
    state: &AppState,
    request: ReservationRequest,
    part: Option<ReservationId>,
) -> Result<Answer> {
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

/// What `POST /reservations?dry_run=true` answers: the allocation a real request would get
/// now, with nothing held.
#[derive(Serialize, ToSchema)]
pub struct DryRun {
    /// Always `dry_run`.
    status: &'static str,
    items: Vec<Item>,
    reference: Option<String>,
    /// When the reservation would expire, were it made now.
    expires_at: DateTime<Utc>,
}

/// The allocation `request` would get now, holding nothing.
pub async fn dry_run(state: &AppState, request: ReservationRequest) -> Result<DryRun> {
    let items = state.core.reservations().dry_run(&request).await?;
    Ok(DryRun {
        status: "dry_run",
        items: items.iter().map(Item::from).collect(),
        reference: request.reference,
        expires_at: Utc::now() + request.ttl,
    })
}

/// Reservation `id` as it is now: from memory while it is pending or settled lately, else
/// from the store.
pub async fn read(state: &AppState, id: Uuid) -> Result<ReservationBody> {
    match state.core.reservations().get(ReservationId(id)) {
        Some(reservation) => Ok(shown(state, reservation)),
        None => stored(state, id).await,
    }
}

/// Moves a pending reservation's `expires_at` to `ttl` from now.
pub async fn extend(state: &AppState, id: Uuid, ttl: Duration) -> Result<ReservationBody> {
    match state.core.reservations().extend(ReservationId(id), ttl) {
        Ok((reservation, lsn)) => {
            state.store.durable(lsn).await?;
            Ok(shown(state, reservation))
        }
        Err(stockline_actors::CoreError::ReservationNotFound) => Err(not_pending(state, id).await),
        Err(other) => Err(other.into()),
    }
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
        status: Cow::Borrowed(status.as_str()),
        items,
        reference,
        expires_at,
        created_at,
    })
}

/// The answer for a reservation no longer in memory: settled long ago (409), or unknown (404).
pub async fn not_pending(state: &AppState, id: Uuid) -> AppError {
    match stored(state, id).await {
        Ok(stored) => AppError::Conflict {
            code: "reservation_not_pending",
            message: format!("reservation is {}, not pending", stored.status),
            details: serde_json::json!({ "status": stored.status }),
        },
        Err(error) => error,
    }
}

/// Commits (or releases) reservation `id`: all of it, or only `lines`.
pub async fn settle(
    state: &AppState,
    id: Uuid,
    commit: bool,
    lines: Option<Vec<(LineKey, Quantity)>>,
) -> Result<ReservationBody> {
    let reservations = state.core.reservations();
    let id = ReservationId(id);
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
    state.store.durable(lsn).await?;
    Ok(shown(state, reservation))
}

/// Gives up one shard's part of a reservation across shards: released if it is held, and
/// buried if its reserve has not arrived yet (the reserve, if it comes, is refused).
pub async fn release_part(state: &AppState, part: ReservationId) -> Result<ReservationBody> {
    let reservations = state.core.reservations();
    if reservations.get(part).is_none() {
        settled_before(state, part).await?;
    }
    let (reservation, lsn) = reservations.release_or_bury(part).await?;
    state.store.durable(lsn).await?;
    Ok(shown(state, reservation))
}

/// Makes pending reservation `id` hold exactly `wanted` (units per product; none: it is
/// released) and extends it to `ttl` from now, all or nothing (a held cart's part, in
/// cluster mode).
pub async fn reshape(
    state: &AppState,
    id: Uuid,
    wanted: Vec<(i64, u64)>,
    ttl: Duration,
    shop: Option<i64>,
) -> Result<ReservationBody> {
    let limits = state
        .catalog
        .backorder_limits(wanted.iter().map(|(product, _)| *product));
    let reshaped = state
        .core
        .reservations()
        .reshape(ReservationId(id), wanted, ttl, shop, limits)
        .await;
    match reshaped {
        Ok((reservation, lsn)) => {
            state.store.durable(lsn).await?;
            Ok(shown(state, reservation))
        }
        Err(stockline_actors::CoreError::ReservationNotFound) => Err(not_pending(state, id).await),
        Err(other) => Err(other.into()),
    }
}
