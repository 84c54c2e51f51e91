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

/// Where a reservation is served, as its id says: by the owner of one home (in cluster
/// mode, a shard), or coordinated over several (a reservation across shards). Any node
/// reads it from the id alone, with no lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Home {
    /// `0..HOMES`.
    One(u16),
    Spans,
}

/// How many homes an id can name.
pub const HOMES: u16 = 1024;
/// The 12 bits after a UUID's version that name [`Home::Spans`].
const SPANS: u16 = 0x800;

impl ReservationId {
    /// A fresh id (UUID v7, so ids still sort by creation time) that names `home`.
    pub fn homed(home: Home) -> Self {
        Self(with_home(Uuid::now_v7(), home))
    }

    /// The home the id names; `None` for an id made without one (before ids carried it,
    /// or by another program). An id not made by [`with_home`] passes the check by chance
    /// once in 2^32.
    pub fn home(&self) -> Option<Home> {
        let bytes = self.0.as_bytes();
        let version = bytes[6] >> 4;
        let mark = u16::from(bytes[6] & 0x0f) << 8 | u16::from(bytes[7]);
        if !matches!(version, 7 | 8) || bytes[12..] != checksum(bytes) {
            return None;
        }
        match mark {
            SPANS => Some(Home::Spans),
            home if home < HOMES => Some(Home::One(home)),
            _ => None,
        }
    }
}

/// `id` with `home` written into it: the 12 bits after the version (random in a v7 or a
/// hashed v8 id), and a checksum of the first 12 bytes in the last 4, so that an id made
/// otherwise is not read as homed. The version, the variant and the time stay.
pub fn with_home(id: Uuid, home: Home) -> Uuid {
    let mark = match home {
        Home::One(home) => home % HOMES,
        Home::Spans => SPANS,
    };
    let mut bytes = *id.as_bytes();
    bytes[6] = (bytes[6] & 0xf0) | (mark >> 8) as u8;
    bytes[7] = mark as u8;
    let sum = checksum(&bytes);
    bytes[12..].copy_from_slice(&sum);
    Uuid::from_bytes(bytes)
}

fn checksum(bytes: &[u8; 16]) -> [u8; 4] {
    (xxhash_rust::xxh3::xxh3_64(&bytes[..12]) as u32).to_le_bytes()
}

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

    #[test]
    fn a_homed_id_names_its_home_and_keeps_its_version_and_time() {
        for home in [
            Home::One(0),
            Home::One(577),
            Home::One(HOMES - 1),
            Home::Spans,
        ] {
            let id = ReservationId::homed(home);
            assert_eq!(id.home(), Some(home));
            assert_eq!(id.0.get_version_num(), 7);
            assert_eq!(id.0.get_variant(), uuid::Variant::RFC4122);
            let now = Utc::now().timestamp_millis() as u64;
            let (secs, nanos) = id.0.get_timestamp().expect("v7").to_unix();
            let millis = secs * 1000 + u64::from(nanos) / 1_000_000;
            assert!(now.abs_diff(millis) < 5_000, "{millis} against {now}");
        }
        // A hashed (v8) id homed keeps its version too.
        let hashed = uuid::Builder::from_custom_bytes([7; 16]).into_uuid();
        let homed = ReservationId(with_home(hashed, Home::Spans));
        assert_eq!(
            (homed.home(), homed.0.get_version_num()),
            (Some(Home::Spans), 8)
        );
    }

    #[test]
    fn an_id_made_without_a_home_names_none() {
        // 10,000 plain ids: each passes the 32-bit check by chance once in 4 billion.
        for _ in 0..10_000 {
            assert_eq!(ReservationId::new().home(), None);
        }
        let mut id = ReservationId::homed(Home::One(3)).0.into_bytes();
        id[15] ^= 1;
        assert_eq!(ReservationId(Uuid::from_bytes(id)).home(), None);
        assert_eq!(ReservationId(Uuid::nil()).home(), None);
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
