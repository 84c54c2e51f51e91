//! Subscriptions, deliveries and attempts in PostgreSQL: what the dispatchers and the
//! `/webhooks` handlers read and write.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::events::{EventType, parse_types};

/// A subscription, as the dispatcher needs it (with its secret).
#[derive(Clone, Debug)]
pub struct Subscription {
    pub id: Uuid,
    pub url: String,
    pub types: Vec<EventType>,
    pub secret: String,
    /// Only this shop's events; `None`: every event.
    pub shop_id: Option<i64>,
    pub created_by: i64,
    pub created_at: DateTime<Utc>,
}

type Row = (
    Uuid,
    String,
    Vec<String>,
    String,
    Option<i64>,
    i64,
    DateTime<Utc>,
);

fn subscription(row: Row) -> Subscription {
    let (id, url, types, secret, shop_id, created_by, created_at) = row;
    Subscription {
        id,
        url,
        // Stored types were checked when the subscription was made.
        types: parse_types(types.iter().map(String::as_str)).unwrap_or_default(),
        secret,
        shop_id,
        created_by,
        created_at,
    }
}

const COLUMNS: &str = "id, url, types, secret, shop_id, created_by, created_at";

pub(super) async fn all(db: &PgPool) -> Result<Vec<Subscription>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM webhooks"))
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(subscription).collect())
}

/// Subscriptions of these shops (`None`: every one), newest first, a page.
pub async fn list(
    db: &PgPool,
    shops: Option<&[i64]>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Subscription>, i64), sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM webhooks WHERE ($1::bigint[] IS NULL OR shop_id = ANY($1))
         ORDER BY created_at DESC, id LIMIT $2 OFFSET $3"
    ))
    .bind(shops)
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await?;
    let total = sqlx::query_scalar(
        "SELECT count(*) FROM webhooks WHERE ($1::bigint[] IS NULL OR shop_id = ANY($1))",
    )
    .bind(shops)
    .fetch_one(db)
    .await?;
    Ok((rows.into_iter().map(subscription).collect(), total))
}

/// One subscription.
pub async fn get(db: &PgPool, id: Uuid) -> Result<Option<Subscription>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM webhooks WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.map(subscription))
}

/// Stores a new subscription, which starts after the newest event stored now; refuses
/// (answers `None`) when its shop (or the platform) has `max` already.
pub async fn insert(
    db: &PgPool,
    subscription: &Subscription,
    max: i64,
) -> Result<Option<()>, sqlx::Error> {
    let mut tx = db.begin().await?;
    // One subscription made at a time per shop, so the bound holds under races.
    sqlx::query("SELECT pg_advisory_xact_lock(7406001, COALESCE($1, 0)::int)")
        .bind(subscription.shop_id)
        .execute(&mut *tx)
        .await?;
    let existing: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhooks WHERE shop_id IS NOT DISTINCT FROM $1")
            .bind(subscription.shop_id)
            .fetch_one(&mut *tx)
            .await?;
    if existing >= max {
        return Ok(None);
    }
    sqlx::query(
        "INSERT INTO webhooks (id, url, types, secret, shop_id, created_by, created_at, cursor)
         VALUES ($1, $2, $3, $4, $5, $6, $7, (SELECT COALESCE(max(id), 0) FROM events))",
    )
    .bind(subscription.id)
    .bind(&subscription.url)
    .bind(super::type_names(&subscription.types))
    .bind(&subscription.secret)
    .bind(subscription.shop_id)
    .bind(subscription.created_by)
    .bind(subscription.created_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(()))
}

/// Deletes a subscription with its deliveries and attempts; answers whether it existed.
pub async fn remove(db: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM webhooks WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// A delivery with its attempts, as `GET /webhooks/{id}/deliveries` shows it.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
pub struct Delivery {
    pub event_id: i64,
    pub event_type: String,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// `[{attempt, at, status_code, error, duration_ms}]`, oldest first.
    #[serde(rename = "attempt_log")]
    #[sqlx(json)]
    pub attempt_log: serde_json::Value,
}

const DELIVERY: &str = "SELECT d.event_id, d.event_type, d.status, d.attempts,
        CASE WHEN d.status = 'pending' THEN d.next_attempt_at END AS next_attempt_at,
        d.last_status_code, d.last_error, d.updated_at,
        COALESCE((SELECT json_agg(json_build_object('attempt', a.attempt, 'at', a.at,
                   'status_code', a.status_code, 'error', a.error, 'duration_ms', a.duration_ms)
                   ORDER BY a.attempt)
                  FROM webhook_attempts a
                  WHERE a.webhook_id = d.webhook_id AND a.event_id = d.event_id), '[]'::json)
          AS attempt_log
     FROM webhook_deliveries d";

/// A subscription's deliveries, newest event first, optionally of one status.
pub async fn deliveries(
    db: &PgPool,
    id: Uuid,
    status: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Delivery>, i64), sqlx::Error> {
    // The page and the count from one snapshot: a delivery failing in between is in both
    // or in neither.
    let mut tx = db.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let items = sqlx::query_as(&format!(
        "{DELIVERY} WHERE d.webhook_id = $1 AND ($2::text IS NULL OR d.status = $2)
         ORDER BY d.event_id DESC LIMIT $3 OFFSET $4"
    ))
    .bind(id)
    .bind(status)
    .bind(limit)
    .bind(offset)
    .fetch_all(&mut *tx)
    .await?;
    let total = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_deliveries
         WHERE webhook_id = $1 AND ($2::text IS NULL OR status = $2)",
    )
    .bind(id)
    .bind(status)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((items, total))
}

/// What a manual retry found.
pub enum Retried {
    /// Pending again, from now, with a fresh retry period.
    Pending(Delivery),
    /// The delivery exists but has not failed (it is pending or delivered).
    NotFailed(String),
    NotFound,
}

/// Sets a failed delivery pending again.
pub async fn retry_failed(db: &PgPool, id: Uuid, event_id: i64) -> Result<Retried, sqlx::Error> {
    let status: Option<String> = sqlx::query_scalar(
        "UPDATE webhook_deliveries d
         SET status = 'pending', next_attempt_at = now(), first_attempt_at = NULL,
             updated_at = now()
         FROM webhook_deliveries old
         WHERE d.webhook_id = $1 AND d.event_id = $2
           AND old.webhook_id = d.webhook_id AND old.event_id = d.event_id
           AND old.status = 'failed'
         RETURNING old.status",
    )
    .bind(id)
    .bind(event_id)
    .fetch_optional(db)
    .await?;
    let found: Option<Delivery> = sqlx::query_as(&format!(
        "{DELIVERY} WHERE d.webhook_id = $1 AND d.event_id = $2"
    ))
    .bind(id)
    .bind(event_id)
    .fetch_optional(db)
    .await?;
    Ok(match (status, found) {
        (Some(_), Some(delivery)) => Retried::Pending(delivery),
        (None, Some(delivery)) => Retried::NotFailed(delivery.status),
        _ => Retried::NotFound,
    })
}
