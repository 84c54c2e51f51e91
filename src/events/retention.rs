//! Pruning: events older than `STOCKLINE_EVENT_RETENTION_HOURS`, and the webhook
//! deliveries and attempts of that age, leave the database, a bounded chunk per statement
//! so no prune holds a long transaction. Runs at start and every few minutes.

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;

use crate::background::Background;

const EVERY: Duration = Duration::from_secs(600);
const CHUNK: i64 = 10_000;

/// Prunes what is older than `retention`; answers how many events went.
#[tracing::instrument(skip_all)]
pub async fn prune(db: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let cutoff = Utc::now() - retention;
    let mut events = 0;
    loop {
        let done = sqlx::query(
            "DELETE FROM events WHERE id IN
               (SELECT id FROM events WHERE at < $1 ORDER BY id LIMIT $2)",
        )
        .bind(cutoff)
        .bind(CHUNK)
        .execute(db)
        .await?
        .rows_affected();
        events += done;
        if done < CHUNK as u64 {
            break;
        }
    }
    sqlx::query("DELETE FROM webhook_attempts WHERE at < $1")
        .bind(cutoff)
        .execute(db)
        .await?;
    sqlx::query("DELETE FROM webhook_deliveries WHERE status <> 'pending' AND updated_at < $1")
        .bind(cutoff)
        .execute(db)
        .await?;
    Ok(events)
}

/// Prunes now and then every few minutes until the server stops.
pub fn spawn(db: PgPool, retention: Duration, background: &Background) {
    let stop = background.stopping();
    background.spawn(async move {
        let mut every = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => match prune(&db, retention).await {
                    Ok(0) => {}
                    Ok(pruned) => tracing::info!(pruned, "old events pruned"),
                    Err(error) => tracing::warn!(%error, "pruning old events failed; will retry"),
                },
                _ = stop.cancelled() => return,
            }
        }
    });
}
