//! A reservation across shards as the store keeps it: its parts, its status (the
//! coordinator's decision), its reference and times (`reservation_sagas`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::cluster::Shard;
use crate::error::Result;

/// A reservation across shards, as `reservation_sagas` has it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Saga {
    pub id: Uuid,
    pub(super) shards: Vec<i16>,
    pub(super) parts: Vec<Uuid>,
    pub(super) status: String,
    pub(super) reference: Option<String>,
    pub(super) expires_at: DateTime<Utc>,
    pub(super) created_at: DateTime<Utc>,
}

impl Saga {
    /// Each part's shard and id.
    pub(super) fn parts(&self) -> impl Iterator<Item = (Shard, Uuid)> + '_ {
        self.shards
            .iter()
            .zip(&self.parts)
            .map(|(shard, part)| (*shard as Shard, *part))
    }
}

/// The reservation across shards with this id, if it is one.
pub async fn find(db: &PgPool, id: Uuid) -> Result<Option<Saga>> {
    Ok(sqlx::query_as(
        "SELECT id, shards, parts, status, reference, expires_at, created_at
         FROM reservation_sagas WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// Moves `id` from status `from` to `to`; false if it was not at `from`.
pub(super) async fn mark(db: &PgPool, id: Uuid, from: &str, to: &str) -> Result<bool> {
    let moved = sqlx::query(
        "UPDATE reservation_sagas SET status = $3, updated_at = now() WHERE id = $1 AND status = $2",
    )
    .bind(id)
    .bind(from)
    .bind(to)
    .execute(db)
    .await?;
    Ok(moved.rows_affected() == 1)
}
