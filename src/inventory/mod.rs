//! The inventory service: what handlers call to change and read stock lines. A handler
//! parses its request, checks the caller, and runs an [`Operation`]; the service serves it
//! from this node's core when this node owns the shard the operation touches (always, in
//! a single process), and otherwise sends it, typed, to the shard's owner over the shard
//! protocol (`cluster::routing::protocol`), which serves it with the same code. Either
//! way the handler gets the same answer: the status, body and headers of the API.
//!
//! The owner runs the whole operation, idempotency included: the stock it moves and the
//! answer kept for the `Idempotency-Key` are journaled in one batch on the node whose
//! journal owns that stock.
//!
//! - [`reservations`]: reserve, read, extend, commit and release on the owner.
//! - [`stock`]: a product's availability over its lines.

pub mod reservations;
pub mod stock;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use stockline_actors::{
    Home, ItemRequest, LineKey, Quantity, ReservationId, ReservationRequest, types::ShopId,
};
use uuid::Uuid;

use crate::cluster::routing::protocol::{self, Operations, Refused, Served};
use crate::cluster::saga::SagaPart;
use crate::cluster::{Shard, shard_of};
use crate::error::{AppError, Result};
use crate::http::AppState;
use crate::http::idempotency::{self, Keyed};

/// What the service does: the core's own operations, as one node asks another.
#[derive(Debug, Serialize, Deserialize)]
pub enum Operation {
    /// Holds stock, at most once per `key` of `user` (the request's fingerprint in it).
    Reserve {
        user: i64,
        key: Option<Keyed>,
        request: Hold,
    },
    /// The allocation a reservation would get now, holding nothing.
    DryRun { request: Hold },
    /// Commits (`commit`) or releases a reservation: all of it, or the (warehouse,
    /// product, quantity) lines.
    Settle {
        id: Uuid,
        commit: bool,
        lines: Option<Vec<(i64, i64, u64)>>,
    },
    /// Moves a pending reservation's expiry to `ttl_secs` from now.
    Extend { id: Uuid, ttl_secs: u64 },
    /// Reads a reservation.
    Read { id: Uuid },
    /// A product's availability over its lines (those of one shop's warehouses).
    Availability { product: i64, shop: Option<i64> },
    /// A step of one shard's part of a reservation across shards, sent by the node that
    /// coordinates it (`saga`): the part's id is derived from the saga's and the shard.
    Part {
        saga: Uuid,
        shard: Shard,
        step: Step,
    },
}

/// What a reservation across shards asks of one of its parts.
#[derive(Debug, Serialize, Deserialize)]
pub enum Step {
    /// Holds the part's items (refused if the part was settled or given up before).
    Reserve(Hold),
    /// The allocation the part would get now, holding nothing.
    DryRun(Hold),
    Extend {
        ttl_secs: u64,
    },
    /// Commits or releases the part: all of it, or the (warehouse, product, quantity) lines.
    Settle {
        commit: bool,
        lines: Option<Vec<(i64, i64, u64)>>,
    },
    /// Released if held, buried if not held yet: a reserve that arrives later is refused.
    GiveUp,
}

/// A [`ReservationRequest`] as it travels: plain numbers, checked again where it lands.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hold {
    /// (product, quantity, warehouse pinned)
    items: Vec<(i64, u64, Option<i64>)>,
    ttl_ms: u64,
    reference: Option<String>,
    shop_id: Option<ShopId>,
    backorder_limits: Vec<(i64, u64)>,
}

impl From<ReservationRequest> for Hold {
    fn from(request: ReservationRequest) -> Self {
        Self {
            items: request
                .items
                .iter()
                .map(|i| (i.product_id, i.quantity.get(), i.warehouse_id))
                .collect(),
            ttl_ms: u64::try_from(request.ttl.as_millis()).unwrap_or(u64::MAX),
            reference: request.reference,
            shop_id: request.shop_id,
            backorder_limits: request.backorder_limits.into_iter().collect(),
        }
    }
}

impl TryFrom<Hold> for ReservationRequest {
    type Error = AppError;

    fn try_from(hold: Hold) -> Result<Self> {
        let items = hold
            .items
            .into_iter()
            .map(|(product_id, quantity, warehouse_id)| {
                Ok(ItemRequest {
                    product_id,
                    quantity: quantity_of(quantity)?,
                    warehouse_id,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            items,
            ttl: Duration::from_millis(hold.ttl_ms),
            reference: hold.reference,
            shop_id: hold.shop_id,
            backorder_limits: hold.backorder_limits.into_iter().collect(),
        })
    }
}

fn quantity_of(quantity: u64) -> Result<Quantity> {
    Quantity::try_from(quantity).map_err(|e| AppError::validation("quantity", e.to_string()))
}

impl Hold {
    /// The part of `request` in each shard: its items there, the same expiry, reference
    /// and shop.
    pub fn by_shard(request: &ReservationRequest) -> std::collections::BTreeMap<Shard, Hold> {
        let mut parts: std::collections::BTreeMap<Shard, Hold> = Default::default();
        for item in &request.items {
            let part = parts
                .entry(shard_of(item.product_id))
                .or_insert_with(|| Hold {
                    items: Vec::new(),
                    ttl_ms: u64::try_from(request.ttl.as_millis()).unwrap_or(u64::MAX),
                    reference: request.reference.clone(),
                    shop_id: request.shop_id,
                    backorder_limits: Vec::new(),
                });
            part.items
                .push((item.product_id, item.quantity.get(), item.warehouse_id));
            if let Some(limit) = request.backorder_limits.get(&item.product_id)
                && !part
                    .backorder_limits
                    .iter()
                    .any(|(p, _)| *p == item.product_id)
            {
                part.backorder_limits.push((item.product_id, *limit));
            }
        }
        parts
    }

    /// The one shard every item is in; `None` if they span shards (or there are none).
    fn shard(&self) -> Option<Shard> {
        let mut shards = self.items.iter().map(|(product, ..)| shard_of(*product));
        let first = shards.next()?;
        shards.all(|s| s == first).then_some(first)
    }

    fn named(&self) -> (Vec<i64>, Vec<i64>) {
        (
            self.items.iter().map(|(p, ..)| *p).collect(),
            self.items.iter().filter_map(|(.., w)| *w).collect(),
        )
    }
}

fn named_lines(lines: &[(i64, i64, u64)]) -> (Vec<i64>, Vec<i64>) {
    (
        lines.iter().map(|(_, p, _)| *p).collect(),
        lines.iter().map(|(w, ..)| *w).collect(),
    )
}

impl Operation {
    /// The shard whose owner serves this operation; `None`: any node (a reservation whose
    /// id names no single shard is the saga's, which the edge coordinates).
    fn shard(&self) -> Option<Shard> {
        match self {
            Self::Reserve { request, .. } | Self::DryRun { request } => request.shard(),
            Self::Settle { id, .. } | Self::Extend { id, .. } | Self::Read { id } => {
                match ReservationId(*id).home() {
                    Some(Home::One(shard)) => Some(shard),
                    _ => None,
                }
            }
            Self::Availability { product, .. } => Some(shard_of(*product)),
            // A part's items are all in its shard, or it is no part.
            Self::Part {
                shard,
                step: Step::Reserve(hold) | Step::DryRun(hold),
                ..
            } => (hold.shard() == Some(*shard)).then_some(*shard),
            Self::Part {
                shard,
                step: Step::Settle {
                    lines: Some(lines), ..
                },
                ..
            } => lines
                .iter()
                .all(|(_, p, _)| shard_of(*p) == *shard)
                .then_some(*shard),
            Self::Part { shard, .. } => Some(*shard),
        }
    }

    /// The products and warehouses the operation names, which the owner must know.
    fn named(&self) -> (Vec<i64>, Vec<i64>) {
        match self {
            Self::Reserve { request, .. }
            | Self::DryRun { request }
            | Self::Part {
                step: Step::Reserve(request) | Step::DryRun(request),
                ..
            } => request.named(),
            Self::Settle {
                lines: Some(lines), ..
            }
            | Self::Part {
                step: Step::Settle {
                    lines: Some(lines), ..
                },
                ..
            } => named_lines(lines),
            Self::Availability { product, .. } => (vec![*product], Vec::new()),
            _ => (Vec::new(), Vec::new()),
        }
    }
}

/// Runs `operation` where its stock is: here, or on its shard's owner.
pub async fn run(state: &AppState, operation: Operation) -> Response {
    let elsewhere = match (&state.cluster, operation.shard()) {
        (Some(cluster), Some(shard)) if cluster.leases().serving(shard).is_none() => {
            Some((cluster.clone(), shard))
        }
        _ => None,
    };
    let Some((cluster, shard)) = elsewhere else {
        return serve(state, operation).await;
    };
    match cluster
        .routes
        .ask(shard, protocol::encode(&operation))
        .await
    {
        Ok(reply) => match protocol::read_answer::<Answered>(&reply) {
            Ok(answered) => answered.into_response(),
            Err(Refused::Version { asked, speaks }) => AppError::Unavailable(format!(
                "the node that owns this stock speaks shard protocol version {speaks}, this \
                 one {asked} (a rolling upgrade is under way); retry shortly"
            ))
            .into_response(),
            Err(Refused::Unreadable(why)) => AppError::Internal(format!(
                "the owner of shard {shard} refused a request: {why}"
            ))
            .into_response(),
        },
        Err(unreached) => AppError::Unavailable(unreached.to_string()).into_response(),
    }
}

/// Serves `operation` from this node's core.
async fn serve(state: &AppState, operation: Operation) -> Response {
    match operation {
        Operation::Reserve { user, key, request } => reserve(state, user, key, request, None).await,
        Operation::DryRun { request } => dry_run(state, request).await,
        Operation::Settle { id, commit, lines } => settle(state, id, commit, lines).await,
        Operation::Extend { id, ttl_secs } => {
            json(reservations::extend(state, id, Duration::from_secs(ttl_secs)).await)
        }
        Operation::Read { id } => json(reservations::read(state, id).await),
        Operation::Availability { product, shop } => {
            json(stock::availability_of(state, product, shop).await)
        }
        Operation::Part { saga, shard, step } => {
            let part = SagaPart::new(saga, shard).id;
            match step {
                // Made idempotent by the part's id, not by a key.
                Step::Reserve(request) => reserve(state, 0, None, request, Some(part)).await,
                Step::DryRun(request) => dry_run(state, request).await,
                Step::Extend { ttl_secs } => {
                    json(reservations::extend(state, part.0, Duration::from_secs(ttl_secs)).await)
                }
                Step::Settle { commit, lines } => settle(state, part.0, commit, lines).await,
                Step::GiveUp => json(reservations::release_part(state, part).await),
            }
        }
    }
}

async fn reserve(
    state: &AppState,
    user: i64,
    key: Option<Keyed>,
    request: Hold,
    part: Option<ReservationId>,
) -> Response {
    let request = match ReservationRequest::try_from(request) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let owned = state.clone();
    idempotency::run_keyed(state, user, key, request, move |request| async move {
        reservations::reserve(&owned, request, part).await
    })
    .await
    .into_response()
}

async fn dry_run(state: &AppState, request: Hold) -> Response {
    match ReservationRequest::try_from(request) {
        Ok(request) => json(reservations::dry_run(state, request).await),
        Err(error) => error.into_response(),
    }
}

async fn settle(
    state: &AppState,
    id: Uuid,
    commit: bool,
    lines: Option<Vec<(i64, i64, u64)>>,
) -> Response {
    let lines = lines
        .map(|lines| {
            lines
                .into_iter()
                .map(|(w, p, q)| Ok((LineKey::new(w, p), quantity_of(q)?)))
                .collect::<Result<Vec<_>>>()
        })
        .transpose();
    match lines {
        Ok(lines) => json(reservations::settle(state, id, commit, lines).await),
        Err(error) => error.into_response(),
    }
}

fn json<T: Serialize>(answer: Result<T>) -> Response {
    answer.map(axum::Json).into_response()
}

/// An answer as it travels back: what the API answers, status, body and the one header
/// an answer of ours may carry beside its type.
#[derive(Debug, Serialize, Deserialize)]
struct Answered {
    status: u16,
    /// JSON; empty: no body.
    body: Vec<u8>,
    retry_after: Option<String>,
}

impl Answered {
    async fn of(response: Response) -> Self {
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, MAX_ANSWER)
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default();
        Self {
            status: parts.status.as_u16(),
            body,
            retry_after: parts
                .headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }
    }
}

/// The most an answer of the service holds (a reservation of 100 items is about 15 KiB).
const MAX_ANSWER: usize = 256 * 1024;

impl IntoResponse for Answered {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let has_body = !self.body.is_empty();
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        if has_body {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if let Some(value) = self
            .retry_after
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            headers.insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// The owner's side: serves the operations other nodes send for the shards it owns.
pub struct Owner(pub AppState);

impl Operations for Owner {
    fn serve(&self, shard: Shard, payload: Bytes) -> Served {
        let state = self.0.clone();
        Box::pin(async move {
            let operation = match protocol::decode::<Operation>(&payload) {
                Ok(operation) => operation,
                Err(refusal) => return Some(refusal),
            };
            let cluster = state.cluster.clone()?;
            if cluster.leases().serving(shard).is_none() || operation.shard() != Some(shard) {
                return None;
            }
            let (products, warehouses) = operation.named();
            if let Err(error) = know(&state, &products, &warehouses).await {
                return Some(protocol::answer(&Answered::of(error.into_response()).await));
            }
            let response = serve(&state, operation).await;
            Some(protocol::answer(&Answered::of(response).await))
        })
    }
}

/// Reads from the database the products and warehouses this node has not seen yet
/// (created through another node a moment ago).
pub async fn know(state: &AppState, products: &[i64], warehouses: &[i64]) -> Result<()> {
    for product in products {
        if state.catalog.get(*product).is_none() {
            state.catalog.refresh(&state.db, *product).await?;
        }
    }
    if warehouses
        .iter()
        .any(|w| state.core.warehouses().get(*w).is_none())
    {
        reload_warehouses(state).await?;
    }
    Ok(())
}

/// Reads every warehouse from the database into the core again.
pub async fn reload_warehouses(state: &AppState) -> Result<()> {
    for (id, info) in crate::store::recovery::read_warehouses(&state.db).await? {
        state.core.upsert_warehouse(id, info).await?;
    }
    Ok(())
}

/// The service as the state holds it (one per node).
pub fn owner(state: &AppState) -> Arc<dyn Operations> {
    Arc::new(Owner(state.clone()))
}
