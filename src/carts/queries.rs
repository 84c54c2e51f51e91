//! Reading carts back from PostgreSQL: the open ones at start, and carts no longer in
//! memory (checked out or deleted, and durable).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use stockline_actors::ReservationId;
use uuid::Uuid;

use super::{Cart, CartLine, CartStatus};

const COLUMNS: &str = "id, user_id, shop_id, status, hold, reservation_id, hold_parts, \
                       hold_expires_at, order_id, items, version, created_at, updated_at";

/// A row of `carts` as [`COLUMNS`] selects it.
#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    user_id: i64,
    shop_id: Option<i64>,
    status: String,
    hold: bool,
    reservation_id: Option<Uuid>,
    hold_parts: Vec<Uuid>,
    hold_expires_at: Option<DateTime<Utc>>,
    order_id: Option<Uuid>,
    items: sqlx::types::Json<Vec<StoredItem>>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(serde::Deserialize)]
struct StoredItem {
    product_id: i64,
    quantity: u64,
    unit_price_cents: i64,
}

impl TryFrom<Row> for Cart {
    type Error = sqlx::Error;

    fn try_from(row: Row) -> Result<Self, sqlx::Error> {
        let status = CartStatus::parse(&row.status).ok_or_else(|| {
            sqlx::Error::Decode(
                format!("cart {} has an unknown status {:?}", row.id, row.status).into(),
            )
        })?;
        let items: BTreeMap<i64, CartLine> = row
            .items
            .0
            .into_iter()
            .map(|i| {
                let line = CartLine {
                    quantity: i.quantity,
                    unit_price_cents: i.unit_price_cents,
                };
                (i.product_id, line)
            })
            .collect();
        Ok(Cart {
            id: row.id,
            user_id: row.user_id,
            shop_id: row.shop_id,
            status,
            hold: row.hold,
            reservation_id: row.reservation_id.map(ReservationId),
            parts: row.hold_parts.into_iter().map(ReservationId).collect(),
            hold_expires_at: row.hold_expires_at,
            order_id: row.order_id,
            items,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

fn carts(rows: Vec<Row>) -> Result<Vec<Cart>, sqlx::Error> {
    rows.into_iter().map(Cart::try_from).collect()
}

/// Every open cart.
pub async fn open(pool: &PgPool) -> Result<Vec<Cart>, sqlx::Error> {
    carts(
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM carts WHERE status = 'open'"
        ))
        .fetch_all(pool)
        .await?,
    )
}

/// One cart, deleted ones included.
pub async fn one(pool: &PgPool, id: Uuid) -> Result<Option<Cart>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM carts WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.map(Cart::try_from).transpose()
}

/// `user_id`'s stored carts other than `except` (those in memory) and not deleted, newest
/// first, at most `limit`; and how many there are.
pub async fn of_user_except(
    pool: &PgPool,
    user_id: i64,
    except: &[Uuid],
    limit: i64,
) -> Result<(Vec<Cart>, i64), sqlx::Error> {
    let condition = "user_id = $1 AND status <> 'deleted' AND id <> ALL($2)";
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM carts WHERE {condition}"))
        .bind(user_id)
        .bind(except)
        .fetch_one(pool)
        .await?;
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM carts WHERE {condition}
         ORDER BY created_at DESC, id DESC LIMIT $3"
    ))
    .bind(user_id)
    .bind(except)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok((carts(rows)?, total))
}
