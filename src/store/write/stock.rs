//! The core's records of a batch: line states, the ledger, reservations and their items,
//! partial settlements, transfers. The hot path's [`ONE`](super::ONE) statement is built
//! from the same statements and binders.

use stockline_actors::journal::Reference;
use stockline_actors::journal::ReservationRecord;
use stockline_actors::{Lsn, ReservationStatus};

use super::{Query, Sorted, Tx};

pub(super) const LINES: &str = "INSERT INTO stock_lines (warehouse_id, product_id, on_hand, reserved, version, updated_at, safety_stock)
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
                              $6::timestamptz[], $7::bigint[])
         ON CONFLICT (warehouse_id, product_id) DO UPDATE
           SET on_hand = EXCLUDED.on_hand, reserved = EXCLUDED.reserved,
               version = EXCLUDED.version, updated_at = EXCLUDED.updated_at,
               safety_stock = EXCLUDED.safety_stock
         WHERE stock_lines.version < EXCLUDED.version";

pub(super) fn bind_lines<'q>(query: Query<'q>, sorted: &Sorted<'q>) -> Query<'q> {
    let lines: Vec<_> = sorted.lines.values().collect();
    query
        .bind(lines.iter().map(|l| l.key.warehouse_id).collect::<Vec<_>>())
        .bind(lines.iter().map(|l| l.key.product_id).collect::<Vec<_>>())
        .bind(lines.iter().map(|l| l.on_hand as i64).collect::<Vec<_>>())
        .bind(lines.iter().map(|l| l.reserved as i64).collect::<Vec<_>>())
        .bind(lines.iter().map(|l| l.version as i64).collect::<Vec<_>>())
        .bind(lines.iter().map(|l| l.updated_at).collect::<Vec<_>>())
        .bind(
            lines
                .iter()
                .map(|l| l.safety_stock as i64)
                .collect::<Vec<_>>(),
        )
}

pub(super) async fn write_lines(tx: &mut Tx, sorted: &Sorted<'_>) -> Result<(), sqlx::Error> {
    if sorted.lines.is_empty() {
        return Ok(());
    }
    bind_lines(sqlx::query(LINES), sorted)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(super) const MOVEMENTS: &str = "INSERT INTO movements (id, warehouse_id, product_id, kind, quantity, on_hand_after, reserved_after,
                               reference, at, reason, actor_user_id, client_reference, safety_stock_after)
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[],
                              $6::bigint[], $7::bigint[], $8::text[], $9::timestamptz[], $10::text[],
                              $11::bigint[], $12::text[], $13::bigint[])
         ON CONFLICT (id) DO NOTHING";

pub(super) fn bind_movements<'q>(query: Query<'q>, sorted: &Sorted<'q>) -> Query<'q> {
    let m = &sorted.movements;
    query
        .bind(m.iter().map(|(lsn, _)| *lsn as i64).collect::<Vec<_>>())
        .bind(
            m.iter()
                .map(|(_, r)| r.key.warehouse_id)
                .collect::<Vec<_>>(),
        )
        .bind(m.iter().map(|(_, r)| r.key.product_id).collect::<Vec<_>>())
        .bind(m.iter().map(|(_, r)| r.kind.as_str()).collect::<Vec<_>>())
        .bind(m.iter().map(|(_, r)| r.quantity).collect::<Vec<_>>())
        .bind(
            m.iter()
                .map(|(_, r)| r.on_hand_after as i64)
                .collect::<Vec<_>>(),
        )
        .bind(
            m.iter()
                .map(|(_, r)| r.reserved_after as i64)
                .collect::<Vec<_>>(),
        )
        .bind(
            m.iter()
                .map(|(_, r)| r.reference.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(m.iter().map(|(_, r)| r.at).collect::<Vec<_>>())
        .bind(
            m.iter()
                .map(|(_, r)| match &r.reference {
                    Reference::Reason(reason) => Some(reason.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        )
        .bind(
            m.iter()
                .map(|(_, r)| r.note.as_ref().and_then(|n| n.actor_user_id))
                .collect::<Vec<_>>(),
        )
        .bind(
            m.iter()
                .map(|(_, r)| r.note.as_ref().and_then(|n| n.reference.as_deref()))
                .collect::<Vec<_>>(),
        )
        .bind(
            m.iter()
                .map(|(_, r)| r.safety_stock_after as i64)
                .collect::<Vec<_>>(),
        )
}

pub(super) async fn write_movements(tx: &mut Tx, sorted: &Sorted<'_>) -> Result<(), sqlx::Error> {
    if sorted.movements.is_empty() {
        return Ok(());
    }
    bind_movements(sqlx::query(MOVEMENTS), sorted)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A reservation's row takes a record newer than the one it holds: a higher journal number
/// from the same writer, or any record from another writer (its numbers begin at its own
/// ordinal, `lsn >> 48`, and are not comparable with the first's). Only the owner of a
/// reservation's shard writes it, and a node writes a shard only after taking it over
/// (an earlier owner's late batch is fenced): the node that took over, with a lower
/// ordinal, must still be able to settle it.
pub(super) const RESERVATIONS: &str = "INSERT INTO reservations (id, status, reference, expires_at, created_at, updated_at, lsn)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[],
                              $6::timestamptz[], $7::bigint[])
         ON CONFLICT (id) DO UPDATE
           SET status = EXCLUDED.status, expires_at = EXCLUDED.expires_at, reference = EXCLUDED.reference,
               updated_at = EXCLUDED.updated_at, lsn = EXCLUDED.lsn
         WHERE reservations.lsn < EXCLUDED.lsn OR (reservations.lsn >> 48) <> (EXCLUDED.lsn >> 48)";
const _: () = assert!(
    crate::cluster::ORDINAL_SHIFT == 48,
    "RESERVATIONS shifts by it"
);

/// A resized hold (a cart's) changes its quantities; batches commit one at a time, in
/// order, so the newest record's quantity is the one left.
pub(super) const ITEMS: &str = "INSERT INTO reservation_items (reservation_id, warehouse_id, product_id, quantity)
         SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[])
         ON CONFLICT (reservation_id, warehouse_id, product_id) DO UPDATE SET quantity = EXCLUDED.quantity
         WHERE reservation_items.quantity <> EXCLUDED.quantity";

pub(super) fn bind_reservations<'q>(query: Query<'q>, sorted: &Sorted<'q>) -> Query<'q> {
    let r: Vec<_> = sorted.reservations.values().collect();
    query
        .bind(r.iter().map(|(_, r)| r.id.0).collect::<Vec<_>>())
        .bind(r.iter().map(|(_, r)| r.status.as_str()).collect::<Vec<_>>())
        .bind(
            r.iter()
                .map(|(_, r)| r.reference.clone())
                .collect::<Vec<_>>(),
        )
        .bind(r.iter().map(|(_, r)| r.expires_at).collect::<Vec<_>>())
        .bind(r.iter().map(|(_, r)| r.created_at).collect::<Vec<_>>())
        .bind(r.iter().map(|(_, r)| r.updated_at).collect::<Vec<_>>())
        .bind(r.iter().map(|(lsn, _)| *lsn as i64).collect::<Vec<_>>())
}

pub(super) fn bind_items<'q>(query: Query<'q>, sorted: &Sorted<'q>) -> Query<'q> {
    let items: Vec<_> = sorted
        .reservations
        .values()
        .flat_map(|(_, r)| r.items.iter().map(move |item| (r.id.0, item)))
        .collect();
    query
        .bind(items.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .bind(
            items
                .iter()
                .map(|(_, i)| i.warehouse_id)
                .collect::<Vec<_>>(),
        )
        .bind(items.iter().map(|(_, i)| i.product_id).collect::<Vec<_>>())
        .bind(
            items
                .iter()
                .map(|(_, i)| i.quantity as i64)
                .collect::<Vec<_>>(),
        )
}

pub(super) async fn write_reservations(
    tx: &mut Tx,
    sorted: &Sorted<'_>,
) -> Result<(), sqlx::Error> {
    if sorted.reservations.is_empty() {
        return Ok(());
    }
    bind_reservations(sqlx::query(RESERVATIONS), sorted)
        .execute(&mut **tx)
        .await?;
    bind_items(sqlx::query(ITEMS), sorted)
        .execute(&mut **tx)
        .await?;
    let r: Vec<_> = sorted.reservations.values().collect();
    write_partial_settlements(tx, &r).await
}

/// Whether a reservation's items were settled in parts its status does not tell: only
/// then are their `committed` and `released` counts written (never on the hot path).
pub(super) fn settled_in_parts(r: &ReservationRecord) -> bool {
    match r.status {
        ReservationStatus::Pending => r.items.iter().any(|i| i.committed + i.released > 0),
        ReservationStatus::Committed => r.items.iter().any(|i| i.committed != i.quantity),
        _ => r.items.iter().any(|i| i.released != i.quantity),
    }
}

async fn write_partial_settlements(
    tx: &mut Tx,
    reservations: &[&(Lsn, &ReservationRecord)],
) -> Result<(), sqlx::Error> {
    let items: Vec<_> = reservations
        .iter()
        .filter(|(_, r)| settled_in_parts(r))
        .flat_map(|(_, r)| r.items.iter().map(move |item| (r.id.0, item)))
        .collect();
    if items.is_empty() {
        return Ok(());
    }
    // The counts only grow, so the larger wins whatever order batches land in.
    sqlx::query(
        "UPDATE reservation_items i
         SET committed = GREATEST(i.committed, u.committed), released = GREATEST(i.released, u.released)
         FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[])
           AS u (reservation_id, warehouse_id, product_id, committed, released)
         WHERE i.reservation_id = u.reservation_id AND i.warehouse_id = u.warehouse_id
           AND i.product_id = u.product_id",
    )
    .bind(items.iter().map(|(id, _)| *id).collect::<Vec<_>>())
    .bind(items.iter().map(|(_, i)| i.warehouse_id).collect::<Vec<_>>())
    .bind(items.iter().map(|(_, i)| i.product_id).collect::<Vec<_>>())
    .bind(items.iter().map(|(_, i)| i.committed as i64).collect::<Vec<_>>())
    .bind(items.iter().map(|(_, i)| i.released as i64).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) async fn write_transfers(tx: &mut Tx, sorted: &Sorted<'_>) -> Result<(), sqlx::Error> {
    if sorted.transfers.is_empty() {
        return Ok(());
    }
    let t = &sorted.transfers;
    sqlx::query(
        "INSERT INTO transfers (id, from_warehouse_id, to_warehouse_id, product_id, quantity, created_at,
                               actor_user_id, reference)
         SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::timestamptz[],
                              $7::bigint[], $8::text[])
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(t.iter().map(|r| r.id.0).collect::<Vec<_>>())
    .bind(t.iter().map(|r| r.from_warehouse_id).collect::<Vec<_>>())
    .bind(t.iter().map(|r| r.to_warehouse_id).collect::<Vec<_>>())
    .bind(t.iter().map(|r| r.product_id).collect::<Vec<_>>())
    .bind(t.iter().map(|r| r.quantity as i64).collect::<Vec<_>>())
    .bind(t.iter().map(|r| r.created_at).collect::<Vec<_>>())
    .bind(
        t.iter()
            .map(|r| r.note.as_ref().and_then(|n| n.actor_user_id))
            .collect::<Vec<_>>(),
    )
    .bind(
        t.iter()
            .map(|r| r.note.as_ref().and_then(|n| n.reference.as_deref()))
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}
