//! The core's copy of each warehouse's status and allocation priority.
//!
//! The catalog (in the server) owns warehouses; it tells the core of each one at start and
//! on every change. Lines carry their own copy of the active flag for their checks; this
//! directory is what allocation reads and what a newly spawned line starts from.

use dashmap::DashMap;

use crate::types::{ShopId, WarehouseId};

/// What allocation needs to know about a warehouse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WarehouseInfo {
    /// Lower first when stock is allocated (API.md default 100).
    pub priority: i32,
    /// Inactive warehouses keep their lines but count for nothing.
    pub active: bool,
    /// The shop that owns it; `None`: the platform's own.
    pub shop_id: Option<ShopId>,
}

impl Default for WarehouseInfo {
    fn default() -> Self {
        Self {
            priority: 100,
            active: true,
            shop_id: None,
        }
    }
}

/// Warehouse id to [`WarehouseInfo`].
#[derive(Default)]
pub struct Warehouses {
    map: DashMap<WarehouseId, WarehouseInfo>,
}

impl Warehouses {
    pub fn get(&self, id: WarehouseId) -> Option<WarehouseInfo> {
        self.map.get(&id).map(|w| *w)
    }

    /// The ids of the active warehouses.
    pub fn active_ids(&self) -> Vec<WarehouseId> {
        self.map
            .iter()
            .filter(|w| w.active)
            .map(|w| *w.key())
            .collect()
    }

    /// The warehouses the given shops own.
    pub fn of_shops(&self, shops: &[ShopId]) -> Vec<WarehouseId> {
        self.map
            .iter()
            .filter(|w| w.shop_id.is_some_and(|shop| shops.contains(&shop)))
            .map(|w| *w.key())
            .collect()
    }

    /// Whether the warehouse may serve a request limited to `shop` (any, when `None`).
    pub fn serves(&self, id: WarehouseId, shop: Option<ShopId>) -> bool {
        self.get(id)
            .is_some_and(|info| shop.is_none() || info.shop_id == shop)
    }

    pub(crate) fn upsert(&self, id: WarehouseId, info: WarehouseInfo) {
        self.map.insert(id, info);
    }

    pub(crate) fn set_active(&self, id: WarehouseId, active: bool) -> bool {
        match self.map.get_mut(&id) {
            Some(mut info) => {
                info.active = active;
                true
            }
            None => false,
        }
    }
}
