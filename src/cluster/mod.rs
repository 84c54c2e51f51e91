//! Cluster mode (DESIGN.md "Growing past one machine"): stock lines sharded by product over
//! several nodes.
//!
//! - [`shard`]: which of the 1024 shards a product is in (a stable hash: every node and
//!   every version agrees).
//! - [`leases`]: who owns each shard, with PostgreSQL as the authority: claims, renewals,
//!   hand-offs and the epoch fence every flush transaction checks.
//! - [`routing`]: requests between nodes, over NATS request/reply per shard.

pub mod leases;
pub mod routing;
pub mod shard;

pub use leases::{Epoch, Fenced, LeaseSettings, Leases, Membership, Round};
pub use routing::{RouteSettings, Routes};
pub use shard::{SHARDS, Shard, shard_of};
