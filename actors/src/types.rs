//! The vocabulary at the bottom of the core, importing nothing of its crate: identifiers
//! and quantities (parsed once at the edge so the core never re-checks them), the
//! reservation statuses and held items every layer speaks of, and the lock helper.

use std::fmt;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The current time to the microsecond: what PostgreSQL keeps, so a state read back from
/// the store equals the state that was written.
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// Integer id of a warehouse (assigned by the catalog).
pub type WarehouseId = i64;
/// Integer id of a product (assigned by the catalog).
pub type ProductId = i64;
/// Integer id of a shop: a marketplace seller that owns warehouses.
pub type ShopId = i64;

/// The most a single request may move or set: 1,000,000,000 units (API.md).
pub const MAX_QUANTITY: u64 = 1_000_000_000;
/// The most a line may hold on hand: what fits a PostgreSQL `BIGINT`.
pub const MAX_ON_HAND: u64 = i64::MAX as u64;

/// One stock line: a (warehouse, product) pair, the unit of serialization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LineKey {
    pub warehouse_id: WarehouseId,
    pub product_id: ProductId,
}

impl LineKey {
    pub fn new(warehouse_id: WarehouseId, product_id: ProductId) -> Self {
        Self {
            warehouse_id,
            product_id,
        }
    }
}

impl fmt::Display for LineKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}/p{}", self.warehouse_id, self.product_id)
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh UUID v7, so ids sort by creation time.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// Id of a reservation; also the key of its holds on each line.
    ReservationId
);
uuid_id!(
    /// Id of a transfer between two lines.
    TransferId
);

/// A quantity that moves stock: `1..=MAX_QUANTITY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Quantity(u64);

/// Why a number is not a valid [`Quantity`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("quantity must be between 1 and {MAX_QUANTITY}, got {0}")]
pub struct QuantityError(pub i128);

impl Quantity {
    pub fn new(value: i128) -> Result<Self, QuantityError> {
        if (1..=MAX_QUANTITY as i128).contains(&value) {
            Ok(Self(value as u64))
        } else {
            Err(QuantityError(value))
        }
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl TryFrom<i64> for Quantity {
    type Error = QuantityError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::new(value.into())
    }
}

impl TryFrom<u64> for Quantity {
    type Error = QuantityError;
    fn try_from(value: u64) -> Result<Self, Self::Error> {
        Self::new(value.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantity_accepts_one_to_a_billion_only() {
        assert!(Quantity::new(0).is_err());
        assert!(Quantity::new(-5).is_err());
        assert_eq!(Quantity::new(1).unwrap().get(), 1);
        assert_eq!(Quantity::new(1_000_000_000).unwrap().get(), MAX_QUANTITY);
        assert!(Quantity::new(1_000_000_001).is_err());
    }

    #[test]
    fn reservation_ids_sort_by_creation() {
        let a = ReservationId::new();
        let b = ReservationId::new();
        assert!(a < b);
    }
}

/// Where a reservation is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReservationStatus {
    Pending,
    Committed,
    Released,
    Expired,
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Committed => "committed",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Committed,
            Self::Released,
            Self::Expired,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
    }
}

impl fmt::Display for ReservationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One requested item; without `warehouse_id` it is allocated across warehouses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemRequest {
    pub product_id: ProductId,
    pub quantity: Quantity,
    pub warehouse_id: Option<WarehouseId>,
}

/// What a reservation holds on one line: `quantity` reserved, of which `committed` have
/// left and `released` went back (partial fulfilment); the rest is still held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReservedItem {
    pub product_id: ProductId,
    pub warehouse_id: WarehouseId,
    pub quantity: u64,
    pub committed: u64,
    pub released: u64,
}

impl ReservedItem {
    pub fn key(&self) -> LineKey {
        LineKey::new(self.warehouse_id, self.product_id)
    }

    /// Units still held on the line.
    pub fn held(&self) -> u64 {
        self.quantity - self.committed - self.released
    }
}

/// Locks a mutex, recovering from poison: the data behind these locks is only ever
/// replaced whole, so a panic elsewhere cannot leave it half-written.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
