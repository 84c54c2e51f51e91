//! The outbox side of a flush: inside the batch's transaction, read what the store held
//! before it, derive the batch's events and insert them, so an event commits exactly when
//! its change does. Event ids are keys made of journal numbers, so writing a batch again
//! (after a commit whose answer was lost) inserts nothing twice.

use std::collections::HashSet;

use sqlx::{Postgres, Transaction};
use stockline_actors::{LineKey, Lsn};

use super::records::StoreRecord;
use crate::events::Event;
use crate::events::derive::{self, Before, Place, StoredLine};

/// Derives and inserts the events of `records`; answers them.
pub(super) async fn write(
    tx: &mut Transaction<'static, Postgres>,
    records: &[(Lsn, StoreRecord)],
) -> Result<Vec<Event>, sqlx::Error> {
    let before = read_before(tx, records).await?;
    let events = derive::derive(records, &before);
    if events.is_empty() {
        return Ok(events);
    }
    sqlx::query(
        "INSERT INTO events (id, type, at, data, shop_ids, ordering_key)
         SELECT id, type, at, data::jsonb, shop_ids::bigint[], ordering_key
         FROM UNNEST($1::bigint[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[])
              AS t(id, type, at, data, shop_ids, ordering_key)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(events.iter().map(|e| e.id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.at).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.data.to_string()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| pg_array(&e.shop_ids)).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.ordering_key.as_str()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(events)
}

/// `{1,2}`: an array as PostgreSQL's text form (a row of arrays cannot be unnested).
fn pg_array(values: &[i64]) -> String {
    let values: Vec<String> = values.iter().map(i64::to_string).collect();
    format!("{{{}}}", values.join(","))
}

/// Thresholds and every stored line of the products the batch changes, and the
/// warehouses it names (in one query when, as usual, its lines are stored already).
async fn read_before(
    tx: &mut Transaction<'static, Postgres>,
    records: &[(Lsn, StoreRecord)],
) -> Result<Before, sqlx::Error> {
    let (products, warehouses) = derive::touched(records);
    let mut before = Before::default();
    if !products.is_empty() {
        type Row = (
            i64,
            i64,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<bool>,
            Option<i64>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT p.id, p.low_stock_threshold, l.warehouse_id, l.on_hand, l.reserved,
                    l.safety_stock, l.version, w.status = 'active', w.shop_id
             FROM products p
             LEFT JOIN stock_lines l ON l.product_id = p.id
             LEFT JOIN warehouses w ON w.id = l.warehouse_id
             WHERE p.id = ANY($1)",
        )
        .bind(&products)
        .fetch_all(&mut **tx)
        .await?;
        for (product, threshold, warehouse, on_hand, reserved, safety, version, active, shop) in
            rows
        {
            before.thresholds.insert(product, threshold.max(0) as u64);
            let Some(warehouse) = warehouse else { continue };
            before.lines.insert(
                LineKey::new(warehouse, product),
                StoredLine {
                    on_hand: on_hand.unwrap_or(0).max(0) as u64,
                    reserved: reserved.unwrap_or(0).max(0) as u64,
                    safety_stock: safety.unwrap_or(0).max(0) as u64,
                    version: version.unwrap_or(0).max(0) as u64,
                },
            );
            before.places.insert(
                warehouse,
                Place {
                    active: active.unwrap_or(false),
                    shop_id: shop,
                },
            );
        }
    }
    let known: HashSet<i64> = before.places.keys().copied().collect();
    let missing: Vec<i64> = warehouses
        .into_iter()
        .filter(|w| !known.contains(w))
        .collect();
    if !missing.is_empty() {
        let rows: Vec<(i64, bool, Option<i64>)> = sqlx::query_as(
            "SELECT id, status = 'active', shop_id FROM warehouses WHERE id = ANY($1)",
        )
        .bind(&missing)
        .fetch_all(&mut **tx)
        .await?;
        for (id, active, shop_id) in rows {
            before.places.insert(id, Place { active, shop_id });
        }
    }
    Ok(before)
}
