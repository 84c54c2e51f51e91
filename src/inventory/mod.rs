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
//! - [`Operation`]: what travels, and where it goes.
//! - [`lines`]: adjustments, levels, safety stock, transfers and retiring a product.
//! - [`reservations`]: reserve, read, extend, commit and release on the owner.
//! - [`orders`]: an order's steps, on the owner of the shard its id names.
//! - [`carts`]: a cart's steps, on the owner of its customer's shard.
//! - [`saga`]: a reservation across shards, one part per shard, coordinated here.
//! - [`stock`]: a product's availability over its lines.

pub mod carts;
pub mod lines;
mod operation;
pub mod orders;
pub mod reservations;
pub mod saga;
pub mod stock;

use operation::quantity_of;
pub use operation::{Hold, Operation, Step};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use stockline_actors::{Home, LineKey, ReservationId, ReservationRequest};
use uuid::Uuid;

use crate::cluster::routing::protocol::{self, Operations, Refused, Served};
use crate::cluster::{Cluster, Shard, shard_of};
use crate::error::{AppError, Result};
use crate::idempotency::{self, Idempotent, Keyed};
use crate::state::AppState;
use lines::LineChange;

/// Runs `operation` where its stock is: here, on its shard's owner, or, when it spans
/// shards, as a saga over one part per shard coordinated here.
pub async fn run(state: &AppState, operation: Operation) -> Response {
    let Some(cluster) = state.cluster.clone() else {
        return serve(state, operation).await;
    };
    let place = match place(state, &cluster, &operation).await {
        Ok(place) => place,
        Err(error) => return error.into_response(),
    };
    match (place, operation) {
        (Place::Here, operation) => serve(state, operation).await,
        (Place::Owner(shard), operation) => ask(&cluster, shard, operation).await,
        (Place::Spans, Operation::Reserve { user, key, request }) => {
            match ReservationRequest::try_from(request) {
                Ok(request) => saga::reserve(state, &cluster, user, key, request).await,
                Err(error) => error.into_response(),
            }
        }
        (Place::Spans, Operation::DryRun { request }) => {
            match ReservationRequest::try_from(request) {
                Ok(request) => saga::dry_run(state, &cluster, request).await,
                Err(error) => error.into_response(),
            }
        }
        (Place::Saga(found), Operation::Read { .. }) => saga::read(state, &found).await,
        (Place::Saga(found), Operation::Extend { ttl_secs, .. }) => {
            saga::extend(state, &cluster, &found, ttl_secs).await
        }
        (Place::Saga(found), Operation::Settle { commit, lines, .. }) => {
            saga::settle(state, &cluster, found, commit, lines).await
        }
        (_, operation) => serve(state, operation).await,
    }
}

/// Where an operation runs in cluster mode.
enum Place {
    Here,
    /// On the owner of this shard.
    Owner(Shard),
    /// A reservation whose items span shards: coordinated here.
    Spans,
    /// A reservation across shards: coordinated here.
    Saga(saga::Saga),
}

async fn place(state: &AppState, cluster: &Cluster, operation: &Operation) -> Result<Place> {
    let here_or_owner = |shard: Shard| match cluster.leases().serving(shard) {
        Some(_) => Place::Here,
        None => Place::Owner(shard),
    };
    if let Some(shard) = operation.shard() {
        return Ok(here_or_owner(shard));
    }
    let id = match operation {
        Operation::Reserve { .. } | Operation::DryRun { .. } => return Ok(Place::Spans),
        Operation::Settle { id, .. } | Operation::Extend { id, .. } | Operation::Read { id } => *id,
        _ => return Ok(Place::Here),
    };
    if let Some(Home::Spans) = ReservationId(id).home() {
        // Unknown: served here, which answers 404.
        return Ok(saga::find(&state.db, id)
            .await?
            .map_or(Place::Here, Place::Saga));
    }
    // An id made before ids named their shard: where the store says its stock is (it has
    // a reservation before its creator is answered).
    if let Some(reservation) = state.core.reservations().get(ReservationId(id))
        && let Some(item) = reservation.items.first()
    {
        return Ok(here_or_owner(shard_of(item.product_id)));
    }
    let (product, spans): (Option<i64>, bool) = sqlx::query_as(
        "SELECT (SELECT product_id FROM reservation_items WHERE reservation_id = $1 LIMIT 1),
                EXISTS (SELECT 1 FROM reservation_sagas WHERE id = $1)",
    )
    .bind(id)
    .fetch_one(&state.db)
    .await?;
    if spans && let Some(found) = saga::find(&state.db, id).await? {
        return Ok(Place::Saga(found));
    }
    Ok(product.map_or(Place::Here, |p| here_or_owner(shard_of(p))))
}

/// Serves `operation` (which names `shard`) here if this node owns the shard, else on its
/// owner. Never a saga: a saga's parts run through this.
pub(crate) async fn at_owner(
    state: &AppState,
    cluster: &Cluster,
    shard: Shard,
    operation: Operation,
) -> Response {
    match cluster.leases().serving(shard) {
        Some(_) => serve(state, operation).await,
        None => ask(cluster, shard, operation).await,
    }
}

/// Sends `operation` to the owner of `shard`, typed, and answers what it answered.
async fn ask(cluster: &Cluster, shard: Shard, operation: Operation) -> Response {
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

/// Changes each line on its own (a bulk adjustment): `checked` holds each change, or why
/// it was refused before it went anywhere. In cluster mode each shard's changes go to its
/// owner as one operation, all at once; the answers come back in `checked`'s order, and
/// a shard that did not answer fails its own changes only.
pub async fn change_each(state: &AppState, checked: Vec<Result<LineChange>>) -> Response {
    let mut results: Vec<Value> = Vec::with_capacity(checked.len());
    let mut groups: BTreeMap<Option<Shard>, (Vec<usize>, Vec<LineChange>)> = BTreeMap::new();
    for (index, change) in checked.into_iter().enumerate() {
        match change {
            Ok(change) => {
                let shard = state.cluster.as_ref().map(|_| shard_of(change.product));
                let (indexes, changes) = groups.entry(shard).or_default();
                indexes.push(index);
                changes.push(change);
            }
            Err(error) => {
                results.push(json!({ "index": index, "ok": false, "error": error.body() }))
            }
        }
    }
    let answers =
        futures_util::future::join_all(groups.into_values().map(|(indexes, changes)| async move {
            let answer =
                saga::PartAnswer::of(run(state, Operation::Changes { changes }).await).await;
            (indexes, answer.status, answer.body)
        }))
        .await;
    for (indexes, status, body) in answers {
        match body["results"].as_array() {
            Some(part) if status.is_success() => {
                for mut result in part.iter().cloned() {
                    let at = result["index"].as_u64().unwrap_or(0) as usize;
                    result["index"] = indexes.get(at).copied().unwrap_or(at).into();
                    results.push(result);
                }
            }
            _ => {
                let error = match &body["error"] {
                    Value::Null => AppError::Unavailable(format!(
                        "the node that owns this stock answered {status}; retry"
                    ))
                    .body(),
                    error => error.clone(),
                };
                results.extend(
                    indexes
                        .into_iter()
                        .map(|index| json!({ "index": index, "ok": false, "error": error })),
                );
            }
        }
    }
    results.sort_by_key(|r| r["index"].as_u64());
    axum::Json(json!({ "results": results })).into_response()
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
        Operation::Reshape {
            id,
            items,
            ttl_secs,
            shop,
        } => {
            let ttl = Duration::from_secs(ttl_secs);
            json(reservations::reshape(state, id, items, ttl, shop).await)
        }
        Operation::Cart(step) => carts::serve(state, step).await,
        Operation::Availability { product, shop } => {
            json(stock::availability_of(state, product, shop).await)
        }
        Operation::Change { key, change } => {
            let owned = state.clone();
            let user = change.made.user;
            idempotency::run(
                state,
                user,
                Idempotent::of(change, key),
                move |change| async move { lines::changed(&owned, change).await },
            )
            .await
            .into_response()
        }
        Operation::Changes { changes } => json(lines::apply_each(state, changes).await),
        Operation::Transfer { key, moved } => {
            let owned = state.clone();
            let user = moved.made.user;
            idempotency::run(
                state,
                user,
                Idempotent::of(moved, key),
                move |moved| async move { lines::transfer(&owned, moved).await },
            )
            .await
            .into_response()
        }
        Operation::Retire { product } => lines::retire(state, product).await.into_response(),
        Operation::Order(step) => orders::serve(state, step).await,
        Operation::Return {
            order,
            warehouse,
            product,
            quantity,
        } => orders::return_here(state, order, LineKey::new(warehouse, product), quantity).await,
        Operation::Part { part, step, .. } => {
            let part = ReservationId(part);
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
    idempotency::run(
        state,
        user,
        Idempotent::of(request, key),
        move |request| async move { reservations::reserve(&owned, request, part).await },
    )
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
pub(crate) const MAX_ANSWER: usize = 256 * 1024;

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
            if cluster.leases().serving(shard).is_none()
                || operation.shard().is_some_and(|named| named != shard)
            {
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

    fn serving_for(&self, shard: Shard) -> Option<std::time::Duration> {
        self.0.cluster.as_ref()?.leases().serving_for(shard)
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
