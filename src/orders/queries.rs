//! Reading orders back from PostgreSQL (lists, and orders no longer in memory).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Order, OrderItem, OrderStatus};

/// A row of `orders` as the queries here select it.
pub type OrderRow = (
    Uuid,
    i64,
    String,
    i64,
    Uuid,
    DateTime<Utc>,
    Option<String>,
    Option<Value>,
    Option<Value>,
    DateTime<Utc>,
    DateTime<Utc>,
);

/// Orders matching `condition` (SQL over `orders`, `$1` bound to `param` if given).
pub async fn read(
    pool: &PgPool,
    condition: &str,
    param: Option<Uuid>,
) -> Result<Vec<Order>, sqlx::Error> {
    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "SELECT id, user_id, status, total_cents, reservation_id, expires_at, tracking_number,
                shipping_address, contact, created_at, updated_at
         FROM orders WHERE {condition} ORDER BY created_at DESC, id DESC"
    ))
    .bind(param)
    .fetch_all(pool)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
    with_items(pool, rows, &ids).await
}

/// Builds orders from rows, reading their items in one query.
pub async fn with_items(
    pool: &PgPool,
    rows: Vec<OrderRow>,
    ids: &[Uuid],
) -> Result<Vec<Order>, sqlx::Error> {
    let items: Vec<(Uuid, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT order_id, product_id, warehouse_id, quantity, unit_price_cents FROM order_items
         WHERE order_id = ANY($1) ORDER BY product_id, warehouse_id",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let mut by_order: HashMap<Uuid, Vec<OrderItem>> = HashMap::new();
    for (order_id, product_id, warehouse_id, quantity, unit_price_cents) in items {
        by_order.entry(order_id).or_default().push(OrderItem {
            backordered: 0,
            product_id,
            quantity: quantity as u64,
            unit_price_cents,
            warehouse_id,
        });
    }
    rows.into_iter()
        .map(|r| {
            let status = OrderStatus::parse(&r.2).ok_or_else(|| {
                sqlx::Error::Decode(format!("order {} has an unknown status {:?}", r.0, r.2).into())
            })?;
            Ok(Order {
                id: r.0,
                user_id: r.1,
                status,
                items: by_order.remove(&r.0).unwrap_or_default(),
                total_cents: r.3,
                reservation_id: r.4,
                expires_at: r.5,
                tracking_number: r.6,
                shipping_address: r.7,
                contact: r.8,
                created_at: r.9,
                updated_at: r.10,
            })
        })
        .collect()
}
