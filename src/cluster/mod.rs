//! Cluster mode (DESIGN.md "Growing past one machine"): stock lines sharded by product over
//! several nodes.
//!
//! - [`shard`]: which of the 1024 shards a product is in (a stable hash: every node and
//!   every version agrees).
//! - [`leases`]: who owns each shard, with PostgreSQL as the authority: claims, renewals,
//!   hand-offs and the epoch fence every flush transaction checks.
//! - [`ordinal`]: each node's own range of journal numbers.
//! - [`routing`]: requests between nodes, over NATS request/reply per shard.
//! - [`route`]: which shard's owner serves a request, from its path and body.
//! - [`saga`]: reservations across shards, one part per shard.
//! - [`reference`]: changes to the catalog, warehouses, shops and logouts, announced to
//!   every node.
//! - [`Cluster`]: a running node's part, from joining at start to leaving at shutdown.

pub mod leases;
mod member;
pub mod ordinal;
pub mod reference;
pub mod route;
pub mod routing;
pub mod saga;
pub mod shard;

pub use leases::{Epoch, Fenced, LeaseSettings, Leases, Membership, Round};
pub use member::Cluster;
pub use ordinal::ORDINAL_SHIFT;
pub use routing::{RouteSettings, Routes};
pub use shard::{SHARD_FUNCTION, SHARDS, Shard, cart_shard, home_of, order_shard, shard_of};

use std::sync::Arc;

use stockline_actors::Lsn;

/// A node of a cluster as its store sees it: its leases, which fence every flush, and its
/// ordinal, which gives it journal numbers and a stored position of its own.
#[derive(Clone)]
pub struct Member {
    pub leases: Arc<Leases>,
    pub ordinal: u16,
}

impl Member {
    /// The setting that keeps the highest journal number this node has stored.
    pub fn position_key(&self) -> String {
        format!("journal_lsn.{}", self.ordinal)
    }

    /// Where this node's journal numbers start (exclusive).
    pub fn first_lsn(&self) -> Lsn {
        u64::from(self.ordinal) << ORDINAL_SHIFT
    }
}
