//! What the server journals: the core's records, and the edge's own (orders, payments,
//! idempotent answers), in one write-behind buffer so that what a request did to its lines
//! and what it records about it reach PostgreSQL in the same order and transaction.

use chrono::{DateTime, Utc};
use stockline_actors::{JournalBuffer, ProductId, Record, ReservationId, WarehouseId};

/// The write-behind buffer of this server.
pub type Buffer = JournalBuffer<StoreRecord>;

/// Anything the server asks the store to keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreRecord {
    /// A line, movement, reservation or transfer, from the core.
    Core(Record),
    Order(OrderRecord),
    Payment(PaymentRecord),
    Idempotency(IdempotencyRecord),
    Cart(CartRecord),
    /// Cluster mode: a reservation across shards, as its coordinator records it.
    Saga(SagaRecord),
}

impl From<Record> for StoreRecord {
    fn from(record: Record) -> Self {
        Self::Core(record)
    }
}

impl StoreRecord {
    /// What kind of record it is, as `dead_letters.kind` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Core(Record::Line(_)) => "line",
            Self::Core(Record::Movement(_)) => "movement",
            Self::Core(Record::Reservation(_)) => "reservation",
            Self::Core(Record::Transfer(_)) => "transfer",
            Self::Order(_) => "order",
            Self::Payment(_) => "payment",
            Self::Idempotency(_) => "idempotency",
            Self::Cart(_) => "cart",
            Self::Saga(_) => "saga",
        }
    }

    /// The record as debug text (control characters escaped, so always storable).
    pub fn describe(&self) -> String {
        match self {
            Self::Core(record) => format!("{record:?}"),
            Self::Order(order) => format!("{order:?}"),
            Self::Payment(payment) => format!("{payment:?}"),
            Self::Idempotency(answer) => format!("{answer:?}"),
            Self::Cart(cart) => format!("{cart:?}"),
            Self::Saga(saga) => format!("{saga:?}"),
        }
    }
}

/// An order, as journaled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderRecord {
    pub id: uuid::Uuid,
    pub user_id: i64,
    pub status: &'static str,
    pub items: Vec<OrderItemRecord>,
    pub total_cents: i64,
    pub reservation_id: ReservationId,
    pub expires_at: DateTime<Utc>,
    pub tracking_number: Option<String>,
    /// JSON text, as the client sent it.
    pub shipping_address: Option<String>,
    /// JSON text, as the client sent it.
    pub contact: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderItemRecord {
    pub product_id: ProductId,
    pub warehouse_id: WarehouseId,
    pub quantity: u64,
    pub unit_price_cents: i64,
}

/// A payment of an order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentRecord {
    pub id: uuid::Uuid,
    pub order_id: uuid::Uuid,
    pub method: String,
    pub amount_cents: i64,
    pub status: &'static str,
    pub created_at: DateTime<Utc>,
}

/// The first answer to an idempotent request, kept to answer its repeats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub user_id: i64,
    pub key: String,
    pub request_hash: String,
    pub status: u16,
    /// The JSON body answered.
    pub body: String,
    pub created_at: DateTime<Utc>,
}

/// A cart as it is after a change: the whole of it, so the newest record of a batch is all
/// the store needs. Journaled with the stock changes and the order of the same request, so
/// a checkout (order placed, reservation handed over, cart checked out) is stored whole or
/// not at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CartRecord {
    pub id: uuid::Uuid,
    pub user_id: i64,
    pub shop_id: Option<i64>,
    /// `open`, `checked_out`, or `deleted` (its row stays, hidden from every read).
    pub status: &'static str,
    pub hold: bool,
    pub reservation_id: Option<uuid::Uuid>,
    /// Cluster mode: the reservations, one per shard, holding a held cart's items.
    pub hold_parts: Vec<uuid::Uuid>,
    pub hold_expires_at: Option<DateTime<Utc>>,
    pub order_id: Option<uuid::Uuid>,
    /// `[{product_id, quantity, unit_price_cents}]`, by product.
    pub items: String,
    /// Counts the cart's changes: a row is only overwritten by a higher one.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What the coordinator of a reservation across shards records in its own batches (its
/// decisions, which other coordinators race for, are compare-and-set statements of their
/// own, `inventory::saga`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SagaRecord {
    /// Every part is held: the row that ties them together, `pending`. Stored, it changes
    /// nothing of a row already there (a retry's).
    Held {
        id: uuid::Uuid,
        /// Each part's shard and id.
        parts: Vec<(u16, uuid::Uuid)>,
        reference: Option<String>,
        expires_at: DateTime<Utc>,
        created_at: DateTime<Utc>,
    },
    /// A decision carried to every part: the row moves from `from` to `to`, only if it
    /// is still at `from`.
    Settled {
        id: uuid::Uuid,
        from: &'static str,
        to: &'static str,
    },
}
