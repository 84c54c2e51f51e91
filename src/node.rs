//! A cluster node's side of its leases ([`Membership`]): what it does with its core, its
//! routes and the store when it claims, loses or hands off shards. Here, not in `cluster/`,
//! which owns distribution only and knows nothing of the store.
//!
//! - Claimed: forget anything still in memory of those shards (from an earlier ownership),
//!   restore their live state from the store (pending reservations, the lines they hold,
//!   the open orders whose ids name them, the open carts of their customers), then answer
//!   their NATS subjects. The lease loop marks them served after.
//! - Lost (another node took them over, or a batch of theirs was refused): stop answering
//!   and forget their lines, reservations, orders and carts without writing anything.
//! - Past its serving deadline, not renewed (the database unreachable): stop answering,
//!   keep the memory; renewed after all (nobody took it): answer again.
//! - Handed off: stop answering (which waits for the requests taken), wait until
//!   everything journaled so far is durable, then forget them; the lease is released after.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::PgPool;
use stockline_actors::Core;

use crate::carts::Carts;
use crate::cluster::routing::Routes;
use crate::cluster::{Epoch, Membership, Shard, shard_of};
use crate::orders::Orders;
use crate::store::records::Buffer;
use crate::store::recovery;

/// How long a hand-off waits for the node's journal to be durable before forgetting the
/// shards anyway (their lease is released after; a write that comes later is fenced).
const DURABLE_WITHIN: Duration = Duration::from_secs(30);

/// A cluster node's core, routes and store, as its leases change.
pub struct ClusterNode {
    pub core: Arc<Core>,
    pub routes: Arc<Routes>,
    pub db: PgPool,
    pub buffer: Arc<Buffer>,
    /// The open orders whose ids name the shards this node serves.
    pub orders: Arc<Orders>,
    /// The open carts of the customers whose shards this node serves.
    pub carts: Arc<Carts>,
}

impl ClusterNode {
    async fn forget(&self, shards: &[Shard]) {
        let gone: HashSet<Shard> = shards.iter().copied().collect();
        self.orders.forget(&gone);
        self.carts.forget(&gone);
        let (lines, reservations) = self
            .core
            .forget(|product| gone.contains(&shard_of(product)))
            .await;
        if lines + reservations > 0 {
            tracing::info!(
                shards = shards.len(),
                lines,
                reservations,
                "forgot what this node held of shards no longer its own"
            );
        }
    }

    /// Starts answering `shards`' subjects.
    async fn answer(&self, shards: &[Shard]) {
        for (shard, error) in self.routes.serve_each(shards).await {
            tracing::warn!(%error, shard, "answering a shard's subject failed");
        }
    }

    /// Stops answering `shards`' subjects, once the requests they took are answered.
    async fn quiet(&self, shards: &[Shard]) {
        self.routes.stop_each(shards).await;
    }

    /// Reads the open orders and carts of `claimed` into memory.
    async fn load(&self, claimed: &HashSet<Shard>) -> Result<(), sqlx::Error> {
        self.orders
            .load_homed(&self.db, &self.core, claimed)
            .await?;
        self.carts.load_of(&self.db, claimed).await?;
        Ok(())
    }

    async fn restore(&self, shards: &[Shard]) {
        let mut pause = Duration::from_millis(100);
        let claimed: HashSet<Shard> = shards.iter().copied().collect();
        loop {
            match recovery::read_shards(&self.db, shards).await {
                Ok(stored) => match stored.restore_into(&self.core).await {
                    Ok(()) => match self.load(&claimed).await {
                        Ok(()) => return,
                        Err(error) => {
                            tracing::warn!(%error, "reading claimed shards' orders and carts failed; retrying")
                        }
                    },
                    Err(error) => tracing::error!(%error, "restoring claimed shards failed"),
                },
                Err(error) => tracing::warn!(%error, "reading claimed shards failed; retrying"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

impl Membership for ClusterNode {
    fn claimed(&self, shards: Vec<(Shard, Epoch)>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let shards: Vec<Shard> = shards.into_iter().map(|(shard, _)| shard).collect();
            self.forget(&shards).await;
            self.restore(&shards).await;
            self.answer(&shards).await;
        })
    }

    fn lost(&self, shards: Vec<Shard>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.quiet(&shards).await;
            self.forget(&shards).await;
        })
    }

    fn can_serve(&self) -> bool {
        self.routes.connected()
    }

    fn silence(&self, shards: Vec<Shard>) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.quiet(&shards).await })
    }

    fn resume(&self, shards: Vec<Shard>) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.answer(&shards).await })
    }

    fn hand_off(&self, shards: Vec<Shard>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.quiet(&shards).await;
            let head = self.buffer.head();
            let durable = self.buffer.watch();
            if tokio::time::timeout(DURABLE_WITHIN, durable.wait_for(head))
                .await
                .is_err()
            {
                tracing::warn!("handing shards off before this node's changes were durable");
            }
            self.forget(&shards).await;
        })
    }
}
