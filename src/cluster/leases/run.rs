//! The lease loop: rounds a few times per lease, and what it tells the node.

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::{Epoch, Hold, Leases};
use crate::cluster::shard::Shard;

/// What a node does as its leases change ([`Leases::run`] calls it).
pub trait Membership: Send + Sync + 'static {
    /// Newly claimed shards: restore their live state, then answer them (the loop marks
    /// them served once this returns).
    fn claimed(&self, shards: Vec<(Shard, Epoch)>) -> BoxFuture<'_, ()>;
    /// Shards another node took over: stop answering them and forget their lines and
    /// reservations without writing anything of them.
    fn lost(&self, shards: Vec<Shard>) -> BoxFuture<'_, ()>;
    /// Shards to hand to another node: stop answering them, and return once everything
    /// they took is durable (the lease is released after).
    fn hand_off(&self, shards: Vec<Shard>) -> BoxFuture<'_, ()>;
    /// Whether the node can serve at all (its messaging is up). While it cannot, it renews
    /// nothing and sends no heartbeat, so its shards move to nodes that can.
    fn can_serve(&self) -> bool {
        true
    }
    /// Shards still held but past their serving deadline (their lease could not be
    /// renewed in time): stop answering them, so that requests reach whoever takes them
    /// over; keep their memory, in case the next renewal keeps them after all.
    fn silence(&self, shards: Vec<Shard>) -> BoxFuture<'_, ()> {
        let _ = shards;
        Box::pin(async {})
    }
    /// Silenced shards renewed after all (nobody took them): answer them again.
    fn resume(&self, shards: Vec<Shard>) -> BoxFuture<'_, ()> {
        let _ = shards;
        Box::pin(async {})
    }
}

impl Leases {
    /// Runs rounds every [`LeaseSettings::round_every`] until `stop`, telling `node` what
    /// changed; then hands every shard off and [leaves](Self::leave). A round that fails
    /// (the database unreachable) is retried at the next tick; meanwhile the deadlines
    /// run out and the node stops serving on its own.
    pub async fn run(&self, node: &dyn Membership, stop: CancellationToken) {
        let mut every = tokio::time::interval(self.settings.round_every());
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Deadlines are checked ten times a lease, between rounds too: a node whose rounds
        // fail goes quiet soon after each deadline, not a round later.
        let mut check = tokio::time::interval(self.settings.lease / 10);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = check.tick() => {
                    self.silence_expired(node).await;
                    continue;
                }
                _ = stop.cancelled() => break,
            }
            if !node.can_serve() {
                tracing::warn!("this node cannot serve (its messaging is down): renewing nothing");
                continue;
            }
            // Bounded: a database that hangs must not hold the loop past the next round.
            let round = match tokio::time::timeout(self.settings.round_every(), self.round()).await
            {
                Ok(Ok(round)) => round,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "renewing shard leases failed; retrying");
                    continue;
                }
                Err(_) => {
                    tracing::warn!("renewing shard leases took too long; retrying");
                    continue;
                }
            };
            if !round.lost.is_empty() {
                node.lost(round.lost).await;
            }
            let renewed = self.renewed_after_silence();
            if !renewed.is_empty() {
                node.resume(renewed).await;
            }
            if !round.claimed.is_empty() {
                let shards: Vec<Shard> = round.claimed.iter().map(|(s, _)| *s).collect();
                node.claimed(round.claimed).await;
                self.start_serving(&shards);
            }
            if !round.handing_off.is_empty() {
                node.hand_off(round.handing_off.clone()).await;
                if let Err(error) = self.release(&round.handing_off).await {
                    tracing::warn!(%error, "releasing handed-off shards failed; they expire");
                }
            }
        }
        let all: Vec<Shard> = self
            .held_columns(|_| true)
            .0
            .iter()
            .map(|s| *s as Shard)
            .collect();
        {
            let mut held = self.held.write().unwrap_or_else(|e| e.into_inner());
            for h in held.values_mut() {
                h.hold = Hold::Leaving;
            }
        }
        node.hand_off(all).await;
        if let Err(error) = self.leave().await {
            tracing::warn!(%error, "leaving the cluster cleanly failed; its leases expire");
        }
    }

    /// Tells `node` to stop answering the shards whose deadline passed since the last check.
    async fn silence_expired(&self, node: &dyn Membership) {
        let now = std::time::Instant::now();
        let expired: Vec<Shard> = {
            let held = self.held.read().unwrap_or_else(|e| e.into_inner());
            let mut silenced = self.silenced.lock().unwrap_or_else(|e| e.into_inner());
            silenced.retain(|shard| held.contains_key(shard));
            held.iter()
                .filter(|(_, h)| h.hold == Hold::Serving && h.until <= now)
                .filter_map(|(shard, _)| silenced.insert(*shard).then_some(*shard))
                .collect()
        };
        if !expired.is_empty() {
            tracing::warn!(
                shards = expired.len(),
                "shard leases not renewed in time: no longer answering them"
            );
            node.silence(expired).await;
        }
    }

    /// Silenced shards that a round renewed after all.
    fn renewed_after_silence(&self) -> Vec<Shard> {
        let now = std::time::Instant::now();
        let held = self.held.read().unwrap_or_else(|e| e.into_inner());
        let mut silenced = self.silenced.lock().unwrap_or_else(|e| e.into_inner());
        let renewed: Vec<Shard> = silenced
            .iter()
            .copied()
            .filter(|shard| {
                held.get(shard)
                    .is_some_and(|h| h.hold == Hold::Serving && h.until > now)
            })
            .collect();
        silenced.retain(|shard| held.contains_key(shard) && !renewed.contains(shard));
        renewed
    }
}
