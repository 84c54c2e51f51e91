//! A batch that failed: retried with backoff until written or fenced off, and a batch
//! PostgreSQL refuses for its data split until the refused records stand alone, those
//! going to `dead_letters` while the rest is written.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::PgPool;
use stockline_actors::Lsn;
use stockline_actors::journal::Batch;

use crate::store::records::{Buffer, StoreRecord};

use crate::cluster::Fenced;
use crate::store::outbox::StoreView;
use crate::store::write::{self, WriteError};
use tokio_util::sync::CancellationToken;

use super::{BatchWriter, WRITE_TIMEOUT};

/// Retries one batch with backoff until it is written, or refused by the fence, and marks
/// it so in `buffer`; false if the shutdown deadline passed first. Retrying stops at
/// `deadline` or, once `stop` is cancelled, hands over to the drain.
pub(super) async fn write_until_done(
    out: &BatchWriter,
    buffer: &Buffer,
    batch: &Batch<StoreRecord>,
    deadline: Option<tokio::time::Instant>,
    stop: &CancellationToken,
) -> bool {
    let mut backoff = Duration::from_millis(50);
    let mut refused: Option<Fenced> = None;
    loop {
        let started = std::time::Instant::now();
        let outcome = match &refused {
            None => write_isolating(out, &batch.records).await,
            Some(_) => skip(&out.pool, &out.position_key, batch.last)
                .await
                .map_err(WriteFailure::Database),
        };
        match outcome {
            Ok(()) if refused.is_some() => {
                buffer.refuse(batch);
                return true;
            }
            Ok(()) => {
                out.flushed(batch, started);
                buffer.complete(batch);
                return true;
            }
            Err(WriteFailure::Fenced(fenced)) => {
                tracing::error!(
                    shards = ?fenced.shards,
                    records = batch.records.len(),
                    "a batch was refused: another node owns shards it changes; its requests \
                     are told the change did not happen"
                );
                out.stats.refused_batches.fetch_add(1, Ordering::Relaxed);
                *out.known.lock().await = StoreView::default();
                // Every shard the batch touched now differs in memory from the store.
                if let Some(member) = &out.member
                    && let Err(error) = member
                        .leases
                        .forfeit(&write::shards_of(&batch.records))
                        .await
                {
                    tracing::warn!(%error, "releasing forfeited shards failed; they expire");
                }
                refused = Some(fenced);
                continue;
            }
            Err(error) => out.failed(batch, &error).await,
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => {}
        }
        if deadline.is_none() && stop.is_cancelled() {
            return false;
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Why a write failed: for a passing reason, to be retried as it is, or for good.
#[derive(Debug, thiserror::Error)]
pub(super) enum WriteFailure {
    #[error("{0}")]
    Database(sqlx::Error),
    #[error("the write took longer than {WRITE_TIMEOUT:?}")]
    TimedOut,
    /// Not passing: the batch is refused, never retried.
    #[error(transparent)]
    Fenced(Fenced),
}

impl From<WriteError> for WriteFailure {
    fn from(error: WriteError) -> Self {
        match error {
            WriteError::Database(error) => Self::Database(error),
            WriteError::Fenced(fenced) => Self::Fenced(fenced),
        }
    }
}

/// Moves the stored journal number past a refused batch, as if written, so the batch after
/// passes the ordering fence.
async fn skip(pool: &PgPool, key: &str, last: Lsn) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO settings (key, value) VALUES ($2, $1::text)
         ON CONFLICT (key) DO UPDATE
           SET value = GREATEST(settings.value::bigint, EXCLUDED.value::bigint)::text",
    )
    .bind(last as i64)
    .bind(key)
    .execute(pool)
    .await?;
    Ok(())
}

/// Writes `records` (in Lsn order); a part refused for its data is split until the
/// refused records stand alone, and those go to `dead_letters`. Errs only for a passing
/// failure (connection, timeout, resources), after which the whole batch is retried.
async fn write_isolating(
    out: &BatchWriter,
    records: &[(Lsn, StoreRecord)],
) -> Result<(), WriteFailure> {
    let written = {
        // Held for this write only: the halves below take it again.
        let mut known = out.known.lock().await;
        let known = out.events.is_some().then_some(&mut *known);
        let fence = out.fencing();
        tokio::time::timeout(
            WRITE_TIMEOUT,
            write::write(&out.pool, records, known, fence.as_ref()),
        )
        .await
    };
    let error = match written {
        Ok(Ok(events)) => {
            if let Some(hub) = &out.events {
                hub.publish(&events);
            }
            return Ok(());
        }
        Ok(Err(WriteError::Database(error))) if refuses_data(&error) => error,
        Ok(Err(error)) => return Err(error.into()),
        Err(_) => return Err(WriteFailure::TimedOut),
    };
    if let [(lsn, record)] = records {
        tracing::error!(lsn, %error, "a record was refused for its data; kept in dead_letters");
        dead_letter(&out.pool, &out.position_key, *lsn, record, &error)
            .await
            .map_err(WriteFailure::Database)?;
        out.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    tracing::warn!(%error, records = records.len(), "a batch was refused for its data; splitting it");
    let (older, newer) = records.split_at(records.len() / 2);
    Box::pin(write_isolating(out, older)).await?;
    Box::pin(write_isolating(out, newer)).await
}

/// Whether PostgreSQL refused the statement for what it was asked to store (data
/// exceptions, constraint violations, a record it cannot encode), as opposed to a failure
/// of the connection, the server or its resources, which passes and is retried.
fn refuses_data(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let class = code.as_deref().map(|c| &c[..c.len().min(2)]);
            // 08 connection, 40 rollback (serialization, deadlock), 53 resources,
            // 55 object state (locks), 57 operator intervention, 58 system, XX internal.
            !matches!(
                class,
                None | Some("08" | "40" | "53" | "55" | "57" | "58" | "XX")
            )
        }
        sqlx::Error::Encode(_) | sqlx::Error::TypeNotFound { .. } => true,
        _ => false,
    }
}

/// Keeps a refused record, with why it was refused. Debug text escapes control characters,
/// so the record itself is always storable.
async fn dead_letter(
    pool: &PgPool,
    position_key: &str,
    lsn: Lsn,
    record: &StoreRecord,
    error: &sqlx::Error,
) -> Result<(), sqlx::Error> {
    // The stored journal number moves past it too, as for a written record, so the batch
    // after passes the ordering fence.
    sqlx::query(
        "WITH kept AS (
           INSERT INTO dead_letters (lsn, kind, record, error) VALUES ($1, $2, $3, $4)
           ON CONFLICT (lsn) DO NOTHING
         )
         INSERT INTO settings (key, value) VALUES ($5, $1::text)
         ON CONFLICT (key) DO UPDATE
           SET value = GREATEST(settings.value::bigint, EXCLUDED.value::bigint)::text",
    )
    .bind(lsn as i64)
    .bind(record.kind())
    .bind(record.describe())
    .bind(error.to_string().replace('\0', ""))
    .bind(position_key)
    .execute(pool)
    .await?;
    Ok(())
}
