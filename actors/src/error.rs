//! Every refusal the core can give, as values. A refused request changes nothing.

use crate::types::{ProductId, ReservationStatus, WarehouseId};

/// A refusal from the core. The edge maps each variant to one status code of API.md.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// Not enough available stock (`on_hand - reserved`) for the request.
    #[error(
        "insufficient stock for product {product_id}: requested {requested}, available {available}"
    )]
    InsufficientStock {
        product_id: ProductId,
        requested: u64,
        available: u64,
    },
    /// The hold is backordered (not yet filled by receipts): its stock cannot leave yet.
    #[error("{backordered} units of product {product_id} are backordered, not yet received")]
    Backordered {
        product_id: ProductId,
        backordered: u64,
    },
    /// The warehouse is inactive: it may not reserve, send or receive stock.
    #[error("warehouse {warehouse_id} is inactive")]
    WarehouseInactive { warehouse_id: WarehouseId },
    /// A request limited to one shop named a warehouse of another.
    #[error("warehouse {warehouse_id} does not belong to the shop")]
    NotInShop { warehouse_id: WarehouseId },
    /// The warehouse is not known to the core.
    #[error("warehouse {warehouse_id} is not known")]
    UnknownWarehouse { warehouse_id: WarehouseId },
    /// The reservation is not held on this line (never was, or was already settled).
    #[error("the reservation holds nothing on this line")]
    NotHeld,
    /// A partial commit or release asked for more of a line than the reservation holds there.
    #[error(
        "the reservation holds {held} of product {product_id} in warehouse {warehouse_id}, {requested} asked"
    )]
    PartNotHeld {
        product_id: ProductId,
        warehouse_id: WarehouseId,
        requested: u64,
        held: u64,
    },
    /// No reservation with this id.
    #[error("reservation not found")]
    ReservationNotFound,
    /// The reservation is no longer pending (or is being settled right now).
    #[error("reservation is {status}, not pending")]
    ReservationNotPending { status: ReservationStatus },
    /// A compare-and-swap `set_level` saw another version.
    #[error("version mismatch: expected {expected}, line is at {actual}")]
    VersionMismatch { expected: u64, actual: u64 },
    /// A quantity or delta out of range (the edge should have refused it first).
    #[error("invalid quantity: {0}")]
    InvalidQuantity(String),
    /// The change would push `on_hand` past what a line can hold.
    #[error("on_hand would exceed the maximum a line can hold")]
    LevelOverflow,
    /// A transfer from a warehouse to itself.
    #[error("a transfer needs two different warehouses")]
    SameWarehouse,
    /// A bound on in-flight messages or on the journal backlog was reached.
    #[error("overloaded: try again shortly")]
    Overloaded,
    /// The line did not answer in time, or is restarting.
    #[error("stock line unavailable: {0}")]
    Unavailable(String),
}

impl CoreError {
    /// True for refusals that say nothing about the request itself, only about load or
    /// health: the caller may retry the same request (with the same idempotency key).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Overloaded | Self::Unavailable(_))
    }
}

/// `Result` with [`CoreError`] as the default error.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;
