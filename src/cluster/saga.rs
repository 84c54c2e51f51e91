//! Reservations across shards: a saga over one part per shard (DESIGN.md "Growing past
//! one machine"). What every node must agree on without asking: each part's id and what the
//! parts' statuses make of the whole.
//!
//! A part is an ordinary reservation, held by its shard's owner under an id derived from
//! the reservation's id and the shard, so that asking again (a retry, a coordinator that
//! took over) names the same part and holds nothing twice, and a part released before its
//! reserve arrived stays refused.

use std::sync::atomic::{AtomicU64, Ordering};

use stockline_actors::{Home, ReservationId, ReservationStatus, with_home};
use uuid::Uuid;
use xxhash_rust::xxh3::xxh3_128;

use super::shard::Shard;

/// One shard's part of a reservation across shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SagaPart {
    /// The part's own reservation id.
    pub id: ReservationId,
    pub shard: Shard,
}

impl SagaPart {
    pub fn new(saga: Uuid, shard: Shard) -> Self {
        Self {
            id: ReservationId(part_id(saga, shard)),
            shard,
        }
    }
}

/// The id of `saga`'s part in `shard`: the same on every node, never another's.
pub fn part_id(saga: Uuid, shard: Shard) -> Uuid {
    let mut bytes = [0u8; 18];
    bytes[..16].copy_from_slice(saga.as_bytes());
    bytes[16..].copy_from_slice(&shard.to_le_bytes());
    derived(&bytes)
}

/// The id of the reservation a user's request under an `Idempotency-Key` makes: the same
/// request under the same key names the same reservation (and so the same parts) on
/// every node, so a retry after the coordinator died finishes it instead of holding
/// stock a second time.
pub fn saga_id(user: i64, key: &str, fingerprint: &str) -> Uuid {
    let text = format!("saga\n{user}\n{key}\n{fingerprint}");
    with_home(derived(text.as_bytes()), Home::Spans)
}

/// A fresh id for a reservation across shards, which says so ([`Home::Spans`]).
pub fn spanning() -> Uuid {
    ReservationId::homed(Home::Spans).0
}

/// The id of an order placed under `key` by `user` with `fingerprint`, naming `home` (its
/// shard): a retry after the first try's answer was lost names the same order.
pub fn keyed_order_id(user: i64, key: &str, fingerprint: &str, home: Shard) -> Uuid {
    let text = format!("order\n{user}\n{key}\n{fingerprint}");
    with_home(derived(text.as_bytes()), Home::One(home))
}

/// The id of the order cart `cart` becomes, naming `home` (the cart's shard): every try
/// of its checkout names the same order, so a try after a crash finds the order an
/// earlier one made.
pub fn cart_order_id(cart: Uuid, home: Shard) -> Uuid {
    let text = format!("cart order\n{cart}");
    with_home(derived(text.as_bytes()), Home::One(home))
}

/// The id of the reservation across shards that ties a held cart's parts together when
/// its order takes them over (the same for every try of the checkout).
pub fn cart_saga_id(cart: Uuid) -> Uuid {
    let text = format!("cart saga\n{cart}");
    with_home(derived(text.as_bytes()), Home::Spans)
}

/// A version 8 (custom) UUID from a hash of `bytes`.
fn derived(bytes: &[u8]) -> Uuid {
    uuid::Builder::from_custom_bytes(xxh3_128(bytes).to_le_bytes()).into_uuid()
}

/// How the reservations across shards a node coordinated ended up, counted since start
/// (`stockline_cluster_reservations_total`).
#[derive(Debug, Default)]
pub struct Outcomes {
    counts: [AtomicU64; Outcome::ALL.len()],
}

/// One way a reservation across shards ends up at its coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every part held.
    Held,
    /// A part refused: every part released.
    Refused,
    Committed,
    Released,
    /// Found expired at commit: no part committed.
    Expired,
    /// Decided by a coordinator that stopped, finished by this node for its parts.
    Finished,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Self::Held,
        Self::Refused,
        Self::Committed,
        Self::Released,
        Self::Expired,
        Self::Finished,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Refused => "refused",
            Self::Committed => "committed",
            Self::Released => "released",
            Self::Expired => "expired",
            Self::Finished => "finished_after_coordinator",
        }
    }
}

impl Outcomes {
    pub fn count(&self, outcome: Outcome) {
        self.counts[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Every outcome with its count.
    pub fn counts(&self) -> impl Iterator<Item = (Outcome, u64)> + '_ {
        Outcome::ALL
            .into_iter()
            .map(|o| (o, self.counts[o as usize].load(Ordering::Relaxed)))
    }
}

/// What a reservation is, from its parts: pending while any part is; expired if any part
/// expired (no part is committed without every part held, see `http::saga`); committed
/// if any part left the warehouse; else released.
pub fn status_of(parts: &[ReservationStatus]) -> ReservationStatus {
    use ReservationStatus::*;
    if parts.contains(&Pending) {
        Pending
    } else if parts.contains(&Committed) {
        Committed
    } else if parts.contains(&Expired) {
        Expired
    } else {
        Released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_ids_are_stable_and_distinct() {
        let saga: Uuid = "0190f3a4-1111-7222-8333-444455556666".parse().unwrap();
        let a = part_id(saga, 3);
        assert_eq!(a, part_id(saga, 3), "the same on every call");
        assert_ne!(a, part_id(saga, 4));
        assert_ne!(a, part_id(Uuid::now_v7(), 3));
        assert_eq!(a.get_version_num(), 8);
        assert_eq!(SagaPart::new(saga, 3).id.0, a);
    }

    #[test]
    fn a_key_names_one_reservation_per_user_and_request() {
        let id = saga_id(7, "k", "f");
        assert_eq!(id, saga_id(7, "k", "f"));
        assert_ne!(id, saga_id(8, "k", "f"));
        assert_ne!(id, saga_id(7, "k2", "f"));
        assert_ne!(id, saga_id(7, "k", "g"));
    }

    #[test]
    fn the_whole_follows_its_parts() {
        use ReservationStatus::*;
        assert_eq!(status_of(&[Pending, Committed]), Pending);
        assert_eq!(status_of(&[Committed, Committed]), Committed);
        assert_eq!(status_of(&[Committed, Released]), Committed);
        assert_eq!(status_of(&[Expired, Released]), Expired);
        assert_eq!(status_of(&[Released, Released]), Released);
    }
}
