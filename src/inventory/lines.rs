//! Changes to stock lines on the owner of their shard: adjustments (one or a bulk's
//! share), counted levels, safety stock, transfers between two warehouses of one product,
//! and retiring a product. What arrives here was checked where the request arrived (the
//! caller may change these warehouses, the values are in range); the core checks the rest
//! (the stock there is, the line's version).

use std::sync::Arc;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::FromRow;
use stockline_actors::{LineKey, LineSnapshot, Lsn, Note, Quantity, TransferRequest};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{AppError, Result};
use crate::idempotency::Answer;
use crate::state::AppState;

/// `StockLine` of API.md.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StockLine {
    pub warehouse_id: i64,
    pub product_id: i64,
    pub on_hand: u64,
    pub reserved: u64,
    /// Units kept on hand that are never reserved: `available` leaves them out.
    pub safety_stock: u64,
    pub available: u64,
    /// Units held beyond what is on hand (backorders waiting for receipts); left out when 0.
    #[serde(default, skip_serializing_if = "crate::orders::is_zero")]
    pub backordered: u64,
    pub version: u64,
    pub updated_at: DateTime<Utc>,
}

impl From<LineSnapshot> for StockLine {
    fn from(s: LineSnapshot) -> Self {
        Self {
            warehouse_id: s.key.warehouse_id,
            product_id: s.key.product_id,
            on_hand: s.on_hand,
            reserved: s.reserved,
            safety_stock: s.safety_stock,
            available: s.available(),
            backordered: s.backordered(),
            version: s.version,
            updated_at: s.updated_at,
        }
    }
}

/// `Transfer` of API.md.
#[derive(Debug, Serialize, Deserialize, FromRow, ToSchema)]
pub struct Transfer {
    pub id: Uuid,
    pub status: String,
    pub from_warehouse_id: i64,
    pub to_warehouse_id: i64,
    pub product_id: i64,
    pub quantity: i64,
    pub actor_user_id: Option<i64>,
    pub reference: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Who made a change by hand, and their reference for it (checked: at most 255 chars).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Made {
    pub user: i64,
    pub reference: Option<String>,
}

impl Made {
    fn note(self) -> Option<Arc<Note>> {
        Some(Arc::new(Note {
            actor_user_id: Some(self.user),
            reference: self.reference,
        }))
    }
}

/// A change to one line's counts.
#[derive(Debug, Serialize, Deserialize)]
pub enum Change {
    /// Adds `delta` units on hand (fewer if negative), for `reason`.
    Adjust { delta: i64, reason: String },
    /// Sets on hand to a counted level, if the line is at version `expected` (when given).
    Level {
        on_hand: u64,
        expected: Option<u64>,
        reason: String,
    },
    /// Sets the units kept on hand that are never reserved.
    Safety { units: u64 },
}

/// A [`Change`] to the line of `product` in `warehouse`, made by `made`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LineChange {
    pub warehouse: i64,
    pub product: i64,
    pub change: Change,
    pub made: Made,
}

/// Applies `change`; the line as it is after it, and the journal position to wait for.
pub async fn apply(state: &AppState, change: LineChange) -> Result<(StockLine, Lsn)> {
    if state.catalog.get(change.product).is_none() {
        return Err(AppError::NotFound(format!("product {}", change.product)));
    }
    let key = LineKey::new(change.warehouse, change.product);
    let core = &state.core;
    let applied = match change.change {
        Change::Adjust { delta, reason } => {
            core.adjust(key, delta, reason, change.made.note()).await?
        }
        Change::Level {
            on_hand,
            expected,
            reason,
        } => {
            core.set_level(key, on_hand, expected, reason, change.made.note())
                .await?
        }
        Change::Safety { units } => core.set_safety(key, units).await?,
    };
    Ok((applied.snapshot.into(), applied.lsn))
}

/// The answer to one change, once durable.
pub async fn changed(state: &AppState, change: LineChange) -> Result<Answer> {
    let (line, lsn) = apply(state, change).await?;
    Answer::new(StatusCode::OK, line, lsn)
}

/// Applies each change on its own (one refused does not stop the others): `{results:
/// [{index, ok, line | error}]}`, `index` the change's place in `changes`. Answered once
/// every applied change is durable.
pub async fn apply_each(state: &AppState, changes: Vec<LineChange>) -> Result<Value> {
    let mut results = Vec::with_capacity(changes.len());
    let mut last = 0;
    for (index, change) in changes.into_iter().enumerate() {
        match apply(state, change).await {
            Ok((line, lsn)) => {
                last = last.max(lsn);
                results.push(json!({ "index": index, "ok": true, "line": line }));
            }
            Err(error) => {
                results.push(json!({ "index": index, "ok": false, "error": error.body() }))
            }
        }
    }
    state.store.durable(last).await?;
    Ok(json!({ "results": results }))
}

/// A move of `quantity` units of `product` from one warehouse to another.
#[derive(Debug, Serialize, Deserialize)]
pub struct Move {
    pub from: i64,
    pub to: i64,
    pub product: i64,
    pub quantity: u64,
    pub made: Made,
}

/// Moves available stock between two warehouses, never half-moved.
pub async fn transfer(state: &AppState, moved: Move) -> Result<Answer> {
    if state.catalog.get(moved.product).is_none() {
        return Err(AppError::NotFound(format!("product {}", moved.product)));
    }
    let quantity = Quantity::try_from(moved.quantity)
        .map_err(|e| AppError::validation("quantity", e.to_string()))?;
    let request = TransferRequest {
        from_warehouse_id: moved.from,
        to_warehouse_id: moved.to,
        product_id: moved.product,
        quantity,
        note: moved.made.note(),
    };
    let (record, lsn) = state.core.transfer(request).await?;
    let transfer = Transfer {
        id: record.id.0,
        status: "completed".into(),
        from_warehouse_id: record.from_warehouse_id,
        to_warehouse_id: record.to_warehouse_id,
        product_id: record.product_id,
        quantity: record.quantity as i64,
        actor_user_id: record.note.as_ref().and_then(|n| n.actor_user_id),
        reference: record.note.as_ref().and_then(|n| n.reference.clone()),
        created_at: record.created_at,
    };
    Answer::new(StatusCode::CREATED, transfer, lsn)
}

/// Deletes product `id` (its ledger is kept), refused while any of its lines holds stock or
/// reservations. It leaves this node's catalog first, so that no stock arrives between
/// the check and the delete.
pub async fn retire(state: &AppState, id: i64) -> Result<StatusCode> {
    let Some(info) = state.catalog.get(id) else {
        return Err(AppError::NotFound(format!("product {id}")));
    };
    state.catalog.remove(id);
    let kept = async {
        let lines = state.core.registry().lines_of_product(id).await?;
        let busy = lines
            .iter()
            .map(|line| line.peek())
            .any(|line| line.on_hand > 0 || line.reserved > 0);
        if busy {
            return Err(AppError::conflict(
                "the product still has stock or pending reservations",
            ));
        }
        sqlx::query("UPDATE products SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL")
            .bind(id)
            .execute(&state.db)
            .await?;
        Ok(())
    }
    .await;
    if let Err(error) = kept {
        state.catalog.put(id, info);
        return Err(error);
    }
    Ok(StatusCode::NO_CONTENT)
}
