//! The edge's records of a batch: orders, payments, idempotent answers, carts.

use super::{Sorted, Tx};
use crate::store::records::CartRecord;

pub(super) async fn write_orders(tx: &mut Tx, sorted: &Sorted<'_>) -> Result<(), sqlx::Error> {
    if sorted.orders.is_empty() {
        return Ok(());
    }
    let o: Vec<_> = sorted.orders.values().collect();
    sqlx::query(
        "INSERT INTO orders (id, user_id, status, total_cents, reservation_id, expires_at, tracking_number,
                             shipping_address, contact, created_at, updated_at, lsn)
         SELECT id, user_id, status, total_cents, reservation_id, expires_at, tracking_number,
                shipping_address::jsonb, contact::jsonb, created_at, updated_at, lsn
         FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::bigint[], $5::uuid[], $6::timestamptz[],
                     $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[], $12::bigint[])
              AS t(id, user_id, status, total_cents, reservation_id, expires_at, tracking_number,
                   shipping_address, contact, created_at, updated_at, lsn)
         ON CONFLICT (id) DO UPDATE
           SET status = EXCLUDED.status, tracking_number = EXCLUDED.tracking_number,
               updated_at = EXCLUDED.updated_at, lsn = EXCLUDED.lsn
         WHERE orders.lsn < EXCLUDED.lsn",
    )
    .bind(o.iter().map(|(_, r)| r.id).collect::<Vec<_>>())
    .bind(o.iter().map(|(_, r)| r.user_id).collect::<Vec<_>>())
    .bind(o.iter().map(|(_, r)| r.status).collect::<Vec<_>>())
    .bind(o.iter().map(|(_, r)| r.total_cents).collect::<Vec<_>>())
    .bind(o.iter().map(|(_, r)| r.reservation_id.0).collect::<Vec<_>>())
    .bind(o.iter().map(|(_, r)| r.expires_at).collect::<Vec<_>>())
    .bind(o.iter().map(|(_, r)| r.tracking_number.clone()).collect::<Vec<_>>())
    .bind(o.iter().map(|(_, r)| r.shipping_address.clone()).collect::<Vec<_>>())
    .bind(o.iter().map(|(_, r)| r.contact.clone()).collect::<Vec<_>>())
    .bind(o.iter().map(|(_, r)| r.created_at).collect::<Vec<_>>())
    .bind(o.iter().map(|(_, r)| r.updated_at).collect::<Vec<_>>())
    .bind(o.iter().map(|(lsn, _)| *lsn as i64).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    let items: Vec<_> = o
        .iter()
        .flat_map(|(_, r)| r.items.iter().map(move |i| (r.id, i)))
        .collect();
    sqlx::query(
        "INSERT INTO order_items (order_id, product_id, warehouse_id, quantity, unit_price_cents)
         SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[])
         ON CONFLICT DO NOTHING",
    )
    .bind(items.iter().map(|(id, _)| *id).collect::<Vec<_>>())
    .bind(items.iter().map(|(_, i)| i.product_id).collect::<Vec<_>>())
    .bind(
        items
            .iter()
            .map(|(_, i)| i.warehouse_id)
            .collect::<Vec<_>>(),
    )
    .bind(
        items
            .iter()
            .map(|(_, i)| i.quantity as i64)
            .collect::<Vec<_>>(),
    )
    .bind(
        items
            .iter()
            .map(|(_, i)| i.unit_price_cents)
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) async fn write_payments(tx: &mut Tx, sorted: &Sorted<'_>) -> Result<(), sqlx::Error> {
    if sorted.payments.is_empty() {
        return Ok(());
    }
    let p = &sorted.payments;
    sqlx::query(
        "INSERT INTO payments (id, order_id, method, amount_cents, status, created_at)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::timestamptz[])
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(p.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(p.iter().map(|r| r.order_id).collect::<Vec<_>>())
    .bind(p.iter().map(|r| r.method.clone()).collect::<Vec<_>>())
    .bind(p.iter().map(|r| r.amount_cents).collect::<Vec<_>>())
    .bind(p.iter().map(|r| r.status).collect::<Vec<_>>())
    .bind(p.iter().map(|r| r.created_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) async fn write_answers(tx: &mut Tx, sorted: &Sorted<'_>) -> Result<(), sqlx::Error> {
    if sorted.answers.is_empty() {
        return Ok(());
    }
    let a = &sorted.answers;
    sqlx::query(
        "INSERT INTO idempotency_keys (user_id, key, request_hash, status, body, created_at)
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::smallint[], $5::text[], $6::timestamptz[])
         ON CONFLICT (user_id, key) DO NOTHING",
    )
    .bind(a.iter().map(|r| r.user_id).collect::<Vec<_>>())
    .bind(a.iter().map(|r| r.key.clone()).collect::<Vec<_>>())
    .bind(a.iter().map(|r| r.request_hash.clone()).collect::<Vec<_>>())
    .bind(a.iter().map(|r| r.status as i16).collect::<Vec<_>>())
    .bind(a.iter().map(|r| r.body.clone()).collect::<Vec<_>>())
    .bind(a.iter().map(|r| r.created_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Carts: the newest state of each, over a lower version only. A deleted cart stays as a
/// `deleted` row: a deletion must win over an older state of the batch before, whose
/// insert may not have committed yet when this batch's statements run (see the flusher's
/// pipeline), and only a row's conflict waits for that.
pub(super) async fn write_carts(tx: &mut Tx, sorted: &Sorted<'_>) -> Result<(), sqlx::Error> {
    if sorted.carts.is_empty() {
        return Ok(());
    }
    let kept: Vec<&CartRecord> = sorted.carts.values().copied().collect();
    let c = &kept;
    sqlx::query(
        "INSERT INTO carts (id, user_id, shop_id, status, hold, reservation_id, hold_parts,
                           hold_expires_at, order_id, items, version, created_at, updated_at)
         SELECT id, user_id, shop_id, status, hold, reservation_id,
                coalesce(ARRAY(SELECT jsonb_array_elements_text(parts::jsonb)::uuid), '{}'),
                hold_expires_at, order_id, items::jsonb, version, created_at, updated_at
         FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::text[], $5::bool[], $6::uuid[],
                     $7::timestamptz[], $8::uuid[], $9::text[], $10::bigint[], $11::timestamptz[],
                     $12::timestamptz[], $13::text[])
              AS t(id, user_id, shop_id, status, hold, reservation_id, hold_expires_at, order_id,
                   items, version, created_at, updated_at, parts)
         ON CONFLICT (id) DO UPDATE
           SET status = EXCLUDED.status, reservation_id = EXCLUDED.reservation_id,
               hold_parts = EXCLUDED.hold_parts, hold_expires_at = EXCLUDED.hold_expires_at,
               order_id = EXCLUDED.order_id, items = EXCLUDED.items, version = EXCLUDED.version,
               updated_at = EXCLUDED.updated_at
         WHERE carts.version < EXCLUDED.version",
    )
    .bind(c.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(c.iter().map(|r| r.user_id).collect::<Vec<_>>())
    .bind(c.iter().map(|r| r.shop_id).collect::<Vec<_>>())
    .bind(c.iter().map(|r| r.status).collect::<Vec<_>>())
    .bind(c.iter().map(|r| r.hold).collect::<Vec<_>>())
    .bind(c.iter().map(|r| r.reservation_id).collect::<Vec<_>>())
    .bind(c.iter().map(|r| r.hold_expires_at).collect::<Vec<_>>())
    .bind(c.iter().map(|r| r.order_id).collect::<Vec<_>>())
    .bind(c.iter().map(|r| r.items.as_str()).collect::<Vec<_>>())
    .bind(c.iter().map(|r| r.version).collect::<Vec<_>>())
    .bind(c.iter().map(|r| r.created_at).collect::<Vec<_>>())
    .bind(c.iter().map(|r| r.updated_at).collect::<Vec<_>>())
    // A list per cart, as JSON text: UNNEST cannot take an array of arrays of lengths
    // that differ.
    .bind(
        c.iter()
            .map(|r| serde_json::json!(r.hold_parts).to_string())
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}
