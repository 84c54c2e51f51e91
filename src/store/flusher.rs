//! The write-behind flusher: drains the core's [`JournalBuffer`] into PostgreSQL, one
//! transaction per batch, with one multi-row statement (`UNNEST` arrays) per table.
//!
//! Line states are coalesced to the newest version in the batch and only written over a
//! lower version; reservations likewise keep their newest record. Movements and transfers
//! are inserted with their journal numbers as keys, so a batch retried after a failure
//! that had in fact committed writes nothing twice. A failed batch is kept and retried
//! with backoff, never dropped; meanwhile `/readyz` answers 503 and, once the backlog
//! reaches its bound, the lines refuse new work (`overloaded`).
//!
//! A batch PostgreSQL refuses for its data (a constraint, a value it cannot store) rather
//! than for a lost connection is split in halves until the refused records stand alone;
//! each of those goes to `dead_letters` with the refusal (counted, and listed in
//! `/admin/persistence`), and the rest is written. One bad record can therefore never stop
//! the flusher. Every statement is idempotent (version, Lsn and key guards), so the halves
//! already written are harmless when a later half fails for a passing reason and the whole
//! batch is retried.
//!
//! Group commit: there is never more than one flush transaction in flight, so whatever
//! arrives while one is being written forms the next batch, and the database sees fewer,
//! larger transactions as load grows. `gather` is how long the flusher waits after the
//! first record before writing: zero in `sync` mode, where requests wait on the write;
//! the flush interval in `async` mode, where nobody waits and bigger batches cost less.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use stockline_actors::journal::{
    Batch, IdempotencyRecord, LineRecord, MovementRecord, OrderRecord, PaymentRecord,
    ReservationRecord, TransferRecord,
};
use stockline_actors::{JournalBuffer, LineKey, Lsn, Record, ReservationId};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long one batch may take before it counts as failed (a hung connection).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown keeps retrying to write what is left before giving up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What operators and `/readyz` see of the flusher. Written by the flusher only.
#[derive(Default)]
pub struct FlushStats {
    /// False from a failed write until the next successful one.
    pub healthy: AtomicBool,
    pub batches_flushed: AtomicU64,
    pub records_flushed: AtomicU64,
    pub flush_failures: AtomicU64,
    /// Unix microseconds of the last successful flush (0: none yet).
    pub last_flush_us: AtomicI64,
    /// Records refused for their data and kept in `dead_letters` since start.
    pub dead_letters: AtomicU64,
}

impl FlushStats {
    pub fn last_flush_at(&self) -> Option<DateTime<Utc>> {
        match self.last_flush_us.load(Ordering::Relaxed) {
            0 => None,
            us => DateTime::from_timestamp_micros(us),
        }
    }
}

/// The running flusher.
pub struct Flusher {
    pub stats: Arc<FlushStats>,
    stop: CancellationToken,
    task: JoinHandle<bool>,
}

impl Flusher {
    /// Starts flushing `buffer`; once `stop` is cancelled it writes what is left and ends.
    pub fn spawn(
        pool: PgPool,
        buffer: Arc<JournalBuffer>,
        gather: Duration,
        stop: CancellationToken,
    ) -> Self {
        let stats = Arc::new(FlushStats {
            healthy: AtomicBool::new(true),
            ..FlushStats::default()
        });
        let task = tokio::spawn(run(pool, buffer, gather, stats.clone(), stop.clone()));
        Self { stats, stop, task }
    }

    /// Stops (cancelling its token, if not yet), writes everything still buffered, then
    /// ends. False if some records could not be written within the grace period (the
    /// database stayed down).
    pub async fn finish(self) -> bool {
        self.stop.cancel();
        self.task.await.unwrap_or(false)
    }
}

async fn run(
    pool: PgPool,
    buffer: Arc<JournalBuffer>,
    gather: Duration,
    stats: Arc<FlushStats>,
    stop: CancellationToken,
) -> bool {
    loop {
        let batch = tokio::select! {
            batch = buffer.next_batch() => batch,
            _ = stop.cancelled() => return drain(&pool, &buffer, &stats, None).await,
        };
        if !write_until_done(&pool, &batch, &stats, None, &stop).await {
            // Shutdown came while this batch was failing: the drain retries it first.
            return drain(&pool, &buffer, &stats, Some(batch)).await;
        }
        buffer.complete(&batch);
        if !gather.is_zero() {
            // Async mode: what arrives during the pause joins the next batch.
            tokio::select! {
                _ = tokio::time::sleep(gather) => {}
                _ = stop.cancelled() => {}
            }
        }
    }
}

/// At shutdown: writes what is left (`unfinished` first), retrying for at most the grace
/// period.
async fn drain(
    pool: &PgPool,
    buffer: &JournalBuffer,
    stats: &FlushStats,
    unfinished: Option<Batch>,
) -> bool {
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    let never = CancellationToken::new();
    let mut next = unfinished;
    loop {
        let batch = match next.take() {
            Some(batch) => batch,
            None if buffer.is_empty() => break,
            None => match tokio::time::timeout_at(deadline, buffer.next_batch()).await {
                Ok(batch) => batch,
                Err(_) => break,
            },
        };
        if !write_until_done(pool, &batch, stats, Some(deadline), &never).await {
            break;
        }
        buffer.complete(&batch);
    }
    let left = buffer.backlog();
    if left > 0 {
        tracing::error!(records = left, "shutting down with records not written");
    }
    left == 0
}

/// Retries one batch with backoff until it is written (or the shutdown deadline passes).
/// Retrying stops at `deadline` or, once `stop` is cancelled, hands over to the drain.
async fn write_until_done(
    pool: &PgPool,
    batch: &Batch,
    stats: &FlushStats,
    deadline: Option<tokio::time::Instant>,
    stop: &CancellationToken,
) -> bool {
    let mut backoff = Duration::from_millis(50);
    loop {
        match write_isolating(pool, &batch.records, stats).await {
            Ok(()) => {
                stats.healthy.store(true, Ordering::Release);
                stats.batches_flushed.fetch_add(1, Ordering::Relaxed);
                stats
                    .records_flushed
                    .fetch_add(batch.records.len() as u64, Ordering::Relaxed);
                stats
                    .last_flush_us
                    .store(Utc::now().timestamp_micros(), Ordering::Relaxed);
                return true;
            }
            Err(error) => {
                tracing::warn!(%error, records = batch.records.len(), "flush failed; retrying")
            }
        }
        stats.healthy.store(false, Ordering::Release);
        stats.flush_failures.fetch_add(1, Ordering::Relaxed);
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

/// Why a write failed for a passing reason, to be retried as it is.
#[derive(Debug, thiserror::Error)]
enum Passing {
    #[error("{0}")]
    Database(sqlx::Error),
    #[error("the write took longer than {WRITE_TIMEOUT:?}")]
    TimedOut,
}

/// Writes `records` (in Lsn order); a part refused for its data is split until the
/// refused records stand alone, and those go to `dead_letters`. Errs only for a passing
/// failure (connection, timeout, resources), after which the whole batch is retried.
async fn write_isolating(
    pool: &PgPool,
    records: &[(Lsn, Record)],
    stats: &FlushStats,
) -> Result<(), Passing> {
    let error = match tokio::time::timeout(WRITE_TIMEOUT, write(pool, records)).await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(error)) if refuses_data(&error) => error,
        Ok(Err(error)) => return Err(Passing::Database(error)),
        Err(_) => return Err(Passing::TimedOut),
    };
    if let [(lsn, record)] = records {
        tracing::error!(lsn, %error, "a record was refused for its data; kept in dead_letters");
        dead_letter(pool, *lsn, record, &error)
            .await
            .map_err(Passing::Database)?;
        stats.dead_letters.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    tracing::warn!(%error, records = records.len(), "a batch was refused for its data; splitting it");
    let (older, newer) = records.split_at(records.len() / 2);
    Box::pin(write_isolating(pool, older, stats)).await?;
    Box::pin(write_isolating(pool, newer, stats)).await
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
    lsn: Lsn,
    record: &Record,
    error: &sqlx::Error,
) -> Result<(), sqlx::Error> {
    let kind = match record {
        Record::Line(_) => "line",
        Record::Movement(_) => "movement",
        Record::Reservation(_) => "reservation",
        Record::Transfer(_) => "transfer",
        Record::Order(_) => "order",
        Record::Payment(_) => "payment",
        Record::Idempotency(_) => "idempotency",
    };
    sqlx::query(
        "INSERT INTO dead_letters (lsn, kind, record, error) VALUES ($1, $2, $3, $4)
         ON CONFLICT (lsn) DO NOTHING",
    )
    .bind(lsn as i64)
    .bind(kind)
    .bind(format!("{record:?}"))
    .bind(error.to_string().replace('\0', ""))
    .execute(pool)
    .await?;
    Ok(())
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
}

fn sort(records: &[(Lsn, Record)]) -> Sorted<'_> {
    let mut sorted = Sorted::default();
    for (lsn, record) in records {
        match record {
            Record::Line(line) => {
                let newest = sorted.lines.entry(line.key).or_insert(line);
                if line.version > newest.version {
                    *newest = line;
                }
            }
            Record::Movement(movement) => sorted.movements.push((*lsn, movement)),
            // Records arrive in Lsn order, so the last one is the newest.
            Record::Reservation(r) => drop(sorted.reservations.insert(r.id, (*lsn, r))),
            Record::Transfer(transfer) => sorted.transfers.push(transfer),
            Record::Order(order) => drop(sorted.orders.insert(order.id, (*lsn, order))),
            Record::Payment(payment) => sorted.payments.push(payment),
            Record::Idempotency(answer) => sorted.answers.push(answer),
        }
    }
    sorted
}

#[tracing::instrument(skip_all, fields(records = records.len()))]
async fn write(pool: &PgPool, records: &[(Lsn, Record)]) -> Result<(), sqlx::Error> {
    let Some((last, _)) = records.last() else {
        return Ok(());
    };
    let sorted = sort(records);
    let mut tx = pool.begin().await?;
    write_reservations(&mut tx, &sorted).await?;
    write_lines(&mut tx, &sorted).await?;
    write_movements(&mut tx, &sorted).await?;
    write_transfers(&mut tx, &sorted).await?;
    write_orders(&mut tx, &sorted).await?;
    write_payments(&mut tx, &sorted).await?;
    write_answers(&mut tx, &sorted).await?;
    sqlx::query(
        "INSERT INTO settings (key, value) VALUES ('journal_lsn', $1::text)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
         WHERE settings.value::bigint < EXCLUDED.value::bigint",
    )
    .bind(*last as i64)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

async fn write_lines(tx: &mut Tx, sorted: &Sorted<'_>) -> Result<(), sqlx::Error> {
    if sorted.lines.is_empty() {
        return Ok(());
    }
    let lines: Vec<_> = sorted.lines.values().collect();
    sqlx::query(
        "INSERT INTO stock_lines (warehouse_id, product_id, on_hand, reserved, version, updated_at)
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::timestamptz[])
         ON CONFLICT (warehouse_id, product_id) DO UPDATE
           SET on_hand = EXCLUDED.on_hand, reserved = EXCLUDED.reserved,
               version = EXCLUDED.version, updated_at = EXCLUDED.updated_at
         WHERE stock_lines.version < EXCLUDED.version",
    )
    .bind(lines.iter().map(|l| l.key.warehouse_id).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.key.product_id).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.on_hand as i64).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.reserved as i64).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.version as i64).collect::<Vec<_>>())
    .bind(lines.iter().map(|l| l.updated_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn write_movements(tx: &mut Tx, sorted: &Sorted<'_>) -> Result<(), sqlx::Error> {
    if sorted.movements.is_empty() {
        return Ok(());
    }
    let m = &sorted.movements;
    sqlx::query(
        "INSERT INTO movements (id, warehouse_id, product_id, kind, quantity, on_hand_after, reserved_after, reference, at)
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[],
                              $6::bigint[], $7::bigint[], $8::text[], $9::timestamptz[])
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(m.iter().map(|(lsn, _)| *lsn as i64).collect::<Vec<_>>())
    .bind(m.iter().map(|(_, r)| r.key.warehouse_id).collect::<Vec<_>>())
    .bind(m.iter().map(|(_, r)| r.key.product_id).collect::<Vec<_>>())
    .bind(m.iter().map(|(_, r)| r.kind.as_str()).collect::<Vec<_>>())
    .bind(m.iter().map(|(_, r)| r.quantity).collect::<Vec<_>>())
    .bind(m.iter().map(|(_, r)| r.on_hand_after as i64).collect::<Vec<_>>())
    .bind(m.iter().map(|(_, r)| r.reserved_after as i64).collect::<Vec<_>>())
    .bind(m.iter().map(|(_, r)| r.reference.to_string()).collect::<Vec<_>>())
    .bind(m.iter().map(|(_, r)| r.at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn write_reservations(tx: &mut Tx, sorted: &Sorted<'_>) -> Result<(), sqlx::Error> {
    if sorted.reservations.is_empty() {
        return Ok(());
    }
    let r: Vec<_> = sorted.reservations.values().collect();
    sqlx::query(
        "INSERT INTO reservations (id, status, reference, expires_at, created_at, updated_at, lsn)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[],
                              $6::timestamptz[], $7::bigint[])
         ON CONFLICT (id) DO UPDATE
           SET status = EXCLUDED.status, updated_at = EXCLUDED.updated_at, lsn = EXCLUDED.lsn
         WHERE reservations.lsn < EXCLUDED.lsn",
    )
    .bind(r.iter().map(|(_, r)| r.id.0).collect::<Vec<_>>())
    .bind(r.iter().map(|(_, r)| r.status.as_str()).collect::<Vec<_>>())
    .bind(r.iter().map(|(_, r)| r.reference.clone()).collect::<Vec<_>>())
    .bind(r.iter().map(|(_, r)| r.expires_at).collect::<Vec<_>>())
    .bind(r.iter().map(|(_, r)| r.created_at).collect::<Vec<_>>())
    .bind(r.iter().map(|(_, r)| r.updated_at).collect::<Vec<_>>())
    .bind(r.iter().map(|(lsn, _)| *lsn as i64).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    let items: Vec<_> = r
        .iter()
        .flat_map(|(_, r)| r.items.iter().map(move |item| (r.id.0, item)))
        .collect();
    sqlx::query(
        "INSERT INTO reservation_items (reservation_id, warehouse_id, product_id, quantity)
         SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[])
         ON CONFLICT DO NOTHING",
    )
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
        "INSERT INTO transfers (id, from_warehouse_id, to_warehouse_id, product_id, quantity, created_at)
         SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::timestamptz[])
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(t.iter().map(|r| r.id.0).collect::<Vec<_>>())
    .bind(t.iter().map(|r| r.from_warehouse_id).collect::<Vec<_>>())
    .bind(t.iter().map(|r| r.to_warehouse_id).collect::<Vec<_>>())
    .bind(t.iter().map(|r| r.product_id).collect::<Vec<_>>())
    .bind(t.iter().map(|r| r.quantity as i64).collect::<Vec<_>>())
    .bind(t.iter().map(|r| r.created_at).collect::<Vec<_>>())
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
