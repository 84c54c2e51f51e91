//! One batch into PostgreSQL: one transaction, one multi-row statement (`UNNEST` arrays)
//! per table. Line states are coalesced to the newest version in the batch and only written
//! over a lower version; reservations and orders keep their newest record; movements,
//! transfers, payments and answers are keyed, so writing the same records twice (a retry
//! of a batch that had in fact committed, or of a half already written) changes nothing.

use std::collections::HashMap;

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use stockline_actors::journal::{
    LineRecord, MovementRecord, Reference, ReservationRecord, TransferRecord,
};
use stockline_actors::{LineKey, Lsn, Record, ReservationId, ReservationStatus};

use super::Query;
use super::outbox::{self, StoreView};
use crate::events::Event;

use super::records::{
    CartRecord, IdempotencyRecord, OrderRecord, PaymentRecord, SagaRecord, StoreRecord,
};

mod sagas;
use crate::cluster::{Fenced, Leases, Shard, cart_shard, order_shard, shard_of};

/// How a cluster node's batches are written: fenced by its leases, closed with its own
/// stored journal number ([`outbox::close_for`]).
pub(super) struct Fencing<'a> {
    pub leases: &'a Leases,
    pub close: &'a std::sync::Arc<str>,
}

/// Why a batch was not written.
#[derive(Debug, thiserror::Error)]
pub(super) enum WriteError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Cluster mode: the batch changes shards this node no longer owns. Never retried.
    #[error(transparent)]
    Fenced(#[from] Fenced),
}

/// The shards whose stock `records` change (lines, the ledger, reservations, transfers)
/// and whose orders and carts they change (an order's id names its shard; payments go
/// with their order; a cart is its customer's shard's), sorted, each once. Answers and
/// reservations across shards belong to no shard.
pub(super) fn shards_of(records: &[(Lsn, StoreRecord)]) -> Vec<Shard> {
    let mut shards: Vec<Shard> = Vec::new();
    for (_, record) in records {
        match record {
            StoreRecord::Core(Record::Line(line)) => shards.push(shard_of(line.key.product_id)),
            StoreRecord::Core(Record::Movement(m)) => shards.push(shard_of(m.key.product_id)),
            StoreRecord::Core(Record::Reservation(r)) => {
                shards.extend(r.items.iter().map(|item| shard_of(item.product_id)))
            }
            StoreRecord::Core(Record::Transfer(t)) => shards.push(shard_of(t.product_id)),
            StoreRecord::Order(order) => shards.push(order_shard(order.id)),
            StoreRecord::Payment(p) => shards.push(order_shard(p.order_id)),
            StoreRecord::Cart(cart) => shards.push(cart_shard(cart.user_id)),
            StoreRecord::Idempotency(_) | StoreRecord::Saga(_) => {}
        }
    }
    shards.sort_unstable();
    shards.dedup();
    shards
}

/// A batch sorted by table, coalesced where only the newest state matters.
#[derive(Default)]
struct Sorted<'a> {
    lines: HashMap<LineKey, &'a LineRecord>,
    movements: Vec<(Lsn, &'a MovementRecord)>,
    reservations: HashMap<ReservationId, (Lsn, &'a ReservationRecord)>,
    transfers: Vec<&'a TransferRecord>,
    orders: HashMap<uuid::Uuid, (Lsn, &'a OrderRecord)>,
    payments: Vec<&'a PaymentRecord>,
    answers: Vec<&'a IdempotencyRecord>,
    carts: HashMap<uuid::Uuid, &'a CartRecord>,
    sagas: Vec<&'a SagaRecord>,
}

fn sort(records: &[(Lsn, StoreRecord)]) -> Sorted<'_> {
    let mut sorted = Sorted::default();
    for (lsn, record) in records {
        match record {
            StoreRecord::Core(Record::Line(line)) => {
                let newest = sorted.lines.entry(line.key).or_insert(line);
                if line.version > newest.version {
                    *newest = line;
                }
            }
            StoreRecord::Core(Record::Movement(movement)) => {
                sorted.movements.push((*lsn, movement))
            }
            // Records arrive in Lsn order, so the last one is the newest.
            StoreRecord::Core(Record::Reservation(r)) => {
                sorted.reservations.insert(r.id, (*lsn, r));
            }
            StoreRecord::Core(Record::Transfer(transfer)) => sorted.transfers.push(transfer),
            StoreRecord::Order(order) => drop(sorted.orders.insert(order.id, (*lsn, order))),
            StoreRecord::Payment(payment) => sorted.payments.push(payment),
            StoreRecord::Idempotency(answer) => sorted.answers.push(answer),
            StoreRecord::Cart(cart) => drop(sorted.carts.insert(cart.id, cart)),
            StoreRecord::Saga(saga) => sorted.sagas.push(saga),
        }
    }
    sorted
}

/// A batch ready to commit; dropped, nothing of it is stored.
pub(super) struct Prepared {
    way: WriteMode,
    /// The closing statement, if not [`outbox::CLOSE`] (a cluster node's).
    close: Option<std::sync::Arc<str>>,
    events: Vec<Event>,
    first: Lsn,
    last: Lsn,
}

enum WriteMode {
    /// Its data statements have run in this open transaction; the close commits it.
    Transaction(Tx),
    /// The hot path's batch (lines, movements, reservations only): written and committed
    /// by one statement, [`ONE`], on this connection: one round trip and one fsync.
    OneStatement(PoolConnection<Postgres>),
}

/// Writes `records` in one transaction, with their events when the outbox is on (`known`:
/// what the store held before, which the events are derived against); answers the events
/// written. Whoever calls it forgets `known` when it fails (see [`prepare`]).
#[tracing::instrument(skip_all, fields(records = records.len()))]
pub(super) async fn write(
    pool: &PgPool,
    records: &[(Lsn, StoreRecord)],
    known: Option<&mut StoreView>,
    fence: Option<&Fencing<'_>>,
) -> Result<Vec<Event>, WriteError> {
    match prepare(pool, records, known, fence).await? {
        Some(prepared) => Ok(commit(prepared, records).await?),
        None => Ok(Vec::new()),
    }
}

/// Derives the batch's events and, unless it can go as one statement, opens its
/// transaction and runs its data statements; `None` for no records. `known` takes the
/// batch's line states at once (before the commit), so the next batch, prepared while this
/// one commits, derives its events against them; if this batch then fails, `known` must
/// be forgotten (it holds states the store may not).
///
/// With a `fence` (cluster mode), the transaction first checks that this node still owns
/// every shard the batch changes, and keeps them from being taken over until it ends
/// ([`Leases::fence`]); such a batch is never written as one statement.
pub(super) async fn prepare(
    pool: &PgPool,
    records: &[(Lsn, StoreRecord)],
    mut known: Option<&mut StoreView>,
    fence: Option<&Fencing<'_>>,
) -> Result<Option<Prepared>, WriteError> {
    let (Some((first, _)), Some((last, _))) = (records.first(), records.last()) else {
        return Ok(None);
    };
    let sorted = sort(records);
    let (way, events) = if fence.is_none() && one_statement(&sorted) {
        let mut connection = pool.acquire().await?;
        let events = match known.as_deref_mut() {
            Some(known) => outbox::derive(&mut connection, records, known).await?,
            None => Vec::new(),
        };
        (WriteMode::OneStatement(connection), events)
    } else {
        let mut tx = pool.begin().await?;
        if let Some(fencing) = fence {
            fencing.leases.fence(&mut tx, &shards_of(records)).await??;
        }
        let events = match known.as_deref_mut() {
            Some(known) => outbox::derive(&mut tx, records, known).await?,
            None => Vec::new(),
        };
        // The ledger first: it takes no row locks, so it runs even while the batch before
        // still holds the lines and reservations this one writes next.
        write_movements(&mut tx, &sorted).await?;
        write_reservations(&mut tx, &sorted).await?;
        write_lines(&mut tx, &sorted).await?;
        write_transfers(&mut tx, &sorted).await?;
        write_orders(&mut tx, &sorted).await?;
        write_payments(&mut tx, &sorted).await?;
        write_answers(&mut tx, &sorted).await?;
        write_carts(&mut tx, &sorted).await?;
        sagas::write(&mut tx, &sorted.sagas).await?;
        (WriteMode::Transaction(tx), events)
    };
    if let Some(known) = known {
        known.written(records);
    }
    Ok(Some(Prepared {
        way,
        close: fence.map(|f| f.close.clone()),
        events,
        first: *first,
        last: *last,
    }))
}

/// Rolls a prepared batch back (its row locks go at once, not when its connection is next
/// used).
pub(super) async fn abandon(prepared: Prepared) {
    if let WriteMode::Transaction(tx) = prepared.way
        && let Err(error) = tx.rollback().await
    {
        tracing::warn!(%error, "rolling back an abandoned batch failed; its connection is closed");
    }
}

/// Closes a prepared batch of `records` (its events, the stored journal number) and
/// commits it. The close fails, and nothing of the batch is stored, unless everything
/// before the batch is stored: a batch can never commit ahead of the one before it.
pub(super) async fn commit(
    prepared: Prepared,
    records: &[(Lsn, StoreRecord)],
) -> Result<Vec<Event>, sqlx::Error> {
    let Prepared {
        way,
        close,
        events,
        first,
        last,
    } = prepared;
    match way {
        WriteMode::Transaction(mut tx) => {
            let close = close.as_deref().unwrap_or(outbox::CLOSE);
            outbox::bind_close(sqlx::query(close), first, last, &events)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        WriteMode::OneStatement(mut connection) => {
            let sorted = sort(records);
            let query = outbox::bind_close(sqlx::query(&ONE), first, last, &events);
            bind_lines(
                bind_items(
                    bind_reservations(bind_movements(query, &sorted), &sorted),
                    &sorted,
                ),
                &sorted,
            )
            .execute(&mut *connection)
            .await?;
        }
    }
    Ok(events)
}

/// Whether writing `records` takes row locks while it is prepared (a transaction batch
/// does; a [`ONE`] batch takes them only when it commits).
pub(super) fn locks_when_prepared(records: &[(Lsn, StoreRecord)]) -> bool {
    !one_statement(&sort(records))
}

/// Whether a prepared batch writes everything at its commit, as one statement.
pub(super) fn is_one_statement(prepared: &Prepared) -> bool {
    matches!(prepared.way, WriteMode::OneStatement(_))
}

/// Whether a batch holds only what [`ONE`] writes: the hot path (reserve, release,
/// commit, adjust), nothing settled in parts.
fn one_statement(sorted: &Sorted<'_>) -> bool {
    sorted.transfers.is_empty()
        && sorted.orders.is_empty()
        && sorted.payments.is_empty()
        && sorted.answers.is_empty()
        && sorted.carts.is_empty()
        && sorted.sagas.is_empty()
        && !sorted
            .reservations
            .values()
            .any(|(_, r)| settled_in_parts(r))
}

/// The whole of a hot-path batch as one statement, so one round trip: the ledger,
/// reservations, their items and the lines as data-modifying `WITH`s of the closing
/// statement ([`outbox::CLOSE`], parameters `$1` to `$8`), their parameters following in
/// that order. Outside a transaction it commits by itself; its fence fails it whole.
static ONE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let close = outbox::CLOSE
        .strip_prefix("WITH ")
        .expect("the close is a WITH statement");
    format!(
        "WITH movements_written AS ({}),
         reservations_written AS ({}),
         items_written AS ({}),
         lines_written AS ({}),
         {close}",
        renumber(MOVEMENTS, 8),
        renumber(RESERVATIONS, 8 + 13),
        renumber(ITEMS, 8 + 13 + 7),
        renumber(LINES, 8 + 13 + 7 + 4),
    )
});

/// `sql` with every parameter `$n` made `$(n + offset)`.
fn renumber(sql: &str, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if let Ok(n) = rest[..digits].parse::<usize>() {
            out.push_str(&(n + offset).to_string());
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

const LINES: &str = "INSERT INTO stock_lines (warehouse_id, product_id, on_hand, reserved, version, updated_at, safety_stock)
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
                              $6::timestamptz[], $7::bigint[])
         ON CONFLICT (warehouse_id, product_id) DO UPDATE
           SET on_hand = EXCLUDED.on_hand, reserved = EXCLUDED.reserved,
               version = EXCLUDED.version, updated_at = EXCLUDED.updated_at,
               safety_stock = EXCLUDED.safety_stock
         WHERE stock_lines.version < EXCLUDED.version";

fn bind_lines<'q>(query: Query<'q>, sorted: &Sorted<'q>) -> Query<'q> {
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

async fn write_lines(tx: &mut Tx, sorted: &Sorted<'_>) -> Result<(), sqlx::Error> {
    if sorted.lines.is_empty() {
        return Ok(());
    }
    bind_lines(sqlx::query(LINES), sorted)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

const MOVEMENTS: &str = "INSERT INTO movements (id, warehouse_id, product_id, kind, quantity, on_hand_after, reserved_after,
                               reference, at, reason, actor_user_id, client_reference, safety_stock_after)
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[],
                              $6::bigint[], $7::bigint[], $8::text[], $9::timestamptz[], $10::text[],
                              $11::bigint[], $12::text[], $13::bigint[])
         ON CONFLICT (id) DO NOTHING";

fn bind_movements<'q>(query: Query<'q>, sorted: &Sorted<'q>) -> Query<'q> {
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

async fn write_movements(tx: &mut Tx, sorted: &Sorted<'_>) -> Result<(), sqlx::Error> {
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
const RESERVATIONS: &str = "INSERT INTO reservations (id, status, reference, expires_at, created_at, updated_at, lsn)
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
const ITEMS: &str = "INSERT INTO reservation_items (reservation_id, warehouse_id, product_id, quantity)
         SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[])
         ON CONFLICT (reservation_id, warehouse_id, product_id) DO UPDATE SET quantity = EXCLUDED.quantity
         WHERE reservation_items.quantity <> EXCLUDED.quantity";

fn bind_reservations<'q>(query: Query<'q>, sorted: &Sorted<'q>) -> Query<'q> {
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

fn bind_items<'q>(query: Query<'q>, sorted: &Sorted<'q>) -> Query<'q> {
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

async fn write_reservations(tx: &mut Tx, sorted: &Sorted<'_>) -> Result<(), sqlx::Error> {
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
fn settled_in_parts(r: &ReservationRecord) -> bool {
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

async fn write_transfers(tx: &mut Tx, sorted: &Sorted<'_>) -> Result<(), sqlx::Error> {
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

async fn write_orders(tx: &mut Tx, sorted: &Sorted<'_>) -> Result<(), sqlx::Error> {
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

async fn write_payments(tx: &mut Tx, sorted: &Sorted<'_>) -> Result<(), sqlx::Error> {
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

async fn write_answers(tx: &mut Tx, sorted: &Sorted<'_>) -> Result<(), sqlx::Error> {
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
async fn write_carts(tx: &mut Tx, sorted: &Sorted<'_>) -> Result<(), sqlx::Error> {
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
