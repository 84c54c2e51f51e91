//! Shards by product: `xxh3(product id) % 1024`, so a product's lines in every warehouse,
//! its transfers and its allocation stay in one shard.

use stockline_actors::ProductId;
use xxhash_rust::xxh3::xxh3_64;

/// How many shards there are. Fixed: changing it would move almost every product.
pub const SHARDS: u16 = 1024;

// A reservation's id names its shard as one of the core's homes.
const _: () = assert!(SHARDS == stockline_actors::HOMES);

/// The shard function as the cluster map states it (`GET /cluster/shards`).
pub const SHARD_FUNCTION: &str = "xxh3_64(product_id as 8 little-endian bytes) % shard_count";

/// A shard's number, below [`SHARDS`].
pub type Shard = u16;

/// The shard of `product`: the same on every node and in every version (the hash of its
/// id's eight little-endian bytes).
pub fn shard_of(product: ProductId) -> Shard {
    (xxh3_64(&product.to_le_bytes()) % u64::from(SHARDS)) as Shard
}

/// The shard an id names (a reservation's or an order's, see `stockline_actors::Home`);
/// `None` for one made before ids named their shard, or spanning several.
pub fn home_of(id: uuid::Uuid) -> Option<Shard> {
    match stockline_actors::ReservationId(id).home() {
        Some(stockline_actors::Home::One(home)) => Some(home),
        _ => None,
    }
}

/// The shard whose owner serves an order: the one its id names, or for an id made
/// before ids named one, the hash of the id.
pub fn order_shard(id: uuid::Uuid) -> Shard {
    home_of(id).unwrap_or_else(|| (xxh3_64(id.as_bytes()) % u64::from(SHARDS)) as Shard)
}

/// The shard whose owner serves a customer's carts: the hash of the customer's id, as a
/// product's (so one node counts and lists them all).
pub fn cart_shard(user_id: i64) -> Shard {
    shard_of(user_id)
}

/// How well `node` suits `shard` (rendezvous hashing): each shard goes to the live node
/// that suits it best, so every node computes the same owner from the same list of
/// nodes, and a node joining or leaving moves only the shards it wins or held.
pub fn affinity(node: &str, shard: Shard) -> u64 {
    let mut bytes = Vec::with_capacity(node.len() + 2);
    bytes.extend_from_slice(node.as_bytes());
    bytes.extend_from_slice(&shard.to_le_bytes());
    xxh3_64(&bytes)
}

/// The node `shard` belongs to among `nodes` (none when there are none).
pub fn target(nodes: &[String], shard: Shard) -> Option<&str> {
    nodes
        .iter()
        .max_by_key(|node| (affinity(node, shard), node.as_str()))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash is part of the data's layout: a product must not change shards between
    /// versions, or a rolling upgrade would give two nodes the same line.
    #[test]
    fn a_products_shard_never_changes() {
        let known: Vec<Shard> = [1, 2, 3, 42, 1_000_000, i64::MAX]
            .into_iter()
            .map(shard_of)
            .collect();
        // The same as the reference implementation gives (Python's `xxhash.xxh3_64`).
        assert_eq!(known, [302, 579, 637, 968, 352, 838]);
    }

    #[test]
    fn products_spread_evenly() {
        let mut counts = vec![0u32; usize::from(SHARDS)];
        for product in 1..=102_400 {
            counts[usize::from(shard_of(product))] += 1;
        }
        // 100 per shard on average; a sound hash keeps every shard within ±50%.
        assert!(
            counts.iter().all(|&c| (50..=150).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn shards_spread_over_nodes_and_a_new_node_takes_only_its_share() {
        let three: Vec<String> = ["a", "b", "c"].map(String::from).into();
        let four: Vec<String> = ["a", "b", "c", "d"].map(String::from).into();
        let mut per_node = std::collections::HashMap::<&str, u32>::new();
        let mut moved = 0;
        for shard in 0..SHARDS {
            let before = target(&three, shard).unwrap();
            let after = target(&four, shard).unwrap();
            *per_node.entry(before).or_default() += 1;
            if before != after {
                assert_eq!(after, "d", "a shard moved between two old nodes");
                moved += 1;
            }
        }
        assert!(
            per_node.values().all(|&n| (250..=430).contains(&n)),
            "{per_node:?}"
        );
        // About a quarter moves to the new node; nothing else moves.
        assert!((180..=340).contains(&moved), "{moved} moved");
        assert_eq!(target(&[], 7), None);
    }
}
