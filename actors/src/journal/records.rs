//! The records a change leaves behind: a line's state, a ledger movement, a reservation's
//! state, a transfer.

use chrono::{DateTime, Utc};

use crate::types::{
    LineKey, ProductId, ReservationId, ReservationStatus, ReservedItem, TransferId, WarehouseId,
};

/// Kind of a movement in the append-only ledger (API.md `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MovementKind {
    Adjust,
    Reserve,
    Release,
    Expire,
    Commit,
    TransferOut,
    TransferIn,
    /// The line's safety stock was set; `quantity` is the change.
    Safety,
}

impl MovementKind {
    pub const ALL: [Self; 8] = [
        Self::Adjust,
        Self::Reserve,
        Self::Release,
        Self::Expire,
        Self::Commit,
        Self::TransferOut,
        Self::TransferIn,
        Self::Safety,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Adjust => "adjust",
            Self::Reserve => "reserve",
            Self::Release => "release",
            Self::Expire => "expire",
            Self::Commit => "commit",
            Self::TransferOut => "transfer_out",
            Self::TransferIn => "transfer_in",
            Self::Safety => "safety",
        }
    }
}

/// What a movement refers to. Typed, so the hot path formats no strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Reservation(ReservationId),
    Transfer(TransferId),
    /// An adjustment's reason (`receipt`, `damage`, `count`, ...).
    Reason(String),
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Reservation(id) => id.fmt(f),
            Self::Transfer(id) => id.fmt(f),
            Self::Reason(reason) => f.write_str(reason),
        }
    }
}

/// Who made a change by hand, and the text they gave with it: kept on the movement so the
/// ledger says who counted, received or moved stock, and for which of their documents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Note {
    pub actor_user_id: Option<i64>,
    /// The client's own reference (a delivery note, a count sheet), up to 255 chars.
    pub reference: Option<String>,
}

/// A line's full state after a change. The store keeps only the highest `version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineRecord {
    pub key: LineKey,
    pub on_hand: u64,
    pub reserved: u64,
    pub safety_stock: u64,
    pub version: u64,
    pub updated_at: DateTime<Utc>,
}

/// One entry of the movement ledger. `quantity` is signed for adjustments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MovementRecord {
    pub key: LineKey,
    pub kind: MovementKind,
    pub quantity: i64,
    pub on_hand_after: u64,
    pub reserved_after: u64,
    pub safety_stock_after: u64,
    pub reference: Reference,
    /// Set for changes made by hand (adjustments, counts, transfers); `None` on the hot path.
    pub note: Option<std::sync::Arc<Note>>,
    pub at: DateTime<Utc>,
}

/// A reservation's state after it was created or settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationRecord {
    pub id: ReservationId,
    /// True only on the record that created the reservation (its `reservation.created`
    /// event); later records of a pending reservation (extended, reshaped, settled in
    /// part) are changes to it.
    pub created: bool,
    pub status: ReservationStatus,
    pub items: Vec<ReservedItem>,
    pub reference: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A completed transfer between two lines of one product.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRecord {
    pub id: TransferId,
    pub from_warehouse_id: WarehouseId,
    pub to_warehouse_id: WarehouseId,
    pub product_id: ProductId,
    pub quantity: u64,
    pub note: Option<std::sync::Arc<Note>>,
    pub created_at: DateTime<Utc>,
}

/// What the core asks the store to keep. An edge that journals records of its own wraps
/// these in its own record type (see [`JournalBuffer`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Line(LineRecord),
    Movement(MovementRecord),
    Reservation(ReservationRecord),
    Transfer(TransferRecord),
}
