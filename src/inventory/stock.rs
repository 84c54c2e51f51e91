//! A product's availability over its lines, as the owner of its shard has them.

use serde::{Deserialize, Serialize};
use stockline_actors::LineSnapshot;
use stockline_actors::types::ShopId;

use crate::error::{AppError, Result};
use crate::state::AppState;

/// `GET /products/{id}/availability` (and a shop's): totals over the active warehouses,
/// and each warehouse's line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Availability {
    pub product_id: i64,
    pub on_hand: u64,
    pub reserved: u64,
    pub available: u64,
    pub warehouses: Vec<WarehouseStock>,
}

/// A product's line in one warehouse, as availability lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WarehouseStock {
    pub warehouse_id: i64,
    /// `active` or `inactive`: an inactive warehouse's units are left out of the totals.
    pub status: String,
    pub on_hand: u64,
    pub reserved: u64,
    pub safety_stock: u64,
    pub available: u64,
    pub backordered: u64,
    pub version: u64,
}

/// A product's availability over the lines of every warehouse, or of one shop's.
pub async fn availability_of(
    state: &AppState,
    id: i64,
    shop: Option<ShopId>,
) -> Result<Availability> {
    if state.catalog.get(id).is_none() {
        return Err(AppError::NotFound(format!("product {id}")));
    }
    let lines = lines_of(state, id, shop).await?;
    Ok(availability_body(state, id, lines))
}

/// The product's lines in the warehouses of `shop` (all warehouses: `None`), as they are.
async fn lines_of(state: &AppState, id: i64, shop: Option<ShopId>) -> Result<Vec<LineSnapshot>> {
    let warehouses = state.core.warehouses();
    Ok(state
        .core
        .registry()
        .lines_of_product(id)
        .await?
        .iter()
        .filter(|l| warehouses.serves(l.key().warehouse_id, shop))
        .map(|l| l.peek())
        .collect())
}

/// The availability answer over `lines`: totals over the active warehouses.
pub fn availability_body(state: &AppState, id: i64, lines: Vec<LineSnapshot>) -> Availability {
    let warehouses = state.core.warehouses();
    let (mut on_hand, mut reserved, mut available) = (0u64, 0u64, 0u64);
    let mut listed = Vec::with_capacity(lines.len());
    for line in lines {
        let active = warehouses
            .get(line.key.warehouse_id)
            .is_some_and(|w| w.active);
        if active {
            on_hand += line.on_hand;
            reserved += line.reserved;
            available += line.available();
        }
        listed.push(WarehouseStock {
            warehouse_id: line.key.warehouse_id,
            status: if active { "active" } else { "inactive" }.to_owned(),
            on_hand: line.on_hand,
            reserved: line.reserved,
            safety_stock: line.safety_stock,
            available: line.available(),
            backordered: line.backordered(),
            version: line.version,
        });
    }
    Availability {
        product_id: id,
        on_hand,
        reserved,
        available,
        warehouses: listed,
    }
}
