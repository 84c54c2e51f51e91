//! What every node does for reservations across shards that it did not coordinate: it
//! shows their parts as one, and finishes the decisions whose coordinator stopped.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use sqlx::PgPool;
use stockline_actors::{CoreError, Reservation, ReservationId, ReservationStatus};
use uuid::Uuid;

use super::record::{Saga, SagaStatus, mark};
use crate::background::Background;
use crate::cluster::Cluster;
use crate::cluster::saga::{Outcome, status_of};
use crate::error::Result;
use crate::state::AppState;

/// Merges, among pending reservations, the parts of each reservation across shards into
/// the one reservation its client knows.
pub async fn fold(db: &PgPool, pending: Vec<Reservation>) -> Result<Vec<Reservation>> {
    let ids: Vec<Uuid> = pending.iter().map(|r| r.id.0).collect();
    let sagas: Vec<Saga> = sqlx::query_as(
        "SELECT id, shards, parts, status, reference, expires_at, created_at
         FROM reservation_sagas WHERE parts && $1",
    )
    .bind(&ids)
    .fetch_all(db)
    .await?;
    let whole_of: HashMap<Uuid, &Saga> = sagas
        .iter()
        .flat_map(|saga| saga.parts.iter().map(move |part| (*part, saga)))
        .collect();
    let mut alone = Vec::new();
    let mut merged: BTreeMap<Uuid, Reservation> = BTreeMap::new();
    for part in pending {
        let Some(saga) = whole_of.get(&part.id.0) else {
            alone.push(part);
            continue;
        };
        merged
            .entry(saga.id)
            .or_insert_with(|| Reservation {
                id: ReservationId(saga.id),
                status: ReservationStatus::Pending,
                items: Vec::new(),
                reference: saga.reference.clone(),
                expires_at: saga.expires_at,
                created_at: saga.created_at,
                updated_at: part.updated_at,
            })
            .items
            .extend(part.items);
    }
    alone.extend(merged.into_values());
    Ok(alone)
}

/// Finishes, every lease, the decisions whose coordinator stopped half-way: each node
/// commits or releases its own shards' parts of reservations left `committing` or
/// `releasing` for more than a lease, and records the whole done once no part is
/// pending. Pending ones a minute past their expiry (their parts expired by themselves)
/// are recorded expired.
pub fn finish_decided(state: AppState, background: &Background) {
    let Some(cluster) = state.cluster.clone() else {
        return;
    };
    let lease = state.config.shard_lease();
    let stop = background.stopping();
    background.spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(lease) => {}
                _ = stop.cancelled() => return,
            }
            if let Err(error) = finish_round(&state, &cluster, lease).await {
                tracing::warn!(%error, "finishing decided reservations across shards failed; next round retries");
            }
        }
    });
}

async fn finish_round(state: &AppState, cluster: &Cluster, lease: Duration) -> Result<()> {
    let stale: Vec<Saga> = sqlx::query_as(
        "SELECT id, shards, parts, status, reference, expires_at, created_at
         FROM reservation_sagas
         WHERE status IN ('committing', 'releasing') AND updated_at < now() - make_interval(secs => $1)
         ORDER BY updated_at LIMIT 100",
    )
    .bind(lease.as_secs_f64())
    .fetch_all(&state.db)
    .await?;
    let reservations = state.core.reservations();
    for saga in stale {
        let commit = saga.status == SagaStatus::Committing;
        for (shard, part) in saga.parts() {
            if cluster.leases().serving(shard).is_none() {
                continue;
            }
            let id = ReservationId(part);
            let outcome = match commit {
                true => reservations.commit(id).await,
                false => reservations.release(id).await,
            };
            match outcome {
                Ok((_, lsn)) => state.store.durable(lsn).await?,
                Err(CoreError::ReservationNotPending { .. } | CoreError::ReservationNotFound) => {}
                Err(error) => {
                    tracing::warn!(reservation = %saga.id, %part, %error, "a part of a decided reservation is not settled yet")
                }
            }
        }
        let statuses: Vec<String> =
            sqlx::query_scalar("SELECT status FROM reservations WHERE id = ANY($1)")
                .bind(&saga.parts)
                .fetch_all(&state.db)
                .await?;
        let statuses: Vec<ReservationStatus> = statuses
            .iter()
            .filter_map(|s| ReservationStatus::parse(s))
            .collect();
        if statuses.len() == saga.parts.len() && !statuses.contains(&ReservationStatus::Pending) {
            let status = SagaStatus::from(status_of(&statuses));
            if mark(&state.db, saga.id, saga.status, status).await? {
                cluster.sagas.count(Outcome::Finished);
                tracing::info!(reservation = %saga.id, status = status.as_str(), "a reservation across shards was finished after its coordinator stopped");
            }
        }
    }
    sqlx::query(
        "UPDATE reservation_sagas SET status = 'expired', updated_at = now()
         WHERE status = 'pending' AND expires_at < now() - interval '1 minute'",
    )
    .execute(&state.db)
    .await?;
    Ok(())
}
