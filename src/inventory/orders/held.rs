//! Where an order's stock is held, from the node that serves the order: its own core, or
//! the owners of the stock through the service.

use axum::http::StatusCode;
use axum::response::Response;
use futures_util::future::BoxFuture;
use serde_json::Value;
use stockline_actors::{CoreError, LineKey, Lsn, Quantity, ReservationId, ReservationRequest};
use uuid::Uuid;

use super::super::Operation;
use super::super::saga::PartAnswer;
use crate::cluster::{Shard, home_of};
use crate::error::AppError;
use crate::idempotency::{Idempotent, Keyed};
use crate::orders::{Held, OrderError, Stock};
use crate::state::AppState;

/// Where an order's stock is held, from this node's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::inventory) enum Holder {
    /// By this node's core: every shard it is in is served here.
    Here,
    /// Through the service: on the owners of its shards.
    Routed,
}

impl Holder {
    /// For a new reservation of items in `shards`: this node's core holds it only if they
    /// are all in one shard this node serves (the core's reservation is then that shard's;
    /// one over several shards is a saga, whose parts move with their shards).
    pub(super) fn for_hold(state: &AppState, shards: impl Iterator<Item = Shard>) -> Self {
        let mut shards: Vec<Shard> = shards.collect();
        shards.sort_unstable();
        shards.dedup();
        match shards.as_slice() {
            [one] => Self::for_shards(state, std::iter::once(*one)),
            _ if state.cluster.is_none() => Self::Here,
            _ => Self::Routed,
        }
    }

    /// For changes of lines in `shards` each on its own (returns): here if this node
    /// serves them all.
    pub(super) fn for_shards(state: &AppState, mut shards: impl Iterator<Item = Shard>) -> Self {
        match &state.cluster {
            None => Self::Here,
            Some(cluster) if shards.all(|s| cluster.leases().serving(s).is_some()) => Self::Here,
            Some(_) => Self::Routed,
        }
    }

    pub(super) fn for_reservation(state: &AppState, id: ReservationId) -> Self {
        match (&state.cluster, home_of(id.0)) {
            (None, _) => Self::Here,
            (Some(_), Some(shard)) => Self::for_shards(state, std::iter::once(shard)),
            (Some(_), None) => Self::Routed,
        }
    }

    /// `request` as [`idempotency::run`] should run it: inside a flush group only when
    /// this node's core holds the stock.
    pub(super) fn idempotent<T>(self, request: Idempotent<T>) -> Idempotent<T> {
        match self {
            Self::Here => request,
            Self::Routed => request.durable_elsewhere(),
        }
    }

    pub(in crate::inventory) fn on(self, state: &AppState) -> OnNode<'_> {
        OnNode {
            state,
            holder: self,
            reserve_key: None,
        }
    }
}

/// A [`Holder`] on this node: the [`Stock`] an order step uses.
pub(in crate::inventory) struct OnNode<'a> {
    state: &'a AppState,
    holder: Holder,
    /// Through the service: the user and key a reservation is made under (at most once).
    reserve_key: Option<(i64, Keyed)>,
}

impl OnNode<'_> {
    /// Reserves through the service under `key` of `user`, if there is one.
    pub(in crate::inventory) fn keyed(mut self, user: i64, key: Option<Keyed>) -> Self {
        self.reserve_key = key.map(|key| (user, key));
        self
    }
}

impl Stock for OnNode<'_> {
    async fn reserve(&self, request: ReservationRequest) -> Result<(Held, Lsn), OrderError> {
        if self.holder == Holder::Here {
            return Stock::reserve(&*self.state.core, request).await;
        }
        let (user, key) = match &self.reserve_key {
            Some((user, key)) => (*user, Some(key.clone())),
            None => (0, None),
        };
        let operation = Operation::Reserve {
            user,
            key,
            request: request.into(),
        };
        let body = answered(through(self.state, operation).await).await?;
        Ok((held_of(&body)?, 0))
    }

    async fn settle(&self, id: ReservationId, commit: bool) -> Result<Lsn, OrderError> {
        if self.holder == Holder::Here {
            return Stock::settle(&*self.state.core, id, commit).await;
        }
        let operation = Operation::Settle {
            id: id.0,
            commit,
            lines: None,
        };
        answered(through(self.state, operation).await).await?;
        Ok(0)
    }

    /// Through the service: the line's owner returns it at most once per order and line
    /// (the order's cancellation is journaled here, apart from the returns).
    async fn return_stock(
        &self,
        order: Uuid,
        key: LineKey,
        quantity: Quantity,
    ) -> Result<Lsn, OrderError> {
        if self.holder == Holder::Here {
            return Stock::return_stock(&*self.state.core, order, key, quantity).await;
        }
        let operation = Operation::Return {
            order,
            warehouse: key.warehouse_id,
            product: key.product_id,
            quantity: quantity.get(),
        };
        answered(through(self.state, operation).await).await?;
        Ok(0)
    }
}

/// The service, boxed: an order step runs operations through it, and it serves order
/// steps (so its future would otherwise contain itself).
pub(in crate::inventory) fn through(
    state: &AppState,
    operation: Operation,
) -> BoxFuture<'_, Response> {
    Box::pin(super::super::run(state, operation))
}

/// The JSON body of a successful answer of the service; a refusal as the order step's
/// error (a reservation no longer pending, or gone, as the core's own error).
pub(in crate::inventory) async fn answered(response: Response) -> Result<Value, OrderError> {
    let answer = PartAnswer::of(response).await;
    let status = answer.status;
    if answer.ok() {
        return Ok(answer.body);
    }
    if let Some(status) = answer.not_pending() {
        return Err(CoreError::ReservationNotPending { status }.into());
    }
    let error = &answer.body["error"];
    if status == StatusCode::NOT_FOUND && error["message"] == "reservation not found" {
        return Err(CoreError::ReservationNotFound.into());
    }
    let message = error["message"].as_str().unwrap_or("no answer").to_owned();
    // Not kept for an idempotency key: the client retries with it.
    Err(OrderError::Elsewhere(match status {
        StatusCode::SERVICE_UNAVAILABLE => AppError::Unavailable(message),
        StatusCode::INTERNAL_SERVER_ERROR => AppError::Internal(message),
        _ => AppError::relayed(status, error),
    }))
}

/// What a reservation's answer (`Reservation` of API.md) says it holds.
pub(in crate::inventory) fn held_of(body: &Value) -> Result<Held, OrderError> {
    let unreadable = || {
        OrderError::Elsewhere(AppError::Internal(format!(
            "a reservation answered in an unknown shape: {body}"
        )))
    };
    let id = body["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .ok_or_else(unreadable)?;
    let time = |field: &str| {
        body[field]
            .as_str()
            .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
            .ok_or_else(unreadable)
    };
    let count = |item: &Value, field: &str| item[field].as_u64().unwrap_or(0);
    let items = body["items"]
        .as_array()
        .ok_or_else(unreadable)?
        .iter()
        .map(|item| {
            let product = item["product_id"].as_i64().ok_or_else(unreadable)?;
            let warehouse = item["warehouse_id"].as_i64().ok_or_else(unreadable)?;
            let held = count(item, "quantity")
                .saturating_sub(count(item, "committed") + count(item, "released"));
            Ok((product, warehouse, held))
        })
        .collect::<Result<_, OrderError>>()?;
    Ok(Held {
        id: ReservationId(id),
        items,
        expires_at: time("expires_at")?,
        at: time("created_at")?,
    })
}
