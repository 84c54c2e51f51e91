//! Moving available stock from one line to another line of the same product.
//!
//! The source gives first (`transfer_out`, refused if short or inactive), then the
//! destination takes (`transfer_in`). If the destination refuses (it went inactive between
//! the check and the move) or cannot be reached, the stock is put back on the source with a
//! compensating `transfer_in`, so stock is never left half-moved: the sum of `on_hand` over
//! both lines is the same before and after, whatever the outcome.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{CoreError, Result};
use crate::handle::LineHandle;
use crate::journal::{Journal, Lsn, Note, Record, TransferRecord};
use crate::line_state::LineOp;
use crate::registry::Registry;
use crate::types::{LineKey, ProductId, Quantity, TransferId, WarehouseId};
use crate::warehouses::Warehouses;

/// A request to move stock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRequest {
    pub from_warehouse_id: WarehouseId,
    pub to_warehouse_id: WarehouseId,
    pub product_id: ProductId,
    pub quantity: Quantity,
    /// Who asked and their reference, kept on the transfer and both movements.
    pub note: Option<Arc<Note>>,
}

/// How often a compensation is retried before it is given up to the logs.
const COMPENSATION_TRIES: u32 = 5;

/// Runs a transfer; answers the record and the Lsn to await.
pub(crate) async fn transfer(
    registry: &Registry,
    warehouses: &Warehouses,
    journal: &dyn Journal,
    request: TransferRequest,
) -> Result<(TransferRecord, Lsn)> {
    let TransferRequest {
        from_warehouse_id: from,
        to_warehouse_id: to,
        product_id,
        quantity: qty,
        note,
    } = request;
    if from == to {
        return Err(CoreError::SameWarehouse);
    }
    for warehouse_id in [from, to] {
        let info = warehouses
            .get(warehouse_id)
            .ok_or(CoreError::UnknownWarehouse { warehouse_id })?;
        if !info.active {
            return Err(CoreError::WarehouseInactive { warehouse_id });
        }
    }
    let source = registry.line(LineKey::new(from, product_id)).await?;
    let destination = registry.line(LineKey::new(to, product_id)).await?;
    let id = TransferId::new();
    let out = source
        .call(LineOp::TransferOut {
            id,
            qty,
            note: note.clone(),
        })
        .await?;
    let received = destination
        .settle(LineOp::TransferIn {
            id,
            qty,
            compensating: false,
            note: note.clone(),
        })
        .await;
    let into = match received {
        Ok(applied) => applied,
        Err(refusal) => {
            put_back(&source, id, qty, note).await;
            return Err(refusal);
        }
    };
    let record = TransferRecord {
        id,
        from_warehouse_id: from,
        to_warehouse_id: to,
        product_id,
        quantity: qty.get(),
        note,
        created_at: crate::types::now(),
    };
    let lsn = journal.append(vec![Record::Transfer(record.clone())]);
    Ok((record, lsn.max(out.lsn).max(into.lsn)))
}

/// Returns stock taken out of `source` by a transfer whose other half failed.
async fn put_back(source: &LineHandle, id: TransferId, qty: Quantity, note: Option<Arc<Note>>) {
    let op = LineOp::TransferIn {
        id,
        qty,
        compensating: true,
        note,
    };
    for attempt in 1..=COMPENSATION_TRIES {
        match source.settle(op.clone()).await {
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(line = %source.key(), transfer = %id, %error, attempt, "putting back a transfer failed");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
        }
    }
    tracing::error!(line = %source.key(), transfer = %id, qty = qty.get(), "transfer stock could not be put back");
}
