//! The fence every flush transaction of a cluster node passes, and giving shards up at
//! once when it fails.

use sqlx::PgConnection;

use super::{Fenced, Leases};
use crate::cluster::shard::Shard;

impl Leases {
    /// The fence: in the transaction `tx` that is about to write changes of `shards`,
    /// checks that each is still held by this node under the epoch it claimed, and keeps
    /// those lease rows locked (`FOR SHARE`) until the transaction ends, so no takeover
    /// can happen between this check and the commit. `Err(Fenced)` names the shards that
    /// are no longer this node's: the transaction must roll back.
    ///
    /// Every statement that locks lease rows (this one, renewals, claims, hand-offs) locks
    /// them in shard order, so two of them can wait for each other but never deadlock
    /// (PostgreSQL would break a deadlock only after `deadlock_timeout`, a second of
    /// stalled flushes).
    pub async fn fence(
        &self,
        tx: &mut PgConnection,
        shards: &[Shard],
    ) -> Result<Result<(), Fenced>, sqlx::Error> {
        let mut checked = Vec::with_capacity(shards.len());
        let mut epochs = Vec::with_capacity(shards.len());
        let mut unheld = Vec::new();
        {
            let held = self.held.read().unwrap_or_else(|e| e.into_inner());
            for shard in shards {
                match held.get(shard) {
                    Some(h) => {
                        checked.push(*shard as i16);
                        epochs.push(h.epoch);
                    }
                    None => unheld.push(*shard),
                }
            }
        }
        let still: Vec<i16> = sqlx::query_scalar(
            "SELECT l.shard FROM shard_leases l
             JOIN unnest($2::smallint[], $3::bigint[]) AS h (shard, epoch)
               ON l.shard = h.shard AND l.epoch = h.epoch
             WHERE l.owner = $1
             ORDER BY l.shard
             FOR SHARE OF l",
        )
        .bind(&self.settings.node)
        .bind(&checked)
        .bind(&epochs)
        .fetch_all(tx)
        .await?;
        let mut refused: Vec<Shard> = unheld;
        refused.extend(
            checked
                .iter()
                .filter(|shard| !still.contains(shard))
                .map(|shard| *shard as Shard),
        );
        if refused.is_empty() {
            return Ok(Ok(()));
        }
        refused.sort_unstable();
        refused.dedup();
        // Taken over: never served again from this node's memory.
        self.forget(&refused);
        Ok(Err(Fenced { shards: refused }))
    }

    /// Gives `shards` up at once: a batch changing them was refused, so this node's memory
    /// of them holds changes the store never took. They are served no more, reported lost
    /// at the next round (their lines are forgotten), and those whose lease is still this
    /// node's are released, to be claimed again (by this node too) and loaded afresh.
    pub async fn forfeit(&self, shards: &[Shard]) -> Result<(), sqlx::Error> {
        let (still, epochs) = self.held_columns(|(shard, _)| shards.contains(shard));
        self.forget(shards);
        self.give_up(&self.pool, &still, &epochs).await
    }

    /// Stops serving `shards` and queues them to be reported lost.
    fn forget(&self, shards: &[Shard]) {
        {
            let mut held = self.held.write().unwrap_or_else(|e| e.into_inner());
            for shard in shards {
                held.remove(shard);
            }
        }
        self.forfeited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(shards);
    }
}
