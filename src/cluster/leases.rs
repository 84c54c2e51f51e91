//! Shard ownership, with PostgreSQL as the authority (`shard_leases`, `cluster_nodes`).
//!
//! Every node runs [`Leases::round`] a few times per lease:
//! 1. its heartbeat, and the list of live nodes (a heartbeat within one lease);
//! 2. renews the leases it holds, by epoch: a lease whose epoch moved on was taken over,
//!    and is [lost](Round::lost) at once;
//! 3. shares the shards out by rendezvous hashing over the live nodes (every node computes
//!    the same owners); held shards now meant for another node are
//!    [handed off](Round::handing_off): served no more, drained, then
//!    [released](Leases::release);
//! 4. claims the shards meant for it that are free or expired, each with its epoch bumped
//!    (also those still under its own name: a node restarted with the same id is a new
//!    incarnation, and the bump fences the old one). A claimed shard is served only once
//!    the node has restored its live state ([`Leases::start_serving`]).
//!
//! A node serves a shard only until its own deadline: the monotonic time the renewal was
//! sent plus the lease, less a fifth of it. The database's `expires_at` is later than that,
//! so a node that cannot renew (cut off, paused, its database gone) has stopped serving
//! before anyone may claim its shards. Stopping serving is not enough on its own (a paused
//! process cannot stop anything), so every flush transaction first runs [`Leases::fence`]:
//! the epochs of the shards it writes, taken `FOR SHARE`, must still be this node's. A
//! takeover bumps the epoch, which waits for a fenced transaction in flight to end, and any
//! later one of the old owner finds the new epoch and rolls back.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::shard::{SHARDS, Shard, target};

mod fence;
mod run;

pub use run::Membership;

/// A lease's fencing token: grows by one at every claim of the shard.
pub type Epoch = i64;

/// `WITH mine AS (...)`: this node's lease rows (owner `$1`) among the shards and epochs
/// bound at `$<shards>` and the parameter after it, still under those epochs, locked in
/// shard order (as every statement locking lease rows does: see [`Leases::fence`]).
fn mine_locked(shards: u8) -> String {
    format!(
        "WITH mine AS (
             SELECT l.shard FROM shard_leases l
             JOIN unnest(${shards}::smallint[], ${epochs}::bigint[]) AS h (shard, epoch)
               ON l.shard = h.shard AND l.epoch = h.epoch
             WHERE l.owner = $1
             ORDER BY l.shard
             FOR NO KEY UPDATE OF l)",
        epochs = shards + 1
    )
}

/// How long a node that stopped without leaving (killed, its machine gone) stays in
/// `cluster_nodes`, shown as not live, before the others forget it.
pub const FORGET_SILENT: Duration = Duration::from_secs(3600);

/// Who this node is, and how long a lease lasts.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub node: String,
    /// Where this node's HTTP edge listens (shown to operators).
    pub http_addr: String,
    pub lease: Duration,
}

impl LeaseSettings {
    /// How long before the database's expiry a node stops serving a shard it could not
    /// renew (covers the renewal's own round trip and clocks running at slightly different
    /// rates).
    pub fn margin(&self) -> Duration {
        self.lease / 5
    }

    /// How often a round runs: three times per lease, so one failed round loses nothing.
    pub fn round_every(&self) -> Duration {
        self.lease / 3
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    /// Claimed, its live state still being restored: not served yet (see
    /// [`Leases::start_serving`]), but its writes pass the fence.
    Starting,
    /// Served until `until`.
    Serving,
    /// Being handed to another node: not served, its changes still draining.
    Leaving,
}

#[derive(Clone, Copy, Debug)]
struct Held {
    epoch: Epoch,
    until: Instant,
    hold: Hold,
}

/// What one [`Leases::round`] changed.
#[derive(Debug, Default)]
pub struct Round {
    /// The live nodes, this one included, sorted.
    pub nodes: Vec<String>,
    /// Shards claimed now, with their new epochs: their lines load from the database.
    pub claimed: Vec<(Shard, Epoch)>,
    /// Shards another node took over: their lines must be forgotten, never written.
    pub lost: Vec<Shard>,
    /// Shards now meant for another node: no longer served; once their changes are
    /// durable, [`Leases::release`] gives them up.
    pub handing_off: Vec<Shard>,
}

/// A write refused by the fence: these shards are no longer this node's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("shards {shards:?} are no longer this node's: another node took them over")]
pub struct Fenced {
    pub shards: Vec<Shard>,
}

/// This node's leases.
pub struct Leases {
    pool: PgPool,
    settings: LeaseSettings,
    held: RwLock<HashMap<Shard, Held>>,
    /// Shards given up outside a round (the fence refused them, or a refused batch
    /// touched them): the next round reports them [lost](Round::lost).
    forfeited: std::sync::Mutex<Vec<Shard>>,
    /// Shards held but no longer answered, their deadline having passed (see
    /// [`Membership::silence`]).
    silenced: std::sync::Mutex<std::collections::HashSet<Shard>>,
}

impl Leases {
    pub fn new(pool: PgPool, settings: LeaseSettings) -> Self {
        Self {
            pool,
            settings,
            held: RwLock::default(),
            forfeited: std::sync::Mutex::default(),
            silenced: std::sync::Mutex::default(),
        }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// The epoch under which this node serves `shard` now; `None` if it does not (never
    /// held, lost, handed off, or not renewed in time).
    pub fn serving(&self, shard: Shard) -> Option<Epoch> {
        let held = self.held.read().unwrap_or_else(|e| e.into_inner());
        held.get(&shard)
            .filter(|h| h.hold == Hold::Serving && h.until > Instant::now())
            .map(|h| h.epoch)
    }

    /// How much longer this node serves `shard` for certain (until its serving deadline,
    /// which a renewal moves on); `None` if it does not serve it. Another node cannot own
    /// the shard before this has run out, and a margin more.
    pub fn serving_for(&self, shard: Shard) -> Option<Duration> {
        let held = self.held.read().unwrap_or_else(|e| e.into_inner());
        held.get(&shard)
            .filter(|h| h.hold == Hold::Serving)
            .and_then(|h| h.until.checked_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
    }

    /// Whether this node may hold `shard`'s lines in memory now: it serves the shard, or
    /// is restoring it after a claim.
    pub fn may_load(&self, shard: Shard) -> bool {
        let held = self.held.read().unwrap_or_else(|e| e.into_inner());
        held.get(&shard).is_some_and(|h| {
            matches!(h.hold, Hold::Starting | Hold::Serving) && h.until > Instant::now()
        })
    }

    /// Starts serving claimed shards whose live state is restored (a claimed shard is not
    /// served before, so no request meets it half-loaded).
    pub fn start_serving(&self, shards: &[Shard]) {
        let mut held = self.held.write().unwrap_or_else(|e| e.into_inner());
        for shard in shards {
            if let Some(h) = held.get_mut(shard)
                && h.hold == Hold::Starting
            {
                h.hold = Hold::Serving;
            }
        }
    }

    /// The shards this node serves now, sorted.
    pub fn served(&self) -> Vec<(Shard, Epoch)> {
        let now = Instant::now();
        let held = self.held.read().unwrap_or_else(|e| e.into_inner());
        let mut served: Vec<_> = held
            .iter()
            .filter(|(_, h)| h.hold == Hold::Serving && h.until > now)
            .map(|(shard, h)| (*shard, h.epoch))
            .collect();
        served.sort_unstable();
        served
    }

    /// One round: heartbeat, renew, share out, claim (see the module's notes).
    #[tracing::instrument(skip_all, fields(node = %self.settings.node))]
    pub async fn round(&self) -> Result<Round, sqlx::Error> {
        let sent = Instant::now();
        let lease = self.settings.lease.as_secs_f64();
        let mut db = self.pool.acquire().await?;
        // The heartbeat; a node silent for longer than `FORGET_SILENT` is forgotten (its
        // ordinal stays its own, should it come back).
        sqlx::query(
            "WITH forgotten AS (
                 DELETE FROM cluster_nodes
                 WHERE heartbeat_at < now() - make_interval(secs => $3) AND node_id <> $1)
             INSERT INTO cluster_nodes (node_id, http_addr) VALUES ($1, $2)
             ON CONFLICT (node_id) DO UPDATE
                SET http_addr = EXCLUDED.http_addr, heartbeat_at = now()",
        )
        .bind(&self.settings.node)
        .bind(&self.settings.http_addr)
        .bind(FORGET_SILENT.as_secs_f64())
        .execute(&mut *db)
        .await?;
        let nodes: Vec<String> = sqlx::query_scalar(
            "SELECT node_id FROM cluster_nodes
             WHERE heartbeat_at > now() - make_interval(secs => $1) ORDER BY node_id",
        )
        .bind(lease)
        .fetch_all(&mut *db)
        .await?;

        let (shards, epochs) = self.held_columns(|_| true);
        let renewed: Vec<(i16, Epoch)> = sqlx::query_as(&format!(
            "{} UPDATE shard_leases l SET expires_at = now() + make_interval(secs => $2)
                 FROM mine WHERE l.shard = mine.shard
                 RETURNING l.shard, l.epoch",
            mine_locked(3)
        ))
        .bind(&self.settings.node)
        .bind(lease)
        .bind(&shards)
        .bind(&epochs)
        .fetch_all(&mut *db)
        .await?;
        let until = sent + self.settings.lease - self.settings.margin();
        let mut round = Round {
            nodes,
            ..Round::default()
        };
        let wanted: Vec<i16> = {
            let mut held = self.held.write().unwrap_or_else(|e| e.into_inner());
            let renewed: HashMap<Shard, Epoch> = renewed
                .into_iter()
                .map(|(shard, epoch)| (shard as Shard, epoch))
                .collect();
            held.retain(|shard, h| match renewed.get(shard) {
                Some(_) => {
                    h.until = until;
                    true
                }
                None => {
                    round.lost.push(*shard);
                    false
                }
            });
            for (shard, h) in held.iter_mut() {
                let mine = target(&round.nodes, *shard) == Some(self.settings.node.as_str());
                if h.hold != Hold::Leaving && !mine {
                    h.hold = Hold::Leaving;
                    round.handing_off.push(*shard);
                }
            }
            (0..SHARDS)
                .filter(|shard| !held.contains_key(shard))
                .filter(|shard| target(&round.nodes, *shard) == Some(self.settings.node.as_str()))
                .map(|shard| shard as i16)
                .collect()
        };
        if !wanted.is_empty() {
            let claimed: Vec<(i16, Epoch)> = sqlx::query_as(
                "WITH free AS (
                     SELECT shard FROM shard_leases
                     WHERE shard = ANY($3) AND (owner IS NULL OR owner = $1 OR expires_at < now())
                     ORDER BY shard
                     FOR NO KEY UPDATE)
                 UPDATE shard_leases l
                    SET owner = $1, epoch = l.epoch + 1,
                        expires_at = now() + make_interval(secs => $2)
                 FROM free WHERE l.shard = free.shard
                 RETURNING l.shard, l.epoch",
            )
            .bind(&self.settings.node)
            .bind(lease)
            .bind(&wanted)
            .fetch_all(&mut *db)
            .await?;
            let mut held = self.held.write().unwrap_or_else(|e| e.into_inner());
            for (shard, epoch) in claimed {
                let shard = shard as Shard;
                held.insert(
                    shard,
                    Held {
                        epoch,
                        until,
                        hold: Hold::Starting,
                    },
                );
                round.claimed.push((shard, epoch));
            }
        }
        round.lost.extend(std::mem::take(
            &mut *self.forfeited.lock().unwrap_or_else(|e| e.into_inner()),
        ));
        round.lost.sort_unstable();
        round.lost.dedup();
        round.handing_off.sort_unstable();
        round.claimed.sort_unstable();
        if !(round.lost.is_empty() && round.claimed.is_empty() && round.handing_off.is_empty()) {
            tracing::info!(
                claimed = round.claimed.len(),
                lost = round.lost.len(),
                handing_off = round.handing_off.len(),
                nodes = round.nodes.len(),
                "shard leases changed"
            );
        }
        Ok(round)
    }

    /// Gives up the leases of `shards` that this node is handing off (their changes are
    /// durable by now), so that the node they are meant for can claim them at once.
    pub async fn release(&self, shards: &[Shard]) -> Result<(), sqlx::Error> {
        let (shards, epochs) =
            self.held_columns(|(shard, h)| h.hold == Hold::Leaving && shards.contains(shard));
        self.give_up(&self.pool, &shards, &epochs).await?;
        let mut held = self.held.write().unwrap_or_else(|e| e.into_inner());
        for shard in shards {
            held.remove(&(shard as Shard));
        }
        Ok(())
    }

    /// Leaves the cluster: stops serving everything, gives up every lease and deletes this
    /// node's heartbeat, so the others share its shards out at their next round. The
    /// caller has made this node's changes durable first.
    pub async fn leave(&self) -> Result<(), sqlx::Error> {
        let (shards, epochs) = self.held_columns(|_| true);
        self.held.write().unwrap_or_else(|e| e.into_inner()).clear();
        let mut tx = self.pool.begin().await?;
        self.give_up(&mut *tx, &shards, &epochs).await?;
        sqlx::query("DELETE FROM cluster_nodes WHERE node_id = $1")
            .bind(&self.settings.node)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// Gives up, in the database, the leases of `shards` this node still holds under
    /// `epochs` (free at once for the node they are meant for).
    async fn give_up<'e>(
        &self,
        executor: impl sqlx::PgExecutor<'e>,
        shards: &[i16],
        epochs: &[Epoch],
    ) -> Result<(), sqlx::Error> {
        sqlx::query(&format!(
            "{} UPDATE shard_leases l SET owner = NULL, expires_at = '-infinity'
                 FROM mine WHERE l.shard = mine.shard",
            mine_locked(2)
        ))
        .bind(&self.settings.node)
        .bind(shards)
        .bind(epochs)
        .execute(executor)
        .await?;
        Ok(())
    }

    /// The held leases matching `keep`, as the two arrays the statements bind.
    fn held_columns(&self, keep: impl Fn((&Shard, &Held)) -> bool) -> (Vec<i16>, Vec<Epoch>) {
        let held = self.held.read().unwrap_or_else(|e| e.into_inner());
        held.iter()
            .filter(|(shard, h)| keep((shard, h)))
            .map(|(shard, h)| (*shard as i16, h.epoch))
            .unzip()
    }
}
