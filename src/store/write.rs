//! One batch into PostgreSQL: one transaction, one multi-row statement (`UNNEST` arrays)
//! per table. Line states are coalesced to the newest version in the batch and only written
//! over a lower version; reservations and orders keep their newest record; movements,
//! transfers, payments and answers are keyed, so writing the same records twice (a retry
//! of a batch that had in fact committed, or of a half already written) changes nothing.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use stockline_actors::journal::{LineRecord, MovementRecord, ReservationRecord, TransferRecord};
use stockline_actors::{LineKey, Lsn, Record, ReservationId};

use super::Query;
use super::outbox::{self, StoreView};
use crate::events::Event;

use super::records::{
    CartRecord, IdempotencyRecord, OrderRecord, PaymentRecord, SagaRecord, StoreRecord,
};

mod edge;
mod sagas;
mod stock;

use crate::cluster::{Fenced, Leases, Shard, cart_shard, order_shard, shard_of};
use edge::{write_answers, write_carts, write_orders, write_payments};
use stock::{
    ITEMS, LINES, MOVEMENTS, RESERVATIONS, bind_items, bind_lines, bind_movements,
    bind_reservations, settled_in_parts, write_lines, write_movements, write_reservations,
    write_transfers,
};

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
            StoreRecord::Core(Record::Line(line)) => match sorted.lines.entry(line.key) {
                Entry::Vacant(first) => drop(first.insert(line)),
                Entry::Occupied(mut newest) => {
                    // Believed: a line journals one state a change, in Lsn order, each
                    // its version one past the last (within a journal, which one node
                    // owns).
                    debug_assert_eq!(
                        line.version,
                        newest.get().version + 1,
                        "line {}: versions journaled out of step",
                        line.key
                    );
                    if line.version > newest.get().version {
                        newest.insert(line);
                    }
                }
            },
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

#[cfg(test)]
mod tests {
    use stockline_actors::journal::LineRecord;
    use stockline_actors::{LineKey, Record};

    use super::*;

    fn line(version: u64) -> StoreRecord {
        StoreRecord::Core(Record::Line(LineRecord {
            key: LineKey::new(1, 1),
            on_hand: version,
            reserved: 0,
            safety_stock: 0,
            version,
            updated_at: chrono::Utc::now(),
        }))
    }

    #[test]
    fn a_batch_keeps_each_lines_newest_state() {
        let records = vec![(1, line(4)), (2, line(5)), (3, line(6))];
        let sorted = sort(&records);
        assert_eq!(sorted.lines[&LineKey::new(1, 1)].version, 6);
    }

    /// A version that skips (a change journaled without its state, or two owners writing
    /// one line) breaks what the store believes: caught in debug builds and tests.
    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "versions journaled out of step")]
    fn a_line_version_that_skips_is_caught() {
        sort(&[(1, line(4)), (2, line(6))]);
    }
}
